"""``load_dataset``: one entry point for MedMNIST names, ``.npz`` paths, folders and CSVs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from med_core.config import DataConfig
from med_core.data._folder import load_csv_manifest
from med_core.data._folder import load_image_folder
from med_core.data._info import MedicalDataset
from med_core.data._info import Split
from med_core.data._medmnist import default_data_dir
from med_core.data._medmnist import load_npz
from med_core.data._medmnist import medmnist_path

__all__ = ["load_dataset"]


def _looks_like_path(s: str) -> bool:
    return s.endswith((".npz", ".csv")) or os.sep in s or "/" in s or s.startswith("~")


def load_dataset(
    cfg_or_name: DataConfig | str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    split_seed: int = 0,
) -> MedicalDataset:
    """Loads a dataset into host memory as channels-first uint8 splits.

    ``DataConfig.dataset`` (or the string given) is read as:

    * an existing directory → image folder (:func:`load_image_folder`);
    * a path ending in ``.csv`` → CSV manifest (:func:`load_csv_manifest`);
    * a path ending in ``.npz`` (or containing a ``/``) → that ``.npz`` file;
    * anything else → a MedMNIST name, looked up as ``<data_dir>/<name>.npz``.

    ``data_dir`` is the argument if given, else ``DataConfig.data_dir``, else
    :func:`default_data_dir` (``$MEDAUTO_DATA_DIR``, else ``~/.medmnist``).

    From a :class:`DataConfig` it also uses ``img_size`` (folder/CSV decode size; ``.npz``
    data keeps its native size and the loader resizes on the device), ``val_fraction`` and
    ``test_fraction`` (user data without a split), and ``train_on_val`` (train becomes
    train + val; val is unchanged, so it still reports but is no longer held out).

    Args:
        cfg_or_name: A :class:`DataConfig`, a name or a path.
        data_dir: Directory of MedMNIST ``.npz`` files.
        download: Fetch a missing MedMNIST file with the URL/MD5 of ``medmnist.INFO``.
            Fails fast with :class:`DataError` when the host cannot be reached.
        split_seed: Seed of the stratified split of user data. It is deliberately not the
            run seed, so every trial of a search sees the same validation set.

    Returns:
        A :class:`MedicalDataset`.

    Raises:
        DataError: the data is missing, unreadable or inconsistent (see the loaders).

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> rng = np.random.default_rng(0)
        >>> arrays = {f"{s}_{k}": (rng.integers(0, 256, (4, 8, 8), dtype=np.uint8) if k == "images"
        ...           else np.array([[0], [1], [0], [1]], np.uint8))
        ...           for s in ("train", "val", "test") for k in ("images", "labels")}
        >>> np.savez(d / "toy.npz", **arrays)
        >>> ds = load_dataset("toy", data_dir=d)
        >>> ds.info.task, ds.train.images.shape, ds.train.labels.dtype
        ('binary', (4, 1, 8, 8), dtype('int64'))
    """
    if isinstance(cfg_or_name, DataConfig):
        cfg = cfg_or_name
    else:
        cfg = DataConfig(dataset=os.fspath(cfg_or_name))
    spec = cfg.dataset
    if data_dir is None:
        data_dir = cfg.data_dir
    p = Path(spec).expanduser()
    if p.is_dir():
        ds = load_image_folder(
            p,
            img_size=cfg.img_size,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=split_seed,
        )
    elif spec.lower().endswith(".csv"):
        ds = load_csv_manifest(
            p,
            img_size=cfg.img_size,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=split_seed,
        )
    elif _looks_like_path(spec) or p.is_file():
        ds = load_npz(p)
    else:
        root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        ds = load_npz(medmnist_path(spec, root), name=spec, data_dir=root, download=download)
    if cfg.train_on_val:
        ds = MedicalDataset(
            ds.info,
            Split(
                np.concatenate([ds.train.images, ds.val.images]),
                np.concatenate([ds.train.labels, ds.val.labels]),
            ),
            ds.val,
            ds.test,
        )
    return ds
