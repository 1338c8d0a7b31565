"""A budget always ends with a model: the final model of a search where no trial completed.

When every trial of a search was pruned (a budget whose time ran out mid-trial, an
aggressive pruner), :func:`medauto.final.build_final` has no completed candidate. Rather
than ending with "no completed trial" and nothing to use, it takes the **best partial
trial**: the PRUNED medauto trial (one with a stored ``config``) whose best reported value
is the best of the study (ties: the earlier trial). :func:`train_partial` trains its
configuration again on the train split for the epochs it had trained (its
``pruned_at_epoch``; a trial pruned between cross-validation folds trained whole folds,
so its configured epochs), keeps the best validation epoch's weights, and saves it as a
candidate in the trial's member folder (:mod:`medauto.members`), scored on the validation
split. The final model built from it says so loudly (``final.json``'s ``partial`` and a
warning). Nothing here reads the test split.

Example:
    >>> import optuna
    >>> best_partial_trial(optuna.create_study()) is None
    True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.keys import CONFIG_ATTR
from medauto.keys import PRUNED_AT_EPOCH_ATTR
from medauto.keys import PRUNED_AT_FOLD_ATTR
from medauto.logging import get_logger
from medauto.members import Candidate
from medauto.members import member_dir
from medauto.members import model_path
from medauto.members import save_selection_scores
from medauto.results import ranked_trials

if TYPE_CHECKING:
    import optuna

    from med_core.data import MedicalDataset

__all__ = ["best_partial_trial", "partial_value", "stand_in", "train_partial"]

_logger = get_logger(__name__)


def partial_value(trial: optuna.trial.FrozenTrial, maximize: bool) -> float | None:
    """The best finite value a trial reported (``None``: it reported none)."""
    values = [v for v in trial.intermediate_values.values() if v is not None and math.isfinite(v)]
    if not values:
        return None
    return max(values) if maximize else min(values)


def best_partial_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The PRUNED medauto trial with the best reported value (``None``: there is none)."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    maximize = study.direction == StudyDirection.MAXIMIZE
    ranked = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        value = partial_value(t, maximize)
        if value is not None and isinstance(t.user_attrs.get(CONFIG_ATTR), dict):
            ranked.append(((-value if maximize else value), t.number, t))
    return min(ranked, key=lambda r: r[:2])[2] if ranked else None


def stand_in(study: optuna.Study) -> dict[str, Any]:
    """``{"trial", "value"}`` of the best partial trial when no medauto trial completed,
    the trial a budget's retrain uses instead; ``{}`` otherwise."""
    from optuna.study import StudyDirection

    trial = None if ranked_trials(study) else best_partial_trial(study)
    if trial is None:
        return {}
    return {"trial": trial.number,
            "value": partial_value(trial, study.direction == StudyDirection.MAXIMIZE)}


def _epochs(trial: optuna.trial.FrozenTrial, configured: int) -> int:
    if PRUNED_AT_FOLD_ATTR in trial.user_attrs:  # whole folds were trained
        return configured
    ran = trial.user_attrs.get(PRUNED_AT_EPOCH_ATTR) or len(trial.intermediate_values)
    return max(1, min(int(ran), configured))


def train_partial(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    dataset: MedicalDataset,
    *,
    run_dir: str | Path,
    device: str = "cpu",
) -> tuple[Candidate, dict[str, Any]]:
    """Trains ``trial``'s configuration as a final-model candidate (module docstring).

    Returns:
        The candidate (selection set: the validation split) and what was done
        (``trial``, ``state``, ``value``, ``epochs``, ``note``), for ``final.json``.
    """
    from optuna.study import StudyDirection

    from med_core.config import TrainConfig
    from med_core.training import Trainer
    from med_core.training.callbacks import KeepBestWeights
    from medauto.model_file import save_model
    from medauto.preprocessing import Preprocessing

    base = TrainConfig.from_dict(trial.user_attrs[CONFIG_ATTR])
    epochs = _epochs(trial, base.epochs)
    cfg = TrainConfig.from_flat({"epochs": epochs}, base=base)
    value = partial_value(trial, study.direction == StudyDirection.MAXIMIZE)
    note = (f"no trial completed: the final model is the best partial trial {trial.number} "
            f"({trial.state.name.lower()}, best reported value {value:.4f}), trained again "
            f"for the {epochs} epoch(s) it had trained; it was never scored by a full trial")
    _logger.warning("%s", note)
    keeper = KeepBestWeights()
    trainer = Trainer(cfg, dataset=dataset, device=device, callbacks=[keeper], progress=False)
    try:
        trainer.fit()
        keeper.restore(trainer)
        y, score = trainer.predict("val", tta=cfg.tta)
        info = dataset.info
        folder = member_dir(run_dir, study.study_name, trial.number)
        path = model_path(folder, 0)
        size = cfg.data.img_size or list(info.image_size)
        save_model(path, trainer.model, cfg, task=info.task, num_classes=info.num_classes,
                   in_chans=info.in_chans, spatial_dims=info.spatial_dims, img_size=size,
                   class_names=list(info.class_names), dataset=info.name, fold=0,
                   trial=trial.number, partial=True,
                   preprocessing=Preprocessing.for_dataset(info, size))
        save_selection_scores(folder, y=y, score=score, kind="val")
    finally:
        trainer.close()
    candidate = Candidate(trial=trial.number, value=float(value),  # type: ignore[arg-type]
                          backbone=cfg.model.backbone, models=(path,), y=y, score=score,
                          kind="val")
    return candidate, {"trial": trial.number, "state": trial.state.name, "value": value,
                       "epochs": epochs, "note": note}
