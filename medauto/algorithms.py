"""Named samplers and pruners: small registries of Optuna factories with validated kwargs.

Example:
    >>> make_pruner("percentile", {"percentile": 30.0}).__class__.__name__
    'PercentilePruner'
    >>> make_sampler("random", seed=1).__class__.__name__
    'RandomSampler'
    >>> sorted(PRUNERS)
    ['hyperband', 'median', 'none', 'percentile', 'successive-halving', 'wilcoxon']
"""

from __future__ import annotations

import hashlib
import inspect
import warnings
from collections.abc import Callable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any

import optuna

from medauto.exceptions import MedautoError

if TYPE_CHECKING:
    from medauto.fingerprint import Selection
    from medauto.space import SearchSpace

__all__ = [
    "PRUNERS", "SAMPLERS", "make_pruner", "make_sampler", "make_search_pruner", "parse_kwargs",
    "process_seed",
]


def _tpe(seed: int | None, **kw: Any) -> optuna.samplers.BaseSampler:
    # multivariate + group: TPE models conditional (per-backbone) parameters jointly;
    # constant_liar: parallel workers do not all sample next to the same running trial.
    opts: dict[str, Any] = {"multivariate": True, "group": True, "constant_liar": True,
                            "n_startup_trials": 8}
    opts.update(kw)
    return optuna.samplers.TPESampler(seed=seed, **opts)


def _grid(seed: int | None, *, search_space: Mapping[str, list[Any]], **kw: Any) -> Any:
    return optuna.samplers.GridSampler(dict(search_space), seed=seed, **kw)


SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": lambda seed, **kw: optuna.samplers.RandomSampler(seed=seed, **kw),
    "cmaes": lambda seed, **kw: optuna.samplers.CmaEsSampler(seed=seed, **kw),
    "gp": lambda seed, **kw: optuna.samplers.GPSampler(seed=seed, **kw),
    "grid": _grid,
}

PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": lambda **kw: optuna.pruners.MedianPruner(
        **{"n_startup_trials": 4, "n_warmup_steps": 1, **kw}
    ),
    "percentile": lambda **kw: optuna.pruners.PercentilePruner(
        **{"percentile": 25.0, "n_startup_trials": 4, "n_warmup_steps": 1, **kw}
    ),
    "hyperband": lambda **kw: optuna.pruners.HyperbandPruner(
        **{"min_resource": 1, "reduction_factor": 3, **kw}
    ),
    "successive-halving": lambda **kw: optuna.pruners.SuccessiveHalvingPruner(
        **{"min_resource": 1, "reduction_factor": 3, **kw}
    ),
    "wilcoxon": lambda **kw: optuna.pruners.WilcoxonPruner(**{"p_threshold": 0.1, **kw}),
    "none": lambda **kw: optuna.pruners.NopPruner(**kw),
}

_OPTUNA_CLASSES: dict[str, Any] = {
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "gp": "GPSampler",
    "tpe": "TPESampler",
    "grid": "GridSampler",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "successive-halving": "SuccessiveHalvingPruner",
    "wilcoxon": "WilcoxonPruner",
    "none": "NopPruner",
}


def _check_kwargs(kind: str, name: str, kwargs: Mapping[str, Any]) -> None:
    module = optuna.samplers if kind == "sampler" else optuna.pruners
    cls = getattr(module, _OPTUNA_CLASSES[name])
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("self", "seed")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise MedautoError(
            f"{kind} {name!r} has no parameter(s) {unknown}; allowed: {sorted(allowed)}"
        )


