"""Knowledge distillation: a student trained on a teacher's soft targets (Hinton et al., 2015).

Pass a :class:`Distillation` to the :class:`~med_core.training.Trainer`
(``Trainer(cfg, distill=Distillation(teacher, DistillConfig(...)))``). The training loss
of each batch becomes :func:`kd_loss`::

    alpha * T**2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, y)

with ``T`` the temperature and ``x_T`` a distribution softened by ``T``
(``softmax(log p / T)``; per label ``sigmoid(logit p / T)`` for multi-label tasks). The
``T**2`` keeps the gradient scale of the soft term independent of ``T``. Validation,
early stopping and the best epoch are unchanged: they read the student's own metrics.

The teacher is any callable ``teacher(x) -> probabilities``: ``x`` is a batch exactly as
the training loader yields it (normalised float, the student's size, on the device) and
the result is ``(B, C)`` class probabilities (softmax rows; per-label sigmoids for
multi-label), ``C`` the student's output width. An ensemble fits behind it as well as one
network (``medauto.distill`` wraps the search's final predictor this way).

Where the soft targets come from (decided once, in :meth:`Distillation.prepare`):

* ``"cached"``: when a training batch is a fixed function of its samples (no
  augmentation, no mixup/cutmix), the teacher runs **once** over the training split, in
  sample order, before the first epoch; the result is kept on the device and each batch
  takes its rows by sample index (the loader's ``indices()``, which lists the epoch's
  samples in yield order). The teacher is never called again, whatever the epoch count.
* ``"on_the_fly"``: with augmentation or mixing every epoch shows each sample differently,
  so a cached target would describe another image. The teacher is then called inside the
  training step on the very tensor the student receives (after augmentation and mixing,
  under ``torch.no_grad()``), so both see the same augmented batch.

Under DDP every rank caches the whole split (its training shard may hold any sample).

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0]])
    >>> target = pack_targets(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]))
    >>> round(float(kd_loss(logits, target, task="binary", temperature=1.0, alpha=0.0)), 4)
    0.1269
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from med_core.config import DistillConfig
from med_core.exceptions import ConfigError
from med_core.training._loop import MULTILABEL
from med_core.training._loop import LoopSettings
from med_core.training._loop import TrainStep

if TYPE_CHECKING:
    from med_core.training.trainer import Trainer

__all__ = ["CACHED", "ON_THE_FLY", "Distillation", "DistillStep", "Teacher", "kd_loss",
           "pack_targets"]

#: A teacher: a normalised batch as the loader yields it → ``(B, C)`` probabilities.
Teacher = Callable[[torch.Tensor], torch.Tensor]

#: :attr:`Distillation.mode` when the teacher ran once over the training split.
CACHED = "cached"
#: :attr:`Distillation.mode` when the teacher runs on every (augmented) training batch.
ON_THE_FLY = "on_the_fly"

_EPS = 1e-7


def pack_targets(hard: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """One target tensor ``(B, 2, C)``: the labels as probabilities, then the teacher's.

    ``hard`` is one-hot (or mixup-mixed) ``(B, C)``; for multi-label tasks the 0/1 labels.
    """
    return torch.stack([hard.float(), teacher.float()], dim=1)


def _soften(p: torch.Tensor, temperature: float, *, multilabel: bool) -> torch.Tensor:
    p = p.clamp(_EPS, 1 - _EPS) if multilabel else p.clamp_min(_EPS)
    if multilabel:
        return torch.sigmoid(torch.logit(p) / temperature)
    return torch.softmax(p.log() / temperature, dim=1)


def kd_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    task: str,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The batch-mean distillation loss (see the module docstring).

    Args:
        logits: The student's ``(B, C)`` logits.
        target: :func:`pack_targets`'s ``(B, 2, C)``.
        task: The task type; ``"multi-label"`` uses per-label Bernoulli terms.
        temperature: ``T`` (> 0).
        alpha: Weight of the distillation term in [0, 1].
        label_smoothing: Of the hard-label term (as in plain training).

    Returns:
        A scalar: per sample, ``alpha * T**2 * KL + (1 - alpha) * CE`` (multi-label: both
        averaged over labels), averaged over the batch.
    """
    z = logits.float()
    hard, teacher = target[:, 0], target[:, 1]
    t = float(temperature)
    if task == MULTILABEL:
        y = hard * (1.0 - label_smoothing) + 0.5 * label_smoothing
        ce = F.binary_cross_entropy_with_logits(z, y)
        q = _soften(teacher, t, multilabel=True)
        # Bernoulli KL(q || sigmoid(z/T)) = BCE(z/T, q) - H(q), per label.
        entropy = -(q * q.log() + (1 - q) * (1 - q).clamp_min(_EPS).log())
        kl = (F.binary_cross_entropy_with_logits(z / t, q, reduction="none") - entropy).mean()
    else:
        ce = F.cross_entropy(z, hard, label_smoothing=label_smoothing)
        q = _soften(teacher, t, multilabel=False)
        kl = F.kl_div(F.log_softmax(z / t, dim=1), q, reduction="batchmean")
    return alpha * t * t * kl + (1.0 - alpha) * ce


