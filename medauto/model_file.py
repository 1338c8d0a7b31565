"""The medauto model file: weights + TrainConfig + metadata, safe to load.

A model file is a plain dict saved with ``torch.save`` that loads with
``torch.load(weights_only=True)``: a crafted pickle is refused, never executed. Retrain,
the search's ensemble members and the final predictor all write and read models through
:func:`save_model` and :func:`load_model`.

Example:
    >>> nan_to_none({"auc": float("nan"), "acc": [0.5, float("inf")]})
    {'auc': None, 'acc': [0.5, None]}
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.exceptions import MedautoError
from medauto.preprocessing import PREPROCESSING_KEY
from medauto.preprocessing import Preprocessing
from medauto.preprocessing import PreprocessingError

if TYPE_CHECKING:
    from torch import nn

    from med_core.config import TrainConfig

__all__ = [
    "MODEL_FORMAT_VERSION",
    "MODEL_KIND",
    "LoadedModel",
    "ModelFileError",
    "atomic_write_bytes",
    "load_model",
    "nan_to_none",
    "save_model",
]

MODEL_FORMAT_VERSION = 1
#: The ``kind`` entry of every model file (also the MLflow ``medauto.format`` tag).
MODEL_KIND = "medauto.model"


class ModelFileError(MedautoError, ValueError):
    """A model file is missing, corrupt, unsafe to load or not written by :func:`save_model`."""


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (JSON-safe), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Writes via a temporary file in the same folder, ``fsync`` and :func:`os.replace`
    (normal permissions, unlike ``mkstemp``'s 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    cfg: TrainConfig,
    *,
    preprocessing: Preprocessing | None = None,
    **meta: Any,
) -> Path:
    """Writes weights + config + preprocessing as a plain dict that loads with
    ``weights_only=True``.

    Args:
        path: Destination (``.pt``); parents are created, the write is atomic.
        model: The classifier; its ``state_dict`` is copied to CPU.
        cfg: Its TrainConfig (stored as a nested dict).
        preprocessing: How raw images become its input (:mod:`medauto.preprocessing`);
            ``None`` → :meth:`~medauto.preprocessing.Preprocessing.from_legacy` of ``meta``
            (the stored size taken to be ``img_size``).
        **meta: Primitive metadata: ``task``, ``num_classes``, ``in_chans``, ``img_size``
            (needed by :func:`load_model`), plus anything JSON-like (trial, seed, test...).

    Returns:
        The path written.
    """
    import io

    import torch

    prep = preprocessing if preprocessing is not None else Preprocessing.from_legacy(meta)
    state = {
        "format_version": MODEL_FORMAT_VERSION,
        "kind": MODEL_KIND,
        "model": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "config": cfg.to_dict(),
        **nan_to_none(meta),
        PREPROCESSING_KEY: prep.to_dict(),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    p = Path(path)
    atomic_write_bytes(p, buf.getvalue())
    return p


@dataclass
class LoadedModel:
    """What :func:`load_model` returns: the classifier (eval mode), its config, metadata
    and preprocessing (from the file, or the documented default of a file without one)."""

    model: nn.Module
    config: TrainConfig
    meta: dict[str, Any]
    preprocessing: Preprocessing


def load_model(path: str | os.PathLike[str], *, device: str = "cpu") -> LoadedModel:
    """Rebuilds a classifier from a :func:`save_model` file (``torch.load(weights_only=True)``).

    A file holding anything but tensors and primitive containers (e.g. a crafted pickle
    with ``__reduce__``) is refused, never executed. A file without a preprocessing
    record (written before it existed) gets
    :meth:`~medauto.preprocessing.Preprocessing.from_legacy`.

    Raises:
        ModelFileError: missing, corrupt, unsafe or foreign file, or weights that do not fit.
    """
    import torch

    from med_core.config import TrainConfig
    from med_core.models import build_classifier

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"no model file at {str(p)!r}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, bad zip, EOFError, ...
        raise ModelFileError(
            f"{str(p)!r} is corrupt or unsafe to load (weights_only=True refused it): "
            f"{type(e).__name__}: {str(e)[:300]}"
        ) from e
    if not isinstance(state, dict) or state.get("kind") != MODEL_KIND:
        raise ModelFileError(f"{str(p)!r} is not a medauto model file (written by save_model)")
    if state.get("format_version") != MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{str(p)!r} has model format {state.get('format_version')!r}; this medauto reads "
            f"format {MODEL_FORMAT_VERSION}"
        )
    missing = [k for k in ("config", "model", "num_classes", "in_chans") if k not in state]
    if missing:
        raise ModelFileError(f"{str(p)!r} is incomplete: it has no {missing} (written by an "
                             "interrupted or foreign save)")
    cfg = TrainConfig.from_dict(state["config"])
    try:
        raw = state.get(PREPROCESSING_KEY)
        prep = Preprocessing.from_dict(raw) if raw is not None else Preprocessing.from_legacy(state)
    except PreprocessingError as e:
        raise ModelFileError(f"{str(p)!r}: {e}") from e
    img_size = state.get("img_size")
    model = build_classifier(
        cfg.model,
        num_classes=int(state["num_classes"]),
        in_chans=int(state["in_chans"]),
        img_size=tuple(img_size) if isinstance(img_size, list) else img_size,
    )
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise ModelFileError(f"{str(p)!r}: weights do not fit {cfg.model.backbone!r}: {e}") from e
    model.to(device).eval()
    meta = {k: v for k, v in state.items() if k not in ("model", "config", PREPROCESSING_KEY)}
    return LoadedModel(model=model, config=cfg, meta=meta, preprocessing=prep)
