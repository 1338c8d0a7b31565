"""A medauto model as MLflow's ``python_function`` flavor loads and serves it.

:func:`medauto.tracking.log_retrain` (and the final model's logging) save each model as an
MLflow pyfunc model whose loader module is this one: ``mlflow.pyfunc.load_model(uri)``
and ``mlflow models serve -m <uri> --env-manager local`` (in an environment where medauto
is installed) call :func:`_load_pyfunc` (the name MLflow's ``loader_module`` contract
requires) on the model's data folder and get a :class:`ServedModel`. This module imports
no MLflow: MLflow code lives in :mod:`medauto.tracking`.

Input: ``uint8`` images, channels first, ``(N, C, H, W)`` (3D: ``(N, C, D, H, W)``),
normalised and resized as the model was trained. Output: class probabilities ``(N, C)``
(``float32``; scikit-learn's ``predict_proba`` convention).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from med_core.data import Split
from medauto.ensemble import PREDICTOR_FILE
from medauto.ensemble import Predictor
from medauto.exceptions import MedautoError
from medauto.model_file import load_model
from medauto.scoring import eval_loader
from medauto.scoring import predict_scores

__all__ = ["MODEL_FILE", "ServedModel"]

#: The model file inside a retrained model's folder.
MODEL_FILE = "model.pt"


class ServedModel:
    """A retrained model file, or a final predictor folder, with MLflow's ``predict``.

    Args:
        path: A model folder (holding :data:`MODEL_FILE`), a model file, or a predictor
            folder (holding ``predictor.json``).
        batch_size: Images per forward pass.

    Attributes:
        task: The task type.
        in_chans: Channels of an input image.
        spatial_dims: 2 or 3.
        n_outputs: Columns of :meth:`predict`'s output (classes; labels for multi-label).

    Raises:
        ModelFileError, PredictorError: nothing loadable at ``path``.
    """

    def __init__(self, path: str | os.PathLike[str], *, batch_size: int = 256) -> None:
        p = Path(path)
        self.batch_size = batch_size
        self._predictor: Predictor | None = None
        self._loaded: Any = None
        if (p / PREDICTOR_FILE).is_file():
            self._predictor = Predictor.load(p)
            spec = self._predictor.input_spec
            self.task = self._predictor.task
            self.in_chans, self.spatial_dims = int(spec["in_chans"]), int(spec["spatial_dims"])
            n = len(self._predictor.class_names)
        else:
            self._loaded = load_model(p / MODEL_FILE if p.is_dir() else p)
            meta = self._loaded.meta
            self.task = str(meta["task"])
            self.in_chans, self.spatial_dims = int(meta["in_chans"]), int(meta["spatial_dims"])
            n = int(meta["num_classes"])
        self.n_outputs = max(n, 2) if self.task == "binary" else n

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """Class probabilities ``(N, C)`` of ``uint8`` channels-first images.

        Args:
            model_input: An array-like of images (what MLflow passes: a NumPy array for a
                tensor signature).
            params: MLflow inference parameters (none are used).

        Raises:
            MedautoError: the images do not have the model's number of dimensions.
        """
        images = np.asarray(model_input)
        if self._predictor is not None:
            return self._predictor.predict_proba(images, batch_size=self.batch_size).astype(
                np.float32)
        cfg, dims = self._loaded.config, self.spatial_dims
        if images.ndim != 2 + dims or images.shape[1] != self.in_chans:
            axes = "H, W" if dims == 2 else "D, H, W"
            raise MedautoError(
                f"images must have shape (N, {self.in_chans}, {axes}) (channels first, "
                f"uint8), got {tuple(images.shape)}"
            )
        split = Split(images.astype(np.uint8, copy=False), np.zeros(len(images), np.int64))
        loader = eval_loader(split, cfg, spatial_dims=dims, batch_size=self.batch_size)
        _, s = predict_scores(self._loaded.model, loader, task=self.task, tta=cfg.tta)
        probs = np.stack([1 - s, s], axis=1) if self.task == "binary" else s
        return probs.astype(np.float32)


def _load_pyfunc(data_path: str) -> ServedModel:
    """MLflow's ``loader_module`` entry point: the model saved under ``data_path``."""
    return ServedModel(data_path)
