"""Exception types raised by medauto.

Every error derives from :class:`MedautoError`; the CLI turns one into a one-line message
and exit code 1 (passwords redacted). Subclasses also derive from a matching builtin where
one fits, so callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations


class MedautoError(Exception):
    """Base class of every error medauto raises on purpose."""


class SearchSpaceError(MedautoError, ValueError):
    """A search-space file is malformed (the message names the file, key, rule and value)."""


class StorageError(MedautoError):
    """A storage URL is invalid or its backend cannot be reached (password redacted)."""


class StudyConflictError(MedautoError):
    """A study of that name exists with a different search space, direction or metric."""


class CLIUsageError(MedautoError):
    """The command line is inconsistent (the CLI prints the subcommand's help)."""
