"""benchmarks/explain.py: the CAM-layer sweep takes each map at the layer it names."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from med_core.explain import explain
from med_core.models import build_classifier

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "explain.py"


@pytest.mark.usefixtures("one_cpu_thread")
def test_cam_unit_points_the_target_layer_at_the_unit_then_restores_it(
    bench: ModuleType,
) -> None:
    model = build_classifier({"backbone": "resnet18"}, num_classes=2, in_chans=1,
                             img_size=28).eval()
    x = torch.rand(2, 1, 28, 28)
    default = model.backbone.cam_target_layer()
    before = explain(model, x, "gradcam")  # layer4.1: a 4x4 grid at 28 px
    with bench._cam_unit([model], "-3") as label:
        assert label == "units()[-3]"
        assert model.backbone.cam_target_layer() is model.backbone.units()[-3]
        inside = explain(model, x, "gradcam")  # layer3.1: 7x7
    assert not torch.allclose(before, inside, atol=1e-3)  # explain() took the other layer
    assert model.backbone.cam_target_layer() is default
    torch.testing.assert_close(explain(model, x, "gradcam"), before)
    with bench._cam_unit([model], "default") as label:
        assert label == "default" and model.backbone.cam_target_layer() is default
