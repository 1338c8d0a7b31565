"""Validated parameter specs of a search space: one frozen dataclass per ``type``.

The loader (:mod:`medauto.space._loader`) builds these after checking every key, so the
methods here trust their fields. Optuna is imported only by :meth:`Param.distribution`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar

from medauto.space._schema import Scalar
from medauto.space._schema import same_value

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.trial import BaseTrial

__all__ = [
    "UNSET",
    "fmt_value",
    "CategoricalParam",
    "Condition",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "Param",
]


class _Unset:
    """Marks an absent ``otherwise`` (``None`` is a valid value, so it cannot mark absence)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


_CHECKPOINT_LABELS = {None: "'off'", 0: "'default'"}


def fmt_value(v: Any, field: str = "") -> str:
    if field == "model.checkpoint_segments" and not isinstance(v, bool):
        label = _CHECKPOINT_LABELS.get(v)
        if label is not None:
            return label
    return "null" if v is None else repr(v)


@dataclass(frozen=True)
class Condition:
    """``param``'s value is one of ``values`` (and ``param`` itself is active)."""

    param: str
    values: tuple[Scalar, ...]

    def holds(self, active: Mapping[str, Any]) -> bool:
        """Whether the condition holds for the values of the active params so far."""
        return self.param in active and any(same_value(active[self.param], v) for v in self.values)

    def describe(self) -> str:
        vals = ", ".join(fmt_value(v) for v in self.values)
        return f"{self.param} in [{vals}]"


@dataclass(frozen=True, kw_only=True)
class Param:
    """One entry of ``params:``.

    Attributes:
        name: The name Optuna sees (``"optim.lr"``, or ``"model.checkpoint_segments@resnet"``
            for one of several conditional variants of the same field).
        field: The TrainConfig dotted field the value goes to.
        when: Conditions that must all hold for the param to be active (sampled).
        otherwise: The field's value while the param is inactive; :data:`UNSET` keeps the
            value from ``fixed`` or the base config.
    """

    kind: ClassVar[str] = ""
    name: str
    field: str
    when: tuple[Condition, ...] = ()
    otherwise: Any = UNSET

    def is_active(self, active: Mapping[str, Any]) -> bool:
        """Whether every condition holds, given the values of the params active so far."""
        return all(c.holds(active) for c in self.when)

    def values(self) -> Sequence[Scalar] | None:
        """Every value the param can take, or ``None`` when that set is continuous."""
        raise NotImplementedError

    def extremes(self) -> tuple[Scalar, ...]:
        """The values that bound what the param can produce (checked against TrainConfig)."""
        vals = self.values()
        return tuple(vals) if vals is not None else ()

    def can_take(self, value: Any) -> bool:
        """Whether ``value`` is one the param can produce."""
        vals = self.values()
        return vals is not None and any(same_value(value, v) for v in vals)

    def sample(self, trial: BaseTrial) -> Any:
        """Asks ``trial`` for a value under :attr:`name` (a fixed param asks nothing)."""
        raise NotImplementedError

    def distribution(self) -> BaseDistribution | None:
        """The Optuna distribution; ``None`` for a fixed param (never sent to Optuna)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for :meth:`SearchSpace.summary`."""
        raise NotImplementedError

    def _spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The normalised spec (every key explicit), as it would be written in YAML."""
        out: dict[str, Any] = {"type": self.kind, **self._spec()}
        if self.when:
            out["when"] = {c.param: list(c.values) for c in self.when}
        if self.otherwise is not UNSET:
            out["otherwise"] = self.otherwise
        return out


@dataclass(frozen=True, kw_only=True)
class CategoricalParam(Param):
    """One of ``choices`` (order matters to Optuna: it stores the index)."""

    kind: ClassVar[str] = "categorical"
    choices: tuple[Scalar, ...]

    def values(self) -> Sequence[Scalar]:
        return self.choices

    def sample(self, trial: BaseTrial) -> Any:
        return trial.suggest_categorical(self.name, list(self.choices))

    def distribution(self) -> BaseDistribution:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(list(self.choices))

    def describe(self) -> str:
        return "categorical [" + ", ".join(fmt_value(c, self.field) for c in self.choices) + "]"

    def _spec(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}


@dataclass(frozen=True, kw_only=True)
class IntParam(Param):
    """An integer in ``[low, high]`` on the grid ``low + k*step``, optionally log-uniform."""

    kind: ClassVar[str] = "int"
    low: int
    high: int
    step: int = 1
    log: bool = False

    def values(self) -> Sequence[int]:
        return range(self.low, self.high + 1, self.step)

    def extremes(self) -> tuple[int, ...]:
        return (self.low, self.high)

    def can_take(self, value: Any) -> bool:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # a condition on an int param of a float field (rotation: 30)
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )

    def sample(self, trial: BaseTrial) -> Any:
        return trial.suggest_int(self.name, self.low, self.high, step=self.step, log=self.log)

    def distribution(self) -> BaseDistribution:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def describe(self) -> str:
        extra = " log" if self.log else (f" step {self.step}" if self.step != 1 else "")
        return f"int [{self.low}, {self.high}]{extra}"

    def _spec(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "step": self.step, "log": self.log}


@dataclass(frozen=True, kw_only=True)
class FloatParam(Param):
    """A float in ``[low, high]``: uniform, log-uniform, or on the grid ``low + k*step``."""

    kind: ClassVar[str] = "float"
    low: float
    high: float
    step: float | None = None
    log: bool = False

    def values(self) -> Sequence[float] | None:
        if self.step is None:
            return None
        n = round((self.high - self.low) / self.step)
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def extremes(self) -> tuple[float, ...]:
        return (self.low, self.high)

    def can_take(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step
        return math.isclose(k, round(k), abs_tol=1e-9)

    def sample(self, trial: BaseTrial) -> Any:
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def distribution(self) -> BaseDistribution:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def describe(self) -> str:
        extra = " log" if self.log else (f" step {self.step:g}" if self.step is not None else "")
        return f"float [{self.low:g}, {self.high:g}]{extra}"

    def _spec(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "step": self.step, "log": self.log}


@dataclass(frozen=True, kw_only=True)
class FixedParam(Param):
    """A constant, set only while the param's conditions hold (never sent to Optuna)."""

    kind: ClassVar[str] = "fixed"
    value: Scalar

    def values(self) -> Sequence[Scalar]:
        return (self.value,)

    def sample(self, trial: BaseTrial) -> Any:
        return self.value

    def distribution(self) -> None:
        return None

    def describe(self) -> str:
        return f"fixed {fmt_value(self.value, self.field)}"

    def _spec(self) -> dict[str, Any]:
        return {"value": self.value}
