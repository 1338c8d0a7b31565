"""Post-training and quantization-aware int8 quantization of med_core classifiers (CPU).

Which PyTorch API, and why (details in ``docs/optimization.md``): in torch 2.15 every
entry point of ``torch.ao.quantization`` (eager ``quantize``/``quantize_dynamic``/
``prepare_qat`` and FX ``prepare_fx``/``convert_fx``) is marked deprecated, with a message
that sends eager users to torchao's ``quantize_`` API and graph-mode users to torchao's PT2E
flow; PT2E itself (``prepare_pt2e``, the quantizers) is no longer in torch at all. So:

* ``"static"`` and ``"qat"``: torchao PT2E. The model is captured with ``torch.export``
  (batch dimension dynamic), annotated by ``X86InductorQuantizer`` (int8 per-channel
  symmetric weights for Conv2d/Linear, uint8 per-tensor activations; BatchNorm is folded
  into the preceding conv), calibrated (``static``) or fine-tuned with fake quantization
  (``qat``) and converted. The result is a ``torch.fx.GraphModule`` holding int8 weights
  and explicit quantize/dequantize ops.
* ``"dynamic"``: torchao ``quantize_`` with ``Int8DynamicActivationInt8WeightConfig``, the
  documented successor of ``torch.ao.quantization.quantize_dynamic``: ``nn.Linear`` weights
  become int8 (per output row) and activations are quantized per token at run time.
  Convolutions stay float32 (``quantize_``'s int8 configs target ``nn.Linear``), so for a
  convolutional network this only shrinks the classifier head; use ``"static"`` there.

Speed: the converted PT2E graph is a *reference* representation (explicit quantize/
dequantize ops around float kernels); run eagerly it is slower than float32. It becomes
fast when compiled by Inductor with weight freezing, which fuses the patterns into oneDNN
int8 kernels: :func:`compile_quantized`. Quantized models are saved as ``torch.export`` programs
(``.pt2``; :func:`save_quantized` / :func:`load_quantized`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 2))
    >>> batches = [torch.randn(4, 1, 28, 28) for _ in range(2)]
    >>> q = quantize_model(net.eval(), "static", calibration_data=batches)  # doctest: +SKIP
    >>> quantization_info(q).int8_weights  # doctest: +SKIP
    2
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import logging
import os
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from med_core.exceptions import MedCoreError
from med_core.optimization._imports import try_import

__all__ = [
    "BACKENDS",
    "METHODS",
    "QuantizationInfo",
    "UnsupportedModelError",
    "compile_quantized",
    "convert_qat",
    "load_quantized",
    "model_size_bytes",
    "quantization_info",
    "quantize_model",
    "save_quantized",
    "set_qat_training",
]

_logger = logging.getLogger(__name__)

METHODS = ("dynamic", "static", "qat")
BACKENDS = ("x86",)

_INFO_ATTR = "med_core_quantization"
_META_FILE = "med_core_quantization.json"
_FORMAT_VERSION = 1

_INT8_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
_UNSUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


class UnsupportedModelError(MedCoreError, NotImplementedError):
    """The model (or a layer of it) cannot be quantized with the requested method/backend.

    Derives from :class:`NotImplementedError`; the message names the layer and the reason.
    """


@dataclass(frozen=True)
class QuantizationInfo:
    """What :func:`quantize_model` did; attached to the model it returns.

    Attributes:
        method: ``"dynamic"``, ``"static"`` or ``"qat"``.
        backend: The quantizer backend (``"x86"``).
        stage: ``"int8"`` for a converted model, ``"qat-prepared"`` for a model that still
            has to be fine-tuned and passed to :func:`convert_qat`.
        example_inputs: CPU tensors of the input shape (batch 2) used to export the model.
        layers: Number of Conv/Linear layers in the source model.
        int8_weights: Number of weight tensors stored as int8 (``layers`` for a fully
            quantized static/QAT model; the number of Linear layers for ``"dynamic"``).
    """

    method: str
    backend: str
    stage: str
    example_inputs: tuple[torch.Tensor, ...] = field(repr=False)
    layers: int = 0
    int8_weights: int = 0

    @property
    def float_layers(self) -> int:
        """Conv/Linear layers whose weights stayed float32."""
        return max(self.layers - self.int8_weights, 0)


# --------------------------------------------------------------------------- helpers
def _torchao() -> None:
    """Raise an ImportError naming the extra when torchao is missing."""
    with try_import("quant") as imports:
        import torchao  # noqa: F401  (also registers the quantized_decomposed ops)
    imports.check()


def quantization_info(model: nn.Module) -> QuantizationInfo | None:
    """The :class:`QuantizationInfo` of a model from :func:`quantize_model`, else ``None``.

    Example:
        >>> quantization_info(torch.nn.Linear(2, 2)) is None
        True
    """
    if isinstance(model, torch.fx.GraphModule):
        info = model.meta.get(_INFO_ATTR)
    else:
        info = getattr(model, _INFO_ATTR, None)
    return info if isinstance(info, QuantizationInfo) else None


def _set_info(model: nn.Module, info: QuantizationInfo) -> None:
    """Attach the info: in ``GraphModule.meta`` (which, unlike other attributes of a
    GraphModule, survives ``copy.deepcopy``), else as a plain attribute."""
    if isinstance(model, torch.fx.GraphModule):
        model.meta[_INFO_ATTR] = info
    else:
        setattr(model, _INFO_ATTR, info)


def _batch_inputs(batch: Any, what: str) -> tuple[torch.Tensor, ...]:
    """The model inputs of one batch: a tensor, or the first element of an (x, y) pair."""
    if isinstance(batch, torch.Tensor):
        x = batch
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        x = batch[0]
    else:
        raise TypeError(
            f"{what} must be a Tensor or an (inputs, targets) tuple/list whose first element "
            f"is a Tensor, got {type(batch).__name__}"
        )
    if x.ndim < 2:
        raise ValueError(f"{what} must have a batch dimension, got shape {tuple(x.shape)}")
    return (x.detach().to("cpu", torch.float32),)


def _export_example(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Zeros of the input shape with batch 2 (batch 1 would be specialised by export)."""
    return tuple(torch.zeros((2, *t.shape[1:]), dtype=t.dtype) for t in inputs)


