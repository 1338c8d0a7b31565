"""Interrupts of a worker loop: a Ctrl-C or SIGTERM that always lands, and never between
the storage creating a trial and the loop knowing of it (:class:`InterruptLatch`)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from medauto.logging import get_logger

__all__ = ["InterruptLatch"]

_logger = get_logger(__name__)


class InterruptLatch:
    """Makes sure a Ctrl-C (SIGINT) or SIGTERM interrupts the worker, wherever it lands.

    Python runs a signal handler at the main thread's next bytecode, and when that is
    inside a weakref callback or ``__del__`` the handler's ``KeyboardInterrupt`` is
    printed ("Exception ignored in: <function _get_module_lock.<locals>.cb>") and
    dropped: a Ctrl-C that arrives while a trial imports a module (torchvision, a
    backbone) is lost, and the trial trains on. This latch wraps the current Python
    handlers of SIGINT and SIGTERM (never ``SIG_IGN``/``SIG_DFL``: an ignored signal stays
    ignored) for the duration of the worker loop; a watchdog thread re-delivers the
    signal every :attr:`REDELIVER_S` until the loop has seen the ``KeyboardInterrupt``
    (:meth:`seen`). A re-delivered signal that arrives after that is dropped, so it never
    interrupts the recording of the interrupted trial. Only on the main thread.
    """

    REDELIVER_S = 1.0
    _current: InterruptLatch | None = None

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._holding = False
        self._held: int | None = None
        self._pending: int | None = None
        self._since = 0.0
        self._redelivered = False
        self._seen = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> InterruptLatch:

        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(sig)
            if callable(handler):
                self._previous[sig] = handler
                signal.signal(sig, self._handle)
        if self._previous:
            InterruptLatch._current = self
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="medauto-interrupt")
            self._thread.start()
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self._holding:
            self._held = signum  # delivered when the held block ends (:meth:`held`)
            return
        if self._redelivered and self._seen:
            return  # a re-delivery that lost the race against the loop's handling
        self._redelivered = False
        if not self._seen and self._pending is None:
            self._pending, self._since = signum, time.monotonic()
        self._previous[signum](signum, frame)

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            pending = self._pending
            if pending is not None and not self._seen and (
                time.monotonic() - self._since >= self.REDELIVER_S
            ):
                _logger.debug("signal %d was swallowed; delivering it again", pending)
                self._redelivered = True
                self._since = time.monotonic()
                os.kill(os.getpid(), pending)

    @classmethod
    @contextmanager
    def held(cls) -> Iterator[None]:
        """Holds a Ctrl-C or SIGTERM back while the block runs and delivers it when the block
        ends. ``study.ask()`` creates the trial in the storage and only then returns it: an
        interrupt landing in between would leave a RUNNING trial that no worker knows of
        (until a later run's heartbeat check fails it). Held, the ask either returns its
        trial, which the loop then records as interrupted, or never started."""
        latch = cls._current
        if latch is None:
            yield
            return
        latch._holding = True
        try:
            yield
        finally:
            latch._holding = False
            signum, latch._held = latch._held, None
            if signum is not None:
                latch._handle(signum, None)

    @classmethod
    def seen(cls) -> None:
        """Called where the loop catches ``KeyboardInterrupt``: the signal has landed."""
        latch = cls._current
        if latch is not None:
            latch._seen = True

    def __exit__(self, *exc: object) -> None:

        self._seen = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if InterruptLatch._current is self:
            InterruptLatch._current = None
