"""Two-process gloo DDP through the programmatic launcher (CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import ddp_cfg
from training_helpers import ddp_options_worker
from training_helpers import ddp_worker
from training_helpers import small_dataset
from training_helpers import strip_timing
from training_helpers import weights_digest

from med_core.training import DistContext
from med_core.training import Trainer
from med_core.training import launch
from med_core.training import load_checkpoint


@pytest.mark.ddp
def test_two_rank_gloo_fit_with_gradient_checkpointing(medmnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    results = launch(ddp_worker, 2, args=(str(medmnist_dir), str(out)), backend="gloo")
    r0, r1 = results
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert r0["ckpt_enabled"] and r1["ckpt_enabled"]  # non-reentrant checkpointing under DDP

    # Rank 0's stop request (a pruning decision) stopped both ranks after epoch 1 of 3.
    for r in results:
        assert r["history"]["stop_reason"] == "callback:pruned"
        assert len(r["history"]["epochs"]) == 2
    assert strip_timing(r0["history"]["epochs"]) == strip_timing(r1["history"]["epochs"])
    # Identical parameters and buffers (BatchNorm statistics) on both ranks.
    assert r0["digest"] == r1["digest"]

    # Checkpoints: written once (rank 1's writer raises if called), loadable, complete.
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 2 and last["world_size"] == 2 and len(last["rng"]) == 2
    assert (out / "best.pt").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt"]

    # Validation covered the FULL val split (41 samples: shards of 21 and 20), in order,
    # and equals a single-process evaluation of the same weights.
    assert r0["y_true"].shape == (41,) and np.array_equal(r0["y_score"], r1["y_score"])
    ds = small_dataset(medmnist_dir, n_train=96, n_val=41)
    single = Trainer(ddp_cfg(medmnist_dir), dataset=ds, progress=False, dist=DistContext())
    single.load_weights(out / "last.pt")
    assert weights_digest(single.model) == r0["digest"]
    y_true, y_score = single.predict("val")
    assert np.array_equal(y_true, r0["y_true"]) and np.array_equal(y_true, ds.val.labels)
    np.testing.assert_allclose(r0["y_score"], y_score, rtol=0, atol=1e-6)
    ev = single.evaluate("val")
    for k, v in ev.items():
        assert r0["evaluate"][k] == pytest.approx(v, abs=1e-6), k
        assert r0["history"]["epochs"][-1][k] == pytest.approx(v, abs=1e-6), k
    assert not math.isnan(ev["val_auc"])


@pytest.mark.ddp
def test_ddp_options_reach_the_ddp_module_and_buffers_come_from_rank_0() -> None:
    r0, r1 = launch(ddp_options_worker, 2, backend="gloo")
    # cfg.ddp's bucket size (0.5 MiB) and static_graph are the DDP module's own settings
    assert r0["options"] == r1["options"] == (2**19, True)
    assert r0["default"] == r1["default"] == (25 * 2**20, False)  # torch's defaults
    # the ranks trained on different data, and the all-reduce averaged their gradients
    for g0, g1 in zip(r0["grads"], r1["grads"], strict=True):
        assert torch.equal(g0, g1)
    # BatchNorm statistics: each rank's own until the broadcast, then rank 0's everywhere
    assert not torch.equal(r0["own_mean"], r1["own_mean"])
    for b0, b1 in zip(r0["buffers"], r1["buffers"], strict=True):
        assert torch.equal(b0, b1)
    assert torch.equal(r1["buffers"][0], r0["own_mean"])  # running_mean, the first buffer
