"""medauto's logging: library root loggers with a verbosity API (Optuna-style).

Each medauto module does ``_logger = get_logger(__name__)``. One stderr handler is
installed, once and lock-guarded, on the ``medauto`` root. med_core is a library that never
installs a handler; only the CLI (through :func:`set_verbosity`) attaches the same handler
to the ``med_core`` root, so a Python user's own logging set-up sees med_core's records.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO

__all__ = ["ROOT_LOGGERS", "get_logger", "set_verbosity"]

_lock = threading.Lock()
_default_handler: logging.Handler | None = None
#: The library roots whose records medauto's handler writes.
ROOT_LOGGERS = ("medauto", "med_core")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler on whatever ``sys.stderr`` is when a record is written (as
    :data:`logging.lastResort`), so a redirected stderr (a test, a notebook) sees the log,
    and :func:`tqdm.contrib.logging.logging_redirect_tqdm` recognises it as the console."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        """The current ``sys.stderr``."""
        return sys.stderr


def _configure_library_root_logger() -> None:
    global _default_handler
    with _lock:
        if _default_handler is not None:
            return
        _default_handler = _StderrHandler()
        _default_handler.setFormatter(
            logging.Formatter("[%(levelname)1.1s %(asctime)s %(name)s] %(message)s", "%H:%M:%S")
        )
        root = logging.getLogger("medauto")
        root.addHandler(_default_handler)
        if root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        root.propagate = False


def _reset_library_root_logger() -> None:
    """Removes the default handler again (for tests)."""
    global _default_handler
    with _lock:
        if _default_handler is None:
            return
        for name in ROOT_LOGGERS:
            root = logging.getLogger(name)
            root.removeHandler(_default_handler)
            root.setLevel(logging.NOTSET)
            root.propagate = True
        _default_handler = None


def get_logger(name: str) -> logging.Logger:
    """The logger ``name`` (a dotted module name under ``medauto``), with the roots set up."""
    _configure_library_root_logger()
    return logging.getLogger(name)


def set_verbosity(level: int) -> None:
    """Sets the level of the ``medauto`` and ``med_core`` roots (e.g. ``logging.DEBUG``) and
    routes ``med_core``'s records to medauto's stderr handler (the CLI calls this)."""
    _configure_library_root_logger()
    core = logging.getLogger("med_core")
    if _default_handler not in core.handlers:
        core.addHandler(_default_handler)  # type: ignore[arg-type]
        core.propagate = False
    for name in ROOT_LOGGERS:
        logging.getLogger(name).setLevel(level)
