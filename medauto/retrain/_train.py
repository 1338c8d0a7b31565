"""Retrain one model: train one trial's config at one seed, keep its weights, test it once.

:func:`train_and_test` is the unit :func:`medauto.retrain.retrain` repeats for every
selected trial and seed; it writes ``models/<name>/model.pt`` (:func:`save_model`) and the
human-readable ``model.json`` next to it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from med_core.device import release_memory
from med_core.training import Trainer
from med_core.training.callbacks import Callback
from med_core.training.callbacks import KeepBestWeights
from medauto.budget import DeadlineCallback
from medauto.logging import get_logger
from medauto.model_file import atomic_write_bytes
from medauto.model_file import nan_to_none
from medauto.model_file import save_model
from medauto.preprocessing import Preprocessing
from medauto.retrain.results import ModelResult
from medauto.scoring import split_metrics

if TYPE_CHECKING:
    import numpy as np

    from med_core.config import TrainConfig
    from med_core.data import MedicalDataset

__all__ = ["ModelJob", "Trained", "train_and_test"]

_logger = get_logger(__name__)


@dataclass(frozen=True)
class ModelJob:
    """One model to retrain: ``cfg`` (the trial's config at ``seed``) on ``dataset``.

    Args:
        name: ``trial<N>-seed<S>`` (its folder under ``models/``).
        study: The study name (recorded in the model file).
        trial: The trial number.
        seed: The training seed (already in ``cfg``).
        cfg: The config to train.
        dataset: The loaded dataset.
        keep: ``"best"`` (best validation epoch) or ``"last"``.
        tta: A :data:`~medauto.retrain.options.TTA_MODES` value.
        stop_at: ``time.monotonic()`` at which training stops (keeping the best weights).
    """

    name: str
    study: str
    trial: int
    seed: int
    cfg: TrainConfig
    dataset: MedicalDataset
    keep: str
    tta: str
    stop_at: float | None = None


@dataclass
class Trained:
    """What :func:`train_and_test` returns: the result row, test labels/scores, and the
    validation labels/scores of the kept weights (``None`` when validation is not held out)."""

    result: ModelResult
    y_true: np.ndarray
    y_score: np.ndarray
    val: tuple[np.ndarray, np.ndarray] | None


def _choose_tta(trainer: Trainer, task: str, mode: str, cfg: TrainConfig,
                held_out: bool) -> tuple[bool, tuple[np.ndarray, np.ndarray] | None]:
    """The model's TTA setting and its validation (labels, scores) with it (held-out val)."""
    if mode == "auto":
        plain = trainer.predict("val", tta=False)
        flipped = trainer.predict("val", tta=True)
        on = split_metrics(task, *flipped)["auc"] > split_metrics(task, *plain)["auc"]
        return on, flipped if on else plain
    use = cfg.tta if mode == "trial" else mode == "on"
    return use, trainer.predict("val", tta=use) if held_out else None


def train_and_test(job: ModelJob, *, device: str, out: Path, progress: bool) -> Trained:
    """Trains one model, keeps the chosen weights, decides TTA on validation, predicts the
    test split once and saves the model under ``out``.

    Args:
        job: What to train.
        device: A resolved device (``"cpu"``, ``"cuda:0"``, ...).
        out: The retrain folder.
        progress: Show the trainer's per-epoch bars.

    Returns:
        The :class:`Trained` model's result row and scores.
    """
    cfg, ds, name = job.cfg, job.dataset, job.name
    keeper = KeepBestWeights() if job.keep == "best" else None
    callbacks: list[Callback] = [keeper] if keeper else []
    if job.stop_at is not None:
        callbacks.append(DeadlineCallback(job.stop_at))
    trainer = Trainer(cfg, dataset=ds, device=device, callbacks=callbacks, progress=progress)
    _logger.info("retraining %s (%s, %d epochs) on %s", name, cfg.model.backbone, cfg.epochs,
                 device)
    t0 = time.perf_counter()
    history = trainer.fit()
    seconds = time.perf_counter() - t0
    kept, epoch = "last", len(history.epochs) - 1
    if keeper is not None:
        if keeper.restore(trainer):
            kept, epoch = "best", int(keeper.epoch or 0)
        else:
            _logger.warning("%s: %s never improved (NaN?); keeping the last epoch's weights",
                            name, cfg.monitor)
    held_out = not cfg.data.train_on_val
    use_tta, val_pred = _choose_tta(trainer, ds.info.task, job.tta, cfg, held_out)
    val_metrics = split_metrics(ds.info.task, *val_pred) if val_pred is not None else {}
    y_true, y_score = trainer.predict("test", tta=use_tta)  # the one look at the test split
    test = split_metrics(ds.info.task, y_true, y_score)
    info = ds.info
    rel = f"models/{name}/model.pt"
    val = history.epochs[epoch].get(cfg.monitor) if history.epochs else None
    meta = {
        "name": name, "study": job.study, "trial": job.trial, "seed": job.seed,
        "weights": kept, "epoch": epoch, "dataset": info.name, "task": info.task,
        "num_classes": info.num_classes, "in_chans": info.in_chans,
        "spatial_dims": info.spatial_dims,
        "img_size": cfg.data.img_size or list(info.image_size),
        "class_names": list(info.class_names), "test": test, "tta": use_tta,
    }
    if use_tta != cfg.tta:  # the saved config predicts as the model was evaluated
        cfg = type(cfg).from_flat({"tta": use_tta}, base=cfg)
    save_model(out / rel, trainer.model, cfg,
               preprocessing=Preprocessing.for_dataset(info, meta["img_size"]), **meta)
    card = {**meta, "config": cfg.to_dict(), "train_seconds": seconds}
    atomic_write_bytes(out / f"models/{name}/model.json",
                       (json.dumps(nan_to_none(card), indent=2) + "\n").encode())
    trainer.close()
    release_memory(device)
    mr = ModelResult(
        name=name, trial=job.trial, seed=job.seed, path=rel, test=test, weights=kept,
        epoch=epoch, epochs_run=len(history.epochs),
        val_at_epoch=None if val is None or not math.isfinite(val) else float(val),
        train_seconds=seconds, backbone=cfg.model.backbone, train_samples=len(ds.train),
        tta=use_tta, val=val_metrics, stop_reason=history.stop_reason,
    )
    _logger.info("%s: test auc=%.4f acc=%.4f (%s epoch %d, tta %s)", name, test["auc"],
                 test["acc"], kept, epoch + 1, "on" if use_tta else "off")
    return Trained(mr, y_true, y_score, val_pred)
