"""explain(): bad input is refused up front with one line; ensembles; model state kept;
faithfulness."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from med_core.exceptions import MedCoreError
from med_core.explain import ExplainError
from med_core.explain import explain
from med_core.explain import faithfulness
from med_core.explain import predict_proba
from med_core.models import build_classifier


@functools.cache
def _net(name: str, size: int, seed: int = 0, classes: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return build_classifier({"backbone": name}, num_classes=classes, in_chans=1,
                            img_size=size).eval()  # fmt: skip


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


BAD = [  # (model, images, kwargs, exception message fragment)
    (("resnet18", 28), _x(1, 1, 8, 28, 28), {}, "model 'resnet18' is 2D and takes (B, C, H, W), "
     "got 3D volumes"),
    (("r3d_18", 16), _x(1, 1, 16, 16), {}, "model 'r3d_18' is 3D and takes (B, C, D, H, W), got "
     "2D images"),
    (("resnet18", 28), _x(1, 3, 28, 28), {}, "takes 1-channel input, got 3 channels"),
    (("resnet18", 28), _x(1, 1, 32, 32), {}, "was built for size 28x28, got 32x32"),
    (("resnet18", 28), _x(1, 1, 28, 28), {"method": "occlusion"}, "unknown explanation method"),
    (("resnet18", 28), _x(1, 1, 28, 28), {"target": 2}, "target class must be in [0, 1]"),
    (("resnet18", 28), _x(2, 1, 28, 28), {"target": [0]}, "target has 1 entries for 2 images"),
    (("resnet18", 8), _x(1, 1, 8, 8), {"method": "gradcam"}, "has a 1x1 feature map"),
    (("resnet18", 28), _x(1, 1, 28, 28).to(torch.uint8), {}, "must be a float tensor"),
    (("resnet18", 28), torch.full((1, 1, 28, 28), float("nan")), {}, "NaN or infinite"),
    (("resnet18", 28), _x(0, 1, 28, 28), {}, "empty batch"),
    (("resnet18", 28), _x(1, 1, 28, 28), {"layer": 8}, "layer must be an index into backbone "
     "'resnet18''s 8 units (-8 to 7; None: its default layer), got 8"),
    (("resnet18", 28), _x(1, 1, 28, 28), {"method": "shap", "layer": -3},
     "method 'shap' has no target layer"),
]


@pytest.mark.parametrize(("net", "images", "kwargs", "fragment"), BAD)
def test_bad_input_one_clear_line(net: tuple[str, int], images: torch.Tensor,
                                  kwargs: dict, fragment: str) -> None:  # fmt: skip
    with pytest.raises(ExplainError) as info:
        explain(_net(*net), images, **kwargs)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg
    assert isinstance(info.value, MedCoreError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "random"])
def test_layer_takes_the_cam_at_that_unit(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``layer=-3`` on resnet18 is layer3.1 (7x7 at 28 px) instead of layer4.1 (4x4): the
    same maps as a backbone whose own target layer were that unit, unlike the default."""
    model, x = _net("resnet18", 28), _x(2, 1, 28, 28)
    kw = {"max_channels": 8} if method == "scorecam" else {}  # 8 masked passes, not 256
    default = explain(model, x, method, **kw)
    at_unit = explain(model, x, method, layer=-3, **kw)
    assert not torch.allclose(default, at_unit, atol=1e-3)
    bb = model.backbone
    monkeypatch.setattr(bb, "cam_target_layer", lambda: bb.units()[-3])
    torch.testing.assert_close(explain(model, x, method, **kw), at_unit)


def test_not_a_classifier_is_refused() -> None:
    with pytest.raises(ExplainError, match="not a med_core classifier"):
        explain(nn.Sequential(nn.Conv2d(1, 2, 3)), _x(1, 1, 28, 28))
    with pytest.raises(ExplainError, match="ensemble members mix 2D and 3D"):
        explain([_net("resnet18", 28), _net("r3d_18", 16)], _x(1, 1, 28, 28))


def test_model_state_is_kept() -> None:
    model = _net("resnet18", 28)
    model.train()
    explain(model, _x(2, 1, 28, 28), "gradcam++")
    explain(model, _x(2, 1, 28, 28), "layercam")
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_ensemble_map_is_the_mean_of_members_for_the_ensemble_class() -> None:
    a, b = _net("resnet18", 28, seed=0), _net("resnet18", 28, seed=1)
    x = _x(3, 1, 28, 28)
    target = predict_proba([a, b], x).argmax(1)
    assert torch.allclose(predict_proba([a, b], x),
                          (predict_proba(a, x) + predict_proba(b, x)) / 2)  # fmt: skip
    both = explain([a, b], x, "gradcam")
    mean = (explain(a, x, "gradcam", target=target) + explain(b, x, "gradcam", target=target)) / 2
    assert torch.allclose(both, mean, atol=1e-6)


def test_ensemble_weights_weigh_probabilities_maps_and_faithfulness() -> None:
    # A predictor's member weights: weight 3:1 is the weighted mean; weight 1:0 is member a.
    a, b = _net("resnet18", 28, seed=0), _net("resnet18", 28, seed=1)
    x = _x(3, 1, 28, 28)
    pa, pb = predict_proba(a, x), predict_proba(b, x)
    assert torch.allclose(predict_proba([a, b], x, [3, 1]), 0.75 * pa + 0.25 * pb, atol=1e-6)
    target = (0.75 * pa + 0.25 * pb).argmax(1)
    weighted = explain([a, b], x, "gradcam", weights=[3, 1])
    expect = 0.75 * explain(a, x, "gradcam", target=target) + 0.25 * explain(
        b, x, "gradcam", target=target)
    assert torch.allclose(weighted, expect, atol=1e-6)
    only_a = explain([a, b], x, "gradcam", weights=[1, 0])
    assert torch.allclose(only_a, explain(a, x, "gradcam"), atol=1e-6)
    assert faithfulness([a, b], x, only_a, steps=4, weights=[1, 0]) == pytest.approx(
        faithfulness(a, x, only_a, steps=4))
    for bad in ([1.0], [1.0, -1.0], [0.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ExplainError, match="one finite, non-negative number per member"):
            explain([a, b], x, "gradcam", weights=bad)


def test_shap_values_are_signed_and_target_dependent() -> None:
    model, x = _net("resnet18", 28), _x(1, 1, 28, 28).repeat(2, 1, 1, 1)
    maps = explain(model, x, "shap", target=[0, 1], shap_samples=4)
    assert float(maps.min()) < 0 < float(maps.max())
    # binary logits: the maps for the two classes differ
    assert not torch.allclose(maps[0], maps[1])


def test_faithfulness_ranks_a_map_against_its_inverse() -> None:
    model, x = _net("resnet18", 28), _x(2, 1, 28, 28)
    cam = explain(model, x, "gradcam")
    good, inverse = faithfulness(model, x, cam, steps=5), faithfulness(model, x, 1 - cam, steps=5)
    for r in (good, inverse):
        assert 0.0 <= r["deletion_auc"] <= 1.0 and 0.0 <= r["insertion_auc"] <= 1.0
        assert r["score"] == pytest.approx(r["insertion_auc"] - r["deletion_auc"])
    assert good != inverse  # the order of the pixels matters
    with pytest.raises(ExplainError, match="maps have shape"):
        faithfulness(model, x, cam[:, :10], steps=5)
