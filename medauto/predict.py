"""Predict with a final model on new images: inputs from disk, a table of probabilities.

The service side of ``medauto predict`` (and usable from Python):

* :func:`open_model` opens a predictor folder (the search's final ensemble) or a single
  model file (as a one-member :class:`~medauto.ensemble.Predictor`), so both predict
  through the same code;
* :func:`load_inputs` reads image files (PNG/JPEG/BMP/TIFF through Pillow, as training
  decodes them), folders of them, CSV manifests (column ``path``, optional ``label``) or a
  split of an ``.npz`` file, and brings every image to the model's stored form with the
  preprocessing recorded in the model (:mod:`medauto.preprocessing`);
* :func:`predict_table` turns the predictor's scores into one row per image: its name, its
  label when known, one probability column per class and the predicted class name;
  :func:`write_csv` writes it atomically.

Example:
    >>> probability_columns(["malignant", "benign"])
    ['p_malignant', 'p_benign']
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING

from med_core.data import IMAGE_EXTENSIONS
from med_core.exceptions import DataError
from medauto.ensemble import PREDICTOR_FILE
from medauto.ensemble import Predictor
from medauto.exceptions import MedautoError
from medauto.model_file import atomic_write_bytes
from medauto.preprocessing import Preprocessing
from medauto.preprocessing import PreprocessingError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "PredictInputError",
    "PredictInputs",
    "load_inputs",
    "open_model",
    "predict_table",
    "probability_columns",
    "write_csv",
]


class PredictInputError(MedautoError, ValueError):
    """An input of ``medauto predict`` cannot be used: missing, corrupt or the wrong shape."""


@dataclass
class PredictInputs:
    """Images ready for a predictor: uint8 ``(N, C, *S)`` at its stored size.

    Attributes:
        pixels: The images.
        names: One name per image (its path, or ``<npz>:<split>[i]``).
        labels: Class indices where the input gave them (``None`` where not); empty when
            no input had labels.
    """

    pixels: np.ndarray
    names: list[str]
    labels: list[int | None] = field(default_factory=list)


def open_model(path: str | os.PathLike[str]) -> Predictor:
    """A predictor folder (or its ``predictor.json``), or a model file (``.pt``).

    Raises:
        PredictInputError: nothing at ``path``.
        PredictorError, ModelFileError: the folder or file is not a usable model.
    """
    p = Path(path)
    if p.is_dir() or p.name == PREDICTOR_FILE:
        return Predictor.load(p)
    if not p.is_file():
        raise PredictInputError(f"no model file or predictor folder at {str(p)!r}")
    return Predictor.from_model_file(p)


def _label_index(raw: str, class_names: Sequence[str], where: str) -> int:
    if raw in class_names:
        return list(class_names).index(raw)
    try:
        i = int(raw)
    except ValueError:
        i = -1
    if not 0 <= i < len(class_names):
        raise PredictInputError(f"{where}: label {raw!r} is neither a class name "
                                f"{list(class_names)} nor an index 0..{len(class_names) - 1}")
    return i


def _manifest(path: Path, class_names: Sequence[str]) -> list[tuple[Path, int | None]]:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            cols = {c.strip().lower(): c for c in reader.fieldnames or []}
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PredictInputError(f"cannot read CSV manifest {str(path)!r}: {e}") from None
    if "path" not in cols:
        raise PredictInputError(f"{str(path)!r}: a manifest needs a 'path' column (and "
                                f"optionally 'label'), got {reader.fieldnames}")
    out: list[tuple[Path, int | None]] = []
    for line, row in enumerate(rows, start=2):
        cell = (row.get(cols["path"]) or "").strip()
        if not cell:
            raise PredictInputError(f"{str(path)!r} line {line}: empty 'path' cell")
        file = Path(cell).expanduser()
        file = file if file.is_absolute() else path.parent / file
        raw = (row.get(cols["label"]) or "").strip() if "label" in cols else ""
        label = _label_index(raw, class_names, f"{str(path)!r} line {line}") if raw else None
        out.append((file, label))
    if not out:
        raise PredictInputError(f"{str(path)!r}: the manifest has no rows")
    return out


def _npz_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            if f"{split}_images" not in z:
                raise PredictInputError(f"{str(path)!r} has no '{split}_images' array; it has "
                                        f"{sorted(z.files)}")
            images = np.asarray(z[f"{split}_images"])
            labels = np.asarray(z[f"{split}_labels"]) if f"{split}_labels" in z else None
    except PredictInputError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile/np raise many types
        raise PredictInputError(f"cannot read {str(path)!r}: {type(e).__name__}: {e}") from None
    return images, labels


def load_inputs(
    sources: Sequence[str | os.PathLike[str]],
    preprocessing: Preprocessing,
    *,
    class_names: Sequence[str],
    split: str = "test",
) -> PredictInputs:
    """Reads every source and brings each image to ``preprocessing``'s stored form.

    Args:
        sources: Image files, folders (every image file below them, sorted), CSV manifests
            (``path`` relative to the CSV's folder, optional ``label``: a class name or
            index) and ``.npz`` files (MedMNIST layout: ``<split>_images``, ``<split>_labels``).
        preprocessing: The model's record (:attr:`Predictor.preprocessing`).
        class_names: The model's classes (to read manifest labels).
        split: The ``.npz`` split to read.

    Raises:
        PredictInputError: a missing, unreadable or corrupt input, an image whose shape the
            model cannot take, or a label that names no class (one line, naming the input).
    """
    import numpy as np

    from med_core.data import read_image

    pixels: list[np.ndarray] = []
    names: list[str] = []
    labels: list[int | None] = []

    def add(image: np.ndarray, name: str, label: int | None) -> None:
        try:
            pixels.append(preprocessing.conform(image, name=name))
        except PreprocessingError as e:
            raise PredictInputError(str(e)) from None
        names.append(name)
        labels.append(label)

    def add_file(file: Path, label: int | None) -> None:
        if not file.is_file():
            raise PredictInputError(f"no image file at {str(file)!r}")
        if preprocessing.spatial_dims == 3:
            raise PredictInputError(f"{str(file)!r}: a 3-D model takes volumes from an .npz "
                                    "split, not image files")
        try:
            add(read_image(file), str(file), label)
        except DataError as e:
            raise PredictInputError(str(e)) from None

    for raw in sources:
        src = Path(raw).expanduser()
        suffix = src.suffix.lower()
        if src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
            if not files:
                raise PredictInputError(f"folder {str(src)!r} has no image files "
                                        f"({', '.join(IMAGE_EXTENSIONS)})")
            for f in files:
                add_file(f, None)
        elif not src.is_file():
            raise PredictInputError(f"no input file or folder at {str(src)!r}")
        elif suffix == ".csv":
            for f, label in _manifest(src, class_names):
                add_file(f, label)
        elif suffix == ".npz":
            images, y = _npz_split(src, split)
            for i, image in enumerate(images):
                label = None if y is None or np.size(y[i]) != 1 else int(np.ravel(y[i])[0])
                add(image, f"{src}:{split}[{i}]", label)
        elif suffix in IMAGE_EXTENSIONS:
            add_file(src, None)
        else:
            raise PredictInputError(f"{str(src)!r}: not an image ({', '.join(IMAGE_EXTENSIONS)}), "
                                    "a folder, a .csv manifest or an .npz file")
    if not pixels:
        raise PredictInputError("no images to predict: every input was empty")
    known = labels if any(v is not None for v in labels) else []
    return PredictInputs(np.stack(pixels), names, known)


def probability_columns(class_names: Sequence[str]) -> list[str]:
    """The table's probability column of each class: ``p_<name>``."""
    return [f"p_{c}" for c in class_names]


