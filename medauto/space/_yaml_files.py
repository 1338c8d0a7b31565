"""Where search-space files are and how they are read: the shipped spaces, a name or
path resolved to a file, and a safe YAML loader that refuses duplicate keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from medauto.space._schema import fail

__all__ = ["list_spaces", "load_yaml_text", "read_yaml", "resolve", "shipped_dirs"]


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
