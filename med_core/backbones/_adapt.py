"""Model surgery: input-channel adaptation, small-input stems, window/partition fitting.

Every function here changes a freshly built (and, when asked, pretrained) library model
in place or returns a replacement module. Each change is explicit and documented in the
family's ``BackboneCfg.small_input`` line and in ``docs/backbones.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "adapt_conv_weight",
    "crop_rel_pos_table",
    "crop_state_dict_tables",
    "fit_swin_windows",
    "normalize_img_size",
    "replace_conv",
    "use_small_input",
]

_logger = logging.getLogger(__name__)


def normalize_img_size(
    img_size: int | Sequence[int] | None, spatial_dims: int, *, name: str
) -> tuple[int, ...] | None:
    """``img_size`` as a tuple with one entry per spatial axis (an int means a square/cube).

    Raises:
        ValueError: for non-positive or non-integer sizes or a wrong number of entries.
    """
    if img_size is None:
        return None
    if isinstance(img_size, int) and not isinstance(img_size, bool):
        size: tuple[object, ...] = (img_size,) * spatial_dims
    elif isinstance(img_size, Sequence) and not isinstance(img_size, str):
        size = tuple(img_size)
    else:
        size = ()
    if len(size) != spatial_dims or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size
    ):
        raise ValueError(
            f"img_size for backbone {name!r} must be None, an integer > 0 or a sequence of "
            f"{spatial_dims} integers > 0, got {img_size!r}"
        )
    return size  # type: ignore[return-value]


def use_small_input(img_size: tuple[int, ...] | None, min_size: int | None) -> bool:
    """Whether the small-input surgery applies: the smaller of the ``H``/``W`` sides is
    below ``min_size`` (the depth axis of volumes does not count)."""
    return img_size is not None and min_size is not None and min(img_size[-2:]) < min_size


def adapt_conv_weight(weight: torch.Tensor, in_chans: int, *, pretrained: bool) -> torch.Tensor:
    """Input-conv weights ``(O, 3, *k)`` for ``in_chans`` input channels.

    With pretrained weights the rule of ``timm.models.adapt_input_conv`` applies (extended
    to 3D kernels): one channel sums the RGB filters (a gray image replicated to RGB gives
    the same response); more channels repeat the RGB filters and scale them by
    ``3 / in_chans``. Randomly initialised weights are sliced or tiled channel-wise
    without scaling, which keeps the family's own initialisation distribution.
    """
    base = weight.shape[1]
    if in_chans == base:
        return weight
    dtype = weight.dtype
    w = weight.float()
    if pretrained and in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(in_chans / base)
        w = w.repeat(1, reps, *([1] * (w.dim() - 2)))[:, :in_chans]
        if pretrained:
            w = w * (base / float(in_chans))
    return w.to(dtype).contiguous()


def replace_conv(
    conv: nn.Module,
    *,
    in_chans: int | None = None,
    stride: int | tuple[int, ...] | None = None,
    padding: int | tuple[int, ...] | str | None = None,
    pretrained: bool,
) -> nn.Module:
    """A plain ``nn.Conv2d``/``nn.Conv3d`` copy of ``conv`` with a new input-channel count,
    stride and/or padding; weights are kept (adapted by :func:`adapt_conv_weight`)."""
    if not isinstance(conv, (nn.Conv2d, nn.Conv3d)):
        raise TypeError(f"expected a Conv2d/Conv3d input layer, got {type(conv).__name__}")
    cls = nn.Conv2d if isinstance(conv, nn.Conv2d) else nn.Conv3d
    new = cls(
        in_channels=conv.in_channels if in_chans is None else in_chans,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride if stride is None else stride,  # type: ignore[arg-type]
        padding=conv.padding if padding is None else padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_conv_weight(conv.weight, new.in_channels, pretrained=pretrained))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)  # type: ignore[union-attr]
    new.train(conv.training)
    if in_chans is not None and in_chans != conv.in_channels:
        rule = "pretrained RGB filters summed/repeated" if pretrained else "random init sliced"
        _logger.debug(  # every model a search builds does this: -v shows it
            "input conv adapted from %d to %d channels (%s)", conv.in_channels, in_chans, rule
        )
    return new


def crop_rel_pos_table(
    table: torch.Tensor, old_window: Sequence[int], new_window: Sequence[int]
) -> torch.Tensor:
    """Center crop of a relative-position bias table ``((2*Wh-1)*(2*Ww-1), heads)`` for a
    smaller window. Exact: offsets inside the smaller window keep their learned bias."""
    oh, ow = old_window
    nh, nw = new_window
    if nh > oh or nw > ow:
        raise ValueError(f"cannot crop a {list(old_window)} window table to {list(new_window)}")
    heads = table.shape[-1]
    t = table.reshape(2 * oh - 1, 2 * ow - 1, heads)
    t = t[oh - nh : oh + nh - 1, ow - nw : ow + nw - 1]
    return t.reshape(-1, heads).contiguous()


def fit_swin_windows(stages: Sequence[Any], sizes: Sequence[tuple[int, int]]) -> None:
    """Shrinks the attention window of each Swin stage to its feature-map size where the
    map is smaller than the window (torchvision would otherwise pad the map with zero
    tokens up to the window). The bias tables are center-cropped, which keeps pretrained
    biases exact; the relative-position index is rebuilt for the new window."""
    for stage, (h, w) in zip(stages, sizes, strict=True):
        for block in stage:
            attn = block.attn
            old = list(attn.window_size)
            new = [min(old[0], h), min(old[1], w)]
            if new == old:
                continue
            table = crop_rel_pos_table(attn.relative_position_bias_table.detach(), old, new)
            attn.window_size = new
            attn.relative_position_bias_table = nn.Parameter(table)
            attn.define_relative_position_index()


def crop_state_dict_tables(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Adapts a state dict whose relative-position tables were trained for larger
    attention windows/partitions to ``model``: tables are center-cropped and index
    buffers taken from the model."""
    own = model.state_dict()
    out = dict(state_dict)
    for key, value in state_dict.items():
        if key not in own or own[key].shape == value.shape:
            continue
        if key.endswith("relative_position_bias_table"):
            old = int(math.isqrt(value.shape[0]) + 1) // 2
            new = int(math.isqrt(own[key].shape[0]) + 1) // 2
            out[key] = crop_rel_pos_table(value, (old, old), (new, new))
        elif key.endswith("relative_position_index"):
            out[key] = own[key]
    return out
