"""timm-based backbones: the registered ViTs and the ``timm/<name>`` pass-through."""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from med_core.backbones._adapt import use_small_input
from med_core.backbones._base import Backbone
from med_core.backbones._checkpointing import family_default
from med_core.backbones._pretrained import timm_weights_file
from med_core.backbones._registry import BackboneCfg
from med_core.backbones._registry import register_backbone
from med_core.exceptions import UnknownBackboneError
from med_core.torch_compat import vit_pos_embed

__all__ = ["TimmBackbone", "ViTBackbone", "create_timm_backbone", "timm_backbone_cfg"]

_logger = logging.getLogger(__name__)

_RESERVED_KWARGS = ("num_classes", "in_chans", "pretrained", "pretrained_cfg_overlay")


def _check_kwargs(name: str, kwargs: dict[str, Any], reserved: tuple[str, ...]) -> None:
    bad = sorted(set(kwargs) & set(reserved))
    if bad:
        raise ValueError(
            f"create_backbone({name!r}): {bad} cannot be passed through to timm "
            "(backbones have no classifier; use pretrained=/in_chans=/img_size=)"
        )


def _create(model_name: str, *, pretrained: bool, **kwargs: Any) -> nn.Module:
    import timm

    # resolve the cached file first: a miss raises before anything is built
    overlay = timm_weights_file(model_name) if pretrained else None
    return timm.create_model(  # type: ignore[no-any-return]
        model_name, pretrained=pretrained, pretrained_cfg_overlay=overlay, num_classes=0, **kwargs
    )


def _tokens_to_grid(tokens: torch.Tensor, model: Any) -> torch.Tensor:
    """A timm token sequence ``(B, prefix + N, C)`` as ``(B, C, gh, gw)`` (prefix dropped)."""
    x = tokens[:, int(getattr(model, "num_prefix_tokens", 0)) :]
    n = x.shape[1]
    embed = getattr(model, "patch_embed", None)
    grid = tuple(embed.grid_size) if embed is not None else ()
    if math.prod(grid) != n:
        side = math.isqrt(n)
        if side * side != n:
            raise NotImplementedError(f"{n} patch tokens do not form a square grid")
        grid = (side, side)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


