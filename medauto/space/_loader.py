"""YAML file → validated parts of a :class:`~medauto.space.SearchSpace`.

All checks happen here, once, at load time; every failure is a
:class:`~medauto.exceptions.SearchSpaceError` in the shape
``<file>: <key path>: must be <rule>, got <value>``. The order of checks is: YAML syntax,
top-level keys, ``fidelity``, ``fixed``, each param on its own, conditions between params,
backbone names (via :mod:`med_core.backbones`), then every value the space can produce
against :class:`~med_core.config.TrainConfig`'s own rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medauto.space._checks import _check_backbones
from medauto.space._checks import _check_values
from medauto.space._conditions import _link_conditions
from medauto.space._params import CategoricalParam
from medauto.space._params import Condition
from medauto.space._params import FixedParam
from medauto.space._params import FloatParam
from medauto.space._params import IntParam
from medauto.space._params import Param
from medauto.space._schema import ALL_PARAM_KEYS
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
from medauto.space._yaml_files import list_spaces as list_spaces
from medauto.space._yaml_files import read_yaml as read_yaml
from medauto.space._yaml_files import resolve as resolve

__all__ = ["Fidelity", "ParsedSpace", "list_spaces", "parse_space", "read_yaml", "resolve"]


_NAME_RE = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_.]*)(@(?P<variant>[A-Za-z0-9_-]+))?$")


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
