"""The rules of the search-space format: allowed keys, TrainConfig field kinds, one message shape.

Every error the loader raises goes through :func:`fail`, so every message reads
``<file>: <key path>: must be <rule>, got <value>`` (plus ``; did you mean ...?`` when a close
match exists). Nothing here imports Optuna or torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from med_core.config import TrainConfig
from medauto.exceptions import SearchSpaceError

__all__ = [
    "FIDELITY_KEYS",
    "PARAM_KEYS",
    "PARAM_TYPES",
    "TOP_KEYS",
    "FieldInfo",
    "close",
    "fail",
    "field_info",
    "is_scalar",
    "normalize_value",
    "same_value",
    "train_fields",
]

Scalar = bool | int | float | str | None

TOP_KEYS = (
    "name", "description", "spatial_dims", "fixed", "params", "fidelity", "portfolio"
)
PARAM_TYPES = ("categorical", "int", "float", "fixed")
# keys each param type accepts (besides "type")
PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "categorical": ("choices", "when", "otherwise"),
    "int": ("low", "high", "step", "log", "when", "otherwise"),
    "float": ("low", "high", "step", "log", "when", "otherwise"),
    "fixed": ("value", "when", "otherwise"),
}
ALL_PARAM_KEYS = ("type", "choices", "low", "high", "step", "log", "value", "when", "otherwise")
FIDELITY_KEYS = ("min_epochs", "max_epochs", "reduction_factor")

CHECKPOINT_FIELD = "model.checkpoint_segments"
BACKBONE_FIELD = "model.backbone"
EPOCHS_FIELD = "epochs"

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def fail(
    source: str, path: str, rule: str, got: Any, *, options: Iterable[str] = (), raw: bool = False
) -> SearchSpaceError:
    """The one message shape: ``<source>: <path>: must be <rule>, got <got>``.

    Args:
        source: The file name (or ``<dict>``) the spec came from.
        path: The key path inside the spec, e.g. ``params.optim.lr.low``.
        rule: What is allowed.
        got: The offending value (shown with ``repr`` unless ``raw``).
        options: Candidates for a "did you mean" hint (close matches of ``got``).
        raw: Show ``got`` as given (already formatted text).
    """
    shown = got if raw else repr(got)
    if len(shown) > 160:
        shown = shown[:157] + "..."
    where = f"{path}: " if path else ""
    msg = f"{source}: {where}must be {rule}, got {shown}"
    hint = close(got, options) if isinstance(got, str) else []
    if hint:
        shown_hints = [repr(h) for h in hint]
        alternatives = ", ".join(shown_hints[:-1]) + " or " if len(hint) > 1 else ""
        msg += f"; did you mean {alternatives}{shown_hints[-1]}?"
    return SearchSpaceError(msg)


def close(word: str, options: Iterable[str], n: int = 3) -> list[str]:
    """Close matches of ``word`` among ``options`` (difflib, cutoff 0.6)."""
    return difflib.get_close_matches(word, list(options), n=n, cutoff=0.6)


def is_scalar(v: Any) -> bool:
    """Whether ``v`` is a value Optuna can store as a categorical choice."""
    return v is None or isinstance(v, (bool, int, float, str))


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps ``True`` apart from ``1`` (YAML booleans vs integers)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, float) or isinstance(b, float):  # stepped floats: 0.1 * 3 vs 0.3
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


@dataclass(frozen=True)
class FieldInfo:
    """What a TrainConfig leaf field accepts.

    Attributes:
        name: Dotted name, e.g. ``"optim.lr"``.
        kind: ``"int"``, ``"float"``, ``"bool"`` or ``"str"``.
        nullable: Whether ``None`` is a valid value.
    """

    name: str
    kind: str
    nullable: bool

    @property
    def param_types(self) -> tuple[str, ...]:
        """The param ``type`` values that can set this field."""
        if self.kind == "float":
            return ("categorical", "int", "float", "fixed")
        if self.kind == "int":
            return ("categorical", "int", "fixed")
        return ("categorical", "fixed")


def _kind(hint: Any) -> tuple[str, bool]:
    args = typing.get_args(hint)
    is_union = typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType)
    members = [a for a in args if a is not type(None)] if is_union else [hint]
    nullable = is_union and type(None) in args
    base = members[0] if len(members) == 1 else None
    names = {bool: "bool", int: "int", float: "float", str: "str"}
    return names.get(base, "str"), nullable  # type: ignore[arg-type]


_FIELDS: dict[str, FieldInfo] | None = None


def train_fields() -> dict[str, FieldInfo]:
    """Every TrainConfig leaf field under its dotted name (computed once)."""
    global _FIELDS
    if _FIELDS is None:
        out: dict[str, FieldInfo] = {}

        def walk(cls: type, prefix: str) -> None:
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                hint = hints[f.name]
                if dataclasses.is_dataclass(hint):
                    walk(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]
                else:
                    kind, nullable = _kind(hint)
                    out[prefix + f.name] = FieldInfo(prefix + f.name, kind, nullable)

        walk(TrainConfig, "")
        _FIELDS = out
    return _FIELDS


def field_info(name: str, *, source: str, path: str) -> FieldInfo:
    """The field a dotted name addresses; raises with close matches when there is none."""
    fields = train_fields()
    if name not in fields:
        raise fail(
            source, path, "a TrainConfig field name (dotted, e.g. 'optim.lr')", name, options=fields
        )
    return fields[name]


def normalize_value(info: FieldInfo, value: Any, *, source: str, path: str) -> Scalar:
    """The canonical form of a value for ``info``'s field (type errors raise).

    * ``model.checkpoint_segments``: ``null``, ``"off"`` or ``false`` (YAML reads a bare
      ``off`` as false) mean off (``None``); ``"default"`` means the family default (``0``).
    * float fields: ints become floats; numeric strings become floats (YAML 1.1 reads
      ``1e-4`` without a dot as a string).
    * every other value must already have the field's type; range rules are left to
      TrainConfig's own validation (see ``_loader._check_values``).
    """
    if not is_scalar(value):
        raise fail(source, path, f"{_describe(info)} (a single value)", value)
    if info.name == CHECKPOINT_FIELD:
        if value is None or value is False or value == "off":
            return None
        if value == "default":
            return 0
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise fail(source, path, "'off' (null), 'default' (0) or an integer >= 1", value)
    if value is None:
        if info.nullable:
            return None
        raise fail(source, path, _describe(info), value)
    if info.kind == "float":
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise fail(source, path, "a finite number", value)
            return float(value)
        raise fail(source, path, _describe(info), value)
    if info.kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail(source, path, _describe(info), value)
    if info.kind == "bool":
        if isinstance(value, bool):
            return value
        raise fail(source, path, _describe(info), value)
    if isinstance(value, str):
        return value
    raise fail(source, path, _describe(info), value)


def _describe(info: FieldInfo) -> str:
    text = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    return text[info.kind] + (" or null" if info.nullable else "")


def as_number(value: Any, *, integer: bool, source: str, path: str, rule: str) -> float | int:
    """A bound (``low``/``high``/``step``): an int, or for floats any finite number."""
    if integer:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail(source, path, rule, value)
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        value = float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise fail(source, path, rule, value)
