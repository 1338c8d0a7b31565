"""The retrain results schema: what ``retrain.json`` holds (:class:`RetrainResult`).

Example:
    >>> RetrainResult.from_dict({"study": "s", "test_mean": {"auc": 0.9}}).test_mean["auc"]
    0.9
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from medauto.exceptions import MedautoError
from medauto.model_file import atomic_write_bytes
from medauto.model_file import nan_to_none
from medauto.scoring import METRICS

__all__ = [
    "PREDICTIONS_FILE",
    "RESULTS_FILE",
    "ROC_FILE",
    "ModelResult",
    "QuantizationResult",
    "RetrainResult",
    "SeedResult",
    "aggregate_seeds",
    "retrain_dir",
]

#: The results file of a retrain, in its output folder.
RESULTS_FILE = "retrain.json"
#: Test labels (``y_true``) and every model's and ensemble's test scores, by name.
PREDICTIONS_FILE = "predictions.npz"
#: The test ROC curve of the first seed's final model.
ROC_FILE = "roc.png"
_RESULT_FORMAT_VERSION = 1


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
    """Float32 vs int8 copy of one retrained model (see :func:`medauto.retrain.quantize_retrained`).

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
    """Everything :func:`medauto.retrain.retrain` did and measured (written as ``retrain.json``).

    ``test_mean`` / ``test_std`` aggregate :attr:`per_seed` (std: sample std, ddof 1; 0
    for one seed). With ``ensemble > 1`` each seed's numbers are those of the ensemble
    (of its first ``ensemble_used`` members). ``tta`` is the mode asked for (``"trial"``,
    ``"on"``, ``"off"``, ``"auto"``); ``val_selection`` maps each candidate ensemble size
    to its mean validation AUC when ``ensemble_select="val"``. ``evaluation`` is the first
    seed's final model's honest test results (:class:`medauto.evaluation.HonestEvaluation`;
    its ROC curve is :data:`ROC_FILE`). ``partial`` lists the trials retrained although
    they were pruned (no trial had completed: ``RetrainOptions.partial``).
    """

    study: str
    dataset: str = ""
    task: str = ""
    metric: str = ""
    direction: str = ""
    trials: list[int] = field(default_factory=list)
    trial_values: list[float] = field(default_factory=list)
    partial: list[int] = field(default_factory=list)
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


def aggregate_seeds(per_seed: list[SeedResult]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std (ddof 1; 0 for one seed) of each test metric over the seeds."""
    mean, std = {}, {}
    for k in METRICS:
        vals = np.array([s.test.get(k, math.nan) for s in per_seed], dtype=float)
        mean[k] = float(np.mean(vals))
        std[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return mean, std


def retrain_dir(run_dir: str | os.PathLike[str], study_name: str) -> Path:
    """Where the retrain of ``study_name`` writes by default: ``<run_dir>/retrain/<study>``."""
    return Path(run_dir) / "retrain" / study_name
