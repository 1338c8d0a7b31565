"""Registry, names, metadata and argument validation of create_backbone (cheap builds)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from med_core.backbones import BackboneCfg
from med_core.backbones import create_backbone
from med_core.backbones import get_backbone_cfg
from med_core.backbones import list_backbones
from med_core.backbones import register_backbone
from med_core.backbones._checkpointing import DEFAULT_MEMORY_BUDGET
from med_core.backbones._checkpointing import FAMILY_DEFAULTS
from med_core.exceptions import UnknownBackboneError
from med_core.testing.backbones import check_checkpoint_matches


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet19", ["'resnet18'"]),
        ("convnext_tiney", ["'convnext_tiny'"]),
        ("efficientnet-b0", ["'efficientnet_b0'"]),
        ("swin3d", ["'swin3d_t'"]),
        ("ResNet50", ["'resnet50'"]),
    ],
)
def test_unknown_name_lists_close_matches(name: str, expected: list[str]) -> None:
    for call in (create_backbone, get_backbone_cfg):
        with pytest.raises(UnknownBackboneError) as info:
            call(name)
        assert isinstance(info.value, ValueError)
        msg = str(info.value)
        assert f"unknown backbone {name!r}" in msg
        assert "did you mean" in msg
        for fragment in expected:
            assert fragment in msg
        assert "list_backbones()" in msg and "timm/" in msg


def test_unknown_name_without_close_match() -> None:
    with pytest.raises(UnknownBackboneError, match=r"unknown backbone 'qqqq'; use one of"):
        create_backbone("qqqq")


def test_unknown_timm_name_lists_close_timm_matches() -> None:
    with pytest.raises(UnknownBackboneError, match=r"'timm/vit_tiny_patch16_224'"):
        create_backbone("timm/vit_tiny_patch16_22")
    with pytest.raises(UnknownBackboneError, match=r"unknown timm model 'no_such_net_xyz'"):
        get_backbone_cfg("timm/no_such_net_xyz")


@pytest.mark.parametrize("name", ["timm/", "timm/hf-hub:org/repo", "timm/a/b"])
def test_malformed_timm_names(name: str) -> None:
    with pytest.raises(ValueError, match="malformed backbone name"):
        create_backbone(name)


def test_duplicate_and_malformed_registration() -> None:
    cfg = get_backbone_cfg("resnet18")
    with pytest.raises(ValueError, match=r"backbone 'resnet18' is already registered"):
        register_backbone("resnet18", cfg=cfg)(lambda **kw: None)
    for bad in ("", "timm/x", 3):
        with pytest.raises(ValueError, match="non-empty string without '/'"):
            register_backbone(bad, cfg=cfg)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a BackboneCfg"):
        register_backbone("new_name", cfg={"family": "resnet"})  # type: ignore[arg-type]
    assert "new_name" not in list_backbones()


def test_list_backbones_filters() -> None:
    names = list_backbones()
    assert names == sorted(names) and len(names) == len(set(names))
    resnets = ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]
    assert list_backbones("resnet*") == resnets
    assert list_backbones("vit_*") == ["vit_base", "vit_small", "vit_tiny"]
    assert list_backbones(spatial_dims=3) == ["mc3_18", "r2plus1d_18", "r3d_18", "swin3d_t"]
    assert set(list_backbones(spatial_dims=2)) == set(names) - set(list_backbones(spatial_dims=3))
    assert list_backbones("nothing*") == []
    with pytest.raises(ValueError, match=r"spatial_dims must be None, 2 or 3, got 4"):
        list_backbones(spatial_dims=4)


@pytest.mark.parametrize("name", list_backbones())
def test_cfg_is_consistent(name: str) -> None:
    cfg = get_backbone_cfg(name)
    assert cfg.max_segments is not None and cfg.min_size is not None
    assert cfg.default_memory_budget == FAMILY_DEFAULTS.get(cfg.family, DEFAULT_MEMORY_BUDGET)
    assert len(cfg.natural_size) == cfg.spatial_dims
    assert min(cfg.natural_size[-2:]) >= cfg.min_size > 28
    assert cfg.small_input
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_features = 1  # type: ignore[misc]


_GOOD = dict(
    family="resnet",
    source="torchvision",
    num_features=8,
    spatial_dims=2,
    natural_size=(32, 32),
    min_size=16,
    max_segments=4,
    default_memory_budget=0.4,
)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("family", "lenet", "BackboneCfg.family: must be one of"),
        ("source", "keras", "BackboneCfg.source: must be one of"),
        ("num_features", 0, "BackboneCfg.num_features: must be an integer > 0, got 0"),
        ("spatial_dims", 1, "BackboneCfg.spatial_dims: must be 2 or 3, got 1"),
        ("natural_size", (32, 32, 32), "BackboneCfg.natural_size: must be a tuple of 2"),
        ("natural_size", [32, 32], "BackboneCfg.natural_size"),
        ("min_size", -1, "BackboneCfg.min_size: must be None or an integer > 0, got -1"),
        ("max_segments", 0, "BackboneCfg.max_segments: must be None or an integer > 0"),
        ("max_segments", None, "BackboneCfg.default_memory_budget: must be None exactly when"),
        (
            "default_memory_budget",
            1.0,
            r"BackboneCfg.default_memory_budget: must be None or a "
            r"float in \(0, 1\), got 1.0",
        ),
    ],
)
def test_cfg_validation(field: str, value: object, fragment: str) -> None:
    BackboneCfg(**_GOOD)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=fragment):
        BackboneCfg(**{**_GOOD, field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"in_chans": 0}, r"in_chans must be an integer >= 1, got 0"),
        ({"in_chans": True}, r"in_chans must be an integer >= 1, got True"),
        ({"in_chans": "3"}, r"in_chans must be an integer >= 1, got '3'"),
        ({"img_size": 0}, r"img_size for backbone 'resnet18' must be .* got 0"),
        ({"img_size": (28,)}, r"sequence of 2 integers > 0, got \(28,\)"),
        ({"img_size": (28, 28, 28)}, r"got \(28, 28, 28\)"),
        ({"img_size": "28"}, r"got '28'"),
        ({"img_size": 28.0}, r"got 28.0"),
        ({"pretrained": "yes"}, r"pretrained must be a bool, got 'yes'"),
        ({"num_classes": 10}, r"\['num_classes'\] cannot be passed through to torchvision"),
        ({"weights": "DEFAULT"}, r"\['weights'\] cannot be passed through"),
    ],
)
def test_create_backbone_rejects_bad_arguments(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        create_backbone("resnet18", **kwargs)  # type: ignore[arg-type]


def test_bad_name_type() -> None:
    with pytest.raises(ValueError, match="backbone name must be a string, got 18"):
        create_backbone(18)  # type: ignore[arg-type]


def test_kwargs_pass_through_and_none_is_dropped() -> None:
    net = create_backbone("convnext_tiny", img_size=28, stochastic_depth_prob=0.3)
    assert net.model.features[7][-1].stochastic_depth.p == pytest.approx(0.3)
    default = create_backbone("convnext_tiny", img_size=28, stochastic_depth_prob=None)
    assert default.model.features[7][-1].stochastic_depth.p == pytest.approx(0.1)
    vit = create_backbone("vit_tiny", img_size=28, drop_path_rate=0.2)
    assert vit.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


def test_img_size_forms_and_volumes() -> None:
    assert create_backbone("resnet18", img_size=(28, 32)).img_size == (28, 32)
    assert create_backbone("resnet18").img_size is None
    vol = create_backbone("r3d_18", in_chans=1, img_size=(8, 28, 28))
    assert vol.img_size == (8, 28, 28) and vol.small_input  # depth does not count
    assert create_backbone("r3d_18", img_size=(16, 40, 40)).small_input is False
    assert create_backbone("r3d_18", img_size=16).img_size == (16, 16, 16)


# ---------------------------------------------------------------- timm/<name> pass-through
def test_timm_passthrough() -> None:
    cfg = get_backbone_cfg("timm/test_vit")
    assert (cfg.family, cfg.source, cfg.max_segments, cfg.min_size) == ("timm", "timm", None, None)
    torch.manual_seed(0)
    net = create_backbone("timm/test_vit", in_chans=1, img_size=32)
    assert net.num_features == cfg.num_features and net.cfg == cfg
    assert net.name == "timm/test_vit"
    out = net(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, cfg.num_features)
    # timm CNNs take any size; img_size is not forwarded to them
    cnn = create_backbone("timm/test_resnet", in_chans=1, img_size=28)
    assert cnn(torch.randn(2, 1, 28, 28)).shape == (2, cnn.num_features)


def test_timm_passthrough_checkpointing() -> None:
    torch.manual_seed(0)
    net = create_backbone("timm/test_vit", img_size=32)
    x = torch.randn(2, 3, 32, 32)
    fragment = (
        r"timm's own granularity; segments, keep_last and memory_budget must be None, "
        r"got segments=2"
    )
    with pytest.raises(NotImplementedError, match=fragment):
        net.enable_gradient_checkpointing(2)
    assert not net.is_gradient_checkpointing_enabled()
    check_checkpoint_matches(net, x, None)
    net.enable_gradient_checkpointing()
    assert net.is_gradient_checkpointing_enabled() and net.checkpoint_segments is None
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert net.model.grad_checkpointing is False  # the flag is handed to timm in training only
    net.disable_gradient_checkpointing()
    with torch.no_grad():
        assert torch.equal(net(x), out)
    with pytest.raises(ValueError, match=r"\['num_classes'\] cannot be passed through to timm"):
        create_backbone("timm/test_vit", num_classes=3)
