"""User data: an image folder (``root/<class>/*.png``) or a CSV manifest (``path,label``)."""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from med_core.data._info import SPLITS
from med_core.data._info import DatasetInfo
from med_core.data._info import MedicalDataset
from med_core.data._info import Split
from med_core.data._splits import stratified_split
from med_core.data._validate import validate_split
from med_core.exceptions import DataError

__all__ = [
    "IMAGE_EXTENSIONS", "conform_image", "load_csv_manifest", "load_image_folder", "read_image",
]

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_DICOM_EXTENSIONS = (".dcm",)
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _pydicom_available() -> bool:
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return False
    return True


def _extensions() -> tuple[str, ...]:
    return IMAGE_EXTENSIONS + (_DICOM_EXTENSIONS if _pydicom_available() else ())


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Non-uint8 pixel data (16-bit, float, DICOM) → uint8 by per-image min-max scaling."""
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """One image file → ``(H, W)`` (grey) or ``(H, W, 3)`` (colour) uint8, as training
    decodes it: 8-bit grey and colour as stored, 16-bit/float grey and DICOM min-max scaled
    per image to 0..255.

    Raises:
        DataError: an unreadable or corrupt file (named), or a multi-frame DICOM.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in _DICOM_EXTENSIONS:
            import pydicom

            a = np.asarray(pydicom.dcmread(str(path)).pixel_array)
            if a.ndim == 3 and a.shape[-1] not in (3, 4):
                raise DataError(f"{str(path)!r}: multi-frame DICOM is not supported")
            return _to_uint8(a[..., :3] if a.ndim == 3 else a)
        from PIL import Image

        with Image.open(path) as img:
            img.load()
            if img.mode in _GREY_MODES:
                if img.mode in ("1", "L", "LA"):
                    return np.asarray(img.convert("L"))
                return _to_uint8(np.asarray(img))
            return np.asarray(img.convert("RGB"))
    except DataError:
        raise
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise DataError(f"cannot read image file {str(path)!r}: {type(e).__name__}: {e}") from e


def conform_image(a: np.ndarray, *, in_chans: int, size: tuple[int, int]) -> np.ndarray:
    """A decoded image (:func:`read_image`) → ``(in_chans, H, W)`` uint8 at ``size``, the
    way image folders and CSV manifests are stacked for training.

    Channels: grey → RGB replicates the grey plane; RGB → grey is PIL's ``"L"`` conversion
    (ITU-R 601-2 luma). Resampling: PIL bilinear.

    Raises:
        DataError: ``in_chans`` is neither 1 nor 3.
    """
    from PIL import Image

    if in_chans not in (1, 3):
        raise DataError(f"in_chans must be 1 or 3 for 2-D images, got {in_chans!r}")
    if in_chans == 3 and a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    elif in_chans == 1 and a.ndim == 3:
        a = np.asarray(Image.fromarray(a).convert("L"))
    if a.shape[:2] != tuple(size):
        a = np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return a.transpose(2, 0, 1) if a.ndim == 3 else a[None]


def _stack(paths: Sequence[Path], img_size: int | None) -> np.ndarray:
    """Decodes, unifies channels and size, and stacks to ``(N, C, H, W)`` uint8.

    Grey-scale output when every image is single-channel, else RGB (grey images are
    replicated to 3 channels). Target size: ``(img_size, img_size)`` when given, else the
    most common ``(H, W)`` (ties: the larger area). Resampling: PIL bilinear.
    """
    decoded = [read_image(p) for p in paths]
    colour = any(a.ndim == 3 for a in decoded)
    if img_size is not None:
        size = (img_size, img_size)
    else:
        counts = Counter(a.shape[:2] for a in decoded)
        size = max(counts, key=lambda s: (counts[s], s[0] * s[1], s))
        if len(counts) > 1:
            _logger.warning(
                "images have %d different sizes; resizing all to the most common one %s",
                len(counts),
                size,
            )
    out = np.empty((len(decoded), 3 if colour else 1, *size), np.uint8)
    for i, a in enumerate(decoded):
        out[i] = conform_image(a, in_chans=3 if colour else 1, size=size)
    return out


def _class_files(class_dir: Path, exts: tuple[str, ...]) -> list[Path]:
    files = sorted(
        p
        for p in class_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")
    )
    if not files:
        raise DataError(
            f"class folder {str(class_dir)!r} is empty: no image files with extensions {list(exts)}"
        )
    return files


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _task(num_classes: int, where: str) -> str:
    if num_classes < 2:
        raise DataError(f"{where}: found {num_classes} class(es); classification needs at least 2")
    return "binary" if num_classes == 2 else "multi-class"


