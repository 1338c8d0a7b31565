"""The :class:`SearchSpace` value object: validated spec → Optuna suggestions → TrainConfig."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from med_core.config import TrainConfig
from med_core.exceptions import ConfigError
from medauto.exceptions import SearchSpaceError
from medauto.space._loader import Fidelity
from medauto.space._loader import ParsedSpace
from medauto.space._loader import parse_space
from medauto.space._loader import read_yaml
from medauto.space._loader import resolve
from medauto.space._params import UNSET
from medauto.space._params import FixedParam
from medauto.space._params import Param
from medauto.space._params import fmt_value
from medauto.space._portfolio import PortfolioEntry
from medauto.space._portfolio import parse_portfolio
from medauto.space._schema import EPOCHS_FIELD
from medauto.space._schema import Scalar

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.trial import BaseTrial

__all__ = ["SearchSpace"]

_GRID_LIMIT = 10_000  # values per param that grid() will enumerate


class SearchSpace:
    """A validated search space: which TrainConfig fields a study samples, and how.

    Build one with :meth:`from_yaml` or :meth:`from_dict`; both validate the whole spec and
    raise :class:`~medauto.exceptions.SearchSpaceError` on the first problem. After that the
    space is immutable and every :meth:`suggest` yields a valid :class:`TrainConfig`
    (precedence: ``base`` < ``fixed`` < inactive params' ``otherwise`` < sampled values;
    with a ``fidelity`` section, ``epochs`` is always ``fidelity.max_epochs``).

    Parameter names given to Optuna are the dotted TrainConfig names (``"optim.lr"``), or
    ``"<field>@<variant>"`` for one of several mutually exclusive conditional params of the
    same field. A conditional param is only suggested when its ``when`` holds, so Optuna
    sees a define-by-run (dynamic) space; TPE handles it with ``multivariate=True,
    group=True``.

    Example:
        >>> from optuna.trial import FixedTrial
        >>> space = SearchSpace.from_dict({
        ...     "fixed": {"epochs": 3},
        ...     "params": {
        ...         "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        ...         "augment.policy": {"type": "categorical", "choices": ["none", "medium"]},
        ...         "augment.rotation": {"type": "float", "low": 0, "high": 30,
        ...                              "when": {"augment.policy": "medium"}},
        ...     },
        ... })
        >>> space.param_names
        ('optim.lr', 'augment.policy', 'augment.rotation')
        >>> cfg = space.suggest(FixedTrial({"optim.lr": 0.01, "augment.policy": "none"}))
        >>> (cfg.epochs, cfg.optim.lr, cfg.augment.policy, cfg.augment.rotation)
        (3, 0.01, 'none', None)
    """

    def __init__(self, parsed: ParsedSpace, portfolio: Any = None) -> None:
        """Wraps already validated parts; use :meth:`from_yaml` or :meth:`from_dict`.

        ``portfolio`` is the raw ``portfolio:`` list; it is validated against the space.
        """
        if not isinstance(parsed, ParsedSpace):
            raise TypeError(
                "SearchSpace(...) takes a ParsedSpace; use SearchSpace.from_yaml "
                "or SearchSpace.from_dict"
            )
        self._p = parsed
        self._by_name: dict[str, Param] = {p.name: p for p in parsed.params}
        self._portfolio: tuple[PortfolioEntry, ...] = parse_portfolio(portfolio, self)

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_yaml(cls, path_or_name: str | Path) -> SearchSpace:
        """Loads and validates a space file, or a shipped space by name.

        Args:
            path_or_name: A path to a YAML file, or the bare name of a shipped space
                (``"fast"`` or ``"fast.yaml"``; see :func:`medauto.space.list_spaces`). An
                existing file of that name in the working directory wins.

        Raises:
            SearchSpaceError: the file does not exist, is not valid YAML, or breaks a rule
                (the message names the file, the key path, the rule and the value).
        """
        path = resolve(path_or_name)
        return cls.from_dict(read_yaml(path), source=path.name)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], *, source: str = "<dict>") -> SearchSpace:
        """Validates a spec already loaded as a mapping (same format as the YAML files).

        Args:
            spec: The mapping (``name``, ``description``, ``spatial_dims``, ``fixed``,
                ``params``, ``fidelity``, ``portfolio``).
            source: What error messages call the spec, e.g. a file name.

        Raises:
            SearchSpaceError: the spec breaks a rule.
        """
        if isinstance(spec, Mapping) and "portfolio" in spec:
            rest = {k: v for k, v in spec.items() if k != "portfolio"}
            return cls(parse_space(rest, source), spec["portfolio"])
        return cls(parse_space(spec, source))

    # ----------------------------------------------------------------- properties

    @property
    def name(self) -> str:
        """The space's name (``name:``, else the file's stem)."""
        return self._p.name

    @property
    def description(self) -> str:
        return self._p.description

    @property
    def source(self) -> str:
        """The file name (or ``source`` given to :meth:`from_dict`) used in messages."""
        return self._p.source

    @property
    def spatial_dims(self) -> int:
        """2 or 3: every backbone the space can choose has this dimensionality."""
        return self._p.spatial_dims

    @property
    def fixed(self) -> dict[str, Scalar]:
        """Dotted field → value applied to every trial (a copy)."""
        return dict(self._p.fixed)

    @property
    def params(self) -> dict[str, Param]:
        """Optuna name → param spec, in suggestion order (parents before children)."""
        return dict(self._by_name)

    @property
    def param_names(self) -> tuple[str, ...]:
        """The names Optuna sees, in suggestion order (fixed-type params excluded)."""
        return tuple(p.name for p in self._p.params if p.kind != "fixed")

    @property
    def is_conditional(self) -> bool:
        """Whether some param is only sampled under a condition (a dynamic space)."""
        return any(p.when for p in self._p.params)

    @property
    def portfolio(self) -> tuple[PortfolioEntry, ...]:
        """Named configurations a new study tries first (``portfolio:``; may be empty)."""
        return self._portfolio

    @property
    def fidelity(self) -> Fidelity | None:
        """The ``fidelity:`` section (epochs as the budget), or ``None``."""
        return self._p.fidelity

    @property
    def min_epochs(self) -> int:
        """``fidelity.min_epochs``, else 1: the smallest budget (Hyperband ``min_resource``)."""
        return self._p.fidelity.min_epochs if self._p.fidelity else 1

    @property
    def max_epochs(self) -> int | None:
        """The most epochs a trial can train (Hyperband ``max_resource``).

        ``fidelity.max_epochs`` if given; else the largest ``epochs`` the space can produce;
        ``None`` when the space never sets ``epochs`` (the base config's value applies).
        """
        if self._p.fidelity:
            return self._p.fidelity.max_epochs
        candidates: list[Any] = [self._p.fixed.get(EPOCHS_FIELD)]
        for p in self._p.params:
            if p.field == EPOCHS_FIELD:
                candidates += [*p.extremes(), p.otherwise]
        values = [v for v in candidates if isinstance(v, int) and not isinstance(v, bool)]
        return max(values) if values else None

    @property
    def reduction_factor(self) -> int | None:
        """``fidelity.reduction_factor`` (``None``: the pruner's default)."""
        return self._p.fidelity.reduction_factor if self._p.fidelity else None

    # ----------------------------------------------------------------- sampling

    def suggest(self, trial: BaseTrial, *, base: TrainConfig | None = None) -> TrainConfig:
        """Samples one configuration through ``trial``.

        Args:
            trial: An Optuna trial, a ``FixedTrial`` (tests, replays) or any object with
                ``suggest_categorical/int/float``. Only active params are suggested.
            base: Values the space does not set (data settings, seed, ...); default
                ``TrainConfig()``.

        Returns:
            The full, validated configuration.

        Raises:
            SearchSpaceError: the sampled values do not fit ``base`` (e.g. a base that makes a
                cross-field rule fail); the message lists the values.
        """
        return self._build(lambda p: p.sample(trial), base)

    def config_from_params(
        self, params: Mapping[str, Any], *, base: TrainConfig | None = None
    ) -> TrainConfig:
        """Rebuilds the configuration of a finished trial from its ``trial.params``.

        Raises:
            SearchSpaceError: a name is not a param of this space, or an active param is
                missing (the params come from a different space).
        """
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise SearchSpaceError(
                f"{self.source}: params: must be names of this space's "
                f"params {list(self.param_names)}, got {unknown}"
            )

        def get(p: Param) -> Any:
            if isinstance(p, FixedParam):
                return p.value
            if p.name not in params:
                raise SearchSpaceError(
                    f"{self.source}: params: must include the active param "
                    f"{p.name!r}, got {sorted(params)}"
                )
            return params[p.name]

        return self._build(get, base)

    def _build(self, get: Callable[[Param], Any], base: TrainConfig | None) -> TrainConfig:
        active: dict[str, Any] = {}
        inactive: list[Param] = []
        for p in self._p.params:
            if p.is_active(active):
                active[p.name] = get(p)
            else:
                inactive.append(p)
        flat: dict[str, Any] = dict(self._p.fixed)
        flat.update({p.field: p.otherwise for p in inactive if p.otherwise is not UNSET})
        flat.update({self._by_name[n].field: v for n, v in active.items()})
        if self._p.fidelity is not None:
            flat[EPOCHS_FIELD] = self._p.fidelity.max_epochs
        try:
            return TrainConfig.from_flat(flat, base=base)
        except ConfigError as e:
            raise SearchSpaceError(
                f"{self.source}: the sampled values {active} do not form a "
                f"valid TrainConfig with this base: {e}"
            ) from e

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distribution of every param (conditional ones included), by Optuna name."""
        out = {}
        for p in self._p.params:
            d = p.distribution()
            if d is not None:
                out[p.name] = d
        return out

    def grid(self) -> dict[str, list[Scalar]]:
        """The ``search_space`` argument of ``optuna.samplers.GridSampler``.

        Every param must be discrete: categorical, int, or float with ``step``. Conditional
        params are included (GridSampler needs every name it may be asked for); their values
        also multiply the grid where they are inactive, so such grids repeat configurations.

        Raises:
            SearchSpaceError: a float param without ``step``, or an int range over 10,000
                values.
        """
        out: dict[str, list[Scalar]] = {}
        for p in self._p.params:
            if p.kind == "fixed":
                continue
            values = p.values()
            if values is None:
                raise SearchSpaceError(
                    f"{self.source}: params.{p.name}: must be discrete for a grid search "
                    f"(categorical, int, or float with step), got {p.describe()}"
                )
            if len(values) > _GRID_LIMIT:
                raise SearchSpaceError(
                    f"{self.source}: params.{p.name}: must have at most {_GRID_LIMIT} values "
                    f"for a grid search, got {len(values)} ({p.describe()})"
                )
            out[p.name] = list(values)
        return out

    # ----------------------------------------------------------------- identity and text

    def to_dict(self) -> dict[str, Any]:
        """The normalised spec: every key explicit; :meth:`from_dict` round-trips it."""
        out: dict[str, Any] = {
            "name": self._p.name,
            "description": self._p.description,
            "spatial_dims": self._p.spatial_dims,
            "fixed": dict(self._p.fixed),
            "params": {p.name: p.to_dict() for p in self._p.params},
        }
        if self._p.fidelity is not None:
            f = self._p.fidelity
            out["fidelity"] = {
                "min_epochs": f.min_epochs,
                "max_epochs": f.max_epochs,
                "reduction_factor": f.reduction_factor,
            }
        if self._portfolio:
            out["portfolio"] = [e.to_dict() for e in self._portfolio]
        return out

    def fingerprint(self) -> str:
        """A 16-hex-digit hash of what the space samples (``name``/``description`` excluded).

        Stable across key order and number spelling (``1e-3`` vs ``0.001``); changes with any
        range, choice (including choice order, which Optuna stores as an index), condition,
        fixed value or fidelity; the ``portfolio`` (a warm start) is not part of it. The
        optimizer stores it with a study and refuses to resume the study with a space of
        another fingerprint.
        """
        d = self.to_dict()
        del d["name"], d["description"]
        d.pop("portfolio", None)  # a warm start: it changes no configuration the space holds
        d["fixed"] = dict(sorted(d["fixed"].items()))
        text = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def summary(self) -> str:
        """A human-readable table of the space (for ``medauto search`` and logs)."""
        lines = [
            f"search space {self.name!r} ({self.source}, {self.spatial_dims}D, "
            f"fingerprint {self.fingerprint()})"
        ]
        if self.description:
            lines.append(f"  {self.description}")
        if self._p.fidelity:
            f = self._p.fidelity
            rf = f", reduction factor {f.reduction_factor}" if f.reduction_factor else ""
            lines.append(f"  budget: {f.min_epochs}..{f.max_epochs} epochs{rf}")
        if self._p.fixed:
            lines.append("  fixed:")
            width = max(len(k) for k in self._p.fixed)
            lines += [f"    {k:<{width}}  {fmt_value(v, k)}" for k, v in self._p.fixed.items()]
        if self._p.params:
            lines.append("  params:")
            width = max(len(p.name) for p in self._p.params)
            for p in self._p.params:
                line = f"    {p.name:<{width}}  {p.describe()}"
                if p.when:
                    line += "  when " + " and ".join(c.describe() for c in p.when)
                if p.otherwise is not UNSET:
                    line += f"  otherwise {fmt_value(p.otherwise, p.field)}"
                lines.append(line)
        return "\n".join(lines)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return (
            f"SearchSpace(name={self.name!r}, source={self.source!r}, "
            f"params={len(self._p.params)}, fingerprint={self.fingerprint()!r})"
        )
