"""The data fingerprint: what a dataset looks like → which space, and how to select on it.

In the style of nnU-Net's "dataset fingerprint", :func:`fingerprint_dataset` reads a loaded
:class:`~med_core.data.MedicalDataset` once (train and validation only: the test split is
never looked at) and records its dimensionality, channels, image size, sample counts,
class balance and whether the images are binary masks. Two decisions follow from it:

* :func:`choose_space`: the shipped search space when the user gives none: ``volumetric``
  for 3D data, ``default`` for 2D data on a GPU, ``fast`` for 2D data on a CPU.
* :func:`choose_selection`: how configurations are scored. A validation split too small
  to rank models (:data:`MAX_VAL_AUC_SE`) is replaced by stratified k-fold
  cross-validation on train+val; the final ensemble is then made of the fold models.

:func:`check_space_fits` refuses, before any trial, a space whose dimensionality does not
match the data (a 2D space on volumes fails every trial otherwise).

Example:
    >>> round(val_auc_standard_error(57, 21), 3)
    0.034
    >>> Selection("cv", folds=5).describe()
    '5-fold cross-validation on train+val'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import replace
from typing import TYPE_CHECKING
from typing import Literal

from medauto.exceptions import SearchSpaceError

if TYPE_CHECKING:
    from pathlib import Path

    from med_core.data import MedicalDataset
    from medauto.space import SearchSpace

__all__ = [
    "CV_FOLDS",
    "SELECTION_MODES",
    "MAX_VAL_AUC_SE",
    "MIN_CV_FOLDS",
    "MIN_FOLD_EPOCH_SHARE",
    "DataFingerprint",
    "Selection",
    "affordable_selection",
    "check_space_fits",
    "choose_selection",
    "choose_space",
    "fingerprint_dataset",
    "resolve_selection",
    "resolve_space",
    "val_auc_standard_error",
]

#: Above this standard error of the validation AUC (Hanley & McNeil, 1982, at AUC 0.9),
#: the validation split is too small to rank configurations, and k-fold CV is used. The
#: spread between good configurations of a search is about 0.01-0.03 AUC; BreastMNIST's
#: 78 validation images (SE 0.039) picked a winner at val 0.936 that tested at 0.875,
#: while PneumoniaMNIST's 524 (SE 0.014) ranked well (docs/search_quality.md).
MAX_VAL_AUC_SE = 0.025
#: Folds of the cross-validated selection.
CV_FOLDS = 5
#: Under a budget, cross-validation is kept only if each fold can still train at least
#: this share of the configured epochs within its part of the trial cap; otherwise k short
#: fold fits are worse than one whole fit (the CPU README run: 5 folds x 5 of 12 epochs
#: gave fold models at validation AUC 0.65-0.71, docs/search_quality.md).
MIN_FOLD_EPOCH_SHARE = 0.5

#: The fewest folds :func:`affordable_selection` steps down to before it falls back to holdout.
MIN_CV_FOLDS = 3
_REFERENCE_AUC = 0.9

Mode = Literal["holdout", "cv"]
#: What a user may ask for: chosen from the data, the validation split, or k-fold CV.
SELECTION_MODES = ("auto", "holdout", "cv")


def val_auc_standard_error(n_pos: int, n_neg: int, auc: float = _REFERENCE_AUC) -> float:
    """Hanley-McNeil standard error of an AUC measured on ``n_pos`` + ``n_neg`` samples.

    Returns ``inf`` when either class is empty.
    """
    if n_pos < 1 or n_neg < 1:
        return math.inf
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (
        n_pos * n_neg
    )
    return math.sqrt(max(var, 0.0))


@dataclass(frozen=True)
class DataFingerprint:
    """What a search needs to know about a dataset (train and validation splits only).

    Attributes:
        name: The dataset's name.
        task: The task type (``"binary"``, ``"multi-class"``, ...).
        spatial_dims: 2 (images) or 3 (volumes).
        in_chans: Channels (1 grey, 3 RGB).
        image_size: Spatial shape of one sample.
        n_train: Training samples.
        n_val: Validation samples.
        num_classes: Classes (labels for multi-label).
        train_counts: Samples per class in train.
        val_counts: Samples per class in val.
        binary_masks: Whether the images hold only two values (shape masks).
    """

    name: str
    task: str
    spatial_dims: int
    in_chans: int
    image_size: tuple[int, ...]
    n_train: int
    n_val: int
    num_classes: int
    train_counts: tuple[int, ...]
    val_counts: tuple[int, ...]
    binary_masks: bool

    @property
    def minority_share(self) -> float:
        """The smallest class's share of the training samples."""
        total = sum(self.train_counts)
        return min(self.train_counts) / total if total else 0.0

    @property
    def val_auc_se(self) -> float:
        """Standard error of a validation AUC: one class against the rest, worst class."""
        total = sum(self.val_counts)
        return max(
            (val_auc_standard_error(c, total - c) for c in self.val_counts), default=math.inf
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (stored with the final model and in the report)."""
        return {
            "name": self.name, "task": self.task, "spatial_dims": self.spatial_dims,
            "in_chans": self.in_chans, "image_size": list(self.image_size),
            "n_train": self.n_train, "n_val": self.n_val, "num_classes": self.num_classes,
            "train_counts": list(self.train_counts), "val_counts": list(self.val_counts),
            "binary_masks": self.binary_masks,
            "val_auc_se": round(self.val_auc_se, 4) if math.isfinite(self.val_auc_se) else None,
        }

    def describe(self) -> str:
        """One line for the log."""
        size = "x".join(str(s) for s in self.image_size)
        kind = "binary masks" if self.binary_masks else f"{self.in_chans}-channel"
        return (
            f"{self.name}: {self.spatial_dims}D {size} {kind}, {self.task} "
            f"({self.num_classes} classes, minority {self.minority_share:.0%}), "
            f"train {self.n_train}, val {self.n_val}"
        )


def _counts(labels: object, num_classes: int, multilabel: bool) -> tuple[int, ...]:
    import numpy as np

    arr = np.asarray(labels)
    if multilabel:
        return tuple(int(c) for c in arr.sum(axis=0))
    return tuple(int(c) for c in np.bincount(arr.astype(np.int64), minlength=num_classes))


def fingerprint_dataset(dataset: MedicalDataset) -> DataFingerprint:
    """Fingerprints ``dataset`` from its train and validation splits (never test)."""
    from med_core.data import is_binary_mask_data

    info = dataset.info
    return DataFingerprint(
        name=info.name, task=info.task, spatial_dims=info.spatial_dims,
        in_chans=info.in_chans, image_size=tuple(info.image_size),
        n_train=len(dataset.train), n_val=len(dataset.val), num_classes=info.num_classes,
        train_counts=_counts(dataset.train.labels, info.num_classes, info.is_multilabel),
        val_counts=_counts(dataset.val.labels, info.num_classes, info.is_multilabel),
        binary_masks=is_binary_mask_data(dataset.train.images),
    )


def choose_space(fp: DataFingerprint, device: str) -> str:
    """The shipped space for data with this fingerprint on ``device`` (``"cpu"``, ``"cuda"``)."""
    if fp.spatial_dims == 3:
        return "volumetric"
    return "fast" if device == "cpu" else "default"


@dataclass(frozen=True)
class Selection:
    """How a trial is scored: on the validation split, or by k-fold CV on train+val.

    Attributes:
        mode: ``"holdout"`` or ``"cv"``.
        folds: Folds of ``"cv"`` (1 for holdout).
        seed: Seed of the fold assignment (the same for every trial of a study).
    """

    mode: Mode = "holdout"
    folds: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("holdout", "cv"):
            raise ValueError(f"selection mode must be 'holdout' or 'cv', got {self.mode!r}")
        if self.mode == "cv" and self.folds < 2:
            raise ValueError(f"cv needs folds >= 2, got {self.folds!r}")
        if self.mode == "holdout" and self.folds != 1:
            raise ValueError(f"holdout has folds == 1, got {self.folds!r}")

    def describe(self) -> str:
        """``"validation split"`` or ``"5-fold cross-validation on train+val"``."""
        if self.mode == "holdout":
            return "the validation split"
        return f"{self.folds}-fold cross-validation on train+val"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (stored in the study settings)."""
        return {"mode": self.mode, "folds": self.folds, "seed": self.seed}


def choose_selection(fp: DataFingerprint, *, folds: int = CV_FOLDS) -> Selection:
    """k-fold CV when the validation AUC's standard error exceeds :data:`MAX_VAL_AUC_SE`.

    Multi-label data always uses the validation split (no stratified folds for it).
    """
    if fp.task == "multi-label" or fp.val_auc_se <= MAX_VAL_AUC_SE:
        return Selection("holdout")
    smallest = min(a + b for a, b in zip(fp.train_counts, fp.val_counts, strict=True))
    return Selection("cv", folds=max(2, min(folds, smallest)))


def affordable_selection(
    selection: Selection, *, epochs: int, first_s: float, epoch_s: float, trial_cap_s: float
) -> Selection:
    """``selection``, with fewer folds, or holdout: the most folds that each train a useful
    fit in time.

    ``first_s`` and ``epoch_s`` are a probe's timings of one fold's first and second epoch
    (:func:`medauto.trial_timing.probe_epochs`, on a fold of ``selection.folds``; a fold of
    fewer folds trains on less data, so the timing is an upper bound for it); each fold
    gets ``trial_cap_s / k``. From ``selection.folds`` down to :data:`MIN_CV_FOLDS`, the
    first ``k`` whose fold fits :data:`MIN_FOLD_EPOCH_SHARE` of ``epochs`` is kept; if none
    does, the one validation split is used. Fewer folds before holdout: scored on all of
    train+val, a configuration cannot be chosen for the luck of a few validation images
    (BreastMNIST's 78), which is what holdout allows.

    Example:
        >>> cv = Selection("cv", folds=5)
        >>> affordable_selection(cv, epochs=12, first_s=4, epoch_s=3, trial_cap_s=38).mode
        'holdout'
        >>> affordable_selection(cv, epochs=12, first_s=3, epoch_s=2.9, trial_cap_s=55).folds
        3
        >>> affordable_selection(cv, epochs=100, first_s=3, epoch_s=0.2, trial_cap_s=149).folds
        5
    """
    if selection.mode != "cv":
        return selection
    for folds in range(selection.folds, MIN_CV_FOLDS - 1, -1):
        per_fold = trial_cap_s / folds
        fitted = 0 if per_fold < first_s else 1 + int((per_fold - first_s) / max(epoch_s, 1e-9))
        if fitted >= MIN_FOLD_EPOCH_SHARE * epochs:
            return selection if folds == selection.folds else replace(selection, folds=folds)
    return Selection("holdout")


def check_space_fits(space: SearchSpace, fp: DataFingerprint) -> None:
    """Refuses a space that cannot train on this data, before any trial runs.

    Raises:
        SearchSpaceError: the space is for 2D images and the data are volumes, or the reverse.
    """
    if space.spatial_dims != fp.spatial_dims:
        hint = "volumetric" if fp.spatial_dims == 3 else "default or fast"
        raise SearchSpaceError(
            f"search space {space.name!r} is {space.spatial_dims}D but {fp.name!r} holds "
            f"{fp.spatial_dims}D data ({'x'.join(map(str, fp.image_size))}); leave --space out "
            f"to choose one from the data, or use a {fp.spatial_dims}D space ({hint})"
        )


def resolve_space(
    space: str | Path | SearchSpace | None, fp: DataFingerprint, device: str
) -> SearchSpace:
    """The search space to use: the one given (a name, a path or a space), else
    :func:`choose_space`'s; checked against the data (:func:`check_space_fits`).

    Raises:
        SearchSpaceError: the space cannot be loaded, or does not fit the data.
    """
    from medauto.space import SearchSpace

    if not isinstance(space, SearchSpace):
        space = SearchSpace.from_yaml(space or choose_space(fp, device))
    check_space_fits(space, fp)
    return space


def resolve_selection(mode: str, fp: DataFingerprint) -> Selection:
    """The :class:`Selection` for ``mode`` (one of :data:`SELECTION_MODES`)."""
    if mode == "holdout":
        return Selection("holdout")
    if mode == "cv":
        return Selection("cv", folds=CV_FOLDS)
    return choose_selection(fp)