def _dynamic_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch", min=1)
    return tuple({0: batch} for _ in inputs)


def _check_cpu(model: nn.Module) -> None:
    devices = {t.device.type for t in itertools.chain(model.parameters(), model.buffers())}
    if devices - {"cpu"}:
        raise ValueError(
            f"quantize_model works on CPU models (int8 kernels of the x86 backend are CPU "
            f"only); the model has tensors on {sorted(devices)}. Call model.cpu() first."
        )


def _layer_names(model: nn.Module, types: tuple[type[nn.Module], ...]) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, types)]


def _count_int8_weights(model: nn.Module) -> int:
    """Weight tensors (ndim >= 2) stored as int8, plain or inside a torchao tensor subclass."""
    count = 0
    for value in model.state_dict().values():
        if not isinstance(value, torch.Tensor) or value.ndim < 2:
            continue
        qdata = getattr(value, "qdata", None)  # torchao Int8Tensor
        dtype = qdata.dtype if isinstance(qdata, torch.Tensor) else value.dtype
        count += dtype == torch.int8
    return count


def _strip_unused_attributes(gm: torch.fx.GraphModule) -> None:
    """Drop the float parameters/buffers that convert_pt2e leaves behind unused.

    convert_pt2e stores the folded int8 weights as new attributes but keeps the original
    float32 ones registered, so a saved program would carry both (bigger than float32).
    """
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    named = list(gm.named_parameters(remove_duplicate=False)) + list(
        gm.named_buffers(remove_duplicate=False)
    )
    for name, _ in named:
        if name in used:
            continue
        owner, _, attr = name.rpartition(".")
        module = gm.get_submodule(owner) if owner else gm
        if hasattr(module, attr):
            delattr(module, attr)
    gm.delete_all_unused_submodules()


def _export(
    model: nn.Module, example: tuple[torch.Tensor, ...], *, training: bool
) -> torch.fx.GraphModule:
    """``torch.export`` a copy of the model in the given mode, batch dimension dynamic.

    The copy matters: ``ep.module()`` shares parameter and buffer storage with the module
    it was exported from, so QAT fine-tuning would otherwise change the caller's model.
    Strict (TorchDynamo) capture is tried first: it records one source partition per call
    site, which ``X86InductorQuantizer`` needs when a module is called twice (torchvision's
    BasicBlock reuses ``self.relu``). Non-strict capture is the logged fallback.
    """
    model = copy.deepcopy(model).train(training)
    dynamic_shapes = _dynamic_batch(example)
    try:
        ep = torch.export.export(model, example, dynamic_shapes=dynamic_shapes, strict=True)
    except Exception as exc:  # any capture failure: retry with the other tracer, logged
        _logger.warning(
            "strict torch.export of %s failed (%s: %s); retrying with strict=False, which "
            "may leave modules that are called more than once unannotated",
            type(model).__name__,
            type(exc).__name__,
            exc,
        )
        ep = torch.export.export(model, example, dynamic_shapes=dynamic_shapes, strict=False)
    return ep.module()


_BN_TARGETS = (torch.ops.aten.batch_norm.default,)
_CONV_TARGETS = (torch.ops.aten.conv2d.default,)


