#!/usr/bin/env python
"""Trainer throughput: med_core's fast path vs. a MedMNIST-style training loop.

Training images per second of

* **baseline**: the loop of MedMNIST's own example code
  (``MedMNIST/experiments``, ``MedMNIST2D/train_and_eval_pytorch.py``): a ``Dataset`` that
  returns ``PIL.Image.fromarray(img)`` per sample, ``torchvision.transforms``
  ``ToTensor()`` + ``Normalize(mean=[.5], std=[.5])`` per image, ``DataLoader(batch_size=128,
  shuffle=True, num_workers=N)``, fp32, ``inputs.to(device)`` per batch, Adam (lr 1e-3)
  and ``loss.item()`` every step, no augmentation;
* **fast path**: ``med_core.training.Trainer.fit()`` with the tensor-resident loader
  (``data.loader="tensor"``), on-device augmentation (policy ``light`` by default), and
  per configuration: fp32 / bf16 autocast + channels-last / + ``torch.compile`` (on a
  single CUDA device that is ``mode="reduce-overhead"``, i.e. CUDA graphs). Its number is
  the ``images_per_s`` the Trainer records in its History (training images of the epoch
  over the epoch's training time, validation excluded), median over the epochs after the
  warm-up epoch(s).

Both use the same model: ``build_classifier`` with ``--backbone`` (ResNet-18) and the
28-px small-input stem, built from the same seed, and the same training images.

Data: ``--data synthetic`` (default) is DermaMNIST-shaped random data: 7 classes with
DermaMNIST's class proportions, 3×28×28 uint8, 7,007 / 1,003 / 2,005 train / val / test
images. DermaMNIST itself is CC BY-NC 4.0 and not in the repository, so nothing is read
or downloaded; throughput does not depend on the pixel values. ``--data NAME
--data-dir DIR`` loads a real MedMNIST ``.npz`` (e.g. ``breastmnist``) through
``med_core.data.load_dataset`` instead.

Every configuration runs in its own ``try``: an error is written into its table row and
the run goes on. Results are flushed to ``--out`` after every configuration. Under
``--time-limit`` no configuration starts that is not expected to finish, epochs stop
early, and a watchdog writes what was measured and exits (code 3) at the limit, so the
whole run ends within it.

``--out`` holds one section per ``--section`` (default ``cpu``/``gpu`` from the device):
a run replaces only its own section (between its ``<!-- trainer_throughput:NAME:… -->``
markers) and keeps everything else in the file, so the CPU and GPU tables live in one
document.

CPU (one thread, tiny)::

    python benchmarks/trainer_throughput.py --device cpu --threads 1 --epochs 1 --max-train 512

GPU (one H200, ≈ 3-4 minutes with compilation)::

    python benchmarks/trainer_throughput.py --device cuda --time-limit 270
"""

from __future__ import annotations

