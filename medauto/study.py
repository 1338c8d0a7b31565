"""Create, resume and join medauto studies; the study's settings live in its user attributes.

A study created by ``medauto search`` (or :class:`~medauto.AutoMLOptimizer`) stores what
any worker needs to join it — the search space, the data spec, the metric and the trial
target — as study user attributes, so ``medauto worker --study NAME --storage URL`` needs
nothing else. Resuming with a different search space, metric or data raises
:class:`~medauto.exceptions.StudyConflictError` instead of mixing incompatible trials.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from medauto.algorithms import process_seed
from medauto.exceptions import MedautoError
from medauto.exceptions import StudyConflictError
from medauto.fingerprint import CV_FOLDS
from medauto.fingerprint import Selection
from medauto.keys import SETTINGS_ATTR
from medauto.logging import get_logger
from medauto.storage import worker_id

__all__ = [
    "StudySettings",
    "load_existing_study",
    "load_settings",
    "load_settings_dict",
    "open_study",
    "stored_selection",
    "validate_study_name",
]

#: What a study name may be: it names files and folders under ``--run-dir`` (retrain,
#: report), so it must be one path component, not a path.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@+=-]{0,127}")


def validate_study_name(name: str) -> str:
    """Returns ``name`` if it is a study name, not a path.

    One to 128 characters: letters, digits and ``._-@+=``, starting with a letter, digit
    or ``_`` (so never ``..``, ``/``, ``\\``, a leading ``-`` or ``.``, or whitespace).

    Raises:
        MedautoError: the name is not valid (the message names the rule and the value).

    Example:
        >>> validate_study_name("breastmnist-fast")
        'breastmnist-fast'
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise MedautoError(
            f"study name {name!r} is not a valid name: use 1-128 letters, digits and "
            "'._-@+=', starting with a letter, digit or '_', without '..' or path "
            "separators (e.g. breastmnist-fast)"
        )
    return name

_logger = get_logger(__name__)


@dataclass(frozen=True)
class StudySettings:
    """What defines a medauto study (stored as the ``medauto:settings`` user attribute).

    Args:
        space: The search space as a plain dict (``SearchSpace.to_dict()``).
        fingerprint: ``SearchSpace.fingerprint()``; two spaces with equal fingerprints
            propose the same configurations.
        data: The dataset spec (a MedMNIST name, or a path as the workers see it).
        metric: The monitored validation metric (e.g. ``"val_auc"``).
        direction: ``"maximize"`` or ``"minimize"``.
        n_trials: Finished (complete + pruned) trials the study aims for.
        selection: How trials are scored (``"holdout"`` or ``"cv"``, as resolved when the
            study was created), so every worker scores them alike; ``"auto"`` (studies from
            before it was stored) lets each worker decide from the data.
        folds: The folds of ``"cv"`` as resolved when the study was created (a budget may
            have stepped them down from :data:`~medauto.fingerprint.CV_FOLDS`), so a joining
            worker trains the same folds; ``None`` for holdout, and for studies from before
            it was stored (they used ``CV_FOLDS``).
    """

    space: dict[str, Any]
    fingerprint: str
    data: str
    metric: str
    direction: str
    n_trials: int
    selection: str = "auto"
    folds: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "fingerprint": self.fingerprint,
            "data": self.data,
            "metric": self.metric,
            "direction": self.direction,
            "n_trials": self.n_trials,
            "selection": self.selection,
            "folds": self.folds,
        }


def load_settings_dict(study: optuna.Study) -> dict[str, Any]:
    """The study's stored settings as a plain dict; ``{}`` for a study medauto did not create
    (for readers that only show what is there, e.g. the metric name)."""
    raw = study.user_attrs.get(SETTINGS_ATTR)
    return dict(raw) if isinstance(raw, dict) else {}


def load_settings(study: optuna.Study) -> StudySettings:
    """Reads the settings a medauto study was created with.

    Raises:
        MedautoError: the study was not created by medauto.
    """
    raw = study.user_attrs.get(SETTINGS_ATTR)
    if not isinstance(raw, dict):
        raise MedautoError(
            f"study {study.study_name!r} has no medauto settings; create it with "
            "`medauto search` (or AutoMLOptimizer.optimize()) before starting workers"
        )
    return StudySettings(**raw)


def _check_compatible(name: str, stored: StudySettings, wanted: StudySettings) -> None:
    clashes = [
        f"{key}: study has {getattr(stored, key)!r}, this run asks for {getattr(wanted, key)!r}"
        for key in ("fingerprint", "data", "metric", "direction")
        if getattr(stored, key) != getattr(wanted, key)
    ]
    if clashes:
        raise StudyConflictError(
            f"study {name!r} already exists with different settings ("
            + "; ".join(clashes)
            + "). Use another --study name, or the same search space/data/metric to resume."
        )


