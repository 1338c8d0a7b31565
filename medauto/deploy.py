"""The deployment table: ensemble → best single model → distilled student → int8 → ONNX.

:func:`deployment_rows` measures, for one study, every form the final model can ship in:

* ``ensemble``: the final predictor (``final/<study>/predictor``);
* ``best single``: the best single candidate (``final/<study>/best_single``);
* ``distilled student``: ``medauto distill``'s model file;
* ``int8 student``: that student quantized to static int8 (torchao PT2E, through
  :func:`medauto.retrain.quantize_retrained`, as ``medauto retrain --quantize static``),
  run as it deploys: compiled by Inductor (:func:`med_core.optimization.compile_quantized`,
  the oneDNN int8 kernels; one graph per batch size, its compile time in the note), or
  eagerly (reference kernels) when compilation is off or fails;
* ``ONNX student``: that student exported with :func:`med_core.optimization.export_onnx`
  and run by onnxruntime.

Columns: test AUC and ACC, file size, CPU latency at batch 1 and 64, GPU latency at batch
64 on the CUDA device the command was given (``None`` for a CPU run or a form without a
GPU path; see :func:`gpu_device`). Every latency is end to end, uint8 test images in,
scores out (preprocessing, resize and TTA included), the median of ``iters`` calls (fewer
once they add up to ``max_seconds``) on ``threads`` CPU threads, measured in this one
process so the ratios compare like with like. The ensemble's and the best single model's
test metrics are those ``final.json`` recorded (the search's one look at the test split),
the student's those of ``distill.json``; the int8 and ONNX students are new models, scored
here once, in the form their latency is measured in.

:func:`save_rows` writes ``final/<study>/deploy.json``; ``medauto report`` shows it.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.distill import DISTILL_FILE
from medauto.distill import DistillResult
from medauto.distill import student_dir
from medauto.ensemble import Predictor
from medauto.exceptions import MedautoError
from medauto.final import FINAL_FILE
from medauto.final import FinalResult
from medauto.final import final_dir
from medauto.logging import get_logger
from medauto.model_file import atomic_write_bytes
from medauto.model_file import load_model
from medauto.model_file import nan_to_none
from medauto.retrain.quantize import quantize_retrained
from medauto.scoring import eval_loader
from medauto.scoring import predict_scores
from medauto.scoring import split_metrics

if TYPE_CHECKING:
    import numpy as np

    from med_core.config import TrainConfig
    from med_core.data import MedicalDataset

__all__ = ["DEPLOY_FILE", "DeployRow", "deploy_table", "deployment_rows", "gpu_device",
           "load_rows", "save_rows"]

_logger = get_logger(__name__)

DEPLOY_FILE = "deploy.json"


@dataclass
class DeployRow:
    """One form of the final model, measured.

    Attributes:
        name: ``"ensemble"``, ``"best single"``, ``"distilled student"``,
            ``"int8 student"`` or ``"ONNX student"``.
        file: Its file or folder (relative to ``final/<study>``).
        size_bytes: Bytes on disk (a predictor: its member files).
        test_auc: Test AUC.
        test_acc: Test ACC.
        cpu_ms_b1: CPU milliseconds per call at batch 1.
        cpu_ms_b64: CPU milliseconds per call at batch 64.
        gpu_ms_b64: GPU milliseconds per call at batch 64 (``None``: not measured).
        max_abs_diff: int8 and ONNX rows: the largest ``|p - p_fp32|`` over the test split
            against the float student (ONNX: parity; int8: how far quantization moves it).
        note: What else was measured (ONNX parity, int8 compile time and eager latency,
            errors).
    """

    name: str
    file: str
    size_bytes: int
    test_auc: float
    test_acc: float
    cpu_ms_b1: float
    cpu_ms_b64: float
    gpu_ms_b64: float | None = None
    max_abs_diff: float | None = None
    note: str = ""


@dataclass(frozen=True)
class _Timing:
    """How every latency of the table is measured."""

    iters: int
    threads: int | None
    max_seconds: float | None

    def ms(self, fn: Callable[[np.ndarray], Any], images: np.ndarray,
           threads: int | None = None) -> float:
        """Median ms of ``fn(images)`` (:func:`med_core.optimization.measure_latency`) on
        ``threads`` CPU threads (default: the table's)."""
        import torch

        from med_core.optimization import measure_latency

        stats = measure_latency(lambda t: fn(t.numpy()), torch.from_numpy(images), warmup=1,
                                iters=self.iters, threads=threads or self.threads,
                                max_seconds=self.max_seconds)
        return float(stats["median_ms"])


def gpu_device(device: str) -> str | None:
    """The CUDA device the GPU column is measured on: ``device`` itself when it names one
    (``"cuda"``, ``"cuda:1"``), else ``None`` (a CPU run has no GPU column, even on a
    machine with CUDA).

    Example:
        >>> gpu_device("cuda:1"), gpu_device("cpu")
        ('cuda:1', None)
    """
    return device if device.split(":", 1)[0] == "cuda" else None


def _model_scores(model: Any, cfg: TrainConfig, task: str, dims: int, device: str = "cpu",
                  batch_size: int = 256) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 images → scores through ``model`` on ``device``, as a predictor member scores
    them (in batches of at most ``batch_size``)."""
    import numpy as np

    from med_core.data import Split

    def scores(images: np.ndarray) -> np.ndarray:
        split = Split(images, np.zeros(len(images), np.int64))
        loader = eval_loader(split, cfg, spatial_dims=dims,
                             batch_size=min(max(1, len(images)), batch_size), device=device)
        return predict_scores(model, loader, task=task, tta=cfg.tta)[1]

    return scores


class _OnnxModel:
    """An onnxruntime session called like a model: float tensor in, logits tensor out."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), sess_options=opts,
                                                    providers=["CPUExecutionProvider"])

    def __call__(self, x: Any) -> Any:
        import torch

        out = self.session.run(None, {"input": x.detach().cpu().numpy()})[0]
        return torch.from_numpy(out)


