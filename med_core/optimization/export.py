"""ONNX export of float med_core models, with an onnxruntime parity check.

Uses ``torch.onnx.export(..., dynamo=True)``, the default and recommended exporter in
torch 2.15 (``torch.export`` capture, translation by onnxscript). It needs the ``onnx``
extra: ``pip install 'medauto[onnx]'`` (onnx, onnxruntime, onnxscript).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    >>> report = export_onnx(net, "net.onnx", torch.randn(2, 1, 2, 2))  # doctest: +SKIP
    >>> report.max_abs_diff < 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from med_core.exceptions import MedCoreError
from med_core.optimization._imports import try_import

__all__ = ["OnnxExportReport", "OnnxParityError", "export_onnx"]

_logger = logging.getLogger(__name__)


class OnnxParityError(MedCoreError, AssertionError):
    """onnxruntime's outputs differ from PyTorch's beyond the tolerance."""


@dataclass(frozen=True)
class OnnxExportReport:
    """Result of :func:`export_onnx`.

    Attributes:
        path: The ``.onnx`` file written (weights embedded, no external data file).
        size_bytes: Its size on disk.
        opset_version: The ONNX opset of the default domain.
        max_abs_diff: Largest ``|onnxruntime - torch|`` over the parity batches, or
            ``None`` without a parity check.
        parity_batch_sizes: Batch sizes checked (the example's and one more, which
            exercises the dynamic batch axis).
    """

    path: Path
    size_bytes: int
    opset_version: int
    max_abs_diff: float | None
    parity_batch_sizes: tuple[int, ...] = ()


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_input: torch.Tensor,
    *,
    check_parity: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    dynamic_batch: bool = True,
    opset_version: int | None = None,
) -> OnnxExportReport:
    """Export a float model to ONNX (eval mode), then check it against onnxruntime.

    The graph has one input ``"input"`` and one output ``"logits"``; with
    ``dynamic_batch`` the batch axis is symbolic (``"batch"``).

    Args:
        model: A float32 CPU model. It is exported in eval mode; its own mode is restored.
        path: Destination ``.onnx`` file (parents are created).
        example_input: One input batch ``(B, C, H, W)``; B >= 2 is used as is, a batch of 1
            is repeated to 2 (a batch of 1 would be fixed by ``torch.export``).
        check_parity: Run onnxruntime (CPU) on the example batch and on a batch one larger,
            and require ``|ort - torch| <= atol + rtol * |torch|`` elementwise.
        atol: Absolute tolerance of the parity check (logits are float32).
        rtol: Relative tolerance of the parity check.
        dynamic_batch: Export the batch axis as dynamic.
        opset_version: ONNX opset; ``None`` = the exporter's default.

    Returns:
        An :class:`OnnxExportReport`.

    Raises:
        ImportError: If onnx/onnxscript (export) or onnxruntime (parity check) is missing;
            the message says ``pip install 'medauto[onnx]'``.
        TypeError: If ``example_input`` is not a Tensor.
        NotImplementedError: For a model from ``quantize_model`` (int8 PT2E graphs are not
            exported to ONNX here; export the float model).
        OnnxParityError: If onnxruntime and PyTorch outputs differ beyond the tolerance
            (the file is kept for inspection).
    """
    from med_core.optimization.quantization import quantization_info

    with try_import("onnx") as exporter:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    exporter.check()
    with try_import("onnx") as runtime:
        import onnxruntime
    if check_parity:
        runtime.check()

    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a Tensor, got {type(example_input).__name__}")
    if quantization_info(model) is not None:
        raise NotImplementedError(
            "export_onnx exports float models; this one comes from quantize_model. Export "
            "the float (or pruned) model, and quantize the ONNX graph with onnxruntime's "
            "quantization tools if an int8 ONNX model is needed."
        )
    x = example_input.detach().to("cpu")
    if x.shape[0] < 2:
        x = x.repeat(2, *([1] * (x.ndim - 1)))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)

    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    was_training = model.training
    model.eval()
    try:
        torch.onnx.export(
            model,
            (x,),
            str(out),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset_version,
            external_data=False,
            verbose=False,
        )
        onnx_model = onnx.load(str(out))
        onnx.checker.check_model(onnx_model)
        opset = next(
            (o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), -1
        )
        max_diff: float | None = None
        checked: tuple[int, ...] = ()
        if check_parity:
            batches = [x]
            if dynamic_batch:
                batches.append(torch.cat([x, x[:1]]))
            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            max_diff = 0.0
            for batch in batches:
                with torch.no_grad():
                    expected = model(batch).detach().float()
                got = torch.from_numpy(session.run(None, {"input": batch.numpy()})[0])
                diff = (got - expected).abs()
                max_diff = max(max_diff, float(diff.max()))
                bound = atol + rtol * expected.abs()
                if got.shape != expected.shape or bool((diff > bound).any()):
                    raise OnnxParityError(
                        f"onnxruntime output differs from PyTorch for batch {batch.shape[0]}: "
                        f"max |diff| {float(diff.max()):.3g} > atol {atol} + rtol {rtol}*|ref| "
                        f"(shapes {tuple(got.shape)} vs {tuple(expected.shape)}); file: {out}"
                    )
            checked = tuple(b.shape[0] for b in batches)
    finally:
        model.train(was_training)
    size = out.stat().st_size
    _logger.info("exported %s to %s (%d bytes, opset %d)", type(model).__name__, out, size, opset)
    return OnnxExportReport(out, size, opset, max_diff, checked)
