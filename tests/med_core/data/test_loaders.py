"""Batch loaders: tensor vs DataLoader equivalence, order, epochs, DDP shards, auto mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from med_core.config import AugmentConfig
from med_core.data import Split
from med_core.data import build_loader
from med_core.data import epoch_indices
from med_core.exceptions import DataError


def _collect(loader):
    xs, ys = zip(*list(loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def _normalised(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).float() / 255 - 0.5) / 0.5


@pytest.mark.parametrize("augment", [None, "light", "trivialaugment"])
def test_tensor_and_dataloader_modes_yield_identical_batches(breast, augment):
    kw = dict(batch_size=128, train=True, device="cpu", seed=3, augment=augment)
    t = build_loader(breast.train, mode="tensor", **kw)
    d = build_loader(breast.train, mode="dataloader", **kw)
    assert (t.mode, d.mode) == ("tensor", "dataloader")
    assert len(t) == len(d) == 546 // 128
    for (xt, yt), (xd, yd) in zip(t, d, strict=True):
        assert xt.dtype == torch.float32 and yt.dtype == torch.int64
        assert torch.equal(xt, xd) and torch.equal(yt, yd)


def test_batches_are_the_indexed_normalised_images(breast):
    loader = build_loader(breast.train, batch_size=100, train=True, seed=0)
    x, y = _collect(loader)
    idx = loader.indices()[: loader.num_samples].numpy()
    assert torch.equal(x, _normalised(breast.train.images[idx]))
    assert torch.equal(y, torch.from_numpy(breast.train.labels[idx]))
    assert x.min() >= -1 and x.max() <= 1
    assert loader.num_samples == 500 and len(loader) == 5


def test_eval_order_complete_and_unshuffled(breast):
    for mode in ("tensor", "dataloader"):
        loader = build_loader(
            breast.val, batch_size=32, train=False, mode=mode, augment="heavy"
        )  # eval never augments
        x, y = _collect(loader)
        assert len(loader) == math.ceil(78 / 32) and loader.num_samples == 78
        assert torch.equal(x, _normalised(breast.val.images))
        assert torch.equal(y, torch.from_numpy(breast.val.labels))


def test_epoch_reshuffles_and_same_epoch_repeats(breast):
    loader = build_loader(breast.train, batch_size=64, train=True, seed=0, augment="light")
    loader.set_epoch(0)
    x0, y0 = _collect(loader)
    x0b, _ = _collect(loader)
    loader.set_epoch(1)
    x1, y1 = _collect(loader)
    assert torch.equal(x0, x0b)  # same (seed, epoch) → same order and augmentation
    assert not torch.equal(y0, y1) and not torch.equal(x0, x1)
    other = build_loader(breast.train, batch_size=64, train=True, seed=1, augment="light")
    assert not torch.equal(_collect(other)[1], y0)
    fresh = build_loader(breast.train, batch_size=64, train=True, seed=0, augment="light")
    fresh.set_epoch(1)
    assert torch.equal(_collect(fresh)[0], x1)


def test_train_drops_last_partial_batch_but_never_everything():
    split = Split(np.zeros((10, 1, 4, 4), np.uint8), np.arange(10) % 2)
    assert len(build_loader(split, batch_size=4, train=True)) == 2
    tiny = build_loader(split, batch_size=64, train=True)
    assert len(tiny) == 1 and tiny.num_samples == 10
    assert len(build_loader(split, batch_size=4, train=False)) == 3


@pytest.mark.parametrize(("n", "world"), [(546, 4), (10, 3), (7, 8)])
def test_ddp_train_shards_padded_equal_and_cover(n, world):
    shards = [
        epoch_indices(n, seed=5, epoch=2, train=True, rank=r, world_size=world)
        for r in range(world)
    ]
    size = math.ceil(n / world)
    assert all(len(s) == size for s in shards)
    merged = torch.stack(shards, 1).reshape(-1)  # undo [rank::world] → the padded permutation
    perm = merged[:n]
    assert sorted(perm.tolist()) == list(range(n))  # every sample exactly once before padding
    pad = merged[n:]
    assert len(pad) == size * world - n and set(pad.tolist()) <= set(range(n))
    counts = np.bincount(merged.numpy(), minlength=n)
    assert counts.min() >= 1 and counts.sum() == size * world


@pytest.mark.parametrize(("n", "world"), [(78, 4), (5, 8)])
def test_ddp_eval_shards_cover_exactly_once(n, world):
    shards = [
        epoch_indices(n, seed=0, epoch=0, train=False, rank=r, world_size=world)
        for r in range(world)
    ]
    merged = torch.cat(shards).tolist()
    assert sorted(merged) == list(range(n)) and len(merged) == n


def test_ddp_loaders_same_permutation_and_equal_batches(breast):
    world = 4
    loaders = [
        build_loader(
            breast.train,
            batch_size=32,
            train=True,
            seed=9,
            rank=r,
            world_size=world,
            augment="light",
        )
        for r in range(world)
    ]
    for ld in loaders:
        ld.set_epoch(3)
    assert len({len(ld) for ld in loaders}) == 1
    assert len({ld.num_samples for ld in loaders}) == 1
    full = epoch_indices(len(breast.train), seed=9, epoch=3, train=True)
    merged = torch.stack([ld.indices() for ld in loaders], 1).reshape(-1)
    assert torch.equal(merged[: len(full)], full)  # the same permutation on every rank
    # ranks draw different augmentation streams
    x0 = next(iter(loaders[0]))[0]
    x1 = next(iter(loaders[1]))[0]
    assert not torch.equal(x0, x1)


def test_ddp_eval_loaders_cover_val_once(breast):
    world = 3
    ys = []
    total = 0
    for r in range(world):
        ld = build_loader(breast.val, batch_size=16, train=False, rank=r, world_size=world)
        x, y = _collect(ld)
        idx = ld.indices().numpy()
        assert torch.equal(x, _normalised(breast.val.images[idx]))
        total += len(y)
        ys.append(idx)
    assert total == 78 and sorted(np.concatenate(ys).tolist()) == list(range(78))


def test_auto_mode(breast, adrenal):
    assert build_loader(breast.train, batch_size=8, train=True).mode == "tensor"
    assert build_loader(adrenal.train, batch_size=8, train=True).mode == "tensor"
    small = build_loader(breast.train, batch_size=8, train=True, memory_budget=1000)
    assert small.mode == "dataloader"


def test_resize_once_and_modes_agree(breast):
    t = build_loader(breast.val, batch_size=50, train=False, img_size=32, mode="tensor")
    assert t.images.shape == (78, 1, 32, 32)  # resized once, at construction
    d = build_loader(breast.val, batch_size=50, train=False, img_size=32, mode="dataloader")
    (xt, _), (xd, _) = _collect(t), _collect(d)
    assert xt.shape == (78, 1, 32, 32)
    assert (xt - xd).abs().max() <= 2 / 255 + 1e-6  # per-image vs batched resampling


def test_3d_masks_loader(adrenal):
    loader = build_loader(adrenal.train, batch_size=64, train=True, augment="heavy", seed=0)
    assert loader.augment.binary and loader.augment.mode == "nearest"
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 28, 28, 28) and y.dtype == torch.int64
    assert set(torch.unique(x).tolist()) <= {-1.0, 1.0}  # still binary after augmentation
    small = build_loader(adrenal.val, batch_size=64, train=False, img_size=16)
    xs, _ = next(iter(small))
    assert xs.shape == (64, 1, 16, 16, 16) and set(torch.unique(xs).tolist()) <= {-1.0, 1.0}


def test_multilabel_labels_float_on_device():
    labels = (np.arange(24).reshape(8, 3) % 2).astype(np.float32)
    split = Split(np.zeros((8, 3, 4, 4), np.uint8), labels)
    for mode in ("tensor", "dataloader"):
        _, y = _collect(build_loader(split, batch_size=3, train=False, mode=mode))
        assert y.dtype == torch.float32 and torch.equal(y, torch.from_numpy(labels))


def test_augment_config_accepted_and_rgb(retina):
    loader = build_loader(
        retina.train, batch_size=64, train=True, augment=AugmentConfig(policy="medium", vflip=0.5)
    )
    x, _ = next(iter(loader))
    assert x.shape == (64, 3, 28, 28) and x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        (dict(batch_size=0), ValueError, "batch_size must be an integer > 0"),
        (dict(rank=2, world_size=2), ValueError, "0 <= rank < world_size"),
        (dict(mode="gpu"), ValueError, "mode must be"),
        (dict(spatial_dims=3), DataError, "spatial_dims=3"),
        (dict(img_size=(8, 8, 8)), ValueError, "does not match the data's 2-D size"),
    ],
)
def test_bad_loader_arguments(kwargs, exc, fragment):
    split = Split(np.zeros((4, 1, 4, 4), np.uint8), np.zeros(4, np.int64))
    args = dict(batch_size=2, train=True) | kwargs
    with pytest.raises(exc, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        build_loader(split, **args)
