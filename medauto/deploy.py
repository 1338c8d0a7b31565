"""The deployment table: ensemble → best single model → distilled student → int8 → ONNX.

:func:`deployment_rows` measures, for one study, every form the final model can ship in:

* ``ensemble``: the final predictor (``final/<study>/predictor``);
* ``best single``: the best single candidate (``final/<study>/best_single``);
* ``distilled student``: ``medauto distill``'s model file;
* ``int8 student``: that student quantized to static int8 (torchao PT2E, through
  :func:`medauto.retrain.quantize_retrained`, as ``medauto retrain --quantize static``);
* ``ONNX student``: that student exported with :func:`med_core.optimization.export_onnx`
  and run by onnxruntime.

Columns: test AUC and ACC, file size, CPU latency at batch 1 and 64, GPU latency at batch
64 (``None`` when CUDA is missing or the form has no GPU path). Every latency is end to
end, uint8 test images in, scores out (preprocessing, resize and TTA included), the median
of ``iters`` calls on ``threads`` CPU threads, measured in this one process so the ratios
compare like with like. The ensemble's and the best single model's test metrics are those
``final.json`` recorded (the search's one look at the test split), the student's those of
``distill.json``; the int8 and ONNX students are new models, scored here once.

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

__all__ = ["DEPLOY_FILE", "DeployRow", "deploy_table", "deployment_rows", "load_rows",
           "save_rows"]

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
        max_abs_diff: ONNX row: the largest ``|p_onnx - p_torch|`` over the test split.
        note: What else was measured (ONNX parity, int8 compiled latency, errors).
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


def _timer(fn: Callable[[np.ndarray], Any], images: np.ndarray, *, iters: int,
           threads: int | None) -> float:
    """Median ms of ``fn(images)`` (:func:`med_core.optimization.measure_latency`)."""
    import torch

    from med_core.optimization import measure_latency

    batch = torch.from_numpy(images)
    stats = measure_latency(lambda t: fn(t.numpy()), batch, warmup=1, iters=iters,
                            threads=threads)
    return float(stats["median_ms"])


def _model_scores(model: Any, cfg: TrainConfig, task: str, dims: int,
                  device: str = "cpu") -> Callable[[np.ndarray], np.ndarray]:
    """uint8 images → scores through ``model``, as a predictor member scores them."""
    import numpy as np

    from med_core.data import Split

    def scores(images: np.ndarray) -> np.ndarray:
        split = Split(images, np.zeros(len(images), np.int64))
        loader = eval_loader(split, cfg, spatial_dims=dims,
                             batch_size=min(max(1, len(images)), 256), device=device)
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


def _cuda_ms(fn: Callable[[np.ndarray], Any], images: np.ndarray, iters: int) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return _timer(fn, images, iters=iters, threads=None)  # scores come back to the host


def deployment_rows(
    run_dir: str | Path,
    study_name: str,
    *,
    dataset: MedicalDataset | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    iters: int = 20,
    threads: int | None = 1,
    calibration_batches: int = 8,
    compile_int8: bool = False,
) -> list[DeployRow]:
    """Measures every deployable form of ``study_name``'s final model (see module doc).

    Args:
        run_dir: The run folder (``final/<study>/`` with the predictor and the student).
        study_name: The study.
        dataset: Its data (default: loaded from the student's config).
        data_dir: Where MedMNIST names are looked up when loading.
        iters: Timed calls per latency.
        threads: CPU threads while timing (torch and onnxruntime); ``None``: defaults.
        calibration_batches: Training batches of the static int8 calibration.
        compile_int8: Also time the Inductor-compiled float and int8 students (the fast
            int8 CPU kernels exist compiled only; needs a C++ compiler); in the int8 note.

    Raises:
        MedautoError: no final model or no distilled student for the study.
    """
    import numpy as np
    import torch

    from med_core.data import load_dataset
    from med_core.optimization import export_onnx
    from med_core.optimization import load_quantized

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

    def timed(fn: Callable[[np.ndarray], Any]) -> tuple[float, float]:
        return (_timer(fn, b1, iters=iters, threads=threads),
                _timer(fn, b64, iters=iters, threads=threads))

    def rel(p: Path) -> str:
        return Path(os.path.relpath(p, folder)).as_posix()

    rows: list[DeployRow] = []
    for name, sub, test in (("ensemble", final.predictor, final.test),
                            ("best single", "best_single", final.test_single)):
        pred = Predictor.load(folder / sub)
        cpu = timed(functools.partial(pred.scores, device="cpu"))
        gpu = _cuda_ms(functools.partial(pred.scores, device="cuda"), b64, iters)
        rows.append(DeployRow(name, sub, pred.size_bytes(), test.get("auc", math.nan),
                              test.get("acc", math.nan), *cpu, gpu))

    fp32 = _model_scores(student.model, cfg, task, dims)
    gpu = None
    if torch.cuda.is_available():
        on_gpu = load_model(student_path, device="cuda")
        gpu = _cuda_ms(_model_scores(on_gpu.model, cfg, task, dims, "cuda"), b64, iters)
    rows.append(DeployRow("distilled student", rel(student_path), student_path.stat().st_size,
                          distilled.test.get("auc", math.nan),
                          distilled.test.get("acc", math.nan), *timed(fp32), gpu))

    q = quantize_retrained(student_path, method="static", dataset=ds,
                           out_path=sdir / "model.int8.pt2",
                           calibration_batches=calibration_batches, latency_batch_size=1,
                           latency_iters=max(1, iters), latency_threads=threads,
                           latency_compile=compile_int8)
    if q.error:
        rows.append(DeployRow("int8 student", "", 0, math.nan, math.nan, math.nan, math.nan,
                              note=f"quantization failed: {q.error}"))
    else:
        int8 = _model_scores(load_quantized(q.int8_path), cfg, task, dims)
        note = f"{q.size_ratio:.2f}x smaller; eager PT2E reference kernels"
        if q.compiled:
            note += (f"; compiled (Inductor), batch 1: fp32 {q.float_latency_compiled_ms:.2f} "
                     f"ms, int8 {q.int8_latency_compiled_ms:.2f} ms")
        elif q.compile_error:
            note += f"; compiled latency not measured ({q.compile_error[:120]})"
        rows.append(DeployRow("int8 student", rel(Path(q.int8_path)), q.int8_size_bytes,
                              q.int8_test["auc"], q.int8_test["acc"], *timed(int8),
                              note=note + "; no GPU kernels (x86 int8)"))

    onnx_path = sdir / "model.onnx"
    size = cfg.data.img_size or info.image_size
    spatial = [int(size)] * dims if isinstance(size, int) else [int(s) for s in size]
    report = export_onnx(student.model, onnx_path, torch.zeros((2, info.in_chans, *spatial)))
    ort = _model_scores(_OnnxModel(onnx_path, threads), cfg, task, dims)
    s_onnx, s_torch = ort(images), fp32(images)
    onnx_test = split_metrics(task, labels, s_onnx)
    diff = float(np.max(np.abs(s_onnx - s_torch))) if len(images) else math.nan
    rows.append(DeployRow("ONNX student", rel(onnx_path), report.size_bytes, onnx_test["auc"],
                          onnx_test["acc"], *timed(ort), max_abs_diff=diff,
                          note=f"max |p_onnx - p_torch| on the test split = {diff:.1e} "
                          "(onnxruntime, CPU provider; no GPU provider installed)"))
    return rows


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
