#!/usr/bin/env python
"""Gradient-checkpointing benchmark: memory saved vs. step time, per backbone family.

For one representative backbone per family (``get_backbone_cfg(name).family``) this runs a
full training step (forward, cross-entropy on a linear head, backward, SGD step; bf16
autocast on CUDA) with checkpointing off and with ``segments`` 1/2/4/8 (those
``<= cfg.max_segments``), at several batch sizes and input sizes (2D: 28 and 224 px; 3D:
28³ and 64³ volumes), and records

* peak device memory (``torch.cuda.max_memory_allocated`` over the timed steps);
* activation memory resident between forward and backward (``memory_allocated`` after
  the forward pass minus before it; CUDA only);
* bytes of tensors saved for backward, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` (works on CPU too);
* median step time (CUDA events) and the host time to issue a step;
* the largest batch that fits under ``--mem-cap-gib`` with and without checkpointing
  (binary search under ``torch.cuda.set_per_process_memory_fraction``, OOM caught).

It proposes each family's default ``segments`` by the rule "at least 50 % of activation
memory saved for at most 35 % more step time; among those, the least overhead", writes
Markdown tables + one plot + raw JSON, and stops starting new work at ``--time-limit``.

Diagnosis: ``--profile FAMILY[,FAMILY]`` runs ``torch.profiler`` on steps with and
without checkpointing (top ops by device time, kernel launches per step, GPU busy share);
``--ablate`` times checkpoint options the backbone API does not expose (RNG-state
preservation, determinism check, BatchNorm-statistics restore, not checkpointing the last
group) through a script-side runner built from the public ``forward_stem`` / ``units`` /
``forward_head`` steps.

CPU smoke run (a few seconds)::

    python benchmarks/gradient_checkpointing.py --device cpu --sizes 28 --batch-sizes 2 \
        --families resnet --segments off,2

See ``--help`` and ``docs/benchmarks/gradient_checkpointing.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from functools import partial
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make `benchmarks` and `med_core` importable
    sys.path.insert(0, str(_REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._common import Deadline  # noqa: E402
from benchmarks._common import command_line  # noqa: E402
from benchmarks._common import environment  # noqa: E402
from benchmarks._common import environment_table  # noqa: E402
from benchmarks._common import fmt  # noqa: E402
from benchmarks._common import is_fatal_device_error  # noqa: E402
from benchmarks._common import is_oom  # noqa: E402
from benchmarks._common import log  # noqa: E402
from benchmarks._common import markdown_table  # noqa: E402
from benchmarks._common import release_device_memory  # noqa: E402
from benchmarks._common import synchronize  # noqa: E402
from benchmarks._common import time_steps  # noqa: E402
from benchmarks._common import write_json  # noqa: E402
from benchmarks._common import write_text  # noqa: E402
from med_core.backbones import Backbone  # noqa: E402
from med_core.backbones import create_backbone  # noqa: E402
from med_core.backbones import get_backbone_cfg  # noqa: E402
from med_core.backbones import list_backbones  # noqa: E402

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
DEFAULT_OUT = "docs/benchmarks/gradient_checkpointing.md"
DEFAULT_PROFILE_OUT = "docs/benchmarks/gradient_checkpointing_profile.md"
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


def _run_chain(group: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for unit in group:
        x = unit(x)
    return x


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


def _restore_contexts(
    group: Sequence[nn.Module],
) -> tuple[contextlib.AbstractContextManager[Any], contextlib.AbstractContextManager[Any]]:
    from med_core.backbones._checkpointing import _running_norms

    norms = _running_norms(group)
    recompute: contextlib.AbstractContextManager[Any] = (
        _RestoreNormStats(norms) if norms else contextlib.nullcontext()
    )
    return contextlib.nullcontext(), recompute


class ScriptCheckpointed(nn.Module):
    """The backbone's forward with configurable checkpoint options (benchmark only).

    Runs ``backbone.forward_stem``, then ``backbone.units()`` in ``segments`` contiguous
    groups exactly as ``med_core.backbones._checkpointing.run_units`` groups them, then
    ``backbone.forward_head``. With default :class:`CkptOptions` it computes the same as
    the library path (checked by the CPU test); the options change only what the backbone
    API does not expose. The backbone's own checkpointing must be off.
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
        # private helpers of the library, imported here so that a refactor of them only
        # breaks the ablation/variant mode, never the library-path benchmark
        from torch.utils.checkpoint import checkpoint
        from torch.utils.checkpoint import noop_context_fn

        from med_core.backbones._checkpointing import _contexts
        from med_core.backbones._checkpointing import _running_norms
        from med_core.backbones._checkpointing import segment_bounds

        bb, opt = self.backbone, self.options
        x = bb.forward_stem(x)
        units = bb.units()
        k = self.segments if self.training and torch.is_grad_enabled() else 0
        if k <= 0:
            return bb.forward_head(_run_chain(units, x))
        bounds = segment_bounds(len(units), k)
        for i, (lo, hi) in enumerate(bounds):
            group = tuple(units[lo:hi])
            if opt.skip_last and i == len(bounds) - 1:
                x = _run_chain(group, x)
                continue
            x = checkpoint(
                _run_chain,
                group,
                x,
                use_reentrant=False,
                preserve_rng_state=opt.preserve_rng_state,
                determinism_check=opt.determinism_check,
                context_fn=(
                    partial(_contexts, _running_norms(group))
                    if opt.norm_stats == "freeze"
                    else partial(_restore_contexts, group)
                    if opt.norm_stats == "restore"
                    else noop_context_fn
                ),
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
        self, features: Callable[[torch.Tensor], Any], x: torch.Tensor, y: torch.Tensor
    ) -> None:
        """One training step: forward, loss, backward, SGD step, grads to ``None``."""
        self.forward_loss(features, x, y).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


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
    kept outside them (stem, head, group inputs) is seen."""
    seen: dict[int, int] = {}
    params = bench.param_storages

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and t.device.type != "meta":
            seen[ptr] = storage.nbytes()
        return t

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
            "notes": self.notes,
        }


def _seg_label(segments: int, keep_last: bool, cfg: Any) -> str:
    if segments == 0:
        return "off"
    tags = []
    if segments == cfg.max_segments:
        tags.append("max")
    if segments == cfg.default_segments and keep_last == cfg.default_keep_last:
        tags.append("lib default")
    label = f"{segments} ({', '.join(tags)})" if tags else str(segments)
    return label + (" keep last" if keep_last else "")


def _size_label(size: Sequence[int]) -> str:
    if len(set(size)) == 1:
        return f"{size[0]}" + ("³" if len(size) == 3 else "²")
    return "×".join(map(str, size))


# ============================================================================ measuring
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
        failed: BaseException | None = None
        try:
            bench = self.bench(family, name, size)
            self._measure_into(row, bench, batch, segments, options, time_forward)
        except Exception as exc:  # recorded per configuration; fatal device errors re-raised below
            failed = exc
            if is_oom(exc):
                row.update(status="OOM", reason=_first_line(exc))
                self._oom_at[key] = min(batch, self._oom_at.get(key, batch))
            else:
                row.update(status="error", reason=_first_line(exc, 200))
                log("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
                if is_fatal_device_error(exc):
                    self.fatal = row["reason"]
        finally:
            if self._bench is not None:
                self._bench.optimizer.zero_grad(set_to_none=True)
        if failed is not None:
            del failed
            release_device_memory(self.device, collect=True)
        else:
            release_device_memory(self.device)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        return row

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
        timing = time_steps(
            lambda: bench.step(features, x, y),
            dev,
            warmup=0,
            repeats=args.repeats,
            min_repeats=min(3, args.repeats),
            max_seconds=args.max_config_seconds,
            deadline=self.deadline,
        )
        row["step_ms"] = timing.median_ms
        row["host_ms"] = timing.host_ms
        row["min_ms"] = timing.min_ms
        row["spread_pct"] = timing.spread_pct
        row["samples_ms"] = [round(s, 3) for s in timing.samples_ms]
        row["images_per_s"] = batch / (timing.median_ms / 1e3) if timing.median_ms > 0 else None
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
    ) -> dict[str, Any]:
        """Largest batch whose training step fits under ``--mem-cap-gib``.

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
            "cap_gib": args.mem_cap_gib,
            "max_batch": None,
            "first_fail": None,
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
            "device": str(self.device),
            "cap_gib": args.mem_cap_gib,
            "dtype": "bf16" if args.amp_dtype == torch.bfloat16 else "fp32",
            "in_chans": args.in_chans,
            "channels_last": bool(args.channels_last),
            "seed": args.seed,
        }
        worker = ProbeWorker(spec)

        def probe(b: int) -> bool:
            res = worker.probe(b)
            rec["probes"].append({"batch": b, **res})
            log(
                f"  max-batch {name} {_size_label(size)} seg={segments or 'off'}"
                f"{' keep last' if keep_last else ''}: b={b} "
                f"{'fits' if res['fits'] else 'no: ' + res['why']} "
                f"peak={fmt(res['peak_mib'], 0)} MiB ({res['seconds']:.1f} s)"
            )
            return bool(res["fits"])

        def out_of_time() -> bool:
            return time.perf_counter() > t_end or self.deadline.expired()

        try:
            lo, hi = search_max_batch(probe, max(1, start), args.max_batch_limit, out_of_time)
        finally:
            worker.close()
        rec["max_batch"], rec["first_fail"] = lo, hi
        if hi is None and lo >= args.max_batch_limit:
            rec["reason"] = f"≥ limit {args.max_batch_limit}"
        elif out_of_time() and (hi is None or hi - lo > max(1, lo // 10)):
            rec["reason"] = "search stopped early (time)"
        return rec


def search_max_batch(
    probe: Callable[[int], bool], start: int, limit: int, out_of_time: Callable[[], bool]
) -> tuple[int, int | None]:
    """``(largest batch that fits, smallest that failed or None)`` by doubling from
    ``start`` (halving when ``start`` fails), then bisection to within 10 %.

    Example:
        >>> search_max_batch(lambda b: b <= 37, 8, 4096, lambda: False)
        (36, 38)
    """
    lo, hi = 0, None
    b = start
    while b <= limit and not out_of_time():
        if probe(b):
            lo = b
            b *= 2
        else:
            hi = b
            break
    if lo == 0 and hi is not None:  # even the start batch fails: go down
        b = hi // 2
        while b >= 1 and not out_of_time():
            if probe(b):
                lo = b
                break
            hi = b
            b //= 2
    if hi is not None and lo > 0:
        while hi - lo > max(1, lo // 10) and not out_of_time():
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
    ``PROBE {json}`` line: ``fits``, ``why``, ``peak_mib``, ``seconds``. After a failure
    the child exits, and the next :meth:`probe` starts a new one.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self._proc: subprocess.Popen[str] | None = None

    def probe(self, batch: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--probe-worker",
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
            res = {"fits": False, "why": "probe process died", "peak_mib": None}
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
    options = CkptOptions(skip_last=bool(spec["keep_last"]))
    features = bench.configure(int(spec["segments"]), options)
    for line in sys.stdin:
        if not line.strip():
            continue
        batch = int(line)
        res: dict[str, Any] = {"fits": True, "why": "", "peak_mib": None}
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            x, y = bench.batch(batch)
            for _ in range(2):
                bench.step(features, x, y)
            del x, y
            if cuda:
                torch.cuda.synchronize(device)
                res["peak_mib"] = torch.cuda.max_memory_allocated(device) / MIB
        except Exception as exc:  # OOM = does not fit; anything else is reported as such
            res = {
                "fits": False,
                "why": "OOM" if is_oom(exc) else _first_line(exc, 120),
                "peak_mib": None,
            }
        print("PROBE " + json.dumps(res), flush=True)
        if not res["fits"]:
            return 0  # exit: the parent starts a clean process for the next probe
    return 0


# ============================================================================ analysis
def add_relative(rows: list[dict[str, Any]], metric: str) -> None:
    """Fills memory-saved and overhead percentages of each row relative to its "off" row
    (same backbone, size, batch, variant group)."""
    off_rows = {
        (r["backbone"], tuple(r["size"]), r["batch"], r["phase"] == "ablation"): r
        for r in rows
        if r["status"] == "ok" and r["segments"] == 0 and r["phase"] != "repeat"
    }
    for r in rows:
        if r["status"] != "ok":
            continue
        off = off_rows.get((r["backbone"], tuple(r["size"]), r["batch"], r["phase"] == "ablation"))
        if off is None:
            for k in (
                "act_saved_pct",
                "saved_saved_pct",
                "peak_saved_pct",
                "mem_saved_pct",
                "overhead_pct",
            ):
                r[k] = None
            continue
        r["act_saved_pct"] = _pct_saved(off.get("act_mib"), r.get("act_mib"))
        r["saved_saved_pct"] = _pct_saved(off.get("saved_mib"), r.get("saved_mib"))
        r["peak_saved_pct"] = _pct_saved(off.get("peak_mib"), r.get("peak_mib"))
        r["mem_saved_pct"] = (
            r["act_saved_pct"]
            if metric == "act"
            else (r["peak_saved_pct"] if metric == "peak" else r["saved_saved_pct"])
        )
        r["overhead_pct"] = _pct_more(off.get("step_ms"), r.get("step_ms"))
        r["one_fwd_pct_ref"] = off.get("one_fwd_pct")


def meets_rule(r: dict[str, Any]) -> bool:
    s, o = r.get("mem_saved_pct"), r.get("overhead_pct")
    return (
        s is not None and o is not None and s >= RULE_MIN_SAVED_PCT and o <= RULE_MAX_OVERHEAD_PCT
    )


def choose(
    rows: list[dict[str, Any]], noise_pct: float | None = None
) -> tuple[dict[str, Any] | None, str]:
    """The rule's choice among checkpointed rows of one (backbone, size, batch).

    Among the rows meeting the rule, the least overhead; rows whose overhead is within
    ``noise_pct`` (the run's measured noise) of that minimum count as tied, and the tie
    goes to the larger memory saving.
    """
    cands = [r for r in rows if r["segments"] > 0 and r["status"] == "ok"]
    if not cands:
        return None, "no checkpointed measurement"
    good = [r for r in cands if meets_rule(r)]
    if good:
        least = min(r["overhead_pct"] for r in good)
        tied = [r for r in good if r["overhead_pct"] <= least + (noise_pct or 0.0)]
        return max(tied, key=lambda r: (r["mem_saved_pct"], -r["overhead_pct"])), ""
    measurable = [
        r for r in cands if r.get("mem_saved_pct") is not None and r.get("overhead_pct") is not None
    ]
    if not measurable:
        return None, "no baseline (off) measurement"
    cheap = [r for r in measurable if r["overhead_pct"] <= RULE_MAX_OVERHEAD_PCT]
    big = [r for r in measurable if r["mem_saved_pct"] >= RULE_MIN_SAVED_PCT]
    parts = []
    if cheap:
        best = max(cheap, key=lambda r: r["mem_saved_pct"])
        parts.append(
            f"within {RULE_MAX_OVERHEAD_PCT:.0f} % time at most {best['mem_saved_pct']:.0f} % "
            f"saved (segments={best['segments']})"
        )
    if big:
        best = min(big, key=lambda r: r["overhead_pct"])
        parts.append(
            f"≥ {RULE_MIN_SAVED_PCT:.0f} % saved costs at least {best['overhead_pct']:.0f} % "
            f"time (segments={best['segments']})"
        )
    if not parts:
        parts.append("no setting saves 50 % or stays within 35 %")
    return None, "; ".join(parts)


def summarize(run: Run, fam_plan: list[tuple[str, str, tuple[int, ...], int]]) -> None:
    run.summary = []
    rows = [
        r
        for r in run.results
        if r["phase"] != "ablation"
        and r["variant"] in ("library", "keep_last", run.args["variant"])
    ]
    for family, name, ref_size, ref_batch in fam_plan:
        cfg = get_backbone_cfg(name)
        ref = [
            r
            for r in rows
            if r["backbone"] == name and tuple(r["size"]) == ref_size and r["batch"] == ref_batch
        ]
        off = next(
            (r for r in ref if r["segments"] == 0 and r["status"] == "ok" and r["phase"] == "ref"),
            None,
        )
        rep = next((r for r in ref if r["phase"] == "repeat" and r["status"] == "ok"), None)
        noise = abs(rep["overhead_pct"]) if rep and rep.get("overhead_pct") is not None else None
        chosen, why = choose(ref, noise)
        entry: dict[str, Any] = {
            "family": family,
            "backbone": name,
            "ref_size": list(ref_size),
            "ref_batch": ref_batch,
            "max_segments": cfg.max_segments,
            "library_default": cfg.default_segments,
            "proposed": chosen["segments"] if chosen else None,
            "proposed_keep_last": bool(chosen.get("keep_last")) if chosen else None,
            "proposed_label": (
                f"{chosen['segments']}{' keep last' if chosen.get('keep_last') else ''}"
                if chosen
                else None
            ),
            "meets_rule": chosen is not None,
            "why_not": why,
            "mem_saved_pct": chosen.get("mem_saved_pct") if chosen else None,
            "peak_saved_pct": chosen.get("peak_saved_pct") if chosen else None,
            "overhead_pct": chosen.get("overhead_pct") if chosen else None,
            "off_step_ms": off.get("step_ms") if off else None,
            "one_fwd_pct": off.get("one_fwd_pct") if off else None,
            "noise_pct": noise,
            "holds": None,
            "holds_of": None,
        }
        lib = next(
            (
                r
                for r in ref
                if r["segments"] == cfg.default_segments
                and bool(r.get("keep_last")) == cfg.default_keep_last
                and r["status"] == "ok"
            ),
            None,
        )
        entry["library_default_saved_pct"] = lib.get("mem_saved_pct") if lib else None
        entry["library_default_overhead_pct"] = lib.get("overhead_pct") if lib else None
        if chosen:
            others = [
                r
                for r in rows
                if r["backbone"] == name
                and r["segments"] == chosen["segments"]
                and bool(r.get("keep_last")) == bool(chosen.get("keep_last"))
                and r["status"] == "ok"
                and r.get("overhead_pct") is not None
                and (tuple(r["size"]), r["batch"]) != (ref_size, ref_batch)
            ]
            entry["holds"] = sum(meets_rule(r) for r in others)
            entry["holds_of"] = len(others)
            entry["fails_at"] = [
                f"{_size_label(r['size'])} b{r['batch']}" for r in others if not meets_rule(r)
            ]
        run.summary.append(entry)


# ============================================================================ plot
def write_plot(run: Run, path: Path) -> str | None:
    """Memory saved % vs. step-time overhead % at each family's reference configuration.
    Returns an error string instead of raising when matplotlib is unavailable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"plot not written: {exc}"
    fig, ax = plt.subplots(figsize=(9, 6.5))
    ax.fill_between(
        [-1000, RULE_MAX_OVERHEAD_PCT],
        RULE_MIN_SAVED_PCT,
        105,
        color="tab:green",
        alpha=0.08,
        label=f"target: ≥ {RULE_MIN_SAVED_PCT:.0f} % saved, ≤ {RULE_MAX_OVERHEAD_PCT:.0f} % time",
    )
    refs = {(s["backbone"], tuple(s["ref_size"]), s["ref_batch"]) for s in run.summary}
    cmap = plt.get_cmap("tab20")
    xmax = 60.0
    all_x: list[float] = []
    for i, s in enumerate(run.summary):
        pts = [
            r
            for r in run.results
            if r["phase"] != "ablation"
            and r["status"] == "ok"
            and r["segments"] > 0
            and (r["backbone"], tuple(r["size"]), r["batch"]) in refs
            and r["backbone"] == s["backbone"]
            and tuple(r["size"]) == tuple(s["ref_size"])
            and r["batch"] == s["ref_batch"]
            and r.get("overhead_pct") is not None
            and r.get("mem_saved_pct") is not None
        ]
        if not pts:
            continue
        pts.sort(key=lambda r: r["segments"])
        xs = [r["overhead_pct"] for r in pts]
        ys = [r["mem_saved_pct"] for r in pts]
        xmax = max(xmax, *xs)
        all_x += xs
        ax.plot(
            xs, ys, "o-", color=cmap(i % 20), label=f"{s['family']} ({s['backbone']})", ms=5, lw=1
        )
        for r in pts:
            ax.annotate(
                str(r["segments"]),
                (r["overhead_pct"], r["mem_saved_pct"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axhline(RULE_MIN_SAVED_PCT, color="gray", lw=0.6, ls="--")
    ax.axvline(RULE_MAX_OVERHEAD_PCT, color="gray", lw=0.6, ls="--")
    xmin = min([-5.0, *all_x])
    ax.set_xlim(xmin - 5, xmax * 1.05 + 5)
    ax.set_ylim(min(0, ax.get_ylim()[0]), 102)
    metric = {
        "act": "resident activation memory",
        "saved": "bytes saved for backward",
        "peak": "peak memory",
    }[run.rule_metric]
    ax.set_xlabel("step-time overhead vs. off (%)")
    ax.set_ylabel(f"{metric} saved vs. off (%)")
    ax.set_title(
        f"Gradient checkpointing, {run.device}, {run.dtype}: each family at its reference "
        "size and batch (point labels: segments)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# ============================================================================ profiling
_DEVICE_CPU = torch.autograd.DeviceType.CPU  # type: ignore[attr-defined]
_DEVICE_CUDA = torch.autograd.DeviceType.CUDA  # type: ignore[attr-defined]
_LAUNCH_NAMES = (
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cudaLaunchCooperativeKernel",
    "cudaGraphLaunch",
)
_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("convolution", ("conv",)),
    (
        "matmul / attention",
        (
            "::mm",
            "::bmm",
            "::addmm",
            "::baddbmm",
            "::_scaled_dot",
            "attention",
            "::linear",
            "::matmul",
        ),
    ),
    ("batch norm", ("batch_norm",)),
    ("layer norm", ("layer_norm",)),
    ("casts (_to_copy)", ("::_to_copy",)),
    ("copies (copy_/clone)", ("::copy_", "::clone")),
    ("optimizer", ("_foreach", "sgd")),
]
_COUNTED_OPS = (
    "aten::convolution",
    "aten::convolution_backward",
    "aten::batch_norm",
    "aten::layer_norm",
    "aten::linear",
    "aten::_to_copy",
    "aten::clone",
    "aten::copy_",
)


def _self_device_us(e: Any) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(e, attr, None)
        if v is not None:
            return float(v)
    return 0.0


def _category(name: str) -> str:
    low = name.lower()
    for cat, keys in _CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other (elementwise, pooling, ...)"


def profile_steps(
    bench: Bench,
    features: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    trace: Path | None,
) -> dict[str, Any]:
    """``torch.profiler`` over ``steps`` training steps; per-step aggregates."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    cuda = bench.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize(bench.device)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            bench.step(features, x, y)
        synchronize(bench.device)
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    events = prof.events()
    dev_events = [e for e in events if getattr(e, "device_type", _DEVICE_CPU) == _DEVICE_CUDA]
    launches = sum(1 for e in events if e.name in _LAUNCH_NAMES)
    gpu_us = sum(e.time_range.elapsed_us() for e in dev_events)
    ops: dict[str, dict[str, float]] = {}
    for a in prof.key_averages():
        if getattr(a, "device_type", _DEVICE_CPU) != _DEVICE_CPU or a.key in _LAUNCH_NAMES:
            continue
        ops[a.key] = {
            "calls": a.count / steps,
            "self_device_ms": _self_device_us(a) / 1e3 / steps,
            "self_cpu_ms": a.self_cpu_time_total / 1e3 / steps,
        }
    cats: dict[str, float] = {}
    for name, o in ops.items():
        c = _category(name)
        cats[c] = cats.get(c, 0.0) + (o["self_device_ms"] if cuda else o["self_cpu_ms"])
    return {
        "device_ops_per_step": len(dev_events) / steps if cuda else None,
        # None where the trace holds no runtime launch events (then only GPU ops are known)
        "launches_per_step": launches / steps if cuda and launches else None,
        "gpu_ms_per_step": gpu_us / 1e3 / steps if cuda else None,
        "aten_calls_per_step": sum(o["calls"] for n, o in ops.items() if n.startswith("aten::")),
        "counted_ops": {n: ops[n]["calls"] if n in ops else 0.0 for n in _COUNTED_OPS},
        "categories_ms": cats,
        "ops": ops,
    }


def _resolve_segments(tokens: Sequence[str], cfg: Any, chosen: int | None = None) -> list[int]:
    out: list[int] = []
    for t in tokens:
        if t == "off":
            k = 0
        elif t == "max":
            k = cfg.max_segments
        elif t == "default":
            k = cfg.default_segments
        elif t == "proposed":
            if chosen is None:
                continue
            k = chosen
        elif t == "none":
            continue
        else:
            k = int(t)
            if k > cfg.max_segments:
                continue
        if k not in out:
            out.append(k)
    return out


def propose_defaults(data: dict[str, Any]) -> str:
    """The ``FAMILY_DEFAULTS`` literal that a results JSON (``--json``) proposes.

    Families whose reference configuration met the rule get the chosen ``(segments,
    keep_last)``; the others are left out (they keep ``round(sqrt(units))``), with a
    comment saying why. Paste the output over ``FAMILY_DEFAULTS`` in
    ``med_core/backbones/_checkpointing.py`` and regenerate the docs table.
    """
    dev = data.get("env", {}).get("GPU") or data.get("device", "?")
    lines = [
        f"# from {data.get('command', '?')}",
        f"# device {dev}, dtype {data.get('dtype', '?')}, status {data.get('status', '?')}",
        "FAMILY_DEFAULTS: dict[str, tuple[int, bool]] = {",
    ]
    for e in sorted(data.get("summary", []), key=lambda e: e["family"]):
        ref = f"{e['backbone']} {_size_label(e['ref_size'])} b{e['ref_batch']}"
        if e.get("meets_rule") and e.get("proposed"):
            kl = bool(e.get("proposed_keep_last"))
            lines.append(
                f'    "{e["family"]}": ({e["proposed"]}, {kl}),  # {ref}: '
                f"{e['mem_saved_pct']:.0f} % saved, +{e['overhead_pct']:.0f} %"
            )
        else:
            lines.append(f"    # {e['family']}: none meets the rule ({ref}: {e.get('why_not')})")
    lines.append("}")
    return "\n".join(lines)


# ============================================================================ Markdown
_HYPOTHESES = """\
The issue's reference run (timm per-block checkpointing, 224 px, batch 64, bf16, H200)
cost 59–195 % more step time, where one extra forward pass should cost about a third of a
step. Candidate causes, and how this script tests each one:

1. **More recomputation than one forward.** The library checkpoints *every* group,
   including the last one (unlike `checkpoint_sequential`), so every unit's forward runs
   twice; per-block checkpointing (`segments = max`) also checkpoints blocks whose
   activations are cheap to keep. *Test*: the "1 extra fwd %" column (forward + loss
   time / step time, measured with checkpointing off) is the expected overhead of
   recomputing everything; `--ablate` variant `skip_last` leaves the last group out.
2. **Memory-bound ops recomputed.** BatchNorm/LayerNorm, activations, residual adds and
   depthwise convolutions are bandwidth-bound: a larger share of *time* than of FLOPs, and
   recomputation repeats all of them. *Test*: `--profile` category table (device ms per
   step in convolution / matmul / norm / elementwise, off vs. checkpointed).
3. **BatchNorm running-statistics restore.** Before each recomputation the library clones
   `running_mean`, `running_var`, `num_batches_tracked` of every BatchNorm in the group
   and copies them back afterwards (≈ 6 tiny kernels per BN layer per step; ResNet-50 has
   53 BN layers), and `_contexts` walks `unit.modules()` in Python on every forward.
   *Test*: `--ablate` variants `no_norm_restore` (no protection) and `norm_freeze` (the
   proposed fix: BN `momentum = 0` while recomputing, `num_batches_tracked -= 1` after:
   same state, 1 instead of 6 small kernels per BN layer);
   `aten::clone`/`aten::copy_` calls per
   step in `--profile`.
4. **CPU launch overhead.** At 28 px and at small batches the step is bound by the host:
   every recomputed op is another launch, and non-reentrant checkpoint adds Python work per
   saved tensor (pack/unpack hooks) and per group (frame, RNG state, determinism metadata).
   *Test*: `host ms` vs `step ms` in the tables (host ≈ step means launch-bound), GPU busy
   share and launches per step in `--profile`.
5. **RNG-state preservation** (`preserve_rng_state=True`): CPU and CUDA generator state
   are captured per group in forward and restored (`fork_rng`) per recomputation.
   *Test*: `--ablate` variant `no_rng`. Note: turning it off is only correct for groups
   without randomness; torchvision's ConvNeXt/Swin/EfficientNet/MaxViT use stochastic
   depth in training, so for them it would change the recomputed drop masks.
6. **Autocast re-casts weights.** Autocast caches the bf16 copy of each weight only
   inside the outermost `autocast` region; recomputation runs during backward, outside it,
   so checkpoint re-enters autocast and casts every weight of the group again (one extra
   `aten::_to_copy` kernel per weight tensor). *Test*: `aten::_to_copy` calls per step in
   `--profile` (off vs. checkpointed).
7. **Determinism check** (`determinism_check="default"`): shape/dtype/device metadata of
   every recomputed saved tensor is compared in Python. *Test*: `--ablate` `no_detcheck`.
8. **Lost fusion / algorithm choice.** Eager recomputation runs the same kernels as the
   first forward (no fusion is lost in eager mode); cuDNN algorithm choice is unchanged
   unless `--cudnn-benchmark` is given. A compiled (`torch.compile`) step would fuse the
   recomputed elementwise ops, which this benchmark does not measure.
"""


def _method_md(run: Run) -> str:
    a = run.args
    cpu = run.device == "cpu"
    lines = [
        f"- Training step: `backbone → Linear({NUM_CLASSES})`, cross-entropy, `backward()`, "
        f"SGD (momentum 0.9), `zero_grad(set_to_none=True)`; {run.dtype}"
        + ("" if cpu else " (bf16 via `torch.autocast`)" if run.dtype == "bf16" else "")
        + f"; {a['in_chans']} input channels; channels_last={a['channels_last']}.",
        f"- Checkpointing: `Backbone.enable_gradient_checkpointing(segments)` (variant "
        f"`{a['variant']}`); segments are contiguous groups of the backbone's units, every "
        "group checkpointed (non-reentrant).",
        f"- Step time: median of up to {a['repeats']} steps after {a['warmup']} warm-up steps "
        "(≤ {0:g} s of timed steps per configuration); ".format(a["max_config_seconds"])
        + (
            "host wall clock."
            if cpu
            else "CUDA events, device synchronized before every step. "
            "*host ms*: time to issue one step from Python (≈ step ms: launch-bound)."
        ),
        "- *saved MiB*: unique storages saved for backward during forward + loss "
        "(`torch.autograd.graph.saved_tensors_hooks`), parameters/buffers excluded.",
    ]
    if cpu:
        lines.append(
            "- **CPU run: peak device memory and resident activation memory are not "
            "available; the peak/act columns read –, and *mem saved %* is computed "
            "from saved-for-backward bytes.** Step times on a shared CPU are noisy."
        )
    else:
        lines.append(
            "- *peak MiB*: `torch.cuda.max_memory_allocated` over the timed steps "
            "(parameters, gradients, momentum, activations, workspaces). *act MiB*: "
            "`memory_allocated` after forward + loss minus before it (activations "
            "resident until backward, incl. autocast weight copies)."
        )
    metric = {"act": "act MiB", "saved": "saved MiB", "peak": "peak MiB"}[run.rule_metric]
    lines.append(
        f"- *mem saved %* = 1 − {metric}(segments) / {metric}(off), same size and batch; "
        "*overhead %* = step ms(segments) / step ms(off) − 1."
    )
    lines.append(
        "- *noise %*: |step ms of a second `off` run of the reference configuration, measured "
        "after all its checkpointed rows| / first `off` − 1: overhead differences below it are "
        "noise. *1 extra fwd %*: forward + loss time / step time with checkpointing off (what "
        "recomputing the whole network once should cost)."
    )
    lines.append(
        f"- Rule for the proposed default: *mem saved* ≥ {RULE_MIN_SAVED_PCT:.0f} % and "
        f"*overhead* ≤ {RULE_MAX_OVERHEAD_PCT:.0f} % at the reference configuration "
        "(largest size, middle batch); among those the least overhead. *holds* counts "
        "the other measured sizes/batches where the same segments also meets it."
    )
    return "\n".join(lines)


def render_markdown(run: Run, plot_rel: str | None) -> str:
    cpu = run.device == "cpu"
    out = ["# Gradient checkpointing: memory saved vs. step time", ""]
    out.append(
        f"Generated by `benchmarks/gradient_checkpointing.py` (status: **{run.status}**, "
        f"{run.elapsed_s:.0f} s). Regenerate with:"
    )
    out += ["", "```", run.command, "```", ""]
    if cpu:
        out += [
            "> **CPU smoke run.** It checks that the benchmark runs end to end; its step "
            "times (shared CPU, tiny batch) and the segments it proposes are **not** data for "
            "setting defaults. Regenerate on the GPU (`--device cuda`).",
            "",
        ]
    out += ["## Environment", "", environment_table(run.env), ""]
    out += ["## Method", "", _method_md(run), ""]
    for n in run.notes:
        out.append(f"> {n}")
    if run.notes:
        out.append("")

    if run.summary:
        out += ["## Proposed default segments", ""]
        rows = []
        for s in run.summary:
            ok = s["meets_rule"]
            holds = f"{s['holds']}/{s['holds_of']}" if s.get("holds_of") else "–"
            rows.append(
                [
                    s["family"],
                    s["backbone"],
                    f"{_size_label(s['ref_size'])} b{s['ref_batch']}",
                    fmt(s["off_step_ms"]),
                    fmt(s["one_fwd_pct"], 0),
                    fmt(s.get("noise_pct"), 1),
                    s["library_default"],
                    f"{fmt(s['library_default_saved_pct'], 0)} / "
                    f"{fmt(s['library_default_overhead_pct'], 0)}",
                    s["proposed_label"] if ok else "**none meets the rule**",
                    fmt(s["mem_saved_pct"], 0),
                    fmt(s["overhead_pct"], 0),
                    holds,
                    "" if ok else s["why_not"],
                ]
            )
        out.append(
            markdown_table(
                [
                    "family",
                    "backbone",
                    "ref config",
                    "off step ms",
                    "1 extra fwd %",
                    "noise %",
                    "lib default",
                    "lib default saved % / overhead %",
                    "proposed segments",
                    "mem saved %",
                    "overhead %",
                    "holds",
                    "note",
                ],
                rows,
                align="lllrrrrrrrrrl",
            )
        )
        out.append("")

    if run.max_batch:
        out += [f"## Largest batch under {run.args['mem_cap_gib']:g} GiB", ""]
        by: dict[tuple[str, str, tuple[int, ...]], list[dict[str, Any]]] = {}
        for m in run.max_batch:
            by.setdefault((m["family"], m["backbone"], tuple(m["size"])), []).append(m)
        rows = []
        for (fam, name, size), ms in by.items():
            off = next((m for m in ms if m["segments"] == 0), None)
            on = next((m for m in ms if m["segments"] > 0), None)

            def cell(m: dict[str, Any] | None) -> str:
                if m is None:
                    return "–"
                if m["status"] != "ok":
                    return m["status"]
                v = str(m["max_batch"])
                if m.get("first_fail"):
                    v += f" (fails at {m['first_fail']})"
                return v + (f" [{m['reason']}]" if m.get("reason") else "")

            gain = (
                on["max_batch"] / off["max_batch"]
                if on and off and on.get("max_batch") and off.get("max_batch")
                else None
            )
            rows.append(
                [
                    fam,
                    name,
                    _size_label(size),
                    cell(off),
                    on["segments"] if on else "–",
                    cell(on),
                    f"{gain:.2f}×" if gain else "–",
                ]
            )
        out.append(
            markdown_table(
                ["family", "backbone", "size", "off", "segments", "checkpointed", "gain"],
                rows,
                align="lllrrrr",
            )
        )
        out.append("")

    ref_rows = _overhead_table(run)
    out += ["## Where the time goes", ""]
    if ref_rows:
        out += [
            "Measured overhead per segments vs. the cost of one extra forward pass "
            "(at the middle batch size of each family):",
            "",
            ref_rows,
            "",
        ]
    out += [_HYPOTHESES, ""]
    if run.ablation:
        out += ["### Ablation of checkpoint options (`--ablate`)", "", _ablation_table(run), ""]
    if run.profile:
        out += ["### Profiles (`--profile`)", "", _profile_md(run), ""]

    if plot_rel:
        out += ["## Plot", "", f"![memory saved vs. time overhead]({plot_rel})", ""]

    res = [r for r in run.results if r["phase"] != "ablation"]
    if res:
        out += ["## Results per family", ""]
        if cpu:
            out += [
                "*CPU: peak/act columns are not available (–); mem saved % uses saved MiB.*",
                "",
            ]
        fams: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in res:
            fams.setdefault((r["family"], r["backbone"]), []).append(r)
        for (fam, name), rs in fams.items():
            out += [f"### {fam} ({name})", ""]
            rs = sorted(rs, key=lambda r: (r["size"], r["batch"], r["variant"], r["segments"]))
            rows = []
            for r in rs:
                ok = r["status"] == "ok"
                rows.append(
                    [
                        _size_label(r["size"]),
                        r["batch"],
                        r["segments_label"],
                        fmt(r.get("peak_mib"), 0) if ok else "–",
                        fmt(r.get("act_mib"), 0) if ok else "–",
                        fmt(r.get("saved_mib"), 1) if ok else "–",
                        fmt(r.get("mem_saved_pct"), 1) if ok else "–",
                        fmt(r.get("peak_saved_pct"), 1) if ok else "–",
                        fmt(r.get("step_ms"), 2) if ok else "–",
                        fmt(r.get("host_ms"), 2) if ok else "–",
                        fmt(r.get("overhead_pct"), 1) if ok else "–",
                        "ok"
                        if ok
                        else f"{r['status']}" + (f": {r['reason']}" if r["reason"] else ""),
                    ]
                    + ([r["variant"]] if run.args["variant"] != "library" else [])
                )
            headers = [
                "size",
                "batch",
                "segments",
                "peak MiB",
                "act MiB",
                "saved MiB",
                "mem saved %",
                "peak saved %",
                "step ms",
                "host ms",
                "overhead %",
                "status",
            ]
            if run.args["variant"] != "library":
                headers.append("variant")
            out.append(
                markdown_table(headers, rows, align="lrl" + "r" * 8 + "l" * (len(headers) - 11))
            )
            out.append("")
    if run.args.get("json"):
        out += [f"Raw results: `{run.args['json']}` (schema {SCHEMA_VERSION}).", ""]
    return "\n".join(out)


def _overhead_table(run: Run) -> str:
    res = [r for r in run.results if r["phase"] in ("ref", "grid") and r["status"] == "ok"]
    if not res:
        return ""
    segs = sorted({r["segments"] for r in res if r["segments"] > 0})
    groups: dict[tuple[str, str, tuple[int, ...], int], dict[int, dict[str, Any]]] = {}
    for r in res:
        groups.setdefault((r["family"], r["backbone"], tuple(r["size"]), r["batch"]), {})[
            r["segments"]
        ] = r
    mids: dict[tuple[str, str, tuple[int, ...]], list[int]] = {}
    for fam, name, size, batch in groups:
        mids.setdefault((fam, name, size), []).append(batch)
    rows = []
    for (fam, name, size, batch), by in groups.items():
        bs = sorted(mids[(fam, name, size)])
        if batch != bs[len(bs) // 2]:
            continue
        off = by.get(0)
        if off is None:
            continue
        cells = []
        for k in segs:
            rk = by.get(k)
            cells.append(fmt(rk.get("overhead_pct"), 0) if rk else "")
        mx = max((k for k in by if k > 0), default=None)
        host_ratio = off["host_ms"] / off["step_ms"] if off.get("step_ms") else None
        rows.append(
            [
                fam,
                _size_label(size),
                batch,
                fmt(off["step_ms"], 2),
                fmt(host_ratio, 2) if run.device != "cpu" else "–",
                fmt(off.get("one_fwd_pct"), 0),
                *cells,
                fmt(by[mx]["host_ms"] - off["host_ms"], 2) if mx else "–",
            ]
        )
    return markdown_table(
        [
            "family",
            "size",
            "batch",
            "off step ms",
            "off host/step",
            "1 extra fwd %",
            *[f"seg {k} overhead %" for k in segs],
            "Δ host ms (most seg)",
        ],
        rows,
        align="llr" + "r" * (3 + len(segs) + 1),
    )


def _ablation_table(run: Run) -> str:
    rows = []
    base = {
        (r["backbone"], tuple(r["size"]), r["batch"], r["segments"]): r
        for r in run.ablation
        if r["status"] == "ok" and r["variant"] == "library"
    }
    for r in run.ablation:
        ok = r["status"] == "ok"
        lib = base.get((r["backbone"], tuple(r["size"]), r["batch"], r["segments"]))
        delta = (r["step_ms"] - lib["step_ms"]) if ok and lib and r["segments"] > 0 else None
        rows.append(
            [
                r["family"],
                f"{_size_label(r['size'])} b{r['batch']}",
                r["segments_label"],
                r["variant"] if r["segments"] else "off",
                fmt(r.get("step_ms"), 2) if ok else r["status"],
                fmt(r.get("host_ms"), 2) if ok else "–",
                fmt(r.get("overhead_pct"), 1) if ok else "–",
                fmt(delta, 2),
                fmt(r.get("mem_saved_pct"), 1) if ok else "–",
            ]
        )
    return markdown_table(
        [
            "family",
            "config",
            "segments",
            "variant",
            "step ms",
            "host ms",
            "overhead %",
            "Δ vs library ms",
            "mem saved %",
        ],
        rows,
        align="lllrrrrrr",
    )


def _profile_md(run: Run) -> str:
    out = []
    cuda = run.device != "cpu"
    unit = "device" if cuda else "CPU"
    for p in run.profile:
        out.append(
            f"#### {p['family']} ({p['backbone']}), {_size_label(p['size'])}, batch {p['batch']}"
        )
        out.append("")
        settings = p["settings"]
        if not settings:
            out += [f"not profiled: {p.get('reason', '')}", ""]
            continue
        rows = []
        for s in settings:
            pr = s["prof"]
            busy = (
                (100.0 * pr["gpu_ms_per_step"] / s["step_ms"])
                if cuda and pr["gpu_ms_per_step"] and s["step_ms"]
                else None
            )
            rows.append(
                [
                    s["label"],
                    fmt(s["step_ms"], 2),
                    fmt(s["host_ms"], 2),
                    fmt(pr["gpu_ms_per_step"], 2),
                    fmt(busy, 0),
                    fmt(pr["device_ops_per_step"], 0),
                    fmt(pr["launches_per_step"], 0),
                    fmt(pr["aten_calls_per_step"], 0),
                    *[
                        fmt(pr["counted_ops"].get(n), 0)
                        for n in (
                            "aten::_to_copy",
                            "aten::clone",
                            "aten::copy_",
                            "aten::batch_norm",
                            "aten::layer_norm",
                        )
                    ],
                ]
            )
        out.append(
            markdown_table(
                [
                    "setting",
                    "step ms",
                    "host ms",
                    "GPU ms/step",
                    "GPU busy %",
                    "GPU ops/step",
                    "launches/step",
                    "aten calls/step",
                    "_to_copy",
                    "clone",
                    "copy_",
                    "batch_norm",
                    "layer_norm",
                ],
                rows,
                align="l" + "r" * 12,
            )
        )
        out.append("")
        cats = sorted({c for s in settings for c in s["prof"]["categories_ms"]})
        rows = [
            [c, *[fmt(s["prof"]["categories_ms"].get(c, 0.0), 2) for s in settings]] for c in cats
        ]
        out.append(
            markdown_table(
                [f"self {unit} ms/step by category", *[s["label"] for s in settings]], rows
            )
        )
        out.append("")
        off = settings[0]["prof"]["ops"]
        for s in settings[1:]:
            on = s["prof"]["ops"]
            key = "self_device_ms" if cuda else "self_cpu_ms"
            deltas = []
            for name in set(off) | set(on):
                a, b = off.get(name, {}), on.get(name, {})
                deltas.append((b.get(key, 0.0) - a.get(key, 0.0), name, a, b))
            deltas.sort(reverse=True)
            rows = [
                [
                    n[:70],
                    fmt(a.get("calls", 0.0), 0),
                    fmt(b.get("calls", 0.0), 0),
                    fmt(a.get(key, 0.0), 3),
                    fmt(b.get(key, 0.0), 3),
                    fmt(d, 3),
                ]
                for d, n, a, b in deltas[: run.args["profile_top"]]
            ]
            out.append(f"Ops that grew most, `{s['label']}` vs `off` (self {unit} ms per step):")
            out.append("")
            out.append(
                markdown_table(
                    [
                        "op",
                        "calls off",
                        f"calls {s['label']}",
                        "ms off",
                        f"ms {s['label']}",
                        "Δ ms",
                    ],
                    rows,
                )
            )
            out.append("")
    return "\n".join(out)


def _print_profile_console(p: dict[str, Any], cuda: bool, top: int) -> None:
    key = "self_device_ms" if cuda else "self_cpu_ms"
    print(
        f"\n=== profile {p['family']} ({p['backbone']}) {_size_label(p['size'])} "
        f"batch {p['batch']} ==="
    )
    for s in p["settings"]:
        pr = s["prof"]
        print(
            f"-- {s['label']}: step {s['step_ms']:.2f} ms, host {s['host_ms']:.2f} ms, "
            f"GPU {fmt(pr['gpu_ms_per_step'], 2)} ms/step, "
            f"device ops/step {fmt(pr['device_ops_per_step'], 0)}, "
            f"launches/step {fmt(pr['launches_per_step'], 0)}, "
            f"aten calls/step {pr['aten_calls_per_step']:.0f}"
        )
        ops = sorted(pr["ops"].items(), key=lambda kv: -kv[1][key])[:top]
        print(
            f"   {'op (per step)':60s} {'calls':>7s} {'self_device_ms':>14s} {'self_cpu_ms':>12s}"
        )
        for name, o in ops:
            dev_ms = f"{o['self_device_ms']:14.3f}" if cuda else f"{'–':>14s}"
            print(f"   {name[:60]:60s} {o['calls']:7.0f} {dev_ms} {o['self_cpu_ms']:12.3f}")


# ============================================================================ CLI
def _csv(s: str) -> list[str]:
    return [t.strip() for t in s.split(",") if t.strip()]


def _int_csv(s: str) -> list[int]:
    try:
        vals = [int(t) for t in _csv(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return vals


def _segments_csv(s: str) -> list[str]:
    toks = _csv(s)
    for t in toks:
        if t not in ("off", "max", "default", "proposed", "none") and not (
            t.isdigit() and int(t) > 0
        ):
            raise argparse.ArgumentTypeError(
                f"segments tokens are off, max, default, proposed or integers > 0; got {t!r}"
            )
    if not toks:
        raise argparse.ArgumentTypeError("no segments given")
    return toks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/gradient_checkpointing.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("what to run")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--families", default="all", help="'all' or a comma list of families")
    g.add_argument(
        "--backbone",
        action="append",
        default=[],
        metavar="FAMILY=NAME",
        help="override a family's representative (repeatable)",
    )
    g.add_argument("--sizes", type=_int_csv, default=[28, 224], help="2D input sizes (square)")
    g.add_argument("--sizes-3d", type=_int_csv, default=[28, 64], help="3D input sizes (cubes)")
    g.add_argument("--batch-sizes", type=_int_csv, default=[32, 64, 128], help="2D batch sizes")
    g.add_argument("--batch-sizes-3d", type=_int_csv, default=[8, 16, 32], help="3D batch sizes")
    g.add_argument(
        "--segments",
        type=_segments_csv,
        default=["off", "1", "2", "4", "8"],
        help="tokens: off, integers (skipped above a family's max_segments), max, default",
    )
    g.add_argument(
        "--dtype",
        choices=["bf16", "fp32"],
        default=None,
        help="bf16 autocast (CUDA default) or fp32 (CPU: always fp32)",
    )
    g.add_argument("--in-chans", type=int, default=3)
    g.add_argument(
        "--channels-last", action="store_true", help="2D models and inputs in channels_last"
    )
    g.add_argument("--cudnn-benchmark", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--rule-metric",
        choices=["auto", "act", "saved", "peak"],
        default="auto",
        help="memory measure for the rule; auto = act on CUDA, saved on CPU",
    )
    g.add_argument(
        "--rule-batch", type=int, default=None, help="2D reference batch (default: middle)"
    )
    g.add_argument(
        "--rule-batch-3d", type=int, default=None, help="3D reference batch (default: middle)"
    )
    g.add_argument(
        "--no-repeat-off",
        dest="repeat_off",
        action="store_false",
        help="skip re-measuring 'off' after each family's reference rows (noise estimate)",
    )
    g.add_argument(
        "--no-forward-timing",
        dest="forward_timing",
        action="store_false",
        help="skip timing forward+loss alone for 'off' rows (the 1-extra-fwd column)",
    )

    g = p.add_argument_group("timing and limits")
    g.add_argument("--warmup", type=int, default=2)
    g.add_argument("--repeats", type=int, default=10)
    g.add_argument(
        "--max-config-seconds",
        type=float,
        default=3.0,
        help="stop timing a configuration after this many seconds (>= 3 samples)",
    )
    g.add_argument(
        "--time-limit",
        type=float,
        default=480.0,
        help="start no new configuration after this many seconds; the rest is 'skipped'",
    )
    g.add_argument(
        "--watchdog-grace",
        type=float,
        default=60.0,
        help="hard-exit this many seconds after the time limit (0: off); results are "
        "flushed after every configuration",
    )
    g.add_argument("--mem-cap-gib", type=float, default=20.0)
    g.add_argument(
        "--no-max-batch",
        dest="max_batch",
        action="store_false",
        help="skip the largest-batch search",
    )
    g.add_argument("--max-batch-limit", type=int, default=4096)
    g.add_argument(
        "--max-batch-families",
        default="all",
        help="'all' or a comma list of families for the largest-batch search",
    )
    g.add_argument("--max-batch-seconds", type=float, default=15.0, help="per search")

    g = p.add_argument_group("checkpoint options (script-side runner; default = the library path)")
    g.add_argument(
        "--preserve-rng", dest="preserve_rng", action=argparse.BooleanOptionalAction, default=True
    )
    g.add_argument("--determinism-check", choices=["default", "none"], default="default")
    g.add_argument(
        "--norm-stats",
        choices=["freeze", "restore", "update"],
        default="freeze",
        help="BatchNorm running stats during recomputation: freeze (library: momentum=0, "
        "count detached), restore (the old library: clone + copy back), update (unprotected)",
    )
    g.add_argument(
        "--skip-last",
        action="store_true",
        help="keep the last group un-checkpointed in every row (the library's keep_last=True)",
    )

    g = p.add_argument_group("diagnosis")
    g.add_argument(
        "--profile",
        type=_csv,
        default=None,
        metavar="FAMILY[,FAMILY]",
        help="profile mode: torch.profiler on steps off vs. checkpointed (no sweep)",
    )
    g.add_argument("--profile-segments", type=_segments_csv, default=["default", "max"])
    g.add_argument("--profile-steps", type=int, default=2)
    g.add_argument("--profile-top", type=int, default=12)
    g.add_argument("--trace-dir", type=Path, default=None, help="also export Chrome traces here")
    g.add_argument(
        "--ablate",
        action="store_true",
        help="time checkpoint-option variants at each family's reference config",
    )
    g.add_argument("--ablate-segments", type=_segments_csv, default=["default", "max"])
    g.add_argument(
        "--keep-last-segments",
        type=_segments_csv,
        default=["2", "4", "8"],
        help="at the reference config also measure these segments with keep_last=True "
        "(the last group un-checkpointed); 'none' for no such rows",
    )
    g.add_argument(
        "--propose-defaults",
        type=Path,
        default=None,
        metavar="JSON",
        help="print the FAMILY_DEFAULTS table of med_core/backbones/_checkpointing.py that "
        "a results JSON proposes, and exit (no measurement)",
    )
    g.add_argument("--probe-worker", default=None, help=argparse.SUPPRESS)

    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"Markdown report (default {DEFAULT_OUT}; profile mode {DEFAULT_PROFILE_OUT})",
    )
    g.add_argument(
        "--plot", type=Path, default=None, help="PNG plot (default: the report's path with .png)"
    )
    g.add_argument("--no-plot", dest="make_plot", action="store_false")
    g.add_argument("--json", type=Path, default=None, help="raw results as JSON")
    return p


def _plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(family, representative) pairs: ``REPRESENTATIVES`` order, then any other registered
    family (its first name); ``--backbone FAMILY=NAME`` overrides; ``--families`` filters."""
    registered: dict[str, list[str]] = {}
    for name in list_backbones():
        registered.setdefault(get_backbone_cfg(name).family, []).append(name)
    registered.pop("timm", None)
    families: dict[str, str] = {}
    for fam, rep in REPRESENTATIVES.items():
        if fam in registered:
            families[fam] = rep if rep in registered[fam] else registered[fam][0]
    for fam, names in registered.items():
        families.setdefault(fam, names[0])
    for ov in args.backbone:
        fam, sep, name = ov.partition("=")
        if not sep or not name:
            raise SystemExit(f"--backbone expects FAMILY=NAME, got {ov!r}")
        got = get_backbone_cfg(name).family
        if got != fam:
            raise SystemExit(f"--backbone {ov}: {name} belongs to family {got!r}, not {fam!r}")
        families[fam] = name
    wanted = list(families) if args.families == "all" else _csv(args.families)
    unknown = [f for f in wanted if f not in families]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {', '.join(families)}")
    return [(f, families[f]) for f in families if f in wanted]


def _grid_tier(
    tier: str,
    ref_size: tuple[int, ...],
    ref_batch: int,
    sizes: list[tuple[int, ...]],
    batches: list[int],
) -> list[tuple[tuple[int, ...], int]]:
    """(size, batch) pairs of one tier of the grid after the reference configuration."""
    other_sizes = [s for s in sorted(sizes) if s != ref_size]
    other_batches = [b for b in sorted(batches) if b != ref_batch]
    if tier == "a":
        return [(s, ref_batch) for s in other_sizes]
    if tier == "b":
        return [(ref_size, b) for b in other_batches]
    return [(s, b) for s in other_sizes for b in other_batches]


def _ref(values: list[int], explicit: int | None) -> int:
    """The reference batch: ``explicit`` or the middle value (lower middle for even counts)."""
    if explicit is not None:
        return explicit
    vs = sorted(values)
    return vs[(len(vs) - 1) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.probe_worker is not None:
        return _probe_worker_main(args.probe_worker)
    if args.propose_defaults is not None:
        print(propose_defaults(json.loads(args.propose_defaults.read_text(encoding="utf-8"))))
        return 0
    plan = _plan(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    if device.type == "cuda" and device.index is None:  # torch.cuda.* wants an index
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"unsupported device {args.device!r}")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    notes: list[str] = []
    if not cuda and dtype == "bf16":
        notes.append("--dtype bf16 ignored on CPU: the CPU run uses fp32 (no autocast).")
        dtype = "fp32"
    args.amp_dtype = torch.bfloat16 if dtype == "bf16" else None
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    rule_metric = args.rule_metric if args.rule_metric != "auto" else ("act" if cuda else "saved")
    if not cuda and rule_metric in ("act", "peak"):
        notes.append(
            f"--rule-metric {rule_metric} is unavailable on CPU; using saved-for-backward bytes."
        )
        rule_metric = "saved"
    options = CkptOptions(
        preserve_rng_state=args.preserve_rng,
        determinism_check=args.determinism_check,
        norm_stats=args.norm_stats,
        skip_last=args.skip_last,
    )
    profile_mode = args.profile is not None
    out = args.out or Path(DEFAULT_PROFILE_OUT if profile_mode else DEFAULT_OUT)
    plot = (args.plot or out.with_suffix(".png")) if (args.make_plot and not profile_mode) else None

    limited = args.time_limit is not None and args.time_limit > 0
    deadline = Deadline(args.time_limit if limited else None)
    if limited and args.watchdog_grace > 0:
        faulthandler.dump_traceback_later(args.time_limit + args.watchdog_grace, exit=True)
    command = command_line(__file__, argv)
    log(f"$ {command}")
    env = environment(device)
    arg_record = {
        k: (str(v) if isinstance(v, (Path, torch.dtype)) else v) for k, v in vars(args).items()
    }
    arg_record["variant"] = options.label()
    run = Run(
        command=command,
        env=env,
        args=arg_record,
        device=device.type,
        dtype=dtype,
        rule_metric=rule_metric,
        notes=notes,
    )
    if not options.uses_library:
        run.notes.append(
            f"Checkpoint variant `{options.label()}` (script-side runner), not the library path."
        )
    plot_rel: str | None = None
    if plot is not None:
        try:
            plot_rel = str(Path(plot).resolve().relative_to(out.resolve().parent))
        except ValueError:
            plot_rel = str(Path(plot).resolve())

    def flush(final: bool = False) -> None:
        run.elapsed_s = deadline.elapsed()
        add_relative(run.results, rule_metric)
        add_relative(run.ablation, rule_metric)
        if final and plot is not None and run.summary:
            err = write_plot(run, plot)
            if err:
                run.notes.append(err)
        md = render_markdown(run, plot_rel if (plot is not None and Path(plot).exists()) else None)
        write_text(out, md + "\n")
        if args.json:
            write_json(args.json, run.to_json())

    sweep = Sweep(args, run, device, deadline)

    def ref_of(name: str) -> tuple[tuple[int, ...], int, list[tuple[int, ...]], list[int]]:
        cfg = get_backbone_cfg(name)
        if cfg.spatial_dims == 3:
            sizes: list[tuple[int, ...]] = [(s, s, s) for s in args.sizes_3d]
            batches = list(args.batch_sizes_3d)
            rb = _ref(batches, args.rule_batch_3d)
        else:
            sizes = [(s, s) for s in args.sizes]
            batches = list(args.batch_sizes)
            rb = _ref(batches, args.rule_batch)
        return max(sizes), rb, sizes, batches

    def record(row: dict[str, Any], target: list[dict[str, Any]]) -> None:
        target.append(row)
        if row["status"] == "ok":
            add_relative(target, rule_metric)
            log(
                f"[{deadline.elapsed():6.1f}s] {row['family']:15s} {row['backbone']:18s} "
                f"{_size_label(row['size']):>5s} b{row['batch']:<4d} "
                f"seg={row['segments_label']:<16s} "
                f"{row['variant']:>10s}: {row['step_ms']:8.2f} ms (host {row['host_ms']:.2f}) "
                f"saved {fmt(row.get('saved_mib'), 1)} MiB act {fmt(row.get('act_mib'), 0)} MiB "
                f"peak {fmt(row.get('peak_mib'), 0)} MiB  "
                f"mem saved {fmt(row.get('mem_saved_pct'), 0)} % "
                f"overhead {fmt(row.get('overhead_pct'), 0)} %"
            )
        elif row["status"] != "skipped":
            log(
                f"[{deadline.elapsed():6.1f}s] {row['family']} {row['backbone']} "
                f"{_size_label(row['size'])} "
                f"b{row['batch']} seg={row['segments_label']}: {row['status']} {row['reason']}"
            )
        flush()

    fam_plan = []
    try:
        if profile_mode:
            _run_profile_mode(args, run, sweep, plan, ref_of, record, flush, cuda)
        else:
            # phase 1: the reference configuration of every family (sets the defaults)
            for fam, name in plan:
                size, rb, _, _ = ref_of(name)
                fam_plan.append((fam, name, size, rb))
                for k in _resolve_segments(args.segments, get_backbone_cfg(name)):
                    record(
                        sweep.measure(
                            fam,
                            name,
                            size,
                            rb,
                            k,
                            options,
                            phase="ref",
                            time_forward=args.forward_timing,
                        ),
                        run.results,
                    )
                keep_last = dataclasses.replace(options, skip_last=True)
                for k in _resolve_segments(args.keep_last_segments, get_backbone_cfg(name)):
                    if k >= 2:  # keep_last needs two groups
                        row = sweep.measure(fam, name, size, rb, k, keep_last, phase="ref")
                        record(row, run.results)
                if args.repeat_off:  # the same "off" step again: the noise floor of overhead %
                    row = sweep.measure(fam, name, size, rb, 0, options, phase="repeat")
                    record(row, run.results)
            summarize(run, fam_plan)
            flush()
            # optional: ablation at the reference configuration
            if args.ablate:
                _run_ablation(args, run, sweep, plan, ref_of, record)
            # phase 2: largest batch under the cap (CUDA only)
            if args.max_batch and cuda:
                mb_fams = (
                    None if args.max_batch_families == "all" else _csv(args.max_batch_families)
                )
                for fam, name in plan:
                    if mb_fams is not None and fam not in mb_fams:
                        continue
                    size, rb, _, _ = ref_of(name)
                    s = next(e for e in run.summary if e["backbone"] == name)
                    cfg = get_backbone_cfg(name)
                    k = int(s["proposed"] or cfg.default_segments or 0)
                    kl = bool(s["proposed_keep_last"]) if s["proposed"] else cfg.default_keep_last
                    for seg in (0, k):
                        rec = sweep.max_batch(fam, name, size, seg, rb, keep_last=kl and seg > 0)
                        rec["segments_source"] = (
                            "off"
                            if seg == 0
                            else "proposed"
                            if s["proposed"]
                            else "library default"
                        )
                        run.max_batch.append(rec)
                        flush()
            elif args.max_batch and not cuda:
                run.notes.append(
                    "Largest-batch search skipped: it needs CUDA (OOM under a memory cap)."
                )
            # phase 3: the rest of the grid, in tiers so that a time limit cuts the least
            # useful rows: (a) the other sizes (28 px: the MedMNIST case) at the reference
            # batch, (b) the other batches at the reference size, (c) everything else
            for tier in ("a", "b", "c"):
                for fam, name in plan:
                    for size, b in _grid_tier(tier, *ref_of(name)):
                        for k in _resolve_segments(args.segments, get_backbone_cfg(name)):
                            row = sweep.measure(
                                fam,
                                name,
                                size,
                                b,
                                k,
                                options,
                                phase="grid",
                                time_forward=args.forward_timing,
                            )
                            record(row, run.results)
            summarize(run, fam_plan)
        skipped = sum(r["status"] == "skipped" for r in run.results + run.ablation + run.max_batch)
        if sweep.fatal:
            run.status = f"aborted: device error ({sweep.fatal}); {skipped} configurations skipped"
        elif skipped:
            run.status = (
                f"stopped at the time limit ({args.time_limit:g} s): "
                f"{skipped} configurations skipped"
            )
        else:
            run.status = "complete"
    except KeyboardInterrupt:
        run.status = "interrupted"
        raise
    except BaseException as exc:  # a bug or a fatal error: keep what was measured, re-raise
        run.status = f"failed: {_first_line(exc)}"
        raise
    finally:
        sweep.drop_bench()
        if fam_plan:
            summarize(run, fam_plan)
        flush(final=True)
        faulthandler.cancel_dump_traceback_later()
    _print_console_summary(run, out, plot, args.json)
    return 0


def _run_ablation(
    args: argparse.Namespace,
    run: Run,
    sweep: Sweep,
    plan: list[tuple[str, str]],
    ref_of: Callable[[str], Any],
    record: Callable[..., None],
) -> None:
    for fam, name in plan:
        size, rb, _, _ = ref_of(name)
        cfg = get_backbone_cfg(name)
        chosen = next((s["proposed"] for s in run.summary if s["backbone"] == name), None)
        record(sweep.measure(fam, name, size, rb, 0, CkptOptions(), phase="ablation"), run.ablation)
        for k in _resolve_segments(args.ablate_segments, cfg, chosen):
            if k == 0:
                continue
            # the library path again at the end: the spread between its two runs is the
            # noise floor of the "Δ vs library" column
            for label, opt in [*ABLATIONS.items(), ("library (repeat)", CkptOptions())]:
                row = sweep.measure(fam, name, size, rb, k, opt, phase="ablation")
                row["variant"] = label
                record(row, run.ablation)


def _profile_setting(
    args: argparse.Namespace,
    sweep: Sweep,
    entry: dict[str, Any],
    fam: str,
    name: str,
    size: tuple[int, ...],
    batch: int,
    segments: int,
) -> None:
    """Times and profiles one checkpoint setting; appends to ``entry`` (errors recorded)."""
    failed: BaseException | None = None
    try:
        bench = sweep.bench(fam, name, size)
        features = bench.configure(segments, CkptOptions())
        x, y = bench.batch(batch)
        timing = time_steps(
            partial(bench.step, features, x, y),
            sweep.device,
            warmup=args.warmup,
            repeats=args.repeats,
            min_repeats=min(3, args.repeats),
            max_seconds=args.max_config_seconds,
            deadline=sweep.deadline,
        )
        trace = None
        if args.trace_dir:
            trace = args.trace_dir / f"{name}_{size[0]}_b{batch}_seg{segments}.json"
        prof = profile_steps(bench, features, x, y, args.profile_steps, trace)
        entry["settings"].append(
            {
                "segments": segments,
                "label": "off" if segments == 0 else f"seg {segments}",
                "step_ms": timing.median_ms,
                "host_ms": timing.host_ms,
                "prof": prof,
            }
        )
    except Exception as exc:  # recorded in the report; the other settings still run
        failed = exc
        oom = is_oom(exc)
        entry.setdefault("errors", []).append(
            f"seg {segments}: {'OOM: ' if oom else ''}{_first_line(exc)}"
        )
        if not oom:
            log("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            if is_fatal_device_error(exc):
                sweep.fatal = _first_line(exc)
    finally:
        if sweep._bench is not None:
            sweep._bench.optimizer.zero_grad(set_to_none=True)
    if failed is not None:
        del failed
        release_device_memory(sweep.device, collect=True)
    else:
        release_device_memory(sweep.device)


def _run_profile_mode(
    args: argparse.Namespace,
    run: Run,
    sweep: Sweep,
    plan: list[tuple[str, str]],
    ref_of: Callable[[str], Any],
    record: Callable[..., None],
    flush: Callable[..., None],
    cuda: bool,
) -> None:
    fams = dict(plan)
    unknown = [f for f in args.profile if f not in fams]
    if unknown:
        raise SystemExit(
            f"--profile: unknown or unselected families {unknown}; known: {', '.join(fams)}"
        )
    for fam in args.profile:
        name = fams[fam]
        cfg = get_backbone_cfg(name)
        _, rb, sizes, _ = ref_of(name)
        for size in sorted(sizes):
            entry: dict[str, Any] = {
                "family": fam,
                "backbone": name,
                "size": list(size),
                "batch": rb,
                "settings": [],
            }
            run.profile.append(entry)
            if sweep.deadline.expired() or sweep.fatal:
                entry["reason"] = "time limit" if not sweep.fatal else sweep.fatal
                continue
            ks = [0] + [k for k in _resolve_segments(args.profile_segments, cfg) if k > 0]
            for k in ks:
                if sweep.deadline.expired() or sweep.fatal:
                    break
                _profile_setting(args, sweep, entry, fam, name, size, rb, k)
            _print_profile_console(entry, cuda, args.profile_top)
            flush()
    if args.ablate:
        _run_ablation(args, run, sweep, [(f, fams[f]) for f in args.profile], ref_of, record)


def _print_console_summary(run: Run, out: Path, plot: Path | None, json_path: Path | None) -> None:
    print(f"\nstatus: {run.status}; {run.elapsed_s:.0f} s")
    if run.summary:
        rows = [
            [
                s["family"],
                s["backbone"],
                f"{_size_label(s['ref_size'])} b{s['ref_batch']}",
                s["library_default"],
                s["proposed_label"] if s["meets_rule"] else "none",
                fmt(s["mem_saved_pct"], 0),
                fmt(s["overhead_pct"], 0),
                fmt(s["one_fwd_pct"], 0),
                fmt(s.get("noise_pct"), 1),
                "" if s["meets_rule"] else s["why_not"][:90],
            ]
            for s in run.summary
        ]
        print(
            markdown_table(
                [
                    "family",
                    "backbone",
                    "ref",
                    "lib default",
                    "proposed",
                    "saved %",
                    "overhead %",
                    "1 fwd %",
                    "noise %",
                    "note",
                ],
                rows,
                align="lllrrrrrrl",
            )
        )
    if run.max_batch:
        rows = [
            [
                m["family"],
                _size_label(m["size"]),
                m["segments"] or "off",
                m.get("max_batch"),
                m.get("first_fail"),
                m["status"],
                m.get("reason", ""),
            ]
            for m in run.max_batch
        ]
        print(
            markdown_table(
                ["family", "size", "segments", "max batch", "fails at", "status", "note"],
                rows,
                align="llrrrll",
            )
        )
    if run.ablation:
        print(_ablation_table(run))
    bad = [r for r in run.results + run.ablation if r["status"] in ("OOM", "error")]
    if bad:
        print(f"{len(bad)} configurations OOM/error (see report).")
    print(
        f"report: {out}"
        + (f"; plot: {plot}" if plot else "")
        + (f"; json: {json_path}" if json_path else "")
    )


if __name__ == "__main__":
    sys.exit(main())
