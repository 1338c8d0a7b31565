"""Classifiers: a :mod:`med_core.backbones` backbone plus a dropout + linear head.

Example:
    >>> import torch
    >>> from med_core.models import build_classifier
    >>> model = build_classifier({"backbone": "mobilenet_v3_small"}, num_classes=2,
    ...                          in_chans=1, img_size=28)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

from med_core.models._classifier import Classifier as Classifier
from med_core.models._classifier import build_classifier as build_classifier

__all__ = ["Classifier", "build_classifier"]
