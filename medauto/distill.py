"""``medauto distill``: the search's final ensemble distilled into one student model.

:func:`distill` reads the study's final predictor (``<run_dir>/final/<study>/predictor``,
written by :func:`medauto.final.build_final`), wraps it as a teacher
(:class:`EnsembleTeacher`) and trains a student with
:class:`med_core.training.distill.Distillation`. The student is the best single trial's
configuration, or another backbone with that configuration. Before anything trains, a
student whose input (dimensions, channels, size) or classes differ from the teacher's is
refused (:func:`check_student`).

The student trains on the training split, its epoch is chosen on the validation split
(``cfg.monitor``; :class:`~med_core.training.KeepBestWeights`), and only then is the test
split read, once. Outputs, under ``<run_dir>/final/<study>/student/``::

    model.pt      the student: a normal model file (medauto.model_file), so
                  `medauto export --model` and load_model read it
    distill.json  DistillResult: the settings, validation and test metrics, the teacher's

The run is logged to MLflow as a ``distill`` child run of the study's run, with the student
as a pyfunc logged model (:func:`medauto.tracking.log_distill`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.ensemble import Predictor
from medauto.exceptions import MedautoError
from medauto.final import FINAL_FILE
from medauto.final import FinalResult
from medauto.final import final_dir
from medauto.keys import CONFIG_ATTR
from medauto.logging import get_logger
from medauto.model_file import atomic_write_bytes
from medauto.model_file import load_model
from medauto.model_file import nan_to_none
from medauto.model_file import save_model
from medauto.scoring import split_metrics
from medauto.tracking import log_distill
from medauto.tracking import tracking_uri

if TYPE_CHECKING:
    import optuna
    import torch

    from med_core.config import TrainConfig
    from med_core.data import DatasetInfo
    from med_core.data import MedicalDataset

__all__ = ["DISTILL_FILE", "DistillError", "DistillResult", "EnsembleTeacher", "check_student",
           "distill", "student_dir"]

_logger = get_logger(__name__)

DISTILL_FILE = "distill.json"
_MODEL = "model.pt"


class DistillError(MedautoError, ValueError):
    """The study has no final predictor, or the student does not fit the teacher."""


def student_dir(run_dir: str | Path, study_name: str) -> Path:
    """Where :func:`distill` writes the student of ``study_name``."""
    return final_dir(run_dir, study_name) / "student"


@dataclass
class DistillResult:
    """What :func:`distill` did and measured (also ``distill.json``).

    Attributes:
        study: The study.
        dataset: The dataset's name.
        task: The task type.
        student: The student's backbone.
        student_trial: The trial whose configuration the student uses.
        temperature: The distillation temperature.
        alpha: The weight of the distillation term.
        mode: ``"cached"`` (teacher run once over the training split) or ``"on_the_fly"``
            (augmented batches, teacher run on each).
        teacher_samples: Images the teacher predicted during training.
        epochs_run: Epochs trained.
        best_epoch: The epoch kept (0-based), chosen on validation.
        val: The kept epoch's validation metrics.
        test: The student's test metrics (the one look at the test split).
        test_teacher: The ensemble's test metrics (from ``final.json``).
        test_single: The best single candidate's test metrics (from ``final.json``).
        n_test: Test samples.
        model: The student's model file (relative to ``distill.json``).
        size_bytes: Its size.
        train_seconds: Training time.
        device: Where it trained.
        created_at: ISO time.
        mlflow: The MLflow run (``tracking_uri``, ``run_id``, ``model_ids``, ...; see
            :func:`medauto.tracking.log_distill`), if logged.
    """

    study: str
    dataset: str = ""
    task: str = ""
    student: str = ""
    student_trial: int = -1
    temperature: float = math.nan
    alpha: float = math.nan
    mode: str = ""
    teacher_samples: int = 0
    epochs_run: int = 0
    best_epoch: int = -1
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    test_teacher: dict[str, float] = field(default_factory=dict)
    test_single: dict[str, float] = field(default_factory=dict)
    n_test: int = 0
    model: str = _MODEL
    size_bytes: int = 0
    train_seconds: float = math.nan
    device: str = "cpu"
    created_at: str = ""
    mlflow: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN → ``None``)."""
        return nan_to_none(asdict(self))  # type: ignore[no-any-return]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes JSON atomically."""
        p = Path(path)
        atomic_write_bytes(p, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DistillResult:
        """Reads a ``distill.json``; unknown keys are ignored."""
        d = json.loads(Path(path).read_text())
        names = set(cls.__dataclass_fields__)
        kwargs: dict[str, Any] = {
            k: math.nan if v is None and k in ("temperature", "alpha", "train_seconds") else v
            for k, v in d.items() if k in names}
        return cls(**kwargs)

    def gap_closed(self, metric: str = "auc") -> float:
        """Share of the best-single → ensemble test gap the student closes (NaN: no gap)."""
        single, ens = self.test_single.get(metric), self.test_teacher.get(metric)
        mine = self.test.get(metric)
        if single is None or ens is None or mine is None or abs(ens - single) < 1e-12:
            return math.nan
        return (mine - single) / (ens - single)

    def summary(self) -> str:
        """Lines for the console."""
        def fmt(m: dict[str, float]) -> str:
            return " ".join(f"{k}={m[k]:.4f}" for k in ("auc", "acc") if m.get(k) is not None)

        return "\n".join([
            f"student: {self.student} (trial {self.student_trial}'s configuration), "
            f"distilled at T={self.temperature:g}, alpha={self.alpha:g} ({self.mode} teacher, "
            f"{self.teacher_samples} teacher predictions), epoch {self.best_epoch + 1} of "
            f"{self.epochs_run} chosen on validation",
            f"  test (n={self.n_test}, once): student {fmt(self.test)}",
            f"                   ensemble (teacher) {fmt(self.test_teacher)}",
            f"                    best single trial {fmt(self.test_single)}",
            f"  AUC gap closed: {self.gap_closed():.0%}" if math.isfinite(self.gap_closed())
            else "  AUC gap closed: n/a (the ensemble and the best single model tie)",
            f"  model: {self.model} ({self.size_bytes / 1e6:.2f} MB)",
        ])


class EnsembleTeacher:
    """A :class:`~medauto.ensemble.Predictor` as a :data:`med_core.training.distill.Teacher`.

    It takes a batch as the student's loader yields it (normalised float at the student's
    size, possibly augmented) and runs every member on that same tensor: resized to the
    member's own input size when it differs (bilinear, antialiased: the resize of
    :func:`med_core.data.build_loader`, applied after normalisation, which commutes with
    it up to the uint8 rounding the loaders add), with the member's flip TTA, weighted as
    in the predictor and with its binary threshold folded in. The result is the
    predictor's ``predict_proba`` of that batch, ``(B, C)``.

    Args:
        predictor: The teacher.
        device: Where the members run.
    """

    def __init__(self, predictor: Predictor, device: str = "cpu") -> None:
        self.predictor = predictor
        self.device = device
        self.members = [(m.weight, load_model(predictor.folder / m.file, device=device))
                        for m in predictor.members]
        total = sum(w for w, _ in self.members)
        self.members = [(w / total, lm) for w, lm in self.members]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        task = self.predictor.task
        x = x.to(self.device)
        dims = x.ndim - 2
        avg: torch.Tensor | None = None
        for w, lm in self.members:
            size: Any = lm.meta.get("img_size")
            want = tuple(size) if isinstance(size, list) else (int(size),) * dims
            v = x
            if tuple(v.shape[2:]) != want:
                v = F.interpolate(v, size=want, mode="bilinear" if dims == 2 else "trilinear",
                                  align_corners=False, antialias=dims == 2)
            views = [v, v.flip(-1)] if lm.config.tta else [v]
            logits = [lm.model(u).float() for u in views]
            p = torch.stack([torch.sigmoid(z) if task == "multi-label" else torch.softmax(z, 1)
                             for z in logits]).mean(0)
            avg = w * p if avg is None else avg + w * p
        assert avg is not None  # a predictor has at least one member
        t = self.predictor.threshold
        if task == "binary" and t is not None:
            p1 = avg[:, 1].clamp(1e-7, 1 - 1e-7)
            p1 = torch.sigmoid(torch.logit(p1) - math.log(t / (1 - t)))
            avg = torch.stack([1 - p1, p1], dim=1)
        return avg


def check_student(predictor: Predictor, backbone: str, info: DatasetInfo) -> None:
    """Refuses a student that cannot stand in for the teacher.

    The student's input is the data's (dimensions, channels, native size) read by
    ``backbone``; its classes are the data's. Both must be the teacher's.

    Raises:
        DistillError: naming what differs and both values.
        UnknownBackboneError: ``backbone`` is not registered.
    """
    from med_core.backbones import get_backbone_cfg

    spec = predictor.input_spec
    teacher_in = (int(spec["spatial_dims"]), int(spec["in_chans"]),
                  tuple(int(s) for s in spec["image_size"]))
    data_in = (int(info.spatial_dims), int(info.in_chans), tuple(int(s) for s in info.image_size))
    dims = get_backbone_cfg(backbone).spatial_dims

    def shape(d: int, c: int, s: tuple[int, ...]) -> str:
        return f"{d}-D images of {c} channel(s), {'x'.join(map(str, s))}"

    if data_in != teacher_in:
        raise DistillError(f"student: its input must match the teacher's ({shape(*teacher_in)}), "
                           f"got {info.name!r} ({shape(*data_in)})")
    if dims != teacher_in[0]:
        raise DistillError(f"student: its backbone must read the teacher's input "
                           f"({shape(*teacher_in)}), got {backbone!r} (a {dims}-D backbone)")
    if info.task != predictor.task or list(info.class_names) != predictor.class_names:
        raise DistillError(
            f"student: its classes must match the teacher's ({predictor.task}, "
            f"{predictor.class_names}), got {info.name!r} ({info.task}, "
            f"{list(info.class_names)})"
        )


def _trial_config(study: optuna.Study, number: int) -> TrainConfig:
    from med_core.config import TrainConfig

    for t in study.get_trials(deepcopy=False):
        if t.number == number and CONFIG_ATTR in t.user_attrs:
            return TrainConfig.from_dict(t.user_attrs[CONFIG_ATTR])
    raise DistillError(f"study {study.study_name!r}: trial {number} has no stored config")


def distill(
    study: optuna.Study,
    *,
    run_dir: str | Path = "medauto-runs",
    student: str | None = None,
    epochs: int | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    device: str = "cpu",
    data_dir: str | os.PathLike[str] | None = None,
    dataset: MedicalDataset | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    tracking: Any = None,
    progress: bool = False,
) -> DistillResult:
    """Distills the study's final predictor into one student model and tests it once.

    Args:
        study: A finished medauto study with a final predictor.
        run_dir: Its run folder (final model, MLflow store).
        student: The student's backbone; ``None`` → the best single trial's.
        epochs: Training epochs; ``None`` → the best single trial's.
        temperature: See :class:`med_core.config.DistillConfig`.
        alpha: See :class:`med_core.config.DistillConfig`.
        device: A resolved device (``"cpu"``, ``"cuda"``, ``"cuda:K"``).
        data_dir: Overrides the trial's ``data.data_dir``.
        dataset: The loaded data (default: loaded from the trial's config).
        out_dir: Output folder (default :func:`student_dir`).
        tracking: As :func:`medauto.tracking.make_tracker` takes it (``False``: off).
        progress: Per-epoch progress bars.

    Raises:
        DistillError: no final predictor, or a student that does not fit the teacher.
        ConfigError: bad ``temperature``/``alpha``/``epochs`` (key, rule and value).
    """
    from med_core.config import DistillConfig
    from med_core.config import TrainConfig
    from med_core.data import load_dataset
    from med_core.training import KeepBestWeights
    from med_core.training import Trainer
    from med_core.training.distill import Distillation

    settings = DistillConfig(temperature=temperature, alpha=alpha)
    folder = final_dir(run_dir, study.study_name)
    if not (folder / FINAL_FILE).is_file():
        raise DistillError(
            f"study {study.study_name!r} has no final model at {str(folder)!r} (a search "
            "builds it when it ends; run `medauto search` to completion first)"
        )
    final = FinalResult.load(folder / FINAL_FILE)
    predictor = Predictor.load(folder / final.predictor)
    trial = int(final.candidates[0]["trial"])
    flat: dict[str, Any] = {"data.train_on_val": False}
    if student is not None:
        flat.update({"model.backbone": student, "model.checkpoint_segments": None})
    if epochs is not None:
        flat["epochs"] = epochs
    if data_dir is not None:
        flat["data.data_dir"] = os.fspath(data_dir)
    cfg = TrainConfig.from_flat(flat, base=_trial_config(study, trial))
    ds = dataset if dataset is not None else load_dataset(cfg.data)
    check_student(predictor, cfg.model.backbone, ds.info)  # up front: nothing trained yet

    info = ds.info
    teacher = EnsembleTeacher(predictor, device=device)
    kd = Distillation(teacher, settings)
    keeper = KeepBestWeights()
    trainer = Trainer(cfg, dataset=ds, device=device, callbacks=[keeper], distill=kd,
                      progress=progress)
    _logger.info("distilling the %d-member ensemble into %s (%d epochs, T=%g, alpha=%g) on %s",
                 len(predictor.members), cfg.model.backbone, cfg.epochs, temperature, alpha,
                 device)
    t0 = time.perf_counter()
    history = trainer.fit()
    seconds = time.perf_counter() - t0
    best = len(history.epochs) - 1
    if keeper.restore(trainer):
        best = int(keeper.epoch or 0)
    val = {k.removeprefix("val_"): float(v) for k, v in history.epochs[best].items()
           if k.startswith("val_") and k != "val_loss"}
    # ---- the test split, once, with the weights chosen on validation
    y_true, y_score = trainer.predict("test", tta=cfg.tta)
    test = split_metrics(info.task, y_true, y_score) if len(y_true) else {}
    out = Path(out_dir) if out_dir is not None else student_dir(run_dir, study.study_name)
    meta: dict[str, Any] = {
        "name": "student", "study": study.study_name, "trial": trial, "seed": cfg.seed,
        "weights": "best", "epoch": best, "dataset": info.name, "task": info.task,
        "num_classes": info.num_classes, "in_chans": info.in_chans,
        "spatial_dims": info.spatial_dims, "img_size": cfg.data.img_size or list(info.image_size),
        "class_names": list(info.class_names), "test": test, "tta": cfg.tta,
        "distill": {"temperature": temperature, "alpha": alpha, "mode": kd.mode,
                    "teacher": os.fspath(predictor.folder)},
    }
    path = save_model(out / _MODEL, trainer.model, cfg, **meta)
    trainer.close()
    result = DistillResult(
        study=study.study_name, dataset=info.name, task=info.task, student=cfg.model.backbone,
        student_trial=trial, temperature=temperature, alpha=alpha, mode=str(kd.mode),
        teacher_samples=kd.teacher_samples, epochs_run=len(history.epochs), best_epoch=best,
        val=val, test=test, test_teacher=dict(final.test), test_single=dict(final.test_single),
        n_test=int(len(y_true)), model=_MODEL, size_bytes=path.stat().st_size,
        train_seconds=seconds, device=device, created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    result.save(out / DISTILL_FILE)
    uri = tracking_uri(tracking, run_dir)
    if uri is not None:
        result.mlflow = log_distill(study, result, history.epochs, out, uri,
                                    run_dir=Path(run_dir), files=[out / DISTILL_FILE])
        if result.mlflow is not None:
            result.save(out / DISTILL_FILE)
    return result