def open_study(
    name: str,
    storage: optuna.storages.BaseStorage,
    settings: StudySettings,
    *,
    sampler: optuna.samplers.BaseSampler | Callable[..., optuna.samplers.BaseSampler] | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    seed: int | None = None,
) -> optuna.Study:
    """Creates the study, or resumes it if it exists with compatible settings.

    A resumed study takes the new ``n_trials`` target (so ``--trials 20`` after a finished
    ``--trials 10`` runs 10 more).

    Args:
        name: The study name (:func:`validate_study_name`).
        storage: An open storage (:func:`medauto.storage.open_storage`).
        settings: What defines the study.
        sampler: A sampler, or a factory called as ``factory(seed=...)`` (e.g. a partial
            of :func:`medauto.algorithms.make_sampler`): a factory is called with this
            process's seed (:func:`medauto.algorithms.process_seed` of ``seed``) once it is
            known whether this process created the study and how many trials it holds.
        pruner: The pruner.
        seed: The user's sampler seed, used with a sampler factory.

    Raises:
        MedautoError: ``name`` is not a valid study name.
        StudyConflictError: the study exists with another space, data, metric or direction.
    """
    validate_study_name(name)
    factory: Callable[..., optuna.samplers.BaseSampler] | None = None
    fixed: optuna.samplers.BaseSampler | None = None
    if sampler is None or isinstance(sampler, optuna.samplers.BaseSampler):
        fixed = sampler
    else:
        factory = sampler
    study, created = _create_or_resume(name, storage, settings, fixed, pruner)
    if factory is not None:
        n = len(study.get_trials(deepcopy=False))
        study.sampler = factory(
            seed=process_seed(seed, created=created, trials_so_far=n, worker=worker_id())
        )
    return study


def _create_or_resume(
    name: str,
    storage: optuna.storages.BaseStorage,
    settings: StudySettings,
    sampler: optuna.samplers.BaseSampler | None,
    pruner: optuna.pruners.BasePruner | None,
) -> tuple[optuna.Study, bool]:
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction=optuna.study.StudyDirection[settings.direction.upper()],
        )
        study.set_user_attr(SETTINGS_ATTR, settings.to_json())
        _name_metric(study, settings.metric)
        _logger.info("created study %r", name)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    stored = load_settings(study)
    _check_compatible(name, stored, settings)
    if stored.n_trials != settings.n_trials:
        study.set_user_attr(SETTINGS_ATTR, settings.to_json())
    if study.metric_names is None:  # a study from before the metric was named
        _name_metric(study, stored.metric)
    done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    _logger.info("resuming study %r (%d trials already finished)", name, done)
    return study, False


def stored_selection(storage: optuna.storages.BaseStorage, name: str) -> Selection | None:
    """The :class:`~medauto.fingerprint.Selection` study ``name`` was created with (mode and
    folds); ``None`` if there is no such study, or it predates the stored selection."""
    for summary in storage.get_all_studies():
        if summary.study_name == name:
            raw = summary.user_attrs.get(SETTINGS_ATTR)
            raw = raw if isinstance(raw, dict) else {}
            mode = raw.get("selection")
            if mode == "holdout":
                return Selection("holdout")
            if mode == "cv":
                return Selection("cv", folds=int(raw.get("folds") or CV_FOLDS))
            return None
    return None


def _name_metric(study: optuna.Study, metric: str) -> None:
    """Names the objective ``metric`` (``Study.set_metric_names``: the dashboard's axes and
    the study's ``trials_dataframe`` read it instead of "Objective 0")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])


def load_existing_study(
    name: str | None, storage: optuna.storages.BaseStorage, *, where: str = "this storage"
) -> optuna.Study:
    """Loads the study ``name``; ``None`` → the storage's only study (as Optuna's
    ``load_study(study_name=None)``), so one study needs no name.

    Args:
        name: The study name, or ``None``.
        storage: An open storage.
        where: The storage as messages name it (e.g. its redacted URL).

    Raises:
        MedautoError: no such study, no study at all, or several and no ``name`` (the
            message lists the studies the storage does hold).
    """
    names = optuna.get_all_study_names(storage)
    if name is None:
        if not names:
            raise MedautoError(f"{where} holds no study")
        if len(names) > 1:
            raise MedautoError(f"{where} holds {len(names)} studies: {names}; pass --study NAME")
        name = names[0]
    if name not in names:
        raise MedautoError(f"no study named {name!r} in {where}; studies: {names}")
    return optuna.load_study(study_name=name, storage=storage)