import argparse
import faulthandler
import math
import os
import re
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make `benchmarks` and `med_core` importable
    sys.path.insert(0, str(_REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._common import Deadline  # noqa: E402
from benchmarks._common import command_line  # noqa: E402
from benchmarks._common import environment  # noqa: E402
from benchmarks._common import environment_table  # noqa: E402
from benchmarks._common import fmt  # noqa: E402
from benchmarks._common import is_fatal_device_error  # noqa: E402
from benchmarks._common import is_oom  # noqa: E402
from benchmarks._common import log  # noqa: E402
from benchmarks._common import markdown_table  # noqa: E402
from benchmarks._common import merge_section as merge_marked_section  # noqa: E402
from benchmarks._common import release_device_memory  # noqa: E402
from benchmarks._common import synchronize  # noqa: E402
from benchmarks._common import write_json  # noqa: E402
from benchmarks._common import write_text  # noqa: E402
from med_core.config import AugmentConfig  # noqa: E402
from med_core.config import DataConfig  # noqa: E402
from med_core.config import ModelConfig  # noqa: E402
from med_core.config import OptimConfig  # noqa: E402
from med_core.config import TrainConfig  # noqa: E402
from med_core.data import DatasetInfo  # noqa: E402
from med_core.data import MedicalDataset  # noqa: E402
from med_core.data import Split  # noqa: E402
from med_core.training import Callback  # noqa: E402
from med_core.training import Trainer  # noqa: E402

DEFAULT_OUT = "docs/benchmarks/trainer_throughput.md"
SCHEMA_VERSION = 1
LR = 1e-3  # MedMNIST's example: Adam, lr 0.001

#: DermaMNIST's classes and split sizes (class counts of its train split; val/test keep
#: the proportions). Only the shapes and proportions are used, never DermaMNIST's pixels.
DERMA_CLASSES = (
    "actinic keratoses and intraepithelial carcinoma",
    "basal cell carcinoma",
    "benign keratosis-like lesions",
    "dermatofibroma",
    "melanoma",
    "melanocytic nevi",
    "vascular lesions",
)
DERMA_TRAIN_COUNTS = (228, 359, 769, 80, 779, 4693, 99)  # sums to 7,007
DERMA_SPLIT_SIZES = {"train": 7007, "val": 1003, "test": 2005}

#: GPU targets of issues 3 and 7 (ResNet-18, 28×28, DermaMNIST-shaped data).
TARGET_IMAGES_PER_S = 80_000.0
TARGET_RATIO = 15.0


@dataclass(frozen=True)
class ConfigSpec:
    """One row type of the table (the batch size is a separate axis)."""

    name: str
    kind: str  # "baseline" or "trainer"
    amp: str = "none"  # TrainConfig.amp_dtype
    channels_last: bool = False
    compile: bool = False
    augment: str | None = None  # None: --augment
    description: str = ""


CONFIGS: dict[str, ConfigSpec] = {
    c.name: c
    for c in (
        ConfigSpec(
            "baseline",
            "baseline",
            description="MedMNIST-style: PIL + ToTensor/Normalize per image, DataLoader, fp32",
        ),
        ConfigSpec(
            "eager-fp32",
            "trainer",
            description="Trainer, tensor loader + on-device augmentation, fp32, eager",
        ),
        ConfigSpec(
            "eager-bf16",
            "trainer",
            amp="bf16",
            channels_last=True,
            description="Trainer, as above + bf16 autocast + channels-last, eager",
        ),
        ConfigSpec(
            "compile-bf16",
            "trainer",
            amp="bf16",
            channels_last=True,
            compile=True,
            description="Trainer, as above + torch.compile (CUDA: reduce-overhead = CUDA graphs)",
        ),
        ConfigSpec(
            "compile-bf16-noaug",
            "trainer",
            amp="bf16",
            channels_last=True,
            compile=True,
            augment="none",
            description="compile-bf16 without augmentation (the augmentation's share)",
        ),
    )
}


# ============================================================================ data
def _split_counts(total: int, proportions: Sequence[int]) -> list[int]:
    """``total`` divided in ``proportions`` (largest remainder; every class keeps >= 1)."""
    s = float(sum(proportions))
    raw = [total * p / s for p in proportions]
    counts = [max(1, int(math.floor(r))) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
    i = 0
    while sum(counts) < total:
        counts[order[i % len(order)]] += 1
        i += 1
    while sum(counts) > total:
        j = max(range(len(counts)), key=lambda k: counts[k])
        counts[j] -= 1
    return counts


def synthetic_dermamnist(seed: int = 0) -> MedicalDataset:
    """DermaMNIST-shaped random data: 7 classes, 3×28×28 uint8, 7,007/1,003/2,005 images.

    Pixels are uniform random bytes (never zeros, which can run faster than real data);
    labels follow DermaMNIST's class proportions, shuffled. Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    splits: dict[str, Split] = {}
    for name, n in DERMA_SPLIT_SIZES.items():
        counts = _split_counts(n, DERMA_TRAIN_COUNTS)
        labels = rng.permutation(np.repeat(np.arange(len(counts), dtype=np.int64), counts))
        images = rng.integers(0, 256, size=(n, 3, 28, 28), dtype=np.uint8)
        splits[name] = Split(images, labels)
    info = DatasetInfo(
        name="dermamnist-synthetic",
        task="multi-class",
        num_classes=len(DERMA_CLASSES),
        in_chans=3,
        spatial_dims=2,
        image_size=(28, 28),
        class_names=DERMA_CLASSES,
        source=f"synthetic (numpy seed {seed})",
    )
    return MedicalDataset(info, splits["train"], splits["val"], splits["test"])


def load_data(args: argparse.Namespace) -> MedicalDataset:
    """The benchmark's dataset, with ``--max-train``/``--max-val`` applied."""
    if args.data == "synthetic":
        ds = synthetic_dermamnist(args.seed)
    else:
        from med_core.data import load_dataset

        ds = load_dataset(args.data, data_dir=args.data_dir)
    if ds.info.spatial_dims != 2:
        raise SystemExit(f"--data {args.data}: only 2-D data is supported (the baseline is 2-D)")
    train, val = ds.train, ds.val
    if args.max_train is not None and len(train) > args.max_train:
        train = train.subset(np.arange(args.max_train))
    max_val = args.max_val
    if max_val is None and args.max_train is not None:
        max_val = max(64, args.max_train // 4)
    if max_val is not None and len(val) > max_val:
        val = val.subset(np.arange(max_val))
    return MedicalDataset(ds.info, train, val, ds.test)


# ============================================================================ baseline
class MedMNISTStyleDataset(torch.utils.data.Dataset):
    """What ``medmnist.MedMNIST2D`` does per sample, on an in-memory split.

    MedMNIST stores grey images as ``(N, H, W)`` and RGB ones as ``(N, H, W, 3)`` with
    labels ``(N, 1)`` (``(N, L)`` for multi-label); ``__getitem__`` returns
    ``transform(Image.fromarray(img))`` and ``labels[index].astype(int)``.
    """

    def __init__(self, split: Split, transform: Any) -> None:
        imgs = split.images
        if imgs.shape[1] == 1:
            self.imgs = np.ascontiguousarray(imgs[:, 0])
        else:
            self.imgs = np.ascontiguousarray(imgs.transpose(0, 2, 3, 1))
        labels = split.labels
        self.labels = labels.reshape(len(labels), -1)
        self.transform = transform

    def __len__(self) -> int:
        return int(self.imgs.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, np.ndarray]:
        img, target = self.imgs[index], self.labels[index].astype(int)
        img = Image.fromarray(img)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def build_model(args: argparse.Namespace, info: DatasetInfo) -> nn.Module:
    """The classifier exactly as the Trainer builds it (same seed → same initial weights)."""
    from med_core.models import build_classifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        return build_classifier(
            ModelConfig(backbone=args.backbone),
            num_classes=info.num_classes,
            in_chans=info.in_chans,
            img_size=info.image_size,
        )


# ============================================================================ results
@dataclass
class Row:
    """One configuration's result."""

    config: str
    batch: int
    dtype: str
    channels_last: bool
    compile: bool
    data_path: str
    workers: int | None = None
    images_per_s: float | None = None  # median over the timed epochs
    epoch_images_per_s: list[float] = field(default_factory=list)
    images_per_epoch: int | None = None
    first_epoch_s: float | None = None  # warm-up epoch (compilation), incl. validation
    wall_s: float | None = None  # the whole configuration, setup included
    cpu_s: float | None = None  # this process's CPU time over the same span
    status: str = "not run"
    error: str | None = None
    ratio: float | None = None  # vs. the reference baseline
    ratio_best: float | None = None  # vs. the fastest baseline

    @property
    def ok(self) -> bool:
        return self.images_per_s is not None

    @property
    def spread_pct(self) -> float | None:
        v = self.epoch_images_per_s
        if len(v) < 2 or not self.images_per_s:
            return None
        return 100.0 * (max(v) - min(v)) / self.images_per_s


@dataclass
class Run:
    """Everything a report is made of."""

    command: str
    section: str
    device: torch.device
    env: dict[str, str]
    args: dict[str, Any]
    data_desc: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    current: str | None = None
    started: float = field(default_factory=time.perf_counter)
    finished: bool = False
    killed: bool = False

    def reference(self) -> Row | None:
        return next((r for r in self.rows if r.config == "baseline" and r.ok), None)

    def update_ratios(self) -> None:
        ref = self.reference()
        bases = [r for r in self.rows if r.config == "baseline" and r.ok]
        best = max(bases, key=lambda r: r.images_per_s or 0.0) if bases else None
        for r in self.rows:
            if r.images_per_s is None:
                r.ratio = r.ratio_best = None
                continue
            r.ratio = r.images_per_s / ref.images_per_s if ref and ref.images_per_s else None
            r.ratio_best = (
                r.images_per_s / best.images_per_s if best and best.images_per_s else None
            )


def _first_line(exc: BaseException, n: int = 200) -> str:
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0] if msg else ''}".strip()
    return text if len(text) <= n else text[: n - 1] + "…"


# ============================================================================ measuring
class _TimeLimit(Callback):
    """Stops a Trainer run after the current epoch when the next one may not fit."""

    def __init__(self, deadline: Deadline, min_epochs: int, total_epochs: int) -> None:
        self.deadline = deadline
        self.min_epochs = min_epochs
        self.total_epochs = total_epochs
        self.stopped = False

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if epoch + 1 < self.min_epochs or epoch + 1 >= self.total_epochs:
            return
        need = 1.5 * float(metrics.get("epoch_time_s", 0.0)) + 5.0
        if self.deadline.remaining() < need:
            self.stopped = True
            trainer.request_stop("time limit")


def run_baseline(
    row: Row,
    args: argparse.Namespace,
    ds: MedicalDataset,
    device: torch.device,
    deadline: Deadline,
) -> None:
    """MedMNIST's training loop; fills ``row`` (images/s per timed epoch)."""
    import torch.utils.data as data
    import torchvision.transforms as transforms

    data_transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])]
    )
    train_dataset = MedMNISTStyleDataset(ds.train, data_transform)
    train_loader = data.DataLoader(
        dataset=train_dataset,
        batch_size=row.batch,
        shuffle=True,
        num_workers=row.workers or 0,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model = build_model(args, ds.info).to(device)
    multilabel = ds.info.task == "multi-label"
    criterion = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    n = len(train_dataset)
    row.images_per_epoch = n
    total_epochs = args.warmup_epochs + args.epochs
    epoch_s: list[float] = []
    for epoch in range(total_epochs):
        if epoch > args.warmup_epochs and epoch_s:
            # at least one timed epoch done: start another only if it fits
            if deadline.remaining() < 1.5 * epoch_s[-1] + 5.0:
                row.status = f"stopped by --time-limit after {len(row.epoch_images_per_s)} timed"
                break
        total_loss: list[float] = []
        model.train()
        synchronize(device)
        t0 = time.perf_counter()
        for inputs, targets in train_loader:
            optimizer.zero_grad()
            outputs = model(inputs.to(device))
            if multilabel:
                targets = targets.to(torch.float32).to(device)
            else:
                targets = torch.squeeze(targets, 1).long().to(device)
            loss = criterion(outputs, targets)
            total_loss.append(loss.item())  # one host sync per step, as in MedMNIST's loop
            loss.backward()
            optimizer.step()
        synchronize(device)  # the last backward/step may still be queued
        dt = time.perf_counter() - t0
        epoch_s.append(dt)
        if not all(math.isfinite(v) for v in total_loss):
            raise FloatingPointError(f"baseline loss became non-finite in epoch {epoch}")
        if epoch == 0:
            row.first_epoch_s = dt
        if epoch >= args.warmup_epochs:
            row.epoch_images_per_s.append(n / dt)
    del model, optimizer, train_loader


def run_trainer(
    row: Row,
    spec: ConfigSpec,
    args: argparse.Namespace,
    ds: MedicalDataset,
    device: torch.device,
    deadline: Deadline,
) -> None:
    """``Trainer.fit()`` for warm-up + timed epochs; fills ``row`` from its History."""
    cfg = TrainConfig(
        data=DataConfig(dataset=ds.info.name, loader="tensor", num_workers=0),
        model=ModelConfig(backbone=args.backbone),
        augment=AugmentConfig(policy=spec.augment or args.augment),
        optim=OptimConfig(optimizer="adam", lr=LR, weight_decay=0.0),
        epochs=args.warmup_epochs + args.epochs,
        batch_size=row.batch,
        amp_dtype=spec.amp,
        channels_last=spec.channels_last,
        compile=spec.compile,
        seed=args.seed,
    )
    stopper = _TimeLimit(deadline, min_epochs=args.warmup_epochs + 1, total_epochs=cfg.epochs)
    trainer = Trainer(cfg, dataset=ds, device=device, progress=False, callbacks=[stopper])
    try:
        history = trainer.fit()
    finally:
        trainer.close()
        del trainer
    epochs = history.epochs
    if epochs:
        row.first_epoch_s = float(epochs[0]["epoch_time_s"])
    timed = epochs[args.warmup_epochs :]
    row.epoch_images_per_s = [float(e["images_per_s"]) for e in timed]
    # samples per epoch: full batches only (the loader drops the last partial batch)
    n = len(ds.train)
    row.images_per_epoch = (n // row.batch) * row.batch if n >= row.batch else n
    if stopper.stopped:
        row.status = f"stopped by --time-limit after {len(timed)} timed"
    if history.stop_reason not in ("completed", "callback:time limit"):
        row.status = f"stop_reason={history.stop_reason}"


def measure(
    row: Row,
    spec: ConfigSpec,
    args: argparse.Namespace,
    ds: MedicalDataset,
    device: torch.device,
    deadline: Deadline,
) -> bool:
    """Runs one configuration into ``row``; returns False if the device is unusable now."""
    t0, c0 = time.perf_counter(), time.process_time()
    row.status = "running"
    fatal = False
    try:
        if spec.kind == "baseline":
            run_baseline(row, args, ds, device, deadline)
        else:
            run_trainer(row, spec, args, ds, device, deadline)
        if row.epoch_images_per_s:
            row.images_per_s = statistics.median(row.epoch_images_per_s)
            if row.status == "running":
                row.status = "ok"
            elif row.status.startswith("stopped"):
                row.status += f" of {args.epochs} epochs"
        else:
            row.status = "no timed epoch (--time-limit reached during warm-up)"
    except Exception as exc:  # every error goes into the table; the run goes on
        row.error = _first_line(exc)
        row.status = "OOM" if is_oom(exc) else "error"
        fatal = is_fatal_device_error(exc)
        log(f"  {row.config} b{row.batch}: {row.error}")
        traceback.print_exc(file=sys.stderr)
        del exc
    finally:
        row.wall_s = time.perf_counter() - t0
        row.cpu_s = time.process_time() - c0
        if spec.compile:
            try:
                torch.compiler.reset()
            except Exception:  # noqa: BLE001 - cleanup only
                pass
        if not fatal:
            try:
                release_device_memory(device, collect=True)
            except Exception as exc:  # noqa: BLE001 - a broken context shows up here
                fatal = fatal or is_fatal_device_error(exc)
    return not fatal


def _estimate_s(
    spec: ConfigSpec, batch: int, run: Run, args: argparse.Namespace, n_train: int
) -> float:
    """Rough wall time of a configuration, for deciding whether to start it."""
    cuda = run.device.type == "cuda"
    epochs = args.warmup_epochs + args.epochs
    done_compile = [r for r in run.rows if r.compile and r.wall_s is not None]
    if spec.compile and cuda:
        return 0.8 * done_compile[-1].wall_s if done_compile else 75.0  # type: ignore[operator]
    speeds = [r.images_per_s for r in run.rows if r.images_per_s]
    # uncompiled: epochs at the slowest speed seen so far (+ validation and setup)
    est = 1.3 * epochs * n_train / min(speeds) if speeds else 0.0
    return max(est, 8.0 if cuda else 0.0)


# ============================================================================ report
HEADER = """\
# Trainer throughput: med_core fast path vs. a MedMNIST-style loop

Written by `benchmarks/trainer_throughput.py` (issue 3, "What must be shown"; issue 7,
targets). Each section below is the output of one run, with its exact command, the
hardware and versions, and ratios against the baseline **measured in the same run**
(absolute numbers drift between machines; the ratios are what we compare). A run
replaces only its own section (`--section`, default `cpu` or `gpu`); text outside the
`<!-- trainer_throughput:… -->` markers is kept.

## What is measured

*Training images per second* on the same model and the same training images:

* `baseline`: the loop of MedMNIST's example code (`MedMNIST/experiments`,
  `MedMNIST2D/train_and_eval_pytorch.py`): a `Dataset` returning
  `PIL.Image.fromarray(img)`, per-image `ToTensor()` + `Normalize(mean=[.5], std=[.5])`,
  `DataLoader(batch_size=128, shuffle=True, num_workers=N)` (MedMNIST's code uses the
  default `num_workers=0`), fp32 (PyTorch's defaults: cuDNN may use TF32), no pinned
  memory, `inputs.to(device)` per batch, Adam lr 1e-3, `loss.item()` every step, no
  augmentation. Images/s = images of the epoch / wall time of the epoch loop (the
  device is synchronised before the clock is read).
* `eager-fp32`: `med_core.training.Trainer.fit()` with the tensor-resident loader
  (`data.loader: tensor`), on-device augmentation (`light` unless `--augment`), fp32,
  Adam lr 1e-3 (fused on CUDA), cosine schedule, one host sync per 16 steps.
* `eager-bf16`: as `eager-fp32` + `amp_dtype: bf16` + `channels_last: true` (autocast
  is CUDA-only: on CPU this trains in fp32).
* `compile-bf16`: as `eager-bf16` + `compile: true` (on one CUDA device
  `mode="reduce-overhead"`: forward + loss replay as CUDA graphs).
* `compile-bf16-noaug`: as `compile-bf16` without augmentation, at the largest batch
  only: a control that shows the augmentation's share of the step (a trial augments, so
  the targets are judged on the rows with augmentation).

For the Trainer rows the number is the `images_per_s` the Trainer writes into its
History (training images of the epoch over the epoch's training time; validation is
not counted), the **median over the epochs after the warm-up epoch(s)**; the first
epoch (compilation, cuDNN set-up) is reported separately as "1st epoch s" (training +
validation). The Trainer drops the last partial batch, the baseline does not; both count
the images they trained on. The fast path also does more work per image than the
baseline (random flip, rotation, scale, shift, brightness and contrast on the GPU).

"× baseline" divides by the reference baseline: the measured baseline row with the
fewest DataLoader workers (0 by default, as in MedMNIST's code). "× best baseline"
divides by the fastest baseline row of the same run (by default 4 workers on CUDA), the
stricter comparison.

**Model.** `med_core.models.build_classifier` with `--backbone` (ResNet-18) and the
28-px small-input stem (the 7×7 stem convolution with stride 1 and no max-pool), built
from the same seed for every row.

**Data.** `--data synthetic` (default): DermaMNIST-shaped random data: 7 classes in
DermaMNIST's class proportions, 3×28×28 uint8, 7,007 train / 1,003 val / 2,005 test
images. DermaMNIST itself is licensed CC BY-NC 4.0 and is not in this repository, so no
DermaMNIST file is read; throughput does not depend on the pixel values (uniform random
bytes, never zeros). `--data NAME --data-dir DIR` uses a real MedMNIST file instead.

**Targets (issues 3 and 7).** One H200, ResNet-18 at 28×28, DermaMNIST-shaped data:
≥ 80,000 training images/s and ≥ 15× the baseline loop.
"""


def merge_section(existing: str | None, section: str, block: str) -> str:
    """The document with ``section``'s block replaced (or appended; header if new)."""
    return merge_marked_section(existing, f"trainer_throughput:{section}", block, header=HEADER)


def _dtype_label(spec: ConfigSpec, device: torch.device) -> str:
    if spec.amp == "none":
        return "fp32"
    if device.type != "cuda":
        return f"fp32 ({spec.amp} ignored on CPU)"
    return f"{spec.amp} autocast"


def _data_path(spec: ConfigSpec, workers: int | None, augment: str) -> str:
    if spec.kind == "baseline":
        return f"PIL + DataLoader, workers={workers}"
    policy = spec.augment or augment
    return "tensor loader, no aug" if policy == "none" else f"tensor loader + `{policy}` aug"


def _ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def results_table(run: Run) -> str:
    run.update_ratios()
    headers = [
        "config",
        "batch",
        "dtype",
        "ch-last",
        "compile",
        "data path",
        "train images/s",
        "spread",
        "× baseline",
        "× best baseline",
        "1st epoch s",
        "status",
    ]
    rows = []
    for r in run.rows:
        status = r.status if r.error is None else f"{r.status}: {r.error}"
        rows.append(
            [
                f"`{r.config}`",
                str(r.batch),
                r.dtype,
                "yes" if r.channels_last else "no",
                "yes" if r.compile else "no",
                r.data_path,
                "–" if r.images_per_s is None else f"{r.images_per_s:,.0f}",
                "–" if r.spread_pct is None else f"{r.spread_pct:.0f} %",
                _ratio(r.ratio),
                _ratio(r.ratio_best),
                fmt(r.first_epoch_s, 1),
                status,
            ]
        )
    return markdown_table(headers, rows, align="lrllllrrrrrl")


def _target_lines(run: Run) -> list[str]:
    """Issue 7's GPU targets, for ResNet-18 on 28×28 data on CUDA only."""
    if run.device.type != "cuda":
        return []
    ref = run.reference()
    # a trial trains with augmentation: the no-augmentation control does not count
    fast = [
        r for r in run.rows if r.config != "baseline" and r.ok and CONFIGS[r.config].augment is None
    ]
    if not fast:
        return ["**Targets:** no fast-path row (with augmentation) was measured."]
    best = max(fast, key=lambda r: r.images_per_s or 0.0)
    ips = best.images_per_s or 0.0
    lines = [
        f"**Targets** (best fast-path row with `{run.args.get('augment')}` augmentation: "
        f"`{best.config}` at batch {best.batch}):",
        "",
    ]
    if ips >= TARGET_IMAGES_PER_S:
        lines.append(f"* ≥ 80,000 training images/s: **met** ({ips:,.0f}).")
    else:
        lines.append(
            f"* ≥ 80,000 training images/s: **missed** ({ips:,.0f}, "
            f"{100 * (1 - ips / TARGET_IMAGES_PER_S):.0f} % short)."
        )
    if ref is None or best.ratio is None:
        lines.append("* ≥ 15× the baseline: no baseline measured.")
    elif best.ratio >= TARGET_RATIO:
        lines.append(f"* ≥ 15× the baseline (workers={ref.workers}): **met** ({best.ratio:.1f}×).")
    else:
        lines.append(
            f"* ≥ 15× the baseline (workers={ref.workers}): **missed** ({best.ratio:.1f}×, "
            f"{100 * (1 - best.ratio / TARGET_RATIO):.0f} % short)."
        )
    if best.ratio_best is not None and best.ratio_best != best.ratio:
        lines.append(f"* Against the fastest baseline row: {best.ratio_best:.1f}×.")
    if (
        run.args.get("backbone") != "resnet18"
        or run.args.get("data") != "synthetic"
        or run.args.get("max_train") is not None
    ):
        lines.append(
            "* Note: the targets are defined for ResNet-18 on the full DermaMNIST-shaped "
            "data; this run differs (see the command)."
        )
    return lines


def render_section(run: Run) -> str:
    title = "CPU" if run.device.type == "cpu" else "GPU"
    if run.device.type == "cuda":
        title += f": {run.env.get('GPU', 'CUDA device')}"
    elapsed = time.perf_counter() - run.started
    if run.killed:
        state = f"**stopped by the --time-limit watchdog** after {elapsed:.0f} s"
    elif run.finished:
        state = f"finished in {elapsed:.0f} s"
    else:
        state = f"in progress ({elapsed:.0f} s so far; flushed after every configuration)"
    a = run.args
    out = [
        f"## {title} (`--section {run.section}`)",
        "",
        "```bash",
        run.command,
        "```",
        "",
        f"Run {state}. Data: {run.data_desc}. Model: `{a['backbone']}` (28-px stem when "
        f"the input is small). Epochs per configuration: {a['warmup_epochs']} warm-up + "
        f"{a['epochs']} timed. Augmentation (fast path): `{a['augment']}`.",
        "",
        results_table(run),
        "",
    ]
    targets = _target_lines(run)
    if targets:
        out += [*targets, ""]
    notes = list(run.notes)
    ref = run.reference()
    timed = [r for r in run.rows if r.wall_s and r.cpu_s is not None]
    threads = int(run.args.get("threads") or 0)
    if run.device.type == "cpu" and timed and threads:
        share = sum(r.cpu_s or 0.0 for r in timed) / sum(r.wall_s or 0.0 for r in timed)
        if share < 0.8 * threads:
            notes.append(
                f"This process got {100 * share / threads:.0f} % of the {threads} thread(s) it "
                f"ran ({sum(r.cpu_s or 0.0 for r in timed):.0f} s of CPU time in "
                f"{sum(r.wall_s or 0.0 for r in timed):.0f} s): other processes shared the "
                "machine (see the load average), so the absolute images/s are low by about "
                "that factor; both loops ran under the same conditions."
            )
    if run.device.type == "cpu" and ref is not None and ref.images_per_s:
        notes.append(
            f"On a CPU the model's training step itself (≈ {1000 / ref.images_per_s:.0f} ms "
            "per image here, one thread) dominates both loops, so the ratio stays near 1 "
            "(differences of ±15 % are within this machine's noise when other processes "
            "share it; see the load average). The fast path removes per-image Python work, "
            "per-step host syncs and kernel-launch overhead: GPU costs. This table shows "
            "that the benchmark runs and that both loops train the same model on the same "
            "data; the GPU section is the measurement of record."
        )
    if notes:
        out += ["Notes:", "", *[f"* {n}" for n in notes], ""]
    out += [
        "<details><summary>Environment and per-epoch numbers</summary>",
        "",
        environment_table(run.env),
        "",
        markdown_table(
            ["config", "batch", "images/epoch", "timed epochs: train images/s", "wall s"],
            [
                [
                    f"`{r.config}`" + (f" (workers={r.workers})" if r.workers is not None else ""),
                    str(r.batch),
                    fmt(r.images_per_epoch),
                    ", ".join(f"{v:,.0f}" for v in r.epoch_images_per_s) or "–",
                    fmt(r.wall_s, 1),
                ]
                for r in run.rows
            ],
            align="lrrlr",
        ),
        "",
        "</details>",
    ]
    return "\n".join(out)


class Reporter:
    """Writes the report (Markdown section, optional JSON); one writer at a time.

    The main thread flushes after every configuration and once at the end (``finish``);
    the watchdog writes the final version itself when it fires. Whoever comes second
    sees the other's flag under the lock and does not overwrite it.
    """

    def __init__(self, run: Run, out: Path, json_path: Path | None) -> None:
        self.run = run
        self.out = out
        self.json_path = json_path
        self.lock = threading.Lock()

    def flush(self) -> bool:
        """Writes the current state (main thread); False once the watchdog has fired."""
        with self.lock:
            if self.run.killed:
                return False
            self._write()
            return True

    def finish(self) -> bool:
        """Marks the run finished and writes it; False if the watchdog fired first."""
        with self.lock:
            if self.run.killed:
                return False
            self.run.finished = True
            self._write()
            return True

    def _write(self) -> None:
        existing = self.out.read_text(encoding="utf-8") if self.out.is_file() else None
        write_text(self.out, merge_section(existing, self.run.section, render_section(self.run)))
        if self.json_path is not None:
            self.run.update_ratios()
            write_json(
                self.json_path,
                {
                    "schema": SCHEMA_VERSION,
                    "command": self.run.command,
                    "section": self.run.section,
                    "env": self.run.env,
                    "args": self.run.args,
                    "data": self.run.data_desc,
                    "finished": self.run.finished,
                    "killed": self.run.killed,
                    "notes": self.run.notes,
                    "rows": [{**asdict(r), "spread_pct": r.spread_pct} for r in self.run.rows],
                },
            )

    def kill(self, reason: str) -> bool:
        """Watchdog: marks the run stopped and writes the report, unless it already
        finished. Waits at most 5 s for a write in progress (writes are atomic, so writing
        without the lock can at worst replace the other write)."""
        got = self.lock.acquire(timeout=5.0)
        try:
            if self.run.finished:
                return False
            self.run.killed = True
            self.run.notes.append(reason)
            for r in self.run.rows:
                if r.status == "running":
                    r.status = "killed at --time-limit"
            self._write()
            return True
        finally:
            if got:
                self.lock.release()


# ============================================================================ CLI
def _int_csv(s: str) -> list[int]:
    try:
        values = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {s!r}")
    return values


def _configs_csv(s: str) -> list[str]:
    names = [v.strip() for v in s.split(",") if v.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/trainer_throughput.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--configs",
        type=_configs_csv,
        default=None,
        help=f"comma list of {', '.join(CONFIGS)} (default: all on CUDA; "
        "baseline,eager-fp32 on CPU)",
    )
    p.add_argument(
        "--batch-sizes",
        type=_int_csv,
        default=None,
        help="fast-path batch sizes (default: 128,512 on CUDA, 128 on CPU)",
    )
    p.add_argument("--baseline-batch", type=int, default=128)
    p.add_argument(
        "--baseline-workers",
        type=_int_csv,
        default=None,
        help="DataLoader workers of the baseline, one row each; the fewest is the reference "
        "for '× baseline' (default: 0,4 on CUDA, 0 on CPU; MedMNIST's code uses 0)",
    )
    p.add_argument("--epochs", type=int, default=None, help="timed epochs (default 5 CUDA, 1 CPU)")
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=None,
        help="untimed first epochs (default 1 on CUDA: compilation, cuDNN set-up; 0 on CPU)",
    )
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--augment", default="light", help="fast-path augmentation policy")
    p.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic' (DermaMNIST-shaped) or a MedMNIST name/path for load_dataset",
    )
    p.add_argument("--data-dir", default=None, help="where MedMNIST names are looked up")
    p.add_argument("--max-train", type=int, default=None, help="use the first N train images")
    p.add_argument(
        "--max-val",
        type=int,
        default=None,
        help="use the first N val images (default with --max-train: max(64, N/4))",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: 1 on CPU, torch's default on CUDA)",
    )
    p.add_argument("--cudnn-benchmark", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--time-limit",
        type=float,
        default=270.0,
        help="seconds for the whole run (from the start of main): no configuration starts "
        "that is not expected to fit, epochs stop early, and a watchdog writes the report "
        "and exits with code 3 at the limit (0: no limit)",
    )
    p.add_argument("--section", default=None, help="report section (default: cpu or gpu)")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="Markdown report")
    p.add_argument("--json", type=Path, default=None, help="raw results as JSON")
    return p


