"""The retrained-model file: weights + config, loadable with ``weights_only=True`` only."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from med_core.config import TrainConfig
from med_core.models import build_classifier
from medauto.model_file import ModelFileError
from medauto.model_file import load_model
from medauto.model_file import save_model


class _Payload:
    """Unpickling this object would create ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def small_model() -> tuple[torch.nn.Module, TrainConfig]:
    cfg = TrainConfig.from_flat({"model.backbone": "mobilenet_v3_small", "seed": 3})
    torch.manual_seed(0)
    model = build_classifier(cfg.model, num_classes=2, in_chans=1, img_size=28)
    return model.eval(), cfg


def _meta() -> dict[str, object]:
    return {"task": "binary", "num_classes": 2, "in_chans": 1, "img_size": [28, 28],
            "trial": 4, "seed": 3, "test": {"auc": 0.9, "acc": float("nan")}}


def test_round_trip_rebuilds_the_same_model(
    small_model: tuple[torch.nn.Module, TrainConfig], tmp_path: Path
) -> None:
    model, cfg = small_model
    path = save_model(tmp_path / "m" / "model.pt", model, cfg, **_meta())
    raw = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert raw["kind"] == "medauto.model" and raw["config"] == cfg.to_dict()
    assert raw["test"] == {"auc": 0.9, "acc": None}  # NaN stored as None
    loaded = load_model(path)
    assert loaded.config == cfg and loaded.meta["trial"] == 4 and not loaded.model.training
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert not list(tmp_path.glob("m/.*.tmp"))  # the atomic write left no temporary file


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_crafted_pickle_is_refused_not_executed(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "executed"
    evil = tmp_path / "model.pt"
    payload = {"kind": "medauto.model", "format_version": 1, "x": _Payload(marker)}
    if how == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    with pytest.raises(ModelFileError, match="weights_only=True refused it"):
        load_model(evil)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    if how == "torch.save":
        torch.load(evil, weights_only=False)
        assert marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"model": {}}, "not a medauto model file"),
        ({"kind": "medauto.model", "format_version": 99}, "has model format 99"),
        ({"kind": "medauto.model", "format_version": 1, "model": {}, "num_classes": 2,
          "in_chans": 1}, r"is incomplete: it has no \['config'\]"),
    ],
)
def test_foreign_or_future_files_are_refused(tmp_path: Path, content: dict, message: str) -> None:
    path = tmp_path / "model.pt"
    torch.save(content, path)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_missing_or_truncated_file(
    small_model: tuple[torch.nn.Module, TrainConfig], tmp_path: Path
) -> None:
    with pytest.raises(ModelFileError, match="no model file"):
        load_model(tmp_path / "nope.pt")
    model, cfg = small_model
    path = save_model(tmp_path / "model.pt", model, cfg, **_meta())
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="corrupt or unsafe"):
        load_model(path)
