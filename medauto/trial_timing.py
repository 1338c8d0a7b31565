"""Fitting trials to a budget: time a fit's first two epochs, project the rest.

* :class:`EpochProbe` times a fit's first two epochs (the first carries one-off set-up);
  as a plain probe it then stops the fit, with a cap it stops it only if the configured
  epochs would not fit (:class:`medauto.objective.Objective` then trains again with the
  :func:`fit_epochs` that do).
* :func:`probe_epochs` is the plain probe; :func:`quick_probe` runs it on a few batches
  and scales the timing to the whole. :func:`budgeted_selection` uses both to keep k-fold
  selection only where a budget pays for its folds
  (:func:`medauto.fingerprint.affordable_selection`), and refuses a budget that cannot
  train one epoch before the study is created.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

from med_core.training.callbacks import Callback
from medauto.fingerprint import MIN_CV_FOLDS
from medauto.fingerprint import MIN_FOLD_EPOCH_SHARE
from medauto.fingerprint import Selection
from medauto.fingerprint import affordable_selection
from medauto.logging import get_logger
from medauto.worker import timed

if TYPE_CHECKING:
    from med_core.config import TrainConfig
    from med_core.data import MedicalDataset
    from medauto.budget import BudgetPlan
    from medauto.space import SearchSpace

__all__ = ["FULL_PROBE_CAP_SHARE", "PROBED", "QUICK_PROBE_BATCHES", "QUICK_PROBE_MIN_BATCHES",
           "EpochProbe", "budgeted_selection", "fit_epochs", "probe_epochs", "quick_probe",
           "timing_key"]

_logger = get_logger(__name__)

#: Stop reason of the epoch probe (it always stops after timing two epochs).
PROBED = "epoch_probe"

#: Batches of a fold's training split that :func:`quick_probe` times, two epochs of them.
#: A volumetric epoch on a CPU takes minutes (r3d_18, 28³, batch 32: 15 s to 27 s a step,
#: 32 steps), which a whole two-epoch probe spent before the search's first trial; two
#: batches took 128 s of a 2-minute budget. Scaled from one batch, BreastMNIST's epoch
#: time (batch 16, 31 batches) read 17-20 % under the whole probe's (from two: within
#: 10 %): close enough to say that a budget cannot train one epoch, and to choose folds
#: where the whole probe would cost too much.
QUICK_PROBE_BATCHES = 1
#: A training split of at most this many batches is timed whole (BreastMNIST's folds: 7.8
#: at batch 64), where a sample would save little and cost one more model build.
QUICK_PROBE_MIN_BATCHES = 8
#: The whole two-epoch probe follows the quick one where it is projected to cost at most
#: this share of a trial cap; above it the scaled quick timing is used.
FULL_PROBE_CAP_SHARE = 0.25


class EpochProbe(Callback):
    """Times the first two epochs of a fit; stops it there if it would not fit ``cap_s``.

    The first epoch carries one-off set-up (model build, kernel selection), so a fit of
    ``E`` epochs projects to ``first + (E - 1) * second``. With ``cap_s=None`` (a pure
    probe, :func:`probe_epochs`) the fit always stops after two epochs; with a cap it runs
    on when the projection fits, so a trial that fits pays nothing for being timed.
    """

    def __init__(self, cap_s: float | None = None) -> None:
        self.cap_s = cap_s
        self.first_s: float | None = None
        self.epoch_s: float | None = None
        self.over = False
        self._mark = 0.0

    def on_fit_start(self, trainer: Any) -> None:
        self._mark = time.monotonic()

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if epoch == 0:
            self.first_s = now - self._mark
        elif epoch == 1:
            self.epoch_s = now - self._mark
        self._mark = now
        if self.cap_s is None:
            if epoch >= 1 or trainer.cfg.epochs <= 2:
                trainer.request_stop(PROBED)
        elif epoch == 1 and self.projected(trainer.cfg.epochs) > self.cap_s:
            self.over = True
            trainer.request_stop(PROBED)

    def projected(self, epochs: int) -> float:
        """Seconds a fit of ``epochs`` epochs would take, from the timings so far."""
        first = self.first_s or 0.0
        return first + (epochs - 1) * (self.epoch_s if self.epoch_s is not None else first)


def timing_key(cfg: TrainConfig, folds: int) -> tuple[Any, ...]:
    """What sets an epoch's time under ``folds``-fold selection (1: holdout): two
    configurations with one key (a seed repeat, the same network at another learning rate
    or with mixup) are timed once."""
    return (cfg.model.backbone, cfg.model.checkpoint_segments, cfg.batch_size,
            cfg.data.img_size, cfg.amp_dtype, cfg.channels_last, cfg.compile, folds)


def fit_epochs(epochs: int, first_s: float, epoch_s: float, cap_s: float) -> int:
    """The most epochs (1 to ``epochs``) whose projected time fits ``cap_s``.

    Example:
        >>> fit_epochs(100, first_s=5.0, epoch_s=1.0, cap_s=50.0)
        46
    """
    return max(1, min(epochs, int((cap_s - first_s) / max(epoch_s, 1e-9)) + 1))


def probe_epochs(
    cfg: TrainConfig, dataset: MedicalDataset, device: str, **trainer_kwargs: Any
) -> tuple[float, float] | None:
    """Times the first two epochs of ``cfg`` on ``dataset``: ``(first_s, epoch_s)``.

    The first epoch carries one-off set-up, so a fit of ``E`` epochs projects to
    ``first_s + (E - 1) * epoch_s``. Returns ``None`` if no epoch finished.
    """
    from med_core.training import Trainer

    probe = EpochProbe()
    trainer = Trainer(cfg, dataset=dataset, device=device, callbacks=[probe], progress=False,
                      epoch_log_level=logging.DEBUG, log_prefix="epoch probe: ",
                      **trainer_kwargs)
    try:
        trainer.fit()
    finally:
        trainer.close()
    if probe.first_s is None:
        return None
    return probe.first_s, probe.epoch_s if probe.epoch_s is not None else probe.first_s


def _sample(dataset: MedicalDataset, share: float, seed: int) -> MedicalDataset:
    """A stratified ``share`` of ``dataset``'s train and val splits (test left empty)."""
    from med_core.data import MedicalDataset
    from med_core.data import stratified_split

    def take(split: Any) -> Any:
        pick = stratified_split(split.labels, val_fraction=share, test_fraction=0.0, seed=seed)
        return split.subset(pick["val"])

    return MedicalDataset(dataset.info, train=take(dataset.train), val=take(dataset.val),
                          test=dataset.test.subset(np.arange(0)))


