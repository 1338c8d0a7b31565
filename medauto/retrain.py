"""Retrain the best trial (or the top-k) of a study and evaluate it once on the test split.

This is the last step of the MedMNIST protocol: the search selects configurations on the
**validation** split only; :func:`retrain` then trains the selected configuration(s) with
fixed seeds for their full epoch budget and touches the **test** split exactly once per
trained model, with MedMNIST's official ACC/AUC (:func:`med_core.training.compute_metrics`).

* ``ensemble=k`` trains the top-k COMPLETE trials (ranked by the study's direction) and
  averages their test scores (probabilities) per seed. With ``ensemble_select="val"`` the
  number of members actually used (the best 1, 2, ... or k) is chosen on the mean
  **validation** AUC over seeds (ties: fewer members).
* ``tta`` sets flip test-time augmentation (average over the image and its horizontal
  flip): ``None`` keeps each trial's searched ``tta``; ``True``/``False`` force it;
  ``"auto"`` decides per model on its validation AUC (on only if strictly better).
* ``seeds=(0, 1, 2)`` repeats everything per seed and reports mean ± sample std (ddof 1).
* ``train_on_val=True`` trains on train+val (``DataConfig.train_on_val``). Validation is
  then no longer held out, so the weights of the **last** epoch are kept; without it the
  weights of the best validation epoch (``cfg.monitor``) are kept, as in MedMNIST's
  published baselines.
* ``deadline`` (a ``time.monotonic()`` value, set by a budgeted run) shares the time left
  equally among the models still to train; a model still training at its share stops
  and keeps its best-validation weights so far (``ModelResult.stop_reason``).
* ``quantize="static"`` quantizes the best trial's model of the first seed to int8
  (:func:`med_core.optimization.quantize_model`, calibrated on a few training batches),
  re-evaluates it on the test split and measures file size and CPU latency before/after.

Outputs, under ``out_dir`` (default ``<run_dir>/retrain/<study>``)::

    retrain.json                       RetrainResult (all numbers below)
    predictions.npz                    y_true and every model's / ensemble's test scores
    models/trial<N>-seed<S>/model.pt   weights + config (torch.load(weights_only=True))
    models/trial<N>-seed<S>/model.json the same metadata, human-readable
    models/trial<N>-seed<S>/model.int8.pt2   the quantized copy (with ``quantize``)

Each model is also logged to MLflow (a ``retrain`` run under the study's parent run, with
one MLflow *logged model* per file); tracking failures are logged and never stop retrain.

Example:
    >>> from medauto.retrain import RetrainResult
    >>> RetrainResult.from_dict({"study": "s", "test_mean": {"auc": 0.9}}).test_mean["auc"]
    0.9
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import urllib.parse
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from med_core.training.callbacks import Callback
from med_core.training.callbacks import KeepBestWeights
from medauto.evaluation import HonestEvaluation
from medauto.evaluation import evaluate_test
from medauto.evaluation import roc_png
from medauto.exceptions import MedautoError
from medauto.logging import get_logger
from medauto.model_file import MODEL_KIND
from medauto.model_file import atomic_write_bytes
from medauto.model_file import load_model
from medauto.model_file import nan_to_none
from medauto.model_file import save_model
from medauto.preprocessing import Preprocessing
from medauto.scoring import METRICS
from medauto.scoring import eval_loader
from medauto.scoring import predict_scores
from medauto.scoring import split_metrics

if TYPE_CHECKING:
    import numpy as np
    import optuna
    import torch
    from torch import nn

    from med_core.config import TrainConfig
    from med_core.data import MedicalDataset

__all__ = [
    "ModelResult",
    "QuantizationResult",
    "RetrainResult",
    "SeedResult",
    "quantize_retrained",
    "retrain",
    "select_trials",
]

_logger = get_logger(__name__)

_RESULT_FORMAT_VERSION = 1
_WEIGHTS = ("auto", "best", "last")
_QUANT_METHODS = ("static", "dynamic")


# ---------------------------------------------------------------------------- results
def _metric_dict(values: Mapping[str, Any] | None) -> dict[str, float]:
    """Floats (``None`` → NaN) for every metric present."""
    return {
        k: (math.nan if v is None else float(v)) for k, v in dict(values or {}).items()
    }


@dataclass
class ModelResult:
    """One retrained model (one trial's config at one seed).

    Attributes:
        name: ``trial<N>-seed<S>``.
        trial: The trial number whose config was retrained.
        seed: The training seed.
        path: The model file, relative to the retrain folder.
        test: Test metrics (``auc``, ``acc``, ``balanced_acc``, ``macro_f1``).
        weights: ``"best"`` (best validation epoch) or ``"last"``.
        epoch: 0-based epoch whose weights were kept.
        epochs_run: Epochs trained.
        val_at_epoch: ``cfg.monitor`` on the validation split at ``epoch`` (not held out
            when training on train+val).
        train_seconds: Wall time of ``Trainer.fit``.
        backbone: ``cfg.model.backbone``.
        train_samples: Images it trained on (train, or train+val with ``train_on_val``).
        tta: Whether its scores average over the horizontal flip.
        val: Validation metrics of the kept weights (with ``tta`` as chosen); empty with
            ``train_on_val`` (validation is not held out).
        stop_reason: ``history.stop_reason`` of its fit (``"callback:deadline"`` when a
            budget stopped it).
    """

    name: str
    trial: int
    seed: int
    path: str
    test: dict[str, float]
    weights: str
    epoch: int
    epochs_run: int
    val_at_epoch: float | None
    train_seconds: float
    backbone: str
    train_samples: int = 0
    tta: bool = False
    val: dict[str, float] = field(default_factory=dict)
    stop_reason: str | None = None


@dataclass
class SeedResult:
    """The test metrics of one seed: one model's, or the ensemble's (mean of k scores)."""

    seed: int
    test: dict[str, float]
    members: list[str]


@dataclass
class QuantizationResult:
    """Float32 vs int8 copy of one retrained model (see :func:`quantize_retrained`).

    Sizes are bytes on disk (float: the ``model.pt`` file; int8: the ``.pt2`` program).
    Latencies are CPU milliseconds per batch (median of ``latency_iters`` calls) in eager
    mode and, with ``compiled``, through Inductor (float: ``torch.compile``; int8:
    ``compile_quantized``, where the int8 kernels live). ``error`` is set (and the other
    numbers may be missing) when the model could not be quantized.
    """

    method: str
    model: str
    float_path: str = ""
    int8_path: str = ""
    calibration_batches: int = 0
    float_size_bytes: int = 0
    int8_size_bytes: int = 0
    size_ratio: float = math.nan
    float_test: dict[str, float] = field(default_factory=dict)
    int8_test: dict[str, float] = field(default_factory=dict)
    acc_drop_points: float = math.nan
    latency_batch_size: int = 0
    latency_threads: int | None = None
    float_latency_ms: float = math.nan
    int8_latency_ms: float = math.nan
    compiled: bool = False
    float_latency_compiled_ms: float | None = None
    int8_latency_compiled_ms: float | None = None
    compile_error: str | None = None
    error: str | None = None


@dataclass
class RetrainResult:
    """Everything :func:`retrain` did and measured (written as ``retrain.json``).

    ``test_mean`` / ``test_std`` aggregate :attr:`per_seed` (std: sample std, ddof 1; 0
    for one seed). With ``ensemble > 1`` each seed's numbers are those of the ensemble
    (of its first ``ensemble_used`` members). ``tta`` is the mode asked for (``"trial"``,
    ``"on"``, ``"off"``, ``"auto"``); ``val_selection`` maps each candidate ensemble size
    to its mean validation AUC when ``ensemble_select="val"``. ``evaluation`` is the first
    seed's final model's honest test results (:class:`medauto.evaluation.HonestEvaluation`;
    its ROC curve is ``roc.png``).
    """

    study: str
    dataset: str = ""
    task: str = ""
    metric: str = ""
    direction: str = ""
    trials: list[int] = field(default_factory=list)
    trial_values: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    ensemble: int = 1
    ensemble_used: int = 1
    ensemble_select: str = "fixed"
    tta: str = "trial"
    val_selection: dict[str, float] = field(default_factory=dict)
    train_on_val: bool = False
    weights: str = "best"
    device: str = "cpu"
    n_test: int = 0
    models: list[ModelResult] = field(default_factory=list)
    per_seed: list[SeedResult] = field(default_factory=list)
    test_mean: dict[str, float] = field(default_factory=dict)
    test_std: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    quantization: QuantizationResult | None = None
    mlflow: dict[str, Any] | None = None
    out_dir: str = ""
    created_at: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = _RESULT_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN → ``None``)."""
        return nan_to_none(asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetrainResult:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        d = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        d["models"] = [
            ModelResult(**{**m, "test": _metric_dict(m.get("test")),
                           "val": _metric_dict(m.get("val"))})
            for m in d.get("models", [])
        ]
        d["per_seed"] = [
            SeedResult(**{**s, "test": _metric_dict(s.get("test"))}) for s in d.get("per_seed", [])
        ]
        for key in ("test_mean", "test_std"):
            d[key] = _metric_dict(d.get(key))
        q = d.get("quantization")
        if q is not None:
            q = {f.name: q[f.name] for f in fields(QuantizationResult) if f.name in q}
            for key in ("float_test", "int8_test"):
                q[key] = _metric_dict(q.get(key))
            for key in ("size_ratio", "acc_drop_points", "float_latency_ms", "int8_latency_ms"):
                if q.get(key) is None:
                    q[key] = math.nan
            d["quantization"] = QuantizationResult(**q)
        return cls(**d)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the JSON (atomically); returns the path."""
        p = Path(path)
        atomic_write_bytes(p, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RetrainResult:
        """Reads a ``retrain.json``.

        Raises:
            MedautoError: missing or malformed file.
        """
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise MedautoError(f"no retrain results at {str(p)!r}; run `medauto retrain`") from None
        except (OSError, ValueError) as e:
            raise MedautoError(f"cannot read retrain results {str(p)!r}: {e}") from e
        if not isinstance(data, dict) or "study" not in data:
            raise MedautoError(f"{str(p)!r} is not a medauto retrain.json")
        return cls.from_dict(data)


# --------------------------------------------------------------------- trial selection
def select_trials(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` best trials by :func:`medauto.results.ranked_trials` (best first; the rule
    ``best``, the report and the dashboard use: foreign trials are passed over).

    Raises:
        MedautoError: fewer than ``k`` such trials.
    """
    from medauto.results import ranked_trials

    done = ranked_trials(study)
    if len(done) < k:
        raise MedautoError(
            f"study {study.study_name!r} has {len(done)} completed trial(s); retraining the "
            f"top {k} needs at least {k} (run more trials, or lower --ensemble)"
        )
    return done[:k]


# ------------------------------------------------------------------------- quantization
def quantize_retrained(
    model_path: str | os.PathLike[str],
    *,
    method: str = "static",
    dataset: MedicalDataset | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    out_path: str | os.PathLike[str] | None = None,
    calibration_batches: int = 8,
    latency_batch_size: int = 32,
    latency_iters: int = 20,
    latency_warmup: int = 3,
    latency_threads: int | None = 1,
    latency_compile: bool = False,
) -> QuantizationResult:
    """Quantizes a retrained model, re-evaluates it on the test split, measures size and latency.

    Calibration uses the first ``calibration_batches`` training batches of the model's own
    config (``batch_size``, no augmentation; with ``train_on_val`` the train+val split it
    was trained on). The int8 model is saved with ``save_quantized`` next to the float file
    (``model.int8.pt2``) and evaluated **after** a round trip through that file. The float
    model is evaluated on CPU through the same code path, so the two test rows compare
    like with like.

    Args:
        model_path: A :func:`save_model` file.
        method: ``"static"`` (int8 weights and activations) or ``"dynamic"`` (int8 Linear
            weights only).
        dataset: The loaded dataset; default: loaded from the model's config.
        data_dir: Where MedMNIST names are looked up when loading.
        out_path: Where the ``.pt2`` goes (default: ``<model dir>/model.int8.pt2``).
        calibration_batches: Training batches used for static calibration (>= 1).
        latency_batch_size: Batch size of the latency measurement (test images).
        latency_iters: Timed calls per latency figure.
        latency_warmup: Untimed calls first.
        latency_threads: CPU threads while timing (``None``: the current setting).
        latency_compile: Also time Inductor-compiled models (int8 kernels only exist
            compiled; the first call compiles, seconds to a minute).

    Returns:
        A :class:`QuantizationResult`; its ``error`` is set, without raising, when the
        model cannot be quantized (e.g. 3D convolutions, torchao missing).

    Raises:
        ValueError: unknown ``method`` or ``calibration_batches < 1``.
        ModelFileError: the model file cannot be loaded.
    """
    import itertools

    from med_core.exceptions import MedCoreError
    from med_core.optimization import load_quantized
    from med_core.optimization import measure_latency
    from med_core.optimization import quantize_model
    from med_core.optimization import save_quantized

    if method not in _QUANT_METHODS:
        raise ValueError(f"method must be one of {_QUANT_METHODS}, got {method!r}")
    if calibration_batches < 1:
        raise ValueError(f"calibration_batches must be >= 1, got {calibration_batches}")
    src = Path(model_path)
    loaded = load_model(src, device="cpu")
    cfg, meta, model = loaded.config, loaded.meta, loaded.model
    if dataset is None:
        from med_core.data import load_dataset

        dataset = load_dataset(cfg.data, data_dir=data_dir)
    info = dataset.info
    dst = Path(out_path) if out_path is not None else src.with_name("model.int8.pt2")
    result = QuantizationResult(
        method=method, model=str(meta.get("name", src.parent.name)), float_path=str(src),
        calibration_batches=calibration_batches, float_size_bytes=src.stat().st_size,
        latency_batch_size=latency_batch_size, latency_threads=latency_threads,
    )
    calib = eval_loader(dataset.train, cfg, spatial_dims=info.spatial_dims,
                         batch_size=cfg.batch_size)
    batches = [x for x, _ in itertools.islice(iter(calib), calibration_batches)]
    result.calibration_batches = len(batches)
    t0 = time.perf_counter()
    try:
        q = quantize_model(
            model, method, calibration_data=batches if method == "static" else None,
            example_inputs=batches[0],
        )
        save_quantized(q, dst)
        q = load_quantized(dst)
    except (MedCoreError, ImportError, NotImplementedError, ValueError, RuntimeError) as e:
        result.error = f"{type(e).__name__}: {str(e)[:500]}"
        _logger.warning("could not quantize %s (%s); the float model is unchanged",
                        src, result.error)
        return result
    _logger.info("quantized %s (%s) in %.1f s -> %s", src.name, method,
                 time.perf_counter() - t0, dst)
    result.int8_path = str(dst)
    result.int8_size_bytes = dst.stat().st_size
    result.size_ratio = result.float_size_bytes / max(result.int8_size_bytes, 1)

    test = eval_loader(dataset.test, cfg, spatial_dims=info.spatial_dims,
                        batch_size=2 * cfg.batch_size)
    y, s_float = predict_scores(model, test, task=info.task, tta=cfg.tta)
    _, s_int8 = predict_scores(q, test, task=info.task, tta=cfg.tta)
    result.float_test = split_metrics(info.task, y, s_float)
    result.int8_test = split_metrics(info.task, y, s_int8)
    result.acc_drop_points = 100.0 * (result.float_test["acc"] - result.int8_test["acc"])

    timing = eval_loader(dataset.test, cfg, spatial_dims=info.spatial_dims,
                          batch_size=latency_batch_size)
    x = next(iter(timing))[0]
    result.latency_batch_size = int(x.shape[0])
    kw: dict[str, Any] = {
        "warmup": latency_warmup, "iters": latency_iters, "threads": latency_threads
    }
    result.float_latency_ms = measure_latency(model, x, **kw)["median_ms"]
    result.int8_latency_ms = measure_latency(q, x, **kw)["median_ms"]
    if latency_compile:
        _time_compiled(result, model, q, x, kw)
    return result


def _time_compiled(
    result: QuantizationResult, model: nn.Module, q: nn.Module, x: torch.Tensor,
    kw: dict[str, Any],
) -> None:
    """Compiled latencies; a compiler failure is recorded (and logged), not raised."""
    import torch

    from med_core.optimization import compile_quantized
    from med_core.optimization import measure_latency

    try:
        result.float_latency_compiled_ms = measure_latency(torch.compile(model), x, **kw)[
            "median_ms"
        ]
        result.int8_latency_compiled_ms = measure_latency(compile_quantized(q), x, **kw)[
            "median_ms"
        ]
        result.compiled = True
    except Exception as e:  # noqa: BLE001 - Inductor needs a C++ toolchain; eager numbers stand
        result.compile_error = f"{type(e).__name__}: {str(e)[:300]}"
        _logger.warning("compiled latency not measured (%s); eager latencies are reported",
                        result.compile_error)


# ----------------------------------------------------------------------------- retrain
def _resolve_study(study: optuna.Study | str, storage: str | None, run_dir: Path) -> optuna.Study:
    if not isinstance(study, str):
        return study
    from medauto.storage import default_storage_url
    from medauto.storage import open_storage
    from medauto.study import load_existing_study
    from medauto.study import validate_study_name

    validate_study_name(study)  # the name becomes a folder under run_dir
    return load_existing_study(study, open_storage(storage or default_storage_url(run_dir)))


def _tracking_uri(tracking: Any, run_dir: str | Path) -> str | None:
    from medauto.tracking import BaseTracker
    from medauto.tracking import MlflowTracker
    from medauto.tracking import default_tracking_uri

    if isinstance(tracking, MlflowTracker):
        return tracking.tracking_uri
    if isinstance(tracking, BaseTracker) or tracking is False:
        return None
    return default_tracking_uri(run_dir) if tracking in (None, True) else str(tracking)


_TTA_MODES = {None: "trial", True: "on", False: "off", "auto": "auto"}
_ENSEMBLE_SELECT = ("fixed", "val")


def _validate(ensemble: int, seeds: Sequence[int], weights: str, train_on_val: bool,
              quantize: str | None, tta: bool | str | None, ensemble_select: str) -> list[int]:
    if not isinstance(ensemble, int) or isinstance(ensemble, bool) or ensemble < 1:
        raise MedautoError(f"ensemble must be an integer >= 1, got {ensemble!r}")
    if not any(tta is k for k in (None, True, False)) and tta != "auto":
        raise MedautoError(f"tta must be None, True, False or 'auto', got {tta!r}")
    if ensemble_select not in _ENSEMBLE_SELECT:
        raise MedautoError(
            f"ensemble_select must be one of {_ENSEMBLE_SELECT}, got {ensemble_select!r}"
        )
    if train_on_val and (tta == "auto" or ensemble_select == "val"):
        raise MedautoError(
            "tta='auto' and ensemble_select='val' choose on the validation split, which "
            "train_on_val trains on; set them explicitly instead"
        )
    seed_list = list(seeds)
    if not seed_list or any(not isinstance(s, int) or isinstance(s, bool) or s < 0
                            for s in seed_list):
        raise MedautoError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seed_list)) != len(seed_list):
        raise MedautoError(f"seeds must be distinct, got {seed_list}")
    if weights not in _WEIGHTS:
        raise MedautoError(f"weights must be one of {_WEIGHTS}, got {weights!r}")
    if weights == "best" and train_on_val:
        raise MedautoError(
            "weights='best' selects the epoch on validation, which train_on_val trains on; "
            "use weights='last' (the default with train_on_val)"
        )
    if quantize is not None and quantize not in _QUANT_METHODS:
        raise MedautoError(
            f"quantize must be one of {_QUANT_METHODS} or None, got {quantize!r} (QAT needs a "
            "fine-tuning loop: use med_core.optimization.quantize_model(..., 'qat') directly)"
        )
    return seed_list


