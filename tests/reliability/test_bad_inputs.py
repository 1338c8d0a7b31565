"""The bad-input matrix: one table of wrong inputs to the CLI and the Python API.

Every row names an input, the exit code (CLI, ``main(argv)`` in-process) or the exception
type (API), and a fragment of the message that tells the user what to fix. Every row runs
against a fresh copy of one prepared folder — an existing study with trials in its run
directory, data files and search spaces — and the whole folder must be byte-for-byte the
same afterwards (SQLite databases compared by content): a typo must neither damage an
existing study nor leave a half-created one behind.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from micro import MICRO_SPACE
from PIL import Image
from reliability_helpers import create_study
from reliability_helpers import tree_digest

from med_core.exceptions import ConfigError
from med_core.exceptions import DataError
from medauto import AutoMLOptimizer
from medauto.cli import main
from medauto.exceptions import MedautoError
from medauto.exceptions import SearchSpaceError
from medauto.exceptions import StorageError
from medauto.exceptions import StudyConflictError
from medauto.storage import open_storage

#: A password that must never be printed (the unreachable-database rows use it).
SECRET = "Sup3rSecretPw"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket is closed


UNREACHABLE = f"postgresql+psycopg://medauto:{SECRET}@127.0.0.1:{_closed_port()}/optuna"


@dataclass(frozen=True)
class Bad:
    """One bad input: ``call`` is CLI argv (``{w}`` = the prepared folder) or an API call."""

    id: str
    what: str
    call: tuple[str, ...] | Callable[[Path], Any]
    expect: int | type[BaseException]
    fragment: str

    @property
    def kind(self) -> str:
        return "CLI" if isinstance(self.call, tuple) else "API"


def _search(*change: str, drop: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``medauto search`` on the prepared folder, with options replaced/added by ``change``."""
    opts = {
        "--data": "breastmnist", "--data-dir": "{w}/data", "--space": "{w}/spaces/good.yaml",
        "--study": "fresh", "--run-dir": "{w}/run", "--trials": "2", "--device": "cpu",
    }
    extra: list[str] = []
    it = iter(change)
    for key in it:
        value = next(it)
        if key in opts:
            opts[key] = value
        else:
            extra += [key, value]
    argv = ["search", "--no-progress"]
    for key, value in opts.items():
        if key not in drop:
            argv += [key, value]
    return (*argv, *extra)


def _api(w: Path, **kwargs: Any) -> Any:
    base: dict[str, Any] = {
        "data": "breastmnist", "space": w / "spaces" / "good.yaml", "study_name": "fresh",
        "run_dir": w / "run", "data_dir": w / "data", "n_trials": 2, "device": "cpu",
        "progress": False, "selection": "holdout", "final_model": False,
    }
    base.update(kwargs)
    data = base.pop("data")
    space = base.pop("space")
    return AutoMLOptimizer(data, space, **base).optimize()


