"""benchmarks/deploy.py: the targets' verdicts, the rendered document, and --reuse's study
lookup in a run folder's real SQLite store (no training: the commands it runs are tested
end to end in tests/medauto/distill/)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "deploy.py"


def _row(name: str, size: int, auc: float, acc: float, b1: float, **kw: Any) -> dict[str, Any]:
    return {"name": name, "file": name, "size_bytes": size, "test_auc": auc, "test_acc": acc,
            "cpu_ms_b1": b1, "cpu_ms_b64": 10 * b1, "gpu_ms_b64": None, "note": "", **kw}


def _result(student_auc: float, int8_size: int, int8_b1: float, int8_acc: float,
            diff: float) -> dict[str, Any]:
    return {
        "commands": ["medauto search --data breastmnist --budget 2m --device cpu",
                     "medauto distill --study s --device cpu --deploy-table"],
        "search_s": 120.0, "distill_s": 60.0, "benchmark": "python benchmarks/deploy.py x",
        "created_at": "now", "environment": {"CPU": "test"},
        "distill": {"study": "s", "student": "mobilenet_v3_small", "student_trial": 0,
                    "temperature": 4.0, "alpha": 0.7, "mode": "cached", "best_epoch": 1,
                    "epochs_run": 3, "test": {"auc": student_auc, "acc": 0.8},
                    "test_teacher": {"auc": 0.90}, "test_single": {"auc": 0.80}},
        "rows": [_row("ensemble", 30, 0.90, 0.85, 9.0), _row("best single", 6, 0.80, 0.80, 2.0),
                 _row("distilled student", 6_000_000, student_auc, 0.80, 2.0),
                 _row("int8 student", int8_size, 0.8, int8_acc, int8_b1),
                 _row("ONNX student", 6_000_000, student_auc, 0.80, 1.5, max_abs_diff=diff)],
    }


def test_targets_say_met_or_missed_and_by_how_much(bench: ModuleType) -> None:
    met = {t[0]: t[2] for t in bench.targets(_result(0.86, 1_500_000, 1.0, 0.795, 2e-7))}
    assert list(met.values()) == ["met"] * 5
    missed = {t[0]: t[2] for t in bench.targets(_result(0.83, 3_000_000, 4.0, 0.75, 3e-3))}
    assert missed["student closes >= 50 % of the best-single → ensemble test-AUC gap"] == (
        "missed by 20% of the gap")  # 30 % closed
    assert missed["int8 >= 3x smaller than the fp32 student"] == "missed by 1.00x"
    assert missed["int8 faster on CPU at batch 1"] == "missed: 2.00x slower"
    assert missed["int8 loses <= 1 point of test ACC"] == "missed by 4.0 points"
    assert missed["ONNX matches PyTorch to 1e-4 on the test split"] == "missed"


def test_document_holds_every_dataset_with_its_commands(bench: ModuleType) -> None:
    doc = bench.render({"pneumoniamnist": _result(0.86, 1_500_000, 1.0, 0.8, 1e-7),
                        "breastmnist": _result(0.83, 3_000_000, 4.0, 0.75, 3e-3)})
    assert doc.index("## breastmnist") < doc.index("## pneumoniamnist")
    assert doc.count("medauto distill --study s --device cpu --deploy-table") == 2
    assert "| ONNX student |" in doc and "The cuda sections are the verdict" in doc


@pytest.fixture(scope="module")
def searched_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as a search leaves it: a SQLite study store whose studies' trials
    record their device, and ``final/<study>/final.json`` for the searches that finished:
    ``bm`` (breastmnist, cpu, finished), ``bm-unfinished`` (no final model) and ``pn``
    (pneumoniamnist, finished)."""
    import optuna

    from medauto.final import FINAL_FILE
    from medauto.final import FinalResult
    from medauto.final import final_dir
    from medauto.keys import DEVICE_ATTR

    run_dir = tmp_path_factory.mktemp("reuse") / "runs"
    run_dir.mkdir()
    storage = f"sqlite:///{run_dir / 'medauto.db'}"
    for name, data, finished in (("bm", "breastmnist", True), ("bm-unfinished", "breastmnist",
                                  False), ("pn", "pneumoniamnist", True)):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.add_trial(optuna.trial.create_trial(value=0.8, user_attrs={DEVICE_ATTR: "cpu"}))
        if finished:
            FinalResult(study=name, dataset=data).save(final_dir(run_dir, name) / FINAL_FILE)
    return run_dir


def test_reuse_finds_the_searchs_study_of_the_dataset_and_device(
    bench: ModuleType, searched_run: Path
) -> None:
    assert bench.reused_study(searched_run, "breastmnist", "cpu") == "bm"
    assert bench.reused_study(searched_run, "PneumoniaMNIST", "cpu", study="pn") == "pn"
    with pytest.raises(SystemExit, match=r"ran on \['cpu'\], this benchmark on cuda:0"):
        bench.reused_study(searched_run, "breastmnist", "cuda:0")  # a GPU table, CPU trials
    with pytest.raises(SystemExit, match="0 studies of retinamnist"):
        bench.reused_study(searched_run, "retinamnist", "cpu")
    with pytest.raises(SystemExit, match="0 studies of breastmnist"):
        bench.reused_study(searched_run, "breastmnist", "cpu", study="other")
    with pytest.raises(SystemExit, match="no study store"):
        bench.reused_study(searched_run / "nowhere", "breastmnist", "cpu")


def test_reuse_section_names_the_search_that_made_the_study(bench: ModuleType) -> None:
    res = {**_result(0.86, 1_500_000, 1.0, 0.8, 1e-7), "search_s": None,
           "reused": "python benchmarks/medmnist.py breastmnist --budget 8m --device cuda "
                     "--run-dir /r"}
    doc = bench.render({"breastmnist": res})
    assert ("Search reused: the first command was run earlier by `python benchmarks/"
            "medmnist.py breastmnist --budget 8m --device cuda --run-dir /r`") in doc
    assert "medauto search --data breastmnist --budget 2m --device cpu" in doc


def test_study_without_reuse_is_refused(bench: ModuleType) -> None:
    with pytest.raises(SystemExit, match="add --reuse"):
        bench.main(["breastmnist", "--study", "bm"])
