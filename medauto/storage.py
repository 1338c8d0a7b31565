"""Storage URLs → Optuna storages, with one crash-detection (heartbeat) contract on every backend.

Supported URLs:

``sqlite:///path/to/study.db``
    The default embedded store (``<run_dir>/medauto.db``). Opened in WAL mode with a 60 s
    busy timeout, so several ``medauto worker`` processes on ONE machine can share it
    without "database is locked" errors. Never put it on a network file system.
``postgresql://user:pass@host:5432/db`` (also ``postgresql+psycopg://``, ``mysql+pymysql://``)
    A database server, for workers on many machines. ``postgresql://`` uses psycopg 3 when
    psycopg2 is absent (``pip install 'medauto[postgres]'``).
``journal:///abs/path/to/study.journal`` or a plain file path (``runs/study.journal``)
    Optuna's append-only journal file, for workers sharing a (network) file system. The
    path after ``journal://`` is absolute; a plain path is resolved against the current
    folder once, when the storage is opened. :func:`optuna_cli_storage` gives the form the
    ``optuna`` and ``optuna-dashboard`` command lines accept.

The heartbeat contract (docs/distributed.md, "Heartbeat contract") is the same on every
backend, implemented once in :class:`_Contract`: a trial created through a storage of this
module is a *medauto trial* (it carries the ``worker`` user attribute from the moment it is
created); a RUNNING trial is stale when its last heartbeat is older than the grace period,
or, if it never beat, when it is a medauto trial that started longer than the grace period
ago. Trials of other clients that never beat are left alone. A stale trial is failed by the
next worker that looks and re-enqueued (same params, ``failed_trial``/``retry_history``
system attrs) up to ``max_retry`` times; the retry starts clean (no heartbeat, reason,
traceback or MLflow run of the failed attempt).
"""

from __future__ import annotations

import copy
import datetime
import errno
import os
import re
import socket
import sqlite3
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import StorageInternalError
from optuna.storages import BaseStorage
from optuna.storages import JournalStorage
from optuna.storages import RDBStorage
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from medauto import _optuna_compat as compat
from medauto.exceptions import StorageError
from medauto.keys import ATTEMPT_ATTRS
from medauto.keys import HEARTBEAT_ATTR
from medauto.keys import RETRIED_FROM_ATTR
from medauto.keys import WORKER_ATTR
from medauto.logging import get_logger

__all__ = [
    "HeartbeatJournalStorage",
    "HeartbeatRDBStorage",
    "StorageSettings",
    "default_storage_url",
    "disk_full_error",
    "open_storage",
    "optuna_cli_storage",
    "redact_url",
    "worker_id",
]

_logger = get_logger(__name__)
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


def _looks_like_path(url: str) -> bool:
    return "://" not in url and bool(url.strip()) and not re.match(r"^[A-Za-z][\w+.-]*:", url)


_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def _journal_path(url: str) -> Path:
    """The absolute file of a ``journal:///abs/path`` URL or of a plain path.

    A plain path that names an SQLite database (by suffix or by its header) is refused:
    it would otherwise be read as a journal.
    """
    if _looks_like_path(url):
        path = Path(url).expanduser().resolve()
        is_sqlite = path.suffix.lower() in _SQLITE_SUFFIXES
        if not is_sqlite and path.is_file():
            with open(path, "rb") as f:
                is_sqlite = f.read(16) == b"SQLite format 3\x00"
        if is_sqlite:
            raise StorageError(
                f"storage URL {url!r} has no scheme and names an SQLite database; use "
                f"sqlite:///{url} (a plain path is read as a journal file)"
            )
        return path
    raw = urllib.parse.unquote(url.split("://", 1)[1])
    if not raw.startswith("/") or raw.strip("/") == "":
        raise StorageError(
            f"journal URL {url!r} must name a file by its absolute path: "
            "journal:///abs/path/to/file.journal (or pass the plain path)"
        )
    return Path("/" + raw.lstrip("/"))


def optuna_cli_storage(url: str) -> str:
    """The form of ``url`` that the ``optuna`` and ``optuna-dashboard`` CLIs accept.

    Both guess the backend from the argument: a database URL is passed unchanged, a journal
    file is passed as its plain absolute path (they read an existing file that is not an
    SQLite database as a journal). The password is kept: redact it before printing.

    Example:
        >>> optuna_cli_storage("journal:///runs/a.journal")
        '/runs/a.journal'
        >>> optuna_cli_storage("sqlite:///runs/medauto.db")
        'sqlite:///runs/medauto.db'
    """
    if _looks_like_path(url) or _scheme(url) == "journal":
        return str(_journal_path(url))
    return url


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
    if _looks_like_path(url):
        return _open_journal(url, settings)
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
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=timeout)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
            finally:
                conn.close()
            return
        except sqlite3.OperationalError as e:
            # Switching the journal mode needs the file to itself and answers "database is
            # locked" at once (no busy wait) while another process does the same.
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise StorageError(f"cannot open SQLite storage {str(path)!r}: {e}") from e
            time.sleep(0.05)
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
        return _create_schema_once(url, settings, engine_kwargs)
    except ImportError as e:
        extra = "postgres" if scheme.startswith("postgres") else "mysql driver (e.g. pymysql)"
        raise StorageError(
            f"no database driver for {redact_url(url)!r} ({e}); install medauto[{extra}]"
        ) from e
    except (sqlalchemy.exc.SQLAlchemyError, StorageInternalError, ValueError) as e:
        full = disk_full_error(e, url)
        if full is not None:
            raise full from None
        reason = redact_url(str(e).splitlines()[0]) if str(e) else type(e).__name__
        raise StorageError(f"cannot open storage {redact_url(url)!r}: {reason}") from e


