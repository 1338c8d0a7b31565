"""Trial-level faults inside real training must not kill the study.

Each test runs ``medauto search`` in-process (``main(argv)``) on the micro data with a fault
injected into the real training step (``med_core.training._loop``) or into a backbone
constructor registered for the test, and checks the trial's recorded state and reason and
that the search goes on to its target:

* NaN / inf loss → PRUNED, reason ``nan_loss`` (the trainer's own non-finite check fires);
* ``torch.OutOfMemoryError`` in the training step → PRUNED (the samplers learn from PRUNED
  trials; TPE ignores FAIL ones and would propose the same configuration again), reason
  ``oom`` with ``--no-oom-retry``; by default retried with gradient checkpointing on at the
  same batch, then at half the batch (up to three retries), which is what the fault needs
  to go away;
* an exception in a backbone constructor → FAIL with the error as reason, the study goes on;
  a backbone that always fails stops the search after ``--max-failures`` trials in a row
  instead of failing forever;
* a damaged ``last.pt`` on ``medauto train --resume`` → exit 1, a ``CheckpointError``
  naming the file, nothing else in the run folder touched.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from micro import MICRO_SPACE
from optuna.trial import TrialState
from reliability_helpers import tree_digest

from med_core.training import _loop
from medauto.cli import main
from medauto.storage import open_storage

#: Faults this module survives (read by tools/gen_reliability_doc.py); ``id`` matches
#: the test's parametrization.
FAULTS: list[dict[str, Any]] = [
    {"id": "nan", "fault": "NaN training loss", "expected": "PRUNED, reason nan_loss; study "
     "goes on"},
    {"id": "inf", "fault": "inf training loss", "expected": "PRUNED, reason nan_loss; study "
     "goes on"},
    {"id": "oom", "fault": "torch.OutOfMemoryError in the training step (--no-oom-retry)",
     "expected": "PRUNED (the sampler learns from it), reason oom; study goes on"},
    {"id": "oom-retry", "fault": "torch.OutOfMemoryError that needs checkpointing and a "
     "smaller batch", "expected": "retried with gradient checkpointing on, then at half "
     "the batch; COMPLETE; attempts recorded in user attr oom_retry; the next trial of that "
     "configuration starts at the rung that fit"},
    {"id": "oom-twice", "fault": "torch.OutOfMemoryError on every retry rung",
     "expected": "PRUNED, reason oom, after three retries"},
    {"id": "backbone", "fault": "exception in a backbone constructor",
     "expected": "FAIL, reason 'error: <Type>: <message>', user attr backbone names it; "
     "study goes on"},
    {"id": "backbone-always", "fault": "a backbone constructor that always fails",
     "expected": "search stops with exit 1 after --max-failures trials in a row"},
]
#: Corruptions of ``last.pt`` before ``medauto train --resume`` (id → message fragment).
CHECKPOINT_DAMAGE = {
    "truncated": "corrupt or unsafe",
    "empty": "corrupt or unsafe",
    "garbage": "corrupt or unsafe",
    "bit-flip": "CRC",
    "best-as-last": "resume needs a 'last' checkpoint",
    "other-config": "different config",
}
FAULTS += [
    {"id": f"checkpoint-{k}", "fault": f"last.pt {k} before `medauto train --resume`",
     "expected": f"exit 1, CheckpointError naming the file ('{v}'); other files untouched"}
    for k, v in CHECKPOINT_DAMAGE.items()
]


def _search(run: Path, data: Path, space: Path, *extra: str, trials: int = 2) -> int:
    return main([
        "search", "--selection", "holdout", "--no-final-model",
        "--data", "breastmnist", "--data-dir", str(data), "--space", str(space),
        "--trials", str(trials), "--study", "faults", "--run-dir", str(run), "--device", "cpu",
        "--no-progress", "--no-tracking", "--sampler", "random", *extra,
    ])


def _trials(run: Path) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(f"sqlite:///{run / 'medauto.db'}")
    return optuna.load_study(study_name="faults", storage=storage).get_trials()


def _states(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[str, Any]]:
    return [(t.state.name, t.user_attrs.get("reason")) for t in trials]


# -- NaN / inf ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_loss_prunes_the_trial_and_the_study_goes_on(
    bad: float, tmp_path: Path, micro_data_dir: Path, micro_space: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = _loop.training_loss
    calls = {"n": 0}

    def poisoned(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * bad if calls["n"] == 1 else loss  # the first step of the first trial

    monkeypatch.setattr(_loop, "training_loss", poisoned)
    assert _search(tmp_path, micro_data_dir, micro_space) == 0
    trials = _trials(tmp_path)
    assert _states(trials) == [("PRUNED", "nan_loss"), ("COMPLETE", None)]


# -- out of memory -----------------------------------------------------------------------


class _OomFault:
    """Raises ``torch.OutOfMemoryError`` from the training step's forward pass.

    ``needs``: the step fails unless its batch is at most this size AND gradient
    checkpointing is on (what ``--oom-retry`` changes); ``first``: only the first N steps
    fail, whatever they run with. Every step's (batch size, checkpointing on) is kept.
    """

    def __init__(self, *, needs: int | None = None, first: int = 0) -> None:
        self.needs = needs
        self.first = first
        self.seen: list[tuple[int, bool]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = _loop.TrainStep.forward
        fault = self

        def forward(step: _loop.TrainStep, x: torch.Tensor, target: torch.Tensor) -> Any:
            backbone: Any = step.model.backbone
            checkpointed = bool(backbone.is_gradient_checkpointing_enabled())
            fault.seen.append((int(x.shape[0]), checkpointed))
            fits = fault.needs is not None and x.shape[0] <= fault.needs and checkpointed
            if len(fault.seen) <= fault.first or (fault.needs is not None and not fits):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return real(step, x, target)

        monkeypatch.setattr(_loop.TrainStep, "forward", forward)


def test_oom_prunes_the_trial_so_the_sampler_learns(
    tmp_path: Path, micro_data_dir: Path, micro_space: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = _OomFault(first=1)
    fault.install(monkeypatch)
    assert _search(tmp_path, micro_data_dir, micro_space, "--no-oom-retry") == 0
    trials = _trials(tmp_path)
    assert _states(trials) == [("PRUNED", "oom"), ("COMPLETE", None)]
    assert "oom_retry" not in trials[0].user_attrs  # --no-oom-retry: no retry


def test_oom_retry_turns_checkpointing_on_then_halves_the_batch(
    tmp_path: Path, micro_data_dir: Path, micro_space: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default: batch 16 fits neither plainly nor checkpointed, batch 8 checkpointed
    does. The second trial (the same configuration) starts at the rung that fit."""
    fault = _OomFault(needs=8)
    fault.install(monkeypatch)
    assert _search(tmp_path, micro_data_dir, micro_space) == 0
    first_trial, second_trial = _trials(tmp_path)
    assert first_trial.state == second_trial.state == TrialState.COMPLETE
    retry = first_trial.user_attrs["oom_retry"]
    assert retry["batch_size"] == 8 and retry["checkpoint_segments"] == 0
    assert "OutOfMemoryError" in retry["first_error"]
    assert [(a["batch_size"], a["checkpoint_segments"]) for a in retry["attempts"]] == [
        (16, None), (16, 0)]  # the same batch checkpointed first, then half of it
    cfg = first_trial.user_attrs["config"]  # what was really trained
    assert cfg["batch_size"] == 8 and cfg["model"]["checkpoint_segments"] == 0
    assert fault.seen[:2] == [(16, False), (16, True)]
    first_fit = fault.seen.index((8, True))
    known = second_trial.user_attrs["oom_retry"]["attempts"]
    assert all(a["error"].startswith("known: ran out of memory") for a in known)
    # the second trial trained at once at the rung that fit: no step of it failed
    assert all(s == (8, True) for s in fault.seen[first_fit:]), fault.seen


