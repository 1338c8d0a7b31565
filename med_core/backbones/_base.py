"""The :class:`Backbone` base class: stem → checkpointable units → head."""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

from med_core.backbones._checkpointing import check_segments
from med_core.backbones._checkpointing import run_units
from med_core.backbones._registry import BackboneCfg

__all__ = ["Backbone"]


class Backbone(nn.Module, abc.ABC):
    """A feature extractor: ``forward(x)`` returns pooled features ``(B, num_features)``.

    The wrapped library model lives under ``self.model`` with its own submodule names, so
    a torchvision/timm state dict loads into it unchanged (keys gain a ``model.`` prefix
    in the backbone's own ``state_dict``). Its classifier layer is removed. A family
    adapter subclass defines three steps:

    * :meth:`forward_stem` – everything before the first unit (stem conv, patch embedding);
    * :meth:`units` – the flat list of checkpointable units (blocks across all stages,
      including downsampling/merging layers between stages);
    * :meth:`forward_head` – final norm, global pooling and flattening.

    Gradient checkpointing is a stored segment count that :meth:`forward_features` reads;
    it is active only when ``self.training and torch.is_grad_enabled()`` and never changes
    parameters, buffers or ``state_dict`` keys, so a checkpointed backbone pickles and
    deep-copies like any module. See :mod:`med_core.backbones._checkpointing` for the exact
    meaning of ``segments``.

    Attributes:
        cfg: The registry metadata of this backbone.
        num_features: Width of the output features (``cfg.num_features``).
        img_size: The input size the backbone was built for (one entry per spatial axis),
            or ``None`` for the natural size.
        small_input: Whether the family's small-input surgery was applied.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: BackboneCfg,
        *,
        name: str,
        img_size: tuple[int, ...] | None = None,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        # typed Any: adapters reach into library-specific submodules (``self.model.layer1``)
        self.model: Any = model
        self.cfg = cfg
        self.name = name
        self.num_features = cfg.num_features
        self.img_size = img_size
        self.small_input = small_input
        self._ckpt_segments = 0  # 0: off; k > 0: k groups
        self._ckpt_keep_last = False  # the last of the k groups runs un-checkpointed

    # ----------------------------------------------------------------- the three steps
    @abc.abstractmethod
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the first checkpointable unit."""

    @abc.abstractmethod
    def units(self) -> list[nn.Module]:
        """The checkpointable units in execution order (submodules of ``self.model``)."""

    @abc.abstractmethod
    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm + global pooling + flatten: features → ``(B, num_features)``."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and units: the last feature map (or token sequence) before the head."""
        x = self.forward_stem(x)
        active = self._ckpt_segments if self.training and torch.is_grad_enabled() else 0
        return run_units(self.units(), x, active, keep_last=self._ckpt_keep_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` or ``(B, C, D, H, W)`` → ``(B, num_features)``."""
        return self.forward_head(self.forward_features(x))

    def grid_size(self, features: torch.Tensor) -> tuple[int, ...]:
        """Spatial size of a :meth:`forward_features` output (channels-first by default)."""
        return tuple(features.shape[2:])

    # ------------------------------------------------------------ explainability (CAMs)
    def cam_target_layer(self) -> nn.Module:
        """The layer whose output class activation maps (Grad-CAM, ...) are computed on.

        The default is the last unit: the last feature map before the head. Families whose
        head starts with a layer that still has a spatial map (MobileNet/EfficientNet's
        final 1x1 conv) or whose last unit's spatial outputs get no gradient (ViT: only
        the class token reaches the head after the last block) override it. This is the
        one place that knows the target layer; :mod:`med_core.explain` only calls it.

        Raises:
            NotImplementedError: if the backbone has no spatial feature map to explain.
        """
        units = self.units()
        if not units:
            raise NotImplementedError(f"backbone {self.name!r} has no CAM target layer")
        return units[-1]

    def cam_grid(self, output: torch.Tensor) -> torch.Tensor:
        """:meth:`cam_target_layer`'s output (or its gradient) as ``(B, C, *grid)``.

        Channels-first by default; channels-last and token-sequence families override it.
        """
        return output

    # ------------------------------------------------------------ gradient checkpointing
    def enable_gradient_checkpointing(
        self, segments: int | None = None, *, keep_last: bool | None = None
    ) -> None:
        """Checkpoints the units in ``segments`` contiguous groups during training.

        Args:
            segments: Number of groups, in ``[1, cfg.max_segments]``; ``None`` uses
                ``cfg.default_segments``. More segments keep more group inputs but
                recompute smaller groups at a time.
            keep_last: Run the last group without checkpointing (it keeps its activations
                and is not recomputed; needs ``segments >= 2``). ``None``: the family
                default ``cfg.default_keep_last`` when ``segments`` is ``None`` too, else
                ``False`` (an explicit ``segments`` alone checkpoints every group).

        Raises:
            ValueError: if ``segments`` is not an integer in ``[1, cfg.max_segments]``, or
                ``keep_last`` is set with ``segments == 1`` (nothing would be checkpointed).
            NotImplementedError: if the backbone has no units (not the case for any
                registered name; ``timm/`` models override this method).

        Example:
            >>> from med_core.backbones import create_backbone
            >>> net = create_backbone("resnet18", img_size=28)
            >>> net.enable_gradient_checkpointing()
            >>> net.is_gradient_checkpointing_enabled(), net.checkpoint_segments
            (True, 2)
            >>> net.checkpoint_keep_last  # the resnet family's default (FAMILY_DEFAULTS)
            True
            >>> net.enable_gradient_checkpointing(4)
            >>> net.checkpoint_segments, net.checkpoint_keep_last
            (4, False)
            >>> net.enable_gradient_checkpointing(0)
            Traceback (most recent call last):
            ...
            ValueError: segments for backbone 'resnet18' must be an integer in [1, 8] ..., got 0
        """
        if self.cfg.max_segments is None or self.cfg.default_segments is None:
            raise NotImplementedError(f"backbone {self.name!r} has no checkpointable units")
        if segments is None:
            segments = self.cfg.default_segments
            if keep_last is None:
                keep_last = self.cfg.default_keep_last
        k = check_segments(segments, self.cfg.max_segments, name=self.name)
        if not isinstance(keep_last, (bool, type(None))):
            raise ValueError(f"keep_last must be a bool or None, got {keep_last!r}")
        if keep_last and k < 2:
            raise ValueError(
                f"keep_last=True needs segments >= 2 for backbone {self.name!r} (with one "
                f"group nothing would be checkpointed), got segments={k}"
            )
        self._ckpt_segments = k
        self._ckpt_keep_last = bool(keep_last)

    def disable_gradient_checkpointing(self) -> None:
        """Turns gradient checkpointing off (a no-op when it is off)."""
        self._ckpt_segments = 0
        self._ckpt_keep_last = False

    def is_gradient_checkpointing_enabled(self) -> bool:
        """Whether training-mode forward passes checkpoint the units."""
        return self._ckpt_segments > 0

    @property
    def checkpoint_segments(self) -> int | None:
        """The active segment count, or ``None`` when checkpointing is off."""
        return self._ckpt_segments or None

    @property
    def checkpoint_keep_last(self) -> bool:
        """Whether the last group runs un-checkpointed (``False`` when checkpointing is off)."""
        return self._ckpt_keep_last

    def extra_repr(self) -> str:
        ckpt = f"segments={self._ckpt_segments}" if self._ckpt_segments else "off"
        if self._ckpt_keep_last:
            ckpt += ", keep_last"
        return f"name={self.name!r}, num_features={self.num_features}, checkpointing={ckpt}"
