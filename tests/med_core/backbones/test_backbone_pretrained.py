"""Pretrained weights: cache hits load, cache misses fail at once, nothing goes online."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torchvision.models  # noqa: F401  (imported up front: the timings below exclude it)

from med_core.backbones import create_backbone
from med_core.backbones._torchvision import ResNetBackbone
from med_core.exceptions import PretrainedWeightsError

_RESNET18_FILE = "resnet18-f37072fd.pth"
_VIT_TINY_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch hub and Hugging Face caches, and no network at all."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return tmp_path


def test_torchvision_cache_miss_fails_at_once(
    empty_caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built before the weights were found")

    monkeypatch.setattr(ResNetBackbone, "construct", classmethod(never))
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsError) as info:
        create_backbone("resnet18", pretrained=True, in_chans=1, img_size=28)
    assert time.perf_counter() - start < 5.0
    msg = str(info.value)
    expected = empty_caches / "torch" / "hub" / "checkpoints"
    assert str(expected / _RESNET18_FILE) in msg  # the file and where to put it
    assert f"https://download.pytorch.org/models/{_RESNET18_FILE}" in msg  # where to get it
    assert "never downloads" in msg and "pretrained=False" in msg


@pytest.mark.parametrize("name", ["vit_tiny", "timm/test_vit"])
def test_timm_cache_miss_fails_at_once(empty_caches: Path, name: str) -> None:
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsError) as info:
        create_backbone(name, pretrained=True, img_size=28)
    assert time.perf_counter() - start < 5.0
    msg = str(info.value)
    repo = _VIT_TINY_REPO if name == "vit_tiny" else "timm/test_vit.r160_in1k"
    assert f"Hugging Face repo {repo!r}" in msg
    assert str(empty_caches / "hf" / "hub") in msg
    assert "huggingface-cli download" in msg


def _save_random_torchvision(name: str, torch_home: Path, filename: str) -> dict[str, torch.Tensor]:
    from torchvision.models import get_model

    torch.manual_seed(123)
    state = get_model(name, weights=None).state_dict()
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / filename)
    return state


def test_torchvision_cache_hit_loads_the_weights(empty_caches: Path) -> None:
    saved = _save_random_torchvision("resnet18", empty_caches / "torch", _RESNET18_FILE)
    net = create_backbone("resnet18", pretrained=True)
    own = net.model.state_dict()
    assert set(own) == set(saved) - {"fc.weight", "fc.bias"}
    for key, value in own.items():
        assert torch.equal(value, saved[key]), key
    # gray + small input: same weights, input filters summed over RGB, strides changed
    gray = create_backbone("resnet18", pretrained=True, in_chans=1, img_size=28)
    torch.testing.assert_close(gray.model.conv1.weight, saved["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(gray.model.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 512)


def test_corrupt_cache_file_is_named(empty_caches: Path) -> None:
    folder = empty_caches / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / _RESNET18_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match=r"cannot read the cached weights .*resnet18"):
        create_backbone("resnet18", pretrained=True)


def test_wrong_cache_file_is_refused(empty_caches: Path) -> None:
    """A readable file with another architecture's weights: a clear error, not a crash."""
    _save_random_torchvision("resnet34", empty_caches / "torch", _RESNET18_FILE)
    with pytest.raises(PretrainedWeightsError, match=r"do not fit its architecture"):
        create_backbone("resnet18", pretrained=True)


def test_swin_pretrained_windows_are_cropped(empty_caches: Path) -> None:
    saved = _save_random_torchvision("swin_t", empty_caches / "torch", "swin_t-704ceda3.pth")
    net = create_backbone("swin_t", pretrained=True, img_size=28)  # stage-4 window 7 -> 2
    key = "features.7.0.attn.relative_position_bias_table"
    table = saved[key].reshape(13, 13, -1)[5:8, 5:8].reshape(9, -1)
    assert torch.equal(net.model.state_dict()[key], table)
    key1 = "features.1.0.attn.relative_position_bias_table"  # window 7 kept
    assert torch.equal(net.model.state_dict()[key1], saved[key1])


def test_maxvit_pretrained_partitions_are_cropped(empty_caches: Path) -> None:
    saved = _save_random_torchvision("maxvit_t", empty_caches / "torch", "maxvit_t-bc5ab103.pth")
    net = create_backbone("maxvit_t", pretrained=True, in_chans=1, img_size=28)  # p: 7 -> 2
    own = net.model.state_dict()
    key = "blocks.2.layers.1.layers.grid_attention.attn_layer.1.relative_position_bias_table"
    assert torch.equal(own[key], saved[key].reshape(13, 13, -1)[5:8, 5:8].reshape(9, -1))
    conv = "blocks.3.layers.0.layers.MBconv.layers.conv_b.0.weight"
    assert torch.equal(own[conv], saved[conv])
    assert net(torch.randn(1, 1, 28, 28)).shape == (1, 512)


def test_timm_cache_hit_loads_the_weights(
    empty_caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake Hugging Face cache entry (refs/main + snapshot) is found and loaded by timm,
    which also resamples the patch kernel (16 -> 4) and sums it over RGB."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(7)
    state = timm.create_model("vit_tiny_patch16_224").state_dict()
    repo_dir = empty_caches / "hfcache" / ("models--" + _VIT_TINY_REPO.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(empty_caches / "hfcache"))

    net = create_backbone("vit_tiny", pretrained=True, in_chans=1, img_size=28)
    own = net.model.state_dict()
    assert torch.equal(own["blocks.11.mlp.fc2.weight"], state["blocks.11.mlp.fc2.weight"])
    assert torch.equal(own["cls_token"], state["cls_token"])
    assert own["patch_embed.proj.weight"].shape == (192, 1, 4, 4)
    assert own["pos_embed"].shape == (1, 1 + 49, 192)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 192)
