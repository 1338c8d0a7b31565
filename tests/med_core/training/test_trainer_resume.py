"""A run killed after epoch k and resumed equals an uninterrupted run, bit for bit (CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from training_helpers import HERE_FILE
from training_helpers import resume_cfg
from training_helpers import small_dataset
from training_helpers import strip_timing
from training_helpers import weights_digest

from med_core.training import Trainer
from med_core.training import load_checkpoint

REPO = Path(__file__).resolve().parents[3]


def test_killed_process_resumes_to_identical_weights_and_metrics(
    medmnist_dir: Path, tmp_path: Path
) -> None:
    # 1. A real process trains and dies abruptly (os._exit, no clean-up) when epoch 1
    #    starts, i.e. after writing last.pt for epoch 0.
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(HERE_FILE), str(medmnist_dir), str(killed), "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 17, proc.stderr[-3000:]
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1

    # 2. Resume in this process: epochs 1 and 2.
    ds = small_dataset(medmnist_dir)
    resumed = Trainer(resume_cfg(medmnist_dir), dataset=ds, out_dir=killed, progress=False)
    h_resumed = resumed.fit(resume=True)

    # 3. The same config, uninterrupted.
    full = Trainer(resume_cfg(medmnist_dir), dataset=ds, out_dir=tmp_path / "full", progress=False)
    h_full = full.fit()

    assert len(h_full) == len(h_resumed) == 3
    assert h_resumed.stop_reason == h_full.stop_reason == "completed"
    assert weights_digest(resumed.model) == weights_digest(full.model)
    assert strip_timing(h_resumed) == strip_timing(h_full)  # exact float equality
    assert (h_resumed.best_epoch, h_resumed.best_metric) == (h_full.best_epoch, h_full.best_metric)
    # The optimizer state (and so the next step) is identical too.
    a, b = load_checkpoint(killed / "last.pt"), load_checkpoint(tmp_path / "full" / "last.pt")
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["callbacks"] == b["callbacks"]  # EarlyStopping's counters


def test_resume_of_finished_run_returns_its_history(medmnist_dir: Path, tmp_path: Path) -> None:
    ds = small_dataset(medmnist_dir, n_train=64, n_val=20)
    cfg = resume_cfg(medmnist_dir).replace(epochs=1)
    first = Trainer(cfg, dataset=ds, out_dir=tmp_path, progress=False).fit()
    again = Trainer(cfg, dataset=ds, out_dir=tmp_path, progress=False)
    h = again.fit(resume=True)
    assert strip_timing(h) == strip_timing(first) and again.epoch == 1
