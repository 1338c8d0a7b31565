"""Shared helpers for the scripts in ``benchmarks/``.

Every benchmark writes ``docs/benchmarks/<name>.md`` that starts with the exact command
that produced it and the hardware/software it ran on, then Markdown tables; raw numbers go
to an optional JSON file. The helpers here are deliberately small and free of project
imports (except :mod:`med_core.device`, the one owner of OOM detection and memory
release) so that any benchmark (and its CPU smoke test) can use them:

* :func:`environment` / :func:`environment_table`: versions, GPU, driver, CPU, git commit;
* :func:`command_line`: the command as it would be typed (``python <script> <argv>``);
* :func:`markdown_table`: a GitHub-flavoured table from headers and rows;
* :func:`write_text` / :func:`write_json`: atomic writes (a partial run never leaves a
  half-written file behind, so results can be flushed after every configuration);
* :func:`merge_section`: one run's block of a document shared by several runs, between
  ``<!-- NAME:begin -->`` / ``<!-- NAME:end -->`` markers, replaced in place;
* :func:`time_steps`: median time of a callable with warm-up, CUDA-event aware;
* :class:`Deadline`: a global time limit for a whole run;
* :func:`is_oom` (:func:`med_core.device.is_oom`, re-exported) / :func:`is_fatal_device_error`
  / :func:`release_device_memory`.

Timing follows ``/work/.library/device/METHOD.md``: warm up first, synchronize before and
after each timed repetition (device work is asynchronous), time device work with CUDA
events, report the median.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import torch

from med_core.device import is_oom
from med_core.device import release_memory

__all__ = [
    "REPO",
    "Deadline",
    "Timing",
    "command_line",
    "environment",
    "environment_table",
    "fmt",
    "is_fatal_device_error",
    "is_oom",
    "log",
    "markdown_table",
    "merge_section",
    "release_device_memory",
    "synchronize",
    "time_steps",
    "write_json",
    "write_text",
]

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- environment
def _package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _run(cmd: Sequence[str], *, cwd: Path | None = None) -> str | None:
    """stdout of ``cmd`` (stripped), or ``None`` if it is missing, fails or hangs."""
    try:
        out = subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back to platform's answer below
    return platform.processor() or platform.machine()


def _cpu_count() -> str:
    total = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS/Windows
        usable = total
    return f"{usable} usable of {total}" if usable != total else str(total)


def environment(device: str | torch.device) -> dict[str, str]:
    """Hardware and software facts for a report header (all values are strings).

    GPU facts come from ``torch.cuda`` and ``nvidia-smi`` (driver); each missing fact reads
    ``"unavailable"`` instead of failing the benchmark.
    """
    dev = torch.device(device)
    info: dict[str, str] = {
        "date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _package_version("torchvision"),
        "timm": _package_version("timm"),
        "numpy": _package_version("numpy"),
        "platform": platform.platform(),
        "CPU": f"{_cpu_model()} ({_cpu_count()} cores)",
        "torch CPU threads": str(torch.get_num_threads()),
    }
    commit = _run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO)
    if commit:
        dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO)
        info["git commit"] = commit + (" (uncommitted changes)" if dirty else "")
    else:
        info["git commit"] = "unavailable (no git checkout)"
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info["GPU"] = props.name
        info["GPU memory"] = f"{props.total_memory / 2**30:.1f} GiB"
        info["GPU multiprocessors"] = str(props.multi_processor_count)
        info["compute capability"] = f"{props.major}.{props.minor}"
        info["GPUs visible"] = str(torch.cuda.device_count())
        info["CUDA (torch build)"] = str(torch.version.cuda)
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        info["cuDNN"] = str(cudnn) if cudnn else "unavailable"
        smi = _run(
            [
                "nvidia-smi",
                f"--id={idx}",
                "--query-gpu=driver_version,clocks.max.sm,power.limit",
                "--format=csv,noheader",
            ]
        )
        if smi:
            parts = [p.strip() for p in smi.splitlines()[0].split(",")]
            info["driver"] = parts[0]
            if len(parts) >= 3:
                info["max SM clock / power limit"] = f"{parts[1]} / {parts[2]}"
        else:
            info["driver"] = "unavailable (nvidia-smi not found or failed)"
        info["TF32 (matmul / cuDNN)"] = (
            f"{torch.backends.cuda.matmul.allow_tf32} / {torch.backends.cudnn.allow_tf32}"
        )
        info["cudnn.benchmark"] = str(torch.backends.cudnn.benchmark)
    return info


def environment_table(info: dict[str, str]) -> str:
    """The environment as a two-column Markdown table."""
    return markdown_table(["", ""], [[k, v] for k, v in info.items()], align="ll")


def command_line(script: str | Path, argv: Sequence[str]) -> str:
    """``python <script relative to the repo> <argv>``, shell-quoted, as one would type it."""
    path = Path(script).resolve()
    try:
        shown = str(path.relative_to(REPO))
    except ValueError:
        shown = str(path)
    return shlex.join(["python", shown, *argv])


# --------------------------------------------------------------------------- output
def fmt(value: object, digits: int = 1) -> str:
    """A table cell: floats with ``digits`` decimals, ``None``/NaN as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, align: str | None = None
) -> str:
    """A Markdown table. ``align`` has one character per column: ``l``, ``r`` or ``c``
    (default: left for the first column, right for the others). ``|`` in cells is escaped.
    """
    headers = [str(h) for h in headers]
    n = len(headers)
    if align is None:
        align = "l" + "r" * (n - 1)
    if len(align) != n:
        raise ValueError(f"align has {len(align)} entries for {n} columns")
    marks = {"l": ":--", "r": "--:", "c": ":-:"}

    def cell(v: object) -> str:
        return (v if isinstance(v, str) else fmt(v)).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "| " + " | ".join(marks[a] for a in align) + " |",
    ]
    for row in rows:
        row = list(row)
        if len(row) != n:
            raise ValueError(f"row has {len(row)} cells for {n} columns: {row!r}")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def merge_section(existing: str | None, name: str, block: str, *, header: str) -> str:
    """The document ``existing`` with the block of section ``name`` replaced by ``block``.

    A section is the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``; text
    outside the markers (other sections, hand-written notes) is kept. A section not yet
    in the document is appended; an empty or missing document starts with ``header``.

    Example:
        >>> doc = merge_section(None, "a", "one", header="# T")
        >>> merge_section(doc, "a", "two", header="# T").splitlines()
        ['# T', '', '<!-- a:begin -->', 'two', '<!-- a:end -->']
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{block.strip()}\n{end}"
    if not existing or not existing.strip():
        return f"{header.rstrip()}\n\n{block}\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(existing):
        return pattern.sub(lambda _m: block, existing, count=1)
    return f"{existing.rstrip()}\n\n{block}\n"


def write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` atomically (temporary file + rename), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Writes ``obj`` as indented JSON atomically (NaN/inf become ``null``)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return write_text(path, json.dumps(clean(obj), indent=1, allow_nan=False) + "\n")


# --------------------------------------------------------------------------- device
def synchronize(device: torch.device) -> None:
    """Waits for queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_fatal_device_error(exc: BaseException) -> bool:
    """Whether ``exc`` leaves the CUDA context unusable (no later measurement is valid)."""
    msg = str(exc).lower()
    return any(
        s in msg
        for s in (
            "illegal memory access",
            "device-side assert",
            "unspecified launch failure",
            "cuda error: an illegal",
            "misaligned address",
            "uncorrectable ecc",
        )
    )


