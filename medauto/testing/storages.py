"""Real storage backends for tests: SQLite, journal file and a throwaway PostgreSQL cluster.

``StorageSupplier(mode, tmp_path)`` yields a storage URL for one of :data:`STORAGE_MODES`.
The PostgreSQL mode needs a :class:`PostgresServer` (one per test session is enough; each
supplier creates a fresh database in it). The server is a real ``postgres`` process:
``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port, password
authentication (scram-sha-256), removed on :meth:`PostgresServer.stop`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "STORAGE_MODES",
    "PostgresServer",
    "find_postgres_bindir",
    "plain_optuna_storage",
    "storage_url",
]

STORAGE_MODES = ("sqlite", "journal", "postgresql")


def find_postgres_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` ($MEDAUTO_PG_BIN, PATH, Debian layout)."""
    candidates = []
    if os.environ.get("MEDAUTO_PG_BIN"):
        candidates.append(Path(os.environ["MEDAUTO_PG_BIN"]))
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)  # type: ignore[arg-type]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (use as a context manager).

    When run as root, the server runs as the ``postgres`` system user (PostgreSQL refuses
    to run as root).
    """

    user = "medauto"

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_postgres_bindir()
        if found is None:
            raise RuntimeError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's "
                "'postgresql' package or set MEDAUTO_PG_BIN"
            )
        self.bindir = found
        self.password = uuid.uuid4().hex
        self.port = 0
        self._dir: Path | None = None

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        """Runs initdb and starts the server; returns when it accepts connections."""
        self._dir = Path(tempfile.mkdtemp(prefix="medauto-pg-"))
        pwfile = self._dir / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        data = self._dir / "data"
        self._run(
            "initdb", "-D", str(data), "-U", self.user, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "-E", "UTF8", "--no-sync",
        )
        self.port = _free_port()
        opts = f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self._dir / "server.log")
        self._run("pg_ctl", "-D", str(data), "-l", log, "-o", opts, "-w", "start")

    def stop(self) -> None:
        """Stops the server (fast mode) and deletes its files."""
        if self._dir is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self._dir / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3 driver) for ``database``, password included."""
        return (
            f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"
        )

    def create_database(self, name: str | None = None) -> str:
        """Creates an empty database and returns its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password,
            dbname="postgres", autocommit=True,
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def storage_url(
    mode: str, tmp_path: Path, *, postgres: PostgresServer | None = None
) -> Iterator[str]:
    """Yields a fresh, empty storage URL for ``mode`` (one of :data:`STORAGE_MODES`)."""
    if mode == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
    elif mode == "journal":
        yield f"journal:///{tmp_path / 'study.journal'}"
    elif mode == "postgresql":
        if postgres is None:
            raise ValueError("the postgresql mode needs a running PostgresServer")
        yield postgres.create_database()
    else:
        raise ValueError(f"unknown storage mode {mode!r}; expected one of {STORAGE_MODES}")


def plain_optuna_storage(url: str) -> object:
    """The storage a plain Optuna client opens for a medauto URL (no medauto code involved).

    ``journal:///abs/path`` becomes Optuna's ``JournalStorage(JournalFileBackend(path))``,
    any other URL Optuna's ``RDBStorage(url)`` without heartbeats: what a user's script,
    the ``optuna`` CLI or optuna-dashboard sees.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal://"):
        return optuna.storages.JournalStorage(JournalFileBackend(url.split("://", 1)[1]))
    return optuna.storages.RDBStorage(url)
