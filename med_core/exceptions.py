"""Exception types raised by med_core.

Every error derives from :class:`MedCoreError`; where a builtin type fits, the subclass
also derives from it, so code that already catches ``ValueError`` keeps working.
"""

from __future__ import annotations

from typing import Any


class MedCoreError(Exception):
    """Base class of every error med_core raises on purpose."""


class ConfigError(MedCoreError, ValueError):
    """A configuration value or key is invalid (names the key, the rule and the value).

    The message is for people; callers that need the parts read the fields instead of
    parsing the text.

    Args:
        message: The message; default ``"<key>: must be <rule>, got <value!r>"``.
        key: The dotted key the error is about (``"optim.lr"``), or ``None`` when it is
            about no single key (malformed YAML, several unknown keys).
        rule: What the value must be (``"a number > 0"``), or ``None``.
        value: The offending value (meaningful when ``rule`` is set).

    Raises:
        TypeError: neither a message nor a key and a rule.

    Example:
        >>> e = ConfigError(key="optim.lr", rule="a number > 0", value=-1)
        >>> str(e), e.key, e.rule, e.value
        ('optim.lr: must be a number > 0, got -1', 'optim.lr', 'a number > 0', -1)
    """

    def __init__(
        self, message: str | None = None, *, key: str | None = None, rule: str | None = None,
        value: Any = None,
    ) -> None:
        if message is None:
            if key is None or rule is None:
                raise TypeError("ConfigError needs a message, or a key and a rule")
            message = f"{key}: must be {rule}, got {value!r}"
        super().__init__(message)
        self.key = key
        self.rule = rule
        self.value = value

    def nested_in(self, prefix: str) -> ConfigError:
        """The same error seen from the enclosing group: key and message under ``prefix``
        (``"optim."``)."""
        return ConfigError(f"{prefix}{self}", key=None if self.key is None else prefix + self.key,
                           rule=self.rule, value=self.value)

    def from_source(self, source: str) -> ConfigError:
        """The same error, its message naming the ``source`` (a file) it came from."""
        return ConfigError(f"{source}: {self}", key=self.key, rule=self.rule, value=self.value)


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
