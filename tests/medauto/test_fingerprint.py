"""The data fingerprint: space, selection and the space/data fit, from real MedMNIST files."""

from __future__ import annotations

from pathlib import Path

import pytest

from med_core.data import load_dataset
from medauto.exceptions import SearchSpaceError
from medauto.fingerprint import MAX_VAL_AUC_SE
from medauto.fingerprint import Selection
from medauto.fingerprint import check_space_fits
from medauto.fingerprint import choose_selection
from medauto.fingerprint import choose_space
from medauto.fingerprint import fingerprint_dataset
from medauto.fingerprint import val_auc_standard_error
from medauto.space import SearchSpace


@pytest.fixture(scope="module")
def prints(medmnist_dir: Path) -> dict[str, object]:
    return {n: fingerprint_dataset(load_dataset(n, data_dir=medmnist_dir))
            for n in ("breastmnist", "pneumoniamnist", "adrenalmnist3d")}


def test_fingerprint_reads_train_and_val(prints: dict) -> None:
    b = prints["breastmnist"]
    assert (b.spatial_dims, b.in_chans, b.image_size) == (2, 1, (28, 28))
    assert (b.n_train, b.n_val, b.train_counts, b.val_counts) == (546, 78, (147, 399), (21, 57))
    assert not b.binary_masks
    a = prints["adrenalmnist3d"]
    assert (a.spatial_dims, a.image_size, a.binary_masks) == (3, (28, 28, 28), True)
    assert "3D 28x28x28 binary masks" in a.describe()


def test_space_follows_the_data(prints: dict) -> None:
    assert choose_space(prints["breastmnist"], "cuda") == "default"
    assert choose_space(prints["breastmnist"], "cpu") == "fast"
    assert choose_space(prints["adrenalmnist3d"], "cuda") == "volumetric"
    assert choose_space(prints["adrenalmnist3d"], "cpu") == "volumetric"


def test_small_validation_splits_get_cross_validation(prints: dict) -> None:
    # BreastMNIST's 78 and AdrenalMNIST3D's 98 validation samples cannot rank models;
    # PneumoniaMNIST's 524 can.
    assert choose_selection(prints["breastmnist"]) == Selection("cv", folds=5)
    assert choose_selection(prints["adrenalmnist3d"]) == Selection("cv", folds=5)
    assert choose_selection(prints["pneumoniamnist"]) == Selection("holdout")
    assert prints["pneumoniamnist"].val_auc_se <= MAX_VAL_AUC_SE < prints["breastmnist"].val_auc_se


def test_standard_error_falls_with_more_samples() -> None:
    small, large = val_auc_standard_error(20, 20), val_auc_standard_error(200, 200)
    assert large < small / 3
    assert val_auc_standard_error(0, 10) == float("inf")


def test_a_2d_space_on_volumes_is_refused_in_one_line(prints: dict) -> None:
    with pytest.raises(SearchSpaceError) as info:
        check_space_fits(SearchSpace.from_yaml("fast"), prints["adrenalmnist3d"])
    msg = str(info.value)
    assert "\n" not in msg and "'fast' is 2D" in msg and "3D data" in msg and "volumetric" in msg
    check_space_fits(SearchSpace.from_yaml("volumetric"), prints["adrenalmnist3d"])


def test_the_optimizer_refuses_the_mismatch_before_any_study(
    medmnist_dir: Path, tmp_path: Path
) -> None:
    from medauto import AutoMLOptimizer

    opt = AutoMLOptimizer("adrenalmnist3d", "fast", run_dir=tmp_path, data_dir=medmnist_dir,
                          device="cpu", tracking=False, n_trials=1)
    with pytest.raises(SearchSpaceError, match="is 2D but 'adrenalmnist3d' holds 3D data"):
        opt.optimize()
    assert not (tmp_path / "medauto.db").exists()


def test_selection_rejects_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="folds >= 2"):
        Selection("cv", folds=1)
    with pytest.raises(ValueError, match="'holdout' or 'cv'"):
        Selection("kfold")  # type: ignore[arg-type]
