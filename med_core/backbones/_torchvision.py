"""2D torchvision families: one small adapter class per family, plus their registrations.

The architectures are torchvision's own (built with ``weights=None``; pretrained weights
come from the local cache through :mod:`med_core.backbones._pretrained`). An adapter only
says where the stem, the units and the head are, and which explicit surgery a small input
gets. Order of construction in :meth:`TorchvisionBackbone.build`: cached weights are read
first (so a cache miss fails before anything is built), the torchvision model is built and
loaded, then the small-input surgery, the input-channel change and the classifier removal
are applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from med_core.backbones._adapt import crop_state_dict_tables
from med_core.backbones._adapt import fit_swin_windows
from med_core.backbones._adapt import replace_conv
from med_core.backbones._adapt import use_small_input
from med_core.backbones._base import Backbone
from med_core.backbones._checkpointing import family_default
from med_core.backbones._pretrained import torchvision_state_dict
from med_core.backbones._registry import BackboneCfg
from med_core.backbones._registry import register_backbone
from med_core.exceptions import PretrainedWeightsError

__all__ = ["TorchvisionBackbone"]

_RESERVED_KWARGS = ("weights", "num_classes", "in_chans", "img_size", "pretrained")


def _flatten_stages(modules: Any) -> list[nn.Module]:
    """Children of ``modules``, with plain ``nn.Sequential`` stages expanded to their blocks."""
    out: list[nn.Module] = []
    for m in modules:
        if type(m) is nn.Sequential:
            out.extend(m)
        else:
            out.append(m)
    return out


class TorchvisionBackbone(Backbone):
    """Shared construction path of torchvision-based adapters (see the module docstring)."""

    #: dotted path of the input convolution inside the torchvision model
    input_conv: ClassVar[str] = ""

    @classmethod
    def build(
        cls,
        name: str,
        cfg: BackboneCfg,
        *,
        pretrained: bool,
        in_chans: int,
        img_size: tuple[int, ...] | None,
        **kwargs: Any,
    ) -> Backbone:
        bad = sorted(set(kwargs) & set(_RESERVED_KWARGS))
        if bad:
            raise ValueError(
                f"create_backbone({name!r}): {bad} cannot be passed through to torchvision "
                "(backbones have no classifier; use pretrained=/in_chans=/img_size=)"
            )
        small = use_small_input(img_size, cfg.min_size)
        state = torchvision_state_dict(name) if pretrained else None
        ctor = cls.constructor_kwargs(img_size, small)
        model = cls.construct(name, **{**ctor, **kwargs})
        if state is not None:
            try:
                model.load_state_dict(cls.filter_state_dict(state, model))
            except RuntimeError as e:  # keys/shapes differ: not this architecture's file
                raise PretrainedWeightsError(
                    f"the cached weights for backbone {name!r} do not fit its architecture "
                    f"({e}); delete the file named in torch.hub.get_dir()/checkpoints and "
                    "download it again"
                ) from e
        cls.small_input_surgery(model, img_size, small, pretrained=pretrained)
        if in_chans != 3:
            conv = model.get_submodule(cls.input_conv)
            model.set_submodule(
                cls.input_conv, replace_conv(conv, in_chans=in_chans, pretrained=pretrained)
            )
        cls.remove_classifier(model)
        return cls(model, cfg, name=name, img_size=img_size, small_input=small)

    # ------------------------------------------------------------- per-family hooks
    @classmethod
    def construct(cls, name: str, **kwargs: Any) -> nn.Module:
        """The torchvision model, randomly initialised, with its classifier."""
        from torchvision.models import get_model

        return get_model(name, weights=None, **kwargs)

    @classmethod
    def constructor_kwargs(cls, img_size: tuple[int, ...] | None, small: bool) -> dict[str, Any]:
        return {}

    @classmethod
    def filter_state_dict(
        cls, state: dict[str, torch.Tensor], model: Any
    ) -> dict[str, torch.Tensor]:
        return state

    @classmethod
    def small_input_surgery(
        cls, model: Any, img_size: tuple[int, ...] | None, small: bool, *, pretrained: bool
    ) -> None:
        if small:
            conv = model.get_submodule(cls.input_conv)
            model.set_submodule(cls.input_conv, replace_conv(conv, stride=1, pretrained=pretrained))

    @classmethod
    def remove_classifier(cls, model: Any) -> None:
        raise NotImplementedError


class ResNetBackbone(TorchvisionBackbone):
    """ResNet: stem = conv1/bn1/relu/maxpool; units = the residual blocks of layer1–4."""

    input_conv = "conv1"

    @classmethod
    def small_input_surgery(
        cls, model: Any, img_size: tuple[int, ...] | None, small: bool, *, pretrained: bool
    ) -> None:
        if small:  # keep the 7x7 kernel (pretrained weights stay usable), stride 1, no max-pool
            model.conv1 = replace_conv(model.conv1, stride=1, pretrained=pretrained)
            model.maxpool = nn.Identity()

    @classmethod
    def remove_classifier(cls, model: Any) -> None:
        model.fc = nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.maxpool(m.relu(m.bn1(m.conv1(x))))

    def units(self) -> list[nn.Module]:
        m = self.model
        return [*m.layer1, *m.layer2, *m.layer3, *m.layer4]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.model.avgpool(x), 1)


class FeaturesCNNBackbone(TorchvisionBackbone):
    """MobileNetV2/V3 and EfficientNet(V2): ``features[0]`` is the stem, ``features[1:-1]``
    the blocks (stage ``Sequential``s flattened), ``features[-1]`` the final 1x1 conv, which
    belongs to the head together with pooling (and MobileNetV3's pre-logits Linear)."""

    input_conv = "features.0.0"

    @classmethod
    def remove_classifier(cls, model: Any) -> None:
        head = model.classifier
        if len(head) == 4:  # MobileNetV3: Linear, Hardswish (kept: pre-logits), Dropout, Linear
            head[2] = nn.Identity()
            head[3] = nn.Identity()
        else:  # Dropout, Linear
            model.classifier = nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features[0](x)  # type: ignore[no-any-return]

    def units(self) -> list[nn.Module]:
        return _flatten_stages(self.model.features[1:-1])

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.features[-1](x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.model.classifier(x)  # type: ignore[no-any-return]

    def cam_target_layer(self) -> nn.Module:
        """The final 1x1 conv block ``features[-1]`` (the last spatial map)."""
        return self.model.features[-1]  # type: ignore[no-any-return]


class RegNetBackbone(TorchvisionBackbone):
    """RegNet: stem = ``stem``; units = the blocks of the four ``trunk_output`` stages."""

    input_conv = "stem.0"

    @classmethod
    def remove_classifier(cls, model: Any) -> None:
        model.fc = nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.stem(x)  # type: ignore[no-any-return]

    def units(self) -> list[nn.Module]:
        return [block for stage in self.model.trunk_output for block in stage]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.model.avgpool(x), 1)


class ConvNeXtBackbone(TorchvisionBackbone):
    """ConvNeXt: stem = ``features[0]``; units = the CNBlocks of the four stages and the
    three downsampling layers between them; head = pooling + the classifier's LayerNorm."""

    input_conv = "features.0.0"

    @classmethod
    def small_input_surgery(
        cls, model: Any, img_size: tuple[int, ...] | None, small: bool, *, pretrained: bool
    ) -> None:
        if small:  # 4x4 patchify stride 4 -> 4x4 conv stride 1, padding 1 (n -> n-1)
            conv = model.features[0][0]
            model.features[0][0] = replace_conv(conv, stride=1, padding=1, pretrained=pretrained)

    @classmethod
    def remove_classifier(cls, model: Any) -> None:
        model.classifier[2] = nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features[0](x)  # type: ignore[no-any-return]

    def units(self) -> list[nn.Module]:
        f = self.model.features
        out: list[nn.Module] = []
        for i in range(1, len(f)):
            out.extend(f[i] if i % 2 == 1 else [f[i]])  # odd: stages; even: downsampling
        return out

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(self.model.avgpool(x))  # type: ignore[no-any-return]


def _swin_stage_sizes(img_size: tuple[int, int], stride: int, pad: int) -> list[tuple[int, int]]:
    """Feature-map sizes of the four Swin stages (4x4 patch conv, then ceil-halving)."""
    sizes = []
    h, w = ((s + 2 * pad - 4) // stride + 1 for s in img_size)
    for _ in range(4):
        sizes.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return sizes


class SwinBackbone(TorchvisionBackbone):
    """Swin (torchvision ``swin_t/s/b``): stem = patch embedding ``features[0]``; units =
    the Swin blocks of the four stages and the three patch-merging layers; head = final
    LayerNorm + pooling. Features are channels-last ``(B, H, W, C)``."""

    input_conv = "features.0.0"

    @classmethod
    def small_input_surgery(
        cls, model: Any, img_size: tuple[int, ...] | None, small: bool, *, pretrained: bool
    ) -> None:
        stride, pad = 4, 0
        if small:  # 4x4 patches with stride 2 and padding 1 (overlapping): n -> n/2
            stride, pad = 2, 1
            conv = model.features[0][0]
            model.features[0][0] = replace_conv(
                conv, stride=stride, padding=pad, pretrained=pretrained
            )
        if img_size is not None:
            stages = [model.features[i] for i in (1, 3, 5, 7)]
            fit_swin_windows(stages, _swin_stage_sizes(img_size, stride, pad))  # type: ignore[arg-type]

    @classmethod
    def remove_classifier(cls, model: Any) -> None:
        model.head = nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features[0](x)  # type: ignore[no-any-return]

    def units(self) -> list[nn.Module]:
        return _flatten_stages(self.model.features[1:])

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.flatten(m.avgpool(m.permute(m.norm(x))))  # type: ignore[no-any-return]

    def grid_size(self, features: torch.Tensor) -> tuple[int, ...]:
        return tuple(features.shape[1:3])

    def cam_grid(self, output: torch.Tensor) -> torch.Tensor:
        """Channels-last ``(B, H, W, C)`` → ``(B, C, H, W)``."""
        return output.permute(0, 3, 1, 2)


_MAXVIT_PARTITIONS = (7, 4, 2)
# the arguments torchvision.models.maxvit_t passes to MaxVit
_MAXVIT_T: dict[str, Any] = {
    "stem_channels": 64,
    "block_channels": [64, 128, 256, 512],
    "block_layers": [2, 2, 5, 2],
    "head_dim": 32,
    "stochastic_depth_prob": 0.2,
    "partition_size": 7,
    "input_size": (224, 224),
}


def maxvit_plan(img_size: tuple[int, ...] | None, small: bool) -> tuple[tuple[int, int], int, int]:
    """``(resized input size, partition size, stem stride)`` of a MaxViT for ``img_size``.

    MaxViT needs every stage's map divisible by the partition size ``p``. The stages are
    ``s/(2σ), s/(4σ), s/(8σ), s/(16σ)`` for input side ``s`` and stem stride ``σ`` (2, or 1
    for small inputs), so with ``R = 16σ``: take the largest ``p`` in (7, 4, 2) that divides
    ``side / R`` on both axes; if none does, resize the input up to the next multiple of
    ``2R`` (28 → 32 for small inputs) and take the largest ``p`` dividing that.
    """
    sigma = 1 if small else 2
    if img_size is None:
        return (224, 224), 7, sigma
    total = 16 * sigma
    h, w = img_size[-2:]
    for p in _MAXVIT_PARTITIONS:
        if h % (total * p) == 0 and w % (total * p) == 0:
            return (h, w), p, sigma
    sh, sw = (math.ceil(s / (2 * total)) * 2 * total for s in (h, w))
    p = next(p for p in _MAXVIT_PARTITIONS if sh % (total * p) == 0 and sw % (total * p) == 0)
    return (sh, sw), p, sigma


class MaxViTBackbone(TorchvisionBackbone):
    """MaxViT (torchvision ``maxvit_t``): stem = ``stem`` (preceded by a bilinear resize
    when the input size is not one the partitions fit, see :func:`maxvit_plan`); units =
    the MaxViT layers (MBConv + block + grid attention) of all four stages; head = pooling,
    LayerNorm and the pre-logits Linear + Tanh."""

    input_conv = "stem.0.0"

    def __init__(self, model: nn.Module, cfg: BackboneCfg, **kwargs: Any) -> None:
        super().__init__(model, cfg, **kwargs)
        self.input_size, _, _ = maxvit_plan(self.img_size, self.small_input)

    @classmethod
    def construct(cls, name: str, **kwargs: Any) -> nn.Module:
        # torchvision's maxvit_t fixes partition_size=7, so build its configuration directly
        from torchvision.models.maxvit import MaxVit

        return MaxVit(**{**_MAXVIT_T, **kwargs})

    @classmethod
    def constructor_kwargs(cls, img_size: tuple[int, ...] | None, small: bool) -> dict[str, Any]:
        (h, w), p, sigma = maxvit_plan(img_size, small)
        # torchvision sizes the blocks for a stride-2 stem; with a stride-1 stem the map
        # after the stem equals the input, so build it as if the input were twice as big
        scale = 2 if sigma == 1 else 1
        return {"input_size": (h * scale, w * scale), "partition_size": p}

    @classmethod
    def filter_state_dict(
        cls, state: dict[str, torch.Tensor], model: Any
    ) -> dict[str, torch.Tensor]:
        return crop_state_dict_tables(state, model)

    @classmethod
    def small_input_surgery(
        cls, model: Any, img_size: tuple[int, ...] | None, small: bool, *, pretrained: bool
    ) -> None:
        if small:
            conv = model.stem[0][0]
            model.stem[0][0] = replace_conv(conv, stride=1, pretrained=pretrained)

    @classmethod
    def remove_classifier(cls, model: Any) -> None:
        model.classifier[5] = nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return self.model.stem(x)  # type: ignore[no-any-return]

    def units(self) -> list[nn.Module]:
        return [layer for block in self.model.blocks for layer in block.layers]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(x)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- registrations
_SMALL = {
    "resnet": "conv1 stride 2→1 (7x7 kernel kept), max-pool removed: total stride 32→8",
    "mobilenet": "first conv stride 2→1: total stride 32→16",
    "efficientnet": "first conv stride 2→1: total stride 32→16",
    "efficientnet_v2": "first conv stride 2→1: total stride 32→16",
    "regnet": "stem conv stride 2→1: total stride 32→16",
    "convnext": "4x4 patchify conv stride 4→1 (padding 1): total stride 32→8",
    "swin": "4x4 patch embedding stride 4→2 (padding 1): total stride 32→16 "
    "(for any img_size, windows shrink to stage maps smaller than 7)",
    "maxvit": "stem stride 2→1; partition 7→largest of 7/4/2 fitting every stage, "
    "input resized up to a multiple of 32 if none fits (28→32, p=2)",
}

# name: (adapter, family, natural side, num_features, number of units); EfficientNets were
# trained at growing resolutions (torchvision's evaluation crop sizes)
_MODELS: dict[str, tuple[type[TorchvisionBackbone], str, int, int, int]] = {
    "resnet18": (ResNetBackbone, "resnet", 224, 512, 8),
    "resnet34": (ResNetBackbone, "resnet", 224, 512, 16),
    "resnet50": (ResNetBackbone, "resnet", 224, 2048, 16),
    "resnet101": (ResNetBackbone, "resnet", 224, 2048, 33),
    "resnet152": (ResNetBackbone, "resnet", 224, 2048, 50),
    "mobilenet_v2": (FeaturesCNNBackbone, "mobilenet", 224, 1280, 17),
    "mobilenet_v3_small": (FeaturesCNNBackbone, "mobilenet", 224, 1024, 11),
    "mobilenet_v3_large": (FeaturesCNNBackbone, "mobilenet", 224, 1280, 15),
    "efficientnet_b0": (FeaturesCNNBackbone, "efficientnet", 224, 1280, 16),
    "efficientnet_b1": (FeaturesCNNBackbone, "efficientnet", 240, 1280, 23),
    "efficientnet_b2": (FeaturesCNNBackbone, "efficientnet", 288, 1408, 23),
    "efficientnet_b3": (FeaturesCNNBackbone, "efficientnet", 300, 1536, 26),
    "efficientnet_b4": (FeaturesCNNBackbone, "efficientnet", 380, 1792, 32),
    "efficientnet_v2_s": (FeaturesCNNBackbone, "efficientnet_v2", 384, 1280, 40),
    "efficientnet_v2_m": (FeaturesCNNBackbone, "efficientnet_v2", 480, 1280, 57),
    "regnet_y_400mf": (RegNetBackbone, "regnet", 224, 440, 16),
    "regnet_y_800mf": (RegNetBackbone, "regnet", 224, 784, 14),
    "regnet_y_1_6gf": (RegNetBackbone, "regnet", 224, 888, 27),
    "regnet_x_400mf": (RegNetBackbone, "regnet", 224, 400, 22),
    "regnet_x_800mf": (RegNetBackbone, "regnet", 224, 672, 16),
    "convnext_tiny": (ConvNeXtBackbone, "convnext", 224, 768, 21),
    "convnext_small": (ConvNeXtBackbone, "convnext", 224, 768, 39),
    "convnext_base": (ConvNeXtBackbone, "convnext", 224, 1024, 39),
    "swin_t": (SwinBackbone, "swin", 224, 768, 15),
    "swin_s": (SwinBackbone, "swin", 224, 768, 27),
    "swin_b": (SwinBackbone, "swin", 224, 1024, 27),
    "maxvit_t": (MaxViTBackbone, "maxvit", 224, 512, 11),
}


def _register_all() -> None:
    for name, (adapter, family, side, num_features, n_units) in _MODELS.items():
        cfg = BackboneCfg(
            family=family,
            source="torchvision",
            num_features=num_features,
            spatial_dims=2,
            natural_size=(side, side),
            min_size=64,  # 2 x total stride 32
            max_segments=n_units,
            default_memory_budget=family_default(family),
            small_input=_SMALL[family],
        )
        builder: Callable[..., Backbone] = partial(adapter.build, name, cfg)
        register_backbone(name, cfg=cfg)(builder)


_register_all()
