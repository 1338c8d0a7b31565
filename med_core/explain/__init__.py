"""Explanations of med_core classifiers: CAMs (torchcam), SHAP (shap) and faithfulness.

``explain(model, images, method, target)`` returns one map per image at the input's size
for every registered backbone family, 2D and 3D. The CAM target layer of each family is
declared by the backbone itself (``Backbone.cam_target_layer`` and ``cam_grid``), never
guessed from module names. :func:`faithfulness` measures deletion/insertion AUCs of any
maps (torchcam's ``DeletionInsertionMetric``), and :mod:`med_core.explain` also renders
overlays (:func:`overlay`, :func:`volume_views`). See ``docs/explain.md``.

Example:
    >>> import torch
    >>> from med_core.explain import METHODS, explain
    >>> from med_core.models import build_classifier
    >>> METHODS
    ('gradcam', 'gradcam++', 'scorecam', 'layercam', 'shap', 'random')
    >>> model = build_classifier({"backbone": "r3d_18"}, num_classes=2, in_chans=1, img_size=16)
    >>> explain(model, torch.randn(1, 1, 16, 16, 16), "layercam").shape
    torch.Size([1, 16, 16, 16])
"""

from __future__ import annotations

from med_core.explain._checks import CAM_METHODS as CAM_METHODS
from med_core.explain._checks import METHODS as METHODS
from med_core.explain._checks import ExplainError as ExplainError
from med_core.explain._checks import expected_input as expected_input
from med_core.explain._explain import explain as explain
from med_core.explain._explain import predict_proba as predict_proba
from med_core.explain._faithfulness import faithfulness as faithfulness
from med_core.explain._overlay import overlay as overlay
from med_core.explain._overlay import volume_views as volume_views

__all__ = [
    "CAM_METHODS",
    "METHODS",
    "ExplainError",
    "expected_input",
    "explain",
    "faithfulness",
    "overlay",
    "predict_proba",
    "volume_views",
]
