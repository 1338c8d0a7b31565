"""Storage URLs → Optuna storages, with crash detection (heartbeat) on every backend.

Supported URLs:

``sqlite:///path/to/study.db``
    The default embedded store (``<run_dir>/medauto.db``). Opened in WAL mode with a 60 s
    busy timeout, so several ``medauto worker`` processes on ONE machine can share it
    without "database is locked" errors. Never put it on a network file system.
``postgresql://user:pass@host:5432/db`` (also ``postgresql+psycopg://``, ``mysql+pymysql://``)
    A database server, for workers on many machines. ``postgresql://`` uses psycopg 3 when
    psycopg2 is absent (``pip install 'medauto[postgres]'``).
``journal:///path/to/study.journal``
    Optuna's append-only journal file, for workers sharing a (network) file system.

Every backend gets the same heartbeat contract (Optuna's ``BaseHeartbeat``): a running
trial records a heartbeat every ``heartbeat_interval`` seconds; a trial whose last beat is
older than ``grace_period`` is failed by the next worker that looks, and re-enqueued (same
params, ``failed_trial``/``retry_history`` system attrs) up to ``max_retry`` times. RDB
storages use Optuna's own implementation; the journal backend uses
:class:`HeartbeatJournalStorage`, which keeps the beat in a trial system attribute.
"""

from __future__ import annotations

import re
import sqlite3
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages import JournalStorage
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from medauto.exceptions import StorageError

__all__ = [
    "HEARTBEAT_ATTR",
    "HeartbeatJournalStorage",
    "StorageSettings",
    "default_storage_url",
    "open_storage",
    "redact_url",
]

HEARTBEAT_ATTR = "medauto:heartbeat"
_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")
_URL_FORMS = (
    "sqlite:///path/to/study.db, postgresql://user:password@host:5432/dbname, "
    "mysql+pymysql://user:password@host/dbname, journal:///path/to/study.journal"
)


@dataclass(frozen=True)
class StorageSettings:
    """Crash-detection settings shared by every backend.

    Args:
        heartbeat_interval: Seconds between heartbeats of a running trial.
        grace_period: Seconds without a heartbeat after which a running trial counts as
            dead; ``None`` means ``3 * heartbeat_interval``.
        max_retry: How often a dead worker's trial is re-enqueued with the same params.
        sqlite_timeout: Seconds an SQLite writer waits for a lock before failing.
    """

    heartbeat_interval: int = 10
    grace_period: int | None = None
    max_retry: int = 2
    sqlite_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0:
            raise ValueError(
                f"heartbeat_interval must be > 0 seconds, got {self.heartbeat_interval}"
            )
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period must exceed heartbeat_interval ({self.heartbeat_interval} s), "
                f"got {self.grace_period}"
            )
        if self.max_retry < 0:
            raise ValueError(f"max_retry must be >= 0, got {self.max_retry}")

    @property
    def effective_grace_period(self) -> int:
        """The grace period in seconds after defaults are applied."""
        return self.grace_period or 3 * self.heartbeat_interval


def redact_url(url: str) -> str:
    """Replaces the password of a URL (and any ``password=`` query value) with ``***``.

    Example:
        >>> redact_url("postgresql://bob:s3cret@db:5432/optuna")
        'postgresql://bob:***@db:5432/optuna'
        >>> redact_url("sqlite:///runs/medauto.db")
        'sqlite:///runs/medauto.db'
    """
    redacted = re.sub(r"(://[^:/@\s]*:)([^@\s]*)(@)", r"\1***\3", url)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", redacted)


def default_storage_url(run_dir: str | Path) -> str:
    """The zero-setup store: an SQLite file ``medauto.db`` inside ``run_dir``."""
    return f"sqlite:///{Path(run_dir).resolve() / 'medauto.db'}"


