"""Gradient checkpointing over a flat list of units, in contiguous segments.

Definition (the contract of ``Backbone.enable_gradient_checkpointing(segments)``):

* A backbone exposes ``N`` checkpointable *units*: its blocks, flattened across stages,
  including the downsampling/merging layers between stages (``cfg.max_segments == N``).
* ``segments = k`` (``1 <= k <= N``) splits the units into ``k`` contiguous groups of
  near-equal size: group ``i`` holds units ``[i*N//k, (i+1)*N//k)``.
* **Every** group runs under non-reentrant ``torch.utils.checkpoint.checkpoint``: only
  the group's input is kept for backward, and the group is recomputed during backward.

Unlike :func:`torch.utils.checkpoint.checkpoint_sequential`, the last group is
checkpointed too. ``checkpoint_sequential`` runs its last segment normally (its
activations are needed first in backward, so it saves one recomputation), which makes
``segments=1`` a no-op and ``segments=2`` keep half of the network's activations. Here
``segments`` means exactly "k checkpointed groups", so the memory held between forward and
backward is predictable and the same formula holds for every ``k``: the stem's and the
head's saved tensors plus one input tensor per group; during backward, one group's
activations are rebuilt at a time. More segments → more saved group inputs (the saved
bytes grow with ``k``; the boundaries of ``k`` are a subset of those of ``m*k``) but a
smaller recomputation peak; ``k ≈ sqrt(N)`` balances the two for uniform units. The cost
of checkpointing every group is one extra forward pass of the last group compared with
``checkpoint_sequential``.

Normalization layers with running statistics (BatchNorm) would update them twice, once
in the forward pass and again when the group is recomputed. The recomputation therefore
runs under a context that restores the statistics afterwards, so a checkpointed training
step leaves the model in the same state as an ordinary one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from functools import partial
from types import TracebackType

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["check_segments", "default_segments", "run_units", "segment_bounds"]


def default_segments(num_units: int) -> int:
    """The default segment count for ``num_units`` units: ``round(sqrt(num_units))``, ≥ 1."""
    return max(1, math.floor(math.sqrt(num_units) + 0.5))


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


class _RestoreNormStats:
    """Restores the running statistics of norm layers on exit (used around recomputation)."""

    def __init__(self, norms: Sequence[nn.Module]) -> None:
        self._norms = norms
        self._saved: list[list[torch.Tensor]] = []

    @staticmethod
    def _stats(m: nn.Module) -> list[torch.Tensor]:
        names = ("running_mean", "running_var", "num_batches_tracked")
        return [b for b in (getattr(m, n) for n in names) if isinstance(b, torch.Tensor)]

    def __enter__(self) -> None:
        self._saved = [[b.detach().clone() for b in self._stats(m)] for m in self._norms]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with torch.no_grad():
            for m, saved in zip(self._norms, self._saved, strict=True):
                for dst, src in zip(self._stats(m), saved, strict=True):
                    dst.copy_(src)
        self._saved = []


def _contexts(
    group: Sequence[nn.Module],
) -> tuple[contextlib.AbstractContextManager[None], contextlib.AbstractContextManager[None]]:
    norms = [
        m
        for unit in group
        for m in unit.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and m.training
    ]
    recompute: contextlib.AbstractContextManager[None] = (
        _RestoreNormStats(norms) if norms else contextlib.nullcontext()
    )
    return contextlib.nullcontext(), recompute


def _run_chain(group: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for unit in group:
        x = unit(x)
    return x


def run_units(units: Sequence[nn.Module], x: torch.Tensor, segments: int) -> torch.Tensor:
    """Runs ``units`` in order; with ``segments > 0``, checkpoints every one of the groups."""
    if segments <= 0:
        return _run_chain(units, x)
    for lo, hi in segment_bounds(len(units), segments):
        group = tuple(units[lo:hi])
        x = checkpoint(
            _run_chain,
            group,
            x,
            use_reentrant=False,
            context_fn=partial(_contexts, group),
        )
    return x
