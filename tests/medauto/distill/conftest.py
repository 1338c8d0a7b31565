"""One real search (SQLite storage, MLflow store, final ensemble) and one real
``medauto distill --deploy-table`` of it, shared by the distill tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # distill_helpers is imported by name
    sys.path.insert(0, str(HERE))

from cli_runner import run_cli  # noqa: E402
from distill_helpers import SPACE  # noqa: E402
from distill_helpers import STUDY  # noqa: E402
from distill_helpers import Searched  # noqa: E402


@pytest.fixture(scope="session")
def searched(tmp_path_factory: pytest.TempPathFactory, tiny_data_dir: Path) -> Searched:
    root = tmp_path_factory.mktemp("distill")
    space = root / "space.yaml"
    space.write_text(SPACE)
    run_dir = root / "runs"
    code, out = run_cli(
        ["search", "--selection", "holdout", "--data", "breastmnist", "--space", str(space),
         "--trials", "2", "--study", STUDY, "--run-dir", str(run_dir), "--device", "cpu",
         "--no-progress", "--data-dir", str(tiny_data_dir), "--sampler", "random",
         "--seed", "1"],
        root,
    )
    assert code == 0, out
    return Searched(root, run_dir, tiny_data_dir, ["--study", STUDY, "--run-dir", str(run_dir)])


@pytest.fixture(scope="session")
def distilled(searched: Searched) -> tuple[Searched, str]:
    """``medauto distill`` with the deployment table; returns the search and its stdout."""
    code, out = run_cli(["distill", *searched.argv, "--device", "cpu", "--epochs", "2",
                         "--temperature", "3", "--alpha", "0.5", "--deploy-table",
                         "--latency-iters", "2", "--int8-eager"], searched.root)
    assert code == 0, out
    return searched, out
