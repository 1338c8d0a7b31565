"""Faithfulness of explanation maps: deletion and insertion AUCs (torchcam's metric).

Pixels (voxels) are ranked by the map. *Deletion* replaces the highest-ranked ones with a
baseline step by step and integrates the target class probability over the deleted
fraction (lower is more faithful); *insertion* starts from the baseline and restores them
(higher is more faithful). ``insertion - deletion`` sums both up (higher is better). The
same metric runs for every method and for the random-map baseline, so they compare.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from med_core.explain._checks import ExplainError
from med_core.explain._checks import check_images
from med_core.explain._checks import member_weights
from med_core.explain._checks import members_of
from med_core.explain._checks import resolve_targets
from med_core.explain._checks import weighted_mean
from med_core.explain._explain import EvalMode
from med_core.explain._methods import _import

__all__ = ["faithfulness"]


class _MeanProba(nn.Module):
    """An ensemble as one model: the weighted mean softmax probability of its members."""

    def __init__(self, members: Sequence[nn.Module], weights: torch.Tensor) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weights = weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return weighted_mean(torch.stack([torch.softmax(m(x).float(), 1)
                                          for m in self.members]), self.weights)


class _GivenMaps:
    """Hands precomputed maps to torchcam's metric in the shape of a CAM extractor (the
    ``model`` / ``__call__`` / ``fuse_cams`` / ``_hooks_off`` protocol it calls)."""

    def __init__(self, model: nn.Module, maps: torch.Tensor) -> None:
        self.model = model
        self.maps = maps

    def __call__(self, class_idx: Any = None, scores: Any = None, normalized: bool = True,
                 **kwargs: Any) -> list[torch.Tensor]:  # fmt: skip
        return [self.maps]

    def fuse_cams(self, cams: list[torch.Tensor]) -> torch.Tensor:
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self) -> Iterator[None]:
        yield


def faithfulness(
    model: nn.Module | Sequence[nn.Module],
    images: torch.Tensor,
    maps: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    *,
    steps: int = 20,
    batch_size: int = 64,
    weights: Sequence[float] | None = None,
) -> dict[str, float]:
    """Mean deletion and insertion AUCs of ``maps`` for ``images``.

    Args:
        model: A classifier or a sequence of them (scored by their mean probability,
            weighted by ``weights``).
        images: The normalised batch the maps explain.
        maps: ``(B, *S)`` maps at the input size (from :func:`~med_core.explain.explain`).
        target: The class each map explains (``None``: the predicted class).
        steps: Perturbation steps along each curve.
        batch_size: Perturbed images per forward pass.
        weights: One weight per member (an ensemble predictor's); ``None``: equal.

    Returns:
        ``{"deletion_auc", "insertion_auc", "score"}`` with ``score = insertion -
        deletion``, all probabilities integrated over the perturbed fraction ``[0, 1]``.
        The baseline is the all-zero image (mid-grey in med_core's normalisation).

    Raises:
        ExplainError: bad model, images or target, or maps of the wrong shape.

    Example:
        >>> import torch
        >>> from med_core.explain import explain, faithfulness
        >>> from med_core.models import build_classifier
        >>> model = build_classifier({"backbone": "resnet18"}, num_classes=2, in_chans=1,
        ...                          img_size=28).eval()
        >>> x = torch.randn(2, 1, 28, 28)
        >>> sorted(faithfulness(model, x, explain(model, x), steps=4))
        ['deletion_auc', 'insertion_auc', 'score']
    """
    metrics = _import("torchcam.metrics")
    members = members_of(model)
    check_images(members, images)
    if tuple(maps.shape) != (images.shape[0], *images.shape[2:]):
        raise ExplainError(
            f"maps have shape {tuple(maps.shape)}, expected {(images.shape[0], *images.shape[2:])}"
        )
    scorer = _MeanProba(members, member_weights(members, weights))
    with EvalMode(members), torch.no_grad():
        targets = resolve_targets(scorer(images), target)
        metric = metrics.DeletionInsertionMetric(
            _GivenMaps(scorer, maps.float().to(images.device)), steps=steps, batch_size=batch_size
        )
        metric.update(images, class_idx=targets.tolist())
    out = {k: float(v) for k, v in metric.summary().items()}
    out["score"] = out["insertion_auc"] - out["deletion_auc"]
    return out
