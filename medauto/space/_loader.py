"""YAML file → validated parts of a :class:`~medauto.space.SearchSpace`.

All checks happen here, once, at load time; every failure is a
:class:`~medauto.exceptions.SearchSpaceError` in the shape
``<file>: <key path>: must be <rule>, got <value>``. The order of checks is: YAML syntax,
top-level keys, ``fidelity``, ``fixed``, each param on its own, conditions between params,
backbone names (via :mod:`med_core.backbones`), then every value the space can produce
against :class:`~med_core.config.TrainConfig`'s own rules.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from med_core.config import TrainConfig
from med_core.exceptions import ConfigError
from medauto.space._params import UNSET
from medauto.space._params import CategoricalParam
from medauto.space._params import Condition
from medauto.space._params import FixedParam
from medauto.space._params import FloatParam
from medauto.space._params import IntParam
from medauto.space._params import Param
from medauto.space._schema import ALL_PARAM_KEYS
from medauto.space._schema import BACKBONE_FIELD
from medauto.space._schema import CHECKPOINT_FIELD
from medauto.space._schema import EPOCHS_FIELD
from medauto.space._schema import FIDELITY_KEYS
from medauto.space._schema import PARAM_KEYS
from medauto.space._schema import PARAM_TYPES
from medauto.space._schema import TOP_KEYS
from medauto.space._schema import FieldInfo
from medauto.space._schema import Scalar
from medauto.space._schema import as_number
from medauto.space._schema import fail
from medauto.space._schema import field_info
from medauto.space._schema import normalize_value
from medauto.space._schema import same_value
from medauto.space._schema import train_fields

__all__ = ["Fidelity", "ParsedSpace", "list_spaces", "parse_space", "read_yaml", "resolve"]

_NAME_RE = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_.]*)(@(?P<variant>[A-Za-z0-9_-]+))?$")


# --------------------------------------------------------------------------- files


def shipped_dirs() -> list[Path]:
    """Where bare space names are looked up, in order.

    1. ``medauto/search_spaces/`` inside the installed package (package data of a wheel);
    2. ``search_spaces/`` at the root of a source checkout (next to ``pyproject.toml``),
       which is what an editable install or a plain checkout sees.
    """
    pkg = Path(__file__).resolve().parents[1]
    dirs = [pkg / "search_spaces"]
    root = pkg.parent
    if (root / "pyproject.toml").is_file():
        dirs.append(root / "search_spaces")
    return [d for d in dirs if d.is_dir()]


def list_spaces() -> list[str]:
    """Names of the shipped search spaces (``"default"``, ``"fast"``, ...), sorted."""
    return sorted({p.stem for d in shipped_dirs() for p in d.glob("*.yaml")})


def resolve(path_or_name: str | Path) -> Path:
    """The file behind a path or a shipped name.

    An existing file wins. Otherwise a bare name (``"fast"`` or ``"fast.yaml"``, no folder
    part) is looked up among the shipped spaces (:func:`shipped_dirs`).

    Raises:
        SearchSpaceError: neither an existing file nor a shipped name.
    """
    p = Path(path_or_name)
    if p.is_file():
        return p
    if len(p.parts) == 1 and not p.exists():
        stem = p.stem if p.suffix in (".yaml", ".yml") else p.name
        for d in shipped_dirs():
            candidate = d / f"{stem}.yaml"
            if candidate.is_file():
                return candidate
    names = list_spaces()
    raise fail(
        "search space",
        "",
        f"an existing YAML file or a shipped space name {names}",
        str(path_or_name),
        options=names,
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys (safe_load keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
        try:
            first = seen.get(key)
        except TypeError:
            continue  # unhashable key: construct_mapping below reports it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def load_yaml_text(text: str, source: str) -> Any:
    """Parses YAML with the safe loader (plus a duplicate-key check); errors carry line/column."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = "; ".join(x for x in (e.context, e.problem) if x)
        raise fail(source, where, "valid YAML", problem, raw=True) from None
    except yaml.YAMLError as e:
        raise fail(source, "", "valid YAML", str(e), raw=True) from None


