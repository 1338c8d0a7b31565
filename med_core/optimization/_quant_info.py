"""What a quantized model records about itself (:class:`QuantizationInfo`), the layer
sets that quantize, and the checks every method shares (see
:mod:`med_core.optimization.quantization`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from dataclasses import field

import torch
from torch import nn

from med_core.exceptions import MedCoreError
from med_core.optimization._imports import try_import

__all__ = ["BACKENDS", "METHODS", "QuantizationInfo", "UnsupportedModelError", "quantization_info"]


METHODS = ("dynamic", "static", "qat")


BACKENDS = ("x86",)


_INFO_ATTR = "med_core_quantization"


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
