"""Seed bagging: near the end of a budgeted holdout search, new seeds of the best trial."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from med_core.config import TrainConfig
from med_core.data import load_dataset
from med_core.testing.data import cut_medmnist
from medauto.bagging import SeedBagger
from medauto.keys import BAGGED_FROM_ATTR
from medauto.keys import SEED_ATTR
from medauto.objective import Objective
from medauto.space import SearchSpace

SPACE = SearchSpace.from_dict({
    "name": "tiny", "spatial_dims": 2,
    "fixed": {"model.backbone": "mobilenet_v3_small", "model.pretrained": False,
              "amp_dtype": "none", "compile": False, "epochs": 2, "batch_size": 16,
              "augment.policy": "none"},
    "params": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
})


def _done(study: optuna.Study, value: float, seconds: float, lr: float) -> None:
    trial = optuna.trial.create_trial(
        params={"optim.lr": lr}, distributions={"optim.lr": FloatDistribution(1e-3, 1e-2)},
        value=value, user_attrs={"config": TrainConfig().to_dict(), "backbone": "resnet18"})
    trial.datetime_start = dt.datetime(2026, 1, 1)
    trial.datetime_complete = trial.datetime_start + dt.timedelta(seconds=seconds)
    study.add_trial(trial)


def test_the_best_trial_is_repeated_with_new_seeds_as_time_allows_and_only_once() -> None:
    study = optuna.create_study(direction="maximize")
    _done(study, 0.8, 10.0, 0.002)
    _done(study, 0.9, 40.0, 0.005)  # the best: 40 s per run
    now = [50.0]
    bagger = SeedBagger(deadline=200.0, share_s=100.0, clock=lambda: now[0])
    bagger(study, study.trials[-1])
    assert study.get_trials(states=(TrialState.WAITING,)) == []  # not yet due
    now[0] = 110.0  # 90 s left: two more runs of 40 s
    bagger(study, study.trials[-1])
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[SEED_ATTR] for t in waiting] == [1, 2]
    assert all(t.user_attrs[BAGGED_FROM_ATTR] == 1 for t in waiting)
    asked = study.ask()  # Optuna serves the enqueued repeat first, with the best's params
    assert asked.user_attrs[SEED_ATTR] == 1
    assert asked.suggest_float("optim.lr", 1e-3, 1e-2, log=True) == 0.005
    bagger(study, study.trials[-1])
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1  # once per search


def test_a_repeat_trains_its_seed_and_is_never_pruned(medmnist_dir: Path, tmp_path: Path) -> None:
    src = cut_medmnist(medmnist_dir / "breastmnist.npz", tmp_path / "b.npz", 32,
                       both_classes=True)
    objective = Objective(SPACE, dataset=load_dataset(src), device="cpu",
                          overrides={"data.dataset": str(src)})
    # a pruner that stops every trial after its first report
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    study.enqueue_trial({"optim.lr": 0.005}, user_attrs={SEED_ATTR: 7, BAGGED_FROM_ATTR: 0})
    study.enqueue_trial({"optim.lr": 0.005})
    study.optimize(objective, n_trials=2)
    repeat, plain = study.trials
    assert repeat.state == TrialState.COMPLETE and repeat.user_attrs["config"]["seed"] == 7
    assert plain.state == TrialState.PRUNED and plain.user_attrs["config"]["seed"] == 0


def test_only_a_budgeted_holdout_search_with_a_final_model_bags() -> None:
    from medauto.bagging import with_seed_bagging
    from medauto.budget import plan_budget
    from medauto.fingerprint import Selection

    def end(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None: ...

    plan = plan_budget("2m", seeds=1, ensemble=1)
    holdout, cv = Selection(), Selection("cv", folds=5)
    assert with_seed_bagging(end, start=0.0, plan=None, selection=holdout,
                             final_model=True) is end
    assert with_seed_bagging(end, start=0.0, plan=plan, selection=cv, final_model=True) is end
    assert with_seed_bagging(end, start=0.0, plan=plan, selection=holdout,
                             final_model=False) is end
    assert with_seed_bagging(end, start=0.0, plan=plan, selection=holdout,
                             final_model=True) is not end


def test_waiting_portfolio_entries_are_served_after_the_repeats() -> None:
    """Optuna serves waiting trials oldest first: a portfolio entry still waiting when
    bagging opens would take the repeats' time (a 150 s entry did, on PneumoniaMNIST). It
    is recorded as deferred and enqueued again behind the repeats, with its params."""
    from medauto.bagging import DEFERRED
    from medauto.keys import PORTFOLIO_ATTR
    from medauto.keys import REASON_ATTR
    from medauto.study import StudySettings
    from medauto.study import open_study

    lrs = {"a": 0.005, "b": 0.002, "c": 0.001}
    space = SearchSpace.from_dict({
        **SPACE.to_dict(),
        "portfolio": [{"name": n, "params": {"optim.lr": lr}} for n, lr in lrs.items()]})
    settings = StudySettings(space=space.to_dict(), fingerprint=space.fingerprint(),
                             data="breastmnist", metric="val_auc", direction="maximize",
                             n_trials=10, selection="holdout")
    study = open_study("bag", optuna.storages.InMemoryStorage(), settings)
    for entry in space.portfolio:  # as the optimizer enqueues them
        study.enqueue_trial(dict(entry.params), user_attrs={PORTFOLIO_ATTR: entry.name})
    first = study.ask()  # portfolio entry "a" trains and completes
    first.suggest_float("optim.lr", 1e-3, 1e-2, log=True)
    first.set_user_attr("config", TrainConfig().to_dict())
    study.tell(first, 0.9)
    SeedBagger(deadline=100.0, share_s=100.0, max_seeds=2, clock=lambda: 50.0)(
        study, study.trials[0])
    b, c = study.trials[1], study.trials[2]
    assert [t.state for t in (b, c)] == [TrialState.FAIL] * 2
    assert {t.user_attrs[REASON_ATTR] for t in (b, c)} == {DEFERRED}
    queue = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs.get(SEED_ATTR) for t in queue] == [1, 2, None, None]
    assert [t.user_attrs.get(PORTFOLIO_ATTR) for t in queue[2:]] == ["b", "c"]
    for name in ("seed 1", "seed 2", "b", "c"):  # served in that order, with their params
        trial = study.ask()
        lr = trial.suggest_float("optim.lr", 1e-3, 1e-2, log=True)
        assert lr == lrs.get(name, lrs["a"]), name
