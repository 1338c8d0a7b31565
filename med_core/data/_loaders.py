"""Batch loaders: the tensor-resident fast path and the DataLoader path, behind one API.

Both loaders yield ``(x, y)`` on ``device``: ``x`` float32 normalised as
``(x / 255 - 0.5) / 0.5`` (range [-1, 1]), ``y`` int64 ``(B,)`` or float32 ``(B, L)``.
For the same split, seed, epoch, rank and device they yield *identical* batches (order,
augmentation and all), so a run can switch modes without changing its results.

Order and sharding (see :func:`epoch_indices`): the epoch's permutation is computed on
the CPU from ``(seed, epoch)`` (a ``torch.randperm`` with its own CPU generator), so it is
the same on every rank and on every device type, and copied to the device once per
epoch. Training shards pad the permutation by wrapping around to a multiple of
``world_size`` and take ``perm[rank::world_size]`` (equal sizes on every rank); evaluation
shards take ``arange(N)[rank::world_size]`` without padding (ranks may differ by one
sample). Augmentation draws from a device generator seeded from ``(seed, epoch, rank)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Protocol
from typing import runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from med_core.config import AugmentConfig
from med_core.data._info import Split
from med_core.data.augment import AugmentParams
from med_core.data.augment import AugmentSpec
from med_core.data.augment import BatchAugment
from med_core.data.augment import build_augment
from med_core.exceptions import DataError

__all__ = [
    "CPU_TENSOR_BUDGET_BYTES",
    "BatchLoader",
    "DataLoaderLoader",
    "TensorLoader",
    "build_loader",
    "epoch_indices",
    "is_binary_mask_data",
]

_logger = logging.getLogger(__name__)

CPU_TENSOR_BUDGET_BYTES = 2 * 1024**3
"""``mode="auto"`` keeps a split resident on a non-CUDA device up to this many bytes."""
CUDA_FREE_MEMORY_SHARE = 0.25
"""``mode="auto"`` keeps a split resident on CUDA up to this share of the free memory."""
_BINARY_CHECK_SAMPLES = 4096


@runtime_checkable
class BatchLoader(Protocol):
    """What the trainer iterates: both loader modes implement it."""

    mode: str
    batch_size: int
    train: bool

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    @property
    def num_samples(self) -> int: ...

    def indices(self) -> Tensor: ...


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def epoch_indices(
    n: int, *, seed: int, epoch: int, train: bool, rank: int = 0, world_size: int = 1
) -> Tensor:
    """This rank's sample indices for one epoch (CPU int64).

    Train: ``randperm(n)`` from a CPU generator seeded with ``(seed, epoch)``, padded by
    wrapping around to ``ceil(n / world_size) * world_size``, then ``[rank::world_size]``.
    Eval: ``arange(n)[rank::world_size]``.

    Example:
        >>> [len(epoch_indices(10, seed=0, epoch=0, train=True, rank=r, world_size=4))
        ...  for r in range(4)]
        [3, 3, 3, 3]
        >>> epoch_indices(5, seed=0, epoch=0, train=False, rank=1, world_size=2).tolist()
        [1, 3]
    """
    if not train:
        return torch.arange(n)[rank::world_size]
    g = torch.Generator().manual_seed(_seed(seed, epoch))
    perm = torch.randperm(n, generator=g)
    total = math.ceil(n / world_size) * world_size
    if total > n:
        reps = math.ceil(total / n)
        perm = perm.repeat(reps)[:total]
    return perm[rank::world_size]


def is_binary_mask_data(images: np.ndarray) -> bool:
    """Whether the first 4096 samples hold only the values 0 and 255 (binary shape masks)."""
    head = images[:_BINARY_CHECK_SAMPLES]
    return bool(head.size) and bool(((head == 0) | (head == 255)).all())


def _target_size(
    img_size: int | tuple[int, ...] | None, native: tuple[int, ...]
) -> tuple[int, ...]:
    if img_size is None:
        return native
    if isinstance(img_size, int):
        return (img_size,) * len(native)
    if len(img_size) != len(native):
        raise ValueError(f"img_size {img_size!r} does not match the data's {len(native)}-D size")
    return tuple(int(s) for s in img_size)


def resize_uint8(x: Tensor, size: tuple[int, ...], *, nearest: bool) -> Tensor:
    """Resizes a uint8 batch ``(B, C, *S)``; 2-D with torchvision (antialiased bilinear),
    3-D with trilinear interpolation; ``nearest`` for binary masks."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if len(size) == 2:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        mode = InterpolationMode.NEAREST_EXACT if nearest else InterpolationMode.BILINEAR
        return TF.resize(x, list(size), interpolation=mode, antialias=not nearest)
    mode = "nearest-exact" if nearest else "trilinear"
    kw = {} if nearest else {"align_corners": False}
    out = F.interpolate(x.float(), size=size, mode=mode, **kw)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FREE_MEMORY_SHARE)
    return CPU_TENSOR_BUDGET_BYTES


