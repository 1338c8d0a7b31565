"""YAML search spaces: a validated spec that turns an Optuna trial into a ``TrainConfig``.

The format is documented in ``docs/search_spaces.md``; the shipped spaces are listed by
:func:`list_spaces` and loaded by name (``SearchSpace.from_yaml("fast")``).

Example:
    >>> from medauto.space import SearchSpace, list_spaces
    >>> "fast" in list_spaces()
    True
    >>> SearchSpace.from_yaml("fast").spatial_dims
    2
"""

from __future__ import annotations

from medauto.space._loader import Fidelity as Fidelity
from medauto.space._loader import list_spaces as list_spaces
from medauto.space._params import CategoricalParam as CategoricalParam
from medauto.space._params import Condition as Condition
from medauto.space._params import FixedParam as FixedParam
from medauto.space._params import FloatParam as FloatParam
from medauto.space._params import IntParam as IntParam
from medauto.space._params import Param as Param
from medauto.space._space import SearchSpace as SearchSpace

__all__ = [
    "CategoricalParam",
    "Condition",
    "Fidelity",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "Param",
    "SearchSpace",
    "list_spaces",
]
