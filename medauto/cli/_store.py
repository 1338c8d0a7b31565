"""Where the CLI's study lives: the storage URL as given, the run folder, reading a study.

Read commands (``status``, ``best``, ``retrain``, ``report``, ``export``, ``dashboard``)
never create a store: :func:`open_existing_storage` checks that an SQLite or journal file
exists before it is opened, and says where it looked.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medauto.exceptions import MedautoError

if TYPE_CHECKING:
    import optuna

__all__ = ["STORAGE_ENV", "StoreRef", "load_study", "open_existing_storage", "results_study",
           "store_file"]

#: The environment variable ``--storage`` falls back to.
STORAGE_ENV = "MEDAUTO_STORAGE"


@dataclass(frozen=True)
class StoreRef:
    """The study store named on the command line.

    Args:
        given: The URL from ``--storage`` or ``$MEDAUTO_STORAGE``; ``None`` → the default
            SQLite file in ``run_dir``.
        from_env: Whether ``given`` came from ``$MEDAUTO_STORAGE``.
        run_dir: The ``--run-dir`` folder (default store, run outputs).
    """

    given: str | None
    from_env: bool
    run_dir: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StoreRef:
        """Reads ``--storage`` (else ``$MEDAUTO_STORAGE``) and ``--run-dir``."""
        flag = getattr(args, "storage", None)
        env = os.environ.get(STORAGE_ENV) or None
        return cls(given=flag or env, from_env=flag is None and env is not None,
                   run_dir=str(args.run_dir))

    @property
    def url(self) -> str:
        """The storage URL to open."""
        from medauto.storage import default_storage_url

        return self.given or default_storage_url(self.run_dir)

    def describe(self) -> str:
        """The store for messages: the URL with its password redacted."""
        from medauto.storage import redact_url

        return redact_url(self.url)


def store_file(url: str) -> Path | None:
    """The file an SQLite or journal URL names (``None`` for a database server).

    Follows :func:`medauto.storage.open_storage`'s reading of the URL.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.split("+", 1)[0].lower()
    if not sep or scheme not in ("sqlite", "journal") or not rest.startswith("/"):
        return None
    return Path(urllib.parse.unquote(rest[1:].split("?", 1)[0]))


def open_existing_storage(ref: StoreRef) -> optuna.storages.BaseStorage:
    """Opens the store of ``ref`` without creating it.

    Raises:
        MedautoError: an SQLite or journal file that does not exist (naming where it was
            looked for).
        StorageError: the store cannot be opened.
    """
    from medauto.storage import open_storage

    path = store_file(ref.url)
    if path is not None and not path.is_file():
        hint = "" if ref.given else " (pass --run-dir or --storage to say where the study is)"
        raise MedautoError(
            f"no study store at {str(path.resolve())!r} ({ref.describe()}){hint}"
        )
    return open_storage(ref.url)


def load_study(ref: StoreRef, name: str | None) -> optuna.Study:
    """The study ``name`` in the store of ``ref``; ``None`` → the store's only study
    (:func:`medauto.study.load_existing_study`).

    Raises:
        MedautoError: no store, no such study, no study at all, or several studies and
            no ``name`` (the message lists them).
    """
    from medauto.study import load_existing_study

    return load_existing_study(name, open_existing_storage(ref), where=ref.describe())


def results_study(run_dir: str, name: str | None) -> str:
    """``name``, or the only study with results in ``run_dir`` (a ``medauto retrain``
    result or a final model), for the commands that read results, not the store
    (``export``, ``explain``).

    Raises:
        MedautoError: ``name`` is ``None`` and ``run_dir`` holds results of no study or of
            several (the message names the folder and lists them).
    """
    if name is not None:
        return name
    from medauto.ensemble import PREDICTOR_FILE
    from medauto.final import final_dir

    root = Path(run_dir)
    retrained = {p.parent.name for p in root.glob("retrain/*/retrain.json")}
    final = {p.parents[1].name
             for p in final_dir(root, "*").parent.glob(f"*/predictor/{PREDICTOR_FILE}")}
    names = sorted(retrained | final)
    if len(names) != 1:
        found = f"results of {len(names)} studies: {names}" if names else "no results"
        raise MedautoError(
            f"{str(root.resolve())!r} holds {found}; pass --study NAME (or --model, or "
            "--run-dir to say where the results are)"
        )
    return names[0]
