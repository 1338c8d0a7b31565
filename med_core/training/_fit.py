"""The state of one :meth:`~med_core.training.Trainer.fit` and the helpers of its steps:
mixing a batch, freeing the frames of a caught error, and per-epoch seeds."""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from med_core.training._loop import LoopSettings
from med_core.training.callbacks import Callback

__all__: list[str] = []


@dataclass
class _FitState:
    """Everything that only lives during fit(); dropped as a whole afterwards."""

    train_module: nn.Module
    eval_module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    train_loader: Any
    val_loader: Any
    settings: LoopSettings
    callbacks: list[Callback]
    mix_generator: torch.Generator | None
    targets: Any = None  # the distillation's per-batch targets (train_epoch's ``targets``)


def _mix(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    multilabel: bool,
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    from med_core.data import mix_batch

    y1 = y.float() if multilabel else torch.nn.functional.one_hot(y, num_classes).float()
    return mix_batch(  # type: ignore[no-any-return]
        x, y1, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, generator=generator
    )


def _clear_frames(tb: Any) -> None:
    # The traceback of an OOM or NaN error keeps every frame's locals alive (batches,
    # activations via the autograd graph). Clearing the finished inner frames lets the
    # caller retry with less memory while still holding the exception.
    try:
        traceback.clear_frames(tb)
    except RuntimeError:  # pragma: no cover - an executing frame; nothing else to free
        pass


def _stream_seed(seed: int, rank: int, epoch: int) -> int:
    return ((seed * 1_000_003 + rank) * 10_007 + epoch) % (2**63)


def _seed_everything(seed: int) -> None:
    """Seeds torch (CPU and CUDA), NumPy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)