def predict_table(predictor: Predictor, inputs: PredictInputs, scores: np.ndarray) -> pd.DataFrame:
    """One row per image: ``name``, ``label`` (when the inputs had labels), one
    probability column per class (:func:`probability_columns`) and ``predicted`` (the
    class name; multi-label: the names at ``p >= 0.5``, joined by ``;``).

    ``scores`` are ``predictor.scores(inputs.pixels)``. Binary probabilities include the
    predictor's fitted threshold (folded in as a logit shift), so ``predicted`` is the
    class whose probability is at least 0.5.
    """
    import numpy as np
    import pandas as pd

    names = predictor.class_names
    proba, decided = predictor.probabilities(scores), predictor.decide(scores)
    frame = pd.DataFrame({"name": inputs.names})
    if inputs.labels:
        frame["label"] = [names[v] if v is not None else "" for v in inputs.labels]
    for col, values in zip(probability_columns(names), np.asarray(proba).T, strict=True):
        frame[col] = values
    if predictor.task == "multi-label":
        frame["predicted"] = [";".join(n for n, d in zip(names, row, strict=True) if d)
                              for row in decided]
    else:
        frame["predicted"] = [names[int(i)] for i in decided]
    return frame


def write_csv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Writes ``frame`` as CSV (probabilities with 6 decimals), atomically."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.6f")
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue().encode())
    return out
