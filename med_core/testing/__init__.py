"""Test helpers that ship with med_core (they need ``pytest``; import the submodules).

``med_core.testing.backbones``: the backbone conformance suites (``BackboneSuite``,
``CheckpointingSuite``) and their ``check_*`` assertions.
``med_core.testing.data``: ``cut_medmnist``, small copies of MedMNIST files.
"""

from __future__ import annotations