def read_yaml(path: Path) -> Any:
    """The parsed content of a space file (its errors name the file)."""
    source = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise fail(
            source, "", "UTF-8 text", f"an undecodable byte at offset {e.start}", raw=True
        ) from None
    except OSError as e:
        raise fail(
            source, "", "a readable file", f"{type(e).__name__}: {e.strerror}", raw=True
        ) from None
    return load_yaml_text(text, source)


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Fidelity:
    """Epochs as the budget of a multi-fidelity (Hyperband / successive-halving) search.

    Attributes:
        min_epochs: The smallest budget a trial gets before a pruner may stop it
            (``min_resource`` of Optuna's Hyperband/SH pruners).
        max_epochs: The full budget; every trial's ``TrainConfig.epochs`` is set to it
            (``max_resource``).
        reduction_factor: The pruners' ``reduction_factor``; ``None`` leaves the pruner's own
            default.
    """

    min_epochs: int
    max_epochs: int
    reduction_factor: int | None = None


@dataclass(frozen=True)
class ParsedSpace:
    """The validated parts of a space; :class:`SearchSpace` holds one."""

    name: str
    description: str
    spatial_dims: int
    fixed: dict[str, Scalar]
    params: tuple[Param, ...]  # in suggestion order (parents before children)
    fidelity: Fidelity | None
    source: str


