"""The ``portfolio:`` section: validated against its space, and the fixed recipe in it."""

from __future__ import annotations

from typing import Any

import pytest

from medauto.exceptions import SearchSpaceError
from medauto.space import SearchSpace
from medauto.space import list_spaces

SPACE: dict[str, Any] = {
    "name": "p",
    "fixed": {"epochs": 2},
    "params": {
        "optim.optimizer": ["adamw", "sgd"],
        "optim.lr@adamw": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True,
                           "when": {"optim.optimizer": "adamw"}},
        "optim.lr@sgd": {"type": "float", "low": 1e-3, "high": 0.3, "log": True,
                         "when": {"optim.optimizer": "sgd"}},
        "batch_size": [32, 64],
    },
}


def _space(portfolio: Any) -> SearchSpace:
    return SearchSpace.from_dict({**SPACE, "portfolio": portfolio}, source="p.yaml")


def test_every_shipped_portfolio_is_a_point_of_its_space() -> None:
    for name in list_spaces():
        space = SearchSpace.from_yaml(name)
        for entry in space.portfolio:
            space.config_from_params(entry.params)  # raises if not a complete point


def test_the_fixed_recipe_is_the_first_2d_and_3d_entry() -> None:
    cfg = SearchSpace.from_yaml("default").config_from_params(
        SearchSpace.from_yaml("default").portfolio[0].params)
    assert (cfg.model.backbone, cfg.optim.optimizer, cfg.optim.lr, cfg.optim.weight_decay) == (
        "resnet18", "adamw", 0.002, 0.05)
    assert (cfg.optim.scheduler, cfg.optim.warmup_epochs, cfg.epochs, cfg.batch_size) == (
        "onecycle", 10.0, 100, 128)
    a = cfg.augment
    assert (a.policy, a.hflip, a.vflip, a.rotation, a.scale, a.translate) == (
        "light", 0.5, 0.0, 15.0, 0.1, 0.1)
    assert (a.brightness, a.contrast, a.noise_std, a.mixup_alpha) == (0.0, 0.0, 0.0, 0.0)
    assert (cfg.label_smoothing, cfg.amp_dtype, cfg.tta, cfg.model.pretrained) == (
        0.1, "bf16", True, False)
    vol = SearchSpace.from_yaml("volumetric")
    assert vol.portfolio[0].name == "r3d_18-recipe"
    assert vol.config_from_params(vol.portfolio[0].params).model.checkpoint_segments is None


def test_base_entries_inherit_and_override() -> None:
    space = _space([
        {"name": "a", "params": {"optim.optimizer": "adamw", "optim.lr@adamw": 1e-3,
                                 "batch_size": 32}},
        {"name": "b", "base": "a", "params": {"batch_size": 64}},
    ])
    assert dict(space.portfolio[1].params) == {
        "optim.optimizer": "adamw", "optim.lr@adamw": 1e-3, "batch_size": 64}


def test_the_portfolio_round_trips_and_leaves_the_fingerprint_alone() -> None:
    space = _space([{"name": "a", "params": {"optim.optimizer": "sgd", "optim.lr@sgd": 0.1,
                                             "batch_size": 32}}])
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert space.fingerprint() == SearchSpace.from_dict(SPACE).fingerprint()


@pytest.mark.parametrize(("portfolio", "fragment"), [
    ("resnet18", "portfolio: must be a list of {name, params} mappings"),
    ([{"name": "a"}], "portfolio[0]: must be a mapping with keys name, params"),
    ([{"name": "a", "params": {"optim.optimizer": "adamw", "optim.lr@adamw": 0.5,
                               "batch_size": 32}}],
     "portfolio[a].params.optim.lr@adamw: must be inside FloatDistribution"),
    ([{"name": "a", "params": {"optim.optimizer": "adam", "batch_size": 32}}],
     "portfolio[a].params.optim.optimizer: must be inside CategoricalDistribution"),
    ([{"name": "a", "params": {"optim.optimizer": "adamw", "batch_size": 32}}],
     "must include the active param 'optim.lr@adamw'"),
    ([{"name": "a", "params": {"optim.optimizer": "adamw", "optim.lr@adamw": 1e-3,
                               "optim.lr@sgd": 0.01, "batch_size": 32}}],
     "portfolio[a].params: must be only params active for its choices, got ['optim.lr@sgd']"),
    ([{"name": "a", "params": {"optim.optimizer": "adamw", "optim.lr@adamw": 1e-3,
                               "batch_size": 32, "optim.momentum": 0.9}}],
     "must be names of this space's params"),
    ([{"name": "a", "base": "zz", "params": {}}], "portfolio[a].base: must be an earlier entry"),
    ([{"name": "a", "params": {"optim.optimizer": "sgd", "optim.lr@sgd": 0.1, "batch_size": 32}},
      {"name": "a", "params": {}}], "portfolio[1].name: must be unique"),
])
def test_bad_entries_are_refused_with_the_entry_and_param(portfolio: Any, fragment: str) -> None:
    with pytest.raises(SearchSpaceError) as info:
        _space(portfolio)
    assert str(info.value).startswith("p.yaml: portfolio")
    assert fragment in str(info.value)
