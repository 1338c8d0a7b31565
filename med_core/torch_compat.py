"""The one place where med_core and the benchmarks touch private names of torch and timm.

Each name here has no public equivalent:

* ``torch.nn.modules.batchnorm._NormBase``: the base class of every norm layer with
  running statistics (BatchNorm, SyncBatchNorm, InstanceNorm); gradient checkpointing
  must find them to update their statistics once per step (:data:`NormWithStats`).
* ``torch.nn.modules.batchnorm._BatchNorm``: the base class of BatchNorm1d/2d/3d,
  SyncBatchNorm and the lazy variants (:data:`BatchNormBase`).
* ``timm``'s ``VisionTransformer._pos_embed``: the position-embedding step between the
  patch embedding and the blocks, which a checkpointed ViT runs unit by unit
  (:func:`vit_pos_embed`).
* ``torch._inductor.config``: Inductor's settings for compiling an int8 graph
  (:func:`inductor_config`).
* ``torch.cuda.memory._record_memory_history`` and ``torch.cuda.memory._snapshot``: the
  memory-snapshot API that torch documents ("Understanding CUDA Memory Usage") under these
  names only (:func:`record_memory_history`, :func:`memory_snapshot`).
* ``torch._C._cuda_clearCublasWorkspaces``: frees the cuBLAS workspaces, so that memory a
  process keeps on purpose is not counted as a leak (:func:`clear_cublas_workspaces`).

A torch or timm upgrade that renames one breaks here, in one file;
``tests/test_layout.py`` fails on a private name of torch, timm or Optuna used anywhere
else (Optuna's have their own adapter, ``medauto/_optuna_compat.py``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import nn

__all__ = [
    "BatchNormBase",
    "NormWithStats",
    "clear_cublas_workspaces",
    "inductor_config",
    "memory_snapshot",
    "record_memory_history",
    "vit_pos_embed",
]

#: Every norm layer that can track running statistics (BatchNorm, SyncBatchNorm, InstanceNorm).
NormWithStats = nn.modules.batchnorm._NormBase
#: BatchNorm1d/2d/3d, SyncBatchNorm and the lazy variants.
BatchNormBase = nn.modules.batchnorm._BatchNorm


def vit_pos_embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer``'s position-embedding step on patch tokens ``x``."""
    out: torch.Tensor = model._pos_embed(x)  # type: ignore[operator]
    return out


def inductor_config() -> ModuleType:
    """``torch._inductor.config`` (imported on first use: it pulls in Inductor)."""
    import torch._inductor.config as config

    return config


def record_memory_history(**kwargs: Any) -> None:
    """``torch.cuda.memory._record_memory_history(**kwargs)`` (``enabled=None`` stops it)."""
    torch.cuda.memory._record_memory_history(**kwargs)


def memory_snapshot(device: Any = None) -> Any:
    """``torch.cuda.memory._snapshot(device)``: segments and the allocator's trace."""
    return torch.cuda.memory._snapshot(device)


def clear_cublas_workspaces() -> None:
    """Frees the cuBLAS workspaces of this process (``torch._C._cuda_clearCublasWorkspaces``)."""
    torch._C._cuda_clearCublasWorkspaces()