class _FixedBatch:
    """Calls a model compiled for one batch size on any batch: shorter batches are padded
    with zeros up to ``batch`` and the padding's outputs dropped (no recompilation)."""

    def __init__(self, model: Callable[[Any], Any], batch: int) -> None:
        self.model, self.batch = model, batch

    def __call__(self, x: Any) -> Any:
        import torch

        n = int(x.shape[0])
        if n == self.batch:
            return self.model(x)
        pad = torch.zeros((self.batch - n, *x.shape[1:]), dtype=x.dtype)
        return self.model(torch.cat([x, pad]))[:n]


def _compiled_int8(path: Path, cfg: TrainConfig, task: str, dims: int, timing: _Timing,
                   b1: np.ndarray, b64: np.ndarray) -> tuple[Any, float, float, float]:
    """The int8 student compiled by Inductor: its scorer (batches padded to 64) and its
    latencies at batch 1 and 64; with the seconds both compilations took."""
    import time

    import torch

    from med_core.optimization import compile_quantized
    from med_core.optimization import load_quantized

    compiled = compile_quantized(load_quantized(path))
    t0 = time.perf_counter()
    with torch.no_grad():
        for images in (b1, b64):  # one graph per batch size (the first call compiles)
            _model_scores(compiled, cfg, task, dims)(images)
    compile_s = time.perf_counter() - t0
    padded = _model_scores(_FixedBatch(compiled, len(b64)), cfg, task, dims,
                           batch_size=len(b64))
    ms = [timing.ms(_model_scores(compiled, cfg, task, dims), b) for b in (b1, b64)]
    return padded, ms[0], ms[1], compile_s


