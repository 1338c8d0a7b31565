"""int8 quantization: real int8 weights, outputs close to float32 on BreastMNIST images,
smaller files, QAT prepare → fine-tune → convert, and errors that name the problem."""

from __future__ import annotations

import copy
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from med_core.optimization import UnsupportedModelError
from med_core.optimization import compile_quantized
from med_core.optimization import convert_qat
from med_core.optimization import load_quantized
from med_core.optimization import model_size_bytes
from med_core.optimization import quantization_info
from med_core.optimization import quantize_model
from med_core.optimization import save_quantized
from med_core.optimization import set_qat_training


# ------------------------------------------------------------------------------ helpers
def _closeness(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """How far int8 logits are from float32 logits, in the terms the tests state.

    argmax: fraction of images with the same predicted class; corr: Pearson correlation of
    the positive-class softmax scores; max_prob: largest |Δ score|; rel: ||Δ logits|| over
    the spread of the float logits (a constant output scores 1.0 here, not 0).
    """
    p_ref, p_out = ref.softmax(1)[:, 1], out.softmax(1)[:, 1]
    return {
        "argmax": float((ref.argmax(1) == out.argmax(1)).float().mean()),
        "corr": float(np.corrcoef(p_ref.numpy(), p_out.numpy())[0, 1]),
        "max_prob": float((p_ref - p_out).abs().max()),
        "rel": float((out - ref).norm() / (ref - ref.mean(0)).norm()),
    }


def _assert_close(ref: torch.Tensor, out: torch.Tensor) -> None:
    # Tolerances: same class on >= 95 % of the 64 test images, scores correlated >= 0.98,
    # |Δ positive-class probability| <= 0.05, logit error <= 15 % of the logits' spread.
    c = _closeness(ref, out)
    assert c["argmax"] >= 0.95, c
    assert c["corr"] >= 0.98, c
    assert c["max_prob"] <= 0.05, c
    assert c["rel"] <= 0.15, c


def _int8_weights(model: nn.Module) -> dict[int, int]:
    """{ndim: count} of weight tensors stored as int8 (plain or torchao Int8Tensor)."""
    counts: dict[int, int] = {}
    for value in model.state_dict().values():
        data = getattr(value, "qdata", value)
        if value.ndim >= 2 and data.dtype == torch.int8:
            counts[value.ndim] = counts.get(value.ndim, 0) + 1
    return counts


def _float_weights(model: nn.Module) -> list[str]:
    return [
        k
        for k, v in model.state_dict().items()
        if v.ndim >= 2 and getattr(v, "qdata", v).dtype == torch.float32
    ]


def _logits(model: Callable[..., torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope="module")
def static_q(resnet18: nn.Module, breast: dict[str, torch.Tensor]) -> nn.Module:
    # one batch of 16 training images keeps the test fast (each calibration batch is a
    # float forward pass through HistogramObservers); the benchmark calibrates on more
    return quantize_model(resnet18, "static", calibration_data=[breast["train"][:16]])


@pytest.fixture(scope="module")
def fp32_logits(resnet18: nn.Module, breast: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float32 logits of the 64 test images (computed once: ResNet-18 at 28x28 is slow)."""
    return _logits(resnet18, breast["test"])


@pytest.fixture(scope="module")
def static_logits(static_q: nn.Module, breast: dict[str, torch.Tensor]) -> torch.Tensor:
    return _logits(static_q, breast["test"])


# ------------------------------------------------------------------------------ static
def test_static_resnet18_has_int8_conv_and_linear_weights(
    static_q: nn.Module, resnet18: nn.Module
) -> None:
    info = quantization_info(static_q)
    assert info is not None and (info.method, info.stage) == ("static", "int8")
    # ResNet-18: 20 convolutions (stem, 16 in blocks, 3 downsample) + the Linear head
    assert info.layers == 21 and info.int8_weights == 21 and info.float_layers == 0
    assert _int8_weights(static_q) == {4: 20, 2: 1}
    assert _float_weights(static_q) == []  # no float copy of any weight is kept
    # the source model is untouched
    assert all(p.dtype == torch.float32 for p in resnet18.parameters())
    assert quantization_info(resnet18) is None


def test_static_outputs_close_to_float_on_breastmnist(
    fp32_logits: torch.Tensor, static_logits: torch.Tensor
) -> None:
    _assert_close(fp32_logits, static_logits)


def test_static_file_is_over_3x_smaller_and_reloads(
    static_q: nn.Module,
    resnet18: nn.Module,
    static_logits: torch.Tensor,
    breast: dict[str, torch.Tensor],
    tmp_path: Path,
) -> None:
    fp32_file = tmp_path / "fp32.pt"
    torch.save(resnet18.state_dict(), fp32_file)
    int8_file = save_quantized(static_q, tmp_path / "sub" / "int8.pt2")
    assert int8_file == tmp_path / "sub" / "int8.pt2" and int8_file.is_file()
    fp32_size, int8_size = model_size_bytes(fp32_file), model_size_bytes(int8_file)
    assert fp32_size == fp32_file.stat().st_size
    # a float model is measured as its torch.save(state_dict) file (zip names differ)
    assert abs(model_size_bytes(resnet18) - fp32_size) / fp32_size < 0.001
    assert fp32_size / int8_size >= 4.0, (fp32_size, int8_size)  # 4.4x (3.8x stored undeflated)

    loaded = load_quantized(int8_file)
    info = quantization_info(loaded)
    assert info is not None and (info.method, info.int8_weights) == ("static", 21)
    assert _int8_weights(loaded) == {4: 20, 2: 1}
    x = breast["test"][:8]
    torch.testing.assert_close(_logits(loaded, x), static_logits[:8])
    assert _logits(loaded, x[:1]).shape == (1, 2)  # the batch axis stays dynamic


def test_saved_archive_is_deflated_and_its_graph_shrinks(
    static_q: nn.Module, tmp_path: Path
) -> None:
    """The serialized graph (models/model.json) is text as large as a small model's int8
    weights (1.08 MB beside 1.50 MB for mobilenet_v3_small); stored, it kept that model's
    int8 file at 2.2x smaller than float32, deflated it is 4.0x."""
    path = save_quantized(static_q, tmp_path / "int8.pt2")
    assert path is not None
    with zipfile.ZipFile(path) as z:
        entries = z.infolist()
    assert {e.compress_type for e in entries} == {zipfile.ZIP_DEFLATED}
    graph = next(e for e in entries if e.filename.endswith("models/model.json"))
    assert graph.compress_size * 10 < graph.file_size, (graph.compress_size, graph.file_size)


def test_static_model_cannot_be_quantized_twice(static_q: nn.Module) -> None:
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(static_q, "static", calibration_data=[torch.zeros(2, 1, 28, 28)])


def test_tiny_static_saves_reloads_resaves_and_compiles(
    tiny: nn.Module, breast: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    x = breast["test"][:16]
    q = quantize_model(tiny, "static", calibration_data=[breast["train"][:32]])
    # in-memory size == file size; a reloaded model saves again
    path = save_quantized(q, tmp_path / "tiny.pt2")
    assert path is not None
    assert abs(model_size_bytes(q) - model_size_bytes(path)) / model_size_bytes(path) < 0.01
    reloaded = load_quantized(path)
    again = save_quantized(reloaded, tmp_path / "tiny2.pt2")
    assert again is not None
    torch.testing.assert_close(_logits(load_quantized(again), x), _logits(q, x))

    compiled = compile_quantized(q)
    eager, fast = _logits(q, x), _logits(compiled, x)
    # oneDNN int8 kernels vs the reference q/dq graph: same int8 arithmetic up to rounding
    torch.testing.assert_close(fast, eager, atol=0.02, rtol=0.02)
    assert not torch._inductor.config.freezing  # the global flag was not left switched on


# ------------------------------------------------------------------------------ dynamic
def test_dynamic_resnet18_quantizes_the_linear_head_only(
    resnet18: nn.Module, fp32_logits: torch.Tensor, breast: dict[str, torch.Tensor]
) -> None:
    q = quantize_model(resnet18, "dynamic", example_inputs=breast["test"][:4])
    info = quantization_info(q)
    assert info is not None and (info.int8_weights, info.float_layers) == (1, 20)
    assert _int8_weights(q) == {2: 1}
    assert q.head[1].weight.qdata.dtype == torch.int8  # type: ignore[union-attr]
    assert type(q) is type(resnet18) and q is not resnet18
    _assert_close(fp32_logits, _logits(q, breast["test"]))


def test_dynamic_linear_classifier_is_smaller_and_reloads(
    breast: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Dropout(0.1), nn.Linear(1024, 2)
    ).eval()
    q = quantize_model(mlp, "dynamic", calibration_data=[breast["train"][:8]])
    assert _int8_weights(q) == {2: 2} and _float_weights(q) == []
    x = breast["test"]
    _assert_close(_logits(mlp, x), _logits(q, x))
    path = save_quantized(q, tmp_path / "mlp.pt2")
    assert path is not None
    assert model_size_bytes(mlp) / model_size_bytes(path) >= 3.0
    torch.testing.assert_close(_logits(load_quantized(path), x), _logits(q, x))


# ------------------------------------------------------------------------------ QAT
def _sgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 0.05) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def test_qat_prepare_fine_tune_convert(
    qat_prepared: nn.Module, breast: dict[str, torch.Tensor]
) -> None:
    prepared = copy.deepcopy(qat_prepared)
    info = quantization_info(prepared)
    assert info is not None and info.stage == "qat-prepared"
    assert _int8_weights(prepared) == {}  # fake-quantized, still float
    weights = [p for p in prepared.parameters() if p.ndim == 4]
    start = [w.detach().clone() for w in weights]

    loss = _sgd_step(prepared, breast["train"][:32], breast["train_labels"][:32])
    assert np.isfinite(loss)
    assert any(not torch.equal(w, s) for w, s in zip(weights, start, strict=True))  # it trained

    set_qat_training(prepared, False)
    x = breast["test"]
    fake_quant = _logits(prepared, x)
    converted = convert_qat(prepared)
    info = quantization_info(converted)
    assert info is not None and (info.method, info.stage, info.int8_weights) == ("qat", "int8", 3)
    assert _int8_weights(converted) == {4: 2, 2: 1} and _float_weights(converted) == []
    # the int8 model computes what the fake-quantized model simulated
    _assert_close(fake_quant, _logits(converted, x))
    # BatchNorm was folded into the convolutions
    assert not any("batch_norm" in str(n.target) for n in converted.graph.nodes)


def test_qat_fine_tune_hook_returns_int8_model(
    tiny: nn.Module, breast: dict[str, torch.Tensor]
) -> None:
    seen: list[nn.Module] = []

    def fine_tune(model: nn.Module) -> None:
        seen.append(model)
        _sgd_step(model, breast["train"][:32], breast["train_labels"][:32])

    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    q = quantize_model(tiny, "qat", calibration_data=[breast["train"][:8]], fine_tune=fine_tune)
    assert len(seen) == 1 and isinstance(seen[0], torch.fx.GraphModule)
    # the source model is untouched
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())
    info = quantization_info(q)
    assert info is not None and (info.stage, info.int8_weights) == ("int8", 3)
    assert torch.isfinite(_logits(q, breast["test"])).all()


def test_qat_convert_without_any_forward_pass_is_refused(qat_prepared: nn.Module) -> None:
    with pytest.raises(ValueError, match="seen no data"):
        convert_qat(copy.deepcopy(qat_prepared))


# ------------------------------------------------------------------------------ errors
class _Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(1, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x).mean((2, 3, 4)))  # type: ignore[no-any-return]


_X = torch.zeros(2, 1, 28, 28)
_BAD_CALLS: list[tuple[str, Callable[[nn.Module], Any], type[Exception], str]] = [
    (
        "method",
        lambda m: quantize_model(m, "int4", calibration_data=[_X]),
        ValueError,
        r"method must be one of \('dynamic', 'static', 'qat'\), got 'int4'",
    ),
    (
        "backend",
        lambda m: quantize_model(m, "static", calibration_data=[_X], backend="arm"),
        ValueError,
        "backend must be one of",
    ),
    (
        "no calibration",
        lambda m: quantize_model(m, "static"),
        ValueError,
        "static quantization needs calibration_data",
    ),
    (
        "empty calibration",
        lambda m: quantize_model(m, "static", calibration_data=[]),
        ValueError,
        "calibration_data is empty",
    ),
    (
        "bad batch",
        lambda m: quantize_model(m, "static", calibration_data=["img"]),
        TypeError,
        "must be a Tensor or an",
    ),
    ("no example", lambda m: quantize_model(m, "qat"), ValueError, "needs example_inputs"),
    (
        "fine_tune",
        lambda m: quantize_model(m, "static", calibration_data=[_X], fine_tune=print),
        ValueError,
        "fine_tune is only used with method='qat'",
    ),
    (
        "max batches",
        lambda m: quantize_model(m, "static", calibration_data=[_X], max_calibration_batches=0),
        ValueError,
        "max_calibration_batches must be >= 1",
    ),
    (
        "not a module",
        lambda m: quantize_model("resnet18", "static"),
        TypeError,  # type: ignore[arg-type]
        "model must be a torch.nn.Module",
    ),
    (
        "dynamic no Linear",
        lambda m: quantize_model(nn.Sequential(nn.Conv2d(1, 2, 3)), "dynamic", example_inputs=_X),
        UnsupportedModelError,
        "has no nn.Linear layer; use method='static'",
    ),
    (
        "conv3d",
        lambda m: quantize_model(
            _Conv3dNet(), "static", calibration_data=[torch.zeros(2, 1, 8, 8, 8)]
        ),
        UnsupportedModelError,
        r"supports Conv2d and Linear.*'stem', Conv3d",
    ),
    ("convert float", lambda m: convert_qat(m), ValueError, "convert_qat needs the model"),
    ("qat mode float", lambda m: set_qat_training(m), ValueError, "set_qat_training needs"),
    (
        "save float",
        lambda m: save_quantized(m, "x.pt2"),
        ValueError,
        "save_quantized needs an int8 model",
    ),
    (
        "load missing",
        lambda m: load_quantized("/nonexistent/model.pt2"),
        FileNotFoundError,
        "no quantized model file",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [c[1:] for c in _BAD_CALLS],
    ids=[c[0] for c in _BAD_CALLS],
)
def test_bad_input_raises_with_message(
    tiny: nn.Module, call: Callable[[nn.Module], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call(tiny)


def test_unsupported_model_error_is_a_not_implemented_error() -> None:
    assert issubclass(UnsupportedModelError, NotImplementedError)


def test_missing_torchao_names_the_extra(tiny: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao", None)  # makes `import torchao` fail
    with pytest.raises(ImportError, match=r"pip install 'medauto\[quant\]'"):
        quantize_model(tiny, "static", calibration_data=[_X])
