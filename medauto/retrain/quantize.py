"""int8 quantization of a retrained model: re-tested on the test split, size and latency.

The numbers land in :class:`~medauto.retrain.results.QuantizationResult` (``retrain.json``).
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import torch

from med_core.data import load_dataset
from med_core.exceptions import MedCoreError
from med_core.optimization import compile_quantized
from med_core.optimization import load_quantized
from med_core.optimization import measure_latency
from med_core.optimization import quantize_model
from med_core.optimization import save_quantized
from medauto.logging import get_logger
from medauto.model_file import load_model
from medauto.retrain.options import QUANT_METHODS
from medauto.retrain.results import QuantizationResult
from medauto.scoring import eval_loader
from medauto.scoring import predict_scores
from medauto.scoring import split_metrics

if TYPE_CHECKING:
    from torch import nn

    from med_core.data import MedicalDataset

__all__ = ["quantize_retrained"]

_logger = get_logger(__name__)


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
    if method not in QUANT_METHODS:
        raise ValueError(f"method must be one of {QUANT_METHODS}, got {method!r}")
    if calibration_batches < 1:
        raise ValueError(f"calibration_batches must be >= 1, got {calibration_batches}")
    src = Path(model_path)
    loaded = load_model(src, device="cpu")
    cfg, meta, model = loaded.config, loaded.meta, loaded.model
    if dataset is None:
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
