"""Checks of a parsed space against med_core: every backbone it names is registered, and
every value it can produce passes :class:`~med_core.config.TrainConfig`'s own rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from med_core.config import TrainConfig
from med_core.exceptions import ConfigError
from medauto.space._params import UNSET
from medauto.space._params import CategoricalParam
from medauto.space._params import FixedParam
from medauto.space._params import FloatParam
from medauto.space._params import IntParam
from medauto.space._params import Param
from medauto.space._schema import BACKBONE_FIELD
from medauto.space._schema import CHECKPOINT_FIELD
from medauto.space._schema import EPOCHS_FIELD
from medauto.space._schema import fail

if TYPE_CHECKING:
    from medauto.space._loader import ParsedSpace

__all__ = []


def _param_locations(p: Param) -> list[tuple[str, Any]]:
    """(key path, value) of every value a param's spec names (bounds of a range)."""
    base = f"params.{p.name}"
    out: list[tuple[str, Any]] = []
    if isinstance(p, CategoricalParam):
        out += [(f"{base}.choices[{i}]", c) for i, c in enumerate(p.choices)]
    elif isinstance(p, FixedParam):
        out.append((f"{base}.value", p.value))
    elif isinstance(p, (IntParam, FloatParam)):
        out += [(f"{base}.low", p.low), (f"{base}.high", p.high)]
    if p.otherwise is not UNSET:
        out.append((f"{base}.otherwise", p.otherwise))
    return out


def _field_locations(parsed: ParsedSpace, field: str) -> list[tuple[str, Any, Param | None]]:
    """(key path, value, param) of every value the space can give ``field``."""
    out: list[tuple[str, Any, Param | None]] = []
    if field in parsed.fixed:
        out.append((f"fixed.{field}", parsed.fixed[field], None))
    for p in parsed.params:
        if p.field == field:
            out += [(path, v, p) for path, v in _param_locations(p)]
    return out


def _check_backbones(parsed: ParsedSpace) -> None:
    locations = _field_locations(parsed, BACKBONE_FIELD)
    if not locations:  # the base config's backbone; checked against the default one
        locations = [("fixed.model.backbone", TrainConfig().model.backbone, None)]
    from med_core import backbones as api  # torch and timm: imported only when needed
    from med_core.exceptions import UnknownBackboneError

    source = parsed.source
    cfgs: dict[str, Any] = {}
    for path, name, _ in locations:
        try:
            cfg = api.get_backbone_cfg(name)
        except UnknownBackboneError:
            known = api.list_backbones(spatial_dims=parsed.spatial_dims)
            raise fail(
                source,
                path,
                "a registered backbone name (see med_core.backbones."
                "list_backbones()) or 'timm/<name>'",
                name,
                options=known,
            ) from None
        dims = getattr(cfg, "spatial_dims", None)
        dims_ok = (
            dims is None
            or dims == parsed.spatial_dims
            or (isinstance(dims, (tuple, list, set, frozenset)) and parsed.spatial_dims in dims)
        )
        if not dims_ok:
            raise fail(
                source,
                path,
                f"a {parsed.spatial_dims}D backbone (spatial_dims: "
                f"{parsed.spatial_dims}; this one is {dims}D)",
                name,
            )
        cfgs[name] = cfg

    # checkpoint segments: k must not exceed max_segments of any backbone it can meet
    backbone_param_names = {p.name for p in parsed.params if p.field == BACKBONE_FIELD}
    all_backbones = list(cfgs)
    for path, k, p in _field_locations(parsed, CHECKPOINT_FIELD):
        if not isinstance(k, int) or k < 1:
            continue
        meets = all_backbones
        if p is not None:
            for c in p.when:
                if c.param in backbone_param_names:
                    meets = [b for b in meets if b in c.values]
        for b in meets:
            limit = getattr(cfgs[b], "max_segments", None)
            if isinstance(limit, int) and k > limit:
                raise fail(
                    source,
                    path,
                    f"'off', 'default' or an integer in [1, {limit}] "
                    f"(max_segments of backbone {b!r}, which it can be combined with)",
                    k,
                )


def _check_values(parsed: ParsedSpace) -> None:
    """Every value the space can produce, alone and in the extreme combinations, is valid."""
    source = parsed.source
    fixed = dict(parsed.fixed)
    if parsed.fidelity is not None:
        fixed[EPOCHS_FIELD] = parsed.fidelity.max_epochs
    try:
        TrainConfig.from_flat(fixed)
    except ConfigError as e:
        key = e.key if e.key in fixed else None
        raise fail(
            source,
            f"fixed.{key}" if key else "fixed",
            _config_rule(e),
            fixed.get(key) if key else None,
        ) from None
    for p in parsed.params:
        for path, value in _param_locations(p):
            try:
                TrainConfig.from_flat({**fixed, p.field: value})
            except ConfigError as e:
                raise fail(source, path, _config_rule(e), value) from None
    for pick in (0, -1):
        combo = dict(fixed)
        seen: set[str] = set()
        for p in parsed.params:
            ext = p.extremes()
            if ext and p.field not in seen:
                combo[p.field] = ext[pick]
                seen.add(p.field)
        try:
            TrainConfig.from_flat(combo)
        except ConfigError as e:
            which = "lowest" if pick == 0 else "highest"
            raise fail(
                source,
                "params",
                f"ranges whose {which} values together form a valid TrainConfig",
                str(e),
                raw=True,
            ) from None


def _config_rule(e: ConfigError) -> str:
    """What a TrainConfig rule asks of the value (:attr:`ConfigError.rule`)."""
    return e.rule if e.rule is not None else f"a valid value ({e})"
