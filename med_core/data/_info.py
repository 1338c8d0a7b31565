"""Value objects of a loaded dataset: ``DatasetInfo``, ``Split`` and ``MedicalDataset``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from med_core.exceptions import DataError

__all__ = ["SPLITS", "TASKS", "DatasetInfo", "MedicalDataset", "Split", "TaskType"]

TaskType = Literal["binary", "multi-class", "multi-label", "ordinal-regression"]
TASKS: tuple[str, ...] = ("binary", "multi-class", "multi-label", "ordinal-regression")
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a trainer need to know about a dataset.

    Args:
        name: Short name (``"breastmnist"``, ``"pneumoniamnist_64"``, a folder or CSV stem).
        task: One of :data:`TASKS`. ``"binary"`` labels are 0/1 (int64, shape ``(N,)``);
            ``"multi-class"`` and ``"ordinal-regression"`` labels are class indices
            ``0..num_classes-1``; ``"multi-label"`` labels are float32 0/1 of shape
            ``(N, num_classes)``.
        num_classes: Number of classes (2 for binary; the number of labels for multi-label).
            It is also the width of the classifier head (binary uses 2 logits).
        in_chans: Image channels (1 for grey-scale and volumes, 3 for RGB).
        spatial_dims: 2 for images ``(N, C, H, W)``, 3 for volumes ``(N, C, D, H, W)``.
        image_size: Spatial shape of one sample: ``(H, W)`` or ``(D, H, W)``.
        class_names: One name per class (per label for multi-label).
        source: Where the data came from (file path or folder), for messages and reports.
    """

    name: str
    task: TaskType
    num_classes: int
    in_chans: int
    spatial_dims: int
    image_size: tuple[int, ...]
    class_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(f"{self.name}: task must be one of {list(TASKS)}, got {self.task!r}")
        if self.spatial_dims not in (2, 3) or len(self.image_size) != self.spatial_dims:
            raise DataError(
                f"{self.name}: image_size {self.image_size!r} does not match "
                f"spatial_dims={self.spatial_dims!r}"
            )
        if len(self.class_names) != self.num_classes:
            raise DataError(
                f"{self.name}: {len(self.class_names)} class names for "
                f"num_classes={self.num_classes}"
            )

    @property
    def is_multilabel(self) -> bool:
        """``True`` when labels are ``(N, L)`` float 0/1 vectors."""
        return self.task == "multi-label"


@dataclass(frozen=True, eq=False)
class Split:
    """One split: images and labels as NumPy arrays (host memory or ``np.memmap``).

    Args:
        images: ``uint8`` of shape ``(N, C, H, W)`` or ``(N, C, D, H, W)``, channels first.
        labels: ``int64 (N,)`` for single-label tasks, ``float32 (N, L)`` for multi-label.
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def spatial_dims(self) -> int:
        """2 for ``(N, C, H, W)`` images, 3 for ``(N, C, D, H, W)`` volumes."""
        return int(self.images.ndim - 2)

    @property
    def nbytes(self) -> int:
        """Bytes of the image array."""
        return int(self.images.nbytes)

    def subset(self, indices: np.ndarray) -> Split:
        """A new split holding ``indices`` (copies)."""
        return Split(self.images[indices], self.labels[indices])

    def __repr__(self) -> str:
        return (
            f"Split(images={self.images.dtype}{tuple(self.images.shape)}, "
            f"labels={self.labels.dtype}{tuple(self.labels.shape)})"
        )


@dataclass(frozen=True, eq=False)
class MedicalDataset:
    """A dataset with its three splits. ``val``/``test`` may be empty (0 samples)."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split

    def split(self, name: str) -> Split:
        """The split called ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {name!r}")
        return getattr(self, name)  # type: ignore[no-any-return]

    def label_counts(self, split: str = "train") -> dict[int, int]:
        """Samples per class in ``split`` (positives per label for multi-label)."""
        labels = self.split(split).labels
        if self.info.is_multilabel:
            counts = labels.sum(axis=0).astype(np.int64)
            return {i: int(c) for i, c in enumerate(counts)}
        values, counts = np.unique(labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}

    def __repr__(self) -> str:
        i = self.info
        return (
            f"MedicalDataset({i.name!r}, task={i.task!r}, classes={i.num_classes}, "
            f"in_chans={i.in_chans}, size={i.image_size}, train={len(self.train)}, "
            f"val={len(self.val)}, test={len(self.test)})"
        )
