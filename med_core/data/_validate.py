"""Consistency checks of loaded splits; every failure is a :class:`DataError` naming the problem."""

from __future__ import annotations

import numpy as np

from med_core.data._info import DatasetInfo
from med_core.data._info import Split
from med_core.exceptions import DataError

__all__ = ["validate_class_ids", "validate_split"]


def validate_split(split: Split, info: DatasetInfo, *, name: str, allow_empty: bool) -> None:
    """Checks images (dtype, rank, channels, size), labels (dtype, shape, range) and counts.

    Args:
        split: The split to check.
        info: What the split must match.
        name: The split's name (``"train"``, ...), used in messages.
        allow_empty: Whether 0 samples is acceptable (``val``/``test`` of user data).

    Raises:
        DataError: on the first problem found; the message names ``info.source`` and ``name``.
    """
    where = f"{info.source} [{name}]"
    images, labels = split.images, split.labels
    if images.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8, got dtype {images.dtype}")
    expected_ndim = 2 + info.spatial_dims
    if images.ndim != expected_ndim:
        raise DataError(
            f"{where}: images must have shape (N, C, {', '.join('DHW'[-info.spatial_dims :])}) "
            f"({expected_ndim} dims), got shape {tuple(images.shape)}"
        )
    if images.shape[1] != info.in_chans:
        raise DataError(
            f"{where}: images have {images.shape[1]} channel(s), expected {info.in_chans} "
            f"(shape {tuple(images.shape)})"
        )
    if tuple(images.shape[2:]) != tuple(info.image_size):
        raise DataError(
            f"{where}: image size {tuple(images.shape[2:])} differs from the dataset's "
            f"{tuple(info.image_size)}"
        )
    n = images.shape[0]
    if n == 0 and not allow_empty:
        raise DataError(f"{where}: the split is empty")
    if labels.shape[0] != n:
        raise DataError(f"{where}: {n} images but {labels.shape[0]} labels (counts must match)")
    if info.is_multilabel:
        if labels.dtype != np.float32 or labels.ndim != 2 or labels.shape[1] != info.num_classes:
            raise DataError(
                f"{where}: multi-label labels must be float32 of shape (N, {info.num_classes}), "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        if n and not np.isin(labels, (0.0, 1.0)).all():
            raise DataError(f"{where}: multi-label labels must be 0 or 1")
        return
    if labels.dtype != np.int64 or labels.ndim != 1:
        raise DataError(
            f"{where}: labels must be int64 of shape (N,), got {labels.dtype} {tuple(labels.shape)}"
        )
    if n:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= info.num_classes:
            bad = lo if lo < 0 else hi
            raise DataError(
                f"{where}: label {bad} out of range [0, {info.num_classes - 1}] "
                f"for {info.num_classes} classes"
            )
    if name == "val" and n:
        present = np.unique(labels)
        if present.size < 2:
            raise DataError(
                f"{where}: the validation split holds a single class (label {int(present[0])}, "
                f"{n} samples); model selection and AUC need at least two classes: re-split so "
                "that val holds every class"
            )


def validate_class_ids(labels: list[np.ndarray], where: str) -> int:
    """Checks inferred single-label class ids and returns the class count ``K``.

    Without a class list, ``K`` is ``max + 1``; every id ``0..K-1`` must then occur in the
    training split (``labels[0]``), so one stray value (a ``40`` among 0/1 labels) is
    refused instead of silently making a 41-class task.

    Raises:
        DataError: negative ids, or ids ``0..K-1`` that never occur in train (the message
            names the file, the values found and the missing ones).
    """
    values = np.unique(np.concatenate([np.asarray(lab).ravel() for lab in labels]))
    if values.size == 0:
        raise DataError(f"{where}: no labels")
    if values[0] < 0:
        raise DataError(f"{where}: negative label {int(values[0])}; class ids are 0..K-1")
    k = int(values[-1]) + 1
    in_train = set(np.unique(np.asarray(labels[0]).ravel()).astype(int).tolist())
    missing = [c for c in range(k) if c not in in_train]
    if missing:
        found = values.astype(int).tolist()
        shown = found if len(found) <= 20 else found[:10] + ["..."] + found[-5:]
        gaps = missing if len(missing) <= 20 else missing[:20] + ["..."]
        raise DataError(
            f"{where}: class ids must be 0..K-1 with every class in the train split, but the "
            f"labels hold {shown} (K = {k}) and train has no sample of class(es) {gaps}; fix "
            "the stray labels or renumber the classes"
        )
    return k
