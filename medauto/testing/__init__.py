"""Test helpers that ship with medauto: real storage backends for conformance tests."""
