"""Model compression and export: int8 quantization, pruning, ONNX, and measurement.

* :func:`quantize_model` — ``"static"`` / ``"qat"`` int8 through torchao's PT2E flow
  (``X86InductorQuantizer``), ``"dynamic"`` int8 Linear weights through torchao's
  ``quantize_``; :func:`convert_qat`, :func:`set_qat_training`, :func:`compile_quantized`
  (Inductor + freezing: the fast int8 CPU path); :func:`save_quantized` /
  :func:`load_quantized` (``torch.export`` ``.pt2`` programs); :func:`model_size_bytes`.
* :func:`prune_model` — structured (filter) or unstructured magnitude pruning with a
  fine-tuning hook, made permanent.
* :func:`export_onnx` — ONNX export with an onnxruntime parity check.
* :func:`measure_latency` — CPU latency per batch (median/p90 ms).

torchao (extra ``quant``) and onnx/onnxruntime/onnxscript (extra ``onnx``) are imported
only when a function needs them; a missing one raises ImportError naming the extra.
See ``docs/optimization.md`` for why torchao rather than ``torch.ao.quantization``.
"""

from __future__ import annotations

from med_core.optimization._measure import measure_latency as measure_latency
from med_core.optimization.export import OnnxExportReport as OnnxExportReport
from med_core.optimization.export import OnnxParityError as OnnxParityError
from med_core.optimization.export import export_onnx as export_onnx
from med_core.optimization.pruning import PruningReport as PruningReport
from med_core.optimization.pruning import prune_model as prune_model
from med_core.optimization.quantization import BACKENDS as BACKENDS
from med_core.optimization.quantization import METHODS as METHODS
from med_core.optimization.quantization import QuantizationInfo as QuantizationInfo
from med_core.optimization.quantization import UnsupportedModelError as UnsupportedModelError
from med_core.optimization.quantization import compile_quantized as compile_quantized
from med_core.optimization.quantization import convert_qat as convert_qat
from med_core.optimization.quantization import load_quantized as load_quantized
from med_core.optimization.quantization import model_size_bytes as model_size_bytes
from med_core.optimization.quantization import quantization_info as quantization_info
from med_core.optimization.quantization import quantize_model as quantize_model
from med_core.optimization.quantization import save_quantized as save_quantized
from med_core.optimization.quantization import set_qat_training as set_qat_training

__all__ = [
    "BACKENDS",
    "METHODS",
    "OnnxExportReport",
    "OnnxParityError",
    "PruningReport",
    "QuantizationInfo",
    "UnsupportedModelError",
    "compile_quantized",
    "convert_qat",
    "export_onnx",
    "load_quantized",
    "measure_latency",
    "model_size_bytes",
    "prune_model",
    "quantization_info",
    "quantize_model",
    "save_quantized",
    "set_qat_training",
]