def _sampled(cfg: TrainConfig, dataset: MedicalDataset) -> bool:
    """Whether :func:`quick_probe` times a sample of ``dataset`` (else all of it)."""
    return len(dataset.train) > QUICK_PROBE_MIN_BATCHES * cfg.batch_size


def quick_probe(cfg: TrainConfig, dataset: MedicalDataset, device: str
                ) -> tuple[float, float] | None:
    """:func:`probe_epochs` on about :data:`QUICK_PROBE_BATCHES` batches of ``dataset``
    (a stratified sample of train and val alike), scaled to the whole: ``(first_s,
    epoch_s)``. The first epoch's set-up is not scaled: ``first_s`` is the sample's first
    epoch plus the rest of a whole epoch. A dataset of at most
    :data:`QUICK_PROBE_MIN_BATCHES` batches is timed whole; ``None`` if no epoch finished.
    An epoch of volumes that takes minutes on a CPU is so timed in seconds, and the search
    can say up front that a budget cannot train it.
    """
    if not _sampled(cfg, dataset):
        return probe_epochs(cfg, dataset, device)
    # half a batch more than wanted, so per-class rounding still gives the full batches
    share = (QUICK_PROBE_BATCHES + 0.5) * cfg.batch_size / len(dataset.train)
    sample = _sample(dataset, share, seed=cfg.seed)
    timing = probe_epochs(cfg, sample, device)
    if timing is None:
        return None
    first_s, epoch_s = timing
    scale = len(dataset.train) / len(sample.train)
    return first_s + (scale - 1.0) * epoch_s, scale * epoch_s


def _probe(cfg: TrainConfig, fold: MedicalDataset, device: str, name: str,
           trial_cap_s: float) -> tuple[float, float] | None:
    """A portfolio entry's fold timing: the quick probe, then the whole two-epoch probe
    where it costs at most :data:`FULL_PROBE_CAP_SHARE` of the trial cap."""
    quick = quick_probe(cfg, fold, device)
    if quick is None or not _sampled(cfg, fold):
        return quick
    full_probe_s = quick[0] + quick[1]
    if full_probe_s <= FULL_PROBE_CAP_SHARE * trial_cap_s:
        return probe_epochs(cfg, fold, device)
    _logger.info(
        "selection probe: %s timed on %d batch(es) of a fold's %d training images and scaled: "
        "%.1f s, then %.1f s per epoch (two whole epochs would take over %.0f%% of the "
        "%.0f s trial cap)", name, QUICK_PROBE_BATCHES, len(fold.train), quick[0], quick[1],
        100 * FULL_PROBE_CAP_SHARE, trial_cap_s)
    return quick


