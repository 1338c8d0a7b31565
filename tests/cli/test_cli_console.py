"""What a search shows. The console: one INFO line per trial, epoch lines at DEBUG naming
their trial, log lines that never break the live bar, running counts that move, a budget
bar in time, a ``-q`` that silences MLflow's database set-up too. The dashboard: the
metric's name, a readable trial note, 1-based epochs. Real tiny searches, real output,
read back through Optuna's and optuna-dashboard's APIs."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from micro import MICRO_SPACE as _ONE_EPOCH

SUMMARY = re.compile(
    r"^\[I [\d:]+ medauto\.worker\] trial (\d+) (COMPLETE|PRUNED|FAIL)(?: \(.+\))?: "
    r"mobilenet_v3_small, (\d+) epochs?, (?:val_auc \d\.\d{4}, )?\d+\.\d s$"
)

#: Two epochs per trial: the console shows one epoch line per epoch.
MICRO_SPACE = _ONE_EPOCH.replace("max_epochs: 1,", "max_epochs: 2,")


def _search(space: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["search", "--space", str(space), "--data", "breastmnist", "--data-dir",
            str(data_dir), "--selection", "holdout", "--no-final-model", "--device", "cpu",
            "--run-dir", "runs", *extra]


def _segments(text: str) -> list[str]:
    """What a terminal draws from the start of a line: split at newlines and returns."""
    return [seg for line in text.split("\n") for seg in line.split("\r")]


@pytest.fixture(scope="module")
def searched(micro_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[str, optuna.Study]:
    """A real one-trial search with the CLI's handlers at -v and the bar forced on: what
    it wrote to stderr, and its study."""
    from medauto import AutoMLOptimizer
    from medauto.cli import main

    root = tmp_path_factory.mktemp("console")
    (root / "micro.yaml").write_text(MICRO_SPACE)
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MEDAUTO_STORAGE", raising=False)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(["status", "-v", "--run-dir", str(root / "none")])  # the CLI's handlers
            result = AutoMLOptimizer(
                "breastmnist", str(root / "micro.yaml"), data_dir=str(micro_data_dir), n_trials=1,
                device="cpu", run_dir=str(root / "runs"), selection="holdout",
                final_model=False, tracking=False, progress=True,
            ).optimize()
    return err.getvalue(), result.study


def test_a_search_logs_one_line_per_trial_through_the_bar_and_counts_it_running(
    searched: tuple[str, optuna.Study],
) -> None:
    text, _ = searched
    segments = _segments(text)
    summaries = [m for m in map(SUMMARY.match, segments) if m]
    assert [m.group(1) for m in summaries] == ["0"], text
    assert "val_auc" in summaries[0].group(0)  # the study's metric, not "value"
    epochs = [s for s in segments if re.search(r"\] trial 0: epoch [12]/2: ", s)]
    assert len(epochs) == 2 and all(s.startswith("[D ") for s in epochs), text
    # a record written through tqdm.write starts its own segment; one written past the
    # bar would be glued onto the bar's text
    records = [s for s in segments if re.search(r"\[[DIWE] \d\d:\d\d:\d\d ", s)]
    assert records and all(re.match(r"\[[DIWE] ", s) for s in records), records
    assert "trials:" in text and "running=1" in text, text


def test_the_dashboard_names_the_metric_and_shows_a_readable_note_with_1_based_epochs(
    searched: tuple[str, optuna.Study],
) -> None:
    import yaml
    from optuna_dashboard import get_note

    from medauto import _optuna_compat as compat

    _, study = searched
    assert study.metric_names == ["val_auc"]  # the dashboard's axis, not "Objective 0"
    frozen = study.trials[0]
    assert sorted(frozen.intermediate_values) == [1, 2]  # pruner steps
    assert [row["epoch"] for row in frozen.user_attrs["history"]] == [1, 2]
    assert frozen.user_attrs["best_epoch"] in (1, 2)
    note = get_note(optuna.Trial(study, compat.trial_id(frozen)))
    assert note.startswith(f"## Trial 0 · COMPLETE · val_auc {frozen.value:.4f}\n"), note
    assert f"- **best epoch**: {frozen.user_attrs['best_epoch']}" in note
    assert "- **backbone**: mobilenet_v3_small" in note
    rows = [line for line in note.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| epoch | train_loss | val_loss | val_auc")
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| 1", "| 2"]
    config = note.split("```yaml\n", 1)[1].split("\n```", 1)[0]
    assert yaml.safe_load(config) == frozen.user_attrs["config"]  # readable, and the same


def test_a_budget_bar_shows_time_elapsed_and_left_not_a_trial_count() -> None:
    from medauto._progress import SearchProgress

    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(), 0.75)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        with SearchProgress(10000, enabled=True, budget_s=600,
                            start=time.monotonic() - 90, refresh_s=0.05) as bar:
            bar.update(study)
            time.sleep(0.2)
    last = [s for s in _segments(err.getvalue()) if s.strip()][-1]
    assert "10000" not in err.getvalue()
    assert re.fullmatch(r"search: 01:3\d elapsed, 08:[23]\d left of 10:00 \|.+\|  1[56]%, "
                        r"trials 1 \(pruned 0, failed 0, running 0\), best 0\.7500", last), last


def test_quiet_silences_medauto_optuna_and_mlflow_info(
    micro_space: Path, micro_data_dir: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MEDAUTO_STORAGE", "MEDAUTO_TRACKING_URI", "MLFLOW_LOGGING_LEVEL")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [sys.executable, "-m", "medauto", *_search(micro_space, micro_data_dir, "--trials", "1",
                                                   "-q")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "mlflow.db").is_file()  # MLflow set its database up
    assert proc.stderr.strip() == "", proc.stderr
    assert "best trial: 0" in proc.stdout
