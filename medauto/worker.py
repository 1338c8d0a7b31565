"""The trial loop one worker runs: ask, heartbeat, train, tell — until the study's target.

The target counts finished trials of the whole study (COMPLETE + PRUNED), not this
worker's, so any number of workers on any machines stop together at exactly ``target``:

1. before asking, a worker fails stale trials (dead workers; their params are re-enqueued)
   and stops if ``finished >= target``; if ``finished + running >= target`` it waits,
   because a running trial may still die and need a retry;
2. after asking, it re-counts the trials that came first (finished, or running with a
   lower number); if the target is already covered, the new trial is closed as FAIL with
   reason ``surplus`` instead of being trained — this is what makes the count exact when
   two workers ask at the same moment.

Every failed or pruned trial carries a ``reason`` user attribute (``pruned``, ``nan_loss``,
``oom``, ``interrupted``, ``surplus`` or ``error: <Type>: <message>``).

Timing hook (off by default, for ``benchmarks/search_overhead.py``): when the environment
variable ``MEDAUTO_TIMING_FILE`` names a file, the worker loop, the objective and the
tracker append one JSON line per phase to it (:func:`timed`, :func:`record_phase`):
``{"pid": ..., "trial": 3, "phase": "ask", "t0": <unix s>, "t1": <unix s>}``. Phases do
not nest except ``objective`` (the whole objective call), which contains the others.
Nothing is written, and no file is opened, while the variable is unset.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import optuna
from optuna.trial import TrialState

from med_core.device import is_oom as _is_oom
from med_core.device import release_memory
from medauto import _optuna_compat as compat
from medauto._background import BackgroundWriter
from medauto._interrupt import InterruptLatch
from medauto._progress import trial_summary
from medauto.keys import DEVICE_ATTR
from medauto.keys import DURATION_ATTR
from medauto.keys import REASON_ATTR
from medauto.keys import TRACEBACK_ATTR
from medauto.keys import WORKER_ATTR
from medauto.logging import get_logger
from medauto.storage import disk_full_error
from medauto.storage import worker_id
from medauto.trial_note import save_trial_note

__all__ = [
    "TIMING_ENV",
    "WorkerReport",
    "ask",
    "classify_failure",
    "record_phase",
    "run_worker",
    "study_counts",
    "timed",
    "worker_id",
]

#: The ``reason`` of a trial failed because its worker stopped beating.
LOST_REASON = "worker lost (heartbeat stale)"

_logger = get_logger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

#: Environment variable naming the JSON-lines file of the timing hook (unset: off).
TIMING_ENV = "MEDAUTO_TIMING_FILE"
#: Unix time when this module was imported (the ``imported`` phase of the timing hook).
_IMPORTED_AT = time.time()
_timing_lock = threading.Lock()
_imported_recorded = False


def record_phase(phase: str, t0: float, t1: float, trial: int | None = None) -> None:
    """Appends one phase (Unix times ``t0``..``t1`` in seconds) to ``$MEDAUTO_TIMING_FILE``.

    Does nothing when the variable is unset. The first record of a process is preceded by
    an ``imported`` point (``t0 == t1``) at the time this module was imported. Never raises
    an ``OSError``: a timing file that cannot be written only logs a debug message.
    """
    global _imported_recorded
    path = os.environ.get(TIMING_ENV)
    if not path:
        return
    pid = os.getpid()
    lines = []
    with _timing_lock:
        if not _imported_recorded:
            _imported_recorded = True
            lines.append({"pid": pid, "trial": None, "phase": "imported",
                          "t0": _IMPORTED_AT, "t1": _IMPORTED_AT})
        lines.append({"pid": pid, "trial": trial, "phase": phase, "t0": t0, "t1": t1})
        text = "".join(json.dumps(rec) + "\n" for rec in lines)
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError:
            _logger.debug("cannot append to the timing file %s", path, exc_info=True)


@contextmanager
def timed(phase: str, trial: int | None = None) -> Iterator[None]:
    """Records the time the ``with`` body takes as ``phase`` (see :func:`record_phase`).

    Example:
        >>> with timed("ask", trial=0):  # a no-op unless MEDAUTO_TIMING_FILE is set
        ...     pass
    """
    if not os.environ.get(TIMING_ENV):
        yield
        return
    t0 = time.time()
    try:
        yield
    finally:
        record_phase(phase, t0, time.time(), trial)


@dataclass
class WorkerReport:
    """What one worker did: trial numbers by final state, and why it stopped."""

    trials: dict[str, list[int]] = field(default_factory=dict)
    stop_reason: str = ""

    def add(self, state: str, number: int) -> None:
        self.trials.setdefault(state, []).append(number)


def study_counts(study: optuna.Study) -> Counter[TrialState]:
    """Trial counts by state, read fresh from storage."""
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def classify_failure(exc: BaseException) -> tuple[TrialState, str]:
    """Maps an exception raised by a trial to the state it is recorded in and a reason.

    NaN loss and out-of-memory are recorded as PRUNED (the samplers learn from pruned
    trials and avoid the region; they ignore FAIL); everything else is FAIL.
    """
    from med_core.exceptions import NonFiniteLossError

    if isinstance(exc, optuna.TrialPruned):
        return TrialState.PRUNED, "pruned"
    if isinstance(exc, NonFiniteLossError):
        return TrialState.PRUNED, "nan_loss"
    if _is_oom(exc):
        return TrialState.PRUNED, "oom"
    if isinstance(exc, KeyboardInterrupt):
        return TrialState.FAIL, "interrupted"
    message = str(exc).splitlines()[0] if str(exc) else ""
    return TrialState.FAIL, f"error: {type(exc).__name__}: {message}"[:500]


class _Heartbeat:
    """Records the trial's heartbeat now and then every interval from a daemon thread."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self._storage = compat.heartbeat_storage(study)
        self._trial_id = trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if self._storage is not None:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="medauto-hb")
            self._thread.start()
        return self

    def _beat(self) -> None:
        assert self._storage is not None
        interval = self._storage.get_heartbeat_interval() or 10
        while True:
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception:  # noqa: BLE001 - a missed beat must never kill the trial
                _logger.warning("heartbeat for trial id %s failed", self._trial_id, exc_info=True)
            if self._stop.wait(interval):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def fail_stale_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Fails the study's stale trials (docs/distributed.md), re-enqueues them, returns them.

    Each one gets the reason :data:`LOST_REASON` before it is failed; only the worker
    whose state change wins returns (and retries) a trial, so callers may close its
    MLflow run. Does nothing on a storage without heartbeats.
    """
    storage = compat.heartbeat_storage(study)
    if storage is None:
        return []
    failed = []
    for tid in compat.stale_trial_ids(storage, compat.study_id(study)):
        try:
            storage.set_trial_user_attr(tid, REASON_ATTR, LOST_REASON)
            if storage.set_trial_state_values(tid, state=TrialState.FAIL):
                failed.append(storage.get_trial(tid))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it first
    callback = storage.get_heartbeat_stale_trial_callback()
    for frozen in failed:
        _logger.warning("trial %d: %s; failed it", frozen.number, LOST_REASON)
        if callback is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                callback(study, frozen)
    return failed


def _is_surplus(study: optuna.Study, trial: optuna.Trial, target: int) -> bool:
    ahead = 0
    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number:
            continue
        if t.state in FINISHED or (t.state == TrialState.RUNNING and t.number < trial.number):
            ahead += 1
    return ahead >= target


def run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    target: int,
    timeout: float | None = None,
    poll_interval: float = 2.0,
    device: str = "",
    on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    progress: Any = None,
    max_failures: int | None = None,
) -> WorkerReport:
    """Runs trials of ``study`` until it has ``target`` finished trials or ``timeout`` passes.

    Args:
        study: The (shared) study.
        objective: Called with each trial; returns the value or raises.
        target: Finished (complete + pruned) trials the whole study should reach.
        timeout: Seconds after which this worker starts no new trial.
        poll_interval: Seconds between checks while other workers finish the last trials.
        device: Recorded on each trial as the ``device`` user attribute.
        on_trial_end: Called with each trial this worker finished, also an interrupted one
            (tracking closes its run there).
        progress: An object with ``update(study)`` (e.g. :class:`medauto._progress.SearchProgress`).
        max_failures: Stop after this many trials in a row failed (state FAIL) in this
            worker; ``None`` never stops.

    Returns:
        A :class:`WorkerReport`.

    Raises:
        KeyboardInterrupt: after recording the running trial as FAIL/``interrupted``.
        MedautoError: ``max_failures`` trials in a row failed (the message gives the last
            reason).
        StorageError: a disk is full (one line: "disk full (...)"); the running trial is
            left to the heartbeat, which retries it once a worker runs again.
    """
    try:
        with InterruptLatch():
            return _run_loop(study, objective, target=target, timeout=timeout,
                             poll_interval=poll_interval, device=device,
                             on_trial_end=on_trial_end, progress=progress,
                             max_failures=max_failures)
    except (Exception, KeyboardInterrupt) as exc:
        full = disk_full_error(exc)
        if full is not None:
            raise full from None
        raise


def ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()`` for a medauto worker. Optuna warns that heartbeats are meant for
    ``Study.optimize``; the worker loop runs the same heartbeat thread and stale-trial
    check itself, so the warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask()


def _run_loop(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    target: int,
    timeout: float | None,
    poll_interval: float,
    device: str,
    on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None,
    progress: Any,
    max_failures: int | None,
) -> WorkerReport:
    report = WorkerReport()
    start = time.monotonic()
    # Dashboard notes are written off the critical path; the loop ends once they are in.
    notes = BackgroundWriter("medauto-notes", on_error=_note_failed)
    metric_names = study.metric_names  # set when the study is created; read once
    with _long_lived_objects_frozen(), _flushed(notes):
        failures_in_a_row = 0
        while True:
            if timeout is not None and time.monotonic() - start >= timeout:
                report.stop_reason = "timeout"
                break
            with timed("study_poll"):
                for lost in fail_stale_trials(study):
                    _end_trial(study, lost, on_trial_end)  # closes the lost worker's run
                counts = study_counts(study)
                if progress is not None:
                    progress.update(study)
            finished = sum(counts[s] for s in FINISHED)
            if finished >= target:
                report.stop_reason = "target reached"
                break
            if finished + counts[TrialState.RUNNING] >= target and not counts[TrialState.WAITING]:
                time.sleep(poll_interval)
                continue
            trial = None
            try:
                with InterruptLatch.held(), timed("ask"):
                    trial = ask(study)
                with timed("surplus_check", trial.number):
                    surplus = _is_surplus(study, trial, target)
                if surplus:
                    trial.set_user_attr(REASON_ATTR, "surplus")
                    study.tell(trial, state=TrialState.FAIL)
                    report.add("surplus", trial.number)
                    continue
                if progress is not None:
                    progress.update(study)  # counts this trial as running
                frozen = _run_trial(study, trial, objective, device, on_trial_end, notes)
            except KeyboardInterrupt:
                InterruptLatch.seen()
                if trial is not None:
                    _record_interrupted(study, trial, on_trial_end)
                raise
            _logger.info(trial_summary(study, frozen, metric_names=metric_names))
            report.add(frozen.state.name.lower(), frozen.number)
            failures_in_a_row = failures_in_a_row + 1 if frozen.state == TrialState.FAIL else 0
            if max_failures is not None and failures_in_a_row >= max_failures:
                from medauto.exceptions import MedautoError

                report.stop_reason = "too many failures"
                raise MedautoError(
                    f"{failures_in_a_row} trials in a row failed in this worker (last: trial "
                    f"{frozen.number}, "
                    f"{frozen.user_attrs.get(REASON_ATTR, 'no reason recorded')}); fix the cause "
                    f"(each failed trial keeps its traceback as the '{TRACEBACK_ATTR}' user "
                    "attribute; `medauto status` lists the reasons), then re-run to resume"
                )
    if progress is not None:
        progress.update(study)
    return report


def _record_interrupted(
    study: optuna.Study,
    trial: optuna.Trial,
    on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None,
) -> None:
    """Records as FAIL/``interrupted`` a trial that a Ctrl-C or SIGTERM stopped outside its
    objective (after ``ask``, before training starts, or while its result is told): it
    would otherwise stay RUNNING until the heartbeat fails it in a later run. A trial
    already told (the objective's own interrupt handling) keeps its state."""
    InterruptLatch.seen()
    if study.get_trials(deepcopy=False)[trial.number].state != TrialState.RUNNING:
        return
    trial.set_user_attr(REASON_ATTR, classify_failure(KeyboardInterrupt())[1])
    study.tell(trial, state=TrialState.FAIL)
    _end_trial(study, study.get_trials(deepcopy=False)[trial.number], on_trial_end)


def _run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: Callable[[optuna.Trial], float],
    device: str,
    on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None,
    notes: BackgroundWriter,
) -> optuna.trial.FrozenTrial:
    n = trial.number
    with timed("trial_attrs", n):
        # A medauto storage creates the trial with this attribute (storage._new_trial_template);
        # a trial of another storage, or an enqueued one, gets it here.
        if trial.user_attrs.get(WORKER_ATTR) != worker_id():
            trial.set_user_attr(WORKER_ATTR, worker_id())
        if device:
            trial.set_user_attr(DEVICE_ATTR, device)
    t0 = time.perf_counter()
    with _Heartbeat(study, compat.trial_id(trial)):
        try:
            with timed("objective", n):
                value = objective(trial)
        except (Exception, KeyboardInterrupt) as exc:
            if isinstance(exc, KeyboardInterrupt):
                InterruptLatch.seen()
            if disk_full_error(exc) is not None:
                raise  # run_worker turns it into one line; no later trial can succeed
            state, reason = classify_failure(exc)
            with timed("tell", n):
                trial.set_user_attr(REASON_ATTR, reason)
                trial.set_user_attr(DURATION_ATTR, round(time.perf_counter() - t0, 3))
                if state == TrialState.FAIL:
                    _logger.warning(
                        "trial %d failed (%s) with params %s", n, reason, trial.params,
                        exc_info=not isinstance(exc, KeyboardInterrupt),
                    )
                    trial.set_user_attr(
                        TRACEBACK_ATTR, "".join(traceback.format_exception(exc))[-4000:]
                    )
                study.tell(trial, state=state)
                frozen = _told(study, trial)
            _end_trial(study, frozen, on_trial_end)
            if isinstance(exc, KeyboardInterrupt):
                raise
            notes.submit("dashboard note", _save_note, study, trial, frozen)
            _release_memory(n)
            return frozen
    with timed("tell", n):
        trial.set_user_attr(DURATION_ATTR, round(time.perf_counter() - t0, 3))
        study.tell(trial, value)
        frozen = _told(study, trial)
    _end_trial(study, frozen, on_trial_end)
    notes.submit("dashboard note", _save_note, study, trial, frozen)
    _release_memory(n)
    return frozen