def _attr(gm: torch.fx.GraphModule, node: Any) -> torch.Tensor | None:
    """The tensor behind a ``get_attr`` node (``None`` for a ``None`` argument)."""
    if node is None:
        return None
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        raise _NotFoldable
    owner, _, name = str(node.target).rpartition(".")
    value = getattr(gm.get_submodule(owner) if owner else gm, name)
    if not isinstance(value, torch.Tensor):
        raise _NotFoldable
    return value


class _NotFoldable(Exception):
    """Internal: this conv→batch_norm pair cannot be folded (not a user-facing error)."""


def _fold_batchnorm(gm: torch.fx.GraphModule) -> int:
    """Fold every eval-mode ``batch_norm`` that follows a ``conv2d`` into its weights.

    Returns the number of batch norms that remain (not after a single-use conv2d).
    """
    graph = gm.graph
    remaining = 0
    count = 0
    for bn in list(graph.nodes):
        if bn.op != "call_function" or bn.target not in _BN_TARGETS:
            continue
        conv = bn.args[0]
        training = bn.args[5] if len(bn.args) > 5 else bn.kwargs.get("training", False)
        if (
            training
            or not isinstance(conv, torch.fx.Node)
            or conv.target not in _CONV_TARGETS
            or len(conv.users) != 1
        ):
            remaining += 1
            continue
        conv_args = list(conv.args) + [None] * (3 - len(conv.args))
        try:
            w, b = _attr(gm, conv_args[1]), _attr(gm, conv_args[2])
            bn_w, bn_b, mean, var = (_attr(gm, a) for a in bn.args[1:5])
        except _NotFoldable:
            remaining += 1
            continue
        if w is None or mean is None or var is None:
            remaining += 1
            continue
        eps = float(bn.args[7])
        fused_w, fused_b = torch.nn.utils.fusion.fuse_conv_bn_weights(
            w, b, mean, var, eps, bn_w, bn_b
        )
        names = []
        for kind, value in (("weight", fused_w), ("bias", fused_b)):
            name = f"_med_core_folded_{kind}_{count}"
            gm.register_parameter(name, torch.nn.Parameter(value.detach().clone()))
            names.append(name)
        with graph.inserting_before(conv):
            conv_args[1] = graph.get_attr(names[0])
            conv_args[2] = graph.get_attr(names[1])
        conv.args = tuple(conv_args)
        bn.replace_all_uses_with(conv)
        graph.erase_node(bn)
        count += 1
    graph.eliminate_dead_code()
    gm.recompile()
    _strip_unused_attributes(gm)
    return remaining


def _x86_quantizer(*, is_qat: bool) -> Any:
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    config = xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat)
    return xiq.X86InductorQuantizer().set_global(config)


def _annotate_error(exc: Exception, model: nn.Module) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"X86InductorQuantizer could not annotate {type(model).__name__}: "
        f"{type(exc).__name__}: {exc}"
    )


def _finish_pt2e(converted: torch.fx.GraphModule, info: QuantizationInfo) -> torch.fx.GraphModule:
    """Strip the unused float attributes, check that int8 weights exist, attach the info."""
    _strip_unused_attributes(converted)
    n_int8 = _count_int8_weights(converted)
    if n_int8 == 0:
        raise UnsupportedModelError(
            f"{info.method} quantization produced no int8 weight: the x86 quantizer matched "
            f"none of the model's {info.layers} Conv2d/Linear layers"
        )
    if n_int8 < info.layers:
        _logger.warning(
            "%s quantization left %d of %d Conv2d/Linear layers in float32 (the x86 "
            "quantizer found no supported pattern for them)",
            info.method,
            info.layers - n_int8,
            info.layers,
        )
    _set_info(converted, replace(info, stage="int8", int8_weights=n_int8))
    return converted


# --------------------------------------------------------------------------- public API
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


class _FreezingCompiled:
    """Calls a ``torch.compile`` d model with Inductor's ``freezing`` enabled for the call.

    Freezing must be on while Inductor compiles (the first call per input shape); passing
    it through ``torch.compile(options=...)`` does not reach torchao's weight-prepack
    passes in torch 2.15, and setting the global flag would change every other
    compilation in the process. The flag is patched per call and restored afterwards.
    """

    def __init__(self, model: nn.Module, *, dynamic: bool) -> None:
        self.model = model
        self._compiled = torch.compile(model, dynamic=dynamic)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self._compiled(*args, **kwargs)


