"""Datasets, splits, augmentation and batch loaders of med_core.

Datasets load into host memory as channels-first ``uint8`` arrays
(:func:`load_dataset` → :class:`MedicalDataset`); :func:`build_loader` turns one split
into a :class:`BatchLoader` that yields normalised float batches on the device, either
from one device-resident tensor (``mode="tensor"``, the fast path) or through a
``DataLoader``. Augmentation (:mod:`med_core.data.augment`) runs on batches on the
device. See ``docs/data.md``.
"""

from __future__ import annotations

from med_core.data._folder import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from med_core.data._folder import conform_image as conform_image
from med_core.data._folder import load_csv_manifest as load_csv_manifest
from med_core.data._folder import load_image_folder as load_image_folder
from med_core.data._folder import read_image as read_image
from med_core.data._info import SPLITS as SPLITS
from med_core.data._info import TASKS as TASKS
from med_core.data._info import DatasetInfo as DatasetInfo
from med_core.data._info import MedicalDataset as MedicalDataset
from med_core.data._info import Split as Split
from med_core.data._info import TaskType as TaskType
from med_core.data._load import load_dataset as load_dataset
from med_core.data._loaders import BatchLoader as BatchLoader
from med_core.data._loaders import build_loader as build_loader
from med_core.data._loaders import epoch_indices as epoch_indices
from med_core.data._loaders import is_binary_mask_data as is_binary_mask_data
from med_core.data._medmnist import DATA_DIR_ENV as DATA_DIR_ENV
from med_core.data._medmnist import default_data_dir as default_data_dir
from med_core.data._medmnist import download_medmnist as download_medmnist
from med_core.data._medmnist import medmnist_path as medmnist_path
from med_core.data._splits import cross_validation_folds as cross_validation_folds
from med_core.data._splits import stratified_split as stratified_split
from med_core.data.augment import AugmentSpec as AugmentSpec
from med_core.data.augment import BatchAugment as BatchAugment
from med_core.data.augment import build_augment as build_augment
from med_core.data.augment import mix_batch as mix_batch
from med_core.data.augment import resolve_policy as resolve_policy

__all__ = [
    "DATA_DIR_ENV",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "TASKS",
    "AugmentSpec",
    "BatchAugment",
    "BatchLoader",
    "DatasetInfo",
    "MedicalDataset",
    "Split",
    "TaskType",
    "build_augment",
    "build_loader",
    "conform_image",
    "cross_validation_folds",
    "default_data_dir",
    "download_medmnist",
    "epoch_indices",
    "is_binary_mask_data",
    "load_csv_manifest",
    "load_dataset",
    "load_image_folder",
    "medmnist_path",
    "mix_batch",
    "read_image",
    "resolve_policy",
    "stratified_split",
]
