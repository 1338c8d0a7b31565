"""Old name of :mod:`medauto.pruning`, kept until ``medauto/objective.py`` imports from there
(then delete this file)."""

from medauto.pruning import PruningCallback as PruningCallback

__all__ = ["PruningCallback"]
