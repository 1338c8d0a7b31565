""":func:`explain`: maps of what a classifier (or an ensemble of them) looked at."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from med_core.explain._checks import CAM_METHODS
from med_core.explain._checks import ExplainError
from med_core.explain._checks import check_images
from med_core.explain._checks import check_method
from med_core.explain._checks import member_weights
from med_core.explain._checks import members_of
from med_core.explain._checks import resolve_targets
from med_core.explain._checks import weighted_mean
from med_core.explain._methods import cam_maps
from med_core.explain._methods import random_maps
from med_core.explain._methods import shap_maps

__all__ = ["EvalMode", "explain", "predict_proba"]

Models = nn.Module | Sequence[nn.Module]


class EvalMode:
    """Puts every member in eval mode and restores each module's mode on exit."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        self.modes = [(m, m.training) for member in members for m in member.modules()]

    def __enter__(self) -> None:
        for m, _ in self.modes:
            m.training = False

    def __exit__(self, *exc: object) -> None:
        for m, training in self.modes:
            m.training = training


def predict_proba(model: Models, images: torch.Tensor,
                  weights: Sequence[float] | None = None) -> torch.Tensor:
    """Softmax probabilities ``(B, K)``; for several models, the (weighted) mean over members.

    Args:
        model: A classifier or a sequence of classifiers (an ensemble).
        images: A normalised batch the model(s) accept.
        weights: One weight per member (an ensemble predictor's); ``None``: equal.

    Returns:
        Float32 probabilities on the images' device.

    Raises:
        ExplainError: as :func:`explain` does for bad models or images.
    """
    members = members_of(model)
    w = member_weights(members, weights)
    check_images(members, images)
    with EvalMode(members), torch.no_grad():
        return weighted_mean(torch.stack([torch.softmax(m(images).float(), 1)
                                          for m in members]), w)


def explain(
    model: Models,
    images: torch.Tensor,
    method: str = "gradcam",
    target: int | Sequence[int] | torch.Tensor | None = None,
    *,
    background: torch.Tensor | None = None,
    shap_samples: int = 32,
    batch_size: int = 32,
    max_channels: int | None = None,
    seed: int = 0,
    weights: Sequence[float] | None = None,
    layer: int | None = None,
) -> torch.Tensor:
    """Explanation maps of ``images`` for one class each.

    CAM methods (``gradcam``, ``gradcam++``, ``scorecam``, ``layercam``) run torchcam on
    the layer the backbone names (``Backbone.cam_target_layer``), with token sequences
    and channels-last maps turned into a grid (``Backbone.cam_grid``), and are upsampled
    to the input size and normalised to ``[0, 1]`` per image. ``shap`` returns SHAP values
    of the target logit (``shap.GradientExplainer``), summed over channels (signed).
    ``random`` is a random map at the CAM grid: the baseline of faithfulness metrics.

    For an ensemble (a sequence of models) the target defaults to the class of highest
    mean probability, and the map is the mean of the members' maps for that class; with
    ``weights`` (an ensemble predictor's member weights) both means are weighted, so the
    ensemble's own output is explained.
    Models are used in eval mode (each module's mode is restored afterwards); weights and
    their gradients are not touched.

    Args:
        model: A med_core classifier (``head(backbone(x))``, as ``build_classifier`` and
            ``medauto.model_file.load_model`` give) or a sequence of them.
        images: Normalised float batch ``(B, C, H, W)`` (2D models) or ``(B, C, D, H, W)``
            (3D models) of the channels and size the model was built for.
        method: One of :data:`~med_core.explain.METHODS`.
        target: ``None`` (each image's predicted class), a class index for all images, or
            one index per image.
        background: SHAP only: background images ``(N, C, *S)``; default one zero image.
        shap_samples: SHAP only: gradient samples per image (more: less noise, slower).
        batch_size: Score-CAM only: masked images per forward pass.
        max_channels: Score-CAM only: use the ``k`` highest-variance channels of the target
            layer per image (``k`` forward passes instead of one per channel); ``None``
            uses every channel (exact Score-CAM).
        seed: Seed of SHAP's sampling and of the random map.
        weights: One weight per member; ``None``: equal weights.
        layer: CAMs and the random map only: compute them on ``Backbone.units()[layer]``
            instead of the backbone's ``cam_target_layer`` (on ``resnet18``/``r3d_18``,
            ``-3`` is ``layer3.1``: one stage earlier, a grid twice as fine;
            ``docs/explain.md`` says when that is more faithful).

    Returns:
        Float32 maps ``(B, H, W)`` or ``(B, D, H, W)`` on the images' device.

    Raises:
        ExplainError: unknown method, a method the backbone cannot support (no spatial
            feature map, or a 1-cell one), a ``layer`` that is no unit index (or given
            with SHAP), images of the wrong dimensionality (a 3D volume
            for a 2D model or the reverse), channel count, size or values, or a bad target.
        ImportError: torchcam (CAMs) or shap (SHAP) is not installed.

    Example:
        >>> import torch
        >>> from med_core.models import build_classifier
        >>> model = build_classifier({"backbone": "resnet18"}, num_classes=2, in_chans=1,
        ...                          img_size=28)
        >>> x = torch.randn(2, 1, 28, 28)
        >>> explain(model, x, "gradcam", target=[0, 1]).shape
        torch.Size([2, 28, 28])
        >>> explain(model, torch.randn(1, 1, 16, 28, 28))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        med_core.explain._checks.ExplainError: model 'resnet18' is 2D and takes (B, C, H, W), ...
    """
    members = members_of(model)
    w = member_weights(members, weights)
    check_method(method, members, layer)
    check_images(members, images)
    if method == "scorecam" and max_channels is not None and max_channels < 1:
        raise ExplainError(f"max_channels must be None or >= 1, got {max_channels!r}")
    if method == "shap" and shap_samples < 1:
        raise ExplainError(f"shap_samples must be >= 1, got {shap_samples!r}")
    with EvalMode(members):
        with torch.no_grad():
            probs = weighted_mean(torch.stack([torch.softmax(m(images).float(), 1)
                                               for m in members]), w)
        targets = resolve_targets(probs, target)
        maps = []
        for m in members:
            if method in CAM_METHODS:
                maps.append(cam_maps(m, images, method, targets, batch_size=batch_size,
                                     max_channels=max_channels, layer=layer))  # fmt: skip
            elif method == "shap":
                maps.append(shap_maps(m, images, targets, background=background,
                                      samples=shap_samples, seed=seed))  # fmt: skip
            else:
                maps.append(random_maps(m, images, seed=seed, layer=layer))
    return weighted_mean(torch.stack(maps), w)