#: How often opening a new database is retried when another process creates its schema at
#: the same moment (both see no tables; the loser's INSERT of the version row fails).
_SCHEMA_RACE_RETRIES = 5


def _create_schema_once(
    url: str, settings: StorageSettings, engine_kwargs: dict[str, Any]
) -> HeartbeatRDBStorage:
    """Opens the RDB storage; retries when a concurrent opener wins the schema creation.

    Two processes opening one new database at once (a test polling a study that a child
    is creating, or several workers started together) race in Optuna's
    ``create_all`` + version-row insert: the loser gets ``UNIQUE constraint failed:
    alembic_version`` / ``table ... already exists``. Once the winner committed, opening
    again finds the schema and succeeds.
    """
    import sqlalchemy.exc

    def open_once() -> HeartbeatRDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return HeartbeatRDBStorage(url, settings=settings, engine_kwargs=engine_kwargs)

    for attempt in range(1, _SCHEMA_RACE_RETRIES):
        try:
            return open_once()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as e:
            text = str(e).lower()
            if "alembic_version" not in text and "already exists" not in text:
                raise
            _logger.debug("schema of %s created concurrently; opening again", redact_url(url))
            time.sleep(0.1 * attempt)
    return open_once()


def _open_journal(url: str, settings: StorageSettings) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    path = _journal_path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = _DiskFullAwareBackend(JournalFileBackend(str(path)), url)
    except OSError as e:
        full = disk_full_error(e, url)
        if full is not None:
            raise full from None
        raise StorageError(f"cannot open journal file {str(path)!r}: {e}") from e
    return HeartbeatJournalStorage(backend, settings=settings)


_DISK_FULL_TEXT = ("database or disk is full", "no space left on device", "could not extend file")


def disk_full_error(exc: BaseException, url: str | None = None) -> StorageError | None:
    """A one-line :class:`StorageError` if ``exc`` (or an exception it chains) means that a
    disk is full (``ENOSPC``, SQLite's "database or disk is full", PostgreSQL's "could not
    extend file"); else ``None``.

    Example:
        >>> err = disk_full_error(OSError(errno.ENOSPC, "No space left on device"))
        >>> str(err).split(";")[0]
        'disk full (No space left on device)'
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = str(cur).lower()
        if (isinstance(cur, OSError) and cur.errno == errno.ENOSPC) or any(
            t in text for t in _DISK_FULL_TEXT
        ):
            detail = getattr(cur, "strerror", None) or re.sub(
                r"^\([\w.]+\)\s*", "", str(cur).splitlines()[0]
            )
            where = f" while writing {redact_url(url)!r}" if url else ""
            return StorageError(
                f"disk full ({detail}){where}; free space, then re-run the same command to "
                "resume"
            )
        cur = cur.__cause__ or cur.__context__
    return None


def worker_id() -> str:
    """``host:pid`` of this process, stored on each trial it runs (:data:`WORKER_ATTR`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _new_trial_template(template: FrozenTrial | None) -> FrozenTrial | None:
    """What a trial created through a medauto storage starts from.

    A trial asked for (no template) starts RUNNING with the ``worker`` user attribute (the
    medauto marker, see :data:`WORKER_ATTR`); a retry (a WAITING template with Optuna's
    ``failed_trial`` system attribute) drops the failed attempt's reason, traceback, MLflow
    run and heartbeat and is marked too; any other template (``add_trial``) is unchanged.
    """
    if template is None:
        return FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, values=None,
            datetime_start=datetime.datetime.now(), datetime_complete=None, params={},
            distributions={}, user_attrs={WORKER_ATTR: worker_id()}, system_attrs={},
            intermediate_values={}, trial_id=-1,
        )
    if template.state == TrialState.WAITING and RETRIED_FROM_ATTR in template.system_attrs:
        template = copy.deepcopy(template)
        for key in ATTEMPT_ATTRS:
            template.user_attrs.pop(key, None)
        template.user_attrs[WORKER_ATTR] = worker_id()
        template.system_attrs.pop(HEARTBEAT_ATTR, None)
    return template


