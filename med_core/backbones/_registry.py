"""The backbone registry: names → (builder, :class:`BackboneCfg`).

Every registered name maps to one builder function and one frozen metadata record. The
search-space loader, the docs table and the tests all read the metadata from here, so no
other module keeps its own list of which names are 3D or how many units they have.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal

from med_core.exceptions import UnknownBackboneError

if TYPE_CHECKING:
    from med_core.backbones._base import Backbone

__all__ = ["BackboneCfg", "list_backbones", "register_backbone"]

FAMILIES = (
    "resnet",
    "mobilenet",
    "efficientnet",
    "efficientnet_v2",
    "regnet",
    "convnext",
    "vit",
    "maxvit",
    "swin",
    "resnet3d",
    "swin3d",
    "timm",
)
SOURCES = ("torchvision", "timm")
TIMM_PREFIX = "timm/"

Builder = Callable[..., "Backbone"]


@dataclass(frozen=True)
class BackboneCfg:
    """Static metadata of one backbone name (validated when built).

    Args:
        family: The architecture family (one adapter class per family), e.g. ``"resnet"``.
        source: The library the architecture comes from: ``"torchvision"`` or ``"timm"``.
        num_features: Width of the pooled feature vector that ``Backbone.forward`` returns.
        spatial_dims: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, D, H, W)``.
        natural_size: The input size (one entry per spatial axis) the architecture was
            designed and pretrained for, e.g. ``(224, 224)`` or ``(16, 112, 112)``.
        min_size: Below this side length (of the ``H``/``W`` axes) ``create_backbone``
            applies the family's small-input surgery (``small_input``). It is twice the
            network's total spatial stride (the patch size for ViT), the smallest size at
            which the unmodified network is guaranteed a final feature map of at least
            2 per axis. ``None`` where no surgery exists (``timm/`` pass-through).
        max_segments: Number of checkpointable units (the blocks, flattened across stages,
            including the downsampling/merging layers between stages); the largest valid
            ``segments``. ``None`` for ``timm/`` pass-through models, which checkpoint at
            timm's own granularity.
        default_memory_budget: The share of activation bytes kept when checkpointing is
            enabled without arguments: the family's entry of
            ``_checkpointing.FAMILY_DEFAULTS`` (chosen from the GPU benchmark, see
            ``docs/backbones.md``). ``None`` exactly when ``max_segments`` is.
        small_input: One line describing the small-input surgery ("" when none).

    Raises:
        ValueError: when a field breaks its rule (the message names field and value).
    """

    family: str
    source: Literal["torchvision", "timm"]
    num_features: int
    spatial_dims: int
    natural_size: tuple[int, ...]
    min_size: int | None
    max_segments: int | None
    default_memory_budget: float | None
    small_input: str = ""

    def __post_init__(self) -> None:
        def bad(field: str, rule: str) -> None:
            raise ValueError(f"BackboneCfg.{field}: must be {rule}, got {getattr(self, field)!r}")

        def pos_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v > 0

        if self.family not in FAMILIES:
            bad("family", f"one of {list(FAMILIES)}")
        if self.source not in SOURCES:
            bad("source", f"one of {list(SOURCES)}")
        if not pos_int(self.num_features):
            bad("num_features", "an integer > 0")
        if self.spatial_dims not in (2, 3):
            bad("spatial_dims", "2 or 3")
        if not (
            isinstance(self.natural_size, tuple)
            and len(self.natural_size) == self.spatial_dims
            and all(pos_int(v) for v in self.natural_size)
        ):
            bad("natural_size", f"a tuple of {self.spatial_dims} integers > 0")
        if self.min_size is not None and not pos_int(self.min_size):
            bad("min_size", "None or an integer > 0")
        if (self.max_segments is None) != (self.default_memory_budget is None):
            bad("default_memory_budget", "None exactly when max_segments is None")
        if self.max_segments is not None and not pos_int(self.max_segments):
            bad("max_segments", "None or an integer > 0")
        budget = self.default_memory_budget
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, float) or not 0 < budget < 1
        ):
            bad("default_memory_budget", "None or a float in (0, 1)")


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    cfg: BackboneCfg


_BACKBONES: dict[str, _Entry] = {}


def register_backbone(name: str, *, cfg: BackboneCfg) -> Callable[[Builder], Builder]:
    """Registers a backbone builder under ``name`` (decorator).

    The builder is called as ``builder(pretrained=..., in_chans=..., img_size=..., **kwargs)``
    and must return a :class:`~med_core.backbones.Backbone` whose ``cfg`` is ``cfg``.

    Args:
        name: The public name; must not contain ``/`` (``timm/`` is reserved) or be taken.
        cfg: The backbone's metadata.

    Returns:
        A decorator that registers the builder and returns it unchanged.

    Raises:
        ValueError: if ``name`` is already registered or malformed.

    Example:
        >>> from med_core.backbones import get_backbone_cfg, register_backbone
        >>> cfg = get_backbone_cfg("resnet18")
        >>> register_backbone("resnet18", cfg=cfg)(lambda **kw: None)
        Traceback (most recent call last):
        ...
        ValueError: backbone 'resnet18' is already registered
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"backbone name must be a non-empty string without '/', got {name!r}")
    if not isinstance(cfg, BackboneCfg):
        raise ValueError(f"cfg must be a BackboneCfg, got {type(cfg).__name__}")

    def deco(fn: Builder) -> Builder:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = _Entry(fn, cfg)
        return fn

    return deco


def list_backbones(pattern: str = "*", *, spatial_dims: int | None = None) -> list[str]:
    """Registered backbone names, sorted, filtered by a shell-style pattern.

    ``timm/<name>`` pass-through names are accepted by ``create_backbone`` but not listed.

    Args:
        pattern: An :mod:`fnmatch` pattern, e.g. ``"resnet*"``.
        spatial_dims: Keep only 2D (``2``) or 3D (``3``) backbones; ``None`` keeps both.

    Returns:
        The matching names in sorted order.

    Raises:
        ValueError: if ``spatial_dims`` is not ``None``, 2 or 3.

    Example:
        >>> list_backbones("resnet*")
        ['resnet101', 'resnet152', 'resnet18', 'resnet34', 'resnet50']
        >>> list_backbones(spatial_dims=3)
        ['mc3_18', 'r2plus1d_18', 'r3d_18', 'swin3d_t']
    """
    if spatial_dims not in (None, 2, 3):
        raise ValueError(f"spatial_dims must be None, 2 or 3, got {spatial_dims!r}")
    return sorted(
        n
        for n, e in _BACKBONES.items()
        if fnmatch.fnmatchcase(n, pattern)
        and (spatial_dims is None or e.cfg.spatial_dims == spatial_dims)
    )


def lookup(name: str) -> _Entry:
    """The registry entry of ``name``; :class:`UnknownBackboneError` lists close matches."""
    entry = _BACKBONES.get(name)
    if entry is None:
        names = sorted(_BACKBONES)
        close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; {hint}"
            f"use one of list_backbones() ({len(names)} names) or 'timm/<any timm model name>'"
        )
    return entry
