"""A budgeted trial times its first two epochs; if the configured epochs would not fit its
cap it trains again with the epochs that do (a whole schedule), else it just goes on;
a budget keeps k-fold selection only when its folds can each train a useful fit."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from med_core.data import load_dataset
from med_core.testing.data import cut_medmnist
from med_core.training import Trainer
from medauto.objective import Objective
from medauto.space import SearchSpace

SPACE = SearchSpace.from_dict({
    "name": "tiny", "spatial_dims": 2,
    "fixed": {"model.backbone": "mobilenet_v3_small", "model.pretrained": False,
              "amp_dtype": "none", "compile": False, "epochs": 6, "batch_size": 16,
              "augment.policy": "none"},
    "params": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
})


@pytest.fixture
def fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Epochs of every Trainer.fit() that runs (a spy; the fit itself is real)."""
    seen: list[int] = []
    original = Trainer.fit

    def spy(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        history = original(self, *args, **kwargs)
        seen.append(len(history.epochs))
        return history

    monkeypatch.setattr(Trainer, "fit", spy)
    return seen


def _run(medmnist_dir: Path, tmp_path: Path, cap: float,
         deadline: float | None = None) -> optuna.trial.FrozenTrial:
    src = cut_medmnist(medmnist_dir / "breastmnist.npz", tmp_path / "b.npz", 32,
                       both_classes=True)
    objective = Objective(SPACE, dataset=load_dataset(src), device="cpu",
                          overrides={"data.dataset": str(src)}, trial_cap_s=cap,
                          search_deadline=deadline)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1)
    return study.trials[0]


def test_a_trial_that_fits_its_cap_is_timed_in_its_own_fit_and_trains_once(
    medmnist_dir: Path, tmp_path: Path, fits: list[int]
) -> None:
    trial = _run(medmnist_dir, tmp_path, cap=1e6)
    assert fits == [6]  # timed by its first two epochs, then on to all six: no extra fit
    assert "epochs_fitted" not in trial.user_attrs
    assert trial.user_attrs["config"]["epochs"] == 6


def test_a_trial_over_its_cap_trains_fewer_epochs_with_a_whole_schedule(
    medmnist_dir: Path, tmp_path: Path, fits: list[int]
) -> None:
    trial = _run(medmnist_dir, tmp_path, cap=1e-3)
    fitted = trial.user_attrs["epochs_fitted"]
    assert fitted["from"] == 6 and fitted["to"] == 1
    assert fits == [2, 1]  # two timed epochs said "too long"; again with one, whole
    assert trial.user_attrs["config"]["epochs"] == 1 and trial.user_attrs["epochs_run"] == 1


def test_a_trial_that_starts_near_the_search_deadline_trains_the_epochs_left(
    medmnist_dir: Path, tmp_path: Path, fits: list[int]
) -> None:
    # a cap that fits all six epochs, but the search ends in a moment: the trial is fitted
    # to the time left and completes (it was stopped at the deadline, unfinished, before)
    trial = _run(medmnist_dir, tmp_path, cap=1e6, deadline=time.monotonic() + 1e-3)
    fitted = trial.user_attrs["epochs_fitted"]
    assert fitted["from"] == 6 and fitted["to"] == 1 and fitted["cap_s"] < 1.0
    assert fits == [2, 1]
    assert trial.state == optuna.trial.TrialState.COMPLETE


def test_a_distant_search_deadline_leaves_the_trial_cap_in_charge(
    medmnist_dir: Path, tmp_path: Path, fits: list[int]
) -> None:
    trial = _run(medmnist_dir, tmp_path, cap=1e6, deadline=time.monotonic() + 1e6)
    assert fits == [6] and "epochs_fitted" not in trial.user_attrs


PORTFOLIO_SPACE = SearchSpace.from_dict({
    "name": SPACE.name, "spatial_dims": SPACE.spatial_dims,
    "fixed": {k: v for k, v in SPACE.to_dict()["fixed"].items() if k != "epochs"},
    "params": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
               "epochs": {"type": "int", "low": 1, "high": 100_000}},
    "portfolio": [{"name": "short", "params": {"optim.lr": 3e-3, "epochs": 3}},
                  {"name": "same", "params": {"optim.lr": 3e-3, "epochs": 3}},
                  {"name": "long", "params": {"optim.lr": 3e-3, "epochs": 100_000}}],
})


@pytest.mark.parametrize(("cap", "mode"), [
    (1e-3, "holdout"),  # the first entry cannot train its folds
    (60.0, "holdout"),  # the first can; the last one, with far more epochs, cannot
    (1e12, "cv"),       # every entry can
])
def test_cross_validation_is_kept_only_when_the_cap_pays_for_every_portfolio_entry(
    medmnist_dir: Path, tmp_path: Path, fits: list[int], cap: float, mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from medauto.fingerprint import Selection
    from medauto.trial_timing import budgeted_selection

    src = cut_medmnist(medmnist_dir / "breastmnist.npz", tmp_path / "b.npz", 40,
                       both_classes=True)
    cv = Selection("cv", folds=3)
    with caplog.at_level("INFO", logger="medauto.trial_timing"):
        chosen = budgeted_selection(cv, PORTFOLIO_SPACE, load_dataset(src), "cpu", cap)
    assert chosen.mode == mode
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("selection:")]
    if mode == "holdout":  # the log says that the fewest folds did not fit either
        assert len(said) == 1 and "(and with 3 folds), so the validation split" in said[0]
    else:
        assert said == []
    # one two-epoch probe on one fold: the three entries share a network and batch, so
    # the timing is reused and each entry is judged by its own epochs
    assert fits == [2]
    assert budgeted_selection(Selection(), PORTFOLIO_SPACE, load_dataset(src), "cpu",
                              1e-3) == Selection()  # holdout: nothing to decide, no probe
    assert fits == [2]


