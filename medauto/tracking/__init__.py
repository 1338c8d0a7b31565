"""MLflow tracking: one experiment per study, a parent run per study, a child run per trial.

Optuna's own ``MLflowCallback`` logs only after a trial ends, and its nested runs break
under parallel workers. medauto logs through ``MlflowClient`` with explicit run ids: the
parent run's id lives in the study's user attributes (``medauto:mlflow_parent_run_id``),
so every worker, on any machine, attaches its trials' child runs to the same parent, and
per-epoch metrics are logged as they happen.

Tracking must never stop a search: if the tracking server cannot be reached or an MLflow
call fails, the tracker warns once and turns itself off for this process.

The retrain's run, the final model's run and the distilled student's run, each with its
MLflow *logged models* (:func:`log_retrain`, :meth:`MlflowTracker.log_final`,
:func:`log_distill`), go to the same experiment as
children of the study's parent run. Each logged model is a ``python_function`` model
(loader module :mod:`medauto.serving`), linked to its run as an output and carrying its
test metrics, so ``mlflow.pyfunc.load_model("models:/<id>")`` and ``mlflow models serve``
take it as it is. Experiments medauto creates are tagged as classic model-training
experiments (MLflow 3 opens an untagged one in its GenAI/traces view), and where
``psutil`` is installed each trial's run also gets MLflow's system metrics (CPU, memory,
disk, network, GPU).

This module is the one place medauto talks to MLflow.
"""

from medauto.tracking._results import log_distill as log_distill
from medauto.tracking._results import log_retrain as log_retrain
from medauto.tracking._store import CLASSIC_EXPERIMENT_KIND as CLASSIC_EXPERIMENT_KIND
from medauto.tracking._store import EXPERIMENT_KIND_TAG as EXPERIMENT_KIND_TAG
from medauto.tracking._store import default_tracking_uri as default_tracking_uri
from medauto.tracking._store import mlflow_client as mlflow_client
from medauto.tracking._trackers import BaseTracker as BaseTracker
from medauto.tracking._trackers import MlflowTracker as MlflowTracker
from medauto.tracking._trackers import NullTracker as NullTracker
from medauto.tracking._trackers import make_tracker as make_tracker
from medauto.tracking._trackers import tracking_uri as tracking_uri

__all__ = [
    "CLASSIC_EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "BaseTracker",
    "MlflowTracker",
    "NullTracker",
    "default_tracking_uri",
    "log_distill",
    "log_retrain",
    "make_tracker",
    "mlflow_client",
    "tracking_uri",
]
