"""The quantization entry points: :func:`quantize_model` (static, dynamic, QAT
preparation), :func:`set_qat_training` and :func:`convert_qat`.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from med_core.optimization._pt2e import _annotate_error
from med_core.optimization._pt2e import _batch_inputs
from med_core.optimization._pt2e import _export
from med_core.optimization._pt2e import _export_example
from med_core.optimization._pt2e import _finish_pt2e
from med_core.optimization._pt2e import _fold_batchnorm
from med_core.optimization._pt2e import _x86_quantizer
from med_core.optimization._quant_info import _INT8_LAYERS
from med_core.optimization._quant_info import _UNSUPPORTED_LAYERS
from med_core.optimization._quant_info import BACKENDS
from med_core.optimization._quant_info import METHODS
from med_core.optimization._quant_info import QuantizationInfo
from med_core.optimization._quant_info import UnsupportedModelError
from med_core.optimization._quant_info import _check_cpu
from med_core.optimization._quant_info import _count_int8_weights
from med_core.optimization._quant_info import _layer_names
from med_core.optimization._quant_info import _set_info
from med_core.optimization._quant_info import _torchao
from med_core.optimization._quant_info import quantization_info

__all__ = ["convert_qat", "quantize_model", "set_qat_training"]

_logger = logging.getLogger("med_core.optimization.quantization")


def quantize_model(
    model: nn.Module,
    method: str = "static",
    *,
    calibration_data: Iterable[Any] | None = None,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    backend: str = "x86",
    max_calibration_batches: int | None = None,
    fine_tune: Callable[[nn.Module], object] | None = None,
    fold_bn: bool = True,
) -> nn.Module:
    """Quantize a float CPU model to int8; the input model is never modified.

    Args:
        model: A float32 CPU model (a med_core ``Classifier``; inputs ``(B, C, H, W)``).
            ``"static"``/``"dynamic"`` quantize its eval-mode behaviour, ``"qat"`` captures
            its training-mode graph; its own mode is restored afterwards.
        method: ``"static"`` (int8 weights and activations, activation ranges calibrated
            on ``calibration_data``), ``"dynamic"`` (int8 ``nn.Linear`` weights, activations
            quantized at run time) or ``"qat"`` (fake-quantized model for fine-tuning).
        calibration_data: Iterable of batches, each a Tensor or an ``(inputs, targets)``
            pair (a med_core ``BatchLoader`` works). Required for ``"static"``; a few
            batches of training images suffice.
        example_inputs: An input batch (Tensor or tuple of one Tensor) giving the input
            shape. Default: the first calibration batch. Required for ``"qat"`` and
            ``"dynamic"`` when ``calibration_data`` is not given.
        backend: Quantizer backend; only ``"x86"`` (``X86InductorQuantizer``).
        max_calibration_batches: Stop calibrating after this many batches (``None``: all).
        fine_tune: ``"qat"`` only. ``fine_tune(prepared)`` trains the fake-quantized model
            in place (call :func:`set_qat_training` around your loop; plain ``.train()``
            is not supported on exported models); the model is then converted. Without it
            the prepared model is returned for you to fine-tune and :func:`convert_qat`.
        fold_bn: ``"qat"`` only. ``True`` (default): fold each BatchNorm into the conv
            before it (running statistics frozen), then fine-tune conv weights and biases
            with fake quantization. This is the usual setting for a short fine-tune of a
            trained model, and fast. ``False``: keep BatchNorm in training mode, simulated
            by torchao's conv-bn QAT patterns; with torch 2.15 + torchao 0.18 that costs
            about 1-2 minutes of pattern tracing at prepare and convert, whatever the
            model size.

    Returns:
        ``"static"``/converted ``"qat"``: a ``torch.fx.GraphModule`` with int8 weights.
        ``"dynamic"``: a deep copy of ``model`` whose Linear weights are torchao
        ``Int8Tensor`` s. ``"qat"`` without ``fine_tune``: the prepared model. Each carries
        a :class:`QuantizationInfo` (:func:`quantization_info`).

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or a batch has the wrong type.
        ValueError: For an unknown ``method``/``backend``, a non-CPU model, missing or empty
            ``calibration_data`` (static), missing example inputs, ``fine_tune`` with a
            method other than ``"qat"``, or ``max_calibration_batches < 1``.
        UnsupportedModelError: If the model has layers the method cannot quantize (Conv1d/
            Conv3d/ConvTranspose for static/QAT; no ``nn.Linear`` for dynamic) or the
            result holds no int8 weight.
        ImportError: If torchao is not installed (``pip install 'medauto[quant]'``).

    Example:
        >>> from torch import nn
        >>> quantize_model(nn.Linear(2, 2), "int4")
        Traceback (most recent call last):
        ...
        ValueError: method must be one of ('dynamic', 'static', 'qat'), got 'int4'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {BACKENDS} (X86InductorQuantizer, CPU), got {backend!r}"
        )
    if fine_tune is not None and method != "qat":
        raise ValueError(f"fine_tune is only used with method='qat', got method={method!r}")
    if max_calibration_batches is not None and max_calibration_batches < 1:
        raise ValueError(f"max_calibration_batches must be >= 1, got {max_calibration_batches}")
    if quantization_info(model) is not None:
        raise ValueError("model is already quantized (it carries a QuantizationInfo)")
    _check_cpu(model)
    _torchao()

    if method == "static" and calibration_data is None:
        raise ValueError(
            "static quantization needs calibration_data: an iterable of input batches "
            "(e.g. a few training batches) to calibrate the activation observers"
        )
    batches: Iterable[Any] = () if calibration_data is None else calibration_data
    if max_calibration_batches is not None:
        batches = itertools.islice(batches, max_calibration_batches)
    iterator = iter(batches)
    first = next(iterator, None)
    if example_inputs is not None:
        inputs = _batch_inputs(example_inputs, "example_inputs")
    elif first is not None:
        inputs = _batch_inputs(first, "calibration batch")
    elif calibration_data is not None:
        raise ValueError("calibration_data is empty: it yielded no batch")
    else:
        raise ValueError(
            f"method={method!r} needs example_inputs (an input batch) to know the input shape"
        )
    layers = len(_layer_names(model, _INT8_LAYERS + _UNSUPPORTED_LAYERS))
    info = QuantizationInfo(method, backend, "", _export_example(inputs), layers=layers)

    if method == "dynamic":
        return _quantize_dynamic(model, info)
    bad = [n for n, m in model.named_modules() if isinstance(m, _UNSUPPORTED_LAYERS)]
    if bad:
        raise UnsupportedModelError(
            f"{method} int8 quantization with the x86 backend supports Conv2d and Linear "
            f"layers only; {type(model).__name__} has {len(bad)} other convolution layers "
            f"(first: {bad[0]!r}, {type(model.get_submodule(bad[0])).__name__}). 3D/1D and "
            f"transposed convolutions are not supported."
        )

    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    if method == "qat":
        graph = _export(model, info.example_inputs, training=not fold_bn)
        if fold_bn:
            left = _fold_batchnorm(graph)
            if left:
                _logger.warning(
                    "QAT: %d BatchNorm layers do not follow a conv2d and were not folded; "
                    "they train with batch statistics",
                    left,
                )
        try:
            prepared = prepare_qat_pt2e(graph, _x86_quantizer(is_qat=True))
        except (ValueError, AssertionError, RuntimeError) as exc:
            raise _annotate_error(exc, model) from exc
        _set_info(prepared, replace(info, stage="qat-prepared"))
        set_qat_training(prepared, True)
        if fine_tune is None:
            return prepared
        fine_tune(prepared)
        return convert_qat(prepared)

    graph = _export(model, info.example_inputs, training=False)
    try:
        prepared = prepare_pt2e(graph, _x86_quantizer(is_qat=False))
    except (ValueError, AssertionError, RuntimeError) as exc:
        raise _annotate_error(exc, model) from exc
    n_batches = 0
    with torch.no_grad():
        for batch in itertools.chain([first], iterator):
            prepared(*_batch_inputs(batch, "calibration batch"))
            n_batches += 1
    _logger.info("calibrated static int8 observers on %d batches", n_batches)
    return _finish_pt2e(convert_pt2e(prepared), info)


