"""Out of memory is never a wasted trial: train again with checkpointing, then a smaller batch.

:class:`OomLadder` runs a trial's training; when it runs out of device memory it trains
again one rung down (:func:`oom_fallback`): first with gradient checkpointing on at the
same batch (the backbone family's default memory budget: the same training at more
compute, so the trial stays the configuration the sampler asked for), then at half the
batch. It remembers, per process, what ran out of memory at which batch
(:func:`fit_key`), so a later trial of a configuration known not to fit starts at the
first rung that might. Every attempt is recorded in the trial's ``oom_retry`` user
attribute, and ``config`` holds what was really trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any

from medauto.keys import OOM_RETRY_ATTR
from medauto.logging import get_logger

if TYPE_CHECKING:
    import optuna

    from med_core.config import TrainConfig

__all__ = ["MAX_OOM_RETRIES", "OomLadder", "fit_key", "oom_fallback"]

_logger = get_logger(__name__)

#: The most times one trial is trained again after running out of memory.
MAX_OOM_RETRIES = 3


def oom_fallback(cfg: TrainConfig) -> TrainConfig | None:
    """The next configuration to try after ``cfg`` ran out of memory; ``None`` at batch 1
    with checkpointing already on."""
    from med_core.config import TrainConfig

    if cfg.model.checkpoint_segments is None:
        return TrainConfig.from_flat({"model.checkpoint_segments": 0}, base=cfg)
    if cfg.batch_size <= 1:
        return None
    return TrainConfig.from_flat({"batch_size": cfg.batch_size // 2}, base=cfg)


def fit_key(cfg: TrainConfig) -> tuple[Any, ...]:
    """What sets a step's memory besides the batch: a configuration that ran out of memory
    at some batch also does at any larger one."""
    return (cfg.model.backbone, cfg.model.checkpoint_segments, cfg.data.img_size,
            cfg.amp_dtype, cfg.channels_last, cfg.compile)


def _attempt(cfg: TrainConfig, error: str) -> dict[str, Any]:
    return {"batch_size": cfg.batch_size, "checkpoint_segments": cfg.model.checkpoint_segments,
            "error": error[:300]}


class OomLadder:
    """Trains a trial, one rung down after each out-of-memory error (see the module)."""

    def __init__(self) -> None:
        self._failed: dict[tuple[Any, ...], int] = {}  # fit_key → smallest batch that failed

    def run(self, trial: optuna.trial.BaseTrial, cfg: TrainConfig,
            train: Callable[[optuna.trial.BaseTrial, TrainConfig], float]) -> float:
        """``train(trial, cfg)``, retried down the ladder on out-of-memory errors.

        Raises:
            Exception: what ``train`` raised, when it is not an out-of-memory error, or
                when it is one on the last rung (after :data:`MAX_OOM_RETRIES` retries).
        """
        from med_core.device import is_oom
        from med_core.device import release_memory

        attempts: list[dict[str, Any]] = []
        cfg = self._known_to_fit(cfg, attempts)
        while True:
            if attempts:
                trial.set_user_attr(OOM_RETRY_ATTR, {
                    "batch_size": cfg.batch_size,
                    "checkpoint_segments": cfg.model.checkpoint_segments,
                    "first_error": attempts[0]["error"], "attempts": attempts})
            try:
                return train(trial, cfg)
            except Exception as exc:
                smaller = oom_fallback(cfg) if is_oom(exc) else None
                if smaller is None or len(attempts) >= MAX_OOM_RETRIES:
                    raise
                key = fit_key(cfg)
                self._failed[key] = min(cfg.batch_size, self._failed.get(key, cfg.batch_size))
                first = str(exc).splitlines()[0] if str(exc) else ""
                attempts.append(_attempt(cfg, f"{type(exc).__name__}: {first}"))
            # Outside the except block, so the failed attempt's frames and tensors can be freed.
            release_memory()
            _logger.warning(
                "trial %d ran out of memory at batch_size %d%s; retrying with %s",
                trial.number, cfg.batch_size,
                " with checkpointing" if cfg.model.checkpoint_segments is not None else "",
                "gradient checkpointing on" if cfg.model.checkpoint_segments is None
                else f"batch_size {smaller.batch_size}")
            cfg = smaller

    def _known_to_fit(self, cfg: TrainConfig, attempts: list[dict[str, Any]]) -> TrainConfig:
        """``cfg``, or the first rung not known to run out of memory (each rung skipped is
        added to ``attempts``, without training it)."""
        while len(attempts) < MAX_OOM_RETRIES:
            failed = self._failed.get(fit_key(cfg))
            smaller = oom_fallback(cfg)
            if failed is None or cfg.batch_size < failed or smaller is None:
                break
            attempts.append(_attempt(cfg, f"known: ran out of memory at batch_size {failed} "
                                          "in an earlier trial"))
            cfg = smaller
        return cfg