BAD_INPUTS: list[Bad] = [
    # -- search spaces
    Bad("yaml-syntax", "search space that is not valid YAML",
        _search("--space", "{w}/spaces/malformed.yaml"), 1, "malformed.yaml"),
    Bad("yaml-unknown-key", "unknown top-level key in a search space",
        _search("--space", "{w}/spaces/unknown_key.yaml"), 1, "paramz"),
    Bad("yaml-bad-range", "float range with low > high",
        _search("--space", "{w}/spaces/bad_range.yaml"), 1, "optim.lr"),
    Bad("yaml-wrong-type", "parameter bound of the wrong type",
        _search("--space", "{w}/spaces/wrong_type.yaml"), 1, "optim.weight_decay"),
    Bad("unknown-backbone-api", "unknown backbone name in a space (API)",
        lambda w: _api(w, space=w / "spaces" / "unknown_backbone.yaml"), SearchSpaceError,
        "resnet19"),
    Bad("space-missing", "search space file that does not exist",
        _search("--space", "{w}/spaces/nosuch.yaml"), 1, "nosuch"),
    Bad("yaml-python-tag", "YAML with a !!python/object tag (unsafe loader would run it)",
        _search("--space", "{w}/spaces/python_tag.yaml"), 1, "python_tag.yaml"),
    # -- storage
    Bad("storage-scheme", "storage URL with an unsupported scheme",
        _search("--storage", "mongodb://db/optuna"), 1, "unsupported storage URL scheme"),
    Bad("storage-no-scheme", "storage given as a bare file name",
        _search("--storage", "medauto.db"), 1, "has no scheme"),
    Bad("storage-memory-api", "in-memory SQLite URL (nothing to share or resume)",
        lambda w: _api(w, storage="sqlite:///:memory:"), StorageError, "must name a file"),
    Bad("storage-unreachable", "PostgreSQL server that is not running",
        _search("--storage", UNREACHABLE), 1, "cannot open storage"),
    Bad("status-unreachable", "`medauto status` against an unreachable database",
        ("status", "--study", "existing", "--storage", UNREACHABLE), 1, "Connection refused"),
    # -- data
    Bad("data-missing", ".npz file that does not exist",
        _search("--data", "{w}/data/missing.npz"), 1, "does not exist"),
    Bad("data-typo", "misspelt MedMNIST name (must not create the study)",
        _search("--data", "breastmnistt"), 1, "did you mean"),
    Bad("data-corrupt", ".npz file with garbage bytes",
        _search("--data", "{w}/data/corrupt.npz"), 1, "corrupt.npz"),
    Bad("data-label-count-api", ".npz whose labels do not match its images (API)",
        lambda w: _api(w, data=str(w / "data" / "label_count.npz")), DataError, "train"),
    Bad("data-label-shape", ".npz with 3-D label arrays",
        _search("--data", "{w}/data/label_shape.npz"), 1, "label"),
    Bad("data-single-class-val", "validation split with a single class (AUC undefined)",
        _search("--data", "{w}/data/val_one_class.npz"), 1, "single class"),
    Bad("data-stray-label", "one stray label 40 among 0/1 labels of a non-MedMNIST .npz",
        _search("--data", "{w}/data/stray_label.npz"), 1, "[0, 1, 40]"),
    Bad("data-empty-class-api", "image folder with an empty class folder (API)",
        lambda w: _api(w, data=str(w / "data" / "folder")), DataError, "empty"),
    # -- numbers and names
    Bad("trials-negative", "--trials -3", _search("--trials", "-3"), 1, "n_trials"),
    Bad("trials-zero-api", "n_trials=0 (API)", lambda w: _api(w, n_trials=0), MedautoError,
        "n_trials must be an integer >= 1"),
    Bad("trials-not-int", "--trials many", _search("--trials", "many"), 2, "invalid int"),
    Bad("timeout-negative", "--timeout -5", _search("--timeout", "-5"), 1, "timeout"),
    Bad("direction-api", "direction='up' (API)", lambda w: _api(w, direction="up"),
        MedautoError, "'maximize' or 'minimize'"),
    Bad("metric-typo", "--metric val_aucc (would fail every trial)",
        _search("--metric", "val_aucc"), 1, "did you mean 'val_auc'"),
    Bad("pruner-unknown", "--pruner medain", _search("--pruner", "medain"), 1, "medain"),
    Bad("sampler-unknown", "--sampler tpee", _search("--sampler", "tpee"), 1, "tpee"),
    Bad("pruner-arg-range", "--pruner percentile --pruner-arg percentile=150",
        _search("--pruner", "percentile", "--pruner-arg", "percentile=150"), 1, "percentile"),
    Bad("sampler-arg-form", "--sampler-arg without '='",
        _search("--sampler-arg", "n_startup_trials"), 1, "expected KEY=VALUE"),
    Bad("heartbeat-grace", "--grace-period not above --heartbeat-interval",
        _search("--heartbeat-interval", "5", "--grace-period", "2"), 2, "grace_period"),
    # -- studies
    Bad("study-path", "--study ../../../esc (a path, not a name)",
        _search("--study", "../../../esc"), 1, "not a valid name"),
    Bad("storage-journal-relative", "journal://relative.journal (journal URLs are absolute)",
        _search("--storage", "journal://relative.journal"), 1, "absolute path"),
    Bad("study-clash", "existing study name with a different search space",
        _search("--study", "existing", "--space", "{w}/spaces/other.yaml"), 1,
        "already exists with different settings"),
    Bad("study-clash-api", "existing study name with a different metric (API)",
        lambda w: _api(w, study_name="existing", metric="val_loss"), StudyConflictError,
        "metric"),
    Bad("worker-unknown-study", "`medauto worker` for a study that does not exist",
        ("worker", "--study", "nosuch", "--storage", "sqlite:///{w}/run/medauto.db"), 1,
        "no study named 'nosuch'"),
    Bad("worker-plain-study", "`medauto worker` for a study not created by medauto",
        ("worker", "--study", "plain", "--storage", "sqlite:///{w}/run/medauto.db"), 1,
        "no medauto settings"),
    Bad("worker-packing", "--trials-per-device 0",
        ("worker", "--study", "existing", "--storage", "sqlite:///{w}/run/medauto.db",
         "--trials-per-device", "0"), 2, "--trials-per-device must be >= 1"),
    Bad("train-config-key", "`medauto train` config with an unknown key",
        ("train", "--config", "{w}/spaces/train_unknown_key.yaml", "--out", "{w}/run/out"),
        1, "optimiser"),
]


# -- the prepared folder -----------------------------------------------------------------

