"""Saving, checking and restoring the trainer's per-epoch checkpoints (private).

Functions that take the :class:`~med_core.training.Trainer` as their first argument, in
the way ``optuna/study/_tell.py`` serves ``Study``: the facade keeps the state, this
module knows the checkpoint layout (see ``docs/training.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from med_core.config import TrainConfig
from med_core.exceptions import CheckpointError
from med_core.training import _checkpoint as ckpt_io
from med_core.training._history import History
from med_core.training.callbacks import Callback

if TYPE_CHECKING:
    from med_core.training._fit import _FitState
    from med_core.training.trainer import Trainer

__all__ = ["best_payload", "callback_keys", "load_resume_checkpoint", "restore", "save_epoch"]

_logger = logging.getLogger(__name__)

# Config keys that may differ between a checkpoint and the resuming run: they change
# where data comes from or how fast it is fed, not what is computed.
_RESUME_IGNORED_KEYS = frozenset({"data.data_dir", "data.num_workers"})


def load_resume_checkpoint(trainer: Trainer, resume: bool | str | Path) -> dict[str, Any] | None:
    """The checkpoint ``fit(resume=...)`` continues from, or ``None`` to start fresh.

    Raises:
        CheckpointError: unreadable file, not a ``last`` checkpoint, or another config.
    """
    if resume is False:
        return None
    if resume is True:
        if trainer.out_dir is None:
            raise ValueError("fit(resume=True) needs out_dir (or pass a checkpoint path)")
        path = Path(trainer.out_dir) / "last.pt"
        if not path.is_file():
            _logger.info("no checkpoint at %s; starting from scratch", path)
            return None
    else:
        path = Path(resume)
    ckpt = ckpt_io.load_checkpoint(path)
    if ckpt.get("kind") != "last":
        raise CheckpointError(
            f"{str(path)!r} is a {ckpt.get('kind')!r} checkpoint; resume needs a 'last' "
            f"checkpoint (last.pt), which holds the optimizer and RNG states"
        )
    mine = TrainConfig.from_dict(ckpt["config"]).flatten()
    ours = trainer.cfg.flatten()
    diff = sorted(k for k in ours if ours[k] != mine.get(k) and k not in _RESUME_IGNORED_KEYS)
    if diff:
        details = ", ".join(f"{k}: {mine.get(k)!r} -> {ours[k]!r}" for k in diff)
        raise CheckpointError(
            f"{str(path)!r} was written for a different config ({details}); resume with "
            f"the same config or start a new run"
        )
    _logger.info("resuming from %s after epoch %d", path, ckpt["epoch"])
    return ckpt


def callback_keys(callbacks: Sequence[Callback]) -> list[str]:
    """Stable keys of callback states: the class name, ``Name#1`` for a second one."""
    seen: dict[str, int] = {}
    keys = []
    for cb in callbacks:
        name = type(cb).__qualname__
        n = seen.get(name, 0)
        seen[name] = n + 1
        keys.append(name if n == 0 else f"{name}#{n}")
    return keys


def save_epoch(trainer: Trainer, state: _FitState, history: History, *, improved: bool) -> None:
    """Writes ``last.pt`` (and ``best.pt`` when ``improved``) on rank 0.

    Collective under DDP: every rank contributes its RNG state, then waits for the write.
    """
    dist = trainer.dist
    rng = dist.all_gather_object(ckpt_io.capture_rng_state())
    loaders = dist.all_gather_object(_loader_state(state.train_loader))
    if dist.is_main_process:
        out = Path(trainer.out_dir)  # type: ignore[arg-type]
        model_state = trainer.model.state_dict()
        if improved:
            ckpt_io.save_checkpoint(out / "best.pt", best_payload(trainer, model_state, history))
        keys = callback_keys(state.callbacks)
        payload = {
            "format_version": ckpt_io.FORMAT_VERSION,
            "kind": "last",
            "config": trainer.cfg.to_dict(),
            "epoch": trainer._epoch,
            "world_size": dist.world_size,
            "model": model_state,
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else None,
            "history": history.to_dict(),
            "callbacks": {k: cb.state_dict() for k, cb in zip(keys, state.callbacks, strict=True)},
            "rng": rng,
            "loaders": loaders,
        }
        ckpt_io.save_checkpoint(out / "last.pt", payload)
    dist.barrier()


def best_payload(trainer: Trainer, model_state: dict[str, Any], history: History) -> dict[str, Any]:
    """``best.pt``: weights plus what is needed to rebuild and describe the model."""
    info = trainer._ensure_dataset().info
    return {
        "format_version": ckpt_io.FORMAT_VERSION,
        "kind": "best",
        "config": trainer.cfg.to_dict(),
        "model": model_state,
        "epoch": history.best_epoch,
        "monitor": history.monitor,
        "metric": history.best_metric,
        "task": info.task,
        "num_classes": info.num_classes,
        "in_chans": info.in_chans,
        "class_names": list(info.class_names),
    }


def restore(trainer: Trainer, ckpt: dict[str, Any], state: _FitState) -> None:
    """Loads model, optimizer, schedule, scaler, epoch, history, callbacks and RNG."""
    dist = trainer.dist
    try:
        trainer.model.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.scheduler.load_state_dict(ckpt["scheduler"])
        if state.scaler is not None and ckpt.get("scaler") is not None:
            state.scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint does not match the model/optimizer: {e}") from e
    trainer._epoch = int(ckpt["epoch"])
    trainer.history = History.from_dict(ckpt["history"])
    states = ckpt.get("callbacks", {})
    keys = callback_keys(state.callbacks)
    for key, cb in zip(keys, state.callbacks, strict=True):
        if key in states:
            cb.load_state_dict(states[key])
        else:
            _logger.warning("no saved state for callback %s; it starts fresh", key)
    rng, loaders = ckpt["rng"], ckpt.get("loaders") or []
    if ckpt["world_size"] != dist.world_size:
        _logger.warning(
            "checkpoint was written by %d rank(s), resuming on %d: RNG streams differ, so "
            "the run will not match an uninterrupted one exactly",
            ckpt["world_size"],
            dist.world_size,
        )
    r = dist.rank if dist.rank < len(rng) else 0
    ckpt_io.restore_rng_state(rng[r])
    if r < len(loaders) and loaders[r] is not None:
        state.train_loader.load_state_dict(loaders[r])


def _loader_state(loader: Any) -> Any:
    fn = getattr(loader, "state_dict", None)
    return fn() if callable(fn) else None