def deployment_rows(
    run_dir: str | Path,
    study_name: str,
    *,
    dataset: MedicalDataset | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    iters: int = 20,
    max_seconds: float | None = 5.0,
    threads: int | None = 1,
    calibration_batches: int = 8,
    compile_int8: bool = True,
) -> list[DeployRow]:
    """Measures every deployable form of ``study_name``'s final model (see module doc).

    Args:
        run_dir: The run folder (``final/<study>/`` with the predictor and the student).
        study_name: The study.
        dataset: Its data (default: loaded from the student's config).
        data_dir: Where MedMNIST names are looked up when loading.
        device: The command's device: a CUDA device (``"cuda"``, ``"cuda:K"``) also gets
            the GPU column, measured there (:func:`gpu_device`); CPU columns are always
            measured on the CPU.
        iters: Timed calls per latency (at most).
        max_seconds: Stop a latency's timed calls once they add up to this (after three);
            ``None``: always ``iters``. Keeps the table fast for a heavy ensemble.
        threads: CPU threads while timing (torch and onnxruntime); ``None``: defaults.
        calibration_batches: Training batches of the static int8 calibration.
        compile_int8: Run the int8 student compiled by Inductor (the deployable int8 form:
            the fast oneDNN kernels exist compiled only; needs a C++ compiler; one
            compilation per batch size, timed in the note). ``False``, or a failed
            compilation: the eager PT2E graph (reference kernels).

    Raises:
        MedautoError: no final model or no distilled student for the study.
    """
    import torch

    from med_core.data import load_dataset
    from med_core.optimization import export_onnx

    folder = final_dir(run_dir, study_name)
    sdir = student_dir(run_dir, study_name)
    if not (folder / FINAL_FILE).is_file() or not (sdir / DISTILL_FILE).is_file():
        raise MedautoError(
            f"study {study_name!r} needs a final model and a distilled student in "
            f"{str(folder)!r} (run `medauto search`, then `medauto distill`)"
        )
    final = FinalResult.load(folder / FINAL_FILE)
    distilled = DistillResult.load(sdir / DISTILL_FILE)
    student_path = sdir / distilled.model
    student = load_model(student_path)
    cfg = student.config
    ds = dataset if dataset is not None else load_dataset(cfg.data, data_dir=data_dir)
    info = ds.info
    images, labels = ds.test.images, ds.test.labels
    b1, b64 = images[:1], images[:64]
    dims, task = info.spatial_dims, info.task
    timing = _Timing(iters, threads, max_seconds)
    gpu = gpu_device(device)

    def timed(fn: Callable[[np.ndarray], Any]) -> tuple[float, float]:
        return timing.ms(fn, b1), timing.ms(fn, b64)

    def on_gpu(fn: Callable[[np.ndarray], Any]) -> float:
        return timing.ms(fn, b64, threads=torch.get_num_threads())  # scores come to the host

    def rel(p: Path) -> str:
        return Path(os.path.relpath(p, folder)).as_posix()

    rows: list[DeployRow] = []
    for name, sub, test in (("ensemble", final.predictor, final.test),
                            ("best single", "best_single", final.test_single)):
        pred = Predictor.load(folder / sub)
        cpu = timed(functools.partial(pred.scores, device="cpu"))
        gpu_ms = on_gpu(functools.partial(pred.scores, device=gpu)) if gpu else None
        rows.append(DeployRow(name, sub, pred.size_bytes(), test.get("auc", math.nan),
                              test.get("acc", math.nan), *cpu, gpu_ms))

    fp32 = _model_scores(student.model, cfg, task, dims)
    gpu_ms = None
    if gpu:
        gpu_ms = on_gpu(_model_scores(load_model(student_path, device=gpu).model, cfg, task,
                                      dims, gpu))
    rows.append(DeployRow("distilled student", rel(student_path), student_path.stat().st_size,
                          distilled.test.get("auc", math.nan),
                          distilled.test.get("acc", math.nan), *timed(fp32), gpu_ms))
    s_torch = fp32(images)
    rows.append(_int8_row(student_path, ds, cfg, timing, s_torch, b1, b64, rel,
                          calibration_batches=calibration_batches, compile_int8=compile_int8))

    onnx_path = sdir / "model.onnx"
    size = cfg.data.img_size or info.image_size
    spatial = [int(size)] * dims if isinstance(size, int) else [int(s) for s in size]
    report = export_onnx(student.model, onnx_path, torch.zeros((2, info.in_chans, *spatial)))
    ort = _model_scores(_OnnxModel(onnx_path, threads), cfg, task, dims)
    s_onnx = ort(images)
    onnx_test = split_metrics(task, labels, s_onnx)
    diff = _max_abs_diff(s_onnx, s_torch)
    rows.append(DeployRow("ONNX student", rel(onnx_path), report.size_bytes, onnx_test["auc"],
                          onnx_test["acc"], *timed(ort), max_abs_diff=diff,
                          note=f"max |p_onnx - p_torch| on the test split = {diff:.1e} "
                          "(onnxruntime, CPU provider; no GPU provider installed)"))
    return rows


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    import numpy as np

    return float(np.max(np.abs(a - b))) if len(a) else math.nan


