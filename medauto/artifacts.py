"""Per-trial artifacts for optuna-dashboard: learning-curve and confusion-matrix PNGs.

The objective calls :func:`trial_artifacts` at the end of every trial that trained (complete
or pruned). It draws the trial's learning curve from its history and a confusion matrix of
the final model's validation predictions, and uploads both with Optuna's artifact API
(:func:`optuna.artifacts.upload_artifact`) into a :class:`~optuna.artifacts.FileSystemArtifactStore`
under ``<run_dir>/artifacts`` (:func:`artifact_store_for`). The artifact metadata lives in
the trial's system attributes, so optuna-dashboard lists the files on the trial's page;
it shows and serves them when it is started with the same store
(``optuna_dashboard.run_server(storage, artifact_store=artifact_store_for(run_dir))``).

Artifacts are a convenience: a failure to plot or upload logs a warning and never fails
the trial. Artifact names are reduced to a plain file name (:func:`safe_artifact_name`),
and the store refuses to live outside its run directory.

matplotlib is imported lazily and only through its object-oriented API with the Agg
canvas: no pyplot, no display, no global backend switch.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.exceptions import MedautoError
from medauto.logging import get_logger

if TYPE_CHECKING:
    import numpy as np
    import optuna
    from optuna.artifacts import ArtifactMeta
    from optuna.artifacts import FileSystemArtifactStore

    from med_core.training import History
    from med_core.training import Trainer
    from medauto._optuna_compat import ArtifactStore

__all__ = [
    "LEARNING_CURVE_NAME",
    "CONFUSION_MATRIX_NAME",
    "artifact_store_for",
    "confusion_matrix_png",
    "learning_curve_png",
    "predicted_labels",
    "safe_artifact_name",
    "trial_artifacts",
    "upload_trial_artifacts",
]

_logger = get_logger(__name__)

LEARNING_CURVE_NAME = "learning_curve.png"
CONFUSION_MATRIX_NAME = "confusion_matrix_val.png"
ARTIFACTS_DIRNAME = "artifacts"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 100
_LOSS_KEYS = ("train_loss", "val_loss")
_NON_METRIC_KEYS = frozenset({"epoch", "lr", "epoch_time_s", "images_per_s", *_LOSS_KEYS})


# -- the store ---------------------------------------------------------------------------


def artifact_store_for(run_dir: str | Path) -> FileSystemArtifactStore:
    """The artifact store of a run directory: ``<run_dir>/artifacts`` (created if missing).

    Searches (``AutoMLOptimizer``) and ``medauto dashboard`` must use the same ``run_dir``
    so that the dashboard can serve what the trials uploaded.

    Raises:
        MedautoError: ``<run_dir>/artifacts`` exists but is not a folder, or resolves
            (through a symbolic link) to a place outside ``run_dir``.
    """
    from optuna.artifacts import FileSystemArtifactStore

    root = Path(run_dir).expanduser().resolve()
    base = root / ARTIFACTS_DIRNAME
    if not base.resolve().is_relative_to(root):
        raise MedautoError(
            f"artifact folder {str(base)!r} links to {str(base.resolve())!r}, outside the run "
            f"directory {str(root)!r}; remove the link or choose another --run-dir"
        )
    if base.exists() and not base.is_dir():
        raise MedautoError(f"artifact folder {str(base)!r} exists and is not a folder")
    base.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(base_path=base)


def safe_artifact_name(name: str) -> str:
    """A plain file name for an artifact: no folders, no ``..``, only ``[A-Za-z0-9._-]``.

    ``"../../etc/x.png"`` → ``"x.png"``; ``"a b/c:d.png"`` → ``"c_d.png"``; a name with
    nothing left becomes ``"artifact"``. At most 100 characters, the suffix kept.
    """
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).lstrip(".")
    if not base.strip("._-"):
        return "artifact"
    if len(base) > _MAX_NAME:
        stem, dot, suffix = base.rpartition(".")
        if dot and 0 < len(suffix) <= 10:
            base = f"{stem[: _MAX_NAME - len(suffix) - 1]}.{suffix}"
        else:
            base = base[:_MAX_NAME]
    return base


def upload_trial_artifacts(
    study: optuna.Study | None,
    trial: optuna.Trial | optuna.trial.FrozenTrial,
    files: Mapping[str, str | Path] | Iterable[str | Path],
    artifact_store: ArtifactStore,
) -> list[ArtifactMeta]:
    """Uploads files as artifacts of ``trial``; optuna-dashboard lists them on the trial.

    Args:
        study: The trial's study (its storage records the metadata); may be ``None`` when
            ``trial`` is a live :class:`optuna.Trial`, which knows its storage.
        trial: The trial the files belong to.
        files: ``{artifact name: file path}``, or file paths (the name is the file's own).
            Each name passes through :func:`safe_artifact_name`.
        artifact_store: Where the bytes go (e.g. :func:`artifact_store_for`).

    Returns:
        The :class:`optuna.artifacts.ArtifactMeta` of each uploaded file, in order.

    Raises:
        ValueError: ``study`` is ``None`` and ``trial`` is a FrozenTrial.
        OSError: a file cannot be read.
    """
    import optuna
    from optuna.artifacts import get_all_artifact_meta
    from optuna.artifacts import upload_artifact

    items: list[tuple[str, Path]]
    if isinstance(files, Mapping):
        items = [(str(k), Path(v)) for k, v in files.items()]
    else:
        items = [(Path(p).name, Path(p)) for p in files]
    from medauto._optuna_compat import study_storage

    storage = study_storage(study) if study is not None else None
    if storage is None and not isinstance(trial, optuna.Trial):
        raise ValueError("upload_trial_artifacts needs the study for a FrozenTrial")
    ids: list[str] = []
    # Optuna records the upload's base name as the artifact's file name; staging each file
    # under its sanitised name keeps whatever a caller passed out of the metadata.
    with tempfile.TemporaryDirectory(prefix="medauto-artifact-") as tmp:
        for i, (name, src) in enumerate(items):
            staged = Path(tmp) / str(i) / safe_artifact_name(name)
            staged.parent.mkdir()
            shutil.copyfile(src, staged)
            ids.append(
                upload_artifact(
                    artifact_store=artifact_store,
                    file_path=str(staged),
                    study_or_trial=trial,
                    storage=storage,
                )
            )
    recorded = {m.artifact_id: m for m in get_all_artifact_meta(trial, storage=storage)}
    return [recorded[i] for i in ids]


# -- plots -------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    out = []
    for row in rows:
        v = row.get(key)
        out.append(float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan)
    return out


def learning_curve_png(
    history_rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    monitor: str = "val_auc",
    title: str | None = None,
) -> Path:
    """Draws a trial's learning curve into a PNG.

    Left: training and validation loss per epoch, with the learning rate (log scale, on
    its own axis). Right: every validation metric (``val_*`` except the loss), the
    ``monitor`` drawn bold with its best epoch marked.

    Args:
        history_rows: Per-epoch dicts as in the ``history`` trial attribute
            (``{"epoch": 1, "train_loss": .., "val_loss": .., "val_auc": .., "lr": ..}``,
            epochs 1-based);
            missing or ``None`` values are gaps.
        path: The PNG to write (its folder is created).
        monitor: The metric the study optimizes.
        title: Figure title (e.g. ``"trial 7 · resnet18"``).

    Returns:
        ``path``.

    Raises:
        ValueError: ``history_rows`` is empty.
    """
    if not history_rows:
        raise ValueError("learning_curve_png needs at least one epoch of history, got none")
    rows = list(history_rows)
    epochs = [int(r.get("epoch", i + 1)) for i, r in enumerate(rows)]  # 1-based, as reported
    fig = _figure(10, 4)
    ax_loss, ax_metric = fig.subplots(1, 2)
    for key, style in zip(_LOSS_KEYS, ("-o", "-s"), strict=True):
        if any(key in r for r in rows):
            values = _series(rows, key)
            label = key
            finite = [(v, e) for v, e in zip(values, epochs, strict=True) if not math.isnan(v)]
            if key == monitor and finite:  # a loss as the study's metric: mark its best
                best_v, best_e = min(finite)
                ax_loss.axvline(best_e, color="grey", ls="--", lw=0.8)
                label = f"{key} (best {best_v:.4f} @ epoch {best_e})"
            ax_loss.plot(epochs, values, style, ms=3, label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    lr = _series(rows, "lr")
    lines, labels = ax_loss.get_legend_handles_labels()
    lr_known = [v for v in lr if not math.isnan(v)]
    if lr_known and max(lr_known) > 0:
        ax_lr = ax_loss.twinx()
        (line,) = ax_lr.plot(epochs, lr, ":.", color="grey", ms=4, label="lr")
        if min(lr_known) > 0:  # a schedule that ends at 0 stays on a linear axis
            ax_lr.set_yscale("log")
        ax_lr.set_ylabel("learning rate")
        lines.append(line)
        labels.append("lr")
    if lines:
        ax_loss.legend(lines, labels, loc="best", fontsize=8)

    keys = sorted(
        {k for r in rows for k in r if k.startswith("val_") and k not in _NON_METRIC_KEYS}
    )
    if monitor in keys:
        keys.remove(monitor)
        keys.insert(0, monitor)
    for key in keys:
        values = _series(rows, key)
        is_monitor = key == monitor
        label = key
        finite = [(v, e) for v, e in zip(values, epochs, strict=True) if not math.isnan(v)]
        if is_monitor and finite:
            best_v, best_e = (min if monitor.endswith("loss") else max)(finite)
            ax_metric.axvline(best_e, color="grey", ls="--", lw=0.8)
            label = f"{key} (best {best_v:.4f} @ epoch {best_e})"
        ax_metric.plot(
            epochs, values, "-o" if is_monitor else "-", ms=3, lw=2.2 if is_monitor else 1.0,
            alpha=1.0 if is_monitor else 0.7, label=label,
        )
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("validation metric")
    ax_metric.grid(alpha=0.3)
    if keys:
        ax_metric.legend(fontsize=8, loc="best")
    for ax in (ax_loss, ax_metric):
        ax.set_xlim(0.5, max(epochs) + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title or f"learning curve ({monitor})")
    return _save(fig, path)


def _confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def confusion_matrix_png(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    class_names: Sequence[str] | None,
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Draws a confusion matrix (counts, and the share of each true class) into a PNG.

    Args:
        y_true: True class indices ``(N,)`` (an ``(N, 1)`` column is accepted).
        y_pred: Predicted class indices ``(N,)`` (see :func:`predicted_labels`).
        class_names: One name per class (index order); ``None`` → the indices. Also sets
            the matrix size, so classes that never occur still get a row.
        path: The PNG to write (its folder is created).
        title: Figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: lengths differ, no samples, or a label outside the classes.
    """
    import numpy as np

    t, p = np.asarray(y_true), np.asarray(y_pred)
    if len(t) != len(p) or len(t) == 0:
        raise ValueError(
            f"y_true and y_pred must be non-empty and equally long, got {len(t)} and {len(p)}"
        )
    t, p = t.reshape(len(t), -1), p.reshape(len(p), -1)
    if t.shape[1] != 1 or p.shape[1] != 1:
        raise ValueError(
            f"confusion_matrix_png needs one class index per sample, got shapes "
            f"{np.shape(y_true)} and {np.shape(y_pred)}"
        )
    t, p = t[:, 0].astype(np.int64), p[:, 0].astype(np.int64)
    n = len(class_names) if class_names is not None else int(max(t.max(), p.max())) + 1
    if min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n:
        raise ValueError(
            f"labels must lie in [0, {n - 1}] for {n} classes, got "
            f"[{min(t.min(), p.min())}, {max(t.max(), p.max())}]"
        )
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(n)]
    names = [c if len(c) <= 18 else c[:17] + "…" for c in names]
    counts = _confusion_counts(t, p, n)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)

    size = min(3.5 + 0.55 * n, 14)
    fig = _figure(size + 1.2, size)
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of true class")
    ax.set_xticks(range(n), names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        fontsize = 9 if n <= 8 else 6
        for i in range(n):
            for j in range(n):
                ax.text(
                    j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                    fontsize=fontsize, color="white" if share[i, j] > 0.5 else "black",
                )
    acc = float(np.trace(counts)) / float(counts.sum())
    ax.set_title(title or f"confusion matrix (n={len(t)}, acc={acc:.3f})", fontsize=10)
    return _save(fig, path)


def predicted_labels(y_score: np.ndarray) -> np.ndarray:
    """Class indices from ``Trainer.predict`` scores: threshold 0.5 for a binary ``(N,)``
    positive-class probability, argmax over classes for ``(N, C)``.

    Raises:
        ValueError: any other shape.
    """
    import numpy as np

    s = np.asarray(y_score)
    if s.ndim == 1:
        return (s >= 0.5).astype(np.int64)
    if s.ndim == 2 and s.shape[1] >= 2:
        return s.argmax(axis=1).astype(np.int64)
    if s.ndim == 2 and s.shape[1] == 1:
        return (s[:, 0] >= 0.5).astype(np.int64)
    raise ValueError(f"scores must be (N,) or (N, C), got shape {s.shape}")


# -- the objective's hook -----------------------------------------------------------------


def trial_artifacts(
    trial: Any,
    trainer: Trainer,
    history: History,
    *,
    artifact_store: ArtifactStore,
    class_names: Sequence[str] | None = None,
    task: str | None = None,
    weights_epoch: int | None = None,
) -> list[ArtifactMeta]:
    """Plots and uploads a finished fit's learning curve and validation confusion matrix.

    Called by :class:`medauto.objective.Objective` after ``trainer.fit()`` returned
    (complete or pruned). Under DDP every rank must call it (``trainer.predict`` gathers
    the predictions of all ranks); only the main process plots and uploads. The confusion
    matrix uses the trainer's model as it is: the objective restores the best epoch's
    weights first (``weights_epoch`` says which, for the title), else it is the last
    epoch's. Multi-label tasks get no confusion matrix.

    Never raises an ``Exception``: a failure logs a warning naming the trial, and whatever
    was uploaded before it stays.

    Args:
        trial: The trial (a :class:`optuna.Trial` on the main process).
        trainer: The trainer whose ``fit()`` just returned.
        history: What ``fit()`` returned.
        artifact_store: Where to upload (:func:`artifact_store_for`).
        class_names: Confusion-matrix labels; ``None`` → ``trainer.dataset.info.class_names``.
        task: ``None`` → ``trainer.task``.
        weights_epoch: The 1-based epoch whose weights the model holds; ``None`` → the
            last epoch's.

    Returns:
        The uploaded artifacts' metadata (empty on non-main ranks and on failure).
    """
    number = getattr(trial, "number", "?")
    task = task or getattr(trainer, "task", None)
    y: tuple[Any, Any] | None = None
    if task != "multi-label":
        try:
            y = trainer.predict("val")
        except Exception as e:  # noqa: BLE001 - artifacts never fail a trial
            _logger.warning(
                "trial %s: no confusion matrix, validation predictions failed (%s: %s)",
                number, type(e).__name__, e,
            )
    if not trainer.is_main_process:
        return []
    if class_names is None:
        info = getattr(getattr(trainer, "dataset", None), "info", None)
        class_names = getattr(info, "class_names", None)
    files: dict[str, Path] = {}
    metas: list[ArtifactMeta] = []
    with tempfile.TemporaryDirectory(prefix=f"medauto-trial{number}-") as tmp:
        backbone = getattr(getattr(getattr(trainer, "cfg", None), "model", None), "backbone", "")
        label = f"trial {number}" + (f" · {backbone}" if backbone else "")
        if history.epochs:
            _attempt(
                number, "learning curve", files, LEARNING_CURVE_NAME,
                lambda: learning_curve_png(
                    [{**r, "epoch": int(r["epoch"]) + 1} for r in history.epochs],  # 1-based
                    Path(tmp) / LEARNING_CURVE_NAME, monitor=history.monitor,
                    title=f"{label} · {history.monitor}",
                ),
            )
        if y is not None:
            y_true, y_score = y
            _attempt(
                number, "confusion matrix", files, CONFUSION_MATRIX_NAME,
                lambda: confusion_matrix_png(
                    y_true, predicted_labels(y_score), class_names,
                    Path(tmp) / CONFUSION_MATRIX_NAME,
                    title=f"{label} · validation, "
                    + (f"epoch {weights_epoch} (best)" if weights_epoch else "last epoch"),
                ),
            )
        if files:
            try:
                metas = upload_trial_artifacts(None, trial, files, artifact_store)
            except Exception as e:  # noqa: BLE001 - artifacts never fail a trial
                _logger.warning(
                    "trial %s: uploading artifacts %s failed (%s: %s); the trial goes on",
                    number, sorted(files), type(e).__name__, e,
                )
    return metas


def _attempt(
    number: Any, what: str, files: dict[str, Path], name: str, draw: Any
) -> None:
    try:
        files[name] = draw()
    except Exception as e:  # noqa: BLE001 - artifacts never fail a trial
        _logger.warning(
            "trial %s: could not draw the %s (%s: %s); the trial goes on",
            number, what, type(e).__name__, e,
        )
