"""med_core: a PyTorch training library for medical image classification.

Backbones (``med_core.backbones``), classifiers (``med_core.models``), datasets and
augmentation (``med_core.data``), the trainer (``med_core.training``) and model
compression (``med_core.optimization``). It never imports Optuna or MLflow: search and
tracking plug in through :class:`med_core.training.Callback`.

Importing the top-level package is cheap: subpackages load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
