"""benchmarks/explain.py: the CAM-layer sweep takes each map at the layer it names."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

import pytest
import torch

from med_core.explain import explain
from med_core.explain import faithfulness
from med_core.models import build_classifier

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "explain.py"


def test_cam_units_entries_become_explain_layers(bench: ModuleType) -> None:
    assert bench._cam_layer("default") == (None, "default")
    assert bench._cam_layer("-3") == (-3, "units()[-3]")


@pytest.mark.usefixtures("one_cpu_thread")
def test_a_case_at_a_unit_scores_the_maps_of_that_unit(bench: ModuleType) -> None:
    torch.manual_seed(0)
    model = build_classifier({"backbone": "resnet18"}, num_classes=2, in_chans=1,
                             img_size=28).eval()
    x = torch.rand(2, 1, 28, 28)
    args = argparse.Namespace(shap_samples=2, max_channels=None, seed=0, steps=4)
    rows = {layer: bench._bench_case([model], None, x, args, torch.device("cpu"),
                                     ("gradcam",), layer=layer) for layer in (None, -3)}
    for layer, (row,) in rows.items():
        maps = explain(model, x, "gradcam", layer=layer)  # layer3.1 (7x7) or layer4.1 (4x4)
        expected = faithfulness([model], x, maps, steps=4)
        assert row["deletion_auc"] == pytest.approx(expected["deletion_auc"])
        assert row["insertion_auc"] == pytest.approx(expected["insertion_auc"])
    assert rows[None][0]["deletion_auc"] != pytest.approx(rows[-3][0]["deletion_auc"])
