"""CPU smoke test of benchmarks/medmnist.py: a 50 s budget on a cut-down BreastMNIST.

The real BreastMNIST file is cut to 32/32/32 train/val/test images (saved as
``breastmnist.npz`` in a temporary folder, so the published rows still apply) and searched
with a one-backbone, two-epoch space. The test checks the merged document (one section per
dataset, every published row next to medauto's), that the budget was respected, and that
the test split was read only by retrain, once per retrained model.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from pathlib import Path
from types import ModuleType

import pytest

from med_core.testing.data import cut_medmnist

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "medmnist.py"

TINY_SPACE = """\
name: tiny
description: one small backbone, two epochs (benchmark smoke test)
spatial_dims: 2
fixed:
  model.backbone: mobilenet_v3_small
  model.pretrained: false
  amp_dtype: none
  channels_last: false
  compile: false
  early_stopping_patience: null
  batch_size: 32
fidelity: {min_epochs: 1, max_epochs: 2, reduction_factor: 2}
params:
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  tta: [false, true]
"""


@pytest.fixture
def small_breast(medmnist_dir: Path, tmp_path: Path) -> Path:
    """A cut-down copy of the real BreastMNIST (first images of each split)."""
    return cut_medmnist(medmnist_dir / "breastmnist.npz", tmp_path / "data" / "breastmnist.npz", 32)


def _warm_up() -> None:
    """One training step of the backbone, so the first trial's first epoch does not carry
    this process's one-off CPU kernel set-up (seconds on a loaded 2-core machine), which
    would make the tiny budget's trial cap stop it."""
    import torch

    from med_core.config import ModelConfig
    from med_core.models import build_classifier

    model = build_classifier(ModelConfig(backbone="mobilenet_v3_small"), num_classes=2,
                             in_chans=1, img_size=(28, 28))
    model(torch.randn(32, 1, 28, 28)).sum().backward()


def test_merge_keeps_other_sections(bench: ModuleType, tmp_path: Path) -> None:
    doc = tmp_path / "medmnist.md"
    for key in ("pneumoniamnist", "breastmnist", "adrenalmnist3d"):
        bench.merge_section(doc, key, f"{bench._BEGIN.format(key=key)}\n## {key} v1\n"
                                      f"{bench._END.format(key=key)}\n")
    bench.merge_section(doc, "breastmnist", f"{bench._BEGIN.format(key='breastmnist')}\n"
                                            f"## breastmnist v2\n"
                                            f"{bench._END.format(key='breastmnist')}\n")
    text = doc.read_text()
    assert text.startswith("# MedMNIST")
    assert re.findall(r"^## (\S+ v\d)$", text, re.M) == [
        "adrenalmnist3d v1", "breastmnist v2", "pneumoniamnist v1"]


def test_benchmark_end_to_end(
    bench: ModuleType, small_breast: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from med_core.training import Trainer
    from medauto.baselines import get_baselines

    test_reads: list[list[str]] = []
    original = Trainer._loader

    def spy(self: Trainer, split: str, *, train: bool) -> object:
        if split == "test":
            test_reads.append([f.name for f in traceback.extract_stack()])
        return original(self, split, train=train)

    monkeypatch.setattr(Trainer, "_loader", spy)
    _warm_up()
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    doc = tmp_path / "medmnist.md"
    doc.write_text("# MedMNIST (an older header, kept)\n\nintro\n")
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    code = bench.main([str(small_breast), "--budget", "50s", "--retrain-fraction", "0.5",
                       "--device", "cpu",
                       "--space", str(space), "--run-dir", str(run_dir), "--doc", str(doc),
                       "--no-report"])
    wall = time.monotonic() - t0
    assert code == 0
    res = json.loads((run_dir / "benchmark.json").read_text())
    used = res["budget_used"]
    assert used["used_s"] <= 50 + used["plan"]["slack_s"], used
    assert wall < 50 + 15  # plus imports, data loading and writing
    assert res["trials"]["complete"] >= 1
    models = res["retrain"]["models"]
    assert len(models) == 3 and [m["seed"] for m in models] == [0, 1, 2]
    # The test split was read by retrain only, once per retrained model.
    assert len(test_reads) == len(models)
    assert all("_train_and_test" in stack for stack in test_reads)

    text = doc.read_text()
    assert text.startswith("# MedMNIST (an older header, kept)")
    assert text.count("<!-- medmnist-bench:begin breastmnist -->") == 1
    assert "## BreastMNIST" in text or "## breastmnist" in text
    m = res["retrain"]["test_mean"]
    assert re.search(rf"\*\*medauto\*\* \(50s, `{re.escape(str(space))}`\) \| "
                     rf"{m['auc']:.3f} ± \d\.\d{{3}} \| {m['acc']:.3f} ±", text)
    for row in get_baselines("breastmnist"):
        assert f"| {row.method} | {row.auc:.3f} | {row.acc:.3f} |" in text
    assert "hand-tuned ResNet-18 (28)" in text
    assert "Trials**: " in text and "Winner**: trial " in text
