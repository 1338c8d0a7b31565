"""The one place where medauto touches Optuna's private names.

Optuna has no public API for three things medauto needs: the heartbeat contract of a
storage (``optuna.storages._heartbeat.BaseHeartbeat``), the storage and id behind a
``Study``/``Trial`` (``study._storage``, ``study._study_id``, ``trial._trial_id``), and the
heartbeat rows and trial-creation hook of ``RDBStorage`` (``_create_new_trial``,
``scoped_session``, ``models.TrialHeartbeatModel``); for type hints only, the
``ArtifactStore`` protocol (``optuna.artifacts._protocol``). Every use goes through a function of
this module, so an Optuna upgrade that renames one breaks here, in one file, and the
tests of ``tests/medauto/storage`` (which run Optuna's own storage suite against medauto's
storages) say so.

Supported Optuna versions: ``>=5.0,<6`` (the pin in ``pyproject.toml``). Checked against
the installed 5.0.0 (tests) and the 4.5.0 wheel's source (read, not run): every private
name used here exists in both, but 4.5 lacks public names medauto relies on —
``RetryHeartbeatStaleTrialCallback``, ``BaseHeartbeat.get_heartbeat_stale_trial_callback``
and RDBStorage's ``heartbeat_stale_trial_callback`` (4.x calls them ``failed_trial_*``) —
and ``optuna.testing.pytest_storages`` (Optuna's storage suite, which
``tests/medauto/storage/test_optuna_storage_suite.py`` imports) is not shipped before 5.0.
``<6``: the next major version may rename any private name used here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import cast

from optuna.storages._heartbeat import BaseHeartbeat

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts._protocol import ArtifactStore  # the type of every artifact store
    from optuna.storages import BaseStorage
    from optuna.storages import RDBStorage

    class HeartbeatStorage(BaseStorage, BaseHeartbeat):
        """For type checking only: a storage that implements the heartbeat contract."""

__all__ = [
    "ArtifactStore",
    "BaseHeartbeat",
    "HeartbeatHooks",
    "RDBCreateHook",
    "heartbeat_storage",
    "rdb_heartbeat_ages",
    "stale_trial_ids",
    "study_id",
    "study_storage",
    "trial_id",
]


class HeartbeatHooks(BaseHeartbeat):
    """``BaseHeartbeat`` with its private stale-trial query mapped to a public method.

    A subclass implements ``stale_trial_ids(study_id)``; Optuna (``fail_stale_trials``,
    ``Study.optimize``) calls ``_get_stale_trial_ids``, which is routed to it.
    """

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """Ids of the study's RUNNING trials that count as stale (see docs/distributed.md)."""
        raise NotImplementedError

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)


class RDBCreateHook:
    """Mixin for an ``RDBStorage`` subclass that must see every trial it creates.

    Optuna's ``_CachedStorage`` (which wraps every RDB storage a ``Study`` uses) creates
    trials through ``RDBStorage._create_new_trial``, not ``create_new_trial``; this mixin
    routes both through the public hook :meth:`prepare_template`.
    """

    def prepare_template(
        self, template: optuna.trial.FrozenTrial | None
    ) -> optuna.trial.FrozenTrial | None:
        """Returns the template the new trial is created from (default: unchanged)."""
        return template

    def _create_new_trial(
        self, study_id: int, template_trial: optuna.trial.FrozenTrial | None = None
    ) -> optuna.trial.FrozenTrial:
        return super()._create_new_trial(  # type: ignore[misc]
            study_id, self.prepare_template(template_trial)
        )

def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage object behind ``study`` (Optuna's ``Study._storage``)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study`` (Optuna's ``Study._study_id``)."""
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (Optuna's ``_trial_id``), which ``Trial.number`` is not."""
    return trial._trial_id


def heartbeat_storage(study: optuna.Study) -> HeartbeatStorage | None:
    """The study's storage if it implements the heartbeat contract and has it enabled."""
    storage = study._storage
    if isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval():
        return cast("HeartbeatStorage", storage)
    return None


def stale_trial_ids(storage: BaseHeartbeat, sid: int) -> list[int]:
    """Ids of the study's RUNNING trials the storage counts as stale (``_get_stale_trial_ids``)."""
    return list(storage._get_stale_trial_ids(sid))


def rdb_heartbeat_ages(storage: RDBStorage, sid: int) -> dict[int, float]:
    """``trial id -> seconds since its last heartbeat`` for the study's RUNNING trials that
    have a heartbeat row, measured on the database server's clock (as Optuna does)."""
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    session = storage.scoped_session()
    try:
        now = session.execute(sqlalchemy.func.now()).scalar()
        assert now is not None
        now = now.replace(tzinfo=None)
        beat = models.TrialHeartbeatModel
        rows = (
            session.query(beat.trial_id, beat.heartbeat)
            .join(models.TrialModel, models.TrialModel.trial_id == beat.trial_id)
            .filter(models.TrialModel.study_id == sid)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .all()
        )
        return {int(tid): (now - beat.replace(tzinfo=None)).total_seconds() for tid, beat in rows}
    finally:
        session.rollback()
        session.close()
