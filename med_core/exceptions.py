"""Exception types raised by med_core.

Every error derives from :class:`MedCoreError`; where a builtin type fits, the subclass
also derives from it, so code that already catches ``ValueError`` keeps working.
"""

from __future__ import annotations


class MedCoreError(Exception):
    """Base class of every error med_core raises on purpose."""


class ConfigError(MedCoreError, ValueError):
    """A configuration value or key is invalid (names the key, the rule and the value)."""


class UnknownBackboneError(MedCoreError, ValueError):
    """A backbone name is not registered (the message lists close matches)."""


class PretrainedWeightsError(MedCoreError, RuntimeError):
    """Pretrained weights were asked for but are not in the local cache and cannot be fetched."""


class DataError(MedCoreError, ValueError):
    """A dataset is missing, corrupt or inconsistent (the message names file and problem)."""


class NonFiniteLossError(MedCoreError, FloatingPointError):
    """The training loss became NaN or infinite."""

    def __init__(self, message: str, *, epoch: int, step: int, value: float) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.value = value


class CheckpointError(MedCoreError):
    """A checkpoint file is missing, corrupt, unsafe to load or does not match the model."""
