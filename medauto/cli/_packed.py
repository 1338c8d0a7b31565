"""Entry of one packed worker: ``python -m medauto.cli._packed`` reads its options (the
parent's parsed options, as JSON, see :func:`medauto.cli._workers.packed_job`) from stdin
and runs them as a single ``medauto worker``."""

from __future__ import annotations

import argparse
import json
import sys

from medauto.cli import run_parsed

__all__ = ["main"]


def main() -> int:
    """Runs the worker whose options arrive on stdin; returns its exit code."""
    args = argparse.Namespace(**json.loads(sys.stdin.read()))
    return run_parsed(args)


if __name__ == "__main__":
    sys.exit(main())