class _Contract(compat.HeartbeatHooks):
    """The heartbeat contract, written once; a backend supplies the beats it has seen.

    A RUNNING trial is stale when (a) it has beaten and its last beat is older than the
    grace period, or (b) it never beat, carries :data:`WORKER_ATTR` (a medauto trial) and
    started longer than the grace period ago. A trial without beats and without the marker
    (a plain Optuna ask/tell client) is never stale.
    """

    _settings: StorageSettings

    def _beat_ages(self, study_id: int) -> dict[int, float]:
        """``trial id -> seconds since its last beat`` for trials that have beaten."""
        raise NotImplementedError

    def stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self._settings.effective_grace_period
        ages = self._beat_ages(study_id)
        now = time.time()
        stale = []
        for t in self.get_all_trials(  # type: ignore[attr-defined]
            study_id, deepcopy=False, states=(TrialState.RUNNING,)
        ):
            tid = compat.trial_id(t)
            age = ages.get(tid)
            if age is None and WORKER_ATTR in t.user_attrs and t.datetime_start is not None:
                age = now - t.datetime_start.timestamp()
            if age is not None and age > grace:
                stale.append(tid)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._settings.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None]:
        return _retry_callback(self._settings)


def _raise_disk_full_as_storage_error(engine: Any, url: str) -> None:
    """Makes a full disk under ``engine`` raise one :class:`StorageError` line instead of
    Optuna's "invalid data in the commit" (SQLAlchemy's public ``handle_error`` event)."""
    import sqlalchemy

    def handle_error(context: Any) -> None:
        full = disk_full_error(context.original_exception, url)
        if full is not None:
            raise full

    sqlalchemy.event.listen(engine, "handle_error", handle_error)


class _DiskFullAwareBackend(BaseJournalBackend):
    """A journal backend whose full disk raises one :class:`StorageError` line."""

    def __init__(self, inner: BaseJournalBackend, url: str) -> None:
        self._inner = inner
        self._url = url

    def read_logs(self, log_number_from: int) -> Any:
        return self._inner.read_logs(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        try:
            self._inner.append_logs(logs)
        except OSError as e:
            full = disk_full_error(e, self._url)
            if full is not None:
                raise full from None
            raise


class HeartbeatRDBStorage(_Contract, compat.RDBCreateHook, RDBStorage):
    """Optuna's :class:`~optuna.storages.RDBStorage` under medauto's heartbeat contract.

    Beats are Optuna's own heartbeat rows (database server clock); trials are created from
    :func:`_new_trial_template`.
    """

    def __init__(self, url: str, *, settings: StorageSettings, **kwargs: Any) -> None:
        super().__init__(
            url,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.effective_grace_period,
            heartbeat_stale_trial_callback=_retry_callback(settings),
            **kwargs,
        )
        self._settings = settings
        _raise_disk_full_as_storage_error(self.engine, url)

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)  # a new engine: attach the disk-full hook again
        _raise_disk_full_as_storage_error(self.engine, self.url)

    def prepare_template(self, template: FrozenTrial | None) -> FrozenTrial | None:
        return _new_trial_template(template)

    def _beat_ages(self, study_id: int) -> dict[int, float]:
        return compat.rdb_heartbeat_ages(self, study_id)


class HeartbeatJournalStorage(_Contract, JournalStorage):
    """Optuna's :class:`~optuna.storages.JournalStorage` under medauto's heartbeat contract.

    A running trial's heartbeat is the study system attribute
    ``medauto:heartbeat:<trial id>`` (Unix time of the writer's clock, so keep worker
    clocks NTP-synced). Any worker may fail a stale trial: the journal accepts state
    changes from every writer until a trial is finished.
    """

    def __init__(self, backend: BaseJournalBackend, *, settings: StorageSettings) -> None:
        super().__init__(backend)
        self._settings = settings
        self._study_of_trial: dict[int, int] = {}

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, _new_trial_template(template_trial))
        self._study_of_trial[trial_id] = study_id
        return trial_id

    def _study_id_of(self, trial_id: int) -> int:
        """The study of a trial (a trial never moves; looked up once per trial)."""
        if trial_id not in self._study_of_trial:
            for frozen in self.get_all_studies():
                sid = self.get_study_id_from_name(frozen.study_name)
                for t in self.get_all_trials(sid, deepcopy=False):
                    self._study_of_trial[compat.trial_id(t)] = sid
        return self._study_of_trial[trial_id]

    def record_heartbeat(self, trial_id: int) -> None:
        study_id = self._study_id_of(trial_id)
        self.set_study_system_attr(study_id, f"{HEARTBEAT_ATTR}:{trial_id}", time.time())

    def _beat_ages(self, study_id: int) -> dict[int, float]:
        now = time.time()
        prefix = HEARTBEAT_ATTR + ":"
        return {
            int(k[len(prefix):]): now - float(v)
            for k, v in self.get_study_system_attrs(study_id).items()
            if k.startswith(prefix)
        }