def _assemble(
    *,
    name: str,
    source: str,
    paths: list[Path],
    labels: np.ndarray,
    split_of: np.ndarray | None,
    class_names: tuple[str, ...],
    img_size: int | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> MedicalDataset:
    task = _task(len(class_names), source)
    if split_of is None:
        idx = stratified_split(
            labels,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            class_names=class_names,
        )
    else:
        idx = {s: np.flatnonzero(split_of == s) for s in SPLITS}
    if len(idx["train"]) == 0:
        raise DataError(f"{source}: the train split is empty")
    for s in ("val", "test"):
        if len(idx[s]) == 0:
            _logger.warning("%s: the %s split is empty", source, s)
    images = _stack(paths, img_size)
    info = DatasetInfo(
        name=name,
        task=task,  # type: ignore[arg-type]
        num_classes=len(class_names),
        in_chans=int(images.shape[1]),
        spatial_dims=2,
        image_size=tuple(int(d) for d in images.shape[2:]),
        class_names=class_names,
        source=source,
    )
    splits = {s: Split(images[idx[s]], labels[idx[s]]) for s in SPLITS}
    for s in SPLITS:
        validate_split(splits[s], info, name=s, allow_empty=s != "train")
    return MedicalDataset(info, splits["train"], splits["val"], splits["test"])


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    img_size: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> MedicalDataset:
    """Loads ``root/<class>/*.{png,jpg,jpeg,bmp,tif}`` (and ``.dcm`` when pydicom is installed).

    Classes are the sorted sub-folder names (files may sit in nested folders below them).
    A pre-split layout ``root/{train,val,test}/<class>/...`` is used as given; otherwise a
    stratified split (:func:`stratified_split` with ``seed``) is made.

    Raises:
        DataError: missing root, empty class folder, unreadable image (named), fewer than
            two classes, or a class too small to stratify.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist or is not a directory")
    exts = _extensions()
    subdirs = _class_dirs(root)
    names = {p.name for p in subdirs}
    paths: list[Path] = []
    labels: list[int] = []
    split_of: list[str] | None = None
    if names and names <= set(SPLITS) and "train" in names:
        class_names = tuple(p.name for p in _class_dirs(root / "train"))
        split_of = []
        for s in SPLITS:
            if not (root / s).is_dir():
                continue
            for cdir in _class_dirs(root / s):
                if cdir.name not in class_names:
                    raise DataError(
                        f"{str(cdir)!r}: class {cdir.name!r} is not among the train classes "
                        f"{list(class_names)}"
                    )
                files = _class_files(cdir, exts)
                paths += files
                labels += [class_names.index(cdir.name)] * len(files)
                split_of += [s] * len(files)
    else:
        if not subdirs:
            raise DataError(
                f"image folder {str(root)!r} has no class sub-folders; expected root/<class>/*.png"
            )
        class_names = tuple(p.name for p in subdirs)
        for i, cdir in enumerate(subdirs):
            files = _class_files(cdir, exts)
            paths += files
            labels += [i] * len(files)
    return _assemble(
        name=root.name,
        source=str(root),
        paths=paths,
        labels=np.asarray(labels, np.int64),
        split_of=None if split_of is None else np.asarray(split_of),
        class_names=class_names,
        img_size=img_size,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )


def _class_index(raw: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Label strings → indices. All-integer labels ``0..K-1`` keep their values; other
    integers and strings map to their sorted order."""
    try:
        ints = [int(v) for v in raw]
    except ValueError:
        names = tuple(sorted(set(raw)))
        lookup = {n: i for i, n in enumerate(names)}
        return np.asarray([lookup[v] for v in raw], np.int64), names
    uniq = sorted(set(ints))
    if uniq == list(range(len(uniq))):
        return np.asarray(ints, np.int64), tuple(str(i) for i in uniq)
    lookup_i = {v: i for i, v in enumerate(uniq)}
    return np.asarray([lookup_i[v] for v in ints], np.int64), tuple(str(v) for v in uniq)


def load_csv_manifest(
    csv_path: str | os.PathLike[str],
    *,
    img_size: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> MedicalDataset:
    """Loads a CSV with a header ``path,label[,split]``; paths are relative to the CSV's folder.

    ``label`` is a class name or an integer (integers ``0..K-1`` are used as indices;
    anything else is indexed in sorted order). ``split`` (optional) is ``train``, ``val`` or
    ``test`` on every row; without it a stratified split is made. Single-label only.

    Raises:
        DataError: missing file or columns, an empty cell, an unknown split value, a missing
            or unreadable image (named with its row), or a class too small to stratify.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DataError(f"CSV manifest {str(csv_path)!r} does not exist")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "path" not in fields or "label" not in fields:
            raise DataError(
                f"{str(csv_path)!r}: the header must have columns 'path' and 'label' "
                f"(and optionally 'split'), got {reader.fieldnames}"
            )
        rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    if not rows:
        raise DataError(f"{str(csv_path)!r}: the manifest has no rows")
    has_split = "split" in fields
    paths: list[Path] = []
    raw_labels: list[str] = []
    split_of: list[str] = []
    for line, r in enumerate(rows, start=2):
        if not r.get("path") or not r.get("label"):
            raise DataError(f"{str(csv_path)!r} line {line}: empty 'path' or 'label' cell")
        p = Path(r["path"]).expanduser()
        p = p if p.is_absolute() else csv_path.parent / p
        if not p.is_file():
            raise DataError(f"{str(csv_path)!r} line {line}: image file {str(p)!r} does not exist")
        paths.append(p)
        raw_labels.append(r["label"])
        if has_split:
            s = r.get("split", "").lower()
            if s not in SPLITS:
                raise DataError(
                    f"{str(csv_path)!r} line {line}: split must be one of {list(SPLITS)}, "
                    f"got {r.get('split')!r}"
                )
            split_of.append(s)
    labels, class_names = _class_index(raw_labels)
    return _assemble(
        name=csv_path.stem,
        source=str(csv_path),
        paths=paths,
        labels=labels,
        split_of=np.asarray(split_of) if has_split else None,
        class_names=class_names,
        img_size=img_size,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
