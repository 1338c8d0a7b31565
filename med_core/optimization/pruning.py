"""Magnitude pruning of med_core models with ``torch.nn.utils.prune``, made permanent.

Structured pruning (the default) zeroes whole output filters of every convolution: for
each conv, the ``round(sparsity * out_channels)`` filters with the smallest L-n norm
(``prune.ln_structured`` along ``dim=0``). Linear layers are left alone in this mode, so
the classifier head keeps all its classes. Unstructured pruning zeroes the individual
weights of smallest magnitude (``prune.l1_unstructured``) in every conv and linear layer.

Pruning here only *zeroes* weights; tensor shapes stay the same, so the model is neither
smaller on disk nor faster by itself. It is a step before fine-tuning, sparse-aware
export, or physically removing channels.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
    >>> net, report = prune_model(net, 0.5)
    >>> report.sparsity, report.channels_pruned, report.channels_total
    (0.5, 4, 8)
    >>> net(torch.randn(1, 1, 8, 8)).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = ["PruningReport", "prune_model"]

_logger = logging.getLogger(__name__)

_CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class PruningReport:
    """What :func:`prune_model` achieved, measured on the weights after ``prune.remove``.

    Attributes:
        requested: The requested sparsity (fraction in [0, 1)).
        structured: Whether whole filters were pruned.
        sparsity: Fraction of zero weights over all pruned weight tensors.
        model_sparsity: Fraction of zero values over all parameters of the model.
        layers: Per pruned layer name: its fraction of zero weights.
        channels_pruned: Structured: output filters that are entirely zero (0 otherwise).
        channels_total: Structured: output filters of the pruned layers (0 otherwise).
        fine_tuned: Whether the ``fine_tune`` callback ran.
    """

    requested: float
    structured: bool
    sparsity: float
    model_sparsity: float
    layers: dict[str, float] = field(default_factory=dict)
    channels_pruned: int = 0
    channels_total: int = 0
    fine_tuned: bool = False


def prune_model(
    model: nn.Module,
    sparsity: float,
    *,
    structured: bool = True,
    norm: int | float = 2,
    exclude: tuple[str, ...] = (),
    fine_tune: Callable[[nn.Module], object] | None = None,
) -> tuple[nn.Module, PruningReport]:
    """Prune ``model`` in place to ``sparsity``, optionally fine-tune, and make it permanent.

    Args:
        model: The model; modified in place (deep-copy it first to keep the original).
        sparsity: Fraction of filters (structured) or weights (unstructured) to zero in
            each pruned layer, in [0, 1). Per layer, ``round(sparsity * n)`` are pruned.
        structured: ``True``: L-``norm`` filter pruning of every Conv1d/2d/3d
            (``prune.ln_structured``, ``dim=0``). ``False``: L1 unstructured pruning of
            every convolution and Linear layer.
        norm: The norm ranking filters in structured mode (2 = L2).
        exclude: Names of layers (as in ``model.named_modules()``) not to prune.
        fine_tune: Called as ``fine_tune(model)`` while the pruning masks are still active
            (zeroed weights stay zero through the optimizer steps), before the masks are
            made permanent. Its return value is ignored.

    Returns:
        ``(model, report)``: the same model object, without pruning hooks or
        ``weight_orig``/``weight_mask`` tensors, and a :class:`PruningReport`.

    Raises:
        TypeError: If ``sparsity`` is not a number.
        ValueError: If ``sparsity`` is outside [0, 1), ``exclude`` names an unknown layer,
            or the model has no layer to prune.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a float in [0, 1), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    names = {name for name, _ in model.named_modules()}
    unknown = sorted(set(exclude) - names)
    if unknown:
        raise ValueError(f"exclude names layers that the model does not have: {unknown}")
    types: tuple[type[nn.Module], ...] = _CONV_TYPES if structured else (*_CONV_TYPES, nn.Linear)
    targets: list[tuple[str, nn.Module]] = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, types) and name not in exclude
    ]
    if not targets:
        kinds = "convolution" if structured else "convolution or Linear"
        raise ValueError(f"{type(model).__name__} has no {kinds} layer to prune")

    amount = float(sparsity)
    for _, module in targets:
        if structured:
            prune.ln_structured(module, "weight", amount=amount, n=norm, dim=0)
        else:
            prune.l1_unstructured(module, "weight", amount=amount)
    if fine_tune is not None:
        fine_tune(model)
    for _, module in targets:
        prune.remove(module, "weight")

    layers: dict[str, float] = {}
    zeros = total = channels_pruned = channels_total = 0
    with torch.no_grad():
        for name, module in targets:
            w = module.get_parameter("weight")
            layer_zeros = int((w == 0).sum())
            layers[name] = layer_zeros / w.numel()
            zeros += layer_zeros
            total += w.numel()
            if structured:
                channels_total += w.shape[0]
                channels_pruned += int((w.flatten(1) == 0).all(dim=1).sum())
        all_zero = sum(int((p == 0).sum()) for p in model.parameters())
        all_total = sum(p.numel() for p in model.parameters())
    report = PruningReport(
        requested=amount,
        structured=structured,
        sparsity=zeros / total,
        model_sparsity=all_zero / max(all_total, 1),
        layers=layers,
        channels_pruned=channels_pruned,
        channels_total=channels_total,
        fine_tuned=fine_tune is not None,
    )
    _logger.info(
        "pruned %d layers (%s): %.1f%% of their weights are zero, %.1f%% of the model",
        len(targets),
        "structured" if structured else "unstructured",
        100 * report.sparsity,
        100 * report.model_sparsity,
    )
    return model, report
