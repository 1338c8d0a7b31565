"""One training epoch and one evaluation pass (private: no compatibility promise).

The hot loop never waits for the device on a step-by-step basis: each step's loss stays
on the device, and every :data:`CHECK_EVERY` steps (and at the end of the epoch) the
window of losses is copied to the host at once. That single sync per window feeds the
progress bar, the epoch's mean loss and the NaN/inf check, which therefore raises
:class:`~med_core.exceptions.NonFiniteLossError` at most ``CHECK_EVERY - 1`` steps after
the first non-finite loss, reporting that first bad step and its value exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from med_core.exceptions import NonFiniteLossError
from med_core.training._distributed import DistContext

__all__ = [
    "CHECK_EVERY",
    "EvalOutput",
    "LoopSettings",
    "TrainStep",
    "evaluate_loader",
    "train_epoch",
]

#: Steps between two host syncs of the training loss (NaN/inf check, progress bar).
CHECK_EVERY = 16

MULTILABEL = "multi-label"


@dataclass
class LoopSettings:
    """What the loops need to know besides the model and the data."""

    task: str
    num_classes: int
    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    tta: bool = False
    cudagraphs: bool = False  # the train step is compiled with mode="reduce-overhead"

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def autocast(self) -> AbstractContextManager[Any]:
        if self.amp_dtype is None or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)


def training_loss(
    logits: torch.Tensor, target: torch.Tensor, *, task: str, label_smoothing: float
) -> torch.Tensor:
    """Mean loss of a batch: cross-entropy (hard or soft targets) or BCE-with-logits.

    Single-label tasks (binary with 2 logits, multi-class, ordinal) use cross-entropy with
    ``label_smoothing``; ``target`` is class indices or, after mixup/cutmix, probabilities.
    Multi-label tasks use BCE-with-logits on 0/1 (or mixed) targets, smoothed towards 0.5.
    """
    if task == MULTILABEL:
        t = target.float()
        if label_smoothing > 0:
            t = t * (1.0 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits.float(), t)
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


class TrainStep(nn.Module):
    """Forward pass and loss of one batch: the part ``torch.compile`` captures.

    Keeping the loss (and autocast) inside one module lets the compiler fuse it with the
    network and, with ``mode="reduce-overhead"``, replay forward + loss as one CUDA graph.
    """

    def __init__(self, model: nn.Module, settings: LoopSettings) -> None:
        super().__init__()
        self.model = model
        self.task = settings.task
        self.label_smoothing = settings.label_smoothing
        self.amp_dtype = settings.amp_dtype if settings.device.type == "cuda" else None

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.amp_dtype is not None:
            with torch.autocast(device_type="cuda", dtype=self.amp_dtype):
                logits = self.model(x)
        else:
            logits = self.model(x)
        return self.loss(logits, target)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss (:func:`training_loss`); subclasses change the objective."""
        return training_loss(logits, target, task=self.task, label_smoothing=self.label_smoothing)


