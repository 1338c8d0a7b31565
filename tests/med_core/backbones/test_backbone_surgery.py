"""Small-input surgery, input-channel adaptation and window/partition fitting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from med_core.backbones import create_backbone
from med_core.backbones import get_backbone_cfg
from med_core.backbones._adapt import adapt_conv_weight
from med_core.backbones._adapt import crop_rel_pos_table
from med_core.backbones._adapt import normalize_img_size
from med_core.backbones._adapt import replace_conv
from med_core.backbones._adapt import use_small_input
from med_core.backbones._checkpointing import segment_bounds
from med_core.backbones._torchvision import maxvit_plan

# one per family (cheapest)
_FAMILY_REPS = [
    "resnet18",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_x_400mf",
    "convnext_tiny",
    "vit_tiny",
    "maxvit_t",
    "swin_t",
    "r3d_18",
    "swin3d_t",
]


@pytest.mark.parametrize("name", _FAMILY_REPS)
def test_min_size_boundary(name: str) -> None:
    """At min_size the unmodified network keeps a final map of ≥ 2 per axis; one pixel
    less switches the surgery on."""
    cfg = get_backbone_cfg(name)
    assert cfg.min_size is not None
    depth = (8,) if cfg.spatial_dims == 3 else ()
    size = (*depth, cfg.min_size, cfg.min_size)
    torch.manual_seed(0)
    net = create_backbone(name, in_chans=1, img_size=size).eval()
    assert not net.small_input
    with torch.no_grad():
        grid = net.grid_size(net.forward_features(torch.randn(1, 1, *size)))
    assert min(grid[-2:]) >= 2, grid
    below = (*depth, cfg.min_size - 1, cfg.min_size - 1)
    assert use_small_input(below, cfg.min_size) and not use_small_input(size, cfg.min_size)
    assert use_small_input((cfg.min_size, cfg.min_size - 1), cfg.min_size)  # the smaller side


def test_resnet_surgery_keeps_pretrained_shapes() -> None:
    small, natural = create_backbone("resnet18", img_size=28), create_backbone("resnet18")
    assert small.model.conv1.stride == (1, 1) and natural.model.conv1.stride == (2, 2)
    assert isinstance(small.model.maxpool, nn.Identity)
    assert isinstance(natural.model.maxpool, nn.MaxPool2d)
    shapes = {k: v.shape for k, v in natural.state_dict().items()}
    assert {k: v.shape for k, v in small.state_dict().items()} == shapes
    assert "model.fc.weight" not in shapes  # classifier removed


def test_surgery_strides() -> None:
    assert create_backbone("efficientnet_b0", img_size=28).model.features[0][0].stride == (1, 1)
    assert create_backbone("mobilenet_v2", img_size=28).model.features[0][0].stride == (1, 1)
    assert create_backbone("regnet_y_400mf", img_size=28).model.stem[0].stride == (1, 1)
    cn = create_backbone("convnext_tiny", img_size=28).model.features[0][0]
    assert (cn.stride, cn.padding, cn.kernel_size) == ((1, 1), (1, 1), (4, 4))
    sw = create_backbone("swin_t", img_size=28).model.features[0][0]
    assert (sw.stride, sw.padding, sw.kernel_size) == ((2, 2), (1, 1), (4, 4))
    assert create_backbone("r3d_18", img_size=28).model.stem[0].stride == (1, 1, 1)
    pe = create_backbone("swin3d_t", img_size=28).model.patch_embed.proj
    assert (pe.stride, pe.padding) == ((2, 2, 2), (0, 1, 1))
    vit = create_backbone("vit_tiny", img_size=28).model.patch_embed
    assert tuple(vit.patch_size) == (4, 4) and tuple(vit.grid_size) == (7, 7)
    vit64 = create_backbone("vit_tiny", img_size=64).model.patch_embed
    assert tuple(vit64.patch_size) == (16, 16) and tuple(vit64.grid_size) == (4, 4)


def test_swin_windows_fit_small_maps() -> None:
    net = create_backbone("swin_t", img_size=28)  # stage maps 14, 7, 4, 2
    windows = [net.model.features[i][0].attn.window_size for i in (1, 3, 5, 7)]
    assert windows == [[7, 7], [7, 7], [4, 4], [2, 2]]
    attn = net.model.features[5][0].attn
    assert attn.relative_position_bias_table.shape == (7 * 7, attn.num_heads)
    assert attn.relative_position_index.shape == (16 * 16,)
    natural = create_backbone("swin_t")
    assert all(natural.model.features[i][0].attn.window_size == [7, 7] for i in (1, 3, 5, 7))


def test_crop_rel_pos_table_is_exact() -> None:
    """Cropping keeps the bias of every token pair inside the smaller window."""
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    torch.manual_seed(0)
    big = ShiftedWindowAttention(8, [7, 7], [0, 0], num_heads=2)
    small = ShiftedWindowAttention(8, [4, 3], [0, 0], num_heads=2)
    with torch.no_grad():
        small.relative_position_bias_table.copy_(
            crop_rel_pos_table(big.relative_position_bias_table, (7, 7), (4, 3))
        )
    b7, b4 = big.get_relative_position_bias()[0], small.get_relative_position_bias()[0]
    idx = torch.tensor([i * 7 + j for i in range(4) for j in range(3)])
    assert torch.equal(b4, b7[:, idx][:, :, idx])
    with pytest.raises(ValueError, match="cannot crop"):
        crop_rel_pos_table(big.relative_position_bias_table, (7, 7), (8, 7))


@pytest.mark.parametrize(
    ("img_size", "small", "plan"),
    [
        (None, False, ((224, 224), 7, 2)),
        ((224, 224), False, ((224, 224), 7, 2)),
        ((448, 448), False, ((448, 448), 7, 2)),
        ((128, 128), False, ((128, 128), 4, 2)),
        ((64, 64), False, ((64, 64), 2, 2)),
        ((100, 100), False, ((128, 128), 4, 2)),
        ((28, 28), True, ((32, 32), 2, 1)),
        ((32, 48), True, ((32, 64), 2, 1)),
        ((56, 56), True, ((64, 64), 4, 1)),
    ],
)
def test_maxvit_plan(img_size: tuple[int, int] | None, small: bool, plan: tuple) -> None:
    assert maxvit_plan(img_size, small) == plan


def test_maxvit_resizes_in_the_stem() -> None:
    net = create_backbone("maxvit_t", in_chans=1, img_size=28).eval()
    assert net.input_size == (32, 32) and net.model.stem[0][0].stride == (1, 1)
    assert net.model.blocks[0].layers[0].layers.window_attention.p == 2
    with torch.no_grad():
        a = net(torch.randn(1, 1, 28, 28))
        b = net(torch.randn(1, 1, 32, 32))  # already the planned size: no resize
    assert a.shape == b.shape == (1, 512)


@pytest.mark.parametrize("pretrained", [True, False])
@pytest.mark.parametrize("in_chans", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("kernel", [(3, 3), (3, 7, 7)])
def test_adapt_conv_weight(pretrained: bool, in_chans: int, kernel: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    w = torch.randn(5, 3, *kernel)
    out = adapt_conv_weight(w, in_chans, pretrained=pretrained)
    assert out.shape == (5, in_chans, *kernel)
    tiled = w.repeat(1, 3, *([1] * len(kernel)))[:, :in_chans]
    if in_chans == 3:
        assert out is w
    elif pretrained and in_chans == 1:
        torch.testing.assert_close(out, w.sum(1, keepdim=True))
    elif pretrained:
        torch.testing.assert_close(out, tiled * (3 / in_chans))
    else:  # random init: sliced/tiled, distribution unchanged
        torch.testing.assert_close(out, tiled)


def test_gray_input_matches_replicated_rgb_with_pretrained_rule() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    gray = replace_conv(conv, in_chans=1, pretrained=True)
    x = torch.randn(2, 1, 9, 9)
    torch.testing.assert_close(gray(x), conv(x.repeat(1, 3, 1, 1)), rtol=1e-5, atol=1e-5)
    moved = replace_conv(conv, stride=1, padding=2, pretrained=False)
    assert (moved.stride, moved.padding) == ((1, 1), (2, 2))
    assert torch.equal(moved.weight, conv.weight) and torch.equal(moved.bias, conv.bias)
    with pytest.raises(TypeError, match="expected a Conv2d/Conv3d input layer"):
        replace_conv(nn.Linear(3, 3), in_chans=1, pretrained=False)


def test_normalize_img_size() -> None:
    assert normalize_img_size(None, 2, name="x") is None
    assert normalize_img_size(28, 3, name="x") == (28, 28, 28)
    assert normalize_img_size([16, 28, 28], 3, name="x") == (16, 28, 28)
    for bad in (0, -3, True, (28, 0), (28, 28.0), "28", (28,)):
        with pytest.raises(ValueError, match=r"img_size for backbone 'x' must be"):
            normalize_img_size(bad, 2, name="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "k", "bounds"),
    [
        (8, 1, [(0, 8)]),
        (8, 3, [(0, 2), (2, 5), (5, 8)]),
        (8, 8, [(i, i + 1) for i in range(8)]),
        (5, 2, [(0, 2), (2, 5)]),
    ],
)
def test_segment_bounds(n: int, k: int, bounds: list[tuple[int, int]]) -> None:
    assert segment_bounds(n, k) == bounds
    assert all(hi > lo for lo, hi in bounds)
