"""suggest() turns a trial into an exact TrainConfig, conditional params included."""

from __future__ import annotations

import json
import math
import warnings

import optuna
import pytest
from optuna.trial import FixedTrial

from med_core.config import TrainConfig
from medauto.exceptions import SearchSpaceError
from medauto.space import SearchSpace

SPEC = {
    "name": "conditional",
    "fixed": {"model.pretrained": False, "optim": {"momentum": 0.8}},
    "fidelity": {"min_epochs": 2, "max_epochs": 12, "reduction_factor": 3},
    "params": {
        "model.backbone": ["resnet18", "mobilenet_v3_small"],
        # per-backbone variants of one field, Optuna sees two names
        "model.checkpoint_segments@resnet": {
            "type": "categorical",
            "choices": ["off", "default", 2],
            "when": {"model.backbone": "resnet18"},
        },
        "model.checkpoint_segments@mobile": {
            "type": "fixed",
            "value": "default",
            "when": {"model.backbone": ["mobilenet_v3_small"]},
        },
        "optim.optimizer": ["adamw", "sgd"],
        "optim.lr@sgd": {
            "type": "float",
            "low": 1e-3,
            "high": 0.3,
            "log": True,
            "when": {"optim.optimizer": "sgd"},
        },
        "optim.lr@adamw": {
            "type": "float",
            "low": 1e-5,
            "high": 1e-2,
            "log": True,
            "when": {"optim.optimizer": "adamw"},
        },
        "optim.momentum": {
            "type": "float",
            "low": 0.85,
            "high": 0.99,
            "when": {"optim.optimizer": "sgd"},
        },
        "augment.policy": ["none", "light", "heavy"],
        "augment.rotation": {
            "type": "int",
            "low": 0,
            "high": 30,
            "step": 5,
            "when": {"augment.policy": ["light", "heavy"]},
            "otherwise": 0,
        },
        "augment.noise_std": {  # nested condition: only under heavy + rotation 30
            "type": "float",
            "low": 0.0,
            "high": 0.1,
            "step": 0.05,
            "when": {"augment.policy": "heavy", "augment.rotation": 30},
        },
        "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
        "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.05},
        "tta": [False, True],
    },
}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_dict(SPEC, source="conditional.yaml")


def test_fixed_trial_gives_exact_config_with_active_branches(space: SearchSpace) -> None:
    params = {
        "model.backbone": "resnet18",
        "model.checkpoint_segments@resnet": 2,
        "optim.optimizer": "sgd",
        "optim.lr@sgd": 0.05,
        "optim.momentum": 0.9,
        "augment.policy": "heavy",
        "augment.rotation": 30,
        "augment.noise_std": 0.05,
        "batch_size": 64,
        "label_smoothing": 0.1,
        "tta": True,
    }
    trial = FixedTrial(params)
    cfg = space.suggest(trial)
    expected = TrainConfig.from_flat(
        {
            "model.pretrained": False,
            "model.backbone": "resnet18",
            "model.checkpoint_segments": 2,
            "optim.optimizer": "sgd",
            "optim.lr": 0.05,
            "optim.momentum": 0.9,
            "augment.policy": "heavy",
            "augment.rotation": 30.0,
            "augment.noise_std": 0.05,
            "batch_size": 64,
            "label_smoothing": 0.1,
            "tta": True,
            "epochs": 12,  # fidelity.max_epochs
        }
    )
    assert cfg == expected
    assert trial.params == params  # every active param asked, under its Optuna name


def test_fixed_trial_inactive_branches_fall_back(space: SearchSpace) -> None:
    params = {
        "model.backbone": "mobilenet_v3_small",
        "optim.optimizer": "adamw",
        "optim.lr@adamw": 3e-4,
        "augment.policy": "none",
        "batch_size": 32,
        "label_smoothing": 0.0,
        "tta": False,
    }
    trial = FixedTrial(params)  # would raise if an inactive param were asked for
    cfg = space.suggest(trial)
    assert trial.params == params
    assert cfg.model.checkpoint_segments == 0  # fixed "default" for this backbone
    assert cfg.optim.lr == 3e-4
    assert cfg.optim.momentum == 0.8  # from fixed: (nested form), momentum param inactive
    assert cfg.augment.rotation == 0.0  # otherwise:
    assert cfg.augment.noise_std is None  # inactive, no otherwise: base value
    assert cfg.epochs == 12


def test_resnet_checkpoint_off_is_none(space: SearchSpace) -> None:
    params = {
        "model.backbone": "resnet18",
        "model.checkpoint_segments@resnet": None,
        "optim.optimizer": "adamw",
        "optim.lr@adamw": 1e-3,
        "augment.policy": "light",
        "augment.rotation": 10,
        "batch_size": 16,
        "label_smoothing": 0.0,
        "tta": False,
    }
    cfg = space.suggest(FixedTrial(params))
    assert cfg.model.checkpoint_segments is None
    assert cfg.augment.noise_std is None  # policy light: noise_std's condition fails


