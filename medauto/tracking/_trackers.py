"""The search's trackers: a parent run per study, a child run per trial (see the
package docstring)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from med_core.training.callbacks import Callback
from medauto._background import BackgroundWriter
from medauto.final import FINAL_FILE
from medauto.final import FinalResult
from medauto.keys import BEST_EPOCH_ATTR
from medauto.keys import DEVICE_ATTR
from medauto.keys import MLFLOW_RUN_ATTR
from medauto.keys import PARENT_RUN_ATTR
from medauto.keys import PRUNED_AT_EPOCH_ATTR
from medauto.keys import REASON_ATTR
from medauto.logging import get_logger
from medauto.storage import redact_url
from medauto.worker import record_phase
from medauto.worker import timed

if TYPE_CHECKING:
    import optuna

    from med_core.config import TrainConfig
    from med_core.training import Trainer

from medauto.tracking._results import _log_results_run
from medauto.tracking._results import _ModelToLog
from medauto.tracking._store import _artifact_location
from medauto.tracking._store import _experiment_id
from medauto.tracking._store import _system_metrics
from medauto.tracking._store import _unreachable
from medauto.tracking._store import default_tracking_uri
from medauto.tracking._store import mlflow_client

_logger = get_logger(__name__)
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
#: Parent runs of a study started this many seconds apart count as one race (see
#: ``MlflowTracker._create_parent_run``); an older running parent is a dead study's.
PARENT_RACE_WINDOW_S = 300.0
#: Seconds a new parent run waits before looking for rivals: longer than a run takes to be
#: committed, so every rival that started earlier is visible by then.
PARENT_SETTLE_S = 1.0


def tracking_uri(tracking: bool | str | BaseTracker | None, run_dir: str | Path) -> str | None:
    """The MLflow URI a ``tracking`` argument means (``None``: tracking is off).

    ``None``/``True`` → :func:`default_tracking_uri`; a string → itself; an
    :class:`MlflowTracker` → its URI; ``False`` or another tracker → ``None``.
    """
    if isinstance(tracking, MlflowTracker):
        return tracking.tracking_uri
    if isinstance(tracking, BaseTracker) or tracking is False:
        return None
    return default_tracking_uri(run_dir) if tracking in (None, True) else str(tracking)


class BaseTracker:
    """What the optimizer asks of a tracker; every hook is a no-op here."""

    def start_study(self, study: optuna.Study) -> None:
        """Called once per process after the study is opened."""

    def schedule_study(self, study: optuna.Study) -> None:
        """Called when a study is created without training (``medauto create-study``)."""

    def trial_callback(self, trial: optuna.trial.BaseTrial, cfg: TrainConfig) -> Callback | None:
        """A trainer callback that logs this trial, or ``None``."""
        return None

    def end_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Called after the trial's final state is recorded in the study."""

    def end_study(self, study: optuna.Study, *, finished: bool) -> None:
        """Called when this process stops working on the study (``finished``: target met)."""

    def log_final(self, study: optuna.Study, final: FinalResult, folder: Path) -> None:
        """Called with the final model once it is built and tested (``folder``: its
        :func:`medauto.final.final_dir`)."""


class NullTracker(BaseTracker):
    """Tracks nothing (``tracking=False``)."""


class _TrialRun(Callback):
    """Logs a trial's per-epoch metrics into its MLflow child run (rank 0 only), through
    the tracker's background writer (the epoch does not wait for the store)."""

    def __init__(self, tracker: MlflowTracker, run_id: str) -> None:
        self.tracker = tracker
        self.run_id = run_id

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if not trainer.is_main_process:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch + 1) for k, v in metrics.items()]
        self.tracker._write("log epoch metrics", self.tracker.client.log_batch, self.run_id,
                            batch)