class _LoaderBase:
    """Shared order, sharding, augmentation and normalisation of both modes."""

    mode = "base"

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        train: bool,
        device: torch.device,
        augment: BatchAugment | None,
        seed: int,
        rank: int,
        world_size: int,
        drop_last: bool,
        size: tuple[int, ...],
        nearest_resize: bool,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.train = train
        self.device = device
        self.augment = augment if (augment is not None and not augment.is_identity) else None
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.size = size
        self.nearest_resize = nearest_resize
        self.dataset_size = len(split)
        self.epoch = 0
        self._indices: Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order and augmentation the next iteration uses."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)
        self._indices = None

    def indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, in yield order (CPU int64)."""
        if self._indices is None:
            self._indices = epoch_indices(
                self.dataset_size,
                seed=self.seed,
                epoch=self.epoch,
                train=self.train,
                rank=self.rank,
                world_size=self.world_size,
            )
        return self._indices

    def _bounds(self) -> list[tuple[int, int]]:
        n = len(self.indices())
        full = n // self.batch_size
        bounds = [(i * self.batch_size, (i + 1) * self.batch_size) for i in range(full)]
        if n % self.batch_size and not (self.drop_last and full > 0):
            bounds.append((full * self.batch_size, n))
        return bounds

    def __len__(self) -> int:
        return len(self._bounds())

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch (after padding and ``drop_last``)."""
        return sum(e - s for s, e in self._bounds())

    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(_seed(self.seed, self.epoch, 1 + self.rank))
        return g

    def _epoch_augment(self) -> tuple[torch.Generator, AugmentParams] | None:
        """The epoch's generator and the parameters of every sample this rank yields.

        Drawing them for the whole epoch at once (one batched computation instead of one
        per batch) keeps the per-batch work at the resampling and a few pointwise kernels.
        """
        if self.augment is None:
            return None
        g = self._generator()
        params = self.augment.sample(self.num_samples, g, spatial_size=self.size,
                                     device=self.device)  # fmt: skip
        return g, params

    def _finish(self, xb: Tensor, aug: tuple[torch.Generator, AugmentParams] | None,
                start: int) -> Tensor:  # fmt: skip
        """uint8 batch on the device → resized, augmented, normalised float32."""
        if tuple(xb.shape[2:]) != self.size:
            xb = resize_uint8(xb, self.size, nearest=self.nearest_resize)
        x = xb.float().div_(255.0)
        if self.augment is not None and aug is not None:
            g, params = aug
            x = self.augment.apply(x, params[start : start + x.shape[0]], g)
        return x.mul_(2.0).sub_(1.0)  # == (x - 0.5) / 0.5 bit for bit

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.dataset_size}, batch_size={self.batch_size}, "
            f"train={self.train}, device={self.device}, size={self.size}, "
            f"rank={self.rank}/{self.world_size}, augment={self.augment})"
        )


