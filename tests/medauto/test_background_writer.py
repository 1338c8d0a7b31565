"""The tracker's background writer: calls run in order, off the caller's thread; a call
that raises is reported and the next one still runs; flush waits for all."""

from __future__ import annotations

import threading
import time

import pytest

from medauto._background import BackgroundWriter


def test_calls_run_in_order_on_another_thread_and_flush_waits_for_them() -> None:
    seen: list[tuple[int, str]] = []
    errors: list[str] = []
    writer = BackgroundWriter("t", on_error=lambda what, e: errors.append(what))
    release = threading.Event()

    def slow(i: int) -> None:
        release.wait(5)
        seen.append((i, threading.current_thread().name))

    t0 = time.monotonic()
    for i in range(3):
        writer.submit(f"write {i}", slow, i)
    assert time.monotonic() - t0 < 1.0 and seen == []  # the caller did not wait
    release.set()
    writer.flush()
    assert [i for i, _ in seen] == [0, 1, 2] and errors == []
    assert len({name for _, name in seen}) == 1 and seen[0][1].startswith("t")
    assert seen[0][1] != threading.current_thread().name


def test_a_failing_call_is_reported_and_the_writer_goes_on() -> None:
    errors: list[tuple[str, str]] = []
    writer = BackgroundWriter("t", on_error=lambda what, e: errors.append((what, str(e))))
    writer.submit("fail", lambda: 1 / 0)
    assert writer.call("answer", lambda: 42) == 42
    with pytest.raises(KeyError):
        writer.call("lookup", {}.__getitem__, "k")
    assert errors == [("fail", "division by zero"), ("lookup", "'k'")]