def _scheme(url: str) -> str:
    if "://" not in url:
        raise StorageError(
            f"storage URL {redact_url(url)!r} has no scheme; use one of: {_URL_FORMS}"
        )
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def open_storage(url: str, settings: StorageSettings | None = None) -> BaseStorage:
    """Opens the Optuna storage behind ``url`` with heartbeat and retry enabled.

    Args:
        url: A storage URL (see the module docstring).
        settings: Heartbeat and retry settings; defaults to :class:`StorageSettings()`.

    Returns:
        An Optuna storage that also implements ``BaseHeartbeat``.

    Raises:
        StorageError: unknown scheme, missing driver, unreachable server, unwritable file;
            the message shows the URL with its password redacted.
    """
    settings = settings or StorageSettings()
    scheme = _scheme(url)
    if scheme == "journal":
        return _open_journal(url, settings)
    if scheme in _RDB_SCHEMES:
        return _open_rdb(url, scheme, settings)
    raise StorageError(
        f"unsupported storage URL scheme {scheme!r} in {redact_url(url)!r}; "
        f"use one of: {_URL_FORMS}"
    )


def _retry_callback(settings: StorageSettings) -> Callable[[optuna.Study, FrozenTrial], None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry)


def _sqlite_path(url: str) -> Path:
    raw = url.split("://", 1)[1]
    if not raw.startswith("/") or raw in ("/", "/:memory:"):
        raise StorageError(
            f"SQLite URL {url!r} must name a file: sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    return Path(urllib.parse.unquote(raw[1:].split("?", 1)[0]))


def _prepare_sqlite(url: str, timeout: float) -> None:
    """Creates the parent folder and switches the file to WAL mode (a persistent setting)."""
    path = _sqlite_path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path, timeout=timeout) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as e:
        raise StorageError(f"cannot open SQLite storage {str(path)!r}: {e}") from e


def _normalise_driver(url: str, scheme: str) -> str:
    """``postgresql://`` → ``postgresql+psycopg://`` when only psycopg 3 is installed."""
    import importlib.util

    head = url.split("://", 1)[0]
    if scheme in ("postgresql", "postgres") and "+" not in head:
        if importlib.util.find_spec("psycopg2") is None:
            if importlib.util.find_spec("psycopg") is None:
                raise StorageError(
                    "PostgreSQL storage needs a driver: pip install 'medauto[postgres]'"
                )
            return "postgresql+psycopg://" + url.split("://", 1)[1]
        if scheme == "postgres":
            return "postgresql://" + url.split("://", 1)[1]
    return url


def _open_rdb(url: str, scheme: str, settings: StorageSettings) -> BaseStorage:
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        _prepare_sqlite(url, settings.sqlite_timeout)
        engine_kwargs["connect_args"] = {"timeout": settings.sqlite_timeout}
    else:
        url = _normalise_driver(url, scheme)
        engine_kwargs["pool_pre_ping"] = True
        engine_kwargs["pool_recycle"] = 3600
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.effective_grace_period,
                heartbeat_stale_trial_callback=_retry_callback(settings),
            )
    except ImportError as e:
        extra = "postgres" if scheme.startswith("postgres") else "mysql driver (e.g. pymysql)"
        raise StorageError(
            f"no database driver for {redact_url(url)!r} ({e}); install medauto[{extra}]"
        ) from e
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
        reason = redact_url(str(e).splitlines()[0]) if str(e) else type(e).__name__
        raise StorageError(f"cannot open storage {redact_url(url)!r}: {reason}") from e


def _open_journal(url: str, settings: StorageSettings) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    raw = url.split("://", 1)[1]
    if not raw.startswith("/") or raw == "/":
        raise StorageError(f"journal URL {url!r} must name a file: journal:///path/to/file.journal")
    path = Path(urllib.parse.unquote(raw[1:]))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path))
    except OSError as e:
        raise StorageError(f"cannot open journal file {str(path)!r}: {e}") from e
    return HeartbeatJournalStorage(backend, settings=settings)


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's :class:`~optuna.storages.JournalStorage` plus the ``BaseHeartbeat`` contract.

    A running trial's heartbeat is the system attribute ``medauto:heartbeat`` (Unix time of
    the writer's clock, so keep worker clocks NTP-synced); a RUNNING trial without one falls
    back to its start time. Any worker may fail a stale trial: the journal accepts state
    changes from every writer until a trial is finished.
    """

    def __init__(self, backend: BaseJournalBackend, *, settings: StorageSettings) -> None:
        super().__init__(backend)
        self._settings = settings

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        grace = self._settings.effective_grace_period
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = t.system_attrs.get(HEARTBEAT_ATTR)
            if beat is None and t.datetime_start is not None:
                beat = t.datetime_start.timestamp()
            if beat is not None and now - float(beat) > grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._settings.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None]:
        return _retry_callback(self._settings)
