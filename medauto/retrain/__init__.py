"""Retrain the best trial (or the top-k) of a study and evaluate it once on the test split.

This is the last step of the MedMNIST protocol: the search selects configurations on the
**validation** split only; :func:`retrain` then trains the selected configuration(s) with
fixed seeds for their full epoch budget and touches the **test** split exactly once per
trained model, with MedMNIST's official ACC/AUC (:func:`med_core.training.compute_metrics`).
What to retrain and how is one :class:`RetrainOptions`:

* ``ensemble=k`` trains the top-k COMPLETE trials (ranked by the study's direction) and
  averages their test scores (probabilities) per seed. With ``ensemble_select="val"`` the
  number of members actually used (the best 1, 2, ... or k) is chosen on the mean
  **validation** AUC over seeds (ties: fewer members).
* ``tta`` sets flip test-time augmentation (average over the image and its horizontal
  flip): ``"trial"`` keeps each trial's searched ``tta``; ``"on"``/``"off"`` force it;
  ``"auto"`` decides per model on its validation AUC (on only if strictly better).
* ``seeds=(0, 1, 2)`` repeats everything per seed and reports mean ± sample std (ddof 1).
* ``train_on_val=True`` trains on train+val (``DataConfig.train_on_val``). Validation is
  then no longer held out, so the weights of the **last** epoch are kept; without it the
  weights of the best validation epoch (``cfg.monitor``) are kept, as in MedMNIST's
  published baselines.
* ``quantize="static"`` quantizes the best trial's model of the first seed to int8
  (:func:`med_core.optimization.quantize_model`, calibrated on a few training batches),
  re-evaluates it on the test split and measures file size and CPU latency before/after.

``deadline`` (a ``time.monotonic()`` value, set by a budgeted run) shares the time left
equally among the models still to train; a model still training at its share stops and
keeps its best-validation weights so far (``ModelResult.stop_reason``).

Outputs, under ``out_dir`` (default ``<run_dir>/retrain/<study>``)::

    retrain.json                       RetrainResult (all numbers below)
    predictions.npz                    y_true and every model's / ensemble's test scores
    models/trial<N>-seed<S>/model.pt   weights + config (torch.load(weights_only=True))
    models/trial<N>-seed<S>/model.json the same metadata, human-readable
    models/trial<N>-seed<S>/model.int8.pt2   the quantized copy (with ``quantize``)

Each model is also logged to MLflow (:func:`medauto.tracking.log_retrain`: a ``retrain``
run under the study's parent run, with one MLflow *logged model* per file); tracking
failures are logged and never stop retrain.

The modules: :mod:`~medauto.retrain.options` (the option set),
:mod:`~medauto.retrain.results` (the ``retrain.json`` schema),
:mod:`~medauto.retrain.quantize` (int8), ``_train`` (one model) and ``_run`` (the run).

Example:
    >>> from medauto.retrain import RetrainOptions
    >>> RetrainOptions(ensemble=3, seeds=(0, 1, 2)).kept_weights
    'best'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

#: Public name → the module that owns it. Loaded on first use, so that importing
#: ``medauto.retrain.options`` (the CLI does) does not import torch.
_LAZY = {
    "ModelResult": "medauto.retrain.results",
    "QuantizationResult": "medauto.retrain.results",
    "RetrainOptions": "medauto.retrain.options",
    "RetrainResult": "medauto.retrain.results",
    "SeedResult": "medauto.retrain.results",
    "quantize_retrained": "medauto.retrain.quantize",
    "retrain": "medauto.retrain._run",
    "retrain_dir": "medauto.retrain.results",
    "select_trials": "medauto.retrain._run",
}

if TYPE_CHECKING:
    from medauto.retrain._run import retrain as retrain
    from medauto.retrain._run import select_trials as select_trials
    from medauto.retrain.options import RetrainOptions as RetrainOptions
    from medauto.retrain.quantize import quantize_retrained as quantize_retrained
    from medauto.retrain.results import ModelResult as ModelResult
    from medauto.retrain.results import QuantizationResult as QuantizationResult
    from medauto.retrain.results import RetrainResult as RetrainResult
    from medauto.retrain.results import SeedResult as SeedResult
    from medauto.retrain.results import retrain_dir as retrain_dir

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medauto.retrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
