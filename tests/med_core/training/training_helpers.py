"""Helpers shared by the training tests, importable by subprocesses and spawned DDP ranks.

Run as a script it trains the resume-test config and can kill itself with ``os._exit``
at the start of a given epoch (a crash without any clean-up, like SIGKILL)::

    python training_helpers.py DATA_DIR OUT_DIR KILL_AT_EPOCH
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from med_core.config import TrainConfig
from med_core.data import MedicalDataset
from med_core.data import load_dataset
from med_core.training import Callback
from med_core.training import DistContext
from med_core.training import Trainer

TIMING_KEYS = ("epoch_time_s", "images_per_s")
HERE_FILE = Path(__file__).resolve()


def base_cfg(data_dir: str | Path, **flat: Any) -> TrainConfig:
    """A small, fast config on the real BreastMNIST file (overridable by dotted names)."""
    values: dict[str, Any] = {
        "data.dataset": "breastmnist",
        "data.data_dir": str(data_dir),
        "data.loader": "tensor",
        "data.num_workers": 0,
        # The cheapest registered backbone on CPU at 28 px (~200 img/s on one thread);
        # tests of the mechanics do not need a model that learns well.
        "model.backbone": "mobilenet_v3_small",
        "augment.policy": "none",
        "epochs": 2,
        "batch_size": 32,
        "optim.lr": 3e-3,
        "seed": 0,
    }
    values.update(flat)
    return TrainConfig.from_flat(values)


def small_dataset(data_dir: str | Path, *, n_train: int = 128, n_val: int = 41) -> MedicalDataset:
    """A deterministic subset of BreastMNIST (first rows of each split) for quick fits."""
    ds = load_dataset("breastmnist", data_dir=data_dir)
    return MedicalDataset(
        ds.info,
        ds.train.subset(np.arange(n_train)),
        ds.val.subset(np.arange(min(n_val, len(ds.val)))),
        ds.test.subset(np.arange(min(n_val, len(ds.test)))),
    )


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (bitwise identity check)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def strip_timing(history: Any) -> list[dict[str, float]]:
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in history]


# ---------------------------------------------------------------- resume test
def resume_cfg(data_dir: str | Path) -> TrainConfig:
    """Exercises every RNG consumer: augmentation, mixup, dropout, warm-up + cosine."""
    return base_cfg(
        data_dir,
        **{
            "epochs": 3,
            "augment.policy": "light",
            "augment.mixup_alpha": 0.4,
            "model.dropout": 0.2,
            "optim.warmup_epochs": 0.5,
            "label_smoothing": 0.1,
            "early_stopping_patience": 5,
        },
    )


class KillAt(Callback):
    """Ends the process abruptly (no clean-up, no exception) when ``epoch`` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if epoch == self.epoch:
            os._exit(17)


def _kill_main(argv: list[str]) -> None:
    data_dir, out_dir, kill_at = argv[0], argv[1], int(argv[2])
    torch.set_num_threads(1)
    trainer = Trainer(
        resume_cfg(data_dir),
        dataset=small_dataset(data_dir),
        out_dir=out_dir,
        progress=False,
        callbacks=[KillAt(kill_at)],
    )
    trainer.fit()
    sys.exit(0)  # reached only if the kill did not happen


# ---------------------------------------------------------------- DDP test
class StopOnRank0(Callback):
    """Requests a stop on rank 0 only (like a pruning callback that owns the trial)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if trainer.is_main_process and epoch == self.epoch:
            trainer.request_stop("pruned")


def ddp_worker(dist: DistContext, data_dir: str, out_dir: str) -> dict[str, Any]:
    """One rank of the DDP test: trains with gradient checkpointing, returns what it saw."""
    import med_core.training._checkpoint as ckpt_io

    if not dist.is_main_process:

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise AssertionError(f"rank {dist.rank} tried to write a checkpoint")

        ckpt_io.save_checkpoint = refuse  # type: ignore[assignment]
    cfg = ddp_cfg(data_dir)
    trainer = Trainer(
        cfg,
        dataset=small_dataset(data_dir, n_train=96, n_val=41),
        out_dir=out_dir,
        progress=False,
        dist=dist,
        callbacks=[StopOnRank0(epoch=1)],
    )
    history = trainer.fit()
    y_true, y_score = trainer.predict("val")
    return {
        "rank": dist.rank,
        "world_size": dist.world_size,
        "ckpt_enabled": trainer.model.backbone.is_gradient_checkpointing_enabled(),
        "digest": weights_digest(trainer.model),
        "history": history.to_dict(),
        "evaluate": trainer.evaluate("val"),
        "y_true": y_true,
        "y_score": y_score,
    }


def ddp_options_worker(dist: DistContext) -> dict[str, Any]:
    """One rank of the DDP-options test: ``wrap_ddp`` with ``cfg.ddp`` set and with the
    defaults, two steps on rank-specific data, then rank 0's buffers broadcast."""
    from med_core.training._distributed import wrap_ddp

    cfg = TrainConfig.from_flat({"ddp.bucket_cap_mb": 0.5, "ddp.static_graph": True})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.Linear(16, 2))  # fmt: skip
    net = wrap_ddp(model, torch.device("cpu"), cfg.ddp)
    default = wrap_ddp(torch.nn.Linear(2, 2), torch.device("cpu"))
    gen = torch.Generator().manual_seed(dist.rank)
    for _ in range(2):  # static_graph: the first step records the graph, the second uses it
        net.zero_grad(set_to_none=True)
        net(torch.randn(4, 8, generator=gen)).square().sum().backward()
    own_mean = model[1].running_mean.clone()
    dist.broadcast_buffers(model)
    return {
        "options": (net.bucket_bytes_cap, net.static_graph),
        "default": (default.bucket_bytes_cap, default.static_graph),
        "grads": [p.grad.clone() for p in model.parameters()],
        "own_mean": own_mean,
        "buffers": [b.clone() for b in model.buffers()],
    }


def ddp_cfg(data_dir: str | Path) -> TrainConfig:
    return base_cfg(
        data_dir,
        **{
            "epochs": 3,
            "batch_size": 32,
            "model.checkpoint_segments": 2,
            "augment.policy": "light",
        },
    )


if __name__ == "__main__":
    _kill_main(sys.argv[1:])