class DistillStep(TrainStep):
    """The training step of a distilled student: :class:`TrainStep` with :func:`kd_loss`."""

    def __init__(self, model: nn.Module, settings: LoopSettings, cfg: DistillConfig) -> None:
        super().__init__(model, settings)
        self.temperature = cfg.temperature
        self.alpha = cfg.alpha

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """:func:`kd_loss` of the batch."""
        return kd_loss(logits, target, task=self.task, temperature=self.temperature,
                       alpha=self.alpha, label_smoothing=self.label_smoothing)


class Distillation:
    """A teacher and its :class:`~med_core.config.DistillConfig`, handed to the Trainer.

    Args:
        teacher: See :data:`Teacher`; it is called under ``torch.no_grad()``.
        cfg: Temperature and mixing weight.
        cache_batch_size: Batch size of the one caching pass over the training split.

    Attributes:
        mode: :data:`CACHED` or :data:`ON_THE_FLY` once a fit started, else ``None``.
        teacher_calls: Calls of the teacher so far.
        teacher_samples: Samples the teacher has predicted so far.
    """

    def __init__(self, teacher: Teacher, cfg: DistillConfig | None = None, *,
                 cache_batch_size: int = 256) -> None:
        self.teacher = teacher
        self.cfg = cfg if cfg is not None else DistillConfig()
        self.cache_batch_size = cache_batch_size
        self.mode: str | None = None
        self.teacher_calls = 0
        self.teacher_samples = 0
        self._cache: torch.Tensor | None = None
        self._order: torch.Tensor | None = None

    def step(self, model: nn.Module, settings: LoopSettings) -> DistillStep:
        """The training step module the trainer compiles and calls."""
        return DistillStep(model, settings, self.cfg)

    def _predict(self, x: torch.Tensor, num_classes: int) -> torch.Tensor:
        with torch.no_grad():
            p = self.teacher(x)
        self.teacher_calls += 1
        self.teacher_samples += int(x.shape[0])
        if p.ndim != 2 or p.shape[0] != x.shape[0] or p.shape[1] != num_classes:
            raise ConfigError(
                f"distill teacher: must return (batch, {num_classes}) probabilities for a "
                f"batch of {tuple(x.shape)}, got shape {tuple(p.shape)}"
            )
        return p.to(x.device, torch.float32)

    def prepare(self, trainer: Trainer, train_loader: object,
                settings: LoopSettings) -> Callable[[torch.Tensor, torch.Tensor, int],
                                                    torch.Tensor]:
        """Chooses the mode, fills the cache when it applies, and returns the per-batch
        target function (``train_epoch``'s ``targets``).

        Args:
            trainer: The trainer (its ``dataset``, ``cfg`` and ``torch_device`` are read).
            train_loader: The fit's training loader (its ``augment`` and ``indices()``).
            settings: The fit's loop settings.
        """
        from med_core.data import build_loader

        c = settings.num_classes
        multilabel = settings.task == MULTILABEL
        cached = getattr(train_loader, "augment", None) is None and not settings.mixing
        self.mode = CACHED if cached else ON_THE_FLY
        if cached and self._cache is None:
            ds, cfg = trainer.dataset, trainer.cfg
            assert ds is not None  # the trainer loaded it before building the fit state
            loader = build_loader(
                ds.split("train"), batch_size=self.cache_batch_size, train=False,
                device=trainer.torch_device, augment=None, seed=cfg.seed, mode=cfg.data.loader,
                img_size=cfg.data.img_size, num_workers=0, spatial_dims=ds.info.spatial_dims,
            )
            self._cache = torch.cat([self._predict(x, c) for x, _ in loader])

        def hard_targets(y: torch.Tensor) -> torch.Tensor:
            if multilabel or y.ndim == 2:  # multi-label 0/1, or mixup's soft targets
                return y.float()
            return F.one_hot(y, c).float()

        def targets(x: torch.Tensor, y: torch.Tensor, start: int) -> torch.Tensor:
            if self._cache is not None and self.mode == CACHED:
                idx = train_loader.indices()[start : start + x.shape[0]]  # type: ignore[attr-defined]
                soft = self._cache.index_select(0, idx.to(self._cache.device))
            else:
                soft = self._predict(x, c)
            return pack_targets(hard_targets(y), soft)

        return targets