def _quantize_dynamic(model: nn.Module, info: QuantizationInfo) -> nn.Module:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    from torchao.quantization import quantize_

    linears = _layer_names(model, (nn.Linear,))
    if not linears:
        raise UnsupportedModelError(
            f"dynamic quantization converts nn.Linear weights to int8, and "
            f"{type(model).__name__} has no nn.Linear layer; use method='static'"
        )
    quantized = copy.deepcopy(model)
    # set_inductor_config=False: torchao would otherwise change global Inductor settings
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    n_int8 = _count_int8_weights(quantized)
    if n_int8 < len(linears):
        raise UnsupportedModelError(
            f"dynamic quantization converted {n_int8} of {len(linears)} nn.Linear layers"
        )
    convs = tuple(_layer_names(model, (nn.Conv1d, nn.Conv2d, nn.Conv3d)))
    if convs:
        _logger.info(
            "dynamic quantization keeps %d convolution layers in float32; only the %d "
            "Linear layers are int8 (use method='static' for convolutional networks)",
            len(convs),
            len(linears),
        )
    _set_info(quantized, replace(info, stage="int8", int8_weights=n_int8))
    return quantized


def set_qat_training(model: nn.Module, training: bool = True) -> nn.Module:
    """Switch a QAT-prepared model between training and eval behaviour (in place).

    Exported graphs do not support ``model.train()``/``model.eval()``; this rewrites the
    dropout and batch-norm ops instead (torchao ``move_exported_model_to_train/eval``).

    Args:
        model: A model from ``quantize_model(..., "qat")`` without ``fine_tune``.
        training: ``True`` for fine-tuning, ``False`` for evaluation.

    Returns:
        The same model.

    Raises:
        ValueError: If ``model`` is not a QAT-prepared model.
    """
    info = quantization_info(model)
    if info is None or info.stage != "qat-prepared" or not isinstance(model, torch.fx.GraphModule):
        raise ValueError("set_qat_training needs a model from quantize_model(..., method='qat')")
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e import move_exported_model_to_train

    (move_exported_model_to_train if training else move_exported_model_to_eval)(model)
    return model


