"""Training: the :class:`Trainer`, its callbacks, metrics and distributed helpers.

Example:
    >>> from med_core.training import compute_metrics
    >>> compute_metrics("multi-class", [0, 1, 2], [[.8, .1, .1], [.2, .7, .1], [.1, .2, .7]])["acc"]
    1.0
"""

from __future__ import annotations

from med_core.training._checkpoint import load_checkpoint as load_checkpoint
from med_core.training._distributed import DistContext as DistContext
from med_core.training._distributed import launch as launch
from med_core.training.callbacks import Callback as Callback
from med_core.training.callbacks import KeepBestWeights as KeepBestWeights
from med_core.training.distill import Distillation as Distillation
from med_core.training.early_stopping import EarlyStopping as EarlyStopping
from med_core.training.metrics import compute_metrics as compute_metrics
from med_core.training.trainer import History as History
from med_core.training.trainer import Trainer as Trainer

__all__ = [
    "Callback",
    "DistContext",
    "Distillation",
    "EarlyStopping",
    "History",
    "KeepBestWeights",
    "Trainer",
    "compute_metrics",
    "launch",
    "load_checkpoint",
]
