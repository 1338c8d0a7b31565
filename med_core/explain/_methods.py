"""One member, one method: torchcam for the CAMs, shap for SHAP, and the random baseline.

Every function returns maps at the input's spatial size ``(B, *S)`` (float32, on the
images' device): CAMs and the random map min-max normalised to ``[0, 1]`` per image,
SHAP values summed over channels (signed, in logit units).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from med_core.backbones import Backbone
from med_core.explain._checks import ExplainError
from med_core.explain._checks import cam_layer

__all__ = ["cam_maps", "random_maps", "shap_maps", "upsample"]

_TORCHCAM = {  # method name -> torchcam.methods class name
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMpp",
    "scorecam": "ScoreCAM",
    "layercam": "LayerCAM",
}


def _import(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(
            f"{name} is needed for explanations: pip install 'medauto[explain]' ({e})"
        ) from e


def upsample(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``(B, *grid)`` → ``(B, *size)``, bilinear (2D) or trilinear (3D)."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(maps[:, None].float(), size=size, mode=mode, align_corners=False)[:, 0]


def _top_channels(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Keeps, per image, the ``k`` channels of largest spatial variance ("Faster Score-CAM")."""

    def select(grid: torch.Tensor) -> torch.Tensor:
        if grid.shape[1] <= k:
            return grid
        idx = grid.flatten(2).var(-1).topk(k, dim=1).indices
        idx = idx[(...,) + (None,) * (grid.ndim - 2)].expand(-1, -1, *grid.shape[2:])
        return grid.gather(1, idx)

    return select


def _check_grid(bb: Backbone, method: str, grid: tuple[int, ...], size: tuple[int, ...]) -> None:
    if math.prod(grid) < 2:
        raise ExplainError(
            f"backbone {bb.name!r} has a {'x'.join(map(str, grid))} feature map at input size "
            f"{'x'.join(map(str, size))}: {method!r} has no spatial resolution there; use "
            "method='shap'"
        )


def cam_maps(
    member: nn.Module,
    images: torch.Tensor,
    method: str,
    targets: torch.Tensor,
    *,
    batch_size: int = 32,
    max_channels: int | None = None,
    layer: int | None = None,
) -> torch.Tensor:
    """CAMs of one classifier for per-image ``targets`` through torchcam.

    The target layer and the layout of its output come from the backbone
    (``cam_target_layer``, or ``units()[layer]``: :func:`cam_layer`; ``cam_grid``).
    ``max_channels`` (Score-CAM only) keeps the ``k`` highest-variance channels of each
    image: ``k`` masked forward passes instead of one per channel.
    """
    methods = _import("torchcam.methods")
    bb: Backbone = member.backbone  # type: ignore[assignment]
    reshape: Callable[[torch.Tensor], torch.Tensor] = bb.cam_grid
    kwargs: dict[str, Any] = {}
    if method == "scorecam":
        kwargs["batch_size"] = batch_size
        if max_channels is not None:
            select = _top_channels(max_channels)
            reshape = lambda out: select(bb.cam_grid(out))  # noqa: E731
    cls = getattr(methods, _TORCHCAM[method])
    size = tuple(images.shape[2:])
    with cls(member, target_layer=cam_layer(member, layer), input_shape=tuple(images.shape[1:]),
             reshape_transform=reshape, **kwargs) as extractor:  # fmt: skip
        if method == "scorecam":
            with torch.no_grad():
                scores = member(images)
        else:
            with torch.enable_grad():
                scores = member(images.detach().requires_grad_(True))
        cam = extractor(targets.tolist(), scores)[0]
    _check_grid(bb, method, tuple(cam.shape[1:]), size)
    cam = torch.nan_to_num(cam.detach().float(), nan=0.0)
    return upsample(cam, size).clamp_(0.0, 1.0)


def random_maps(member: nn.Module, images: torch.Tensor, *, seed: int = 0,
                layer: int | None = None) -> torch.Tensor:
    """Uniform random maps at the CAM grid (of ``layer``: :func:`cam_layer`), upsampled like
    a CAM (the baseline a faithful method must beat)."""
    bb: Backbone = member.backbone  # type: ignore[assignment]
    shapes: list[tuple[int, ...]] = []
    hook = cam_layer(member, layer).register_forward_hook(
        lambda _m, _i, out: shapes.append(tuple(bb.cam_grid(out).shape[2:]))
    )
    try:
        with torch.no_grad():
            member(images[:1])
    finally:
        hook.remove()
    size = tuple(images.shape[2:])
    _check_grid(bb, "random", shapes[0], size)
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand((images.shape[0], *shapes[0]), generator=g)
    return upsample(maps, size).to(images.device)


class _ClassScore(nn.Module):
    """The logit of one class as a ``(B, 1)`` output (what shap explains)."""

    def __init__(self, model: nn.Module, cls: int) -> None:
        super().__init__()
        self.model = model
        self.cls = cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.cls : self.cls + 1]  # type: ignore[no-any-return]


def shap_maps(
    member: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    background: torch.Tensor | None = None,
    samples: int = 32,
    seed: int = 0,
) -> torch.Tensor:
    """SHAP values (``shap.GradientExplainer``, expected gradients) of each image's target
    logit, summed over channels: ``(B, *S)``, signed.

    ``background`` defaults to one all-zero image (mid-grey in med_core's ``[-1, 1]``
    normalisation); pass training images for the usual data background.
    """
    shap = _import("shap")
    bg = torch.zeros((1, *images.shape[1:]), device=images.device) if background is None \
        else background.to(images.device, torch.float32)  # fmt: skip
    if tuple(bg.shape[1:]) != tuple(images.shape[1:]):
        raise ExplainError(
            f"background images have shape {tuple(bg.shape[1:])}, the images "
            f"{tuple(images.shape[1:])}"
        )
    out = torch.zeros((images.shape[0], *images.shape[2:]), dtype=torch.float32)
    for cls in sorted(set(targets.tolist())):
        idx = (targets == cls).nonzero().flatten()
        explainer = shap.GradientExplainer(_ClassScore(member, int(cls)), bg)
        values = np.asarray(explainer.shap_values(images[idx], nsamples=samples, rseed=seed))
        if values.ndim == images.ndim + 1:  # trailing output axis (one output)
            values = values[..., 0]
        out[idx] = torch.from_numpy(values.reshape(len(idx), *images.shape[1:]).sum(1)).float()
    return out.to(images.device)
