"""Up-front checks of :func:`med_core.explain.explain`: models, images, methods, targets.

Everything a user can get wrong is checked here, before any forward pass, and raises
:class:`ExplainError` with one line naming the model, what it expects and what it got.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from med_core.backbones import Backbone
from med_core.exceptions import MedCoreError

__all__ = [
    "CAM_METHODS",
    "METHODS",
    "ExplainError",
    "cam_layer",
    "check_images",
    "check_method",
    "expected_input",
    "members_of",
    "resolve_targets",
]

CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "scorecam", "layercam")
"""Class activation map methods (computed on the backbone's ``cam_target_layer``, or on
the unit :func:`cam_layer` picks)."""
METHODS: tuple[str, ...] = (*CAM_METHODS, "shap", "random")
"""Every method of :func:`~med_core.explain.explain`; ``"random"`` is the sanity baseline."""


class ExplainError(MedCoreError, ValueError):
    """An explanation was asked for something the model cannot give (one line: model,
    expected, got)."""


def members_of(model: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    """The classifiers to explain: one model, or the members of an ensemble.

    Raises:
        ExplainError: an empty sequence, or a member without a ``backbone`` that is a
            :class:`~med_core.backbones.Backbone` (e.g. an exported graph).
    """
    members = [model] if isinstance(model, nn.Module) else list(model)
    if not members:
        raise ExplainError("explain needs a model or a non-empty sequence of models")
    for i, m in enumerate(members):
        if not isinstance(m, nn.Module) or not isinstance(getattr(m, "backbone", None), Backbone):
            raise ExplainError(
                f"member {i} ({type(m).__name__}) is not a med_core classifier with a "
                "Backbone at .backbone; explain float models from save_model files, not "
                "exported or quantized graphs"
            )
    dims = {_backbone(m).cfg.spatial_dims for m in members}
    if len(dims) > 1:
        raise ExplainError("ensemble members mix 2D and 3D models")
    return members


def member_weights(members: Sequence[nn.Module],
                   weights: Sequence[float] | None) -> torch.Tensor:
    """Each member's share of an ensemble's mean (equal shares for ``None``), summing to 1.

    Raises:
        ExplainError: a weight count that is not one per member, or a negative, non-finite
            or all-zero weight.
    """
    if weights is None:
        return torch.full((len(members),), 1.0 / len(members))
    w = torch.as_tensor(list(weights), dtype=torch.float32)
    if w.shape != (len(members),) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) \
            or float(w.sum()) <= 0:
        raise ExplainError(f"weights must be one finite, non-negative number per member "
                           f"({len(members)}), not all zero; got {list(weights)!r}")
    return w / w.sum()


def weighted_mean(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The mean over the first dimension of ``stack`` (one entry per member), weighted."""
    w = weights.to(stack.device, stack.dtype).reshape(-1, *([1] * (stack.ndim - 1)))
    return (stack * w).sum(0)


def _backbone(member: nn.Module) -> Backbone:
    bb = member.backbone
    assert isinstance(bb, Backbone)  # members_of checked it
    return bb


def _in_chans(backbone: Backbone) -> int | None:
    for m in backbone.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            return int(m.in_channels)
    return None


def expected_input(member: nn.Module) -> tuple[int | None, tuple[int, ...]]:
    """``(channels, spatial size)`` that ``member`` was built for (``None``: unknown)."""
    bb: Backbone = member.backbone  # type: ignore[assignment]
    size = tuple(bb.img_size) if bb.img_size is not None else tuple(bb.cfg.natural_size)
    return _in_chans(bb), size


def cam_layer(member: nn.Module, layer: int | None = None) -> nn.Module:
    """The layer a CAM of ``member`` is computed on: the backbone's own choice
    (``Backbone.cam_target_layer``) or, with ``layer``, ``Backbone.units()[layer]``
    (the checkpointable blocks; on ``resnet18``/``r3d_18`` ``-3`` is ``layer3.1``, one
    stage before the default ``layer4.1``: a grid twice as fine).

    Raises:
        ExplainError: ``layer`` is not an index of the backbone's units.
    """
    bb: Backbone = member.backbone  # type: ignore[assignment]
    if layer is None:
        return bb.cam_target_layer()
    units = bb.units()
    n = len(units)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
        raise ExplainError(
            f"layer must be an index into backbone {bb.name!r}'s {n} units "
            f"({-n} to {n - 1}; None: its default layer), got {layer!r}"
        )
    return units[layer]


