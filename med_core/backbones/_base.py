"""The :class:`Backbone` base class: stem → checkpointable units → head."""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

from med_core.backbones._checkpointing import Groups
from med_core.backbones._checkpointing import check_memory_budget
from med_core.backbones._checkpointing import check_segments
from med_core.backbones._checkpointing import plan_groups
from med_core.backbones._checkpointing import run_groups
from med_core.backbones._checkpointing import segment_groups
from med_core.backbones._checkpointing import unit_activation_bytes
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

    Gradient checkpointing is a stored setting (a memory budget, or a segment count) that
    :meth:`forward_features` reads; it is active only when ``self.training and
    torch.is_grad_enabled()`` and never changes parameters, buffers or ``state_dict`` keys,
    so a checkpointed backbone pickles and deep-copies like any module. See
    :mod:`med_core.backbones._checkpointing` for the exact meaning of both.

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
        self._ckpt_segments = 0  # k > 0: k groups of near-equal unit counts
        self._ckpt_keep_last = False  # the last of the k groups runs un-checkpointed
        self._ckpt_budget: float | None = None  # a memory budget: groups by measured bytes
        self._ckpt_plans: dict[tuple[Any, ...], Groups] = {}  # per input shape and dtype
        self._ckpt_selective = False  # inside groups, keep convolution/matmul outputs
        self._ckpt_inplace_off: list[nn.Module] = []  # in-place modules selective turned off
        self._ckpt_offload = False  # the plain units' saved tensors in host memory

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
        units = self.units()
        if not (
            self.training and torch.is_grad_enabled() and self.is_gradient_checkpointing_enabled()
        ):
            return run_groups(units, x, ())
        return run_groups(
            units,
            x,
            self._groups(units, x),
            selective=self._ckpt_selective,
            offload=self._ckpt_offload,
        )

    def _groups(self, units: list[nn.Module], x: torch.Tensor) -> Groups:
        """The checkpointed ranges for this input: from the segment count, or planned from
        the units' measured activation bytes (once per input shape, dtype and autocast)."""
        if self._ckpt_budget is None:
            return segment_groups(len(units), self._ckpt_segments, keep_last=self._ckpt_keep_last)
        key = (tuple(x.shape[1:]), x.dtype, x.device.type, torch.is_autocast_enabled(x.device.type))
        plan = self._ckpt_plans.get(key)
        if plan is None:
            if torch.compiler.is_compiling():  # no measuring inside a traced graph: equal units
                return plan_groups([1.0] * len(units), self._ckpt_budget)
            plan = plan_groups(unit_activation_bytes(units, x), self._ckpt_budget)
            self._ckpt_plans[key] = plan
        return plan

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
        self,
        segments: int | None = None,
        *,
        keep_last: bool | None = None,
        memory_budget: float | None = None,
        selective: bool = False,
        offload: bool = False,
    ) -> None:
        """Checkpoints the units during training, by memory budget or by segment count.

        Args:
            segments: ``None`` (the default): plan the groups from the units' measured
                activation bytes so that about ``memory_budget`` of them stay resident
                (``plan_groups`` in ``med_core.backbones._checkpointing``). An integer in
                ``[1, cfg.max_segments]``: that many groups of near-equal unit counts,
                every one checkpointed.
            keep_last: With ``segments``, run the last group without checkpointing (it
                keeps its activations and is not recomputed; needs ``segments >= 2``).
            memory_budget: The share of activation bytes kept, in ``(0, 1)``; ``None``:
                the family's default ``cfg.default_memory_budget``. Only without
                ``segments``.
            selective: Inside the checkpointed groups, keep the outputs of convolutions,
                matrix products and attention, and recompute only the cheap ops between
                them (``SELECTIVE_SAVE_OPS``): less recomputation, less saving.
            offload: Keep what the plainly run units save for backward in pinned host
                memory (``torch.autograd.graph.save_on_cpu``): for volumes, where the
                kept tail is what fills the device.

        Raises:
            ValueError: for a ``segments`` outside ``[1, cfg.max_segments]``, a
                ``memory_budget`` outside ``(0, 1)``, ``keep_last`` without ``segments`` or
                with ``segments == 1``, or ``segments`` and ``memory_budget`` together.
            NotImplementedError: if the backbone has no units (not the case for any
                registered name; ``timm/`` models override this method).

        Example:
            >>> import torch
            >>> from med_core.backbones import create_backbone
            >>> net = create_backbone("resnet18", img_size=28)
            >>> net.enable_gradient_checkpointing()
            >>> net.checkpoint_memory_budget, net.checkpoint_plan  # planned on first use
            (0.5, None)
            >>> _ = net(torch.randn(4, 3, 28, 28))
            >>> net.checkpoint_plan  # layer1 (units 0-1, full resolution) holds the bytes
            ((0, 1), (1, 2))
            >>> net.enable_gradient_checkpointing(4, keep_last=True)
            >>> net.checkpoint_segments, net.checkpoint_plan
            (4, ((0, 2), (2, 4), (4, 6)))
            >>> net.enable_gradient_checkpointing(0)
            Traceback (most recent call last):
            ...
            ValueError: segments for backbone 'resnet18' must be an integer in [1, 8] ..., got 0
        """
        cfg = self.cfg
        if cfg.max_segments is None or cfg.default_memory_budget is None:
            raise NotImplementedError(f"backbone {self.name!r} has no checkpointable units")
        if not isinstance(keep_last, (bool, type(None))):
            raise ValueError(f"keep_last must be a bool or None, got {keep_last!r}")
        if segments is None:
            if keep_last is not None:
                raise ValueError(
                    f"keep_last needs an explicit segments for backbone {self.name!r} (a memory "
                    "budget always runs the last units plainly)"
                )
            budget = cfg.default_memory_budget if memory_budget is None else memory_budget
            self._ckpt_budget = check_memory_budget(budget, name=self.name)
            self._ckpt_segments, self._ckpt_keep_last, self._ckpt_plans = 0, False, {}
            self._set_selective(selective)
            self._ckpt_offload = bool(offload)
            return
        if memory_budget is not None:
            raise ValueError(
                f"segments and memory_budget exclude each other for backbone {self.name!r}, "
                f"got segments={segments!r}, memory_budget={memory_budget!r}"
            )
        k = check_segments(segments, cfg.max_segments, name=self.name)
        if keep_last and k < 2:
            raise ValueError(
                f"keep_last=True needs segments >= 2 for backbone {self.name!r} (with one "
                f"group nothing would be checkpointed), got segments={k}"
            )
        self._ckpt_segments, self._ckpt_keep_last = k, bool(keep_last)
        self._ckpt_budget, self._ckpt_plans = None, {}
        self._set_selective(selective)
        self._ckpt_offload = bool(offload)

    def _set_selective(self, selective: bool) -> None:
        """Records ``selective``; with it, in-place activations in the units write new
        tensors instead (a tensor that a selective checkpoint keeps must not be changed
        afterwards, and e.g. EfficientNet's squeeze-excitation applies ``SiLU(inplace=True)``
        right to a convolution's output). That changes memory, not results. Turning
        selective off (here or by disabling checkpointing) makes them in-place again."""
        self._ckpt_selective = bool(selective)
        if selective:
            for unit in self.units():
                for m in unit.modules():
                    if getattr(m, "inplace", False) is True:
                        setattr(m, "inplace", False)  # noqa: B010 - nn.Module typing
                        self._ckpt_inplace_off.append(m)
        else:
            for m in self._ckpt_inplace_off:
                setattr(m, "inplace", True)  # noqa: B010 - nn.Module typing
            self._ckpt_inplace_off = []

    def disable_gradient_checkpointing(self) -> None:
        """Turns gradient checkpointing off (a no-op when it is off)."""
        self._ckpt_segments, self._ckpt_keep_last = 0, False
        self._ckpt_budget, self._ckpt_plans = None, {}
        self._set_selective(False)
        self._ckpt_offload = False

    def is_gradient_checkpointing_enabled(self) -> bool:
        """Whether training-mode forward passes checkpoint the units."""
        return self._ckpt_segments > 0 or self._ckpt_budget is not None

    @property
    def checkpoint_segments(self) -> int | None:
        """The explicit segment count, or ``None`` (off, or a memory budget)."""
        return self._ckpt_segments or None

    @property
    def checkpoint_keep_last(self) -> bool:
        """Whether the last of the explicit segments runs un-checkpointed."""
        return self._ckpt_keep_last

    @property
    def checkpoint_offload(self) -> bool:
        """Whether the plainly run units keep their saved tensors in host memory."""
        return self._ckpt_offload

    @property
    def checkpoint_selective(self) -> bool:
        """Whether the checkpointed groups keep convolution/matmul outputs."""
        return self._ckpt_selective

    @property
    def checkpoint_memory_budget(self) -> float | None:
        """The memory budget the groups are planned for, or ``None``."""
        return self._ckpt_budget

    @property
    def checkpoint_plan(self) -> Groups | None:
        """The checkpointed unit ranges: of the segment count, or the budget's plan of the
        latest input shape planned; ``None`` when off or before the first training pass."""
        if self._ckpt_segments:
            return segment_groups(
                len(self.units()), self._ckpt_segments, keep_last=self._ckpt_keep_last
            )
        return next(reversed(self._ckpt_plans.values()), None)

    def extra_repr(self) -> str:
        ckpt = f"segments={self._ckpt_segments}" if self._ckpt_segments else "off"
        if self._ckpt_keep_last:
            ckpt += ", keep_last"
        if self._ckpt_budget is not None:
            ckpt = f"memory_budget={self._ckpt_budget}"
        if self._ckpt_selective:
            ckpt += ", selective"
        if self._ckpt_offload:
            ckpt += ", offload"
        return f"name={self.name!r}, num_features={self.num_features}, checkpointing={ckpt}"
