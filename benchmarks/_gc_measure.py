"""Measuring gradient checkpointing: the checkpoint options and the script-side runner of
the ablations, one backbone's training step on the device, the sweep over settings and
the max-batch search (see ``benchmarks/gradient_checkpointing.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._common import Deadline
from benchmarks._common import Timing
from benchmarks._common import fmt
from benchmarks._common import is_fatal_device_error
from benchmarks._common import is_oom
from benchmarks._common import log
from benchmarks._common import release_device_memory
from benchmarks._common import synchronize
from benchmarks._common import time_steps
from med_core.backbones import Backbone
from med_core.backbones import RecomputeContext
from med_core.backbones import create_backbone
from med_core.backbones import get_backbone_cfg
from med_core.backbones import run_units

#: The benchmark's command line; a :class:`ProbeWorker` runs it with ``--probe-worker``.
_SCRIPT = Path(__file__).resolve().with_name("gradient_checkpointing.py")

__all__ = [
    "ABLATIONS",
    "Bench",
    "CkptOptions",
    "MIB",
    "NUM_CLASSES",
    "ProbeWorker",
    "REPRESENTATIVES",
    "RULE_MAX_OVERHEAD_PCT",
    "RULE_MIN_SAVED_PCT",
    "Run",
    "SCHEMA_VERSION",
    "ScriptCheckpointed",
    "Sweep",
    "build_bench",
    "saved_tensor_bytes",
    "search_max_batch",
    "time_steps_into",
]


#: One representative per family (a mid-sized member, as in the issue's reference run).
REPRESENTATIVES: dict[str, str] = {
    "resnet": "resnet50",
    "mobilenet": "mobilenet_v3_large",
    "efficientnet": "efficientnet_b2",
    "efficientnet_v2": "efficientnet_v2_s",
    "regnet": "regnet_y_1_6gf",
    "convnext": "convnext_tiny",
    "vit": "vit_small",
    "maxvit": "maxvit_t",
    "swin": "swin_t",
    "resnet3d": "r3d_18",
    "swin3d": "swin3d_t",
}


RULE_MIN_SAVED_PCT = 50.0


RULE_MAX_OVERHEAD_PCT = 35.0


NUM_CLASSES = 10


SCHEMA_VERSION = 1


MIB = 2.0**20


# ============================================================================ options
@dataclass(frozen=True)
class CkptOptions:
    """Checkpoint options; the defaults are exactly what ``Backbone`` does today.

    Anything else runs through :class:`ScriptCheckpointed` (same grouping, options changed).

    Attributes:
        preserve_rng_state: Stash/restore CPU and CUDA RNG state around recomputation
            (``torch.utils.checkpoint`` default). Turning it off is only *correct* for
            groups without randomness (dropout, stochastic depth) in training mode.
        determinism_check: ``"default"`` compares shape/dtype/device of recomputed saved
            tensors with the originals; ``"none"`` skips that.
        norm_stats: What recomputation does to BatchNorm running statistics:
            ``"freeze"`` (the library: ``momentum = 0`` and ``num_batches_tracked``
            detached while recomputing: same state, no extra kernel), ``"restore"`` (the
            library before issue 7: clone them before, copy them back after, ~6 small
            kernels per BN layer, see :class:`_RestoreNormStats`), ``"update"`` (no
            protection: statistics updated twice per step).
        skip_last: Do not checkpoint the last group (the library's ``keep_last=True``):
            saves its recomputation, keeps its activations.
    """

    preserve_rng_state: bool = True
    determinism_check: str = "default"
    norm_stats: str = "freeze"
    skip_last: bool = False
    force_script: bool = False  # run the script-side runner even with library options

    @property
    def uses_library(self) -> bool:
        """Whether ``Backbone.enable_gradient_checkpointing`` can run these options."""
        return self == CkptOptions(skip_last=self.skip_last)

    def label(self) -> str:
        if self.uses_library:
            return "keep_last" if self.skip_last else "library"
        parts = []
        if not self.preserve_rng_state:
            parts.append("no_rng")
        if self.determinism_check != "default":
            parts.append("no_detcheck")
        if self.norm_stats == "restore":
            parts.append("norm_restore")
        elif self.norm_stats != "freeze":
            parts.append("no_norm_protect")
        if self.skip_last:
            parts.append("skip_last")
        return "script" if not parts else "+".join(parts)


#: Ablation variants (``--ablate``), in the order they are run.
ABLATIONS: dict[str, CkptOptions] = {
    "library": CkptOptions(),
    "script": CkptOptions(force_script=True),
    "no_rng": CkptOptions(preserve_rng_state=False),
    "no_detcheck": CkptOptions(determinism_check="none"),
    "norm_restore (old library)": CkptOptions(norm_stats="restore"),
    "no_norm_protect": CkptOptions(norm_stats="update"),
    "keep_last": CkptOptions(skip_last=True),
    "lean": CkptOptions(preserve_rng_state=False, determinism_check="none"),
    "lean+keep_last": CkptOptions(
        preserve_rng_state=False, determinism_check="none", skip_last=True
    ),
}


class _RestoreNormStats:
    """The library's BatchNorm protection before issue 7, kept to measure its cost.

    Clones ``running_mean``, ``running_var`` and ``num_batches_tracked`` of every BN layer
    of the group before the recomputation and copies them back after it (about six small
    kernels per layer per recomputation).
    """

    def __init__(self, norms: Sequence[nn.Module]) -> None:
        self._norms = norms
        self._saved: list[list[torch.Tensor]] = []

    @staticmethod
    def _stats(m: nn.Module) -> list[torch.Tensor]:
        names = ("running_mean", "running_var", "num_batches_tracked")
        return [b for b in (getattr(m, n) for n in names) if isinstance(b, torch.Tensor)]

    def __enter__(self) -> None:
        self._saved = [[b.detach().clone() for b in self._stats(m)] for m in self._norms]

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for m, saved in zip(self._norms, self._saved, strict=True):
                for dst, src in zip(self._stats(m), saved, strict=True):
                    dst.copy_(src)
        self._saved = []


def _update_twice(norms: Sequence[nn.Module]) -> contextlib.AbstractContextManager[Any]:
    """No protection: the recomputation updates the running statistics a second time."""
    return contextlib.nullcontext()


#: ``CkptOptions.norm_stats`` → the recomputation context ``run_units`` makes per group
#: (``None``: the library's own).
_RECOMPUTE: dict[str, RecomputeContext | None] = {
    "freeze": None,
    "restore": _RestoreNormStats,
    "update": _update_twice,
}


class ScriptCheckpointed(nn.Module):
    """The backbone's forward with configurable checkpoint options (benchmark only).

    Runs ``backbone.forward_stem``, then the library's own checkpoint loop
    (:func:`med_core.backbones.run_units`) over ``backbone.units()`` in ``segments``
    groups, then ``backbone.forward_head``: what ``Backbone.forward_features`` does, with
    the options ``enable_gradient_checkpointing`` does not take (RNG stash, determinism
    check, BatchNorm handling) passed to that loop. With default :class:`CkptOptions` it
    computes the same as the library path (checked by the CPU test). The backbone's own
    checkpointing must be off.
    """

    def __init__(self, backbone: Backbone, options: CkptOptions) -> None:
        super().__init__()
        if type(backbone).forward_features is not Backbone.forward_features:
            raise ValueError(
                f"{backbone.name}: overrides forward_features; the script-side checkpoint "
                "runner only reproduces Backbone.forward_features"
            )
        self.backbone = backbone
        self.options = options
        self.segments = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bb, opt = self.backbone, self.options
        k = self.segments if self.training and torch.is_grad_enabled() else 0
        x = run_units(
            bb.units(),
            bb.forward_stem(x),
            k,
            keep_last=opt.skip_last,
            recompute=_RECOMPUTE[opt.norm_stats],
            preserve_rng_state=opt.preserve_rng_state,
            determinism_check=opt.determinism_check,
        )
        return bb.forward_head(x)


# ============================================================================ the model
@dataclass
class Bench:
    """One backbone at one input size on the device, with head, optimizer and runners."""

    family: str
    name: str
    size: tuple[int, ...]
    backbone: Backbone
    head: nn.Module
    script: ScriptCheckpointed
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    in_chans: int
    param_storages: set[int] = field(default_factory=set)

    @property
    def cfg(self) -> Any:
        return self.backbone.cfg

    def configure(self, segments: int, options: CkptOptions) -> Callable[[torch.Tensor], Any]:
        """Sets checkpointing and returns the feature function to use."""
        if options.uses_library:
            if segments:
                self.backbone.enable_gradient_checkpointing(segments, keep_last=options.skip_last)
            else:
                self.backbone.disable_gradient_checkpointing()
            self.script.segments = 0
            return self.backbone
        self.backbone.disable_gradient_checkpointing()
        self.script.options = options
        self.script.segments = segments
        return self.script

    def configure_setting(self, setting: str) -> Callable[[torch.Tensor], Any]:
        """Sets checkpointing by a peak-report setting and returns the feature function.

        ``"off"``: no checkpointing; ``"default"``: ``enable_gradient_checkpointing()`` (the
        family's memory budget); a number such as ``"0.3"``: that ``memory_budget``; either
        with ``+selective`` and/or ``+offload`` (the library's options of those names). The
        budget's plan is measured on the next training forward.
        """
        self.script.segments = 0
        base, *flags = setting.split("+")
        unknown = set(flags) - {"selective", "offload"}
        if unknown or (base == "off" and flags):
            raise ValueError(f"unknown peak-report setting {setting!r}")
        options = {flag: True for flag in flags}
        if base == "off":
            self.backbone.disable_gradient_checkpointing()
        elif base == "default":
            self.backbone.enable_gradient_checkpointing(**options)
        else:
            self.backbone.enable_gradient_checkpointing(memory_budget=float(base), **options)
        return self.backbone

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, self.in_chans, *self.size, device=self.device)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, NUM_CLASSES, (n,), device=self.device)
        return x, y

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def forward_loss(
        self, features: Callable[[torch.Tensor], Any], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        with self.autocast():
            logits = self.head(features(x))
        return F.cross_entropy(logits.float(), y)

    def step(
        self,
        features: Callable[[torch.Tensor], Any],
        x: torch.Tensor,
        y: torch.Tensor,
        mark: Callable[[str], None] | None = None,
    ) -> None:
        """One training step: forward, loss, backward, SGD step, grads to ``None``.

        ``mark`` (memory snapshots) is called with ``"forward"``, ``"backward"``,
        ``"optimizer"`` and ``"end"`` as each phase starts (``"end"``: after it).
        """
        if mark is not None:
            mark("forward")
        loss = self.forward_loss(features, x, y)
        if mark is not None:
            mark("backward")
        loss.backward()
        del loss
        if mark is not None:
            mark("optimizer")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if mark is not None:
            mark("end")


def build_bench(
    family: str, name: str, size: tuple[int, ...], device: torch.device, args: argparse.Namespace
) -> Bench:
    backbone = create_backbone(name, in_chans=args.in_chans, img_size=size)
    head = nn.Linear(backbone.num_features, NUM_CLASSES)
    backbone.to(device).train()
    head.to(device).train()
    channels_last = bool(args.channels_last and len(size) == 2)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    storages = {
        t.untyped_storage().data_ptr()
        for t in [*params, *backbone.buffers(), *head.buffers()]
        if t.numel() > 0
    }
    return Bench(
        family=family,
        name=name,
        size=size,
        backbone=backbone,
        head=head,
        script=ScriptCheckpointed(backbone, CkptOptions(force_script=True)),
        optimizer=optimizer,
        device=device,
        amp_dtype=args.amp_dtype,
        channels_last=channels_last,
        in_chans=args.in_chans,
        param_storages=storages,
    )


def saved_tensor_bytes(
    bench: Bench, features: Callable[[torch.Tensor], Any], x: torch.Tensor, y: torch.Tensor
) -> int:
    """Bytes of unique storages saved for backward during one forward + loss, excluding
    parameters and buffers (autocast's bf16 weight copies *are* counted: they live until
    backward too). Inside checkpointed groups torch's own hooks take over, so only what is
    kept outside them (stem, head, group inputs) is seen. What the forward saved is freed
    on return (before this was so, the H200 sweep leaked about ``act MiB`` per
    configuration: its ``static`` and ``peak`` grew from row to row)."""
    seen: dict[int, int] = {}
    params = bench.param_storages

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and t.device.type != "meta":
            seen[ptr] = storage.nbytes()
        # detached: a tensor saved by its own grad_fn (a ReLU's output, say) and kept with
        # that grad_fn would make a reference cycle through autograd's C++ graph, which no
        # garbage collection frees; the forward's activations would leak, every call
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = bench.forward_loss(features, x, y)
    del loss
    return sum(seen.values())


# ============================================================================ records
def _first_line(exc: BaseException, n: int = 160) -> str:
    """``Type: first line of the message`` (cut to ``n`` characters) for a table cell."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:n] if lines else ''}"


def _pct_saved(off: float | None, on: float | None) -> float | None:
    if off is None or on is None or off <= 0:
        return None
    return 100.0 * (off - on) / off


def _pct_more(off: float | None, on: float | None) -> float | None:
    if off is None or on is None or off <= 0:
        return None
    return 100.0 * (on - off) / off


@dataclass
class Run:
    """Everything one invocation collects; serialized to JSON as is."""

    command: str
    env: dict[str, str]
    args: dict[str, Any]
    device: str
    dtype: str
    rule_metric: str
    results: list[dict[str, Any]] = field(default_factory=list)
    max_batch: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    ablation: list[dict[str, Any]] = field(default_factory=list)
    profile: list[dict[str, Any]] = field(default_factory=list)
    peak: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = "running"
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "command": self.command,
            "env": self.env,
            "args": self.args,
            "device": self.device,
            "dtype": self.dtype,
            "rule": {
                "min_saved_pct": RULE_MIN_SAVED_PCT,
                "max_overhead_pct": RULE_MAX_OVERHEAD_PCT,
                "metric": self.rule_metric,
            },
            "status": self.status,
            "elapsed_s": round(self.elapsed_s, 1),
            "results": self.results,
            "max_batch": self.max_batch,
            "summary": self.summary,
            "ablation": self.ablation,
            "profile": self.profile,
            "peak": self.peak,
            "notes": self.notes,
        }


def _seg_label(segments: int, keep_last: bool, cfg: Any) -> str:
    if segments == 0:
        return "off"
    tags = []
    if segments == cfg.max_segments:
        tags.append("max")
    label = f"{segments} ({', '.join(tags)})" if tags else str(segments)
    return label + (" keep last" if keep_last else "")


def _size_label(size: Sequence[int]) -> str:
    if len(set(size)) == 1:
        return f"{size[0]}" + ("³" if len(size) == 3 else "²")
    return "×".join(map(str, size))


# ============================================================================ measuring
def time_steps_into(
    row: dict[str, Any],
    step: Callable[[], object],
    batch: int,
    device: torch.device,
    args: argparse.Namespace,
    deadline: Deadline,
) -> Timing:
    """Times ``step`` (warm already: no warm-up; ``--repeats``, at least 3 or all of them,
    within ``--max-config-seconds``) and fills ``row``'s ``step_ms`` (median),
    ``host_ms``, ``min_ms``, ``spread_pct``, ``samples_ms`` and ``images_per_s``."""
    timing = time_steps(
        step,
        device,
        warmup=0,
        repeats=args.repeats,
        min_repeats=min(3, args.repeats),
        max_seconds=args.max_config_seconds,
        deadline=deadline,
    )
    row["step_ms"] = timing.median_ms
    row["host_ms"] = timing.host_ms
    row["min_ms"] = timing.min_ms
    row["spread_pct"] = timing.spread_pct
    row["samples_ms"] = [round(s, 3) for s in timing.samples_ms]
    row["images_per_s"] = batch / (timing.median_ms / 1e3) if timing.median_ms > 0 else None
    return timing


class Sweep:
    """Runs configurations with OOM/error handling, the deadline and incremental flushes."""

    def __init__(
        self, args: argparse.Namespace, run: Run, device: torch.device, deadline: Deadline
    ) -> None:
        self.args = args
        self.run = run
        self.device = device
        self.deadline = deadline
        self._bench: Bench | None = None
        self._oom_at: dict[tuple[str, tuple[int, ...], int, str], int] = {}
        self.fatal: str | None = None

    # ------------------------------------------------------------------ model cache
    def bench(self, family: str, name: str, size: tuple[int, ...]) -> Bench:
        b = self._bench
        if b is not None and b.name == name and b.size == size:
            return b
        self.drop_bench()
        torch.manual_seed(self.args.seed)
        self._bench = build_bench(family, name, size, self.device, self.args)
        return self._bench

    def drop_bench(self) -> None:
        if self._bench is not None:
            self._bench = None
            release_device_memory(self.device, collect=True)

    # ------------------------------------------------------------------ one config
    def measure(
        self,
        family: str,
        name: str,
        size: tuple[int, ...],
        batch: int,
        segments: int,
        options: CkptOptions,
        *,
        phase: str,
        time_forward: bool = False,
    ) -> dict[str, Any]:
        cfg = get_backbone_cfg(name)
        row: dict[str, Any] = {
            "phase": phase,
            "family": family,
            "backbone": name,
            "size": list(size),
            "batch": batch,
            "segments": segments,
            "segments_label": _seg_label(segments, bool(options.skip_last and segments), cfg)
            + (" (repeat)" if phase == "repeat" else ""),
            "keep_last": bool(options.skip_last and segments),
            "max_segments": cfg.max_segments,
            "variant": options.label(),
            "status": "ok",
            "reason": "",
        }
        key = (name, size, segments, options.label())
        if self.fatal is not None:
            row.update(status="skipped", reason=f"device unusable: {self.fatal}")
            return row
        if self.deadline.expired():
            row.update(status="skipped", reason="time limit")
            return row
        if key in self._oom_at and batch >= self._oom_at[key]:
            row.update(status="OOM", reason=f"not run: OOM at batch {self._oom_at[key]}")
            return row
        t0 = time.perf_counter()
        with self.guarded(row):
            bench = self.bench(family, name, size)
            self._measure_into(row, bench, batch, segments, options, time_forward)
        if row["status"] == "OOM":
            self._oom_at[key] = min(batch, self._oom_at.get(key, batch))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        return row

    @contextlib.contextmanager
    def guarded(self, row: dict[str, Any]) -> Iterator[None]:
        """Runs the block as one measurement: an exception ends the block and is recorded in
        ``row`` (``status`` ``"OOM"`` or ``"error"``, ``reason``; a device error that leaves
        CUDA unusable also sets :attr:`fatal`) instead of propagating. Afterwards the
        gradients are dropped and the device memory released (after a failure with a
        garbage collection first: the traceback's frames may hold tensors)."""
        failed = False
        try:
            yield
        except Exception as exc:  # recorded per configuration
            failed = True
            if is_oom(exc):
                row.update(status="OOM", reason=_first_line(exc))
            else:
                row.update(status="error", reason=_first_line(exc, 200))
                log("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
                if is_fatal_device_error(exc):
                    self.fatal = row["reason"]
        finally:
            if self._bench is not None:
                self._bench.optimizer.zero_grad(set_to_none=True)
        release_device_memory(self.device, collect=failed)

    def _measure_into(
        self,
        row: dict[str, Any],
        bench: Bench,
        batch: int,
        segments: int,
        options: CkptOptions,
        time_forward: bool,
    ) -> None:
        args, dev = self.args, self.device
        features = bench.configure(segments, options)
        x, y = bench.batch(batch)
        cuda = dev.type == "cuda"
        for _ in range(args.warmup):
            bench.step(features, x, y)
        # resident activation memory: allocated after forward+loss minus before
        if cuda:
            synchronize(dev)
            m0 = torch.cuda.memory_allocated(dev)
            loss = bench.forward_loss(features, x, y)
            synchronize(dev)
            m1 = torch.cuda.memory_allocated(dev)
            loss.backward()
            del loss
            bench.optimizer.step()
            bench.optimizer.zero_grad(set_to_none=True)
            row["static_mib"] = m0 / MIB
            row["act_mib"] = (m1 - m0) / MIB
        else:
            row["static_mib"] = None
            row["act_mib"] = None
        row["saved_mib"] = saved_tensor_bytes(bench, features, x, y) / MIB
        if cuda:  # peak = timed steps only (the allocator's cache stays warm)
            synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        timing = time_steps_into(
            row, partial(bench.step, features, x, y), batch, dev, args, self.deadline
        )
        if cuda:
            row["peak_mib"] = torch.cuda.max_memory_allocated(dev) / MIB
            row["peak_reserved_mib"] = torch.cuda.max_memory_reserved(dev) / MIB
        else:
            row["peak_mib"] = None
            row["peak_reserved_mib"] = None
        if time_forward and segments == 0:

            def fwd() -> None:
                bench.forward_loss(features, x, y)

            reps = max(1, min(5, args.repeats))
            ft = time_steps(
                fwd,
                dev,
                warmup=min(1, args.warmup),
                repeats=reps,
                min_repeats=min(3, reps),
                max_seconds=args.max_config_seconds / 2,
                deadline=self.deadline,
            )
            row["fwd_ms"] = ft.median_ms
            row["one_fwd_pct"] = (
                100.0 * ft.median_ms / timing.median_ms if timing.median_ms else None
            )

    # ------------------------------------------------------------------ max batch
    def max_batch(
        self,
        family: str,
        name: str,
        size: tuple[int, ...],
        segments: int,
        start: int,
        *,
        keep_last: bool = False,
        setting: str | None = None,
        factor: float = 2.0,
        tol: float = 0.1,
    ) -> dict[str, Any]:
        """Largest batch whose training step fits under ``--mem-cap-gib``.

        Checkpointing is ``segments``/``keep_last``, or the peak-report ``setting`` (see
        :meth:`Bench.configure_setting`) when one is given. The search
        (:func:`search_max_batch`) starts at ``start`` and steps by ``factor`` until the
        fit changes, then bisects to within ``tol``. The record also holds the step time
        and images/s at the largest batch that fits (the child times one step there).

        Every probe runs in a child process (:class:`ProbeWorker`); a child that hit an
        OOM exits, and the next probe starts a fresh one, so nothing a failed step left
        on the device (allocator cache, leaked autograd state, a pushed saved-tensor hook)
        can make later probes or configurations fail. The parent releases its own model
        first so the child sees the whole device.
        """
        args = self.args
        rec: dict[str, Any] = {
            "family": family,
            "backbone": name,
            "size": list(size),
            "segments": segments,
            "keep_last": keep_last,
            "setting": setting,
            "cap_gib": args.mem_cap_gib,
            "start": start,
            "max_batch": None,
            "first_fail": None,
            "step_ms": None,
            "images_per_s": None,
            "status": "ok",
            "reason": "",
            "probes": [],
        }
        if self.deadline.expired() or self.fatal:
            rec.update(status="skipped", reason="time limit" if not self.fatal else self.fatal)
            return rec
        self.drop_bench()
        t_end = time.perf_counter() + args.max_batch_seconds
        spec = {
            "family": family,
            "name": name,
            "size": list(size),
            "segments": segments,
            "keep_last": keep_last,
            "setting": setting,
            "device": str(self.device),
            "cap_gib": args.mem_cap_gib,
            "dtype": "bf16" if args.amp_dtype == torch.bfloat16 else "fp32",
            "in_chans": args.in_chans,
            "channels_last": bool(args.channels_last),
            "seed": args.seed,
        }
        worker = ProbeWorker(spec)
        label = setting or f"seg={segments or 'off'}{' keep last' if keep_last else ''}"

        def probe(b: int) -> bool:
            res = worker.probe(b)
            rec["probes"].append({"batch": b, **res})
            log(
                f"  max-batch {name} {_size_label(size)} {label}: b={b} "
                f"{'fits' if res['fits'] else 'no: ' + res['why']} "
                f"peak={fmt(res['peak_mib'], 0)} MiB ({res['seconds']:.1f} s)"
            )
            return bool(res["fits"])

        def out_of_time() -> bool:
            return time.perf_counter() > t_end or self.deadline.expired()

        try:
            lo, hi = search_max_batch(
                probe,
                max(1, min(start, args.max_batch_limit)),
                args.max_batch_limit,
                out_of_time,
                factor=factor,
                tol=tol,
            )
        finally:
            worker.close()
        rec["max_batch"], rec["first_fail"] = lo, hi
        at_max = next((p for p in rec["probes"] if p["fits"] and p["batch"] == lo), None)
        if at_max is not None and at_max.get("step_ms"):
            rec["step_ms"] = at_max["step_ms"]
            rec["images_per_s"] = lo / (at_max["step_ms"] / 1e3)
        if hi is None and lo >= args.max_batch_limit:
            rec["reason"] = f"≥ limit {args.max_batch_limit}"
        elif out_of_time() and (hi is None or hi - lo > max(1, int(lo * tol))):
            rec["reason"] = "search stopped early (time)"
        return rec


def search_max_batch(
    probe: Callable[[int], bool],
    start: int,
    limit: int,
    out_of_time: Callable[[], bool],
    *,
    factor: float = 2.0,
    tol: float = 0.1,
) -> tuple[int, int | None]:
    """``(largest batch that fits, smallest that failed or None)``: from ``start``, grow
    the batch by ``factor`` while it fits (shrink by ``factor`` while it fails), then
    bisect until the gap is at most ``tol`` of the largest fit (or 1).

    ``factor=2`` doubles from a guess; a start at 0.9 × a predicted largest batch with
    ``factor = 1.1 / 0.9`` probes the bracket 0.9× / 1.1× the prediction first.

    Example:
        >>> search_max_batch(lambda b: b <= 37, 8, 4096, lambda: False)
        (36, 38)
        >>> search_max_batch(lambda b: b <= 37, 36, 4096, lambda: False, factor=1.1 / 0.9, tol=0.05)
        (37, 38)
    """
    if factor <= 1.0:
        raise ValueError(f"factor must be > 1, got {factor}")
    lo, hi = 0, None
    b = start
    while b <= limit and not out_of_time():
        if probe(b):
            lo = b
            b = max(b + 1, round(b * factor))
        else:
            hi = b
            break
    if lo == 0 and hi is not None:  # even the start batch fails: go down
        b = min(hi - 1, int(hi / factor))
        while b >= 1 and not out_of_time():
            if probe(b):
                lo = b
                break
            hi = b
            b = min(b - 1, int(b / factor))
    if hi is not None and lo > 0:
        while hi - lo > max(1, int(lo * tol)) and not out_of_time():
            mid = (lo + hi) // 2
            if probe(mid):
                lo = mid
            else:
                hi = mid
    return lo, hi


class ProbeWorker:
    """A child process (``--probe-worker SPEC``) answering max-batch probes of one setting.

    The parent writes a batch size per line to its stdin; the child runs two training
    steps under ``torch.cuda.set_per_process_memory_fraction(cap / total)`` and answers one
    ``PROBE {json}`` line: ``fits``, ``why``, ``peak_mib``, ``step_ms`` (the second step,
    timed as :func:`~benchmarks._common.time_steps` does; ``None`` when it does not fit),
    ``seconds``. After a failure the child exits, and the next :meth:`probe` starts a new
    one.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self._proc: subprocess.Popen[str] | None = None

    def probe(self, batch: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, str(_SCRIPT), "--probe-worker",
                 json.dumps(self.spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=os.environ.copy(),
            )  # fmt: skip
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        res: dict[str, Any] | None = None
        try:
            proc.stdin.write(f"{batch}\n")
            proc.stdin.flush()
            for line in proc.stdout:
                if line.startswith("PROBE "):
                    res = json.loads(line[len("PROBE ") :])
                    break
        except BrokenPipeError:
            res = None
        if res is None:
            self.close()
            res = {"fits": False, "why": "probe process died", "peak_mib": None, "step_ms": None}
        elif not res["fits"]:
            self.close()
        res["seconds"] = time.perf_counter() - t0
        return res

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _probe_worker_main(spec_json: str) -> int:
    """The child side of :class:`ProbeWorker`."""
    spec = json.loads(spec_json)
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
        total = torch.cuda.get_device_properties(device).total_memory
        frac = min(1.0, spec["cap_gib"] * 2**30 / total)
        torch.cuda.set_per_process_memory_fraction(frac, device)
    ns = argparse.Namespace(
        in_chans=spec["in_chans"],
        channels_last=spec["channels_last"],
        amp_dtype=torch.bfloat16 if spec["dtype"] == "bf16" else None,
    )
    torch.manual_seed(spec["seed"])
    size = tuple(spec["size"])
    bench = build_bench(spec["family"], spec["name"], size, device, ns)
    if spec.get("setting"):
        features = bench.configure_setting(spec["setting"])
    else:
        features = bench.configure(
            int(spec["segments"]), CkptOptions(skip_last=bool(spec["keep_last"]))
        )
    for line in sys.stdin:
        if not line.strip():
            continue
        batch = int(line)
        res: dict[str, Any] = {"fits": True, "why": "", "peak_mib": None, "step_ms": None}
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            x, y = bench.batch(batch)
            timing = time_steps(
                partial(bench.step, features, x, y), device, warmup=1, repeats=1, min_repeats=1
            )
            res["step_ms"] = timing.median_ms
            del x, y
            if cuda:
                torch.cuda.synchronize(device)
                res["peak_mib"] = torch.cuda.max_memory_allocated(device) / MIB
        except Exception as exc:  # OOM = does not fit; anything else is reported as such
            res = {
                "fits": False,
                "why": "OOM" if is_oom(exc) else _first_line(exc, 120),
                "peak_mib": None,
                "step_ms": None,
            }
        print("PROBE " + json.dumps(res), flush=True)
        if not res["fits"]:
            return 0  # exit: the parent starts a clean process for the next probe
    return 0