def _prepare(
    x: torch.Tensor, y: torch.Tensor, s: LoopSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(s.device, non_blocking=True)
    y = y.to(s.device, non_blocking=True)
    if s.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


class _LossWindow:
    """Per-step losses kept on the device and inspected once every ``CHECK_EVERY`` steps."""

    def __init__(self, epoch: int, dist: DistContext) -> None:
        self.epoch = epoch
        self.dist = dist
        self.pending: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.first_step = 0
        self.loss_sum = 0.0  # float64 on the host: sum of batch-mean loss * batch size
        self.count = 0
        self.last_mean = math.nan

    def push(self, loss: torch.Tensor, n: int) -> None:
        self.pending.append(loss.detach())
        self.sizes.append(n)

    def flush(self) -> None:
        if not self.pending:
            if self.dist.is_distributed:
                self._agree(-1, math.nan)
            return
        values = torch.stack(self.pending).float().cpu().tolist()  # the one host sync
        bad_step, bad_value = -1, math.nan
        for i, v in enumerate(values):
            if not math.isfinite(v):
                bad_step, bad_value = self.first_step + i, v
                break
        if self.dist.is_distributed:
            self._agree(bad_step, bad_value)
        elif bad_step >= 0:
            self._raise(bad_step, bad_value)
        self.loss_sum += sum(v * n for v, n in zip(values, self.sizes, strict=True))
        self.count += sum(self.sizes)
        self.last_mean = sum(values) / len(values)
        self.first_step += len(values)
        self.pending.clear()
        self.sizes.clear()

    def _agree(self, bad_step: int, bad_value: float) -> None:
        # Every rank must leave the loop at the same step, or the others hang in DDP's
        # gradient all-reduce: the earliest bad step over all ranks wins.
        big = 2**62
        step = self.dist.all_reduce_min_int(bad_step if bad_step >= 0 else big)
        if step != big:
            self._raise(step, bad_value if step == bad_step else math.nan)

    def _raise(self, step: int, value: float) -> None:
        self.pending.clear()
        raise NonFiniteLossError(
            f"training loss is {value} at epoch {self.epoch}, step {step} (0-based within the "
            f"epoch); lower the learning rate, enable gradient clipping (optim.grad_clip) or "
            f"check the input data",
            epoch=self.epoch,
            step=step,
            value=value,
        )


def train_epoch(
    step_fn: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    settings: LoopSettings,
    epoch: int,
    dist: DistContext,
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    targets: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
    on_window: Callable[[int, float], None] | None = None,
) -> tuple[float, int]:
    """Trains for one pass over ``loader``; returns (loss sum, samples) of this rank.

    ``step_fn(x, target) -> loss`` is a :class:`TrainStep` (possibly compiled).

    ``loss sum`` is the sum over batches of the batch-mean loss times the batch size.
    ``mix(x, y)`` (mixup/cutmix) returns the mixed batch and soft targets.
    ``targets(x, y, start)`` then builds the step's target from the batch the model sees
    (after augmentation and mixing) and ``start``, the batch's offset in the epoch's
    ``loader.indices()`` (knowledge distillation, :mod:`med_core.training.distill`).
    ``on_window(steps_done, mean_loss)`` is called after every host sync (progress bar).

    Raises:
        NonFiniteLossError: within ``CHECK_EVERY`` steps of the first NaN/inf loss.
    """
    s = settings
    step_fn.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    window = _LossWindow(epoch, dist)
    start = 0
    for step, (xb, yb) in enumerate(loader):
        x, y = _prepare(xb, yb, s)
        if mix is not None:
            x, y = mix(x, y)
        if targets is not None:
            y = targets(x, y, start)
        start += int(x.shape[0])
        optimizer.zero_grad(set_to_none=True)
        if s.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss = step_fn(x, y)
        if scaler is not None:
            scaler.scale(loss).backward()
            if s.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if s.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
            optimizer.step()
        scheduler.step()
        # A CUDA-graph output is overwritten by the next replay: keep a copy.
        window.push(loss.detach().clone() if s.cudagraphs else loss, int(x.shape[0]))
        del loss, x, y
        if (step + 1) % CHECK_EVERY == 0:
            window.flush()
            if on_window is not None:
                on_window(step + 1, window.last_mean)
    window.flush()
    optimizer.zero_grad(set_to_none=True)
    return window.loss_sum, window.count


@dataclass
class EvalOutput:
    """One rank's evaluation outputs, still on the device."""

    scores: torch.Tensor  # (n, C) probabilities, (n,) positive score for binary
    labels: torch.Tensor
    loss_sum: torch.Tensor  # scalar: summed per-sample loss


def _probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits) if task == MULTILABEL else torch.softmax(logits, dim=1)


def _flip_views(x: torch.Tensor) -> list[torch.Tensor]:
    return [x, x.flip(-1)]


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    settings: LoopSettings,
) -> EvalOutput:
    """Predicts every batch of ``loader``; nothing is copied to the host.

    With ``settings.tta`` the probabilities are averaged over the image and its
    horizontal flip, and the loss is the negative log-likelihood of the averaged
    probabilities; otherwise the loss is plain cross-entropy / BCE (no label smoothing).
    Binary scores are the softmax probability of class 1.
    """
    s = settings
    was_training = model.training
    model.eval()
    scores: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    loss_sum = torch.zeros((), dtype=torch.float64, device=s.device)
    try:
        for xb, yb in loader:
            x, y = _prepare(xb, yb, s)
            with s.autocast():
                if s.tta:
                    p = torch.stack([_probs(model(v), s.task) for v in _flip_views(x)]).mean(0)
                else:
                    logits = model(x).float()
                    p = _probs(logits, s.task)
            if s.tta:
                eps = 1e-12
                if s.task == MULTILABEL:
                    loss = F.binary_cross_entropy(p.clamp(eps, 1 - eps), y.float(), reduction="sum")
                else:
                    loss = F.nll_loss(p.clamp_min(eps).log(), y, reduction="sum")
            elif s.task == MULTILABEL:
                loss = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="sum")
                loss = loss / y.shape[1]  # mean over labels, summed over samples
            else:
                loss = F.cross_entropy(logits, y, reduction="sum")
            if s.tta and s.task == MULTILABEL:
                loss = loss / y.shape[1]
            loss_sum += loss.double()
            scores.append(p[:, 1] if s.task == "binary" else p)
            labels.append(y)
    finally:
        model.train(was_training)
    if not scores:
        dev = s.device
        width = () if s.task == "binary" else (s.num_classes,)
        ldtype = torch.float32 if s.task == MULTILABEL else torch.int64
        lshape = (0, s.num_classes) if s.task == MULTILABEL else (0,)
        return EvalOutput(
            torch.zeros((0, *width), device=dev),
            torch.zeros(lshape, dtype=ldtype, device=dev),
            loss_sum,
        )
    return EvalOutput(torch.cat(scores), torch.cat(labels), loss_sum)