def _told(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The trial as just told: one trial read from the storage, not the whole study."""
    return compat.study_storage(study).get_trial(compat.trial_id(trial))


def _save_note(study: optuna.Study, trial: optuna.Trial,
               frozen: optuna.trial.FrozenTrial) -> None:
    with timed("trial_note", trial.number):
        save_trial_note(study, trial, frozen)


def _note_failed(what: str, exc: BaseException) -> None:
    _logger.warning("%s failed (%s: %s)", what, type(exc).__name__, exc)


@contextmanager
def _flushed(writer: BackgroundWriter) -> Iterator[None]:
    try:
        yield
    finally:
        writer.flush()


def _end_trial(
    study: optuna.Study,
    frozen: optuna.trial.FrozenTrial,
    on_trial_end: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None,
) -> None:
    if on_trial_end is not None:
        with timed("trial_end_hook", frozen.number):
            on_trial_end(study, frozen)


@contextmanager
def _long_lived_objects_frozen() -> Iterator[None]:
    """Keeps every object alive now (imported modules, the dataset, storage and MLflow
    clients) out of the garbage collector's reach while the worker loop runs
    (:func:`gc.freeze`, undone on exit).

    The full collection after each trial (:func:`_release_memory`) then scans only what
    trials created; with torch, Optuna, SQLAlchemy and MLflow loaded, a full collection
    otherwise costs up to a second per trial on a slow CPU.
    """
    import gc

    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _release_memory(trial: int | None = None) -> None:
    """Frees what the last trial left behind (:func:`med_core.device.release_memory`),
    then freezes what survived (:func:`gc.freeze`).

    What outlives a trial's full collection is long-lived (modules the first trials
    imported: torchvision, timm, matplotlib; the sampler's and the storage's state), so
    the next trial's collection scans only what that trial created; unfrozen, the
    survivors of every trial would be scanned again after every later trial. Frozen
    objects are still freed by reference counting; :func:`_long_lived_objects_frozen`
    unfreezes them all when the loop ends.
    """
    import gc

    with timed("release_memory", trial):
        release_memory()
        gc.freeze()
