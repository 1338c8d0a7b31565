"""ONNX export with the onnxruntime parity check, and the errors around it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from med_core.optimization import OnnxParityError
from med_core.optimization import export_onnx
from med_core.optimization import prune_model
from med_core.optimization import quantize_model


class _Drifting(nn.Module):
    """Adds a call counter (a Python int) to its output: export freezes the counter as a
    constant, so the ONNX graph and later eager calls disagree. The parity check must
    catch that."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(x.flatten(1)) + self.calls  # type: ignore[no-any-return]


def test_pruned_classifier_exports_with_parity(
    tiny: nn.Module, breast: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime missing: pip install 'medauto[onnx]'")
    import onnxruntime

    prune_model(tiny, 0.5)
    tiny.train()  # export_onnx exports in eval mode and restores the mode
    x = breast["test"][:4]
    report = export_onnx(tiny, tmp_path / "onnx" / "tiny.onnx", x)
    assert tiny.training
    assert report.path.is_file() and report.size_bytes == report.path.stat().st_size
    assert not list(tmp_path.glob("onnx/*.data"))  # weights embedded: one file
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    assert report.parity_batch_sizes == (4, 5)  # the dynamic batch axis was exercised
    assert report.opset_version >= 18

    # independently: the file answers like the model, for a batch size never seen
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.shape[0] == "batch"
    got = session.run(None, {"input": breast["test"][:7].numpy()})[0]
    with torch.no_grad():
        expected = tiny.eval()(breast["test"][:7])
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-3)


def test_parity_mismatch_raises(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime missing: pip install 'medauto[onnx]'")
    with pytest.raises(OnnxParityError, match="onnxruntime output differs from PyTorch"):
        export_onnx(_Drifting(), tmp_path / "drift.onnx", torch.randn(3, 1, 2, 2))
    assert issubclass(OnnxParityError, AssertionError)


def test_missing_onnxruntime_names_the_extra(
    tiny: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ImportError, match=r"'onnxruntime'.*pip install 'medauto\[onnx\]'"):
        export_onnx(tiny, tmp_path / "m.onnx", torch.zeros(2, 1, 28, 28))
    assert not (tmp_path / "m.onnx").exists()


def test_missing_onnx_names_the_extra_even_without_parity(
    tiny: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'medauto\[onnx\]'"):
        export_onnx(tiny, tmp_path / "m.onnx", torch.zeros(2, 1, 28, 28), check_parity=False)


def test_quantized_model_is_refused(tiny: nn.Module, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="onnx missing: pip install 'medauto[onnx]'")
    q = quantize_model(tiny, "dynamic", example_inputs=torch.zeros(2, 1, 28, 28))
    with pytest.raises(NotImplementedError, match="export_onnx exports float models"):
        export_onnx(q, tmp_path / "q.onnx", torch.zeros(2, 1, 28, 28))


def test_example_input_must_be_a_tensor(tiny: nn.Module, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="onnx missing: pip install 'medauto[onnx]'")
    with pytest.raises(TypeError, match="example_input must be a Tensor"):
        export_onnx(tiny, tmp_path / "m.onnx", [1, 2, 3], check_parity=False)  # type: ignore[arg-type]
