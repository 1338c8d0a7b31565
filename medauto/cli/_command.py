"""The shape of a ``medauto`` subcommand (Optuna's ``_BaseCommand`` pattern)."""

from __future__ import annotations

import argparse
from typing import ClassVar

__all__ = ["RESUME_NOTE", "Command"]

#: The interrupt note of the commands that run trials.
RESUME_NOTE = (
    "the running trial was recorded as 'interrupted'. Re-run the same command to resume."
)


class Command:
    """One subcommand: ``add_arguments`` declares its options, ``take_action`` runs it.

    The class docstring is the subcommand's help text (first line: the one-line summary).
    Commands stay thin: they turn parsed options into data and call the public API.
    """

    name: ClassVar[str]
    #: What Ctrl-C/SIGTERM leaves behind, for the "interrupted" line (commands that run
    #: trials record the running one and resume; the others only stop).
    on_interrupt: ClassVar[str] = "stopped; the study itself is unchanged"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        """Declares the subcommand's options on ``p``."""

    def take_action(self, args: argparse.Namespace) -> int:
        """Runs the subcommand with the parsed ``args``; returns the exit code."""
        raise NotImplementedError
