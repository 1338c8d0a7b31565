"""Early stopping: the callback on crafted sequences, and wired into a real fit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from training_helpers import base_cfg
from training_helpers import small_dataset

from med_core.training import Callback
from med_core.training import EarlyStopping
from med_core.training import Trainer


class _FakeTrainer:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def request_stop(self, reason: str) -> None:
        self.reasons.append(reason)


def _stop_epoch(values: list[float], **kw: object) -> int | None:
    es, t = EarlyStopping(**kw), _FakeTrainer()  # type: ignore[arg-type]
    for epoch, v in enumerate(values):
        es.on_epoch_end(t, epoch, {kw.get("monitor", "val_auc"): v})  # type: ignore[arg-type]
        if t.reasons:
            assert t.reasons == ["early_stopping"]
            return epoch
    return None


@pytest.mark.parametrize(
    ("values", "kw", "expected"),
    [
        ([0.5, 0.6, 0.6, 0.55, 0.7], {"patience": 2}, 3),  # ties do not improve
        ([0.5, 0.6, 0.59, 0.61, 0.6, 0.6], {"patience": 2}, 5),  # 0.61 resets the count
        ([0.5, 0.6, 0.605, 0.609], {"patience": 2, "min_delta": 0.01}, 3),
        ([1.0, 0.9, 0.95, 0.96], {"monitor": "val_loss", "patience": 2}, 3),  # min mode
        ([math.nan, math.nan], {"patience": 1}, 0),  # NaN never improves
        ([0.5, 0.6, 0.7, 0.8], {"patience": 1}, None),
    ],
)
def test_stops_at_expected_epoch(
    values: list[float], kw: dict[str, object], expected: int | None
) -> None:
    assert _stop_epoch(values, **kw) == expected


def test_state_dict_roundtrip_continues_count() -> None:
    a, t = EarlyStopping(patience=3), _FakeTrainer()
    for e, v in enumerate([0.7, 0.6, 0.6]):
        a.on_epoch_end(t, e, {"val_auc": v})  # type: ignore[arg-type]
    b = EarlyStopping(patience=3)
    b.load_state_dict(a.state_dict())
    b.on_epoch_end(t, 3, {"val_auc": 0.65})  # type: ignore[arg-type]
    assert t.reasons == ["early_stopping"] and b.stopped_epoch == 3


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(min_delta=-1)


class _CraftedAuc(Callback):
    """Replaces val_auc with a crafted sequence (runs before the trainer's EarlyStopping)."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        metrics["val_auc"] = self.values[epoch]


def test_trainer_stops_on_patience_from_config(medmnist_dir: Path) -> None:
    cfg = base_cfg(medmnist_dir, epochs=8, early_stopping_patience=2)
    seq = [0.60, 0.70, 0.65, 0.72, 0.71, 0.70, 0.90, 0.95]
    trainer = Trainer(
        cfg,
        dataset=small_dataset(medmnist_dir, n_train=64, n_val=20),
        progress=False,
        callbacks=[_CraftedAuc(seq)],
    )
    history = trainer.fit()
    # best 0.72 at epoch 3; epochs 4 and 5 do not improve -> stop after epoch 5.
    assert len(history) == 6 and trainer.epoch == 6
    assert history.stop_reason == "early_stopping"
    assert history.best_epoch == 3 and history.best_metric == 0.72
    assert history.metric("val_auc") == seq[:6]
