"""What a model does to an image before it sees it, recorded with the model.

Training reads images as channels-first ``uint8`` arrays at the dataset's stored size
(MedMNIST: the ``.npz`` as it is; an image folder or CSV manifest: decoded by
:func:`med_core.data.read_image`, brought to the dataset's channels and size by
:func:`med_core.data.conform_image`), then the evaluation loader resizes each batch to the
model's input size and normalises it as ``(x / 255 - 0.5) / 0.5``. A
:class:`Preprocessing` records those steps as data, in every model file
(:func:`medauto.model_file.save_model`) and in every predictor (``predictor.json``'s
``input``), so :meth:`Preprocessing.conform` turns a raw image from disk into the model's
input the way training did.

Files written before this record existed get :meth:`Preprocessing.from_legacy`'s
documented default: the stored size is taken to be the model's input size (the only size
such a file names), channels and dimensions from the file, and the one normalisation
medauto has ever used.

Example:
    >>> p = Preprocessing(spatial_dims=2, in_chans=1, stored_size=(28, 28),
    ...                   model_size=(64, 64))
    >>> Preprocessing.from_dict(p.to_dict()) == p
    True
    >>> p.describe()
    'grey 28x28 uint8 -> resize 64x64 (bilinear) -> (x/255 - 0.5)/0.5'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

from medauto.exceptions import MedautoError

if TYPE_CHECKING:
    import numpy as np

    from med_core.data import DatasetInfo

__all__ = ["NORMALISATION", "PREPROCESSING_KEY", "Preprocessing", "PreprocessingError"]

#: The model-file key of the record (``input`` in ``predictor.json`` holds the same dict).
PREPROCESSING_KEY = "preprocessing"
#: The normalisation of :mod:`med_core.data`'s loaders: ``(x / scale - mean) / std``.
NORMALISATION: dict[str, float] = {"scale": 255.0, "mean": 0.5, "std": 0.5}
_CHANNELS = {1: "grey", 3: "rgb"}


class PreprocessingError(MedautoError, ValueError):
    """A preprocessing record is malformed, or an image does not fit it (one line)."""


def _size(value: Any, dims: int, key: str) -> tuple[int, ...]:
    if isinstance(value, int):
        value = [value] * dims
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != dims or min(out, default=0) < 1:
        raise PreprocessingError(f"preprocessing {key!r} must be {dims} positive integers, "
                                 f"got {value!r}")
    return out


@dataclass(frozen=True)
class Preprocessing:
    """Raw image → model input, as training did it.

    Attributes:
        spatial_dims: 2 (images) or 3 (volumes).
        in_chans: Channels of the stored images (1 grey, 3 RGB).
        stored_size: The dataset's stored size, ``(H, W)`` or ``(D, H, W)``: raw images
            are resized to it first (PIL bilinear), as the dataset was built.
        model_size: The model's input size; the loader resizes the stored images to it
            (2-D: torchvision antialiased bilinear; 3-D: trilinear). ``None`` in an
            ensemble's record: each member resizes to its own (its model file says).
        normalisation: ``(x / scale - mean) / std`` (:data:`NORMALISATION`; ``None`` →
            that one, the only one medauto's loaders apply).
    """

    spatial_dims: int
    in_chans: int
    stored_size: tuple[int, ...]
    model_size: tuple[int, ...] | None
    normalisation: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise PreprocessingError(
                f"preprocessing 'spatial_dims' must be 2 or 3, got {self.spatial_dims!r}")
        if self.in_chans < 1:
            raise PreprocessingError(
                f"preprocessing 'in_chans' must be >= 1, got {self.in_chans!r}")
        object.__setattr__(self, "stored_size",
                           _size(self.stored_size, self.spatial_dims, "stored_size"))
        if self.model_size is not None:
            object.__setattr__(self, "model_size",
                               _size(self.model_size, self.spatial_dims, "model_size"))
        norm = dict(NORMALISATION if self.normalisation is None else self.normalisation)
        if norm != NORMALISATION:
            raise PreprocessingError(f"preprocessing 'normalisation' {norm} is not the one "
                                     f"this medauto's loaders apply ({NORMALISATION})")
        object.__setattr__(self, "normalisation", norm)

    # ------------------------------------------------------------------ dict form
    def to_dict(self) -> dict[str, Any]:
        """JSON form (also the ``input`` of ``predictor.json``: ``image_size`` is the
        stored size, ``layout`` and ``dtype`` say what :meth:`conform` returns)."""
        return {
            "spatial_dims": self.spatial_dims, "in_chans": self.in_chans,
            "image_size": list(self.stored_size),
            "model_size": None if self.model_size is None else list(self.model_size),
            "dtype": "uint8", "layout": "NCHW" if self.spatial_dims == 2 else "NCDHW",
            "channels": _CHANNELS.get(self.in_chans, f"{self.in_chans} channels"),
            "resize": "bilinear", "normalisation": dict(self.normalisation or NORMALISATION),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        """Reads :meth:`to_dict`'s form. A predictor written before ``model_size`` existed
        (its ``input`` names only the stored size) gets ``None`` (each member's own); its
        ``normalisation`` text is that of :data:`NORMALISATION`.

        Raises:
            PreprocessingError: a key is missing or out of range (named).
        """
        missing = [k for k in ("spatial_dims", "in_chans", "image_size") if k not in d]
        if missing:
            raise PreprocessingError(f"preprocessing record has no {missing}: {dict(d)}")
        norm = d.get("normalisation")
        return cls(spatial_dims=int(d["spatial_dims"]), in_chans=int(d["in_chans"]),
                   stored_size=d["image_size"], model_size=d.get("model_size"),
                   normalisation=norm if isinstance(norm, Mapping) else None)

    @classmethod
    def for_dataset(cls, info: DatasetInfo, model_size: Any = None) -> Preprocessing:
        """The record of a model trained on a dataset with ``info`` at ``model_size``
        (``None`` for an ensemble, whose members each resize to their own)."""
        size = None if model_size is None else _size(model_size, info.spatial_dims,
                                                     "model_size")
        return cls(spatial_dims=info.spatial_dims, in_chans=info.in_chans,
                   stored_size=tuple(info.image_size), model_size=size)

    @classmethod
    def from_legacy(cls, meta: Mapping[str, Any]) -> Preprocessing:
        """The documented default of a model file without a record: ``in_chans``,
        ``spatial_dims`` (default: the length of ``img_size``, else 2) and ``img_size`` from
        the file; the stored size is the model size.

        Raises:
            PreprocessingError: the file names no ``img_size``.
        """
        raw = meta.get("img_size")
        if raw is None:
            raise PreprocessingError("the model file records neither its preprocessing nor "
                                     "its 'img_size'; medauto cannot prepare images for it")
        dims = int(meta.get("spatial_dims") or (len(raw) if isinstance(raw, (list, tuple))
                                                else 2))
        size = _size(raw, dims, "img_size")
        return cls(spatial_dims=dims, in_chans=int(meta["in_chans"]), stored_size=size,
                   model_size=size)

    def describe(self) -> str:
        """One line for the console."""
        what = _CHANNELS.get(self.in_chans, f"{self.in_chans}-channel")
        stored = "x".join(map(str, self.stored_size))
        model = ("each member's size" if self.model_size is None
                 else "x".join(map(str, self.model_size)))
        resize = f" -> resize {model} ({'bilinear' if self.spatial_dims == 2 else 'trilinear'})"
        return (f"{what} {stored} uint8{resize if model != stored else ''} -> "
                f"(x/255 - 0.5)/0.5")

    # ------------------------------------------------------------------ applying it
    def conform(self, image: np.ndarray, *, name: str = "image") -> np.ndarray:
        """One image → ``(in_chans, *stored_size)`` uint8, the model's stored form.

        ``image`` is a decoded file (:func:`med_core.data.read_image`: ``(H, W)`` or
        ``(H, W, 3)``) or an array already channels-first at some size (an ``.npz`` split
        of another size: resized like a file). 3-D volumes must come channels-first
        (``(D, H, W)`` or ``(C, D, H, W)``) at the stored size.

        Raises:
            PreprocessingError: the image's dimensions or channels cannot be brought to
                this record (naming ``name``, the shape and the rule).
        """
        import numpy as np

        from med_core.data import conform_image

        a = np.asarray(image)
        if a.dtype != np.uint8:
            raise PreprocessingError(f"{name}: pixels must be uint8, got {a.dtype}")
        if self.spatial_dims == 3:
            a = a[None] if a.ndim == 3 else a
            want = (self.in_chans, *self.stored_size)
            if a.shape != want:
                raise PreprocessingError(f"{name}: a 3-D model takes volumes of shape {want} "
                                         f"(channels first), got {tuple(np.shape(image))}")
            return a
        if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
            a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)  # channels first → last
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
            raise PreprocessingError(f"{name}: a 2-D model takes grey (H, W) or RGB (H, W, 3) "
                                     f"images, got shape {tuple(np.shape(image))}")
        if self.in_chans not in (1, 3):
            raise PreprocessingError(f"{name}: the model takes {self.in_chans} channels; only "
                                     "grey or RGB images can be converted for it")
        return conform_image(a, in_chans=self.in_chans, size=self.stored_size)  # type: ignore[arg-type]
