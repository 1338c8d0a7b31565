"""``medauto train``: --data-dir reaches the training, and the test split is left alone
unless --test asks for it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from cli_helpers import Run


def test_train_takes_data_dir_and_leaves_the_test_split_alone(
    run: Run, micro_data_dir: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"dataset": "breastmnist", "data_dir": str(tmp_path / "not-here"),
                 "loader": "tensor"},
        "model": {"backbone": "mobilenet_v3_small"}, "augment": {"policy": "none"},
        "epochs": 1, "batch_size": 16,
    }))
    code, out, err = run("train", "--config", str(cfg), "--device", "cpu", "--out", "out",
                         "--data-dir", str(micro_data_dir))
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["epochs_run"] == 1 and "test" not in summary
    assert summary["best_epoch"] == 1  # 1-based, as "epoch 1/1" in the log
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "test" not in written and [e["epoch"] for e in written["history"]] == [1]


def test_train_refuses_a_bad_device_before_writing_anything(run: Run, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("epochs: 1\n")
    code, _, err = run("train", "--config", str(cfg), "--device", "gpu0", "--out", "out")
    assert code == 1 and "'gpu0'" in err
    assert not (tmp_path / "out").exists()