def check_method(method: str, members: Sequence[nn.Module], layer: int | None = None) -> None:
    """Raises :class:`ExplainError` for an unknown method, one a backbone cannot support,
    or a ``layer`` (:func:`cam_layer`) that a member has no unit at or that SHAP, which has
    no target layer, was given."""
    if method not in METHODS:
        raise ExplainError(f"unknown explanation method {method!r}; use one of {list(METHODS)}")
    if method == "shap":
        if layer is not None:
            raise ExplainError(f"method 'shap' has no target layer, got layer={layer!r}")
        return
    for m in members:
        bb: Backbone = m.backbone  # type: ignore[assignment]
        try:
            cam_layer(m, layer)
        except NotImplementedError as e:
            raise ExplainError(
                f"method {method!r} needs a spatial feature map, which backbone {bb.name!r} "
                f"does not expose ({e}); use method='shap'"
            ) from None


def _shape_text(dims: int) -> str:
    return "(B, C, H, W)" if dims == 2 else "(B, C, D, H, W)"


def check_images(members: Sequence[nn.Module], images: Any) -> None:
    """Checks type, dimensionality, channels, size and finiteness of ``images``.

    Raises:
        ExplainError: a 3D input for a 2D model or the reverse, or a wrong channel count or
            size (the message names model, expected and got), an empty batch or
            non-finite values.
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        is_tensor = isinstance(images, torch.Tensor)
        got = f"tensor of {images.dtype}" if is_tensor else type(images).__name__
        raise ExplainError(
            f"images must be a float tensor (normalised as the model was trained), got {got}"
        )
    m = members[0]
    bb: Backbone = m.backbone  # type: ignore[assignment]
    dims = bb.cfg.spatial_dims
    if images.ndim != dims + 2:
        kind = {4: "2D images", 5: "3D volumes"}.get(images.ndim, f"{images.ndim}-D tensors")
        raise ExplainError(
            f"model {bb.name!r} is {dims}D and takes {_shape_text(dims)}, got {kind} of shape "
            f"{tuple(images.shape)}; a {dims}D model cannot explain {kind}"
        )
    if images.shape[0] == 0:
        raise ExplainError("images is an empty batch")
    for member in members:
        chans, size = expected_input(member)
        name = member.backbone.name  # type: ignore[union-attr]
        if chans is not None and images.shape[1] != chans:
            raise ExplainError(
                f"model {name!r} takes {chans}-channel input, got {images.shape[1]} channels "
                f"(shape {tuple(images.shape)})"
            )
        if tuple(images.shape[2:]) != size:
            raise ExplainError(
                f"model {name!r} was built for size {'x'.join(map(str, size))}, got "
                f"{'x'.join(map(str, images.shape[2:]))}; resize the images first"
            )
    if not bool(torch.isfinite(images).all()):
        raise ExplainError("images contain NaN or infinite values")


def resolve_targets(
    probs: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None
) -> torch.Tensor:
    """One class index per image: ``target`` checked, or the top class of ``probs``.

    Args:
        probs: ``(B, K)`` probabilities (the ensemble mean).
        target: ``None`` (the predicted class), one class for all images, or one per image.

    Returns:
        ``int64 (B,)`` on the CPU.

    Raises:
        ExplainError: a class outside ``[0, K)`` or a per-image list of the wrong length.
    """
    b, k = probs.shape
    if target is None:
        return probs.argmax(1).cpu()
    if isinstance(target, bool):
        raise ExplainError(f"target must be a class index, got {target!r}")
    if isinstance(target, int):
        t = torch.full((b,), target, dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(target).to(torch.long).reshape(-1).cpu()
        except (TypeError, ValueError, RuntimeError) as e:
            raise ExplainError(f"target must be class indices, got {target!r}") from e
        if t.numel() != b:
            raise ExplainError(f"target has {t.numel()} entries for {b} images")
    if bool((t < 0).any() or (t >= k).any()):
        raise ExplainError(f"target class must be in [0, {k - 1}], got {t.tolist()}")
    return t
