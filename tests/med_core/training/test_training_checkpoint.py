"""Checkpoint I/O: atomic writes, weights_only loading, corrupt and unsafe files, RNG state."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from med_core.exceptions import CheckpointError
from med_core.training import load_checkpoint
from med_core.training._checkpoint import FORMAT_VERSION
from med_core.training._checkpoint import capture_rng_state
from med_core.training._checkpoint import restore_rng_state
from med_core.training._checkpoint import save_checkpoint


def test_roundtrip_is_weights_only_and_atomic(tmp_path: Path) -> None:
    state = {"format_version": FORMAT_VERSION, "w": torch.arange(3.0), "cfg": {"a": [1, "x", None]}}
    p = save_checkpoint(tmp_path / "sub" / "last.pt", state)
    assert sorted(x.name for x in p.parent.iterdir()) == ["last.pt"]  # no temp file left
    back = load_checkpoint(p)
    assert torch.equal(back["w"], state["w"]) and back["cfg"] == state["cfg"]


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


@pytest.mark.parametrize("kind", ["missing", "truncated", "garbage", "pickle_payload", "foreign"])
def test_bad_files_raise_checkpoint_error(tmp_path: Path, kind: str) -> None:
    p = tmp_path / "last.pt"
    if kind == "truncated":
        save_checkpoint(p, {"format_version": FORMAT_VERSION, "w": torch.randn(1000)})
        p.write_bytes(p.read_bytes()[:300])
    elif kind == "garbage":
        p.write_bytes(b"not a checkpoint at all")
    elif kind == "pickle_payload":
        torch.save({"format_version": FORMAT_VERSION, "x": _Evil()}, p)
    elif kind == "foreign":
        torch.save({"state_dict": {}}, p)
    match = {"missing": "does not exist", "foreign": "not a med_core checkpoint"}.get(
        kind, "corrupt or unsafe"
    )
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(p)


def test_pickle_payload_is_not_executed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps({"format_version": FORMAT_VERSION, "x": _Evil()}, protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(p)
    assert "pwned" not in capsys.readouterr().out


def test_rng_state_roundtrip_through_weights_only_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    save_checkpoint(tmp_path / "rng.pt", {"format_version": FORMAT_VERSION, "rng": state})
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]
