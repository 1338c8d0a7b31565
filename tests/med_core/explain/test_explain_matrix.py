"""Every method x every registered backbone family gives a finite map of the input's shape,
and the map changes when the target class changes.

One smallest backbone per family, at the smallest input that still leaves a feature grid
of at least 2 cells per axis, built once per module. Score-CAM runs on 4 channels
(``max_channels``) and SHAP on 2 samples to keep the matrix fast; the benchmark runs them
in full.
"""

from __future__ import annotations

import functools

import pytest
import torch

from med_core.backbones import get_backbone_cfg
from med_core.backbones import list_backbones
from med_core.backbones._registry import FAMILIES
from med_core.explain import METHODS
from med_core.explain import explain
from med_core.models import build_classifier

# family -> (smallest registered backbone, input size)
CASES: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet": ("resnet18", (28, 28)),
    "mobilenet": ("mobilenet_v3_small", (28, 28)),
    "efficientnet": ("efficientnet_b0", (28, 28)),
    "efficientnet_v2": ("efficientnet_v2_s", (28, 28)),
    "regnet": ("regnet_y_400mf", (28, 28)),
    "convnext": ("convnext_tiny", (28, 28)),
    "vit": ("vit_tiny", (28, 28)),
    "maxvit": ("maxvit_t", (28, 28)),
    "swin": ("swin_t", (28, 28)),
    "resnet3d": ("r3d_18", (8, 16, 16)),
    "swin3d": ("swin3d_t", (4, 32, 32)),
    "timm": ("timm/test_convnext", (64, 64)),
}

FAST = {"max_channels": 4, "shap_samples": 2}


def test_cases_cover_every_family() -> None:
    families = {get_backbone_cfg(n).family for n in list_backbones()} | {"timm"}
    assert set(CASES) == set(FAMILIES) == families


@functools.cache
def _model(family: str) -> torch.nn.Module:
    """A seeded build whose BatchNorm statistics come from one batch of noise: with the
    initial statistics (mean 0, variance 1) a random MobileNet/EfficientNet's logits hardly
    depend on the input, and no explanation could either."""
    name, size = CASES[family]
    torch.manual_seed(0)
    model = build_classifier({"backbone": name}, num_classes=3, in_chans=1, img_size=size)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch sets the statistics exactly
    with torch.no_grad():
        model.train()(torch.randn((2, 1, *size), generator=torch.Generator().manual_seed(2)))
    return model.eval()


def _pair(family: str) -> torch.Tensor:
    """The same image twice (explained for class 0 and class 2)."""
    size = CASES[family][1]
    x = torch.randn((1, 1, *size), generator=torch.Generator().manual_seed(1))
    return x.repeat(2, *([1] * (len(size) + 1)))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "random"])
@pytest.mark.parametrize("family", list(CASES))
def test_map_shape_finite_and_target_dependent(family: str, method: str) -> None:
    model, x = _model(family), _pair(family)
    maps = explain(model, x, method, target=[0, 2], **FAST)
    assert maps.shape == (2, *CASES[family][1])
    assert maps.dtype == torch.float32 and bool(torch.isfinite(maps).all())
    assert float(maps.abs().amax()) > 0, "an all-zero map explains nothing"
    if method != "shap":  # CAMs are normalised per image
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    assert not torch.allclose(maps[0], maps[1], atol=1e-4), "target class had no effect"


@pytest.mark.parametrize("family", ["resnet", "resnet3d"])
def test_random_baseline_is_seeded_and_target_independent(family: str) -> None:
    model, x = _model(family), _pair(family)
    a = explain(model, x, "random", target=[0, 2], seed=3)
    assert a.shape == (2, *CASES[family][1])
    assert torch.equal(a, explain(model, x, "random", target=[1, 1], seed=3))
    assert not torch.equal(a, explain(model, x, "random", seed=4))
