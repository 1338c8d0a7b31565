"""Pretrained weights from the local caches only; a miss fails at once.

Nothing here touches the network. torchvision weights are looked up in the torch hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``, see :func:`torch.hub.get_dir`); timm weights in the
Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``) and then, for timm's URL fallback, in the torch hub cache.
A miss raises :class:`~med_core.exceptions.PretrainedWeightsError` naming the file, the
URL and the folder to put it in, before any model is built.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from med_core.exceptions import PretrainedWeightsError

__all__ = ["timm_weights_file", "torchvision_state_dict"]

_logger = logging.getLogger(__name__)

_HF_FILES = ("model.safetensors", "pytorch_model.bin")


def _torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, resolved now (huggingface_hub itself reads the
    environment only once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or Path.home() / ".cache") / "huggingface" / "hub"


def torchvision_weights_file(name: str) -> tuple[str, Path]:
    """The URL of torchvision's default weights for ``name`` and their cache path."""
    from torchvision.models import get_model_weights

    url = get_model_weights(name).DEFAULT.url  # type: ignore[attr-defined]
    return url, _torch_hub_checkpoints() / os.path.basename(urlparse(url).path)


def torchvision_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchvision's default (ImageNet/Kinetics) weights for ``name``, from the cache.

    Raises:
        PretrainedWeightsError: if the file is not cached or cannot be read.
    """
    url, path = torchvision_weights_file(name)
    if not path.is_file():
        raise PretrainedWeightsError(
            f"pretrained weights for backbone {name!r} are not in the local torch hub cache "
            f"and med_core never downloads: expected the file {str(path)!r}. Download {url} "
            f"into {str(path.parent)!r} (the torch hub cache; set TORCH_HOME to move it), "
            "or use pretrained=False"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or truncated file: name it, keep the cause
        raise PretrainedWeightsError(
            f"cannot read the cached weights {str(path)!r} for backbone {name!r}: {e}; "
            f"delete the file and download {url} again"
        ) from e
    _logger.info("loaded pretrained weights for %r from %s", name, path)
    return state  # type: ignore[no-any-return]


def timm_weights_file(model_name: str) -> dict[str, Any]:
    """A ``pretrained_cfg_overlay`` that points timm at a locally cached weights file.

    Looks in the Hugging Face hub cache for the model's ``hf_hub_id`` (``model.safetensors``
    or ``pytorch_model.bin``, or the configured file name) and then in the torch hub cache
    for the file of the model's ``url``.

    Raises:
        PretrainedWeightsError: when the model has no pretrained weights or none are cached.
    """
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        raise PretrainedWeightsError(f"timm model {model_name!r} has no pretrained weights")
    looked: list[str] = []
    hub_id = cfg.hf_hub_id
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        cache = _hf_hub_cache()
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HF_FILES
        for fname in names:
            found = try_to_load_from_cache(repo, fname, cache_dir=cache, revision=revision or None)
            if isinstance(found, str):
                _logger.info("timm weights for %r found in the HF cache: %s", model_name, found)
                # safetensors/bin files are native state dicts: never the custom (.npz) loader
                return {"file": found, "custom_load": False, "source": None}
        files = " or ".join(names)
        looked.append(f"Hugging Face repo {repo!r} (file {files}) under {str(cache)!r}")
    if cfg.url:
        url = str(cfg.url)
        path = _torch_hub_checkpoints() / os.path.basename(urlparse(url).path)
        if path.is_file():
            _logger.info("timm weights for %r found in the torch hub cache: %s", model_name, path)
            return {"file": str(path), "source": None}
        looked.append(f"{str(path)!r} (download {url})")
    if not looked:
        raise PretrainedWeightsError(f"timm model {model_name!r} has no pretrained weights")
    raise PretrainedWeightsError(
        f"pretrained weights for timm model {model_name!r} are not in the local caches and "
        f"med_core never downloads; looked for: {'; '.join(looked)}. Fetch them once with "
        f"`huggingface-cli download {hub_id or '<repo>'}` (or put the file there), "
        "or use pretrained=False"
    )