def budgeted_selection(
    selection: Selection, space: SearchSpace, dataset: MedicalDataset, device: str,
    trial_cap_s: float, *, plan: BudgetPlan | None = None,
) -> Selection:
    """``selection``, with fewer folds, or holdout: what the budget can pay for.

    Times two epochs of each of the space's portfolio entries on one fold (:func:`_probe`:
    on a few batches first, :func:`quick_probe`, so that an epoch of minutes does not
    spend the budget before the search starts; in portfolio order, each
    :func:`timing_key` once) and asks :func:`medauto.fingerprint.affordable_selection` for
    each: the folds kept are those that every entry, the slowest included, can train. The
    first entry that cannot train even :data:`medauto.fingerprint.MIN_CV_FOLDS` folds
    decides for holdout, and the rest are not timed. A space without a portfolio, or
    holdout, is returned as it is.

    Raises:
        BudgetError: given the ``plan``, no entry timed can train one epoch of holdout
            (its first epoch on the whole training split) in the plan's search time.
    """
    from med_core.data import cross_validation_folds

    if selection.mode != "cv" or not space.portfolio:
        return selection
    _, fold = next(iter(cross_validation_folds(dataset, selection.folds, seed=selection.seed)))
    timings: dict[tuple[Any, ...], tuple[float, float] | None] = {}
    too_slow: tuple[str, float, int] | None = None  # (entry, holdout's first epoch s, batch)
    trainable = False
    for entry in space.portfolio:
        cfg = space.config_from_params(entry.params)
        key = timing_key(cfg, selection.folds)
        if key not in timings:
            with timed("selection_probe", -1):
                timings[key] = _probe(cfg, fold, device, entry.name, trial_cap_s)
        timing = timings[key]
        if timing is None:
            continue
        scale = len(dataset.train) / len(fold.train)
        first_holdout_s = timing[0] + (scale - 1.0) * timing[1]
        if plan is None or first_holdout_s <= plan.search_s:
            trainable = True
        elif too_slow is None:
            too_slow = (entry.name, first_holdout_s, cfg.batch_size)
        kept = affordable_selection(selection, epochs=cfg.epochs, first_s=timing[0],
                                    epoch_s=timing[1], trial_cap_s=trial_cap_s)
        if kept == selection:
            continue
        _logger.info(
            "selection: %d folds of %s would each train %.0f s of a %.0f s trial cap "
            "(%.1f s, then %.2f s per epoch, %d epochs): fewer than %.0f%% of the epochs%s, "
            "so %s is used", selection.folds, entry.name, trial_cap_s / selection.folds,
            trial_cap_s, timing[0], timing[1], cfg.epochs, 100 * MIN_FOLD_EPOCH_SHARE,
            f" (and with {MIN_CV_FOLDS} folds)" if kept.mode == "holdout" else "",
            kept.describe())
        if kept.mode == "holdout":
            selection = kept
            break
        selection = kept
    if plan is not None and not trainable and too_slow is not None:
        _refuse(plan, dataset, device, *too_slow)
    return selection


def _refuse(plan: BudgetPlan, dataset: MedicalDataset, device: str, entry: str,
            first_s: float, batch_size: int) -> None:
    """Raises the :class:`~medauto.budget.BudgetError` of a budget that cannot train one
    epoch, with the budget that could (its search time twice that epoch)."""
    from medauto.budget import BudgetError
    from medauto.budget import format_seconds

    need = plan.budget_for_search(2.0 * first_s)
    raise BudgetError(
        f"--budget {format_seconds(plan.total_s)} leaves {plan.search_s:.0f} s of search, but "
        f"the first epoch of {entry} on {dataset.info.name} ({len(dataset.train)} training "
        f"images, batch {batch_size}) takes about {first_s:.0f} s on {device}: no trial could "
        f"train one epoch. Give a budget of at least {format_seconds(60 * math.ceil(need / 60))},"
        f" a faster device (--device cuda), or --trials N (no time limit)"
    )
