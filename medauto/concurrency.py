"""Concurrent trials: a search runs K trials at once on each visible GPU.

``medauto search --trials-per-device K`` and ``AutoMLOptimizer(trials_per_device=K)``
start K - 1 more worker processes per device next to the search's own (``python -m
medauto._search_child``). Every process is an ordinary worker of the same study
(:func:`medauto.worker.run_worker`), so the study's exactness holds as with any number
of workers: the study-wide trial target is met exactly (surplus trials are closed as
FAIL ``surplus``), every trial keeps its ``reason``, and a budget's deadline is the same
instant for all of them (the parent's monotonic start is passed on; Linux's monotonic
clock is one clock for the whole machine). The children save their trials' models for
the final ensemble, which the parent builds once they have all exited.

``"auto"`` (the default) is deliberately conservative. Packing more trials on a GPU is
not free: ``medauto worker --trials-per-device 8`` trained 3.8x more images per second
on BreastMNIST but each trial got shallower and the best validation AUC fell from 0.956
to 0.883 in the same budget (issue 13). So :func:`choose_trials_per_device`:

- on a CPU keeps K = 1: one trial's intra-op threads already use every core;
- on a GPU, times the search's first trial (the *probe*) and keeps K = 1 when the probe
  was device-bound: its training steps filled at least :data:`BUSY_SHARE` of its wall
  time and the GPU was at least :data:`UTIL_HIGH` utilised while it ran (sampled
  with ``torch.cuda.utilization`` or ``nvidia-smi``; unknown counts as busy);
- otherwise (set-up or launch bound) asks for 2, or :data:`MAX_AUTO` = 3 when the probe
  left the GPU mostly idle (training under half its wall time, or under
  :data:`UTIL_LOW` utilisation);
- and never more than the device's free memory holds: each more trial needs the probe's
  peak memory plus a CUDA context (:data:`CONTEXT_BYTES`), within
  :data:`FREE_MEMORY_SHARE` of the free memory.

With K trials sharing a device, each trial's wall-clock cap of a budget
(:attr:`medauto.budget.BudgetPlan.trial_cap_s`) is K times the plan's (at most the
search time): a trial's wall time stretches while it shares the device, and the cap is
meant as a share of device time, so packing must not cut every trial's epochs
(:func:`scaled_plan`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace
from typing import TYPE_CHECKING
from typing import Any

from medauto.exceptions import MedautoError
from medauto.keys import DURATION_ATTR
from medauto.keys import HISTORY_ATTR
from medauto.keys import TRAIN_S_ATTR
from medauto.logging import get_logger

if TYPE_CHECKING:
    import optuna

    from medauto.budget import BudgetPlan

__all__ = [
    "AUTO",
    "ConcurrentTrials",
    "GpuUtilization",
    "ProbeReading",
    "choose_trials_per_device",
    "packed_worker_env",
    "parse_trials_per_device",
    "scaled_plan",
    "stop_processes",
]

_logger = get_logger(__name__)

AUTO = "auto"
#: The most trials ``"auto"`` packs on one device.
MAX_AUTO = 3
#: A probe whose training steps fill this share of its wall time is device-bound...
BUSY_SHARE = 0.8
#: ... when the GPU was at least this busy while it trained; below UTIL_LOW it is idle.
UTIL_HIGH, UTIL_LOW = 0.7, 0.4
#: Memory a worker process needs beyond its tensors (CUDA context, allocator slack).
CONTEXT_BYTES = 768 * 1024**2
#: Share of the device's free memory that packed trials may plan to use.
FREE_MEMORY_SHARE = 0.8
#: Seconds children get to record their running trial after a SIGTERM, before a kill.
STOP_GRACE_S = 30.0


def parse_trials_per_device(value: int | str) -> int | str:
    """``"auto"`` or an integer >= 1 (``"2"`` → 2).

    Raises:
        MedautoError: anything else (the message names the rule and the value).
    """
    if value == AUTO:
        return AUTO
    try:
        k = int(value)
    except (TypeError, ValueError):
        k = 0
    if isinstance(value, bool) or k < 1 or str(k) != str(value).strip():
        raise MedautoError(f"trials_per_device must be 'auto' or an integer >= 1, got {value!r}")
    return k


@dataclass(frozen=True)
class ProbeReading:
    """What the search's first trial measured on its device.

    Attributes:
        duration_s: The trial's wall time (``duration_s`` user attribute).
        train_s: Its training steps' time, every fit of it (every fold of a
            cross-validated trial): the ``train_s`` user attribute, summed.
        peak_bytes: Peak device memory allocated while it ran.
        free_bytes: Free device memory after it (other processes' use included).
        gpu_util: Mean GPU utilisation (0-1) sampled while it ran; ``None``: unknown.
    """

    duration_s: float
    train_s: float
    peak_bytes: int
    free_bytes: int
    gpu_util: float | None = None

    @classmethod
    def of_trial(cls, trial: optuna.trial.FrozenTrial, *, peak_bytes: int, free_bytes: int,
                 gpu_util: float | None) -> ProbeReading:
        """The reading of a finished probe ``trial``: its wall time and the training time
        of all its fits, from its user attributes; the device's numbers as given."""
        return cls(duration_s=float(trial.user_attrs.get(DURATION_ATTR, 0.0)),
                   train_s=float(sum(trial.user_attrs.get(TRAIN_S_ATTR, []))),
                   peak_bytes=peak_bytes, free_bytes=free_bytes, gpu_util=gpu_util)

    @property
    def busy_share(self) -> float:
        """The share of the trial's wall time spent in training steps."""
        return min(1.0, self.train_s / self.duration_s) if self.duration_s > 0 else 1.0


def choose_trials_per_device(reading: ProbeReading | None, device: str) -> tuple[int, str]:
    """K for ``trials_per_device="auto"`` and the reason, by the rule of this module.

    Example:
        >>> choose_trials_per_device(None, "cpu")
        (1, 'CPU: one trial uses every core')
        >>> gib = 1024**3
        >>> choose_trials_per_device(ProbeReading(10.0, 3.0, 2 * gib, 100 * gib, 0.3), "cuda:0")
        (3, 'probe trained 30% of its wall time at 30% GPU utilisation: set-up/launch bound')
    """
    if not device.startswith("cuda"):
        return 1, "CPU: one trial uses every core"
    if reading is None:
        return 1, "no probe trial trained"
    busy, util = reading.busy_share, reading.gpu_util
    shown = f"{util:.0%}" if util is not None else "unknown"
    what = f"probe trained {busy:.0%} of its wall time at {shown} GPU utilisation"
    if busy >= BUSY_SHARE and (util is None or util >= UTIL_HIGH):
        return 1, f"{what}: device-bound"
    want = MAX_AUTO if busy < 0.5 or (util is not None and util < UTIL_LOW) else 2
    fit = 1 + int(FREE_MEMORY_SHARE * reading.free_bytes // (reading.peak_bytes + CONTEXT_BYTES))
    if fit < want:
        return max(1, fit), f"{what}; free memory holds {fit} trial(s)"
    return want, f"{what}: set-up/launch bound"


def scaled_plan(plan: BudgetPlan | None, k: int) -> BudgetPlan | None:
    """``plan`` with each trial's wall-clock cap for ``k`` trials sharing a device: ``k``
    times the plan's, at most the search time (see the module docstring)."""
    if plan is None or k <= 1:
        return plan
    return replace(plan, trial_cap_s=min(plan.search_s, plan.trial_cap_s * k))


class GpuUtilization:
    """Samples a GPU's utilisation (0-1) from a daemon thread every ``interval_s``.

    Reads ``torch.cuda.utilization`` (needs ``pynvml``/``nvidia-ml-py``), else
    ``nvidia-smi``; :meth:`mean` is ``None`` when neither is there, or on a CPU.
    """

    def __init__(self, device: str, interval_s: float = 0.5) -> None:
        self.device = device
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = self._reader()

    def _reader(self) -> Callable[[], float] | None:
        if not self.device.startswith("cuda"):
            return None
        import torch

        index = torch.device(self.device).index or 0
        try:
            torch.cuda.utilization(index)
            return lambda: torch.cuda.utilization(index) / 100.0
        except Exception:  # noqa: BLE001 - no NVML bindings: try the command line
            smi = shutil.which("nvidia-smi")
        if smi is None:
            return None

        def read() -> float:
            out = subprocess.run([smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,"
                                  "nounits", "-i", str(index)], capture_output=True, text=True,
                                 timeout=5, check=True).stdout
            return float(out.strip().splitlines()[0]) / 100.0

        return read

    def start(self) -> GpuUtilization:
        """Starts sampling (a no-op without a reader); returns ``self``."""
        if self._read is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True,
                                            name="medauto-gpu-util")
            self._thread.start()
        return self

    def _sample(self) -> None:
        assert self._read is not None
        while not self._stop.wait(self.interval_s):
            try:
                self.samples.append(self._read())
            except Exception:  # noqa: BLE001 - a missed sample is no sample
                _logger.debug("GPU utilisation sample failed", exc_info=True)

    def stop(self) -> float | None:
        """Stops sampling; returns :meth:`mean`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.mean()

    def mean(self) -> float | None:
        """The mean of the samples so far; ``None`` without any."""
        return sum(self.samples) / len(self.samples) if self.samples else None


def packed_worker_env(
    k: int, threads: int | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of one of ``k`` worker processes packed on one device.

    Each worker gets ``threads`` CPU threads (default: the usable cores divided by ``k``,
    at least 1) through ``OMP_NUM_THREADS`` (torch's intra-op pool) and
    ``TORCHINDUCTOR_COMPILE_THREADS`` (parallel compilation). Without this, K processes
    would each start one thread per core: K-fold oversubscription, and the CPU that
    launches the GPU kernels of small models would become the bottleneck. Values already
    set in ``base`` (default ``os.environ``) win.
    """
    env = dict(os.environ if base is None else base)
    if threads is None:
        threads = max(1, usable_cores() // k)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(threads))
    return env


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def stop_processes(procs: list[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """Sends SIGTERM to each running process, then kills those still running after
    ``grace_s`` seconds (each records its running trial as interrupted first)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class ConcurrentTrials:
    """The search's extra worker processes: started (now, or after the probe trial for
    ``"auto"``), relayed through the progress line, waited for or stopped.

    Args:
        k: Trials per device, or ``"auto"``.
        devices: The devices trials run on (one per visible GPU, or ``["cpu"]``); the
            search's own worker is the first slot of ``devices[0]``.
        job: The children's job (:mod:`medauto._search_child`) without ``seed``/``device``.
        seed: The search's sampler seed; child ``i`` gets ``seed + i + 1``.
        relay: Where a child's stderr goes, line by line (``None``: inherited).
    """

    def __init__(self, k: int | str, devices: list[str], job: dict[str, Any], *,
                 seed: int | None,
                 relay: Callable[[Any], None] | None = None) -> None:
        self.requested = parse_trials_per_device(k)
        self.devices = devices
        self.job = job
        self.seed = seed
        self.relay = relay
        self.k: int | None = None if self.requested == AUTO else int(self.requested)
        self.reason = "" if self.k is None else "set by trials_per_device"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._util: GpuUtilization | None = None

    def start(self, plan: BudgetPlan | None) -> BudgetPlan | None:
        """Starts the children of a fixed K; for ``"auto"`` starts the probe's sampling.
        Returns ``plan`` scaled for the K in force (:func:`scaled_plan`)."""
        if self.k is not None:
            self._spawn(self.k)
            return scaled_plan(plan, self.k)
        if self.devices[0].startswith("cuda"):
            from med_core.device import release_memory

            # synchronizes first, which starts CUDA: resetting the peak of a device CUDA
            # has not started on raises "Invalid device argument" (a holdout search has
            # trained nothing yet at this point)
            release_memory(self.devices[0], collect=False, reset_peak=True)
            self._util = GpuUtilization(self.devices[0]).start()
        else:
            self.k, self.reason = choose_trials_per_device(None, self.devices[0])
        return plan

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> int | None:
        """The worker's hook after each of its trials: the first trained one is the probe
        of ``"auto"``; returns the K it chose (children started), else ``None``."""
        if self.k is not None or not trial.user_attrs.get(HISTORY_ATTR):
            return None
        self.k, self.reason = choose_trials_per_device(self._reading(trial), self.devices[0])
        _logger.info("trials per device: %d (%s)", self.k, self.reason)
        self._spawn(self.k)
        return self.k

    def _reading(self, trial: optuna.trial.FrozenTrial) -> ProbeReading:
        import torch

        from med_core.device import release_memory

        util = self._util.stop() if self._util is not None else None
        dev = self.devices[0]
        release_memory(dev)  # the probe's cached blocks count as free
        return ProbeReading.of_trial(
            trial, peak_bytes=int(torch.cuda.max_memory_allocated(dev)),
            free_bytes=int(torch.cuda.mem_get_info(dev)[0]), gpu_util=util)

    def _spawn(self, k: int) -> None:
        slots = [d for d in self.devices for _ in range(k)][1:]  # slot 0: the search itself
        env = packed_worker_env(k) if self.devices[0] == "cpu" else dict(os.environ)
        if self.devices[0] == "cpu" and k > 1:
            import torch

            torch.set_num_threads(max(1, usable_cores() // k))  # the search's own share
        for i, device in enumerate(slots):
            seed = None if self.seed is None else self.seed + i + 1
            job = {**self.job, "seed": seed, "device": device, "plan_k": k}
            proc = subprocess.Popen([sys.executable, "-m", "medauto._search_child"],
                                    stdin=subprocess.PIPE, env=env,
                                    stderr=subprocess.PIPE if self.relay else None)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(job).encode())
            proc.stdin.close()
            if self.relay is not None and proc.stderr is not None:
                threading.Thread(target=self.relay, args=(proc.stderr,), daemon=True).start()
            self.procs.append(proc)
        if slots:
            _logger.info("started %d more worker process(es) of the study: %s", len(slots),
                         ", ".join(f"pid {p.pid}" for p in self.procs))

    def wait(self, on_poll: Callable[[], None] | None = None, poll_s: float = 1.0) -> None:
        """Waits for every child, calling ``on_poll`` every ``poll_s`` seconds meanwhile
        (the live line); a child that failed is logged (its trials are recorded)."""
        if self._util is not None:
            self._util.stop()
        while any(p.poll() is None for p in self.procs):
            if on_poll is not None:
                on_poll()
            time.sleep(poll_s)
        for p in self.procs:
            code = p.wait()
            if code != 0:
                _logger.warning("worker process %d exited with code %d (see its log above)",
                                p.pid, code)

    def stop(self) -> None:
        """Stops the children (SIGTERM, then a kill after :data:`STOP_GRACE_S`)."""
        if self._util is not None:
            self._util.stop()
        stop_processes(self.procs)

