"""Devices: which one to use, whether an error means "out of memory", and freeing memory.

The one copy of these rules; medauto, ``med_core.train`` and the benchmarks import them.
``torch`` is imported inside the functions, so ``import med_core.device`` stays cheap.
"""

from __future__ import annotations

import gc
import re
from typing import TYPE_CHECKING

from med_core.exceptions import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_FORMS", "is_oom", "release_memory", "resolve_device"]

#: The device names :func:`resolve_device` accepts (for help texts and messages).
DEVICE_FORMS = "auto, cpu, cuda, cuda:K"

_FORM = re.compile(r"^(auto|cpu|cuda|cuda:(\d+))$")

#: Lower-case fragments of the ``RuntimeError`` messages that mean an allocation failed:
#: the CUDA caching allocator, cuDNN/cuBLAS workspaces and the CPU allocator.
_OOM_MESSAGES = ("out of memory", "alloc_failed", "can't allocate memory", "failed to allocate")


def resolve_device(device: str) -> str:
    """The device to train on, checked against the hardware before any work starts.

    Args:
        device: ``"auto"`` (CUDA when a GPU is visible, else the CPU), ``"cpu"``,
            ``"cuda"`` or ``"cuda:K"``.

    Returns:
        ``"cpu"``, ``"cuda"`` or ``"cuda:K"``.

    Raises:
        ConfigError: ``device`` is not one of those forms (e.g. ``"gpu0"``), or names a
            GPU this machine does not have (``"cuda"`` without CUDA, ``"cuda:3"`` on a
            machine with two GPUs).

    Example:
        >>> resolve_device("cpu")
        'cpu'
        >>> resolve_device("gpu0")
        Traceback (most recent call last):
        ...
        med_core.exceptions.ConfigError: device: must be one of auto, cpu, cuda, cuda:K, got 'gpu0'
    """
    match = _FORM.match(str(device).strip())
    if match is None:
        raise ConfigError(key="device", rule=f"one of {DEVICE_FORMS}", value=device)
    name = match.group(1)
    if name == "cpu":
        return name
    import torch

    available = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise ConfigError(
            f"device: {name!r} needs a CUDA GPU, but torch sees none on this machine "
            "(use 'cpu' or 'auto')"
        )
    index = match.group(2)
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise ConfigError(
            f"device: {name!r} does not exist; this machine has {count} GPU(s): "
            f"cuda:0..cuda:{count - 1}"
        )
    return name


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` means that an allocation failed (GPU or CPU memory).

    Args:
        exc: Any exception.

    Returns:
        ``True`` for ``torch.OutOfMemoryError`` and for a ``RuntimeError`` whose message
        reports a failed allocation (CUDA caching allocator, cuDNN/cuBLAS workspace, CPU
        allocator).

    Example:
        >>> is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        True
        >>> is_oom(ValueError("out of memory"))
        False
    """
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    message = str(exc).lower()
    return any(fragment in message for fragment in _OOM_MESSAGES)


def release_memory(
    device: str | torch.device | None = None, *, collect: bool = True, reset_peak: bool = False
) -> None:
    """Frees what finished work left behind: reference cycles and cached CUDA blocks.

    Args:
        device: The CUDA device to wait for before its cache is emptied; ``None`` empties
            the cache without waiting. A CPU device only runs the collection.
        collect: Run the garbage collector first (frames of a caught exception's
            traceback may hold tensors until collected).
        reset_peak: Also reset ``device``'s peak-memory counters (for measurements).

    Example:
        >>> release_memory("cpu")
    """
    if collect:
        gc.collect()
    import torch

    dev = torch.device(device) if device is not None else None
    if (dev is not None and dev.type != "cuda") or not torch.cuda.is_available():
        return
    if dev is not None:
        torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    if reset_peak and dev is not None:
        torch.cuda.reset_peak_memory_stats(dev)
