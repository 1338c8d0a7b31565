"""The one "next:" hint of every command: runnable, and never showing a secret."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from medauto.cli._store import STORAGE_ENV
from medauto.cli._store import StoreRef

__all__ = ["next_hint", "where_args"]


def where_args(ref: StoreRef, study: str) -> str:
    """``--study S --storage URL --run-dir D``: the options that find the study again.

    A URL from ``$MEDAUTO_STORAGE`` is written as ``"$MEDAUTO_STORAGE"`` (runnable and
    secret-free); a URL given with ``--storage`` is shown in the form the ``optuna`` CLI
    also reads (:func:`medauto.storage.optuna_cli_storage`), its password redacted
    (:func:`medauto.storage.redact_url`).
    """
    from medauto.storage import optuna_cli_storage
    from medauto.storage import redact_url

    parts = ["--study", shlex.quote(study)]
    if ref.from_env:
        parts += ["--storage", f'"${STORAGE_ENV}"']
    elif ref.given:
        # the form the optuna and optuna-dashboard CLIs accept too (a plain journal path)
        parts += ["--storage", shlex.quote(redact_url(optuna_cli_storage(ref.given)))]
    parts += ["--run-dir", shlex.quote(ref.run_dir)]
    return " ".join(parts)


def next_hint(ref: StoreRef, study: str, commands: Sequence[str]) -> str:
    """The ``next: medauto <cmd> <where> | ...`` line that follows a command's result.

    Args:
        ref: Where the study lives.
        study: The study name.
        commands: The suggested commands, each a subcommand with optional trailing words
            (``"best > best.yaml"``).

    Example:
        >>> ref = StoreRef(given=None, from_env=False, run_dir="runs")
        >>> next_hint(ref, "s", ["status", "best > best.yaml"])
        'next: medauto status --study s --run-dir runs  |  medauto best --study s --run-dir runs > best.yaml'
    """  # noqa: E501
    where = where_args(ref, study)
    lines = []
    for command in commands:
        name, _, tail = command.partition(" ")
        lines.append(f"medauto {name} {where}" + (f" {tail}" if tail else ""))
    return "next: " + "  |  ".join(lines)