def convert_qat(model: nn.Module) -> torch.fx.GraphModule:
    """Convert a fine-tuned QAT-prepared model to int8 (eval behaviour).

    Args:
        model: A model from ``quantize_model(..., method="qat")`` (not yet converted).

    Returns:
        A ``torch.fx.GraphModule`` with int8 weights, like ``method="static"`` returns.

    Raises:
        ValueError: If ``model`` is not a QAT-prepared model, or its fake-quantize
            observers have seen no data (no forward pass since :func:`quantize_model`).
        UnsupportedModelError: If no int8 weight results.
    """
    info = quantization_info(model)
    if info is None or info.stage != "qat-prepared" or not isinstance(model, torch.fx.GraphModule):
        raise ValueError(
            "convert_qat needs the model returned by quantize_model(..., method='qat') "
            f"before conversion; got {type(model).__name__} with info {info}"
        )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    unobserved = _unobserved_fake_quants(model)
    if unobserved:
        raise ValueError(
            f"{len(unobserved)} fake-quantize observers of the QAT model have seen no data "
            f"(first: {unobserved[0]!r}), so their int8 ranges are undefined: run at least "
            "one forward pass in training mode (the fine-tuning) before convert_qat"
        )
    set_qat_training(model, False)
    return _finish_pt2e(convert_pt2e(model), info)


def _unobserved_fake_quants(model: nn.Module) -> list[str]:
    """Names of fake-quantize modules whose observer has recorded no min/max yet."""
    names = []
    for name, module in model.named_modules():
        observer = getattr(module, "activation_post_process", None)
        low = getattr(observer, "min_val", None)
        if isinstance(low, torch.Tensor) and (low.numel() == 0 or not torch.isfinite(low).all()):
            names.append(name)
    return names