def test_a_configuration_timed_once_is_not_probed_again(
    medmnist_dir: Path, tmp_path: Path, fits: list[int]
) -> None:
    src = cut_medmnist(medmnist_dir / "breastmnist.npz", tmp_path / "b.npz", 32,
                       both_classes=True)
    objective = Objective(SPACE, dataset=load_dataset(src), device="cpu",
                          overrides={"data.dataset": str(src)}, trial_cap_s=1e6)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=2)  # same network, another learning rate
    assert fits == [6, 6]


def test_a_cap_too_short_for_five_folds_keeps_fewer_folds_before_holdout() -> None:
    """The README's CPU command on 2026-12-03: 3.0 s, then 2.90 s per epoch, 12 epochs and a
    55 s trial cap. Five folds fit 4 epochs each, under half: it fell back to the 78
    validation images and tested at AUC 0.812. Three folds fit 6 of the 12."""
    from medauto.fingerprint import MIN_CV_FOLDS
    from medauto.fingerprint import Selection
    from medauto.fingerprint import affordable_selection

    cv = Selection("cv", folds=5, seed=7)
    run = {"epochs": 12, "first_s": 3.0, "epoch_s": 2.9}
    assert affordable_selection(cv, trial_cap_s=55, **run) == Selection("cv", folds=3, seed=7)
    assert affordable_selection(cv, trial_cap_s=70, **run) == Selection("cv", folds=4, seed=7)
    assert affordable_selection(cv, trial_cap_s=90, **run) == cv
    assert MIN_CV_FOLDS == 3  # two folds would train each model on half the data
    assert affordable_selection(cv, trial_cap_s=45, **run) == Selection("holdout")
    assert affordable_selection(Selection(), trial_cap_s=1, **run) == Selection()


@pytest.fixture
def probed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Training images of every probe that runs (a spy; the probe itself is real)."""
    import medauto.trial_timing as trial_timing

    seen: list[int] = []
    original = trial_timing.probe_epochs

    def spy(cfg: Any, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(dataset.train))
        return original(cfg, dataset, *args, **kwargs)

    monkeypatch.setattr(trial_timing, "probe_epochs", spy)
    return seen


def test_a_long_fold_is_timed_on_a_few_batches_and_a_budget_that_cannot_train_it_is_refused(
    medmnist_dir: Path, probed: list[int], caplog: pytest.LogCaptureFixture,
) -> None:
    """`medauto search --data adrenalmnist3d --budget 2m` on the 2-core CPU (2026-12-04):
    two whole epochs of each portfolio entry (about 480 s each) were timed before the
    search, which overran its budget by minutes and never created its study."""
    from medauto.budget import BudgetError
    from medauto.budget import BudgetPlan
    from medauto.fingerprint import Selection
    from medauto.trial_timing import QUICK_PROBE_BATCHES
    from medauto.trial_timing import budgeted_selection

    ds = load_dataset(medmnist_dir / "breastmnist.npz")  # 5 folds of 499 images: 31 batches
    cv = Selection("cv", folds=5)
    with caplog.at_level("INFO", logger="medauto.trial_timing"):
        assert budgeted_selection(cv, PORTFOLIO_SPACE, ds, "cpu", 1e-3).mode == "holdout"
    batch = PORTFOLIO_SPACE.config_from_params({"optim.lr": 3e-3, "epochs": 3}).batch_size
    assert len(probed) == 1 and QUICK_PROBE_BATCHES * batch <= probed[0] < 2 * batch
    assert any(r.getMessage().startswith("selection probe: short timed on 1 batch(es)")
               for r in caplog.records)
    # a cap that pays for the whole probe gets it too, and keeps the folds
    assert budgeted_selection(cv, PORTFOLIO_SPACE, ds, "cpu", 1e12) == cv
    assert probed[1:] == [probed[0], 499]
    plan = BudgetPlan(total_s=120.0, search_s=1e-3, retrain_s=1.0, slack_s=5.0, seeds=1,
                      ensemble=1, trial_cap_s=1e-3)
    with pytest.raises(BudgetError) as err:
        budgeted_selection(cv, PORTFOLIO_SPACE, ds, "cpu", 1e-3, plan=plan)
    said = str(err.value)
    assert "--budget 2m leaves 0 s of search, but the first epoch of short on breastmnist" in said
    assert "546 training images, batch 16" in said and "--trials N (no time limit)" in said
    assert "no trial could train one epoch" in said and len(probed) == 4  # one quick probe


def test_a_budget_too_short_for_one_epoch_is_refused_before_the_study_is_created(
    medmnist_dir: Path, tmp_path: Path,
) -> None:
    import optuna

    from medauto import AutoMLOptimizer
    from medauto.budget import BudgetError
    from medauto.storage import default_storage_url

    space = SearchSpace.from_dict({  # 224² images: an epoch takes far longer than 4 s on a CPU
        **PORTFOLIO_SPACE.to_dict(), "fixed": {**PORTFOLIO_SPACE.to_dict()["fixed"],
                                              "data.img_size": 224}})
    opt = AutoMLOptimizer(str(medmnist_dir / "breastmnist.npz"), space, budget="10s",
                          run_dir=tmp_path / "run", device="cpu", tracking=False)
    with pytest.raises(BudgetError, match="no trial could train one epoch"):
        opt.optimize()
    storage = optuna.storages.RDBStorage(default_storage_url(tmp_path / "run"))
    assert optuna.get_all_study_names(storage) == []