def release_device_memory(device: torch.device, *, collect: bool = False) -> None:
    """Returns cached blocks to the driver and resets the peak counters (CUDA only);
    :func:`med_core.device.release_memory` with the measurement's settings.

    ``collect=True`` also runs the garbage collector first (after an exception, frames of
    the traceback may hold tensors until collected).
    """
    release_memory(device, collect=collect, reset_peak=True)


# --------------------------------------------------------------------------- timing
class Deadline:
    """A global time limit: ``remaining()`` seconds until ``limit_s`` after creation."""

    def __init__(self, limit_s: float | None) -> None:
        self.start = time.perf_counter()
        self.limit_s = limit_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        if self.limit_s is None:
            return math.inf
        return self.limit_s - self.elapsed()

    def expired(self) -> bool:
        return self.remaining() <= 0


@dataclass
class Timing:
    """Result of :func:`time_steps` (milliseconds).

    Attributes:
        median_ms: Median per-repetition time: CUDA-event time on GPU (from the first to
            the last piece of device work the callable queued, GPU idle gaps included),
            host wall time on CPU.
        host_ms: Median host time to *issue* one repetition (Python + dispatch + kernel
            launches), measured with an idle device. On CUDA, ``host_ms`` close to
            ``median_ms`` means the step is bound by the CPU (launch overhead), not the GPU.
        samples_ms: All per-repetition times, in order.
        min_ms: Fastest repetition.
        warmup: Warm-up repetitions run first (not timed).
    """

    median_ms: float
    host_ms: float
    samples_ms: list[float] = field(default_factory=list)
    min_ms: float = math.nan
    warmup: int = 0

    @property
    def spread_pct(self) -> float:
        """(max - min) / median of the samples, in percent (a noise indicator)."""
        if len(self.samples_ms) < 2 or not self.median_ms:
            return 0.0
        return 100.0 * (max(self.samples_ms) - min(self.samples_ms)) / self.median_ms


def time_steps(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 3,
    repeats: int = 10,
    min_repeats: int = 3,
    max_seconds: float | None = None,
    deadline: Deadline | None = None,
) -> Timing:
    """Median time of ``fn()`` after ``warmup`` untimed calls.

    The device is synchronized before each repetition, so every repetition starts from an
    idle GPU and its CUDA-event interval is the step's real duration (the larger of GPU
    work and CPU launch time). Repetitions stop early, but never below ``min_repeats``,
    once ``max_seconds`` of timed work have passed or the ``deadline`` expires.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    cuda = device.type == "cuda"
    samples: list[float] = []
    hosts: list[float] = []
    t_start = time.perf_counter()
    for i in range(repeats):
        if i >= min_repeats:
            if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                break
            if deadline is not None and deadline.expired():
                break
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            fn()
            hosts.append((time.perf_counter() - t0) * 1e3)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            dt = (time.perf_counter() - t0) * 1e3
            hosts.append(dt)
            samples.append(dt)
    return Timing(
        median_ms=statistics.median(samples),
        host_ms=statistics.median(hosts),
        samples_ms=samples,
        min_ms=min(samples),
        warmup=warmup,
    )


def log(msg: str) -> None:
    """One progress line on stderr, flushed (benchmarks print results, not logs, to stdout)."""
    print(msg, file=sys.stderr, flush=True)
