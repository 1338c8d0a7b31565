"""docs/backbones.md stays in sync with the registry; docstring examples run."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

from med_core.backbones._table import BEGIN
from med_core.backbones._table import END
from med_core.backbones._table import markdown_table

DOC = Path(__file__).resolve().parents[3] / "docs" / "backbones.md"


def test_docs_table_is_generated_from_the_registry() -> None:
    text = DOC.read_text()
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == markdown_table(), (
        "docs/backbones.md is stale: run `python -m med_core.backbones._table docs/backbones.md`"
    )


@pytest.mark.parametrize(
    "module",
    [
        "med_core.backbones",
        "med_core.backbones._registry",
        "med_core.backbones._factory",
        "med_core.backbones._base",
        "med_core.backbones._checkpointing",
        "med_core.models",
        "med_core.models._classifier",
    ],
)
def test_docstring_examples(module: str) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module} has no examples"
    assert result.failed == 0, f"{result.failed} failing example(s) in {module}"