def compile_quantized(model: nn.Module, *, dynamic: bool = False) -> Callable[..., Any]:
    """Compile a quantized model with Inductor weight freezing: the fast int8 CPU path.

    Freezing lets torchao's Inductor passes fuse dequantize→conv/linear→quantize into
    oneDNN int8 kernels (``onednn.qconv_pointwise``/``qlinear_pointwise``). Call the
    result under ``torch.no_grad()``; the first call per input shape compiles (seconds to
    a minute). Importing torchao's x86 quantizer registers those passes (and sets
    Inductor's ``pre_grad_custom_pass``, a torchao side effect).

    Args:
        model: Any model; usually from :func:`quantize_model` or :func:`load_quantized`.
        dynamic: Passed to ``torch.compile``. ``False`` (default) compiles one graph per
            batch size: with torch 2.15 + torchao 0.18 a symbolic batch size fails to
            lower ``onednn.qconv_prepack``.

    Returns:
        A callable with the model's signature.

    Raises:
        ImportError: If torchao is not installed.
    """
    _torchao()
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer  # noqa: F401

    return _FreezingCompiled(model, dynamic=dynamic)


def save_quantized(model: nn.Module, path: str | os.PathLike[str] | io.BytesIO) -> Path | None:
    """Save a quantized model as a ``torch.export`` program (``.pt2``), batch size dynamic.

    Args:
        model: A model from :func:`quantize_model` (or :func:`load_quantized`) with stage
            ``"int8"``.
        path: Destination file (parents are created), or a binary buffer.

    Returns:
        The path written (``None`` for a buffer).

    Raises:
        ValueError: If ``model`` is not a converted quantized model.
    """
    info = quantization_info(model)
    if info is None or info.stage != "int8":
        raise ValueError(
            "save_quantized needs an int8 model from quantize_model/convert_qat/"
            f"load_quantized; got {type(model).__name__} (info: {info}). Save float models "
            "with torch.save(model.state_dict(), path)."
        )
    ep = torch.export.export(
        model, info.example_inputs, dynamic_shapes=_dynamic_batch(info.example_inputs)
    )
    meta = {
        "format_version": _FORMAT_VERSION,
        "method": info.method,
        "backend": info.backend,
        "input_shapes": [list(t.shape[1:]) for t in info.example_inputs],
        "layers": info.layers,
        "int8_weights": info.int8_weights,
        "torch": torch.__version__,
    }
    extra = {_META_FILE: json.dumps(meta)}
    if isinstance(path, io.BytesIO):
        torch.export.save(ep, path, extra_files=extra)
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(ep, out, extra_files=extra)
    return out


def load_quantized(path: str | os.PathLike[str] | io.BytesIO) -> torch.fx.GraphModule:
    """Load a model written by :func:`save_quantized` (eager reference; see
    :func:`compile_quantized` for speed).

    Args:
        path: The ``.pt2`` file or buffer.

    Returns:
        A ``torch.fx.GraphModule`` carrying the saved :class:`QuantizationInfo`.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is a ``torch.export`` program not written by save_quantized.
        ImportError: If torchao is not installed (it registers the quantized ops).
    """
    _torchao()
    if not isinstance(path, io.BytesIO) and not Path(path).is_file():
        raise FileNotFoundError(f"no quantized model file at {os.fspath(path)!r}")
    extra: dict[str, Any] = {_META_FILE: ""}
    ep = torch.export.load(path, extra_files=extra)
    if not extra[_META_FILE]:
        raise ValueError(
            f"{path!r} is a torch.export program without med_core quantization metadata "
            "(not written by save_quantized)"
        )
    meta = json.loads(extra[_META_FILE])
    module = ep.module()
    example = tuple(torch.zeros((2, *shape)) for shape in meta["input_shapes"])
    info = QuantizationInfo(
        method=meta["method"],
        backend=meta["backend"],
        stage="int8",
        example_inputs=example,
        layers=int(meta["layers"]),
        int8_weights=int(meta["int8_weights"]),
    )
    _set_info(module, info)
    return module


def model_size_bytes(model_or_path: nn.Module | str | os.PathLike[str]) -> int:
    """Size in bytes of a model file, or of the file a model would be saved to.

    Args:
        model_or_path: A path (file size on disk; a directory: the sum of its files), an
            int8 model (its :func:`save_quantized` program) or any other model (its
            ``torch.save(model.state_dict())`` file).

    Returns:
        The size in bytes.

    Raises:
        FileNotFoundError: If a path does not exist.

    Example:
        >>> model_size_bytes(torch.nn.Linear(256, 256)) > 256 * 256 * 4
        True
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        p = Path(model_or_path)
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        if not p.is_file():
            raise FileNotFoundError(f"no file at {os.fspath(p)!r}")
        return p.stat().st_size
    buf = io.BytesIO()
    info = quantization_info(model_or_path)
    if info is not None and info.stage == "int8":
        save_quantized(model_or_path, buf)
    else:
        torch.save(model_or_path.state_dict(), buf)
    return len(buf.getvalue())