class ViTBackbone(Backbone):
    """timm VisionTransformer: stem = patch embedding + position embedding (+ class
    token); units = the transformer blocks; head = final LayerNorm + class-token pooling.

    Small inputs (below ``cfg.min_size``) use 4x4 patches instead of 16x16 (28 → 7x7
    tokens); ``img_size`` is always passed to timm, which resamples the position
    embedding (and, for pretrained weights, the patch-embedding kernel) to fit.
    """

    @classmethod
    def build(
        cls,
        name: str,
        cfg: BackboneCfg,
        timm_name: str,
        *,
        pretrained: bool,
        in_chans: int,
        img_size: tuple[int, ...] | None,
        **kwargs: Any,
    ) -> Backbone:
        _check_kwargs(name, kwargs, _RESERVED_KWARGS + ("img_size", "patch_size"))
        small = use_small_input(img_size, cfg.min_size)
        model = _create(
            timm_name,
            pretrained=pretrained,
            in_chans=in_chans,
            img_size=img_size or cfg.natural_size,
            patch_size=4 if small else 16,
            **kwargs,
        )
        return cls(model, cfg, name=name, img_size=img_size, small_input=small)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.norm_pre(m.patch_drop(vit_pos_embed(m, m.patch_embed(x))))  # type: ignore[no-any-return]

    def units(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.norm(x))  # type: ignore[no-any-return]

    def grid_size(self, features: torch.Tensor) -> tuple[int, ...]:
        n = features.shape[1] - self.model.num_prefix_tokens
        grid = tuple(self.model.patch_embed.grid_size)
        return grid if math.prod(grid) == n else (n,)

    def cam_target_layer(self) -> nn.Module:
        """``blocks[-1].norm1``: after the last block only the class token reaches the head,
        so the patch tokens are taken at the last block's input (normalised)."""
        return self.model.blocks[-1].norm1  # type: ignore[no-any-return]

    def cam_grid(self, output: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, prefix + N, C)`` → patch grid ``(B, C, *grid)``."""
        return _tokens_to_grid(output, self.model)


_VITS = {  # name: (timm model, num_features, blocks)
    "vit_tiny": ("vit_tiny_patch16_224", 192, 12),
    "vit_small": ("vit_small_patch16_224", 384, 12),
    "vit_base": ("vit_base_patch16_224", 768, 12),
}


def _register_all() -> None:
    for name, (timm_name, nf, n_units) in _VITS.items():
        cfg = BackboneCfg(
            family="vit",
            source="timm",
            num_features=nf,
            spatial_dims=2,
            natural_size=(224, 224),
            min_size=32,  # 2 x patch 16
            max_segments=n_units,
            default_memory_budget=family_default("vit"),
            small_input="patch size 16→4 (img_size passed to timm; position embedding resampled)",
        )
        builder: Callable[..., Backbone] = partial(ViTBackbone.build, name, cfg, timm_name)
        register_backbone(name, cfg=cfg)(builder)


_register_all()


# ------------------------------------------------------------------ timm/<name> pass-through
def _check_timm_name(model_name: str) -> None:
    import timm

    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr('timm/' + c) for c in close)}?" if close else ""
        raise UnknownBackboneError(f"unknown timm model {model_name!r}{hint}")


def _passthrough_cfg(model: Any) -> BackboneCfg:
    input_size = (model.pretrained_cfg or {}).get("input_size") or (3, 224, 224)
    return BackboneCfg(
        family="timm",
        source="timm",
        num_features=int(model.num_features),
        spatial_dims=2,
        natural_size=tuple(int(v) for v in input_size[1:]),
        min_size=None,
        max_segments=None,
        default_memory_budget=None,
        small_input="",
    )


def timm_backbone_cfg(model_name: str, **kwargs: Any) -> BackboneCfg:
    """The :class:`BackboneCfg` of ``timm/<model_name>`` (built on the meta device: cheap)."""
    import timm

    _check_timm_name(model_name)
    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, num_classes=0, **kwargs)
    except (NotImplementedError, RuntimeError) as e:  # an init that needs real tensors
        _logger.debug("meta-device build of %r failed (%s); building on the CPU", model_name, e)
        model = timm.create_model(model_name, num_classes=0, **kwargs)
    return _passthrough_cfg(model)


class TimmBackbone(Backbone):
    """Any timm model, created with ``num_classes=0`` (``forward`` returns pooled features).

    Gradient checkpointing uses timm's own ``set_grad_checkpointing`` at timm's granularity,
    so ``segments`` must be ``None``. timm checkpoints whenever its flag is set; this
    wrapper sets the flag only for training-mode, grad-enabled forward passes, so the
    contract (active only in training) is the same as for registered backbones.
    """

    def __init__(self, model: nn.Module, cfg: BackboneCfg, **kwargs: Any) -> None:
        super().__init__(model, cfg, **kwargs)
        self._timm_ckpt = False  # requested by the user
        self._timm_flag = False  # last value handed to timm

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def units(self) -> list[nn.Module]:
        return []

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        active = self._timm_ckpt and self.training and torch.is_grad_enabled()
        if active != self._timm_flag:
            self.model.set_grad_checkpointing(active)
            self._timm_flag = active
        return self.model.forward_features(x)  # type: ignore[no-any-return]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(x)  # type: ignore[no-any-return]

    def cam_target_layer(self) -> nn.Module:
        """The module of timm's last ``feature_info`` entry (timm's own feature metadata)."""
        info = getattr(self.model, "feature_info", None)
        if not info:
            raise NotImplementedError(f"timm model {self.name!r} has no feature_info")
        return self.model.get_submodule(info[-1]["module"])  # type: ignore[no-any-return]

    def cam_grid(self, output: torch.Tensor) -> torch.Tensor:
        """Tokens → patch grid; ``NHWC`` models (timm's ``output_fmt``) → channels-first."""
        if output.ndim == 3:
            return _tokens_to_grid(output, self.model)
        fmt = getattr(self.model, "output_fmt", "NCHW")
        if getattr(fmt, "value", fmt) == "NHWC":  # a str or timm's Format enum
            return output.permute(0, 3, 1, 2)
        return output

    def enable_gradient_checkpointing(
        self,
        segments: int | None = None,
        *,
        keep_last: bool | None = None,
        memory_budget: float | None = None,
        selective: bool = False,
        offload: bool = False,
    ) -> None:
        """Turns on timm's own checkpointing (``segments``, ``keep_last`` and
        ``memory_budget`` must be ``None``, ``selective`` and ``offload`` ``False``).

        Raises:
            NotImplementedError: if any of them is given (timm fixes the granularity) or
                the timm model does not support gradient checkpointing.
        """
        if (
            segments is not None
            or keep_last is not None
            or memory_budget is not None
            or selective
            or offload
        ):
            raise NotImplementedError(
                f"backbone {self.name!r} checkpoints through timm's set_grad_checkpointing at "
                f"timm's own granularity; segments, keep_last and memory_budget must be None, "
                f"got segments={segments!r}, keep_last={keep_last!r}, "
                f"memory_budget={memory_budget!r}, selective={selective!r}, offload={offload!r}"
            )
        try:
            self.model.set_grad_checkpointing(True)
            self.model.set_grad_checkpointing(False)
        except (AssertionError, NotImplementedError, AttributeError) as e:
            raise NotImplementedError(
                f"timm model {self.name!r} does not support gradient checkpointing"
            ) from e
        self._timm_flag = False
        self._timm_ckpt = True

    def disable_gradient_checkpointing(self) -> None:
        """Turns timm's checkpointing off."""
        self._timm_ckpt = False

    def is_gradient_checkpointing_enabled(self) -> bool:
        """Whether training-mode forward passes use timm's checkpointing."""
        return self._timm_ckpt

    @property
    def checkpoint_segments(self) -> int | None:
        """Always ``None``: timm decides the granularity."""
        return None

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_features={self.num_features}, " + (
            "checkpointing=timm" if self._timm_ckpt else "checkpointing=off"
        )


def create_timm_backbone(
    model_name: str,
    *,
    pretrained: bool,
    in_chans: int,
    img_size: tuple[int, ...] | None,
    **kwargs: Any,
) -> TimmBackbone:
    """Builds ``timm/<model_name>``; ``img_size`` is forwarded only to models whose timm
    config marks a fixed input size (ViT-like); no small-input surgery is applied."""
    import timm

    name = "timm/" + model_name
    _check_timm_name(model_name)
    _check_kwargs(name, kwargs, _RESERVED_KWARGS)
    if img_size is not None and "img_size" not in kwargs:
        pcfg = timm.models.get_pretrained_cfg(model_name)
        if pcfg is not None and pcfg.fixed_input_size:
            kwargs["img_size"] = img_size
    model = _create(model_name, pretrained=pretrained, in_chans=in_chans, **kwargs)
    return TimmBackbone(model, _passthrough_cfg(model), name=name, img_size=img_size)
