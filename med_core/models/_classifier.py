"""Classifier = backbone + head (dropout + linear), built from a :class:`ModelConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from med_core.backbones import Backbone
from med_core.backbones import create_backbone
from med_core.config import ModelConfig

__all__ = ["Classifier", "build_classifier"]


class Classifier(nn.Module):
    """``head(backbone(x))``: images/volumes → logits ``(B, num_classes)``.

    Args:
        backbone: A :class:`~med_core.backbones.Backbone` (features ``(B, num_features)``).
        head: Maps features to logits; :func:`build_classifier` uses
            ``nn.Sequential(nn.Dropout(p), nn.Linear(num_features, num_classes))``.

    Attributes:
        spatial_dims: 2 for images, 3 for volumes (from ``backbone.cfg``).
    """

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def spatial_dims(self) -> int:
        """2 for ``(B, C, H, W)`` inputs, 3 for ``(B, C, D, H, W)``."""
        return self.backbone.cfg.spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch ``(B, C, H, W)`` or ``(B, C, D, H, W)``."""
        return self.head(self.backbone(x))  # type: ignore[no-any-return]


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def build_classifier(
    cfg: ModelConfig | Mapping[str, Any],
    *,
    num_classes: int,
    in_chans: int,
    img_size: int | Sequence[int] | None = None,
) -> Classifier:
    """Builds backbone + head from a model config.

    Args:
        cfg: A :class:`~med_core.config.ModelConfig`, or a plain mapping of its fields
            (validated through ``ModelConfig.from_dict``). ``cfg.backbone`` names the
            backbone, ``cfg.pretrained`` loads cached weights, ``cfg.dropout`` is the
            head's dropout and ``cfg.checkpoint_segments`` sets gradient checkpointing:
            ``None`` off, ``0`` the family's default memory budget, ``k`` k segments.
        num_classes: Output logits (for multi-label tasks: the number of labels).
        in_chans: Input channels (1 for grayscale).
        img_size: Input size the model will see (see ``create_backbone``); ``None`` means
            the backbone's natural size.

    Returns:
        A :class:`Classifier` in training mode.

    Raises:
        ConfigError: for an invalid mapping.
        UnknownBackboneError: for an unknown backbone name.
        PretrainedWeightsError: if pretrained weights are asked for but not cached.
        ValueError: for bad ``num_classes``/``in_chans``/``img_size`` or segments.

    Example:
        >>> import torch
        >>> from med_core.config import ModelConfig
        >>> cfg = ModelConfig(backbone="resnet18", dropout=0.2, checkpoint_segments=0)
        >>> model = build_classifier(cfg, num_classes=3, in_chans=1, img_size=28)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 3])
        >>> model.backbone.checkpoint_memory_budget, model.spatial_dims
        (0.5, 2)
        >>> volumes = build_classifier({"backbone": "r3d_18"}, num_classes=2, in_chans=1,
        ...                            img_size=16)
        >>> volumes.spatial_dims
        3
    """
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_dict(cfg)
    num_classes = _positive_int("num_classes", num_classes)
    backbone = create_backbone(
        cfg.backbone, pretrained=cfg.pretrained, in_chans=in_chans, img_size=img_size
    )
    if cfg.checkpoint_segments is not None:
        backbone.enable_gradient_checkpointing(cfg.checkpoint_segments or None)
    head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(backbone.num_features, num_classes))
    return Classifier(backbone, head)