def _int8_row(student_path: Path, ds: MedicalDataset, cfg: TrainConfig, timing: _Timing,
              s_fp32: np.ndarray, b1: np.ndarray, b64: np.ndarray,
              rel: Callable[[Path], str], *, calibration_batches: int,
              compile_int8: bool) -> DeployRow:
    """The int8 student: quantized, saved, reloaded and scored as it deploys (compiled
    when ``compile_int8`` and Inductor can, else eager)."""
    from med_core.optimization import load_quantized

    task, dims = ds.info.task, ds.info.spatial_dims
    q = quantize_retrained(student_path, method="static", dataset=ds,
                           out_path=student_path.with_name("model.int8.pt2"),
                           calibration_batches=calibration_batches, latency_batch_size=1,
                           latency_iters=timing.iters, latency_threads=timing.threads)
    if q.error:
        return DeployRow("int8 student", "", 0, math.nan, math.nan, math.nan, math.nan,
                         note=f"quantization failed: {q.error}")
    path = Path(q.int8_path)
    eager = _model_scores(load_quantized(path), cfg, task, dims)
    note = f"{q.size_ratio:.2f}x smaller"
    compiled = None
    if compile_int8:
        try:
            compiled = _compiled_int8(path, cfg, task, dims, timing, b1, b64)
        except Exception as e:  # noqa: BLE001 - Inductor needs a C++ toolchain; eager stands
            _logger.warning("int8 compilation failed (%s: %s); the eager graph is measured",
                            type(e).__name__, e)
            note += f"; compilation failed ({type(e).__name__}: {str(e)[:100]})"
    if compiled is None:
        scorer, b1_ms, b64_ms = eager, timing.ms(eager, b1), timing.ms(eager, b64)
        note += "; eager PT2E reference kernels"
    else:
        scorer, b1_ms, b64_ms, compile_s = compiled
        note += (f"; Inductor-compiled (oneDNN int8), both batch sizes compiled in "
                 f"{compile_s:.0f} s; eager PT2E batch 1: {timing.ms(eager, b1):.2f} ms")
    s_int8 = scorer(ds.test.images)
    test = split_metrics(task, ds.test.labels, s_int8)
    diff = _max_abs_diff(s_int8, s_fp32)
    note += f"; max |p_int8 - p_fp32| = {diff:.1e}; no GPU kernels (x86 int8)"
    return DeployRow("int8 student", rel(path), q.int8_size_bytes, test["auc"], test["acc"],
                     b1_ms, b64_ms, max_abs_diff=diff, note=note)


def deploy_table(rows: list[DeployRow]) -> tuple[list[str], list[list[str]]]:
    """The table's headers and formatted cells (the report and the benchmark print it)."""
    def num(v: float | None, digits: int) -> str:
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"

    headers = ["model", "test AUC", "test ACC", "file (MB)", "CPU ms, batch 1",
               "CPU ms, batch 64", "GPU ms, batch 64", "note"]
    cells = [[r.name, num(r.test_auc, 3), num(r.test_acc, 3), num(r.size_bytes / 1e6, 2),
              num(r.cpu_ms_b1, 2), num(r.cpu_ms_b64, 2), num(r.gpu_ms_b64, 2), r.note]
             for r in rows]
    return headers, cells


def save_rows(rows: list[DeployRow], path: str | os.PathLike[str]) -> Path:
    """Writes the rows as JSON (atomically)."""
    p = Path(path)
    payload = json.dumps(nan_to_none([asdict(r) for r in rows]), indent=2) + "\n"
    atomic_write_bytes(p, payload.encode())
    return p


def load_rows(path: str | os.PathLike[str]) -> list[DeployRow]:
    """Reads :func:`save_rows`' file (``None`` metrics become NaN)."""
    out = []
    for d in json.loads(Path(path).read_text()):
        for k in ("test_auc", "test_acc", "cpu_ms_b1", "cpu_ms_b64"):
            d[k] = math.nan if d.get(k) is None else d[k]
        out.append(DeployRow(**d))
    return out
