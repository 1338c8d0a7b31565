"""An ordered background writer: calls that need no answer leave the trial's critical path.

:class:`BackgroundWriter` runs submitted calls one at a time, in submission order, on one
daemon thread. The tracker sends MLflow writes through it (per-epoch metrics, a trial's
params, the closing of its run), so a trial no longer waits for a database round-trip per
epoch and per trial; a call whose answer is needed (creating a run: its id) waits for it
with :meth:`BackgroundWriter.call`. :meth:`BackgroundWriter.flush` waits until everything
submitted so far has run; the tracker flushes when a study ends, so what a search logged
is all in the store when ``optimize()`` returns.

A call that raises is handed to ``on_error`` (the tracker turns tracking off, as a failed
synchronous call did); the writer itself goes on with the next call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any
from typing import TypeVar

__all__ = ["BackgroundWriter"]

T = TypeVar("T")


class BackgroundWriter:
    """Runs calls in submission order on one daemon thread (started on first use).

    Args:
        name: The thread's name.
        on_error: Called (on the writer thread) with a description of the call and the
            exception, when a submitted call raises.

    Example:
        >>> out = []
        >>> w = BackgroundWriter("doc", on_error=lambda what, e: None)
        >>> w.submit("append", out.append, 1)
        >>> w.call("length", len, out)
        1
    """

    def __init__(self, name: str, *, on_error: Callable[[str, BaseException], None]) -> None:
        self.name = name
        self.on_error = on_error
        self._queue: queue.Queue[tuple[str, Callable[..., Any], tuple[Any, ...], Future[Any]]]
        self._queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True, name=self.name)
                self._thread.start()

    def _run(self) -> None:
        while True:
            what, fn, args, future = self._queue.get()
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - reported, the writer goes on
                future.set_exception(e)
                self.on_error(what, e)
            finally:
                self._queue.task_done()

    def _put(self, what: str, fn: Callable[..., T], args: tuple[Any, ...]) -> Future[T]:
        future: Future[T] = Future()
        self._ensure_thread()
        self._queue.put((what, fn, args, future))
        return future

    def submit(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queues ``fn(*args)`` (``what`` names it in an error report); returns at once."""
        self._put(what, fn, args)

    def call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Queues ``fn(*args)`` behind what is queued and returns its result (or raises
        its exception, after ``on_error`` saw it)."""
        return self._put(what, fn, args).result()

    def flush(self) -> None:
        """Waits until every call submitted so far has run."""
        if self._thread is not None:
            self._queue.join()
