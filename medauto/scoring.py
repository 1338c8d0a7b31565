"""Scores of a model on a split, and the metrics medauto reports for them.

One place for "run a model over a split": retrain, the search's ensemble members and the
final predictor all call :func:`predict_scores` over an :func:`eval_loader`, so a model is
scored the same way wherever it is evaluated.

Example:
    >>> split_metrics("binary", [0, 1, 1, 0], [0.2, 0.9, 0.6, 0.4])["auc"]
    1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    import numpy as np

    from med_core.config import TrainConfig

__all__ = ["METRICS", "eval_loader", "predict_scores", "split_metrics"]

#: The test/validation metrics medauto reports (keys of ``compute_metrics``).
METRICS = ("auc", "acc", "balanced_acc", "macro_f1")


def predict_scores(
    model: Any, loader: Any, *, task: str, tta: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of every batch of ``loader``, as ``Trainer.predict`` defines them.

    Binary: softmax probability of class 1; multi-class/ordinal: softmax; multi-label:
    sigmoid; with ``tta`` averaged over the image and its horizontal flip. ``model`` is
    called as is (put a float model in eval mode first; exported int8 graphs have no
    mode), under ``torch.no_grad()``.
    """
    import numpy as np
    import torch

    ys, ss = [], []
    with torch.no_grad():
        for x, y in loader:
            views = [x, x.flip(-1)] if tta else [x]
            probs = []
            for v in views:
                logits = model(v).float()
                probs.append(
                    torch.sigmoid(logits) if task == "multi-label" else torch.softmax(logits, 1)
                )
            p = torch.stack(probs).mean(0)
            ss.append((p[:, 1] if task == "binary" else p).cpu().numpy())
            ys.append(y.cpu().numpy())
    return np.concatenate(ys), np.concatenate(ss)


def split_metrics(task: str, y_true: Any, y_score: Any) -> dict[str, float]:
    """:data:`METRICS` of scores ``y_score`` against ``y_true`` (MedMNIST's ACC/AUC)."""
    from med_core.training import compute_metrics

    values = compute_metrics(task, y_true, y_score)
    return {k: float(values[k]) for k in METRICS}


def eval_loader(
    split: Any, cfg: TrainConfig, *, spatial_dims: int, batch_size: int, device: str = "cpu"
) -> Any:
    """An evaluation loader over ``split`` as ``cfg`` preprocesses it (no augmentation)."""
    from med_core.data import build_loader

    return build_loader(
        split,
        batch_size=batch_size,
        train=False,
        device=device,
        augment=None,
        seed=cfg.seed,
        mode=cfg.data.loader,
        img_size=cfg.data.img_size,
        num_workers=0,
        spatial_dims=spatial_dims,
    )
