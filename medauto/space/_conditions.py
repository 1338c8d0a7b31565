"""Checks between the params of a space: ``when`` conditions linked to the params they
name, mutually exclusive branches, and an order in which conditions can be evaluated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from medauto.space._params import UNSET
from medauto.space._params import Condition
from medauto.space._params import FloatParam
from medauto.space._params import Param
from medauto.space._schema import Scalar
from medauto.space._schema import fail
from medauto.space._schema import normalize_value
from medauto.space._schema import same_value
from medauto.space._schema import train_fields

__all__ = []


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