def test_oom_on_every_rung_prunes_after_the_last_retry(
    tmp_path: Path, micro_data_dir: Path, micro_space: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = _OomFault(first=4)  # the first attempt and its three retries all fail
    fault.install(monkeypatch)
    assert _search(tmp_path, micro_data_dir, micro_space) == 0
    trials = _trials(tmp_path)
    assert _states(trials) == [("PRUNED", "oom"), ("COMPLETE", None)]
    assert fault.seen[:4] == [(16, False), (16, True), (8, True), (4, True)]
    assert len(trials[0].user_attrs["oom_retry"]["attempts"]) == 3
    assert trials[1].user_attrs["config"]["batch_size"] == 4  # known not to fit above


# -- backbone constructor ----------------------------------------------------------------


@pytest.fixture
def exploding_backbone() -> Iterator[dict[str, int]]:
    """Registers ``exploding_net``: its constructor raises on the first ``fail`` calls (all
    calls when ``fail`` is -1), then builds mobilenet_v3_small. Unregistered afterwards."""
    from med_core.backbones import _registry
    from med_core.backbones import get_backbone_cfg
    from med_core.backbones import register_backbone

    state = {"fail": 1, "calls": 0}
    real = _registry.lookup("mobilenet_v3_small")

    def build(**kwargs: Any) -> Any:
        state["calls"] += 1
        if state["fail"] < 0 or state["calls"] <= state["fail"]:
            raise RuntimeError("no kernel image is available for execution on the device")
        return real.builder(**kwargs)

    register_backbone("exploding_net", cfg=get_backbone_cfg("mobilenet_v3_small"))(build)
    try:
        yield state
    finally:
        _registry._BACKBONES.pop("exploding_net", None)


def _exploding_space(tmp_path: Path) -> Path:
    path = tmp_path / "exploding.yaml"
    path.write_text(MICRO_SPACE.replace("mobilenet_v3_small", "exploding_net"))
    return path


def test_backbone_constructor_error_fails_the_trial_and_the_study_goes_on(
    tmp_path: Path, micro_data_dir: Path, exploding_backbone: dict[str, int]
) -> None:
    space = _exploding_space(tmp_path)
    assert _search(tmp_path / "run", micro_data_dir, space, trials=1) == 0
    failed, done = _trials(tmp_path / "run")
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["reason"] == (
        "error: RuntimeError: no kernel image is available for execution on the device"
    )
    assert failed.user_attrs["backbone"] == "exploding_net"
    assert "build" in failed.user_attrs["traceback"]  # where it came from
    assert done.state == TrialState.COMPLETE


def test_a_backbone_that_always_fails_stops_the_search(
    tmp_path: Path, micro_data_dir: Path, exploding_backbone: dict[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    exploding_backbone["fail"] = -1
    space = _exploding_space(tmp_path)
    code = _search(tmp_path / "run", micro_data_dir, space, "--max-failures", "3")
    err = capsys.readouterr().err
    assert code == 1, err
    assert "3 trials in a row failed" in err and "no kernel image" in err
    assert _states(_trials(tmp_path / "run")) == [
        ("FAIL", "error: RuntimeError: no kernel image is available for execution on the device")
    ] * 3


# -- corrupt checkpoint on resume --------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(micro_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of `medauto train` on the micro data: last.pt, best.pt, config.yaml."""
    root = tmp_path_factory.mktemp("trained")
    cfg = {"data": {"dataset": "breastmnist", "data_dir": str(micro_data_dir),
                    "loader": "tensor"},
           "model": {"backbone": "mobilenet_v3_small"}, "augment": {"policy": "none"},
           "epochs": 1, "batch_size": 16}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(root / "cfg.yaml"), "--device", "cpu",
                 "--out", str(root / "out")]) == 0
    assert (root / "out" / "last.pt").is_file() and (root / "out" / "best.pt").is_file()
    return root


def _damage(out: Path, how: str, cfg: Path) -> Path:
    last = out / "last.pt"
    data = last.read_bytes()
    if how == "truncated":
        last.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        last.write_bytes(b"")
    elif how == "garbage":
        last.write_bytes(b"\x00\xffnot a checkpoint" * 64)
    elif how == "bit-flip":  # one byte inside a weight tensor: still a valid zip layout
        import zipfile

        with zipfile.ZipFile(last) as zf:
            info = max(zf.infolist(), key=lambda i: i.file_size)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        flipped = bytearray(data)
        flipped[start + info.file_size // 2] ^= 0xFF
        last.write_bytes(bytes(flipped))
    elif how == "best-as-last":
        shutil.copyfile(out / "best.pt", last)
    elif how == "other-config":
        other = yaml.safe_load(cfg.read_text())
        other["optim"] = {"lr": 0.5}
        changed = cfg.with_name("other.yaml")
        changed.write_text(yaml.safe_dump(other))
        return changed
    return cfg


@pytest.mark.parametrize("how", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint_on_resume_is_refused_naming_the_file(
    how: str, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(trained_run / "out", out)
    cfg = _damage(out, how, trained_run / "cfg.yaml")
    before = tree_digest(out)
    code = main(["train", "--config", str(cfg), "--device", "cpu", "--out", str(out),
                 "--resume"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert str(out / "last.pt") in err and CHECKPOINT_DAMAGE[how] in err, err
    assert tree_digest(out) == before  # the damaged file, best.pt and the rest: as they were


def test_api_resume_from_a_bit_flipped_checkpoint_raises_checkpoint_error(
    trained_run: Path, tmp_path: Path
) -> None:
    from med_core.config import TrainConfig
    from med_core.exceptions import CheckpointError
    from med_core.training import Trainer

    out = tmp_path / "out"
    shutil.copytree(trained_run / "out", out)
    cfg = _damage(out, "bit-flip", trained_run / "cfg.yaml")
    trainer = Trainer(TrainConfig.from_yaml(cfg), device="cpu", out_dir=out, progress=False)
    with pytest.raises(CheckpointError, match="CRC") as info:
        trainer.fit(resume=True)
    assert str(out / "last.pt") in str(info.value)
