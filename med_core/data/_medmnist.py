"""MedMNIST ``.npz`` files (and any ``.npz`` with the same six arrays)."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import socket
import zipfile
from pathlib import Path

import numpy as np

from med_core.data._info import SPLITS
from med_core.data._info import DatasetInfo
from med_core.data._info import MedicalDataset
from med_core.data._info import Split
from med_core.data._validate import validate_class_ids
from med_core.data._validate import validate_split
from med_core.exceptions import DataError

__all__ = ["DATA_DIR_ENV", "default_data_dir", "download_medmnist", "load_npz", "medmnist_path",
           "parse_medmnist_name"]

_logger = logging.getLogger(__name__)

DATA_DIR_ENV = "MEDAUTO_DATA_DIR"
_MEDMNIST_TASKS = {
    "binary-class": "binary",
    "multi-class": "multi-class",
    "multi-label, binary-class": "multi-label",
    "ordinal-regression": "ordinal-regression",
}
_ARRAYS = tuple(f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels"))
_NAME_RE = re.compile(r"^(?P<base>[a-z0-9]+?)(?:_(?P<size>\d+))?$")


def default_data_dir() -> Path:
    """The MedMNIST data directory: ``$MEDAUTO_DATA_DIR``, else ``~/.medmnist``.

    This is the only place med_core reads the environment; :func:`load_dataset` calls it
    only when neither its ``data_dir`` argument nor ``DataConfig.data_dir`` is set.

    Example:
        >>> isinstance(default_data_dir(), Path)
        True
    """
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path("~/.medmnist").expanduser()


@functools.cache
def _info_table() -> dict[str, dict]:
    """``medmnist.INFO``, read from ``medmnist/info.py`` alone when possible.

    Importing the ``medmnist`` package pulls in its dataset classes and evaluator (pandas,
    scikit-learn, ~1.5 s); ``info.py`` needs only the standard library, so it is loaded
    by itself. Without medmnist installed the table is empty: every file is then read
    with the inference rules of :func:`_infer_task` (logged once at WARNING).
    """
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        _logger.warning(
            "medmnist is not installed: MedMNIST task types and class names are inferred "
            "from the labels (ordinal-regression subsets load as multi-class)"
        )
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "info.py"
    info_spec = importlib.util.spec_from_file_location("_med_core_medmnist_info", path)
    if info_spec is None or info_spec.loader is None:  # pragma: no cover - odd installs
        from medmnist import INFO

        return INFO  # type: ignore[no-any-return]
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)
    return module.INFO  # type: ignore[no-any-return]


def parse_medmnist_name(name: str) -> tuple[str, int] | None:
    """``"pneumoniamnist_64"`` → ``("pneumoniamnist", 64)``; ``None`` if not a MedMNIST subset.

    Example:
        >>> parse_medmnist_name("adrenalmnist3d_64"), parse_medmnist_name("breastmnist")
        (('adrenalmnist3d', 64), ('breastmnist', 28))
        >>> parse_medmnist_name("mydata") is None
        True
    """
    m = _NAME_RE.match(name.lower())
    if m is None or m["base"] not in _info_table():
        return None
    return m["base"], int(m["size"] or 28)


def medmnist_path(name: str, data_dir: str | os.PathLike[str]) -> Path:
    """Where the file of MedMNIST subset ``name`` lives: ``data_dir / f"{name}.npz"``."""
    return Path(data_dir).expanduser() / f"{name}.npz"


def _missing_file_error(path: Path, name: str | None, data_dir: Path | None) -> DataError:
    lines = [f"dataset file {str(path)!r} does not exist."]
    if name is not None and data_dir is not None:
        lines.append(
            f"MedMNIST name {name!r} is looked up as <data_dir>/{name}.npz with "
            f"data_dir={str(data_dir)!r} (set by the data_dir argument, DataConfig.data_dir "
            f"or the {DATA_DIR_ENV} environment variable, else ~/.medmnist)."
        )
        if parse_medmnist_name(name) is None:
            import difflib

            known = [k for k in _info_table()] + [
                f"{k}_{s}" for k in _info_table() for s in (64, 128, 224)
            ]
            close = difflib.get_close_matches(name.lower(), known, n=3)
            lines.append(
                f"{name!r} is not a MedMNIST subset"
                + (f"; did you mean {close}?" if close else ".")
            )
    lines.append(
        "Downloading is not possible offline: copy the .npz file there (or pass its path), "
        "or pass --download (download=True) on a machine with internet access."
    )
    return DataError(" ".join(lines))


def download_medmnist(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, timeout_s: float = 5.0
) -> Path:
    """The file of MedMNIST subset ``name`` in ``data_dir``, fetched first if missing.

    The URL and MD5 come from the ``medmnist`` package's ``INFO`` table; the file is
    written by ``torchvision``'s checked download. A file already there is used as it is
    (nothing is fetched).

    Args:
        name: A MedMNIST subset (``breastmnist``, ``pneumoniamnist_64``, ...).
        data_dir: The folder (default :func:`default_data_dir`).
        timeout_s: Seconds to wait for the host before giving up.

    Raises:
        DataError: ``name`` is not a MedMNIST subset, ``medmnist`` is not installed, the
            host cannot be reached (one line: offline) or the download fails.
    """
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    path = medmnist_path(name, root)
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        _download(name, root, timeout_s=timeout_s)
    return path


def _download(name: str, data_dir: Path, *, timeout_s: float = 5.0) -> None:
    """Fetches ``name``.npz with the URL and MD5 from ``medmnist.INFO``; fails fast offline."""
    if not _info_table():
        raise DataError(
            f"cannot download {name!r}: the medmnist package is not installed "
            "(pip install medmnist), and its INFO table holds the URLs"
        )
    parsed = parse_medmnist_name(name)
    if parsed is None:
        raise DataError(f"cannot download {name!r}: not a MedMNIST subset name")
    base, size = parsed
    entry = _info_table()[base]
    suffix = "" if size == 28 else f"_{size}"
    url, md5 = entry.get(f"url{suffix}"), entry.get(f"MD5{suffix}")
    if url is None:
        raise DataError(f"cannot download {name!r}: MedMNIST has no size {size} for {base!r}")
    host = url.split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as e:
        raise DataError(
            f"cannot download {name!r} from {host}: no network connection ({e}). "
            f"Copy {name}.npz into {str(data_dir)!r} instead."
        ) from e
    from torchvision.datasets.utils import download_url

    _logger.info("downloading %s into %s", url, data_dir)
    try:
        download_url(url, str(data_dir), filename=f"{name}.npz", md5=md5)
    except Exception as e:  # network errors come in many types; all mean the same here
        raise DataError(f"downloading {name!r} from {url} failed: {e}") from e


def _images_channels_first(
    images: np.ndarray, *, n_channels: int | None, is_3d: bool | None, where: str
) -> np.ndarray:
    """MedMNIST layouts → channels first.

    ``(N, H, W)`` → ``(N, 1, H, W)``; ``(N, H, W, C)`` → ``(N, C, H, W)``; ``(N, D, H, W)``
    → ``(N, 1, D, H, W)``; ``(N, D, H, W, C)`` → ``(N, C, D, H, W)``. A 4-D array is read
    as channels-last 2-D when the subset is known to be 2-D, or (unknown subsets) when its
    last axis has 1, 3 or 4 entries and is smaller than the others; otherwise as a volume.
    """
    if images.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8, got dtype {images.dtype}")
    nd = images.ndim
    if nd == 3:
        return images[:, None]
    if nd == 4:
        last = images.shape[-1]
        if is_3d is None:
            is_3d = not (last in (1, 3, 4) and last < min(images.shape[1:3]))
        if is_3d:
            if n_channels not in (None, 1):
                raise DataError(f"{where}: 3-D images of shape {images.shape} have no channel axis")
            return images[:, None]
        return np.ascontiguousarray(np.moveaxis(images, -1, 1))
    if nd == 5 and images.shape[-1] in (1, 3):
        return np.ascontiguousarray(np.moveaxis(images, -1, 1))
    raise DataError(
        f"{where}: images must have shape (N, H, W), (N, H, W, C), (N, D, H, W) or "
        f"(N, D, H, W, C), got {tuple(images.shape)}"
    )


def _infer_task(labels: list[np.ndarray], where: str) -> tuple[str, int]:
    """Task and class count of an ``.npz`` that ``medmnist.INFO`` does not describe.

    Rule: labels ``(N, L)`` with ``L > 1`` whose values are all 0/1 are multi-label with
    ``L`` labels; ``(N,)`` or ``(N, 1)`` integer labels with ``K = max + 1`` classes are
    binary when ``K <= 2``, else multi-class (ordinal regression cannot be told apart
    from multi-class by the labels alone).
    """
    first = labels[0]
    if first.ndim == 2 and first.shape[1] > 1:
        if not all(np.isin(lab, (0, 1)).all() for lab in labels):
            raise DataError(
                f"{where}: labels of shape (N, {first.shape[1]}) must be 0/1 (multi-label)"
            )
        return "multi-label", int(first.shape[1])
    if not all(np.issubdtype(lab.dtype, np.integer) for lab in labels):
        floats = np.concatenate([lab.ravel() for lab in labels])
        if not np.array_equal(floats, np.round(floats)):
            raise DataError(f"{where}: single-label labels must be integers, got {first.dtype}")
    k = validate_class_ids(labels, where)
    return ("binary" if k <= 2 else "multi-class"), max(k, 2)


def _labels(raw: np.ndarray, task: str, n_classes: int, where: str) -> np.ndarray:
    if task == "multi-label":
        if raw.ndim != 2 or raw.shape[1] != n_classes:
            raise DataError(
                f"{where}: multi-label labels must have shape (N, {n_classes}), got {raw.shape}"
            )
        return raw.astype(np.float32)
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise DataError(f"{where}: labels must have shape (N,) or (N, 1), got {tuple(raw.shape)}")
    if raw.dtype.kind == "f" and raw.size and not np.array_equal(raw, np.round(raw)):
        raise DataError(f"{where}: single-label labels must be integers, got {raw.dtype}")
    if raw.dtype.kind not in "iuf" and raw.size:
        raise DataError(f"{where}: labels must be numeric, got dtype {raw.dtype}")
    return raw.astype(np.int64)


def load_npz(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    data_dir: Path | None = None,
    download: bool = False,
) -> MedicalDataset:
    """Loads a MedMNIST-style ``.npz`` with ``{train,val,test}_{images,labels}`` arrays.

    The subset (task, class names, channels, 2-D/3-D) comes from ``medmnist.INFO`` when the
    file stem is a MedMNIST name (``breastmnist``, ``pneumoniamnist_64``, ...); otherwise it
    is inferred from the arrays (see :func:`_infer_task`).

    Raises:
        DataError: missing or unreadable file, missing arrays, wrong dtypes or shapes,
            labels out of range, image/label counts that differ.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        if download and name is not None and data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            download_medmnist(name, data_dir)
        if not path.is_file():
            raise _missing_file_error(path, name, data_dir)
    stem = path.stem
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [a for a in _ARRAYS if a not in z.files]
            if missing:
                raise DataError(
                    f"{str(path)!r}: missing array(s) {missing}; a dataset .npz must hold "
                    f"{list(_ARRAYS)} (found {sorted(z.files)})"
                )
            arrays = {a: z[a] for a in _ARRAYS}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{str(path)!r}: not a readable .npz file ({e})") from e

    parsed = parse_medmnist_name(stem)
    where = repr(str(path))
    if parsed is not None:
        base, size = parsed
        entry = _info_table()[base]
        task = _MEDMNIST_TASKS[entry["task"]]
        class_names = tuple(entry["label"][str(i)] for i in range(len(entry["label"])))
        n_channels: int | None = int(entry["n_channels"])
        is_3d: bool | None = base.endswith("3d")
    else:
        task, k = _infer_task([arrays[f"{s}_labels"] for s in SPLITS], where)
        class_names = tuple(str(i) for i in range(k))
        n_channels, is_3d = None, None
        _logger.info("%s: not a MedMNIST name; inferred task %r with %d classes", path, task, k)

    splits: dict[str, Split] = {}
    for s in SPLITS:
        w = f"{where} [{s}]"
        images = _images_channels_first(
            arrays[f"{s}_images"], n_channels=n_channels, is_3d=is_3d, where=w
        )
        splits[s] = Split(images, _labels(arrays[f"{s}_labels"], task, len(class_names), w))
    train_images = splits["train"].images
    info = DatasetInfo(
        name=stem,
        task=task,  # type: ignore[arg-type]
        num_classes=len(class_names),
        in_chans=int(train_images.shape[1]),
        spatial_dims=train_images.ndim - 2,
        image_size=tuple(int(d) for d in train_images.shape[2:]),
        class_names=class_names,
        source=str(path),
    )
    if parsed is not None:
        if n_channels is not None and info.in_chans != n_channels:
            raise DataError(
                f"{where}: {base} has {n_channels} channel(s) but the images have "
                f"{info.in_chans} (shape {tuple(arrays['train_images'].shape)})"
            )
        if any(d != parsed[1] for d in info.image_size):
            raise DataError(
                f"{where}: the name says size {parsed[1]} but the images are {info.image_size}"
            )
    for s in SPLITS:
        validate_split(splits[s], info, name=s, allow_empty=False)
    return MedicalDataset(info, splits["train"], splits["val"], splits["test"])
