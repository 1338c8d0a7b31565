"""Explain a study's final model (or model files) on images: PNG overlays on disk.

The service side of :mod:`med_core.explain`: it finds the model(s) — the final predictor
of a study (the first seed's models of ``medauto retrain``, several for an ensemble) or
``save_model`` files — reads images (a MedMNIST split with indices, a folder, or single
files: PNG/JPEG/... for 2D models, ``.npy`` volumes for 3D ones), prepares them exactly as
the evaluation loader does (resize to the model's size, ``(x/255 - 0.5)/0.5``), computes
every map first and only then writes the PNGs, each atomically. For 3D, each map gives
the slices where it is strongest and a maximum-intensity projection.

Example:
    >>> from medauto.explain import parse_indices
    >>> parse_indices("0,3,5-7")
    [0, 3, 5, 6, 7]
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import numpy as np

from medauto.exceptions import MedautoError
from medauto.logging import get_logger
from medauto.model_file import atomic_write_bytes

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "ExplainInputError",
    "ExplainedImage",
    "Images",
    "explain_images",
    "final_model_paths",
    "load_images",
    "members_of",
    "parse_indices",
    "png_bytes",
]

_logger = get_logger(__name__)

_FILE_EXTENSIONS_2D = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_FILE_EXTENSIONS_3D = (".npy",)


class ExplainInputError(MedautoError, ValueError):
    """Images or models given to ``medauto explain`` cannot be used (one line, named)."""


# ------------------------------------------------------------------------------ models
def final_model_paths(retrain_json: str | os.PathLike[str]) -> list[Path]:
    """The model files of a study's final predictor: the first seed's models (all of the
    ensemble's members, in retrain's order) from a ``retrain.json``.

    Raises:
        MedautoError: the file is missing or malformed, or names no model.
    """
    from medauto.retrain import RetrainResult

    p = Path(retrain_json)
    result = RetrainResult.load(p)
    by_name = {m.name: m for m in result.models}
    names = result.per_seed[0].members if result.per_seed else [m.name for m in result.models[:1]]
    if not names or any(n not in by_name for n in names):
        raise MedautoError(f"{str(p)!r} names no retrained model for the final predictor")
    return [p.parent / by_name[n].path for n in names]


def members_of(predictor: Any) -> list[nn.Module]:
    """The float classifiers behind a predictor: a module, a ``LoadedModel`` (``.model``),
    an ensemble object exposing ``.members`` (modules or loaded models), or a sequence."""
    from torch import nn

    if isinstance(predictor, nn.Module):
        return [predictor]
    if hasattr(predictor, "members"):
        return [m for p in predictor.members for m in members_of(p)]
    if hasattr(predictor, "model") and isinstance(predictor.model, nn.Module):
        return [predictor.model]
    if isinstance(predictor, Sequence) and not isinstance(predictor, (str, bytes)):
        return [m for p in predictor for m in members_of(p)]
    raise ExplainInputError(f"cannot explain a {type(predictor).__name__}: not a model or an "
                            "ensemble of models")  # fmt: skip


# ------------------------------------------------------------------------------ images
@dataclass
class Images:
    """Images as uint8 ``(N, C, *S)`` at their stored size, with names (and labels)."""

    pixels: np.ndarray
    names: list[str]
    labels: list[int | None] = field(default_factory=list)


def parse_indices(text: str) -> list[int]:
    """``"0,3,5-7"`` → ``[0, 3, 5, 6, 7]``.

    Raises:
        ExplainInputError: not a comma-separated list of integers and ranges.
    """
    out: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise ExplainInputError(f"--indices: expected e.g. '0,3,5-7', got {text!r}") from None
    if not out or min(out) < 0:
        raise ExplainInputError(f"--indices: expected non-negative indices, got {text!r}")
    return out


def _read_file(path: Path, spatial_dims: int) -> np.ndarray:
    """One file → uint8 ``(C, *S)``."""
    ext = path.suffix.lower()
    if spatial_dims == 3:
        if ext not in _FILE_EXTENSIONS_3D:
            raise ExplainInputError(f"{str(path)!r}: a 3D model needs .npy volumes (D, H, W)")
        a = np.load(path, allow_pickle=False)
        a = a[None] if a.ndim == 3 else a
        if a.ndim != 4:
            raise ExplainInputError(f"{str(path)!r}: expected a (D, H, W) or (C, D, H, W) "
                                    f"volume, got shape {a.shape}")  # fmt: skip
        return np.clip(a, 0, 255).astype(np.uint8) if a.dtype != np.uint8 else a
    if ext not in _FILE_EXTENSIONS_2D:
        raise ExplainInputError(f"{str(path)!r}: a 2D model needs an image file "
                                f"({', '.join(_FILE_EXTENSIONS_2D)})")  # fmt: skip
    from PIL import Image

    try:
        with Image.open(path) as img:
            grey = img.mode in ("1", "L", "LA", "I", "I;16", "F")
            a = np.asarray(img.convert("L" if grey else "RGB"))
    except OSError as e:
        raise ExplainInputError(f"cannot read image {str(path)!r}: {e}") from e
    return np.array(a[None] if a.ndim == 2 else np.transpose(a, (2, 0, 1)))  # a writable copy


def _resize_to(a: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    import torch

    from med_core.data import Split
    from med_core.data import build_loader

    x, _ = next(iter(build_loader(Split(a[None], np.zeros(1, np.int64)), batch_size=1,
                                  train=False, img_size=size, mode="tensor")))  # fmt: skip
    return ((x[0] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def load_images(
    *,
    spatial_dims: int,
    data: str | None = None,
    split: str = "test",
    indices: Sequence[int] | None = None,
    paths: Sequence[str | os.PathLike[str]] = (),
    data_dir: str | os.PathLike[str] | None = None,
    size: tuple[int, ...] | None = None,
) -> Images:
    """Reads the images to explain: a dataset split (MedMNIST name or ``.npz``) with
    indices, or files and folders (every image file directly inside a folder, sorted).

    Files of different sizes are resized to ``size`` (the model's). Raises
    :class:`ExplainInputError` for a missing file, an unreadable one, an index out of
    range, or a mix of both sources.
    """
    if (data is None) == (not paths):
        raise ExplainInputError("give either a dataset (--data, with --split/--indices) or "
                                "image paths (--images), not both or neither")  # fmt: skip
    if data is not None:
        from med_core.data import load_dataset

        s = load_dataset(data, data_dir=data_dir).split(split)
        idx = list(indices) if indices is not None else list(range(min(8, len(s))))
        bad = [i for i in idx if i >= len(s)]
        if bad:
            raise ExplainInputError(f"--indices {bad} out of range: the {split} split of "
                                    f"{data!r} has {len(s)} images")  # fmt: skip
        labels = [int(v) if np.ndim(v) == 0 else None for v in s.labels[idx]]
        return Images(np.asarray(s.images[idx]), [f"{split}{i:05d}" for i in idx], labels)
    exts = _FILE_EXTENSIONS_3D if spatial_dims == 3 else _FILE_EXTENSIONS_2D
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in exts)
            if not found:
                raise ExplainInputError(f"folder {str(p)!r} has no {'/'.join(exts)} files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ExplainInputError(f"no image file or folder at {str(p)!r}")
    arrays = [_read_file(f, spatial_dims) for f in files]
    if size is not None:
        arrays = [a if tuple(a.shape[1:]) == tuple(size) else _resize_to(a, size) for a in arrays]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ExplainInputError(f"images differ in shape {sorted(shapes)}; give the model size")
    return Images(np.stack(arrays), [f.stem for f in files], [None] * len(files))


def normalised(pixels: np.ndarray, size: tuple[int, ...]) -> torch.Tensor:
    """uint8 ``(N, C, *S)`` → float batch at ``size``, exactly as the evaluation loader."""
    import torch

    from med_core.data import Split
    from med_core.data import build_loader

    split = Split(pixels, np.zeros(len(pixels), np.int64))
    loader = build_loader(split, batch_size=len(pixels), train=False, img_size=size, mode="tensor")
    return torch.cat([x for x, _ in loader])


# ----------------------------------------------------------------------------- writing
def png_bytes(rgb: np.ndarray) -> bytes:
    """``uint8 (H, W, 3)`` → PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class ExplainedImage:
    """One image's prediction and the PNG files written for it."""

    name: str
    label: int | None
    predicted: int
    probability: float
    target: int
    files: dict[str, list[str]]


def explain_images(
    models: Sequence[nn.Module],
    images: Images,
    out_dir: str | os.PathLike[str],
    *,
    methods: Sequence[str] = ("gradcam",),
    target: int | None = None,
    slices: int = 3,
    shap_samples: int = 32,
    max_channels: int | None = None,
    weights: Sequence[float] | None = None,
    layer: int | None = None,
) -> list[ExplainedImage]:
    """Explains ``images`` with ``models`` (their mean for an ensemble, weighted by
    ``weights``, an ensemble predictor's member weights) and writes PNGs.

    ``layer`` moves the CAMs (and the random map) to ``Backbone.units()[layer]``
    (:func:`med_core.explain.explain`); SHAP has no target layer and ignores it.

    Every map is computed before the first file is written, so a bad method, model or
    image raises before anything lands in ``out_dir``; each file (and ``explain.json``,
    the per-image summary) is written atomically. Files: ``<name>_<method>.png`` for 2D;
    ``<name>_<method>_sliceDD.png`` and ``<name>_<method>_mip.png`` for 3D.

    Raises:
        med_core.explain.ExplainError: a method the model cannot support, wrong channels.
        ExplainInputError: an empty image list.
    """
    from med_core.explain import expected_input
    from med_core.explain import explain
    from med_core.explain import overlay
    from med_core.explain import predict_proba
    from med_core.explain import volume_views

    if len(images.names) == 0:
        raise ExplainInputError("no images to explain")
    members = list(models)
    chans, size = expected_input(members[0])
    if chans is not None and images.pixels.shape[1] != chans:
        raise ExplainInputError(
            f"the model takes {chans}-channel images, the images have {images.pixels.shape[1]}"
        )
    x = normalised(images.pixels, size)
    probs = predict_proba(members, x, weights)
    targets = probs.argmax(1) if target is None else None
    maps = {m: explain(members, x, m, target=target, shap_samples=shap_samples,
                       max_channels=max_channels, weights=weights,
                       layer=None if m == "shap" else layer) for m in methods}  # fmt: skip
    out = Path(out_dir)
    pending: list[tuple[Path, bytes]] = []
    results = []
    for i, name in enumerate(images.names):
        files: dict[str, list[str]] = {}
        for method, batch in maps.items():
            tag = method.replace("+", "p")
            views = ([(f"{name}_{tag}.png", overlay(x[i], batch[i]))] if x.ndim == 4 else
                     [(f"{name}_{tag}_{v}.png", rgb)
                      for v, rgb in volume_views(x[i], batch[i], slices=slices)])  # fmt: skip
            files[method] = [f for f, _ in views]
            pending += [(out / f, png_bytes(rgb)) for f, rgb in views]
        t = int(targets[i]) if targets is not None else int(target)  # type: ignore[arg-type]
        results.append(ExplainedImage(name=name, label=images.labels[i] if images.labels
                                      else None, predicted=int(probs[i].argmax()),
                                      probability=float(probs[i].max()), target=t,
                                      files=files))  # fmt: skip
    for path, payload in pending:
        atomic_write_bytes(path, payload)
    summary = [r.__dict__ for r in results]
    atomic_write_bytes(out / "explain.json", (json.dumps(summary, indent=2) + "\n").encode())
    _logger.info("wrote %d overlays for %d images to %s", len(pending), len(results), out)
    return results