def plan(
    args: argparse.Namespace, device: torch.device
) -> list[tuple[ConfigSpec, int, int | None]]:
    """(spec, batch, workers) in run order: baselines, then the cheap bf16 rows, then the
    compiled rows (the headline, but the slow and risky ones), then fp32, then the
    no-augmentation control."""
    order = {"eager-bf16": 0, "compile-bf16": 1, "eager-fp32": 2, "compile-bf16-noaug": 3}
    out: list[tuple[ConfigSpec, int, int | None]] = []
    if "baseline" in args.configs:
        for w in args.baseline_workers:
            out.append((CONFIGS["baseline"], args.baseline_batch, w))
    fast = sorted((c for c in args.configs if c != "baseline"), key=lambda c: order[c])
    for name in fast:
        batches = sorted(args.batch_sizes, reverse=True)
        if CONFIGS[name].augment is not None:
            batches = batches[:1]  # a control: the largest batch is enough
        for b in batches:
            out.append((CONFIGS[name], b, None))
    return out


def _display_key(row: Row) -> tuple[int, int, int]:
    names = list(CONFIGS)
    return (names.index(row.config), row.workers or 0, row.batch)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    deadline = Deadline(args.time_limit if args.time_limit > 0 else None)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch.cuda.is_available() is False")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise SystemExit(f"unsupported device {args.device!r}")
    cuda = device.type == "cuda"
    if args.configs is None:
        args.configs = list(CONFIGS) if cuda else ["baseline", "eager-fp32"]
    if args.batch_sizes is None:
        args.batch_sizes = [128, 512] if cuda else [128]
    if args.baseline_workers is None:
        args.baseline_workers = [0, 4] if cuda else [0]
    if args.epochs is None:
        args.epochs = 5 if cuda else 1
    if args.warmup_epochs is None:
        args.warmup_epochs = 1 if cuda else 0
    if args.epochs < 1 or args.warmup_epochs < 0:
        raise SystemExit("--epochs must be >= 1 and --warmup-epochs >= 0")
    if any(b < 1 for b in args.batch_sizes) or args.baseline_batch < 1:
        raise SystemExit("batch sizes must be >= 1")
    if args.threads is None and not cuda:
        args.threads = 1  # CPU numbers from one thread: comparable across machines
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    section = args.section or ("gpu" if cuda else "cpu")
    if not re.fullmatch(r"[a-z0-9_-]+", section):
        raise SystemExit(f"--section must match [a-z0-9_-]+, got {section!r}")

    command = command_line(__file__, argv)
    log(f"$ {command}")
    _preimport()
    ds = load_data(args)
    env = environment(device)
    if not cuda and hasattr(os, "getloadavg"):
        env["load average (1 min) at start"] = f"{os.getloadavg()[0]:.2f}"
    env["medmnist installed"] = "yes" if _has_module("medmnist") else "no (not needed)"
    data_desc = (
        f"`{ds.info.name}` ({ds.info.task}, {ds.info.num_classes} classes, "
        f"{ds.info.in_chans}×{'×'.join(map(str, ds.info.image_size))} uint8), "
        f"{len(ds.train):,} train / {len(ds.val):,} val images"
    )
    run = Run(
        command=command,
        section=section,
        device=device,
        env=env,
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        data_desc=data_desc,
    )
    run.started = deadline.start
    if args.data == "synthetic":
        run.notes.append(
            "DermaMNIST-shaped synthetic data (DermaMNIST is CC BY-NC 4.0 and not in the "
            "repository); the numbers depend on shapes, not pixel values."
        )
    if not cuda and any(CONFIGS[c].amp != "none" for c in args.configs):
        run.notes.append("bf16 autocast is CUDA-only: on CPU the bf16 rows train in fp32.")
    reporter = Reporter(run, args.out, args.json)

    watchdog: threading.Timer | None = None
    if deadline.limit_s is not None:

        def fire() -> None:
            cur = run.current or "between configurations"
            try:
                if not reporter.kill(f"The watchdog stopped the run at --time-limit during {cur}."):
                    return  # the run finished just in time
                log(f"watchdog: --time-limit {args.time_limit:.0f} s reached during {cur}")
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            except BaseException:  # noqa: BLE001 - exit regardless
                traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(3)

        watchdog = threading.Timer(max(0.0, deadline.remaining()), fire)
        watchdog.daemon = True
        watchdog.start()
        # backstop if the watchdog thread cannot run (a C call holding the GIL): dump the
        # stacks and exit from faulthandler's own thread; the last flushed report stays
        faulthandler.dump_traceback_later(max(1.0, deadline.remaining() + 15.0), exit=True)

    any_error = False
    device_ok = True
    try:
        for spec, batch, workers in plan(args, device):
            row = Row(
                config=spec.name,
                batch=batch,
                dtype=_dtype_label(spec, device),
                channels_last=spec.channels_last,
                compile=spec.compile,
                data_path=_data_path(spec, workers, args.augment),
                workers=workers,
            )
            run.rows.append(row)
            run.rows.sort(key=_display_key)
            label = f"{spec.name} b{batch}" + (f" workers={workers}" if workers is not None else "")
            est = _estimate_s(spec, batch, run, args, len(ds.train))
            if not device_ok:
                row.status = "skipped: the device failed in an earlier configuration"
            elif deadline.remaining() < est:
                left = deadline.remaining()
                row.status = f"skipped: --time-limit ({left:.0f} s left, ≈ {est:.0f} s needed)"
            else:
                log(f"[{deadline.elapsed():6.1f} s] {label} ...")
                run.current = label
                device_ok = measure(row, spec, args, ds, device, deadline)
                run.current = None
                any_error |= row.error is not None
                log(
                    f"[{deadline.elapsed():6.1f} s] {label}: "
                    + (f"{row.images_per_s:,.0f} images/s" if row.ok else row.status)
                    + f" ({row.wall_s:.1f} s)"
                )
            if not reporter.flush():
                break  # the watchdog fired
        if not reporter.finish() and watchdog is not None:
            watchdog.join()  # the watchdog has written the report and exits the process
    finally:
        if watchdog is not None:
            watchdog.cancel()
            faulthandler.cancel_dump_traceback_later()
    print(results_table(run))
    for line in _target_lines(run):
        print(line)
    print(f"\nwrote {args.out}" + (f" and {args.json}" if args.json else ""))
    return 1 if any_error or not device_ok else 0


def _preimport() -> None:
    """Imports what the loops import lazily (torchvision's transforms, scikit-learn for the
    validation metrics), so that no import lands inside a timed epoch (on CPU there is no
    warm-up epoch by default)."""
    import importlib

    for name in ("torchvision.transforms", "torchvision.transforms.v2", "sklearn.metrics"):
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - reported where it is really needed
            pass


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main())