def process_seed(
    seed: int | None, *, created: bool, trials_so_far: int, worker: str
) -> int | None:
    """The sampler seed of one process joining a study (docs/optimization.md, "Seeds").

    * ``seed=None``: ``None`` (Optuna draws fresh OS entropy; every process differs).
    * the process that creates the study: ``seed`` itself, so a new study searched by one
      ``medauto search --seed S`` (or ``AutoMLOptimizer(seed=S)``) process proposes the
      same configurations on every run.
    * every other process (a resume, a ``medauto worker``, a packed child): a seed derived
      from ``seed``, the number of trials the study holds when it joins and the process's
      ``host:pid``, so no two processes, and no resume, replay the same proposals. Only a
      retry of a failed trial repeats a configuration, on purpose.

    Example:
        >>> process_seed(7, created=True, trials_so_far=0, worker="h:1")
        7
        >>> process_seed(7, created=False, trials_so_far=5, worker="h:1") != 7
        True
    """
    if seed is None or created:
        return seed
    digest = hashlib.sha256(f"{seed}|{trials_so_far}|{worker}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def make_sampler(
    name: str,
    kwargs: Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
    grid: Mapping[str, list[Any]] | None = None,
) -> optuna.samplers.BaseSampler:
    """Builds the sampler ``name`` (one of :data:`SAMPLERS`) seeded with ``seed``.

    Args:
        name: ``tpe`` (multivariate, grouped, constant liar; default), ``random``, ``cmaes``,
            ``gp`` or ``grid``.
        kwargs: Extra constructor arguments of the Optuna class, validated by name.
        seed: Seed for reproducible proposals.
        grid: The grid for ``grid`` (``SearchSpace.grid()``).

    Raises:
        MedautoError: unknown name or unknown keyword argument.
    """
    kwargs = dict(kwargs or {})
    if name not in SAMPLERS:
        raise MedautoError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    _check_kwargs("sampler", name, kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "grid":
            if grid is None:
                raise MedautoError("the grid sampler needs a discrete search space (grid=...)")
            return SAMPLERS[name](seed, search_space=grid, **kwargs)
        return SAMPLERS[name](seed, **kwargs)


def make_pruner(
    name: str,
    kwargs: Mapping[str, Any] | None = None,
    *,
    min_epochs: int | None = None,
    max_epochs: int | None = None,
    reduction_factor: int | None = None,
) -> optuna.pruners.BasePruner:
    """Builds the pruner ``name`` (one of :data:`PRUNERS`).

    Args:
        name: ``median`` (default), ``percentile``, ``hyperband``, ``successive-halving``,
            ``wilcoxon`` or ``none``.
        kwargs: Constructor arguments of the Optuna class, validated by name.
        min_epochs: The smallest budget (the space's ``fidelity.min_epochs``); sets the
            ``min_resource`` of Hyperband and successive halving unless given.
        max_epochs: The full budget; sets Hyperband's ``max_resource`` unless given.
        reduction_factor: The space's ``fidelity.reduction_factor``, for both.

    Raises:
        MedautoError: unknown name or unknown keyword argument.
    """
    kwargs = dict(kwargs or {})
    if name not in PRUNERS:
        raise MedautoError(f"unknown pruner {name!r}; choose one of {sorted(PRUNERS)}")
    _check_kwargs("pruner", name, kwargs)
    if name in ("hyperband", "successive-halving"):
        if min_epochs is not None:
            kwargs.setdefault("min_resource", min_epochs)
        if reduction_factor is not None:
            kwargs.setdefault("reduction_factor", reduction_factor)
    if name == "hyperband" and max_epochs is not None:
        kwargs.setdefault("max_resource", max_epochs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return PRUNERS[name](**kwargs)
    except (TypeError, ValueError) as e:
        raise MedautoError(f"invalid {name!r} pruner settings {kwargs}: {e}") from e


def parse_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["percentile=30", "n_startup_trials=2"]`` → ``{"percentile": 30.0, ...}`` (YAML scalars).

    Example:
        >>> parse_kwargs(["percentile=30.5", "n_startup_trials=2", "flag=true"])
        {'percentile': 30.5, 'n_startup_trials': 2, 'flag': True}
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MedautoError(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:  # also refuses tags such as !!python/object
            problem = " ".join(str(e).split())
            raise MedautoError(
                f"{key.strip()}={value!r}: the value must be a plain YAML scalar or list "
                f"({problem})"
            ) from None
    return out


def make_search_pruner(
    name: str, kwargs: Mapping[str, Any] | None, space: SearchSpace, selection: Selection
) -> optuna.pruners.BasePruner:
    """:func:`make_pruner` for a search: its resource is the folds of a cross-validated
    selection (one report per fold), else the space's epochs and fidelity."""
    if selection.mode == "cv":
        return make_pruner(name, kwargs, min_epochs=1, max_epochs=selection.folds)
    return make_pruner(name, kwargs, min_epochs=space.min_epochs, max_epochs=space.max_epochs,
                       reduction_factor=space.reduction_factor)