def _aggregate(per_seed: list[SeedResult]) -> tuple[dict[str, float], dict[str, float]]:
    import numpy as np

    mean, std = {}, {}
    for k in METRICS:
        vals = np.array([s.test.get(k, math.nan) for s in per_seed], dtype=float)
        mean[k] = float(np.mean(vals))
        std[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return mean, std


def retrain(
    study: optuna.Study | str,
    *,
    storage: str | None = None,
    ensemble: int = 1,
    ensemble_select: str = "fixed",
    tta: bool | str | None = None,
    seeds: Sequence[int] = (0,),
    train_on_val: bool = False,
    weights: str = "auto",
    deadline: float | None = None,
    device: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] = "medauto-runs",
    out_dir: str | os.PathLike[str] | None = None,
    quantize: str | None = None,
    calibration_batches: int = 8,
    latency_batch_size: int = 32,
    latency_iters: int = 20,
    latency_threads: int | None = 1,
    latency_compile: bool = False,
    tracking: Any = None,
    progress: bool = False,
) -> RetrainResult:
    """Retrains the best trial (or the top ``ensemble``) and evaluates once on the test split.

    Args:
        study: An Optuna study created by medauto, or its name (opened from ``storage``).
        storage: Storage URL when ``study`` is a name (default: SQLite in ``run_dir``).
        ensemble: Retrain the top-k COMPLETE trials and average their test scores.
        ensemble_select: ``"fixed"`` uses all ``ensemble`` members; ``"val"`` uses the
            best ``j <= ensemble`` of them, ``j`` chosen on mean validation AUC over seeds.
        tta: Flip test-time augmentation: ``None`` → each trial's config; ``True`` /
            ``False`` → forced; ``"auto"`` → per model, on if its validation AUC with TTA
            is strictly higher.
        seeds: Training seeds; each seed retrains every selected trial. With more than one
            seed the result holds mean ± std over seeds (the MedMNIST protocol uses 3).
        train_on_val: Train on train+val (``DataConfig.train_on_val``).
        weights: ``"best"`` keeps the best-validation-epoch weights, ``"last"`` the last
            epoch's; ``"auto"`` → ``"last"`` with ``train_on_val``, else ``"best"``.
        deadline: ``time.monotonic()`` by which training must end; each model gets an
            equal share of the time left and stops (keeping its best weights) at it.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:K"``.
        data_dir: Overrides the trials' ``data.data_dir`` (where MedMNIST files live).
        run_dir: The search's run folder (default storage, MLflow store, output root).
        out_dir: Output folder (default ``<run_dir>/retrain/<study name>``).
        quantize: ``"static"`` or ``"dynamic"``: also quantize the best trial's model of
            the first seed (see :func:`quantize_retrained`).
        calibration_batches, latency_batch_size, latency_iters, latency_threads,
            latency_compile: Passed to :func:`quantize_retrained`.
        tracking: ``None``/``True`` → MLflow store ``<run_dir>/mlflow.db``; a tracking URI;
            ``False`` → off; or a ``medauto.tracking`` tracker.
        progress: Show the trainer's per-epoch bars.

    Returns:
        The :class:`RetrainResult` (also written to ``out_dir/retrain.json``).

    Raises:
        MedautoError: bad arguments, no such study, or too few completed trials.
        DataError, ConfigError: the data or a trial's config cannot be used.
    """
    import numpy as np
    import torch

    from med_core.config import TrainConfig
    from med_core.data import load_dataset
    from med_core.device import resolve_device
    from med_core.training import Trainer
    from medauto import __version__

    seed_list = _validate(ensemble, seeds, weights, train_on_val, quantize, tta,
                          ensemble_select)
    run_dir = Path(run_dir)
    study = _resolve_study(study, storage, run_dir)
    selected = select_trials(study, ensemble)
    keep = weights if weights != "auto" else ("last" if train_on_val else "best")
    dev = resolve_device(device)
    out = Path(out_dir) if out_dir is not None else run_dir / "retrain" / study.study_name
    if (out / "retrain.json").exists():
        _logger.warning("replacing the previous retrain results in %s", out)
    settings = study.user_attrs.get("medauto:settings", {})
    result = RetrainResult(
        study=study.study_name, metric=str(settings.get("metric", "")),
        direction=study.direction.name.lower(), trials=[t.number for t in selected],
        trial_values=[float(t.value) for t in selected],  # type: ignore[arg-type]
        seeds=seed_list, ensemble=ensemble, ensemble_used=ensemble,
        ensemble_select=ensemble_select, tta=_TTA_MODES[tta],
        train_on_val=train_on_val, weights=keep,
        device=dev, out_dir=str(out), created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        versions={"medauto": __version__, "torch": torch.__version__},
    )
    datasets: dict[str, Any] = {}
    model_data: dict[str, str] = {}  # model name -> its datasets key
    scores: dict[str, Any] = {}
    val_scores: dict[str, Any] = {}
    y_ref: Any = None
    y_val: Any = None
    members_of: dict[int, list[str]] = {}
    n_left = len(seed_list) * len(selected)
    for seed in seed_list:
        members = []
        for trial in selected:
            base = TrainConfig.from_dict(trial.user_attrs["config"])
            flat: dict[str, Any] = {"seed": seed, "data.train_on_val": train_on_val}
            if data_dir is not None:
                flat["data.data_dir"] = os.fspath(data_dir)
            cfg = TrainConfig.from_flat(flat, base=base)
            key = json.dumps(cfg.data.to_dict(), sort_keys=True)
            if key not in datasets:
                datasets[key] = load_dataset(cfg.data)
            ds = datasets[key]
            name = f"trial{trial.number}-seed{seed}"
            stop_at = None
            if deadline is not None:
                stop_at = time.monotonic() + max(0.0, deadline - time.monotonic()) / n_left
            n_left -= 1
            mr, y_true, y_score, val = _train_and_test(
                Trainer, cfg, ds, name=name, trial=trial.number, seed=seed, keep=keep,
                device=dev, out=out, progress=progress, study=study.study_name, tta=tta,
                stop_at=stop_at,
            )
            if val is not None:
                y_val, val_scores[name] = val
            if y_ref is None:
                y_ref = y_true
            elif not np.array_equal(y_ref, y_true):
                raise MedautoError(f"{name}: its test labels differ from the first model's")
            result.models.append(mr)
            model_data[name] = key
            scores[name] = y_score
            members.append(name)
        result.task, result.dataset = ds.info.task, ds.info.name
        members_of[seed] = members
    if ensemble_select == "val" and ensemble > 1:
        # Validation only: mean over seeds of the val AUC of the best-j ensemble.
        for j in range(1, ensemble + 1):
            aucs = [
                split_metrics(
                    result.task, y_val, np.mean([val_scores[m] for m in mem[:j]], 0)
                )["auc"]
                for mem in members_of.values()
            ]
            result.val_selection[str(j)] = float(np.mean(aucs))
        result.ensemble_used = int(max(result.val_selection, key=lambda j: (
            result.val_selection[j], -int(j))))
        _logger.info("ensemble size chosen on validation AUC: %d of %d (%s)",
                     result.ensemble_used, ensemble, result.val_selection)
    by_name = {m.name: m for m in result.models}
    for seed, members in members_of.items():
        used = members[: result.ensemble_used]
        if len(used) == 1:
            seed_test = dict(by_name[used[0]].test)
        else:
            mean_scores = np.mean([scores[m] for m in used], axis=0)
            scores[f"ensemble-seed{seed}"] = mean_scores
            seed_test = split_metrics(result.task, y_ref, mean_scores)
        result.per_seed.append(SeedResult(seed=seed, test=seed_test, members=used))
        _logger.info("seed %d: test auc=%.4f acc=%.4f (%s)", seed, seed_test["auc"],
                     seed_test["acc"], ", ".join(used))
    result.n_test = int(len(y_ref))
    result.test_mean, result.test_std = _aggregate(result.per_seed)
    np.savez(out / "predictions.npz", y_true=y_ref, **scores)
    # the honest view of the first seed's final model (the one report and predict use)
    used = members_of[seed_list[0]][: result.ensemble_used]
    final_scores = scores[used[0] if len(used) == 1 else f"ensemble-seed{seed_list[0]}"]
    ev = evaluate_test(result.task, y_ref, final_scores, ds.info.class_names,
                       what=f"the retrained model (seed {seed_list[0]})")
    result.evaluation = ev.to_dict()
    atomic_write_bytes(out / "roc.png", roc_png(result.task, y_ref, final_scores,
                                                ds.info.class_names))
    for w in ev.warnings:
        _logger.warning("%s", w)

    if quantize is not None:
        first = result.models[0]  # the best trial, first seed
        result.quantization = quantize_retrained(
            out / first.path, method=quantize, dataset=datasets[model_data[first.name]],
            calibration_batches=calibration_batches, latency_batch_size=latency_batch_size,
            latency_iters=latency_iters, latency_threads=latency_threads,
            latency_compile=latency_compile,
        )
        for attr in ("float_path", "int8_path"):
            value = getattr(result.quantization, attr)
            if value:
                setattr(result.quantization, attr, os.path.relpath(value, out))
    result.save(out / "retrain.json")
    uri = _tracking_uri(tracking, run_dir)
    if uri is not None:
        result.mlflow = _log_to_mlflow(study, result, out, uri, run_dir=run_dir)
        if result.mlflow is not None:
            result.save(out / "retrain.json")
    return result