class MlflowTracker(BaseTracker):
    """Logs a study to MLflow through ``MlflowClient`` with explicit parent/child run ids.

    Only the creation of a trial's run waits for the store (its id is recorded on the
    trial); every other write of a trial (params, per-epoch metrics, system metrics, the
    closing tags and status) goes through one background writer
    (:class:`medauto._background.BackgroundWriter`), in order, off the trial's critical
    path. :meth:`flush` waits for them; :meth:`end_study` flushes before it closes the
    study's run.

    Args:
        tracking_uri: Any MLflow tracking URI (``sqlite:///...``, ``http://host:5000``,
            a ``file:`` store).
        experiment: Experiment name; ``None`` → the study name.
        artifact_location: Where a new experiment stores artifacts (a URI); ``None`` lets
            MLflow choose (``./mlruns`` of the working directory for a database store).
        reach_timeout: Seconds to wait when checking that an HTTP server answers.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        experiment: str | None = None,
        artifact_location: str | None = None,
        reach_timeout: float = 3.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location
        self.experiment = experiment
        self.reach_timeout = reach_timeout
        self.enabled = True
        self._client: Any = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._runs: dict[int, str] = {}
        self._monitors: dict[int, Any] = {}  # touched on the writer thread only
        self._writer = BackgroundWriter("medauto-mlflow", on_error=self._disable)

    @property
    def client(self) -> Any:
        if self._client is None:

            self._client = mlflow_client(self.tracking_uri)
        return self._client

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Runs an MLflow call; on failure, warns once and disables tracking."""
        if not self.enabled:
            yield
            return
        try:
            yield
        except Exception as e:  # noqa: BLE001 - tracking must never stop a search
            self._disable(what, e)

    def _disable(self, what: str, e: BaseException) -> None:
        """Turns tracking off for this process after ``e`` (the first failure warns)."""
        if not self.enabled:
            return
        self.enabled = False
        _logger.warning(
            "MLflow tracking at %s failed (%s: %s) while trying to %s; "
            "tracking is off for this process, the search goes on",
            redact_url(self.tracking_uri), type(e).__name__, redact_url(str(e))[:300], what,
        )

    def _write(self, what: str, fn: Any, *args: Any) -> None:
        """Queues the MLflow write ``fn(*args)``; skipped once tracking is off."""
        def write() -> None:
            if self.enabled:
                fn(*args)

        self._writer.submit(what, write)

    def flush(self) -> None:
        """Waits until every queued MLflow write of this process is in the store."""
        self._writer.flush()

    def _reachable(self) -> bool:
        error = _unreachable(self.tracking_uri, self.reach_timeout)
        if error is None:
            return True
        self.enabled = False
        _logger.warning(
            "MLflow tracking server %s is unreachable (%s); tracking is off, the search "
            "goes on", redact_url(self.tracking_uri), error,
        )
        return False

    def start_study(self, study: optuna.Study) -> None:
        with timed("tracking_start_study"):
            self._start_study(study)

    def schedule_study(self, study: optuna.Study) -> None:
        """Creates the experiment and the parent run (status SCHEDULED) up front, so that
        the workers that join later find them and none of them creates its own."""
        self._start_study(study)
        if self.parent_run_id is not None and self.enabled:
            with self._guard("schedule the study run"):
                self.client.update_run(self.parent_run_id, status="SCHEDULED")

    def _start_study(self, study: optuna.Study) -> None:
        if not self._reachable():
            return
        with self._guard("create the experiment and parent run"):
            self.experiment_id = _experiment_id(
                self.client, self.experiment or study.study_name, self.artifact_location
            )
            parent = study.user_attrs.get(PARENT_RUN_ATTR)
            if parent is None:
                parent = self._create_parent_run(study.study_name)
                study.set_user_attr(PARENT_RUN_ATTR, parent)
            elif self.client.get_run(parent).info.status != "RUNNING":
                self.client.update_run(parent, status="RUNNING")  # the study resumes
            self.parent_run_id = parent

    def _create_parent_run(self, name: str) -> str:
        """Creates the parent run of a new study ``name`` and returns the one to use.

        Workers that join a new study at the same moment each create one. Each waits
        :data:`PARENT_SETTLE_S`, so that every rival started before its own is committed,
        then all keep the earliest running parent of this study (started at most
        :data:`PARENT_RACE_WINDOW_S` before their own; ties by run id): all pick the same,
        and the others delete theirs."""
        mine = self.client.create_run(
            self.experiment_id, run_name=name,
            tags={"medauto.study": name, "medauto.role": "study"},
        ).info
        time.sleep(PARENT_SETTLE_S)
        rivals = self.client.search_runs(  # the study name is compared here, unquoted
            [self.experiment_id],
            filter_string="tags.`medauto.role` = 'study' and attributes.status = 'RUNNING'",
        )
        since = mine.start_time - PARENT_RACE_WINDOW_S * 1000
        first = min((r.info for r in rivals if r.data.tags.get("medauto.study") == name
                     and r.info.start_time >= since),
                    key=lambda info: (info.start_time, info.run_id), default=mine)
        if first.run_id != mine.run_id:
            self.client.delete_run(mine.run_id)
        return str(first.run_id)

    def trial_callback(self, trial: optuna.trial.BaseTrial, cfg: TrainConfig) -> Callback | None:
        if not self.enabled or self.experiment_id is None:
            return None
        from mlflow.entities import Param

        number = trial.number
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "medauto.trial": str(number),
            "medauto.role": "trial",
            "medauto.worker": f"{socket.gethostname()}",
        }
        try:
            run = self._writer.call("create the trial run", self.client.create_run,
                                    self.experiment_id, None, tags, f"trial-{number}")
        except Exception:  # noqa: BLE001 - on_error has warned and turned tracking off
            return None
        run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in sorted(cfg.flatten().items())]
        for i in range(0, len(params), 90):  # MLflow caps params per batch at 100
            self._write("log the trial's params", self.client.log_batch, run_id, (),
                        params[i : i + 90])
        self._runs[number] = run_id
        trial.set_user_attr(MLFLOW_RUN_ATTR, run_id)
        self._write("start the system metrics", self._start_monitor, number, run_id)
        return _TrialRun(self, run_id)

    def _start_monitor(self, number: int, run_id: str) -> None:
        monitor = _system_metrics(run_id, self.tracking_uri)
        if monitor is not None:
            self._monitors[number] = monitor

    def end_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Closes the trial's run (queued on the writer): one this process started, or an
        orphan — the run of a trial whose worker died (the heartbeat failed it), still
        RUNNING in MLflow."""
        run_id = self._runs.pop(trial.number, None)
        self._writer.submit("close the trial run", self._close_run, trial, run_id)

    def _close_run(self, trial: optuna.trial.FrozenTrial, run_id: str | None) -> None:
        monitor = self._monitors.pop(trial.number, None)
        if monitor is not None:
            monitor.finish()  # flushes its last samples into the run
        if not self.enabled:
            return
        if run_id is None:
            orphan = trial.user_attrs.get(MLFLOW_RUN_ATTR)
            if not orphan or not trial.state.is_finished():
                return
            if self.client.get_run(orphan).info.status != "RUNNING":
                return
            run_id = orphan
        from mlflow.entities import RunTag

        tags = [RunTag("medauto.state", trial.state.name.lower())]
        for key in (REASON_ATTR, PRUNED_AT_EPOCH_ATTR, DEVICE_ATTR, BEST_EPOCH_ATTR):
            if key in trial.user_attrs:
                tags.append(RunTag(f"medauto.{key}", str(trial.user_attrs[key])[:5000]))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, status=_STATUS.get(trial.state.name, "FAILED"))

    def end_study(self, study: optuna.Study, *, finished: bool) -> None:
        with timed("tracking_end_study"):
            self.flush()
        if self.parent_run_id is None or not self.enabled:
            return
        with timed("tracking_end_study"), self._guard("close the study run"):
            status = "FINISHED" if finished else "KILLED"
            self.client.set_terminated(self.parent_run_id, status=status)


    def log_final(self, study: optuna.Study, final: FinalResult, folder: Path) -> None:
        """Logs a ``final`` run (child of the study's parent run) with the final predictor
        as a pyfunc logged model, and ``final.json``. Never raises (see :func:`log_retrain`)."""
        if not self.enabled:
            return
        metrics = {f"test_{k}": float(v) for k, v in final.test.items()}
        members = ",".join(str(m["trial"]) for m in final.members)
        models = [_ModelToLog("final", folder / final.predictor, {"trials": members}, metrics)]
        logged = _log_results_run(
            study, self.tracking_uri, self.artifact_location, role="final",
            params={"selection": final.selection, "metric": final.metric,
                    "threshold": final.threshold, "device": final.device},
            metrics=metrics, tags={"medauto.n_test": str(final.n_test)},
            files=[folder / FINAL_FILE], models=models, out=folder,
        )
        if logged is not None:
            _logger.info("final model logged to MLflow: run %s, models %s", logged["run_id"],
                         ", ".join(logged["model_ids"]))


def make_tracker(tracking: bool | str | BaseTracker | None, run_dir: str | Path) -> BaseTracker:
    """``None``/``True`` → MLflow in ``run_dir``; ``False`` → none; a URI → MLflow there.

    New experiments keep their artifacts in ``run_dir/mlartifacts``. With the timing hook
    on (``medauto.worker.TIMING_ENV``) it records a ``study_opened`` point: the optimizer
    calls it right after opening the study.
    """
    now = time.time()
    record_phase("study_opened", now, now)
    if isinstance(tracking, BaseTracker):
        return tracking
    if tracking is False:
        return NullTracker()
    uri = default_tracking_uri(run_dir) if tracking in (None, True) else str(tracking)
    return MlflowTracker(uri, artifact_location=_artifact_location(run_dir))


