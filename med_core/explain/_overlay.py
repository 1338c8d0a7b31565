"""Map post-processing for people: colour overlays on the image, 3D slices and MIPs.

Pure array functions (NumPy in, ``uint8`` RGB out); writing files is the caller's job.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["overlay", "volume_views"]


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


def _display(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """``(C, H, W)`` normalised → ``(H, W, 3)`` in ``[0, 1]`` (grey for C != 3)."""
    lo, hi = value_range
    img = np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    rgb = img[:3] if img.shape[0] == 3 else np.repeat(img[:1], 3, axis=0)
    return np.transpose(rgb, (1, 2, 0))


def _unit(m: np.ndarray) -> np.ndarray:
    """The positive part of a map scaled to ``[0, 1]`` (SHAP maps are signed)."""
    m = np.nan_to_num(np.maximum(m, 0.0))
    top = float(m.max())
    return m / top if top > 0 else m


def overlay(
    image: Any,
    saliency: Any,
    *,
    alpha: float = 0.45,
    cmap: str = "jet",
    value_range: tuple[float, float] = (-1.0, 1.0),
    min_side: int = 224,
) -> np.ndarray:
    """A colour map of ``saliency`` blended over ``image``.

    Args:
        image: ``(C, H, W)`` array or tensor, normalised (default range ``[-1, 1]``, as
            med_core's loaders give).
        saliency: ``(H, W)`` map; its positive part is scaled to ``[0, 1]``.
        alpha: Weight of the colour map.
        cmap: A matplotlib colormap name.
        value_range: The intensity range of ``image`` shown from black to white.
        min_side: Small images are enlarged (nearest neighbour, whole factors) to at
            least this side so 28 px MedMNIST images stay legible.

    Returns:
        ``uint8 (H', W', 3)`` RGB.

    Example:
        >>> import numpy as np
        >>> overlay(np.zeros((1, 28, 28)), np.ones((28, 28))).shape
        (224, 224, 3)
    """
    import matplotlib

    img, sal = _np(image), _np(saliency)
    if img.ndim != 3 or sal.shape != img.shape[1:]:
        raise ValueError(f"image (C, H, W) and map (H, W) do not fit: {img.shape}, {sal.shape}")
    heat = matplotlib.colormaps[cmap](_unit(sal))[..., :3]
    out = (1.0 - alpha) * _display(img, value_range) + alpha * heat
    k = max(1, -(-min_side // max(1, min(sal.shape))))
    out = np.kron(out, np.ones((k, k, 1), dtype=np.float32)) if k > 1 else out
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def volume_views(
    volume: Any, saliency: Any, *, slices: int = 3, **kwargs: Any
) -> list[tuple[str, np.ndarray]]:
    """Overlays of a 3D map: the axial slices where it is strongest, and the maximum-
    intensity projections (over depth) of the volume and of the map.

    Args:
        volume: ``(C, D, H, W)`` normalised volume.
        saliency: ``(D, H, W)`` map.
        slices: How many slices (those with the largest summed positive map), in depth
            order.
        **kwargs: Passed to :func:`overlay`.

    Returns:
        ``[("slice07", rgb), ..., ("mip", rgb)]``.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((8, 4, 4)); m[5] = 1.0; m[2] = 0.5
        >>> [name for name, _ in volume_views(np.zeros((1, 8, 4, 4)), m, slices=2)]
        ['slice02', 'slice05', 'mip']
    """
    vol, sal = _np(volume), _np(saliency)
    if vol.ndim != 4 or sal.shape != vol.shape[1:]:
        raise ValueError(f"volume (C, D, H, W) and map (D, H, W) do not fit: {vol.shape}, "
                         f"{sal.shape}")  # fmt: skip
    strength = np.maximum(sal, 0.0).reshape(sal.shape[0], -1).sum(1)
    top = sorted(np.argsort(-strength, kind="stable")[: max(1, min(slices, sal.shape[0]))])
    views = [(f"slice{d:02d}", overlay(vol[:, d], sal[d], **kwargs)) for d in top]
    views.append(("mip", overlay(vol.max(axis=1), np.maximum(sal, 0.0).max(axis=0), **kwargs)))
    return views