class TensorLoader(_LoaderBase):
    """The whole split as one uint8 tensor on the device; batches are index selections.

    Resizing (``img_size``) happens once at construction, in chunks, when the resized
    split fits ``memory_budget``; otherwise each batch is resized after indexing.
    """

    mode = "tensor"

    def __init__(self, split: Split, *, memory_budget: int, **kw: object) -> None:
        super().__init__(split, **kw)  # type: ignore[arg-type]
        images = torch.from_numpy(np.ascontiguousarray(split.images)).to(self.device)
        resized_bytes = len(split) * split.images.shape[1] * math.prod(self.size)
        if tuple(images.shape[2:]) != self.size and resized_bytes <= memory_budget:
            chunk = max(1, (64 * 1024**2) // max(1, resized_bytes // max(1, len(split))))
            images = torch.cat(
                [
                    resize_uint8(images[i : i + chunk], self.size, nearest=self.nearest_resize)
                    for i in range(0, len(split), chunk)
                ]
            )
        elif tuple(images.shape[2:]) != self.size:
            _logger.info("resized split exceeds the memory budget; resizing per batch")
        self.images = images
        self.labels = torch.from_numpy(np.ascontiguousarray(split.labels)).to(self.device)
        self._dev_indices: Tensor | None = None
        self._dev_epoch = -1

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self._dev_indices is None or self._dev_epoch != self.epoch:
            self._dev_indices = self.indices().to(self.device, non_blocking=True)
            self._dev_epoch = self.epoch
        idx = self._dev_indices
        aug = self._epoch_augment()
        for s, e in self._bounds():
            sel = idx[s:e]
            xb = self.images.index_select(0, sel)
            yield self._finish(xb, aug, s), self.labels.index_select(0, sel)


class _SplitDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Per-sample access to a split (works on ``np.memmap`` arrays); resizes per image."""

    def __init__(self, split: Split, size: tuple[int, ...], nearest: bool) -> None:
        self.split = split
        self.size = size
        self.nearest = nearest

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img = torch.from_numpy(np.ascontiguousarray(self.split.images[i]))
        if tuple(img.shape[1:]) != self.size:
            img = resize_uint8(img[None], self.size, nearest=self.nearest)[0]
        return img, torch.from_numpy(np.asarray(self.split.labels[i]))


class _EpochBatchSampler(torch.utils.data.Sampler):  # type: ignore[type-arg]
    def __init__(self, loader: _LoaderBase) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[list[int]]:
        idx = self.loader.indices().tolist()
        for s, e in self.loader._bounds():
            yield idx[s:e]

    def __len__(self) -> int:
        return len(self.loader)


class DataLoaderLoader(_LoaderBase):
    """A ``torch.utils.data.DataLoader`` over per-sample reads; augments per batch on the device."""

    mode = "dataloader"

    def __init__(self, split: Split, *, num_workers: int, **kw: object) -> None:
        super().__init__(split, **kw)  # type: ignore[arg-type]
        self.num_workers = num_workers
        self._loader = torch.utils.data.DataLoader(
            _SplitDataset(split, self.size, self.nearest_resize),
            batch_sampler=_EpochBatchSampler(self),
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        aug = self._epoch_augment()
        start = 0
        for xb, yb in self._loader:
            xb = xb.to(self.device, non_blocking=True)
            yield self._finish(xb, aug, start), yb.to(self.device, non_blocking=True)
            start += xb.shape[0]


def build_loader(
    split: Split,
    *,
    batch_size: int,
    train: bool,
    device: str | torch.device = "cpu",
    augment: AugmentConfig | AugmentSpec | BatchAugment | str | None = None,
    seed: int = 0,
    mode: str = "auto",
    img_size: int | tuple[int, ...] | None = None,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    spatial_dims: int | None = None,
    binary: bool | None = None,
    drop_last: bool | None = None,
    memory_budget: int | None = None,
) -> BatchLoader:
    """A loader over one split that yields normalised batches on ``device``.

    Args:
        split: The split (uint8 channels-first images).
        batch_size: Samples per batch *per process*.
        train: Shuffle (by seed and epoch), pad DDP shards, drop the last partial batch
            (when at least one full batch exists) and augment; otherwise keep order, shard
            without padding, keep the last batch and never augment.
        device: Where batches (and, in tensor mode, the whole split) live.
        augment: An :class:`AugmentConfig`, policy name, :class:`AugmentSpec` or a built
            :class:`BatchAugment`; ``None`` = no augmentation. Mixup/CutMix are not
            applied here: call :func:`mix_batch` in the training step.
        seed: Seed of the order and the augmentation (mixed with epoch and rank).
        mode: ``"tensor"``, ``"dataloader"`` or ``"auto"``: tensor when the split's
            (resized) image bytes fit ``memory_budget``.
        img_size: Side length (or full spatial shape) to resize to; ``None`` = native.
        rank: This process's rank.
        world_size: Number of processes.
        num_workers: DataLoader workers (dataloader mode only).
        spatial_dims: 2 or 3; ``None`` infers it from the images (a mismatch raises).
        binary: Binary mask data (nearest resizing, no intensity augmentation); ``None``
            detects it (:func:`is_binary_mask_data`).
        drop_last: Override the train/eval default.
        memory_budget: Bytes for ``mode="auto"``; default 25 % of free CUDA memory on
            CUDA, 2 GiB on other devices.

    Returns:
        A :class:`BatchLoader` (``.mode`` tells which one).

    Raises:
        ValueError: invalid arguments. DataError: the split does not match ``spatial_dims``.

    Example:
        >>> import numpy as np
        >>> split = Split(np.zeros((10, 1, 8, 8), np.uint8), np.arange(10) % 2)
        >>> loader = build_loader(split, batch_size=4, train=True, device="cpu")
        >>> loader.mode, len(loader), [tuple(t.shape) for t in next(iter(loader))]
        ('tensor', 2, [(4, 1, 8, 8), (4,)])
    """
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be an integer > 0, got {batch_size!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got {rank=}, {world_size=}")
    if mode not in ("auto", "tensor", "dataloader"):
        raise ValueError(f"mode must be 'auto', 'tensor' or 'dataloader', got {mode!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")
    if split.images.dtype != np.uint8 or split.images.ndim not in (4, 5):
        raise DataError(
            f"split images must be uint8 (N, C, H, W) or (N, C, D, H, W), got "
            f"{split.images.dtype} {tuple(split.images.shape)}"
        )
    dims = split.images.ndim - 2
    if spatial_dims is not None and spatial_dims != dims:
        raise DataError(
            f"spatial_dims={spatial_dims} but the images have shape {tuple(split.images.shape)} "
            f"({dims}-D)"
        )
    dev = torch.device(device)
    size = _target_size(img_size, tuple(int(s) for s in split.images.shape[2:]))
    if binary is None:
        binary = is_binary_mask_data(split.images)
    aug: BatchAugment | None = None
    if train and augment is not None:
        aug = (
            augment
            if isinstance(augment, BatchAugment)
            else build_augment(augment, spatial_dims=dims, binary=binary)
        )
        if aug.spatial_dims != dims:
            raise DataError(f"augmentation is {aug.spatial_dims}-D but the data is {dims}-D")
    budget = _memory_budget(dev) if memory_budget is None else int(memory_budget)
    nbytes = len(split) * split.images.shape[1] * math.prod(size)
    if mode == "auto":
        mode = "tensor" if nbytes <= budget else "dataloader"
        _logger.debug("loader mode auto → %s (%d bytes, budget %d)", mode, nbytes, budget)
    common = dict(
        batch_size=batch_size,
        train=train,
        device=dev,
        augment=aug,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=train if drop_last is None else drop_last,
        size=size,
        nearest_resize=binary,
    )
    if mode == "tensor":
        return TensorLoader(split, memory_budget=budget, **common)  # type: ignore[arg-type]
    return DataLoaderLoader(split, num_workers=num_workers, **common)  # type: ignore[arg-type]
