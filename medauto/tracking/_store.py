"""Where medauto's MLflow data lives and the low-level calls every tracker shares:
URIs, reachability, experiments, system metrics, pyfunc logged models."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import torch

from medauto import __version__
from medauto.logging import get_logger
from medauto.serving import ServedModel

if TYPE_CHECKING:

    pass


_logger = get_logger(__name__)
#: MLflow 3's experiment tag that picks the UI: this value opens the classic training view
#: (runs, metrics, models); an untagged experiment may open as GenAI (traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_EXPERIMENT_KIND = "custom_model_development"
#: Seconds between two system-metrics samples of a trial run (MLflow's default is 10).
SYSTEM_METRICS_INTERVAL_S = 5.0
#: ``model_type`` of every model medauto logs.
MODEL_TYPE = "medauto-classifier"




def default_tracking_uri(run_dir: str | Path) -> str:
    """The zero-setup MLflow store: ``sqlite:///<run_dir>/mlflow.db``."""
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` of ``uri``. A new local SQLite store starts as a copy of an
    empty one made once per MLflow version in the user's cache folder
    (``$XDG_CACHE_HOME/medauto``, else ``~/.cache/medauto``): MLflow builds a new database
    by running its schema migrations, about 3 s of every first search in a run folder.
    Without a usable cache, MLflow builds the store itself as before."""
    from mlflow import MlflowClient

    path = _sqlite_path(uri)
    if path is not None and not path.exists():
        _seed_store(path)
    return MlflowClient(tracking_uri=uri)


def _sqlite_path(uri: str) -> Path | None:
    """The file of a plain ``sqlite:///`` URI (``None``: another store, or options)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or "?" in uri or uri == prefix:
        return None
    return Path(uri[len(prefix):])


def _private_suffix() -> str:
    """A temporary-file suffix of this process *and thread*: threads of one process that
    seed one store at once must not share (and unlink) each other's copy."""
    return f"{os.getpid()}.{threading.get_ident()}"


def _seed_store(path: Path) -> None:
    """Copies the cached empty store to ``path`` (made first if missing); every step is
    atomic, so workers that open one new store at once all see a whole database."""
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medauto"
    template = cache / f"mlflow-{mlflow.__version__}.db"
    try:
        if not template.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            fresh = template.with_name(f".{template.name}.{_private_suffix()}")
            mlflow.MlflowClient(tracking_uri=f"sqlite:///{fresh}").search_experiments()
            os.replace(fresh, template)
        path.parent.mkdir(parents=True, exist_ok=True)
        copy = path.with_name(f".{path.name}.{_private_suffix()}")
        shutil.copyfile(template, copy)
        _point_default_experiment_here(copy)
        try:
            os.link(copy, path)  # fails if another worker's copy got there first
        except FileExistsError:
            pass
        finally:
            copy.unlink()
    except Exception as e:  # noqa: BLE001 - MLflow builds the store itself then
        _logger.debug("no MLflow store template (%s: %s)", type(e).__name__, e)


def _point_default_experiment_here(db: Path) -> None:
    """MLflow gives a new store's ``Default`` experiment (id 0) the artifact folder
    ``<working directory>/mlruns/0``; the template holds the folder of the process that
    made it. Rewrites that one row as a new store here would have it.

    Raises:
        RuntimeError: the row is not there (another schema): no template is used then.
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as con, con:
        n = con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                        (str(Path.cwd() / "mlruns" / "0"),)).rowcount
    if n != 1:
        db.unlink()
        raise RuntimeError(f"{db}: no Default experiment to point at {Path.cwd()}")


def _artifact_location(run_dir: str | Path) -> str:
    """Where new experiments keep their artifacts: ``run_dir/mlartifacts`` (a URI)."""
    return (Path(run_dir).resolve() / "mlartifacts").as_uri()


def _unreachable(uri: str, timeout: float) -> OSError | None:
    """The connection error of an HTTP(S) tracking server that does not answer, else ``None``
    (a database or file store is always "reachable": its errors come from MLflow calls)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout):
            return None
    except OSError as e:
        return e


def _experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    """The id of the experiment ``name``, created (with ``artifact_location``) if missing;
    an experiment without a kind is tagged as a classic training one. Workers doing this
    at once are fine: the one that loses a race to create or tag it reads the winner's."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return str(client.create_experiment(
                name, artifact_location=artifact_location,
                tags={EXPERIMENT_KIND_TAG: CLASSIC_EXPERIMENT_KIND},
            ))
        except Exception:  # noqa: BLE001 - another worker created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in exp.tags:
        try:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG,
                                      CLASSIC_EXPERIMENT_KIND)
        except Exception:  # noqa: BLE001 - another worker tagged it first
            if EXPERIMENT_KIND_TAG not in client.get_experiment(exp.experiment_id).tags:
                raise
    return str(exp.experiment_id)


def _system_metrics(run_id: str, uri: str) -> Any:
    """MLflow's system-metrics monitor, started on ``run_id``; ``None`` without ``psutil``."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:  # MLflow's CPU/disk/network monitors need psutil
        return None
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                   tracking_uri=uri)
    monitor.start()
    return monitor


def _log_pyfunc_model(
    client: Any, experiment_id: str, run_id: str, folder: Path, *, name: str,
    params: dict[str, str], tags: dict[str, str], metrics: dict[str, float],
) -> str:
    """Logs ``folder`` (a model folder or a predictor folder) as a pyfunc logged model of
    ``run_id``: an output of the run, with ``metrics`` linked to it. Returns its id."""
    import numpy as np
    from mlflow.entities import LoggedModelOutput
    from mlflow.entities import Metric
    from mlflow.models import ModelSignature
    from mlflow.pyfunc import save_model
    from mlflow.types import Schema
    from mlflow.types import TensorSpec

    served = ServedModel(folder)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8),
                                  (-1, served.in_chans, *(-1,) * served.spatial_dims))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, served.n_outputs))]),
    )
    lm = client.create_logged_model(experiment_id, name=name, source_run_id=run_id,
                                    params=params, tags=tags, model_type=MODEL_TYPE)
    client.log_outputs(run_id, [LoggedModelOutput(lm.model_id, 0)])
    with tempfile.TemporaryDirectory(prefix="medauto-mlflow-") as tmp:
        path = Path(tmp) / "model"
        with warnings.catch_warnings():  # the signature stands in for an input example
            warnings.filterwarnings("ignore", message=".*input example.*")
            save_model(str(path), loader_module="medauto.serving", data_path=str(folder),
                       signature=signature, pip_requirements=_requirements())
        client.log_model_artifacts(lm.model_id, str(path))
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0, model_id=lm.model_id)
                                      for k, v in metrics.items() if math.isfinite(v)])
    client.finalize_logged_model(lm.model_id, "READY")
    return str(lm.model_id)


def _requirements() -> list[str]:
    """What a served model needs: medauto (with med_core) and the torch it was saved with."""
    return [f"medauto=={__version__}", f"torch=={torch.__version__.split('+')[0]}"]


