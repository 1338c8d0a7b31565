"""Consistency checks of loaded splits; every failure is a :class:`DataError` naming the problem."""

from __future__ import annotations

import numpy as np

from med_core.data._info import DatasetInfo
from med_core.data._info import Split
from med_core.exceptions import DataError

__all__ = ["validate_split"]


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
