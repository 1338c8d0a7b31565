"""Gradient checkpointing over a flat list of units, in contiguous segments.

Definition (the contract of ``Backbone.enable_gradient_checkpointing(segments)``):

* A backbone exposes ``N`` checkpointable *units*: its blocks, flattened across stages,
  including the downsampling/merging layers between stages (``cfg.max_segments == N``).
* ``segments = k`` (``1 <= k <= N``) splits the units into ``k`` contiguous groups of
  near-equal size: group ``i`` holds units ``[i*N//k, (i+1)*N//k)``.
* **Every** group runs under non-reentrant ``torch.utils.checkpoint.checkpoint``: only
  the group's input is kept for backward, and the group is recomputed during backward.
* ``keep_last=True`` (keyword-only, ``segments >= 2``) leaves the last group
  un-checkpointed, as :func:`torch.utils.checkpoint.checkpoint_sequential` does: its
  activations are kept, and it is not recomputed. Backward needs them first, so
  recomputing them would not lower the peak of the backward pass, only add time.

With ``keep_last=False`` (the default for an explicit ``segments``), ``segments`` means
exactly "k checkpointed groups", so the memory held between forward and backward is the
stem's and the head's saved tensors plus one input tensor per group; during backward, one
group's activations are rebuilt at a time. More segments → more saved group inputs (the
boundaries of ``k`` are a subset of those of ``m*k``) but a smaller recomputation peak.

Defaults: :data:`FAMILY_DEFAULTS` holds the family defaults chosen from the GPU benchmark
(``benchmarks/gradient_checkpointing.py --propose-defaults``); a family without an entry
uses ``round(sqrt(units))`` groups, all checkpointed.

Normalization layers with running statistics (BatchNorm) would update them twice, once
in the forward pass and again when the group is recomputed. The recomputation therefore
runs with ``momentum = 0`` and ``num_batches_tracked`` detached (:class:`_FreezeNormStats`),
so a checkpointed training step leaves the model in exactly the state of an ordinary one,
at no extra kernel per layer (an earlier version cloned and copied back the statistics of
every layer around every recomputation: six small kernels per BatchNorm layer).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from collections.abc import Sequence
from functools import partial
from types import TracebackType
from typing import Any
from typing import cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "FAMILY_DEFAULTS",
    "RecomputeContext",
    "check_segments",
    "default_segments",
    "family_default",
    "run_units",
    "segment_bounds",
]

#: Family → ``(segments, keep_last)`` used by ``enable_gradient_checkpointing()`` without
#: arguments, chosen from ``docs/benchmarks/gradient_checkpointing.json`` (one H200, bf16,
#: 224² batch 64; 64³ batch 16 for volumes) by the benchmark's rule: ≥ 50 % of activation
#: memory saved for ≤ 35 % more step time, then the least overhead (ties within the run's
#: noise go to the larger saving). Where no setting meets the rule (marked "miss"), the
#: default is the setting with the least overhead among those saving ≥ 50 %; in those
#: families one forward pass alone is 37-43 % of a training step, so recomputing most of
#: it cannot cost less than that. Regenerate with
#: ``python benchmarks/gradient_checkpointing.py --propose-defaults <results.json>``.
FAMILY_DEFAULTS: dict[str, tuple[int, bool]] = {
    "convnext": (2, True),  # convnext_tiny: 67 % saved, +26 %
    "efficientnet": (2, True),  # efficientnet_b2: 70 % saved, +24 %
    "efficientnet_v2": (2, True),  # efficientnet_v2_s: 56 % saved, +59 % (miss)
    "maxvit": (4, True),  # maxvit_t: 85 % saved, +15 %
    "mobilenet": (2, True),  # mobilenet_v3_large: 59 % saved, +13 %
    "regnet": (4, True),  # regnet_y_1_6gf: 75 % saved, +62 % (miss)
    "resnet": (2, True),  # resnet50: 66 % saved, +37 % (miss by 2 points)
    "resnet3d": (2, True),  # r3d_18 (64³): 73 % saved, +23 %
    "swin": (8, True),  # swin_t: 87 % saved, +27 %
    "swin3d": (1, False),  # swin3d_t (64³): 99 % saved, +41 % (miss)
    "vit": (1, False),  # vit_small: 97 % saved, +40 % (miss)
}


def default_segments(num_units: int) -> int:
    """The fallback segment count for ``num_units`` units: ``round(sqrt(num_units))``, ≥ 1."""
    return max(1, math.floor(math.sqrt(num_units) + 0.5))


def family_default(family: str, num_units: int) -> tuple[int, bool]:
    """``(segments, keep_last)`` for a backbone of ``family`` with ``num_units`` units.

    Example:
        >>> family_default("vit", 12), family_default("resnet", 16)
        ((1, False), (2, True))
    """
    return FAMILY_DEFAULTS.get(family, (default_segments(num_units), False))


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

    def __init__(self, norms: Sequence[nn.modules.batchnorm._NormBase]) -> None:
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


def _contexts(
    norms: Sequence[nn.modules.batchnorm._NormBase], recompute: RecomputeContext
) -> tuple[contextlib.AbstractContextManager[Any], contextlib.AbstractContextManager[Any]]:
    return contextlib.nullcontext(), (recompute(norms) if norms else contextlib.nullcontext())


def _running_norms(group: Sequence[nn.Module]) -> list[nn.modules.batchnorm._NormBase]:
    """The norm layers of ``group`` that would update running statistics now."""
    return [
        m
        for unit in group
        for m in unit.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and m.training
    ]


def _run_chain(group: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for unit in group:
        x = unit(x)
    return x


#: The library's recomputation context (its norms are the ``_running_norms`` of a group).
_FREEZE = cast(RecomputeContext, _FreezeNormStats)


def run_units(
    units: Sequence[nn.Module],
    x: torch.Tensor,
    segments: int,
    *,
    keep_last: bool = False,
    recompute: RecomputeContext | None = None,
    **checkpoint_options: Any,
) -> torch.Tensor:
    """Runs ``units`` in order; with ``segments > 0``, checkpoints the groups.

    The one checkpoint loop: :meth:`Backbone.forward_features
    <med_core.backbones.Backbone.forward_features>` runs it with the defaults, and the
    gradient-checkpointing benchmark's ablations run it with other options.

    Args:
        units: The units, e.g. ``Backbone.units()``.
        x: The input of the first unit.
        segments: ``0`` runs the units plainly; ``k > 0`` checkpoints ``k`` contiguous
            groups (:func:`segment_bounds`).
        keep_last: Run the last group normally (it keeps its activations).
        recompute: The context of a group's recomputation, made from the group's norm
            layers with running statistics; ``None``: the library's, which leaves them as
            one forward pass left them (see the module docstring).
        **checkpoint_options: Passed to :func:`torch.utils.checkpoint.checkpoint`, e.g.
            ``preserve_rng_state`` or ``determinism_check`` (torch's defaults otherwise).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> units = [nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)]
        >>> run_units(units, torch.randn(3, 4), 2, keep_last=True).shape
        torch.Size([3, 2])
    """
    if segments <= 0:
        return _run_chain(units, x)
    bounds = segment_bounds(len(units), segments)
    for i, (lo, hi) in enumerate(bounds):
        group = tuple(units[lo:hi])
        if keep_last and i == len(bounds) - 1:
            x = _run_chain(group, x)
            continue
        x = checkpoint(
            _run_chain,
            group,
            x,
            use_reentrant=False,
            context_fn=partial(_contexts, _running_norms(group), recompute or _FREEZE),
            **checkpoint_options,
        )
    return x
