"""Deterministic splits: stratified train/val/test for user data without a split column,
and stratified k-fold cross-validation folds over train+val."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from med_core.data._info import MedicalDataset
from med_core.data._info import Split
from med_core.exceptions import DataError

__all__ = ["cross_validation_folds", "stratified_split"]


def _share(n: int, fraction: float) -> int:
    """Samples of a class given to a held-out split: round(n * fraction), at least 1 if > 0."""
    if fraction <= 0:
        return 0
    return max(1, int(round(n * fraction)))


def stratified_split(
    labels: np.ndarray,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
    class_names: tuple[str, ...] | None = None,
) -> dict[str, np.ndarray]:
    """Splits sample indices per class into train/val/test.

    Each class is shuffled with ``numpy.random.default_rng([seed, class_index])`` and gives
    ``max(1, round(n_c * test_fraction))`` samples to test and ``max(1, round(n_c *
    val_fraction))`` to val (0 when the fraction is 0); the rest go to train. The result
    depends only on the labels (in sample order), the fractions and the seed, so it is
    the same on every machine and NumPy version that keeps ``PCG64``.

    Args:
        labels: Class indices, shape ``(N,)``.
        val_fraction: Share of each class for validation, in [0, 0.5].
        test_fraction: Share of each class for testing, in [0, 0.5].
        seed: Seed of the per-class shuffles.
        class_names: Names used in error messages.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``: sorted int64 index arrays.

    Raises:
        DataError: a class has too few samples to give at least one to train and to each
            split with a non-zero fraction.

    Example:
        >>> s = stratified_split(np.array([0] * 10 + [1] * 10), val_fraction=0.1, test_fraction=0.2)
        >>> [len(s[k]) for k in ("train", "val", "test")]
        [14, 2, 4]
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"stratified split needs class indices of shape (N,), got {labels.shape}")
    out: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = len(idx)
        n_test = _share(n, test_fraction)
        n_val = _share(n, val_fraction)
        if n - n_test - n_val < 1:
            name = class_names[int(c)] if class_names is not None else str(int(c))
            need = 1 + (val_fraction > 0) + (test_fraction > 0)
            raise DataError(
                f"class {name!r} has {n} sample(s): too few to stratify into train/val/test "
                f"with val_fraction={val_fraction}, test_fraction={test_fraction} "
                f"(needs at least {need}); add samples or give a split column"
            )
        perm = idx[np.random.default_rng([seed, int(c)]).permutation(n)]
        out["test"].append(perm[:n_test])
        out["val"].append(perm[n_test : n_test + n_val])
        out["train"].append(perm[n_test + n_val :])
    return {
        k: np.sort(np.concatenate(v)).astype(np.int64) if v else np.zeros(0, np.int64)
        for k, v in out.items()
    }


def cross_validation_folds(
    dataset: MedicalDataset, folds: int, *, seed: int = 0
) -> Iterator[tuple[np.ndarray, MedicalDataset]]:
    """Stratified k-fold datasets over train+val; the test split is left out of every fold.

    The pool is ``train`` followed by ``val``; fold ``j`` trains on the other folds and
    validates on fold ``j`` (scikit-learn's ``StratifiedKFold`` with shuffling by ``seed``,
    so every trial of a search gets the same folds). Each fold dataset's ``test`` split is
    empty: nothing inside cross-validation can read the test split.

    Args:
        dataset: A single-label dataset (binary, multi-class or ordinal).
        folds: Number of folds, >= 2.
        seed: Seed of the fold assignment.

    Yields:
        ``(val_index, fold_dataset)``: the pool positions of the fold's validation samples
        (for out-of-fold predictions) and the fold's dataset.

    Raises:
        DataError: multi-label data, ``folds`` < 2, or a class with fewer samples than folds.

    Example:
        >>> from med_core.data import DatasetInfo
        >>> info = DatasetInfo("toy", "binary", 2, 1, 2, (4, 4), ("a", "b"), "toy")
        >>> x = np.zeros((20, 1, 4, 4), np.uint8)
        >>> y = np.array([0, 1] * 10)
        >>> tr, va, te = Split(x[:16], y[:16]), Split(x[16:], y[16:]), Split(x[:0], y[:0])
        >>> ds = MedicalDataset(info, tr, va, te)
        >>> [(len(i), len(f.train), len(f.test)) for i, f in cross_validation_folds(ds, 4)]
        [(5, 15, 0), (5, 15, 0), (5, 15, 0), (5, 15, 0)]
    """
    from sklearn.model_selection import StratifiedKFold

    if dataset.info.is_multilabel:
        raise DataError(f"{dataset.info.name}: stratified k-fold needs single-label data")
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise DataError(f"cross-validation needs folds >= 2, got {folds!r}")
    images = np.concatenate([dataset.train.images, dataset.val.images])
    labels = np.concatenate([dataset.train.labels, dataset.val.labels])
    counts = np.bincount(labels.astype(np.int64))
    present = counts[counts > 0]
    if present.size and present.min() < folds:
        raise DataError(
            f"{dataset.info.name}: a class has {int(present.min())} sample(s) in train+val, "
            f"fewer than the {folds} folds of cross-validation"
        )
    empty = Split(images[:0], labels[:0])
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_idx, val_idx in splitter.split(np.zeros(len(labels)), labels):
        yield val_idx, MedicalDataset(
            dataset.info,
            train=Split(images[train_idx], labels[train_idx]),
            val=Split(images[val_idx], labels[val_idx]),
            test=empty,
        )
