"""3D torchvision families (video models used on volumes ``(B, C, D, H, W)``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from med_core.backbones._adapt import replace_conv
from med_core.backbones._base import Backbone
from med_core.backbones._checkpointing import family_default
from med_core.backbones._registry import BackboneCfg
from med_core.backbones._registry import register_backbone
from med_core.backbones._torchvision import TorchvisionBackbone
from med_core.backbones._torchvision import _flatten_stages

__all__ = ["Swin3DBackbone", "VideoResNetBackbone"]


class VideoResNetBackbone(TorchvisionBackbone):
    """R3D / MC3 / R(2+1)D: stem = ``stem``; units = the residual blocks of layer1–4."""

    input_conv = "stem.0"

    @classmethod
    def small_input_surgery(
        cls, model: Any, img_size: tuple[int, ...] | None, small: bool, *, pretrained: bool
    ) -> None:
        if small:  # stem stride (1, 2, 2) -> (1, 1, 1): total spatial stride 16 -> 8
            model.stem[0] = replace_conv(model.stem[0], stride=1, pretrained=pretrained)

    @classmethod
    def remove_classifier(cls, model: Any) -> None:
        model.fc = nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.stem(x)  # type: ignore[no-any-return]

    def units(self) -> list[nn.Module]:
        m = self.model
        return [*m.layer1, *m.layer2, *m.layer3, *m.layer4]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.model.avgpool(x), 1)


class Swin3DBackbone(TorchvisionBackbone):
    """Video Swin (``swin3d_t``): stem = 3D patch embedding; units = the Swin blocks and the
    three patch-merging layers (which halve ``H`` and ``W`` only); head = LayerNorm +
    pooling. Features are channels-last ``(B, D, H, W, C)``; windows larger than a map
    already shrink to it inside torchvision."""

    input_conv = "patch_embed.proj"

    @classmethod
    def small_input_surgery(
        cls, model: Any, img_size: tuple[int, ...] | None, small: bool, *, pretrained: bool
    ) -> None:
        if small:  # (2, 4, 4) patches with stride (2, 2, 2), padding (0, 1, 1)
            proj = model.patch_embed.proj
            model.patch_embed.proj = replace_conv(
                proj, stride=(2, 2, 2), padding=(0, 1, 1), pretrained=pretrained
            )

    @classmethod
    def remove_classifier(cls, model: Any) -> None:
        model.head = nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.pos_drop(self.model.patch_embed(x))  # type: ignore[no-any-return]

    def units(self) -> list[nn.Module]:
        return _flatten_stages(self.model.features)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.norm(x).permute(0, 4, 1, 2, 3)
        return torch.flatten(self.model.avgpool(x), 1)

    def grid_size(self, features: torch.Tensor) -> tuple[int, ...]:
        return tuple(features.shape[1:4])

    def cam_grid(self, output: torch.Tensor) -> torch.Tensor:
        """Channels-last ``(B, D, H, W, C)`` → ``(B, C, D, H, W)``."""
        return output.permute(0, 4, 1, 2, 3)


_VIDEO: dict[str, tuple[type[TorchvisionBackbone], str, tuple[int, ...], int, int, int, str]] = {
    # name: (adapter, family, natural size, min_size, num_features, units, small-input line)
    **{
        n: (
            VideoResNetBackbone,
            "resnet3d",
            (16, 112, 112),
            32,
            512,
            8,
            "stem stride (1,2,2)→(1,1,1): total H/W stride 16→8",
        )
        for n in ("r3d_18", "mc3_18", "r2plus1d_18")
    },
    "swin3d_t": (
        Swin3DBackbone,
        "swin3d",
        (32, 224, 224),
        64,
        768,
        15,
        "patch embedding stride (2,4,4)→(2,2,2) (padding (0,1,1)): total H/W stride 32→16",
    ),
}


def _register_all() -> None:
    for name, (adapter, family, natural, min_size, nf, n_units, small) in _VIDEO.items():
        cfg = BackboneCfg(
            family=family,
            source="torchvision",
            num_features=nf,
            spatial_dims=3,
            natural_size=natural,
            min_size=min_size,
            max_segments=n_units,
            default_memory_budget=family_default(family),
            small_input=small,
        )
        builder: Callable[..., Backbone] = partial(adapter.build, name, cfg)
        register_backbone(name, cfg=cfg)(builder)


_register_all()