def _choose_tta(trainer: Any, task: str, mode: bool | str | None, cfg: TrainConfig,
                held_out: bool) -> tuple[bool, tuple[np.ndarray, np.ndarray] | None]:
    """The model's TTA setting and its validation (labels, scores) with it (held-out val)."""
    if mode == "auto":
        plain = trainer.predict("val", tta=False)
        flipped = trainer.predict("val", tta=True)
        on = split_metrics(task, *flipped)["auc"] > split_metrics(task, *plain)["auc"]
        return on, flipped if on else plain
    use = cfg.tta if mode is None else bool(mode)
    return use, trainer.predict("val", tta=use) if held_out else None


def _train_and_test(
    trainer_cls: Any, cfg: TrainConfig, ds: MedicalDataset, *, name: str, trial: int, seed: int,
    keep: str, device: str, out: Path, progress: bool, study: str,
    tta: bool | str | None = None, stop_at: float | None = None,
) -> tuple[ModelResult, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Trains one model, keeps the chosen weights, decides TTA on validation, predicts the
    test split once, saves. Returns the result, test labels/scores and val labels/scores."""
    import torch

    from medauto.budget import DeadlineCallback

    keeper = KeepBestWeights() if keep == "best" else None
    callbacks: list[Callback] = [keeper] if keeper else []
    if stop_at is not None:
        callbacks.append(DeadlineCallback(stop_at))
    trainer = trainer_cls(
        cfg, dataset=ds, device=device, callbacks=callbacks, progress=progress
    )
    _logger.info("retraining %s (%s, %d epochs) on %s", name, cfg.model.backbone, cfg.epochs,
                 device)
    t0 = time.perf_counter()
    history = trainer.fit()
    seconds = time.perf_counter() - t0
    kept, epoch = "last", len(history.epochs) - 1
    if keeper is not None:
        if keeper.restore(trainer):
            kept, epoch = "best", int(keeper.epoch or 0)
        else:
            _logger.warning("%s: %s never improved (NaN?); keeping the last epoch's weights",
                            name, cfg.monitor)
    held_out = not cfg.data.train_on_val
    use_tta, val_pred = _choose_tta(trainer, ds.info.task, tta, cfg, held_out)
    val_metrics = split_metrics(ds.info.task, *val_pred) if val_pred is not None else {}
    y_true, y_score = trainer.predict("test", tta=use_tta)  # the one look at the test split
    test = split_metrics(ds.info.task, y_true, y_score)
    info = ds.info
    rel = f"models/{name}/model.pt"
    val = history.epochs[epoch].get(cfg.monitor) if history.epochs else None
    meta = {
        "name": name, "study": study, "trial": trial, "seed": seed, "weights": kept,
        "epoch": epoch, "dataset": info.name, "task": info.task,
        "num_classes": info.num_classes, "in_chans": info.in_chans,
        "spatial_dims": info.spatial_dims,
        "img_size": cfg.data.img_size or list(info.image_size),
        "class_names": list(info.class_names), "test": test, "tta": use_tta,
    }
    if use_tta != cfg.tta:  # the saved config predicts as the model was evaluated
        cfg = type(cfg).from_flat({"tta": use_tta}, base=cfg)
    save_model(out / rel, trainer.model, cfg,
               preprocessing=Preprocessing.for_dataset(info, meta["img_size"]), **meta)
    card = {**meta, "config": cfg.to_dict(), "train_seconds": seconds}
    atomic_write_bytes(out / f"models/{name}/model.json",
                        (json.dumps(nan_to_none(card), indent=2) + "\n").encode())
    trainer.close()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    mr = ModelResult(
        name=name, trial=trial, seed=seed, path=rel, test=test, weights=kept, epoch=epoch,
        epochs_run=len(history.epochs),
        val_at_epoch=None if val is None or not math.isfinite(val) else float(val),
        train_seconds=seconds, backbone=cfg.model.backbone, train_samples=len(ds.train),
        tta=use_tta, val=val_metrics, stop_reason=history.stop_reason,
    )
    _logger.info("%s: test auc=%.4f acc=%.4f (%s epoch %d, tta %s)", name, test["auc"],
                 test["acc"], kept, epoch + 1, "on" if use_tta else "off")
    return mr, y_true, y_score, val_pred


# ------------------------------------------------------------------------------ MLflow
def _reachable(uri: str, timeout: float = 3.0) -> bool:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return True
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout):
            return True
    except OSError:
        return False


def _log_to_mlflow(
    study: optuna.Study, result: RetrainResult, out: Path, uri: str, *, run_dir: Path
) -> dict[str, Any] | None:
    """Logs a ``retrain`` run (child of the study's parent run) and one logged model per file.

    Never raises: any failure is logged at WARNING and ``None`` is returned.
    """
    from medauto.storage import redact_url
    from medauto.tracking import PARENT_RUN_ATTR

    if not _reachable(uri):
        _logger.warning("MLflow tracking server %s is unreachable; retrain results are only "
                        "in %s", redact_url(uri), out)
        return None
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric
        from mlflow.entities import Param
        from mlflow.entities import RunTag

        client = MlflowClient(tracking_uri=uri)
        parent = study.user_attrs.get(PARENT_RUN_ATTR)
        experiment_id = None
        if parent is not None:
            try:
                experiment_id = client.get_run(parent).info.experiment_id
            except Exception:  # noqa: BLE001 - the search logged elsewhere: no parent here
                _logger.warning("the study's MLflow parent run %s is not in %s; logging the "
                                "retrain run without a parent", parent, redact_url(uri))
                parent = None
        if experiment_id is None:
            exp = client.get_experiment_by_name(study.study_name)
            experiment_id = exp.experiment_id if exp is not None else client.create_experiment(
                study.study_name,
                artifact_location=(run_dir.resolve() / "mlartifacts").as_uri(),
            )
        tags = {"medauto.role": "retrain", "medauto.study": study.study_name,
                "medauto.trials": ",".join(map(str, result.trials))}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        run = client.create_run(experiment_id, run_name="retrain", tags=tags)
        run_id = run.info.run_id
        params = {"ensemble": result.ensemble, "seeds": ",".join(map(str, result.seeds)),
                  "train_on_val": result.train_on_val, "weights": result.weights,
                  "device": result.device, "trials": ",".join(map(str, result.trials)),
                  "quantize": result.quantization.method if result.quantization else "none"}
        now = int(time.time() * 1000)
        metrics = [Metric(f"test_{k}_mean", v, now, 0) for k, v in result.test_mean.items()
                   if math.isfinite(v)]
        metrics += [Metric(f"test_{k}_std", v, now, 0) for k, v in result.test_std.items()
                    if math.isfinite(v)]
        if result.evaluation:
            flat = HonestEvaluation.from_dict(result.evaluation).flat_metrics("test_")
            metrics += [Metric(k, v, now, 0) for k, v in flat.items()]
        q = result.quantization
        if q is not None and q.error is None:
            metrics += [Metric("int8_test_acc", q.int8_test["acc"], now, 0),
                        Metric("int8_test_auc", q.int8_test["auc"], now, 0),
                        Metric("int8_size_ratio", q.size_ratio, now, 0)]
        client.log_batch(run_id, metrics=[m for m in metrics if math.isfinite(m.value)],
                         params=[Param(k, str(v)) for k, v in params.items()],
                         tags=[RunTag("medauto.n_test", str(result.n_test))])
        client.log_artifact(run_id, str(out / "retrain.json"))
        client.log_artifact(run_id, str(out / "predictions.npz"))
        if (out / "roc.png").is_file():
            client.log_artifact(run_id, str(out / "roc.png"))
        model_ids = []
        for m in result.models:
            lm = client.create_logged_model(
                experiment_id, name=m.name, source_run_id=run_id,
                params={"trial": str(m.trial), "seed": str(m.seed), "backbone": m.backbone,
                        "weights": m.weights},
                tags={"medauto.study": study.study_name, "medauto.format": MODEL_KIND},
                model_type="medauto-classifier",
            )
            client.log_model_artifacts(lm.model_id, str((out / m.path).parent))
            client.finalize_logged_model(lm.model_id, "READY")
            model_ids.append(lm.model_id)
        client.set_terminated(run_id, status="FINISHED")
    except Exception as e:  # noqa: BLE001 - tracking must never fail a finished retrain
        _logger.warning("MLflow logging of the retrain results failed (%s: %s); the results "
                        "are in %s", type(e).__name__, redact_url(str(e))[:300], out)
        return None
    return {"tracking_uri": redact_url(uri), "experiment_id": experiment_id, "run_id": run_id,
            "parent_run_id": parent, "model_ids": model_ids}
