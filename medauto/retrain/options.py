"""What to retrain and how: one frozen, validated option set (:class:`RetrainOptions`).

The CLI (``medauto retrain``), :meth:`medauto.AutoMLOptimizer.retrain` and
:func:`medauto.retrain.retrain` all pass one :class:`RetrainOptions`: the choices, their
defaults and their rules live here only. Where a run happens (device, data folder, run
folder, output folder, tracking, deadline) is not an option of the retrain and stays an
argument of :func:`~medauto.retrain.retrain`.

Example:
    >>> RetrainOptions(ensemble=2, seeds=(0, 1)).kept_weights
    'best'
    >>> RetrainOptions(train_on_val=True).kept_weights
    'last'
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import fields
from dataclasses import replace
from typing import Any

from medauto.exceptions import MedautoError

__all__ = ["ENSEMBLE_SELECT", "QUANT_METHODS", "TTA_MODES", "WEIGHTS", "RetrainOptions"]

#: Flip test-time augmentation: each trial's searched setting, forced on, forced off, or
#: chosen per model on its validation AUC (on only if strictly better).
TTA_MODES = ("trial", "on", "off", "auto")
#: Which epoch's weights are kept: ``auto`` is ``last`` with ``train_on_val``, else ``best``.
WEIGHTS = ("auto", "best", "last")
#: Ensemble size: all ``ensemble`` members, or the best ``j <= ensemble`` on validation AUC.
ENSEMBLE_SELECT = ("fixed", "val")
#: int8 quantization of the best model (QAT needs a fine-tuning loop: not offered here).
QUANT_METHODS = ("static", "dynamic")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RetrainOptions:
    """How :func:`medauto.retrain.retrain` retrains and tests (validated on creation).

    Args:
        ensemble: Retrain the top-k COMPLETE trials and average their test scores.
        ensemble_select: ``"fixed"`` uses all ``ensemble`` members; ``"val"`` the best
            ``j <= ensemble``, ``j`` chosen on mean validation AUC over seeds.
        tta: One of :data:`TTA_MODES`.
        seeds: Training seeds; each seed retrains every selected trial (mean ± std over
            them; the MedMNIST protocol uses 3).
        train_on_val: Train on train+val (``DataConfig.train_on_val``).
        weights: One of :data:`WEIGHTS`.
        quantize: ``None``, or one of :data:`QUANT_METHODS`: also quantize the best trial's
            model of the first seed (:func:`medauto.retrain.quantize_retrained`).
        calibration_batches: Training batches for static calibration (>= 1).
        latency_batch_size: Batch size of the latency measurement.
        latency_iters: Timed calls per latency figure.
        latency_threads: CPU threads while timing (``None``: the current setting).
        latency_compile: Also time Inductor-compiled float and int8 models.
        partial: With no completed trial, retrain the best pruned one (the best value it
            reported; :func:`medauto.partial.best_partial_trial`) and say so, instead of
            failing. A budgeted search sets it: a budget always ends with a model.

    Raises:
        MedautoError: an option breaks its rule (the message names option, rule and value).
    """

    ensemble: int = 1
    ensemble_select: str = "fixed"
    tta: str = "trial"
    seeds: tuple[int, ...] = (0,)
    train_on_val: bool = False
    weights: str = "auto"
    quantize: str | None = None
    calibration_batches: int = 8
    latency_batch_size: int = 32
    latency_iters: int = 20
    latency_threads: int | None = 1
    latency_compile: bool = False
    partial: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        self._check_choices()
        if not _is_int(self.ensemble) or self.ensemble < 1:
            raise MedautoError(f"ensemble must be an integer >= 1, got {self.ensemble!r}")
        if not self.seeds or any(not _is_int(s) or s < 0 for s in self.seeds):
            raise MedautoError(
                f"seeds must be a non-empty list of integers >= 0, got {list(self.seeds)!r}"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise MedautoError(f"seeds must be distinct, got {list(self.seeds)}")
        for name in ("calibration_batches", "latency_batch_size", "latency_iters"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise MedautoError(f"{name} must be an integer >= 1, got {value!r}")
        if self.train_on_val and (self.tta == "auto" or self.ensemble_select == "val"):
            raise MedautoError(
                "tta='auto' and ensemble_select='val' choose on the validation split, which "
                "train_on_val trains on; set them explicitly instead"
            )
        if self.weights == "best" and self.train_on_val:
            raise MedautoError(
                "weights='best' selects the epoch on validation, which train_on_val trains "
                "on; use weights='last' (the default with train_on_val)"
            )

    def _check_choices(self) -> None:
        for name, choices in (("tta", TTA_MODES), ("weights", WEIGHTS),
                              ("ensemble_select", ENSEMBLE_SELECT)):
            if getattr(self, name) not in choices:
                raise MedautoError(
                    f"{name} must be one of {choices}, got {getattr(self, name)!r}"
                )
        if self.quantize is not None and self.quantize not in QUANT_METHODS:
            raise MedautoError(
                f"quantize must be one of {QUANT_METHODS} or None, got {self.quantize!r} (QAT "
                "needs a fine-tuning loop: use med_core.optimization.quantize_model(..., "
                "'qat') directly)"
            )

    @property
    def kept_weights(self) -> str:
        """``"best"`` or ``"last"``: :attr:`weights` with ``"auto"`` resolved."""
        if self.weights != "auto":
            return self.weights
        return "last" if self.train_on_val else "best"

    def updated(self, **changes: Any) -> RetrainOptions:
        """A copy with ``changes`` applied (validated again).

        Raises:
            MedautoError: an unknown option name, or a changed option breaks its rule.
        """
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise MedautoError(f"unknown retrain option(s) {unknown}; known: {sorted(names)}")
        return replace(self, **changes)