def test_base_supplies_unset_fields_and_space_overrides(space: SearchSpace) -> None:
    base = TrainConfig.from_flat(
        {"data.dataset": "pneumoniamnist", "seed": 7, "epochs": 99, "model.pretrained": True}
    )
    params = {
        "model.backbone": "mobilenet_v3_small",
        "optim.optimizer": "adamw",
        "optim.lr@adamw": 1e-3,
        "augment.policy": "none",
        "batch_size": 32,
        "label_smoothing": 0.0,
        "tta": False,
    }
    cfg = space.suggest(FixedTrial(params), base=base)
    assert (cfg.data.dataset, cfg.seed) == ("pneumoniamnist", 7)
    assert cfg.epochs == 12 and cfg.model.pretrained is False


def test_config_from_params_rebuilds_the_trial(space: SearchSpace) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    configs = {}

    def objective(trial: optuna.Trial) -> float:
        configs[trial.number] = space.suggest(trial)
        return 0.0

    study.optimize(objective, n_trials=10)
    for t in study.trials:
        assert space.config_from_params(t.params) == configs[t.number]
    with pytest.raises(SearchSpaceError, match=r"conditional\.yaml: params: must include"):
        space.config_from_params({"model.backbone": "resnet18"})
    with pytest.raises(SearchSpaceError, match=r"must be names of this space's params"):
        space.config_from_params({"optim.lr": 0.1})


def test_real_study_follows_conditions(space: SearchSpace) -> None:
    sampler = optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, n_startup_trials=5)
    study = optuna.create_study(sampler=sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(lambda t: space.suggest(t).optim.lr, n_trials=25)
    for t in study.trials:
        p = t.params
        assert set(p) <= set(space.param_names)
        sgd = p["optim.optimizer"] == "sgd"
        assert ("optim.lr@sgd" in p) == sgd and ("optim.lr@adamw" in p) == (not sgd)
        assert ("optim.momentum" in p) == sgd
        assert ("model.checkpoint_segments@resnet" in p) == (p["model.backbone"] == "resnet18")
        assert ("augment.rotation" in p) == (p["augment.policy"] != "none")
        assert ("augment.noise_std" in p) == (
            p["augment.policy"] == "heavy" and p.get("augment.rotation") == 30
        )


def test_param_names_are_dotted_and_parents_first(space: SearchSpace) -> None:
    names = space.param_names
    assert "optim.lr@sgd" in names and "model.checkpoint_segments@mobile" not in names  # fixed
    assert names.index("augment.policy") < names.index("augment.rotation")
    assert names.index("augment.rotation") < names.index("augment.noise_std")
    assert set(space.distributions()) == set(names)


def test_fidelity_is_readable(space: SearchSpace) -> None:
    assert (space.min_epochs, space.max_epochs, space.reduction_factor) == (2, 12, 3)
    no_fid = SearchSpace.from_dict({"params": {"epochs": {"type": "int", "low": 3, "high": 40}}})
    assert (no_fid.fidelity, no_fid.min_epochs, no_fid.max_epochs) == (None, 1, 40)
    assert SearchSpace.from_dict({}).max_epochs is None


def test_summary_lists_every_param_and_condition(space: SearchSpace) -> None:
    text = space.summary()
    for name in space.params:
        assert name in text
    assert "when optim.optimizer in ['sgd']" in text
    assert "budget: 2..12 epochs" in text
    assert space.fingerprint() in text


def test_to_dict_round_trips_through_json(space: SearchSpace) -> None:
    again = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())), source="study")
    assert again == space
    assert again.fingerprint() == space.fingerprint()
    cfg_params = {
        "model.backbone": "mobilenet_v3_small",
        "optim.optimizer": "adamw",
        "optim.lr@adamw": 1e-3,
        "augment.policy": "none",
        "batch_size": 32,
        "label_smoothing": 0.0,
        "tta": False,
    }
    assert again.suggest(FixedTrial(cfg_params)) == space.suggest(FixedTrial(cfg_params))


def test_condition_on_a_stepped_float_matches_sampled_values() -> None:
    # Optuna builds stepped floats as low + k*step, which can miss 0.3 by one ulp
    space = SearchSpace.from_dict(
        {
            "params": {
                "label_smoothing": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
                "augment.mixup_alpha": {
                    "type": "categorical",
                    "choices": [0.2, 0.4],
                    "when": {"label_smoothing": 0.3},
                },
            }
        }
    )
    noisy = math.nextafter(0.3, 0.0)
    assert noisy != 0.3
    trial = FixedTrial({"label_smoothing": noisy, "augment.mixup_alpha": 0.4})
    assert space.suggest(trial).augment.mixup_alpha == 0.4
    assert "augment.mixup_alpha" in trial.params
