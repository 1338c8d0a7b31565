"""Results runs: the retrain's, the final model's and the distilled student's MLflow runs,
with their logged models, children of the study's parent run."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.evaluation import HonestEvaluation
from medauto.keys import PARENT_RUN_ATTR
from medauto.logging import get_logger
from medauto.model_file import MODEL_KIND
from medauto.storage import redact_url

if TYPE_CHECKING:
    import optuna

    from medauto.distill import DistillResult
    from medauto.retrain.results import RetrainResult

from medauto.tracking._store import _artifact_location
from medauto.tracking._store import _experiment_id
from medauto.tracking._store import _log_pyfunc_model
from medauto.tracking._store import _unreachable
from medauto.tracking._store import mlflow_client

_logger = get_logger(__name__)


def _parent_and_experiment(
    client: Any, study: optuna.Study, uri: str, artifact_location: str | None
) -> tuple[str | None, str]:
    """The study's parent run (``None`` if it is not in this store) and its experiment
    (the study's experiment, created if missing, when there is no parent here)."""
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent is not None:
        try:
            return parent, str(client.get_run(parent).info.experiment_id)
        except Exception:  # noqa: BLE001 - the search logged elsewhere: no parent here
            _logger.warning("the study's MLflow parent run %s is not in %s; logging the "
                            "results run without a parent", parent, redact_url(uri))
    return None, _experiment_id(client, study.study_name, artifact_location)


@dataclass(frozen=True)
class _ModelToLog:
    """One logged model of a results run: its folder, name, params and test metrics."""

    name: str
    folder: Path
    params: dict[str, str]
    metrics: dict[str, float]


def _log_results_run(
    study: optuna.Study, uri: str, artifact_location: str | None, *, role: str,
    params: dict[str, Any],
    metrics: dict[str, float], tags: dict[str, str], files: Sequence[Path],
    models: Sequence[_ModelToLog], out: Path, history: Sequence[Mapping[str, float]] = (),
) -> dict[str, Any] | None:
    """A ``role`` run (child of the study's parent run) with its params, metrics (and the
    per-epoch ``history``: its ``epoch`` is 0-based, MLflow's step 1-based), files and
    pyfunc logged models. Never raises: a failure is logged at WARNING, ``None`` returned."""
    error = _unreachable(uri, 3.0)
    if error is not None:
        _logger.warning("MLflow tracking server %s is unreachable (%s); the %s results are "
                        "only in %s", redact_url(uri), error, role, out)
        return None
    try:
        from mlflow.entities import Metric
        from mlflow.entities import Param
        from mlflow.entities import RunTag

        client = mlflow_client(uri)
        parent, experiment_id = _parent_and_experiment(client, study, uri, artifact_location)
        run_tags = {"medauto.role": role, "medauto.study": study.study_name}
        if parent is not None:
            run_tags["mlflow.parentRunId"] = parent
        run_id = client.create_run(experiment_id, run_name=role, tags=run_tags).info.run_id
        now = int(time.time() * 1000)
        per_epoch = [Metric(k, float(v), now, int(e["epoch"]) + 1) for e in history
                     for k, v in e.items() if k != "epoch" and math.isfinite(float(v))]
        client.log_batch(
            run_id, metrics=per_epoch + [Metric(k, v, now, 0) for k, v in metrics.items()
                                         if math.isfinite(v)],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        for path in files:
            client.log_artifact(run_id, str(path))
        model_tags = {"medauto.study": study.study_name, "medauto.format": MODEL_KIND}
        model_ids = [
            _log_pyfunc_model(client, experiment_id, run_id, m.folder, name=m.name,
                              params=m.params, tags=model_tags, metrics=m.metrics)
            for m in models
        ]
        client.set_terminated(run_id, status="FINISHED")
    except Exception as e:  # noqa: BLE001 - tracking must never fail finished results
        _logger.warning("MLflow logging of the %s results failed (%s: %s); the results are "
                        "in %s", role, type(e).__name__, redact_url(str(e))[:300], out)
        return None
    return {"tracking_uri": redact_url(uri), "experiment_id": experiment_id, "run_id": run_id,
            "parent_run_id": parent, "model_ids": model_ids}


def log_retrain(
    study: optuna.Study, result: RetrainResult, out: Path, uri: str, *, run_dir: Path,
    files: Sequence[Path] = (),
) -> dict[str, Any] | None:
    """Logs a ``retrain`` run (child of the study's parent run) and one pyfunc logged model
    per retrained model (its folder: ``model.pt``, ``model.json``, the int8 copy).

    Args:
        study: The retrained study.
        result: What the retrain measured (``result.models`` name the files under ``out``).
        out: The retrain folder (``result.models[i].path`` are relative to it).
        uri: The MLflow tracking URI.
        run_dir: The search's run folder (a new experiment's artifacts go under it).
        files: Files logged as artifacts of the run (the results file, the predictions).

    Returns:
        ``tracking_uri`` (redacted), ``experiment_id``, ``run_id``, ``parent_run_id`` and
        ``model_ids``; ``None`` when anything failed. Never raises: a failure is logged at
        WARNING.
    """
    params = {"ensemble": result.ensemble, "seeds": ",".join(map(str, result.seeds)),
              "train_on_val": result.train_on_val, "weights": result.weights,
              "device": result.device, "trials": ",".join(map(str, result.trials)),
              "quantize": result.quantization.method if result.quantization else "none"}
    metrics = {f"test_{k}_mean": v for k, v in result.test_mean.items()}
    metrics |= {f"test_{k}_std": v for k, v in result.test_std.items()}
    if result.evaluation:
        metrics |= HonestEvaluation.from_dict(result.evaluation).flat_metrics("test_")
    q = result.quantization
    if q is not None and q.error is None:
        metrics |= {"int8_test_acc": q.int8_test["acc"], "int8_test_auc": q.int8_test["auc"],
                    "int8_size_ratio": q.size_ratio}
    models = [
        _ModelToLog(m.name, (out / m.path).parent,
                    {"trial": str(m.trial), "seed": str(m.seed), "backbone": m.backbone,
                     "weights": m.weights},
                    {f"test_{k}": v for k, v in m.test.items()})
        for m in result.models
    ]
    return _log_results_run(
        study, uri, _artifact_location(run_dir), role="retrain", params=params, metrics=metrics,
        tags={"medauto.trials": ",".join(map(str, result.trials)),
              "medauto.n_test": str(result.n_test)},
        files=files, models=models, out=out,
    )



def log_distill(
    study: optuna.Study, result: DistillResult, epochs: Sequence[Mapping[str, float]],
    out: Path, uri: str, *, run_dir: Path, files: Sequence[Path] = (),
) -> dict[str, Any] | None:
    """Logs a ``distill`` run (child of the study's parent run): the student's per-epoch
    metrics and test metrics, and the student (its folder ``out``) as a pyfunc logged model.

    Returns:
        As :func:`log_retrain`; ``None`` when anything failed. Never raises.
    """
    metrics = {f"test_{k}": float(v) for k, v in result.test.items()
               if v is not None and math.isfinite(float(v))}
    params = {"student": result.student, "student_trial": result.student_trial,
              "temperature": result.temperature, "alpha": result.alpha,
              "mode": result.mode, "device": result.device}
    model = _ModelToLog("student", out, {"backbone": result.student,
                                         "temperature": str(result.temperature),
                                         "alpha": str(result.alpha)}, metrics)
    return _log_results_run(
        study, uri, _artifact_location(run_dir), role="distill", params=params,
        metrics=metrics, tags={"medauto.n_test": str(result.n_test)}, files=files,
        models=[model], out=out, history=epochs,
    )
