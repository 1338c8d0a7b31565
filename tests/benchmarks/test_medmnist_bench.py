"""CPU smoke test of benchmarks/medmnist.py on a cut-down BreastMNIST.

The real BreastMNIST file is cut to 32/32/32 train/val/test images (saved as
``breastmnist.npz`` in a temporary folder, so the published rows still apply). The search
run is the user's command (``medauto search --data breastmnist --budget ... --device cpu``,
no space given) in a subprocess; the recipe run trains the fixed recipe for one epoch.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from med_core.testing.data import cut_medmnist

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "medmnist.py"


@pytest.fixture
def small_dir(medmnist_dir: Path, tmp_path: Path) -> Path:
    """A folder holding a cut-down copy of the real BreastMNIST."""
    cut_medmnist(medmnist_dir / "breastmnist.npz", tmp_path / "data" / "breastmnist.npz", 32,
                 both_classes=True)
    return tmp_path / "data"


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


def test_search_and_recipe_fill_one_section(
    bench: ModuleType, small_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medauto.baselines import get_baselines

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    doc = tmp_path / "medmnist.md"
    common = ["--device", "cpu", "--doc", str(doc), "--data-dir", str(small_dir)]
    assert bench.main(["breastmnist", "--recipe", "--seeds", "2", "--epochs", "1", *common]) == 0
    assert bench.main(["breastmnist", "--budget", "30s", "--run-dir", str(tmp_path / "run"),
                       *common]) == 0
    stored = json.loads(doc.with_suffix(".json").read_text())["breastmnist"]
    final, recipe = stored["search"]["final"], stored["recipe"]
    assert final["n_test"] == 32 and final["members"]
    assert final["selection"] in ("oof", "val")  # the budget decides whether 5 folds fit
    assert len(recipe["per_seed"]) == 2 and recipe["entry"] == "resnet18-recipe"
    text = doc.read_text()
    assert text.count("<!-- medmnist-bench:begin breastmnist -->") == 1
    assert "medauto search --data breastmnist --budget 30s --device cpu\n" in text
    assert re.search(rf"\*\*medauto final ensemble\*\* \(30s\) \| {final['test']['auc']:.3f} \| "
                     rf"{final['test']['acc']:.3f} \|", text)
    assert "fixed recipe, 2-seed ensemble" in text and "Funnel**: space `fast`" in text
    for row in get_baselines("breastmnist"):
        assert f"| {row.method} | {row.auc:.3f} | {row.acc:.3f} |" in text
