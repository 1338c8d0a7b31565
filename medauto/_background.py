"""An ordered background writer: calls that need no answer leave the trial's critical path.

:class:`BackgroundWriter` runs submitted calls one at a time, in submission order, on one
thread (a one-worker thread pool). The tracker sends MLflow writes through it (per-epoch
metrics, a trial's params, the closing of its run), so a trial no longer waits for a
database round-trip per epoch and per trial; a call whose answer is needed (creating a
run: its id) waits for it with :meth:`BackgroundWriter.call`.
:meth:`BackgroundWriter.flush` waits until everything submitted so far has run; the
tracker flushes when a study ends, so what a search logged is all in the store when
``optimize()`` returns.

A call that raises is handed to ``on_error`` (the tracker turns tracking off, as a failed
synchronous call did); the writer itself goes on with the next call.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from typing import TypeVar

__all__ = ["BackgroundWriter"]

T = TypeVar("T")


class BackgroundWriter:
    """Runs calls in submission order on one thread: a one-worker
    :class:`~concurrent.futures.ThreadPoolExecutor` (its thread starts on first use, and
    at interpreter exit it finishes what is queued).

    Args:
        name: The thread's name prefix.
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
        self.on_error = on_error
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def _run(self, what: str, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported, the writer goes on
            self.on_error(what, e)
            raise

    def submit(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queues ``fn(*args)`` (``what`` names it in an error report); returns at once."""
        self._pool.submit(self._run, what, fn, args)

    def call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Queues ``fn(*args)`` behind what is queued and returns its result (or raises
        its exception, after ``on_error`` saw it)."""
        return self._pool.submit(self._run, what, fn, args).result()

    def flush(self) -> None:
        """Waits until every call submitted so far has run."""
        self._pool.submit(lambda: None).result()
