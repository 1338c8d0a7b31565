"""The published MedMNIST v2 table in medauto.baselines."""

from __future__ import annotations

import pytest

from medauto.baselines import BASELINES
from medauto.baselines import CITATION
from medauto.baselines import best_baseline
from medauto.baselines import dataset_key
from medauto.baselines import get_baselines

# Values the project's issue #8 and the retrain brief give for checking.
KNOWN = [
    ("breastmnist", "ResNet-18 (28)", 0.901, 0.863),
    ("breastmnist", "AutoKeras", 0.871, 0.831),
    ("breastmnist", "Google AutoML Vision", 0.919, 0.861),
    ("pneumoniamnist", "ResNet-50 (224)", 0.962, 0.884),
    ("pneumoniamnist", "AutoKeras", 0.947, 0.878),
    ("pneumoniamnist", "Google AutoML Vision", 0.991, 0.946),
    ("adrenalmnist3d", "ResNet-18 + ACS", 0.839, 0.754),
    ("adrenalmnist3d", "AutoKeras", 0.804, 0.705),
    ("adrenalmnist3d", "auto-sklearn", 0.828, 0.802),
]


@pytest.mark.parametrize(("dataset", "method", "auc", "acc"), KNOWN)
def test_known_published_values(dataset: str, method: str, auc: float, acc: float) -> None:
    row = {r.method: r for r in get_baselines(dataset)}[method]
    assert (row.auc, row.acc) == (auc, acc)


def test_table_shape_and_citation() -> None:
    assert set(BASELINES) >= {"breastmnist", "pneumoniamnist", "retinamnist", "adrenalmnist3d",
                              "vesselmnist3d"}
    for rows in BASELINES.values():
        assert len({r.method for r in rows}) == len(rows)
        for r in rows:
            assert 0.5 <= r.auc <= 1.0 and 0.0 < r.acc <= 1.0 and r.checked
    assert "Scientific Data 10, 41 (2023)" in CITATION


def test_dataset_names_and_best_rows() -> None:
    assert dataset_key("/data/PneumoniaMNIST_224.npz") == "pneumoniamnist"
    assert dataset_key("breastmnist_64") == "breastmnist"
    assert get_baselines("chestmnist") == ()
    assert best_baseline("breastmnist", "auc").method == "Google AutoML Vision"  # type: ignore[union-attr]
    assert best_baseline("breastmnist", "acc").method == "ResNet-18 (28)"  # type: ignore[union-attr]
    assert best_baseline("vesselmnist3d", "auc") is None
    with pytest.raises(ValueError, match="'auc' or 'acc'"):
        best_baseline("breastmnist", "f1")
