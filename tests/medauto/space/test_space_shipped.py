"""The shipped spaces load, resolve by name and sample valid, dimension-compatible configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest

from med_core.backbones import get_backbone_cfg
from med_core.config import TrainConfig
from medauto.space import SearchSpace
from medauto.space import list_spaces

REPO = Path(__file__).resolve().parents[3]
SHIPPED = sorted(p.stem for p in (REPO / "search_spaces").glob("*.yaml"))


def test_required_spaces_are_shipped() -> None:
    assert {"default", "fast", "volumetric"} <= set(SHIPPED)
    assert list_spaces() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_samples_valid_configs(name: str) -> None:
    space = SearchSpace.from_yaml(name)
    assert space.name == name
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    backbones = set()
    for _ in range(30):
        trial = study.ask()
        cfg = space.suggest(trial)
        study.tell(trial, 0.0)
        assert isinstance(cfg, TrainConfig)
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
        assert set(trial.params) <= set(space.param_names)
        bb = get_backbone_cfg(cfg.model.backbone)
        assert bb.spatial_dims == space.spatial_dims, cfg.model.backbone
        k = cfg.model.checkpoint_segments
        assert k is None or k == 0 or (bb.max_segments is not None and k <= bb.max_segments)
        assert cfg.epochs == space.max_epochs
        assert space.config_from_params(trial.params) == cfg
        backbones.add(cfg.model.backbone)
    assert len(backbones) > 1  # the draws explore the backbone choice
    # the optimizer stores to_dict() as JSON with the study and rebuilds the space from it
    again = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())), source="study")
    assert again == space and again.fingerprint() == space.fingerprint()


def test_volumetric_is_3d_and_default_is_2d() -> None:
    assert SearchSpace.from_yaml("volumetric").spatial_dims == 3
    assert SearchSpace.from_yaml("default").spatial_dims == 2
    assert SearchSpace.from_yaml("fast").spatial_dims == 2


def test_name_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_name = SearchSpace.from_yaml("fast")
    assert SearchSpace.from_yaml("fast.yaml") == by_name
    assert SearchSpace.from_yaml(REPO / "search_spaces" / "fast.yaml") == by_name
    # an existing file in the working directory wins over the shipped space
    (tmp_path / "fast.yaml").write_text("name: mine\nfixed: {epochs: 1}\n")
    monkeypatch.chdir(tmp_path)
    assert SearchSpace.from_yaml("fast.yaml").name == "mine"
    assert SearchSpace.from_yaml("fast").name == "fast"  # no file named 'fast' here


def _doc_yaml_blocks() -> list[str]:
    text = (REPO / "docs" / "search_spaces.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


def test_docs_examples_are_valid_spaces(tmp_path: Path) -> None:
    blocks = _doc_yaml_blocks()
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        path = tmp_path / f"doc_{i}.yaml"
        path.write_text(block)
        SearchSpace.from_yaml(path)
