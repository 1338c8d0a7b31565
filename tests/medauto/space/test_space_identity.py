"""fingerprint() identifies what a space samples; grid() feeds optuna's GridSampler."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import optuna
import pytest

from medauto.exceptions import SearchSpaceError
from medauto.space import SearchSpace

BASE = """
name: one
description: first wording
fixed:
  epochs: 3
  model.pretrained: false
params:
  optim.lr: {type: float, low: 1.0e-4, high: 0.1, log: true}
  batch_size: [32, 64]
  augment.policy: [none, light]
  augment.rotation: {type: float, low: 0, high: 20, when: {augment.policy: light}}
"""

# the same space: other key order, other number spelling, other name/description
SAME = """
params:
  augment.policy: {choices: [none, light], type: categorical}
  batch_size: {type: categorical, choices: [32, 64]}
  augment.rotation: {when: {augment.policy: [light]}, high: 20.0, low: 0.0, type: float}
  optim.lr: {log: true, high: 1.0e-1, low: 0.0001, type: float}
fixed:
  model: {pretrained: false}
  epochs: 3
description: second wording
name: two
"""


def _load(tmp_path: Path, text: str, name: str = "space.yaml") -> SearchSpace:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return SearchSpace.from_yaml(path)


def test_fingerprint_stable_across_key_order_and_spelling(tmp_path: Path) -> None:
    a = _load(tmp_path, BASE, "a.yaml")
    b = _load(tmp_path, SAME, "b.yaml")
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    assert a.fingerprint() == _load(tmp_path, BASE, "c.yaml").fingerprint()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("high: 0.1, log", "high: 0.2, log"),  # a changed range
        ("[32, 64]", "[64, 32]"),  # choice order: Optuna stores the index
        ("[32, 64]", "[32, 64, 128]"),
        ("epochs: 3", "epochs: 4"),  # a fixed value
        ("when: {augment.policy: light}", "when: {augment.policy: none}"),
        ("log: true", "log: false"),
    ],
)
def test_fingerprint_changes_with_what_is_sampled(tmp_path: Path, old: str, new: str) -> None:
    assert old in BASE
    a = _load(tmp_path, BASE, "a.yaml")
    b = _load(tmp_path, BASE.replace(old, new), "b.yaml")
    assert a.fingerprint() != b.fingerprint()


def test_grid_enumerates_an_all_discrete_space() -> None:
    space = SearchSpace.from_dict(
        {
            "fixed": {"epochs": 1},
            "params": {
                "optim.optimizer": ["adamw", "sgd"],
                "batch_size": {"type": "int", "low": 32, "high": 96, "step": 32},
                "label_smoothing": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.05},
                "tta": {"type": "fixed", "value": True},  # fixed: not part of the grid
            },
        }
    )
    grid = space.grid()
    assert grid == {
        "optim.optimizer": ["adamw", "sgd"],
        "batch_size": [32, 64, 96],
        "label_smoothing": [0.0, 0.05, 0.1],
    }
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    seen = []

    def objective(trial: optuna.Trial) -> float:
        seen.append(space.suggest(trial))
        return 0.0

    study.optimize(objective, n_trials=50)
    assert len(seen) == 18  # the sampler stops after the last grid point
    got = {(c.optim.optimizer, c.batch_size, round(c.label_smoothing, 6)) for c in seen}
    assert got == set(itertools.product(["adamw", "sgd"], [32, 64, 96], [0.0, 0.05, 0.1]))
    assert all(c.tta for c in seen)


def test_grid_refuses_a_continuous_float() -> None:
    space = SearchSpace.from_dict(
        {
            "params": {
                "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                "batch_size": [32, 64],
            }
        },
        source="lr.yaml",
    )
    with pytest.raises(
        SearchSpaceError,
        match=r"^lr\.yaml: params\.optim\.lr: must be discrete "
        r"for a grid search .*got float \[0\.0001, 0\.1\] log",
    ):
        space.grid()


def test_grid_refuses_a_huge_int_range() -> None:
    space = SearchSpace.from_dict({"params": {"seed": {"type": "int", "low": 0, "high": 10**6}}})
    with pytest.raises(SearchSpaceError, match=r"params\.seed: must have at most 10000 values"):
        space.grid()
