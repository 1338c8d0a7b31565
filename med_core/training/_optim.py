"""Optimizer and per-batch learning-rate schedules (private: no compatibility promise).

Every schedule is a :class:`torch.optim.lr_scheduler.LambdaLR` driven by
:class:`LrMultiplier`, a plain callable object (no closure), so the scheduler's
``state_dict`` holds only numbers and strings and loads with ``weights_only=True``.
The multiplier for optimizer step ``s`` (0-based, counted over the whole run) is:

* warm-up (``s < W``, ``W = round(warmup_epochs * steps_per_epoch)``): ``(s + 1) / W``,
  a linear ramp whose first step already trains at ``lr / W``;
* ``constant``: 1;
* ``cosine``: ``0.5 * (1 + cos(pi * (s - W) / (T - W)))`` down towards 0 at the last step;
* ``step``: ``gamma ** (s // (step_size * steps_per_epoch))``, i.e. decays every
  ``step_size`` epochs;
* ``onecycle``: a cosine rise from ``1/25`` to 1 over the warm-up (30 % of the run when
  ``warmup_epochs`` is 0), then a cosine fall to ``1/25e4`` (the shape of
  :class:`torch.optim.lr_scheduler.OneCycleLR`; momentum is not cycled).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from med_core.config import OptimConfig

__all__ = ["LrMultiplier", "build_optimizer", "build_scheduler", "param_groups"]

_ONECYCLE_DIV = 25.0
_ONECYCLE_FINAL_DIV = 1e4


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: weights with decay; biases and norm parameters (ndim <= 1) without."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    params: nn.Module | Iterable[Any], cfg: OptimConfig, *, device_type: str = "cpu"
) -> torch.optim.Optimizer:
    """Builds the optimizer named by ``cfg.optimizer``.

    Weight decay applies to weights only (see :func:`param_groups`) when ``params`` is a
    module. SGD uses Nesterov momentum whenever ``momentum > 0``. On CUDA the fused
    implementations of Adam/AdamW/SGD are used (one kernel per step instead of one per
    parameter tensor).

    Raises:
        ValueError: for an unknown optimizer name (the config validates it already).
    """
    groups = param_groups(params, cfg.weight_decay) if isinstance(params, nn.Module) else params
    fused: dict[str, Any] = {"fused": True} if device_type == "cuda" else {}
    name = cfg.optimizer
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
            **fused,
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"unknown optimizer {name!r}; expected adamw, adam, sgd or rmsprop")


class LrMultiplier:
    """The learning-rate factor of global step ``s`` (see the module docstring).

    A plain object rather than a closure: ``LambdaLR.state_dict`` stores its ``__dict__``
    (numbers and a string), which stays loadable with ``weights_only=True``.
    """

    def __init__(
        self,
        kind: str,
        *,
        total_steps: int,
        warmup_steps: int,
        steps_per_epoch: int,
        step_size: int = 30,
        gamma: float = 0.1,
    ) -> None:
        if kind not in ("cosine", "onecycle", "step", "constant"):
            raise ValueError(
                f"unknown scheduler {kind!r}; expected cosine, onecycle, step or constant"
            )
        self.kind = kind
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = min(max(0, int(warmup_steps)), self.total_steps)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.step_size = int(step_size)
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        s = min(step, self.total_steps - 1)
        if self.kind == "onecycle":
            return self._onecycle(s)
        w = self.warmup_steps
        if s < w:
            return (s + 1) / w
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.gamma ** (s // (self.step_size * self.steps_per_epoch))
        # cosine
        span = max(1, self.total_steps - w)
        return 0.5 * (1.0 + math.cos(math.pi * (s - w) / span))

    def _onecycle(self, s: int) -> float:
        up = self.warmup_steps or max(1, round(0.3 * self.total_steps))
        lo = 1.0 / _ONECYCLE_DIV
        end = lo / _ONECYCLE_FINAL_DIV
        if s < up:
            t = s / up
            return lo + (1.0 - lo) * 0.5 * (1.0 - math.cos(math.pi * t))
        t = (s - up) / max(1, self.total_steps - up - 1)
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, *, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-batch schedule: call ``scheduler.step()`` after every optimizer step."""
    mult = LrMultiplier(
        cfg.scheduler,
        total_steps=epochs * steps_per_epoch,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        step_size=cfg.step_size,
        gamma=cfg.gamma,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, mult)
