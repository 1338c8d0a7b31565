"""``create_backbone`` and ``get_backbone_cfg``: name → validated build."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from med_core.backbones._adapt import normalize_img_size
from med_core.backbones._base import Backbone
from med_core.backbones._registry import TIMM_PREFIX
from med_core.backbones._registry import BackboneCfg
from med_core.backbones._registry import lookup
from med_core.torch_compat import BatchNormBase

_logger = logging.getLogger(__name__)

__all__ = ["create_backbone", "get_backbone_cfg"]


def _timm_name(name: str) -> str | None:
    """``"vit_x"`` for ``"timm/vit_x"``; ``None`` for registry names."""
    if not name.startswith(TIMM_PREFIX):
        return None
    model_name = name[len(TIMM_PREFIX) :]
    if not model_name or "/" in model_name or ":" in model_name:
        raise ValueError(
            f"malformed backbone name {name!r}: expected 'timm/<timm model name>' "
            "(hub paths such as 'timm/hf-hub:org/repo' are not supported: med_core never "
            "downloads)"
        )
    return model_name


def get_backbone_cfg(name: str) -> BackboneCfg:
    """The :class:`BackboneCfg` of a registered name or of ``timm/<name>``.

    Args:
        name: A name from :func:`list_backbones` or ``"timm/<timm model name>"``.

    Returns:
        The backbone's metadata (for ``timm/`` names computed from a meta-device build).

    Raises:
        UnknownBackboneError: if the name is not registered (a ``ValueError``; the message
            lists close matches).

    Example:
        >>> cfg = get_backbone_cfg("resnet50")
        >>> cfg.family, cfg.num_features, cfg.max_segments, cfg.default_memory_budget
        ('resnet', 2048, 16, 0.5)
        >>> get_backbone_cfg("r3d_18").spatial_dims
        3
    """
    if not isinstance(name, str):
        raise ValueError(f"backbone name must be a string, got {name!r}")
    model_name = _timm_name(name)
    if model_name is not None:
        from med_core.backbones._timm import timm_backbone_cfg

        return timm_backbone_cfg(model_name)
    return lookup(name).cfg


def create_backbone(
    name: str,
    *,
    pretrained: bool = False,
    in_chans: int = 3,
    img_size: int | Sequence[int] | None = None,
    **kwargs: Any,
) -> Backbone:
    """Builds a feature extractor by name.

    Args:
        name: A registered name (see :func:`list_backbones`) or ``"timm/<timm model>"``,
            which goes straight to ``timm.create_model(..., num_classes=0, in_chans=...)``.
        pretrained: Load the library's default pretrained weights from the local torch hub
            or Hugging Face cache. Nothing is downloaded; a cache miss raises at once.
        in_chans: Input channels (1 for grayscale). The input convolution is replaced; with
            pretrained weights its RGB filters are summed (1 channel) or repeated and
            rescaled (timm's rule).
        img_size: The input size the model will see: an int (square image / cube volume)
            or one size per spatial axis. Below ``cfg.min_size`` the family's small-input
            surgery is applied (``cfg.small_input``); transformers size their position
            embedding, windows and partitions from it. ``None`` means the natural size.
        **kwargs: Passed to the torchvision/timm constructor (``None`` values are dropped,
            so the library defaults apply), e.g. ``stochastic_depth_prob=0.1`` or
            ``drop_path_rate=0.1``.

    Returns:
        A :class:`Backbone` in training mode; ``forward`` maps ``(B, in_chans, *img_size)``
        to ``(B, num_features)``.

    Raises:
        UnknownBackboneError: for an unknown name (a ``ValueError`` listing close matches).
        ValueError: for a bad ``in_chans``/``img_size`` or a reserved keyword argument.
        PretrainedWeightsError: if ``pretrained`` and the weights are not cached.

    Example:
        >>> import torch
        >>> net = create_backbone("resnet18", in_chans=1, img_size=28)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 512])
        >>> create_backbone("resnet19")
        Traceback (most recent call last):
        ...
        med_core.exceptions.UnknownBackboneError: unknown backbone 'resnet19'; did you mean ...
    """
    if not isinstance(name, str):
        raise ValueError(f"backbone name must be a string, got {name!r}")
    if not isinstance(pretrained, bool):
        raise ValueError(f"pretrained must be a bool, got {pretrained!r}")
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise ValueError(f"in_chans must be an integer >= 1, got {in_chans!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model_name = _timm_name(name)
    if model_name is not None:
        from med_core.backbones._timm import create_timm_backbone

        size = normalize_img_size(img_size, 2, name=name)
        return create_timm_backbone(
            model_name, pretrained=pretrained, in_chans=in_chans, img_size=size, **kwargs
        )
    entry = lookup(name)
    size = normalize_img_size(img_size, entry.cfg.spatial_dims, name=name)
    backbone = entry.builder(pretrained=pretrained, in_chans=in_chans, img_size=size, **kwargs)
    _normalize_bn_momentum(backbone)
    return backbone


MIN_BN_MOMENTUM = 0.1


def _normalize_bn_momentum(model: torch.nn.Module) -> None:
    """Raises BatchNorm momentum to at least :data:`MIN_BN_MOMENTUM` (0.1, PyTorch's default).

    torchvision builds MobileNetV3 and MaxViT with ``momentum=0.01``, tuned for ImageNet
    schedules of hundreds of thousands of steps. A MedMNIST run is tens to thousands of
    steps: with 0.01 the running statistics stay near their initial values and eval-mode
    predictions collapse to a constant (validation AUC exactly 0.5).
    """
    changed = 0
    for m in model.modules():
        if isinstance(m, BatchNormBase) and m.momentum is not None:
            if m.momentum < MIN_BN_MOMENTUM:
                m.momentum = MIN_BN_MOMENTUM
                changed += 1
    if changed:
        _logger.debug("raised BatchNorm momentum to %s in %d layers", MIN_BN_MOMENTUM, changed)