SPACES = {
    "good.yaml": MICRO_SPACE,
    "other.yaml": MICRO_SPACE.replace("1.0e-2", "2.0e-2"),
    "malformed.yaml": "name: broken\nparams: {optim.lr: [0.1, 0.2\n",
    "unknown_key.yaml": MICRO_SPACE.replace("params:", "paramz:"),
    "bad_range.yaml": MICRO_SPACE.replace("low: 1.0e-3, high: 1.0e-2", "low: 1.0, high: 0.1"),
    "wrong_type.yaml": MICRO_SPACE + "  optim.weight_decay: {type: float, low: abc, high: 1}\n",
    "unknown_backbone.yaml": MICRO_SPACE.replace("mobilenet_v3_small", "resnet19"),
    "python_tag.yaml": MICRO_SPACE + "extra: !!python/object/apply:os.system ['touch {w}/pwned']\n",
    "train_unknown_key.yaml": "data: {dataset: breastmnist}\noptimiser: {lr: 0.1}\n",
}


@pytest.fixture(scope="module")
def pristine(micro_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data files and a run directory holding an existing study; copied for every row."""
    w = tmp_path_factory.mktemp("pristine")
    data = w / "data"
    data.mkdir()
    src = dict(np.load(micro_data_dir / "breastmnist.npz"))
    np.savez(data / "breastmnist.npz", **src)
    (data / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not really a zip archive" * 10)
    np.savez(data / "label_count.npz", **{**src, "train_labels": src["train_labels"][:-5]})
    np.savez(data / "label_shape.npz",
             **{**src, **{f"{s}_labels": src[f"{s}_labels"][:, :, None] for s in
                          ("train", "val", "test")}})
    val_labels = np.zeros_like(src["val_labels"])
    np.savez(data / "val_one_class.npz", **{**src, "val_labels": val_labels})
    stray = src["train_labels"].copy()
    stray[3] = 40
    np.savez(data / "stray_label.npz", **{**src, "train_labels": stray})
    for cls, n in (("benign", 4), ("malignant", 0)):
        folder = data / "folder" / cls
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(src["train_images"][i]).save(folder / f"{i}.png")
    # An existing medauto study with finished trials, and a plain Optuna study beside it.
    space = w / "good.yaml"
    space.write_text(MICRO_SPACE)
    db = w / "run" / "medauto.db"
    study = create_study(f"sqlite:///{db}", "existing", space, n_trials=4)
    space.unlink()
    dist = optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)
    for i, value in enumerate((0.61, 0.74)):
        study.add_trial(optuna.create_trial(
            params={"optim.lr": 1e-3 * (i + 2)}, distributions={"optim.lr": dist}, value=value,
            user_attrs={"epochs_run": 1},
        ))
    optuna.create_study(study_name="plain", storage=open_storage(f"sqlite:///{db}"))
    with sqlite3.connect(db) as conn:  # everything into the main file, so a copy is whole
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return w


@pytest.fixture
def world(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of :func:`pristine` plus the search spaces, for one row."""
    w = tmp_path / "w"
    shutil.copytree(pristine, w, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    spaces = w / "spaces"
    spaces.mkdir()
    for name, text in SPACES.items():
        (spaces / name).write_text(text.replace("{w}", str(w)))
    return w


def _fill(arg: str, w: Path) -> str:
    return arg.replace("{w}", str(w))


@pytest.mark.timeout(120)  # without the up-front checks some rows would train forever
@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.id for b in BAD_INPUTS])
def test_bad_input_is_refused_with_a_message_and_touches_nothing(
    bad: Bad, world: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDAUTO_STORAGE", raising=False)
    monkeypatch.delenv("MEDAUTO_TRACKING_URI", raising=False)
    monkeypatch.setenv("MEDAUTO_DATA_DIR", str(world / "data"))
    before = tree_digest(world)
    if isinstance(bad.call, tuple):
        try:
            code = main([_fill(a, world) for a in bad.call])
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
        err = capsys.readouterr().err
        assert code == bad.expect, err
        message = err
    else:
        with pytest.raises(Exception) as info:
            bad.call(world)
        assert isinstance(bad.expect, type) and isinstance(info.value, bad.expect), info.value
        message = str(info.value)
    assert bad.fragment in message, message
    assert SECRET not in message
    assert not (world / "pwned").exists()
    assert tree_digest(world) == before  # nothing created, changed or removed


def test_the_matrix_is_big_and_covers_both_entry_points() -> None:
    assert len(BAD_INPUTS) >= 20
    assert len({b.id for b in BAD_INPUTS}) == len(BAD_INPUTS)
    assert {b.kind for b in BAD_INPUTS} == {"CLI", "API"}
    named = (SearchSpaceError, StorageError, DataError, MedautoError, StudyConflictError,
             ConfigError)
    assert all(isinstance(b.expect, type) and issubclass(b.expect, named)
               for b in BAD_INPUTS if b.kind == "API")