def _mapping(value: Any, source: str, path: str, rule: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise fail(source, path, rule, value)
    for k in value:
        if not isinstance(k, str):
            raise fail(source, f"{path}.{k}" if path else str(k), "a string key", k)
    return value


def _check_keys(
    data: Mapping[str, Any], allowed: tuple[str, ...], source: str, path: str, what: str
) -> None:
    for k in data:
        if k not in allowed:
            rule = f"one of the {what} keys {list(allowed)}"
            raise fail(source, f"{path}.{k}" if path else k, rule, k, options=allowed)


def parse_space(data: Any, source: str) -> ParsedSpace:
    """Validates a loaded spec and returns its parts (see the module docstring for the order).

    Raises:
        SearchSpaceError: on the first problem found, naming ``source`` and the key path.
    """
    if data is None:
        raise fail(
            source,
            "top level",
            "a mapping with keys " + str(list(TOP_KEYS)),
            "an empty document",
            raw=True,
        )
    data = _mapping(data, source, "top level", f"a mapping with keys {list(TOP_KEYS)}")
    _check_keys(data, TOP_KEYS, source, "", "top-level")

    default_name = Path(source).stem if source.endswith((".yaml", ".yml")) else "custom"
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise fail(source, "name", "a non-empty string", name)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail(source, "description", "a string", description)
    spatial_dims = data.get("spatial_dims", 2)
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise fail(source, "spatial_dims", "2 or 3", spatial_dims)

    fidelity = _parse_fidelity(data.get("fidelity"), source)
    fixed = _parse_fixed(data.get("fixed"), source)
    raw_params = _mapping(
        data.get("params") or {},
        source,
        "params",
        "a mapping of dotted TrainConfig names to param specs",
    )
    params = [_parse_param(n, spec, source) for n, spec in raw_params.items()]

    if fidelity is not None:
        if EPOCHS_FIELD in fixed:
            raise fail(
                source,
                f"fixed.{EPOCHS_FIELD}",
                "absent when fidelity: is given (fidelity.max_epochs sets epochs)",
                fixed[EPOCHS_FIELD],
            )
        for p in params:
            if p.field == EPOCHS_FIELD:
                raise fail(
                    source,
                    f"params.{p.name}",
                    "absent when fidelity: is given (fidelity.max_epochs sets epochs)",
                    f"a param of type {p.kind!r}",
                    raw=True,
                )

    params = _link_conditions(params, fixed, source)
    parsed = ParsedSpace(
        name.strip(), description.strip(), spatial_dims, fixed, tuple(params), fidelity, source
    )
    _check_backbones(parsed)
    _check_values(parsed)
    return parsed


def _parse_fidelity(raw: Any, source: str) -> Fidelity | None:
    if raw is None:
        return None
    raw = _mapping(raw, source, "fidelity", f"a mapping with keys {list(FIDELITY_KEYS)}")
    _check_keys(raw, FIDELITY_KEYS, source, "fidelity", "fidelity")

    def pos_int(key: str, minimum: int, default: Any) -> Any:
        v = raw.get(key, default)
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= minimum
        if v is not None and not ok:
            raise fail(source, f"fidelity.{key}", f"an integer >= {minimum}", v)
        return v

    min_epochs = pos_int("min_epochs", 1, 1)
    max_epochs = pos_int("max_epochs", 1, None)
    if max_epochs is None:
        raise fail(source, "fidelity.max_epochs", "an integer >= 1 (required)", "nothing", raw=True)
    if max_epochs < min_epochs:
        raise fail(
            source, "fidelity.max_epochs", f">= fidelity.min_epochs ({min_epochs})", max_epochs
        )
    return Fidelity(min_epochs, max_epochs, pos_int("reduction_factor", 2, None))


def _parse_fixed(raw: Any, source: str) -> dict[str, Scalar]:
    if raw is None:
        return {}
    raw = _mapping(raw, source, "fixed", "a mapping of dotted TrainConfig names to values")
    out: dict[str, Scalar] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for k, v in node.items():
            key = prefix + k
            if isinstance(v, Mapping) and any(f.startswith(key + ".") for f in train_fields()):
                walk(_mapping(v, source, f"fixed.{key}", "a mapping"), key + ".")
                continue
            info = field_info(key, source=source, path=f"fixed.{key}")
            if key in out:
                raise fail(source, f"fixed.{key}", "given once", v)
            out[key] = normalize_value(info, v, source=source, path=f"fixed.{key}")

    walk(raw, "")
    return out


def _parse_param(name: Any, spec: Any, source: str) -> Param:
    path = f"params.{name}"
    m = _NAME_RE.match(name)
    if m is None:
        raise fail(
            source,
            path,
            "a dotted TrainConfig name, optionally with an '@variant' "
            "suffix (letters, digits, '_' or '-')",
            name,
        )
    field = m.group("field")
    info = field_info(field, source=source, path=path)

    if not isinstance(spec, Mapping):
        if isinstance(spec, list):  # shorthand: a list is a categorical param
            spec = {"type": "categorical", "choices": spec}
        else:  # shorthand: a scalar is a fixed value
            spec = {"type": "fixed", "value": spec}
    spec = _mapping(spec, source, path, "a param spec mapping")
    kind = spec.get("type")
    if kind is None:
        kind = "categorical" if "choices" in spec else "fixed" if "value" in spec else None
    if kind not in PARAM_TYPES:
        got = kind if kind is not None else "nothing (no type, choices or value)"
        raise fail(
            source,
            f"{path}.type",
            f"one of {list(PARAM_TYPES)}",
            got,
            raw=kind is None,
            options=PARAM_TYPES,
        )
    if kind not in info.param_types:
        raise fail(
            source,
            f"{path}.type",
            f"one of {list(info.param_types)} for the {info.kind} field {field!r}",
            kind,
        )
    allowed = ("type", *PARAM_KEYS[kind])
    for k in spec:
        if k not in allowed:
            rule = f"one of the keys {list(allowed)} of a {kind} param"
            raise fail(
                source, f"{path}.{k}", rule, k, options=[o for o in ALL_PARAM_KEYS if o in allowed]
            )

    common: dict[str, Any] = {"name": name, "field": field}
    when = spec.get("when")
    if when is not None:
        when = _mapping(
            when, source, f"{path}.when", "a mapping of param names to a value or a list of values"
        )
        if not when:
            raise fail(source, f"{path}.when", "a non-empty mapping", {})
        # values are normalised once the parent's spec is known (_link_conditions)
        common["when"] = tuple(
            Condition(k, tuple(v) if isinstance(v, list) else (v,)) for k, v in when.items()
        )
    if "otherwise" in spec:
        if when is None:
            raise fail(source, f"{path}.otherwise", "used together with when:", spec["otherwise"])
        common["otherwise"] = normalize_value(
            info, spec["otherwise"], source=source, path=f"{path}.otherwise"
        )

    if kind == "fixed":
        if "value" not in spec:
            raise fail(source, f"{path}.value", "given for a fixed param", "nothing", raw=True)
        value = normalize_value(info, spec["value"], source=source, path=f"{path}.value")
        return FixedParam(value=value, **common)
    if kind == "categorical":
        return CategoricalParam(choices=_parse_choices(spec, info, source, path), **common)
    return _parse_range(kind, spec, info, source, path, common)


def _parse_choices(
    spec: Mapping[str, Any], info: FieldInfo, source: str, path: str
) -> tuple[Scalar, ...]:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise fail(source, f"{path}.choices", "a non-empty list", choices)
    out: list[Scalar] = []
    for i, c in enumerate(choices):
        v = normalize_value(info, c, source=source, path=f"{path}.choices[{i}]")
        if any(same_value(v, o) for o in out):
            raise fail(source, f"{path}.choices[{i}]", "distinct from the earlier choices", c)
        out.append(v)
    return tuple(out)


def _parse_range(
    kind: str,
    spec: Mapping[str, Any],
    info: FieldInfo,
    source: str,
    path: str,
    common: dict[str, Any],
) -> Param:
    integer = kind == "int"
    noun = "an integer" if integer else "a number"
    for key in ("low", "high"):
        if key not in spec:
            raise fail(
                source,
                f"{path}.{key}",
                f"{noun} (required for a {kind} param)",
                "nothing",
                raw=True,
            )
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise fail(source, f"{path}.log", "true or false", log)
    if log:
        rule = "an integer >= 1 (log: true)" if integer else "a float > 0 (log: true)"
    else:
        rule = noun
    low = as_number(spec["low"], integer=integer, source=source, path=f"{path}.low", rule=rule)
    if log and (low < 1 if integer else low <= 0):
        raise fail(source, f"{path}.low", rule, spec["low"])
    high = as_number(spec["high"], integer=integer, source=source, path=f"{path}.high", rule=noun)
    if high <= low:
        raise fail(
            source,
            f"{path}.high",
            f"> low ({low!r}; for a constant, use a fixed value)",
            spec["high"],
        )
    step = spec.get("step")
    if step is not None:
        if log and not (integer and step == 1):
            raise fail(source, f"{path}.step", "omitted when log is true", step)
        step_rule = "an integer >= 1" if integer else "a number > 0"
        step = as_number(step, integer=integer, source=source, path=f"{path}.step", rule=step_rule)
        if step <= 0:
            raise fail(source, f"{path}.step", step_rule, spec["step"])
        n = (high - low) / step
        if (integer and (high - low) % step) or (not integer and abs(n - round(n)) > 1e-9 * n):
            raise fail(
                source, f"{path}.step", f"a divisor of high - low ({high - low!r})", spec["step"]
            )
    if integer:
        return IntParam(low=int(low), high=int(high), step=int(step or 1), log=log, **common)
    return FloatParam(
        low=float(low),
        high=float(high),
        step=None if step is None else float(step),
        log=log,
        **common,
    )


# --------------------------------------------------------------------------- cross-param checks


def _link_conditions(params: list[Param], fixed: Mapping[str, Scalar], source: str) -> list[Param]:
    """Normalises ``when`` values, checks them and returns the params parents-first."""
    by_name = {p.name: p for p in params}
    fields = train_fields()
    linked: dict[str, Param] = {}
    for p in params:
        conds = []
        for c in p.when:
            cpath = f"params.{p.name}.when.{c.param}"
            parent = by_name.get(c.param)
            if parent is None or parent is p:
                others = [n for n in by_name if n != p.name]
                raise fail(
                    source,
                    f"params.{p.name}.when",
                    f"the name of another param {others}",
                    c.param,
                    options=others,
                )
            if isinstance(parent, FloatParam) and parent.step is None:
                raise fail(
                    source,
                    cpath,
                    "a condition on a categorical, int, fixed or stepped float param",
                    f"a continuous float param {c.param!r}",
                    raw=True,
                )
            if not c.values:
                raise fail(source, cpath, "a value or a non-empty list of values", [])
            values = []
            for i, v in enumerate(c.values):
                vpath = cpath if len(c.values) == 1 else f"{cpath}[{i}]"
                nv = normalize_value(fields[parent.field], v, source=source, path=vpath)
                if not parent.can_take(nv):
                    raise fail(
                        source, vpath, f"a value {c.param!r} can take ({parent.describe()})", v
                    )
                values.append(nv)
            conds.append(Condition(c.param, tuple(values)))
        linked[p.name] = _replace_when(p, tuple(conds))
    params = [linked[p.name] for p in params]

    # several params for one field: each conditional, pairwise exclusive, same otherwise
    by_field: dict[str, list[Param]] = {}
    for p in params:
        by_field.setdefault(p.field, []).append(p)
    for field, group in by_field.items():
        if field in fixed and any(not p.when for p in group):
            p = next(p for p in group if not p.when)
            raise fail(
                source,
                f"params.{p.name}",
                f"conditional (with when:) because fixed.{field} already sets the field",
                "a param without when:",
                raw=True,
            )
        if len(group) < 2:
            continue
        for i, a in enumerate(group):
            for b in group[:i]:
                if not _exclusive(a, b):
                    raise fail(
                        source,
                        f"params.{a.name}.when",
                        f"a condition exclusive with that of {b.name!r} (both set {field!r})",
                        {c.param: list(c.values) for c in a.when},
                    )
                if (
                    a.otherwise is not UNSET
                    and b.otherwise is not UNSET
                    and not same_value(a.otherwise, b.otherwise)
                ):
                    raise fail(
                        source,
                        f"params.{a.name}.otherwise",
                        f"the same as params.{b.name}.otherwise ({b.otherwise!r})",
                        a.otherwise,
                    )
    return _topological(params, source)


def _replace_when(p: Param, when: tuple[Condition, ...]) -> Param:
    return dataclasses.replace(p, when=when)


def _exclusive(a: Param, b: Param) -> bool:
    if not a.when or not b.when:
        return False
    for ca in a.when:
        for cb in b.when:
            if ca.param == cb.param and not any(
                same_value(x, y) for x in ca.values for y in cb.values
            ):
                return True
    return False


def _topological(params: list[Param], source: str) -> list[Param]:
    """Parents before children, otherwise in declaration order; a cycle raises."""
    done: dict[str, Param] = {}
    pending = list(params)
    while pending:
        progressed = False
        for p in list(pending):
            if all(c.param in done for c in p.when):
                done[p.name] = p
                pending.remove(p)
                progressed = True
        if not progressed:
            p = pending[0]
            cycle = [c.param for c in p.when if c.param not in done]
            raise fail(
                source,
                f"params.{p.name}.when",
                "free of cycles (a param cannot depend on itself through other params)",
                cycle,
            )
    return list(done.values())


# --------------------------------------------------------------------------- backbones


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


# --------------------------------------------------------------------------- TrainConfig rules


def _check_values(parsed: ParsedSpace) -> None:
    """Every value the space can produce, alone and in the extreme combinations, is valid."""
    source = parsed.source
    fixed = dict(parsed.fixed)
    if parsed.fidelity is not None:
        fixed[EPOCHS_FIELD] = parsed.fidelity.max_epochs
    try:
        TrainConfig.from_flat(fixed)
    except ConfigError as e:
        key = _config_error_key(e, fixed)
        raise fail(
            source,
            f"fixed.{key}" if key else "fixed",
            _config_rule(e),
            fixed.get(key),
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


def _config_error_key(e: ConfigError, flat: Mapping[str, Any]) -> str:
    text = str(e)
    for key in sorted(flat, key=len, reverse=True):
        if text.startswith(key + ":"):
            return key
    return ""


def _config_rule(e: ConfigError) -> str:
    """The rule part of a TrainConfig message (``"<key>: must be <rule>, got <v>"``)."""
    text = str(e)
    if "must be " in text:
        rule = text.split("must be ", 1)[1]
        return rule.rsplit(", got ", 1)[0]
    return f"a valid value ({text})"
