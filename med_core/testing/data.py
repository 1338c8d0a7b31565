"""Small copies of MedMNIST files for tests and tiny benchmark runs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["cut_medmnist"]

SPLITS = ("train", "val", "test")


def cut_medmnist(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    sizes: int | Mapping[str, int],
    *,
    both_classes: bool = False,
) -> Path:
    """Writes the first images of each split of the MedMNIST file ``src`` to ``dst``.

    Args:
        src: A MedMNIST ``.npz`` (``<split>_images``/``<split>_labels`` arrays).
        dst: The ``.npz`` to write (its folder is created).
        sizes: Images per split: one number for all three, or ``{"train": 96, ...}``;
            a split left out is copied whole.
        both_classes: Check that every cut split of a binary task still holds both
            classes (``AssertionError`` otherwise): tests that compute an AUC need them.

    Returns:
        ``dst`` as a ``Path``.
    """
    per_split = {s: sizes for s in SPLITS} if isinstance(sizes, int) else dict(sizes)
    out = Path(dst)
    with np.load(src) as full:
        arrays = {k: full[k] for k in full.files}
    for split, n in per_split.items():
        for kind in ("images", "labels"):
            arrays[f"{split}_{kind}"] = arrays[f"{split}_{kind}"][:n]
        if both_classes:
            assert len(np.unique(arrays[f"{split}_labels"])) == 2, (split, n)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return out
