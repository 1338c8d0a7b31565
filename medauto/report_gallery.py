"""The report's explanation gallery: test images per class with their CAM overlays.

For each class, from the final predictor's **stored** test scores (``predictions.npz`` of
``medauto retrain``: the test split was scored once there, and nothing here computes a
metric) it picks the correct prediction of highest confidence, the wrong prediction of
highest confidence and the most borderline one (smallest margin between the two most
probable classes), explains each with the final model(s) (an ensemble: the mean of its
members' maps for the ensemble's class), and shows the image next to its overlay. The
section states that CAMs are not a diagnosis. It never stops a report: when it cannot be
built (no model files, no data, no ``explain`` extra) it says why in one paragraph.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

from med_core.exceptions import MedCoreError
from medauto.exceptions import MedautoError
from medauto.logging import get_logger
from medauto.retrain.results import RESULTS_FILE

if TYPE_CHECKING:
    from medauto.retrain import RetrainResult

__all__ = ["NOT_A_DIAGNOSIS", "gallery_blocks", "select_examples"]

_logger = get_logger(__name__)

NOT_A_DIAGNOSIS = (
    "Class activation maps show which image regions most influenced the model's score for "
    "the class shown. They are not a diagnosis and not a validated localisation of disease: "
    "a map can look plausible while the prediction is wrong, and the reverse."
)
KINDS = ("correct, most confident", "wrong, most confident", "borderline")

Block = tuple[Any, ...]


def _probs(scores: np.ndarray) -> np.ndarray:
    """Stored scores → ``(N, K)`` probabilities (binary files store ``p(class 1)``)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.stack([1.0 - s, s], axis=1) if s.ndim == 1 else s


def select_examples(y_true: np.ndarray, scores: np.ndarray) -> dict[int, dict[str, int]]:
    """Per true class, the test index of each gallery kind (a kind with no candidate is
    left out).

    Example:
        >>> picks = select_examples(np.array([0, 0, 1, 1]), np.array([0.1, 0.7, 0.55, 0.8]))
        >>> picks[0]
        {'correct, most confident': 0, 'wrong, most confident': 1, 'borderline': 1}
        >>> picks[1]  # no wrong prediction of class 1
        {'correct, most confident': 3, 'borderline': 2}
    """
    probs = _probs(scores)
    y = np.asarray(y_true).reshape(-1).astype(int)
    pred = probs.argmax(1)
    conf = probs.max(1)
    top2 = np.sort(probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    out: dict[int, dict[str, int]] = {}
    for c in range(probs.shape[1]):
        mine = np.flatnonzero(y == c)
        if not len(mine):
            continue
        picks: dict[str, int] = {}
        for kind, cand, key in ((KINDS[0], mine[pred[mine] == c], -conf),
                                (KINDS[1], mine[pred[mine] != c], -conf),
                                (KINDS[2], mine, margin)):  # fmt: skip
            if len(cand):
                picks[kind] = int(cand[np.argmin(key[cand])])  # first of ties
        out[c] = picks
    return out


def _final_scores(result: RetrainResult, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    seed = result.per_seed[0]
    key = seed.members[0] if len(seed.members) == 1 else f"ensemble-seed{seed.seed}"
    try:
        with np.load(folder / "predictions.npz") as f:
            return f["y_true"], f[key]
    except (OSError, KeyError) as e:
        raise MedautoError(f"no stored test scores of the final predictor ({e})") from e


def _pair_png(x: Any, saliency: Any) -> bytes:
    """The image (left) next to its overlay (right); 3D: maximum-intensity projections."""
    from med_core.explain import overlay
    from medauto.explain import png_bytes

    if x.ndim == 4:  # (C, D, H, W)
        x, saliency = x.max(1).values, saliency.clamp(min=0).max(0).values
    plain = overlay(x, np.zeros(tuple(saliency.shape)), alpha=0.0)
    return png_bytes(np.concatenate([plain, overlay(x, saliency)], axis=1))


def _blocks(result: RetrainResult, images: dict[str, bytes], method: str) -> list[Block]:
    from med_core.data import load_dataset
    from med_core.explain import expected_input
    from med_core.explain import explain
    from medauto.explain import final_model_paths
    from medauto.explain import normalised
    from medauto.model_file import load_model

    if result.task == "multi-label":
        return [("p", "No gallery for multi-label tasks (no single true class per image).")]
    if not result.per_seed or not result.out_dir:
        raise MedautoError("the retrain results name no final predictor")
    folder = Path(result.out_dir)
    y_true, scores = _final_scores(result, folder)
    picks = select_examples(y_true, scores)
    loaded = [load_model(p) for p in final_model_paths(folder / RESULTS_FILE)]
    members = [m.model for m in loaded]
    ds = load_dataset(loaded[0].config.data)  # the data retrain tested on (its data_dir)
    if len(ds.test) != len(y_true):
        raise MedautoError(f"the test split of {result.dataset!r} has {len(ds.test)} images, "
                           f"the stored scores {len(y_true)}")  # fmt: skip
    idx = sorted({i for kinds in picks.values() for i in kinds.values()})
    x = normalised(np.asarray(ds.test.images[idx]), expected_input(members[0])[1])
    probs = _probs(scores)
    target = [int(probs[i].argmax()) for i in idx]  # the class the final predictor chose
    maps = explain(members, x, method, target=target)
    row = {i: k for k, i in enumerate(idx)}
    names = ds.info.class_names
    out: list[Block] = [("p", (
        f"Test images of each class picked from the final predictor's stored test scores "
        f"(no new evaluation); left: the image, right: its {method} map for the predicted "
        "class" + (" (mean over the ensemble's members)" if len(members) > 1 else "")
        + (". 3D: maximum-intensity projections over depth." if x.ndim == 5 else "."))),
    ]
    for c, kinds in picks.items():
        out.append(("h3", f"True class {c}: {names[c]}"))
        rows = []
        for kind, i in kinds.items():
            p = int(probs[i].argmax())
            fname = f"gallery-c{c}-{KINDS.index(kind)}.png"
            images[fname] = _pair_png(x[row[i]], maps[row[i]])
            out.append(("img", fname, f"{kind}: test image {i}"))
            rows.append([kind, i, f"{names[p]} ({probs[i, p]:.3f})"])
        out.append(("table", ["example", "test index", "predicted (probability)"], rows))
    return out


def gallery_blocks(
    result: RetrainResult, images: dict[str, bytes], *, method: str = "gradcam"
) -> list[Block]:
    """The gallery section of a report; adds its PNGs to ``images`` (name → bytes).

    Args:
        result: ``medauto retrain``'s results (its folder holds the model files and
            ``predictions.npz``).
        images: The report's image table; gallery PNGs are added to it.
        method: The explanation method (see :data:`med_core.explain.METHODS`).

    Returns:
        Report blocks (``("h2", ...)``, ``("p", ...)``, ``("img", ...)``, ``("table", ...)``);
        when the gallery cannot be built, the heading, the statement and one paragraph
        saying why.
    """
    head: list[Block] = [("h2", "Explanations: test images per class"), ("p", NOT_A_DIAGNOSIS)]
    added: dict[str, bytes] = {}
    try:
        blocks = _blocks(result, added, method)
    except (MedautoError, MedCoreError, ImportError, OSError) as e:
        _logger.warning("report: no explanation gallery: %s", e)
        return [*head, ("p", f"No gallery: {e}")]
    images.update(added)
    return [*head, *blocks]
