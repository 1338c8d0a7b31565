"""Fitting trials to a budget: time a fit's first two epochs, project the rest.

* :class:`EpochProbe` times a fit's first two epochs (the first carries one-off set-up);
  as a plain probe it then stops the fit, with a cap it stops it only if the configured
  epochs would not fit (:class:`medauto.objective.Objective` then trains again with the
  :func:`fit_epochs` that do).
* :func:`probe_epochs` is the plain probe; :func:`budgeted_selection` uses it to keep
  k-fold selection only where a budget pays for its folds
  (:func:`medauto.fingerprint.affordable_selection`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING
from typing import Any

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
    from medauto.space import SearchSpace

__all__ = ["PROBED", "EpochProbe", "budgeted_selection", "fit_epochs", "probe_epochs",
           "timing_key"]

_logger = get_logger(__name__)

#: Stop reason of the epoch probe (it always stops after timing two epochs).
PROBED = "epoch_probe"


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


def budgeted_selection(
    selection: Selection, space: SearchSpace, dataset: MedicalDataset, device: str,
    trial_cap_s: float,
) -> Selection:
    """``selection``, with fewer folds, or holdout: what the budget can pay for.

    Times two epochs of each of the space's portfolio entries on one fold
    (:func:`probe_epochs`, in portfolio order, each :func:`timing_key` once) and asks
    :func:`medauto.fingerprint.affordable_selection` for each: the folds kept are those
    that every entry, the slowest included, can train. The first entry that cannot train
    even :data:`medauto.fingerprint.MIN_CV_FOLDS` folds decides for holdout, and the rest
    are not timed. A space without a portfolio, or holdout, is returned as it is.
    """
    from med_core.data import cross_validation_folds

    if selection.mode != "cv" or not space.portfolio:
        return selection
    _, fold = next(iter(cross_validation_folds(dataset, selection.folds, seed=selection.seed)))
    timings: dict[tuple[Any, ...], tuple[float, float] | None] = {}
    for entry in space.portfolio:
        cfg = space.config_from_params(entry.params)
        key = timing_key(cfg, selection.folds)
        if key not in timings:
            with timed("selection_probe", -1):
                timings[key] = probe_epochs(cfg, fold, device)
        timing = timings[key]
        if timing is None:
            continue
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
            return kept
        selection = kept
    return selection
