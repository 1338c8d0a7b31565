"""Gradient checkpointing over a flat list of units, in contiguous groups.

A backbone exposes ``N`` checkpointable *units*: its blocks, flattened across stages,
including the downsampling/merging layers between stages (``cfg.max_segments == N``).
Checkpointing runs some contiguous groups of units under non-reentrant
``torch.utils.checkpoint.checkpoint``: only a group's input is kept for backward, and the
group is recomputed during backward. Two ways to choose the groups
(``Backbone.enable_gradient_checkpointing``):

* **A memory budget** (the default, ``memory_budget=b`` in ``(0, 1)``). On the first
  training forward pass at a new input shape the backbone measures, per unit, the bytes
  one sample saves for backward (:func:`unit_activation_bytes`, two small sub-batches of
  the real input), and :func:`plan_groups` checkpoints the *prefix* of units that holds
  more than ``b`` of those bytes, in the fewest contiguous groups of at most ``b`` each;
  the tail (at most ``b``) runs plainly. Backward frees the tail before it recomputes
  the groups one at a time, so the activations resident at any moment are about ``b`` of
  the un-checkpointed ones (plus one input tensor per group). Splitting by bytes matters:
  in a CNN the first stages hold most activation bytes but a similar share of the FLOPs
  as the later ones, so equal unit counts (the earlier default) left one recomputed group
  holding most of the activations, and the peak hardly moved
  (``docs/benchmarks/gradient_checkpointing.md``). The recomputation costs the forward
  time of the checkpointed prefix only.
* **An explicit segment count** ``segments = k`` (``1 <= k <= N``): ``k`` groups of
  near-equal unit counts, group ``i`` holding units ``[i*N//k, (i+1)*N//k)``, every group
  checkpointed; ``keep_last=True`` (``k >= 2``) runs the last group plainly, as
  :func:`torch.utils.checkpoint.checkpoint_sequential` does.

Defaults: :data:`FAMILY_DEFAULTS` holds each family's memory budget, chosen from the GPU
benchmark (``benchmarks/gradient_checkpointing.py --peak-report``); a family without an
entry uses :data:`DEFAULT_MEMORY_BUDGET`.

Normalization layers with running statistics (BatchNorm) would update them twice, once
in the forward pass and again when the group is recomputed. The recomputation (and the
measuring passes) therefore run with ``momentum = 0`` and ``num_batches_tracked``
detached (:class:`_FreezeNormStats`), so a checkpointed training step leaves the model in
exactly the state of an ordinary one, at no extra kernel per layer. The measuring passes
also run under :func:`torch.random.fork_rng`, so dropout and stochastic depth draw the same
masks as without checkpointing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from functools import partial
from types import TracebackType
from typing import Any
from typing import cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.checkpoint import create_selective_checkpoint_contexts

from med_core.torch_compat import NormWithStats

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "FAMILY_DEFAULTS",
    "Groups",
    "RecomputeContext",
    "SELECTIVE_SAVE_OPS",
    "check_memory_budget",
    "check_segments",
    "family_default",
    "plan_groups",
    "run_groups",
    "run_units",
    "segment_bounds",
    "segment_groups",
    "unit_activation_bytes",
]

#: Family → the share of activation bytes kept resident when
#: ``enable_gradient_checkpointing()`` is called without arguments (:func:`plan_groups`).
#: Chosen from ``docs/benchmarks/gradient_checkpointing_peak.json`` (one H200, bf16, 224²
#: batch 64, 64³ batch 16 for volumes; budgets 0.3/0.4/0.5) by the benchmark's rule: the
#: largest predicted gain in the largest batch under a 20 GiB cap among the budgets with
#: ≤ 30 % more step time at the same batch, else the least overhead ("miss"). The run's
#: step-time noise was 0-13 points (46 for efficientnet_v2). Regenerate with
#: ``python benchmarks/gradient_checkpointing.py --propose-defaults <peak JSONs>``.
FAMILY_DEFAULTS: dict[str, float] = {
    "convnext": 0.3,  # convnext_tiny: predicted max batch 2.54×, +28 % step time
    "efficientnet": 0.3,  # efficientnet_b2: 3.03×, +17 %
    "efficientnet_v2": 0.4,  # efficientnet_v2_s: 2.28×, +4 %
    "maxvit": 0.3,  # maxvit_t: 3.02×, +19 %
    "mobilenet": 0.4,  # mobilenet_v3_large: 2.04×, +22 %
    "regnet": 0.4,  # regnet_y_1_6gf: 2.09×, +33 % (miss)
    "resnet": 0.5,  # resnet50: 1.61×, +17 %
    "resnet3d": 0.5,  # r3d_18 (64³): 1.33×, +18 % (every budget gave the same plan)
    "swin": 0.5,  # swin_t: 1.95×, +35 % (miss)
    "swin3d": 0.3,  # swin3d_t (64³): 2.22×, +17 %
    "vit": 0.5,  # vit_small: 1.87×, +25 %
}
#: The memory budget of a family without an entry in :data:`FAMILY_DEFAULTS`.
DEFAULT_MEMORY_BUDGET = 0.4

#: A checkpointing plan: the ``[lo, hi)`` unit ranges that run checkpointed, in order;
#: units outside every range run plainly.
Groups = tuple[tuple[int, int], ...]


def family_default(family: str) -> float:
    """The default memory budget of ``family`` (:data:`FAMILY_DEFAULTS`).

    Example:
        >>> family_default("resnet"), family_default("timm")
        (0.5, 0.4)
    """
    return FAMILY_DEFAULTS.get(family, DEFAULT_MEMORY_BUDGET)


def check_memory_budget(budget: object, *, name: str) -> float:
    """Validates a memory budget for backbone ``name``.

    Raises:
        ValueError: unless ``budget`` is a real number with ``0 < budget < 1``.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < 1:
        raise ValueError(
            f"memory_budget for backbone {name!r} must be a number in (0, 1) (the share of "
            f"activation memory kept resident), got {budget!r}"
        )
    return float(budget)


