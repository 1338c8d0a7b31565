"""The PT2E steps of static and QAT quantization: capture with ``torch.export``, fold
BatchNorm into convolutions, annotate with the x86 quantizer, convert.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from med_core.optimization._quant_info import QuantizationInfo
from med_core.optimization._quant_info import UnsupportedModelError
from med_core.optimization._quant_info import _count_int8_weights
from med_core.optimization._quant_info import _set_info

__all__ = []

_logger = logging.getLogger("med_core.optimization.quantization")


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
