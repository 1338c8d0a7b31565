"""The ``portfolio:`` section of a space: strong configurations tried before the sampler.

A portfolio (auto-sklearn 2.0, AutoGluon presets) is a short list of named, complete
configurations of the space. :meth:`medauto.AutoMLOptimizer.optimize` enqueues them
(``optuna.Study.enqueue_trial``) when it creates a study, so they are the first trials and
the sampler learns from them. Each entry gives a value for every param that is active
under its own choices, inside that param's range, so it is a point of the space; ``base``
names an earlier entry whose params it starts from::

    portfolio:
      - name: resnet18-recipe
        params: {model.backbone: resnet18, optim.optimizer: adamw, optim.lr@adaptive: 0.002,
                 ...}
      - name: resnet18-mixup
        base: resnet18-recipe
        params: {augment.mixup_alpha: 0.2}

Entries are validated when the space loads; a wrong name, a missing active param or a
value outside its range is refused with the file, the entry and the param.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

from medauto.exceptions import SearchSpaceError

if TYPE_CHECKING:
    from medauto.space._space import SearchSpace

__all__ = ["PortfolioEntry", "parse_portfolio"]


@dataclass(frozen=True)
class PortfolioEntry:
    """One named configuration of a space, as the Optuna params that produce it.

    Attributes:
        name: A short name (shown in the dashboard as the trial's ``portfolio`` attribute).
        params: Optuna param name → value; exactly the params active for these values.
    """

    name: str
    params: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The YAML form."""
        return {"name": self.name, "params": dict(self.params)}


def _fail(source: str, where: str, rule: str, got: Any) -> SearchSpaceError:
    return SearchSpaceError(f"{source}: portfolio{where}: must be {rule}, got {got!r}")


def _in_distribution(dist: Any, value: Any) -> bool:
    """Whether ``value`` lies in an Optuna distribution (public attributes only)."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return any(value == c and type(value) is type(c) or value is c for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not dist.low <= value <= dist.high:
        return False
    step = getattr(dist, "step", None)
    if step is None:
        return True
    k = (value - dist.low) / step
    return math.isclose(k, round(k), abs_tol=1e-6)


def parse_portfolio(raw: Any, space: SearchSpace) -> tuple[PortfolioEntry, ...]:
    """Validates a ``portfolio:`` list against ``space``.

    Raises:
        SearchSpaceError: not a list of ``{name, params}`` mappings, a duplicate name, or an
            entry that is not a complete point of the space.
    """
    source = space.source
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise _fail(source, "", "a list of {name, params} mappings", raw)
    dists = space.distributions()
    out: list[PortfolioEntry] = []
    for i, item in enumerate(raw):
        where = f"[{i}]"
        if not isinstance(item, Mapping) or not {"name", "params"} <= set(item) <= {
            "name", "base", "params"
        }:
            raise _fail(source, where, "a mapping with keys name, params and optional base",
                        item)
        name, params = item["name"], item["params"]
        if not isinstance(name, str) or not name.strip():
            raise _fail(source, f"{where}.name", "a non-empty string", name)
        if name in {e.name for e in out}:
            raise _fail(source, f"{where}.name", "unique", name)
        if not isinstance(params, Mapping):
            raise _fail(source, f"[{name}].params", "a mapping of param names to values", params)
        if "base" in item:
            bases = {e.name: e for e in out}
            if item["base"] not in bases:
                raise _fail(source, f"[{name}].base", f"an earlier entry {sorted(bases)}",
                            item["base"])
            params = {**bases[item["base"]].params, **params}
        params = {k: _normal(space, k, v, f"portfolio[{name}].params.{k}")
                  for k, v in params.items()}
        for key, value in params.items():
            if key in dists and not _in_distribution(dists[key], value):
                raise _fail(source, f"[{name}].params.{key}", f"inside {dists[key]}", value)
        try:
            space.config_from_params(params)
        except SearchSpaceError as e:
            raise SearchSpaceError(f"{source}: portfolio[{name}]: {e}") from None
        used = _active_names(space, params)
        extra = sorted(set(params) - used)
        if extra:
            raise _fail(source, f"[{name}].params", "only params active for its choices",
                        extra)
        out.append(PortfolioEntry(name=name, params=dict(params)))
    return tuple(out)


def _normal(space: SearchSpace, key: str, value: Any, path: str) -> Any:
    """The value as the space's params store it (``"off"`` → ``None`` for checkpointing)."""
    from medauto.space._schema import field_info
    from medauto.space._schema import normalize_value

    param = space.params.get(key)
    if param is None:
        return value  # config_from_params names the unknown param
    info = field_info(param.field, source=space.source, path=path)
    return normalize_value(info, value, source=space.source, path=path)


def _active_names(space: SearchSpace, params: Mapping[str, Any]) -> set[str]:
    """The params a trial with ``params`` would be asked for."""
    from optuna.trial import FixedTrial

    trial = FixedTrial(dict(params))
    space.suggest(trial)
    return set(trial.params)