def check_segments(segments: object, num_units: int, *, name: str) -> int:
    """Validates a segment count for a backbone with ``num_units`` units.

    Raises:
        ValueError: unless ``segments`` is an ``int`` in ``[1, num_units]``.
    """
    if (
        not isinstance(segments, int)
        or isinstance(segments, bool)
        or not 1 <= segments <= num_units
    ):
        raise ValueError(
            f"segments for backbone {name!r} must be an integer in [1, {num_units}] "
            f"(it has {num_units} checkpointable units), got {segments!r}"
        )
    return segments


def segment_bounds(num_units: int, segments: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` unit ranges of the ``segments`` contiguous groups.

    Example:
        >>> segment_bounds(8, 3)
        [(0, 2), (2, 5), (5, 8)]
    """
    edges = [i * num_units // segments for i in range(segments + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


class _FreezeNormStats:
    """Leaves norm running statistics untouched by a recomputation, without copying them.

    In training mode batch norm normalizes with the *batch* statistics; the running
    statistics are only updated, as ``running = (1 - momentum) * running + momentum *
    batch``. Inside this context every layer runs with ``momentum = 0.0`` (the update
    becomes ``running * 1 + batch * 0``: bitwise unchanged for finite statistics, inside
    the same kernel) and with ``num_batches_tracked`` detached (``None``, which batch norm
    skips), so the recomputation launches no extra kernel per layer. The recomputed
    activations are those of the first forward pass. ``track_running_stats = False``
    would be simpler but changes the tensors batch norm saves for backward, which
    non-reentrant checkpoint rejects.
    """

    def __init__(self, norms: Sequence[NormWithStats]) -> None:
        self._norms = norms
        self._saved: list[tuple[float | None, torch.Tensor | None]] = []

    def __enter__(self) -> None:
        self._saved = [(m.momentum, m.num_batches_tracked) for m in self._norms]
        for m in self._norms:
            m.momentum = 0.0
            m.num_batches_tracked = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for m, (momentum, tracked) in zip(self._norms, self._saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked = tracked
        self._saved = []


#: Makes the context a group's recomputation runs in, from the group's norm layers that
#: would update running statistics (called only when there are some).
RecomputeContext = Callable[[Sequence[nn.Module]], contextlib.AbstractContextManager[Any]]


#: aten ops whose outputs a *selective* checkpoint keeps (convolutions, matrix products,
#: attention kernels: the FLOPs); the norms, activations and other memory-bound ops between
#: them are recomputed (``torch.utils.checkpoint.create_selective_checkpoint_contexts``).
SELECTIVE_SAVE_OPS: tuple[str, ...] = (
    "convolution.default",
    "mm.default",
    "addmm.default",
    "bmm.default",
    "_scaled_dot_product_efficient_attention.default",
    "_scaled_dot_product_flash_attention.default",
    "_scaled_dot_product_cudnn_attention.default",
    "_scaled_dot_product_flash_attention_for_cpu.default",
)


def _save_ops() -> list[Any]:
    """The :data:`SELECTIVE_SAVE_OPS` this torch build has, as op overloads."""
    ops = []
    for name in SELECTIVE_SAVE_OPS:
        packet, _, overload = name.partition(".")
        if hasattr(torch.ops.aten, packet):
            ops.append(getattr(getattr(torch.ops.aten, packet), overload))
    return ops


@contextlib.contextmanager
def _entered(*managers: contextlib.AbstractContextManager[Any]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for m in managers:
            stack.enter_context(m)
        yield


def _contexts(
    norms: Sequence[NormWithStats], recompute: RecomputeContext, selective: bool
) -> tuple[contextlib.AbstractContextManager[Any], contextlib.AbstractContextManager[Any]]:
    frozen = recompute(norms) if norms else contextlib.nullcontext()
    if not selective:
        return contextlib.nullcontext(), frozen
    forward, again = create_selective_checkpoint_contexts(_save_ops())
    return forward, _entered(again, frozen)


def _running_norms(group: Sequence[nn.Module]) -> list[NormWithStats]:
    """The norm layers of ``group`` that would update running statistics now."""
    return [
        m
        for unit in group
        for m in unit.modules()
        if isinstance(m, NormWithStats) and m.track_running_stats and m.training
    ]


def _run_chain(group: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for unit in group:
        x = unit(x)
    return x


def _run_offloaded(group: Sequence[nn.Module], x: torch.Tensor, *, pin: bool) -> torch.Tensor:
    if not group:
        return x
    with torch.autograd.graph.save_on_cpu(pin_memory=pin):
        return _run_chain(group, x)


#: The library's recomputation context (its norms are the ``_running_norms`` of a group).
_FREEZE = cast(RecomputeContext, _FreezeNormStats)


def segment_groups(num_units: int, segments: int, *, keep_last: bool = False) -> Groups:
    """The checkpointed ranges of an explicit segment count (:func:`segment_bounds`).

    Example:
        >>> segment_groups(8, 3, keep_last=True)
        ((0, 2), (2, 5))
    """
    bounds = segment_bounds(num_units, segments)
    return tuple(bounds[:-1] if keep_last else bounds)


def plan_groups(unit_bytes: Sequence[float], memory_budget: float) -> Groups:
    """The checkpointed ranges that keep about ``memory_budget`` of the activation bytes.

    ``unit_bytes[i]`` is what unit ``i`` saves for backward. The longest tail of units
    whose bytes sum to at most ``memory_budget`` of the total runs plainly; the prefix
    before it is split, greedily from the front, into the fewest contiguous groups of at
    most that many bytes each (a unit larger than the budget is a group of its own). With
    every unit at 0 bytes nothing is checkpointed.

    Example:
        >>> plan_groups([40, 30, 10, 10, 5, 5], 0.4)  # a CNN: early units hold the bytes
        ((0, 1), (1, 2))
        >>> plan_groups([1] * 12, 0.4)  # a ViT: equal blocks
        ((0, 4), (4, 8))
    """
    total = float(sum(unit_bytes))
    if total <= 0:
        return ()
    cap = memory_budget * total
    cut, tail = len(unit_bytes), 0.0
    while cut > 0 and tail + unit_bytes[cut - 1] <= cap:
        cut -= 1
        tail += unit_bytes[cut]
    groups: list[tuple[int, int]] = []
    lo, acc = 0, 0.0
    for i in range(cut):
        if i > lo and acc + unit_bytes[i] > cap:
            groups.append((lo, i))
            lo, acc = i, 0.0
        acc += unit_bytes[i]
    if lo < cut:
        groups.append((lo, cut))
    return tuple(groups)


def _saved_bytes(units: Sequence[nn.Module], x: torch.Tensor, skip: set[int]) -> list[int]:
    """Bytes each unit saves for backward on ``x`` (each storage counted once, at the
    first unit that saves it; storages in ``skip``, the parameters and buffers, not at all)."""
    seen = set(skip)
    per_unit = [0] * len(units)
    current = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            per_unit[current] += storage.nbytes()
        # Not ``t`` itself: a tensor saved by its own grad_fn (a ReLU's output) would close
        # a reference cycle through autograd's graph that garbage collection cannot free,
        # and every measuring pass would leak its activations (seen on the H200).
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for current, unit in enumerate(units):  # noqa: B007 - read by pack()
            x = unit(x)
    return per_unit


def unit_activation_bytes(units: Sequence[nn.Module], x: torch.Tensor) -> list[float]:
    """Per-sample bytes each unit saves for backward, measured on slices of ``x``.

    Two forward passes over the units, on the first 2 and the first 4 samples of ``x``
    (the difference removes what does not grow with the batch, such as autocast's weight
    copies); with fewer than 4 samples, one pass over all of them, divided by their count.
    The passes run with gradients enabled (that is what saves tensors), leave norm
    running statistics untouched and restore the random-number state, so a training step
    that measures first is the same step as one that does not. Call it in the context
    (autocast, device) the training step runs in.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> units = [nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)]
        >>> [int(b) for b in unit_activation_bytes(units, torch.randn(4, 8))]
        [32, 32, 0]

    (The last ``Linear`` saves its input, which ``ReLU`` already saved as its output: one
    storage, counted once.)
    """
    n = x.shape[0]
    sizes: tuple[int, ...] = (2, 4) if n >= 4 else (n,)
    skip = {t.untyped_storage().data_ptr() for u in units for t in (*u.parameters(), *u.buffers())}
    norms = _running_norms(units)
    devices = [x.device] if x.device.type != "cpu" else []
    with torch.random.fork_rng(devices=devices, device_type=x.device.type), torch.enable_grad():
        with _FreezeNormStats(norms):
            runs = [_saved_bytes(units, x[:b].detach().clone(), skip) for b in sizes]
    if len(runs) == 1:
        return [v / sizes[0] for v in runs[0]]
    small, large = runs
    step = sizes[1] - sizes[0]
    return [max(0.0, (hi - lo) / step) for lo, hi in zip(small, large, strict=True)]


def run_groups(
    units: Sequence[nn.Module],
    x: torch.Tensor,
    groups: Groups,
    *,
    selective: bool = False,
    offload: bool = False,
    recompute: RecomputeContext | None = None,
    **checkpoint_options: Any,
) -> torch.Tensor:
    """Runs ``units`` in order, the ranges in ``groups`` under checkpointing.

    The one checkpoint loop: :meth:`Backbone.forward_features
    <med_core.backbones.Backbone.forward_features>` runs it with the backbone's plan, and
    the gradient-checkpointing benchmark's ablations run it with other options.

    Args:
        units: The units, e.g. ``Backbone.units()``.
        x: The input of the first unit.
        groups: Ascending, non-overlapping ``[lo, hi)`` ranges to checkpoint
            (:func:`plan_groups`, :func:`segment_groups`); ``()`` runs everything plainly.
        selective: Inside the groups, keep the outputs of :data:`SELECTIVE_SAVE_OPS` and
            recompute only the ops between them (less saved, much less recomputed).
        offload: Keep what the plainly run units save for backward in pinned host memory
            (:func:`torch.autograd.graph.save_on_cpu`) instead of on the device: the
            device holds about one group's activations at a time, at the cost of copies.
        recompute: The context of a group's recomputation, made from the group's norm
            layers with running statistics; ``None``: the library's, which leaves them as
            one forward pass left them (see the module docstring).
        **checkpoint_options: Passed to :func:`torch.utils.checkpoint.checkpoint`, e.g.
            ``preserve_rng_state`` or ``determinism_check`` (torch's defaults otherwise).
    """
    plain = partial(_run_offloaded, pin=x.is_cuda) if offload else _run_chain
    done = 0
    for lo, hi in groups:
        x = plain(units[done:lo], x)
        group = tuple(units[lo:hi])
        x = checkpoint(
            _run_chain,
            group,
            x,
            use_reentrant=False,
            context_fn=partial(_contexts, _running_norms(group), recompute or _FREEZE, selective),
            **checkpoint_options,
        )
        done = hi
    return plain(units[done:], x)


def run_units(
    units: Sequence[nn.Module],
    x: torch.Tensor,
    segments: int,
    *,
    keep_last: bool = False,
    selective: bool = False,
    recompute: RecomputeContext | None = None,
    **checkpoint_options: Any,
) -> torch.Tensor:
    """Runs ``units`` in order; with ``segments > 0``, checkpoints the groups of an explicit
    segment count (:func:`segment_groups`) through :func:`run_groups`.

    Args:
        units: The units, e.g. ``Backbone.units()``.
        x: The input of the first unit.
        segments: ``0`` runs the units plainly; ``k > 0`` checkpoints ``k`` contiguous
            groups of near-equal unit counts (:func:`segment_bounds`).
        keep_last: Run the last group normally (it keeps its activations).
        selective: See :func:`run_groups`.
        recompute: See :func:`run_groups`.
        **checkpoint_options: See :func:`run_groups`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> units = [nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)]
        >>> run_units(units, torch.randn(3, 4), 2, keep_last=True).shape
        torch.Size([3, 2])
    """
    groups = segment_groups(len(units), segments, keep_last=keep_last) if segments > 0 else ()
    return run_groups(
        units, x, groups, selective=selective, recompute=recompute, **checkpoint_options
    )
