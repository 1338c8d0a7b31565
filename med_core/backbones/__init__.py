"""Backbones: torchvision/timm feature extractors with gradient checkpointing.

``create_backbone(name, ...)`` returns a :class:`Backbone` whose ``forward`` maps images
``(B, C, H, W)`` or volumes ``(B, C, D, H, W)`` to pooled features ``(B, num_features)``.
Every registered name (``list_backbones()``) works with 1-channel input and with
MedMNIST-sized inputs (28 px) through an explicit small-input surgery, and supports
``enable_gradient_checkpointing(segments)``. Any timm model is available as
``"timm/<name>"``. See ``docs/backbones.md`` for the table of names.

Example:
    >>> import torch
    >>> from med_core.backbones import create_backbone, list_backbones
    >>> len(list_backbones()) >= 29
    True
    >>> net = create_backbone("mobilenet_v3_small", in_chans=1, img_size=28)
    >>> net.enable_gradient_checkpointing(2)
    >>> net(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 1024])
"""

from __future__ import annotations

from med_core.backbones import _timm as _timm  # registers the timm ViTs
from med_core.backbones import _torchvision as _torchvision  # registers the 2D families
from med_core.backbones import _video as _video  # registers the 3D families
from med_core.backbones._base import Backbone as Backbone
from med_core.backbones._checkpointing import RecomputeContext as RecomputeContext
from med_core.backbones._checkpointing import run_units as run_units
from med_core.backbones._factory import create_backbone as create_backbone
from med_core.backbones._factory import get_backbone_cfg as get_backbone_cfg
from med_core.backbones._registry import BackboneCfg as BackboneCfg
from med_core.backbones._registry import list_backbones as list_backbones
from med_core.backbones._registry import register_backbone as register_backbone

__all__ = [
    "Backbone",
    "BackboneCfg",
    "RecomputeContext",
    "create_backbone",
    "get_backbone_cfg",
    "list_backbones",
    "register_backbone",
    "run_units",
]
