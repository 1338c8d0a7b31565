"""medauto: AutoML for medical imaging on Optuna studies, training with med_core.

``from medauto import AutoMLOptimizer`` is the Python entry point, ``medauto`` the CLI.
Importing the package is cheap: it imports neither torch, Optuna nor MLflow until a
public name that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

from medauto.exceptions import CLIUsageError
from medauto.exceptions import MedautoError
from medauto.exceptions import SearchSpaceError
from medauto.exceptions import StorageError
from medauto.exceptions import StudyConflictError

__version__ = "0.1.0"

_LAZY = {
    "AutoMLOptimizer": "medauto.optimizer",
    "OptimizationResult": "medauto.optimizer",
    "SearchSpace": "medauto.space",
}

if TYPE_CHECKING:
    from medauto.optimizer import AutoMLOptimizer as AutoMLOptimizer
    from medauto.optimizer import OptimizationResult as OptimizationResult
    from medauto.space import SearchSpace as SearchSpace

__all__ = [
    "AutoMLOptimizer",
    "CLIUsageError",
    "MedautoError",
    "OptimizationResult",
    "SearchSpace",
    "SearchSpaceError",
    "StorageError",
    "StudyConflictError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medauto' has no attribute {name!r}")
