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

from med_core.optimization._quant_deploy import compile_quantized as compile_quantized
from med_core.optimization._quant_deploy import load_quantized as load_quantized
from med_core.optimization._quant_deploy import model_size_bytes as model_size_bytes
from med_core.optimization._quant_deploy import save_quantized as save_quantized
from med_core.optimization._quant_info import BACKENDS as BACKENDS
from med_core.optimization._quant_info import METHODS as METHODS
from med_core.optimization._quant_info import QuantizationInfo as QuantizationInfo
from med_core.optimization._quant_info import UnsupportedModelError as UnsupportedModelError
from med_core.optimization._quant_info import quantization_info as quantization_info
from med_core.optimization._quantize import convert_qat as convert_qat
from med_core.optimization._quantize import quantize_model as quantize_model
from med_core.optimization._quantize import set_qat_training as set_qat_training

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
