"""Checkpoint I/O and RNG-state capture (private: no compatibility promise).

Checkpoints are plain dicts of tensors and primitive containers (dict, list, tuple, str,
int, float, bool, None), so they load with ``torch.load(weights_only=True)``: a crafted
pickle payload is refused instead of executed. They are written atomically (a temporary
file in the same directory, ``fsync``, then :func:`os.replace`): a crash while writing
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from med_core.exceptions import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "capture_rng_state",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Writes ``state`` to ``path`` atomically; returns the path.

    Raises:
        CheckpointError: if the file cannot be written (the cause is chained).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write checkpoint {str(target)!r}: {e}") from e
        raise
    return target


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Loads a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, truncated/corrupt (including a CRC mismatch
            of any archive member), contains objects other than tensors and primitive
            containers, or was not written by med_core.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    _check_crc(p)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise CheckpointError(
            f"checkpoint {str(p)!r} is corrupt or unsafe to load "
            f"(weights_only=True refused it): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{str(p)!r} is not a med_core checkpoint (no 'format_version' key)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(p)!r} has checkpoint format {state['format_version']!r}; this version of "
            f"med_core reads format {FORMAT_VERSION}"
        )
    return state


def _check_crc(p: Path) -> None:
    """Refuses a zip checkpoint whose bytes changed after writing (torch.load does not check).

    ``torch.save`` writes a zip archive with a CRC-32 per member but ``torch.load`` never
    verifies them, so a flipped bit in a tensor would load as silently different weights.
    Files that are not zip archives are left to ``torch.load`` to refuse.
    """
    if not zipfile.is_zipfile(p):
        return
    try:
        with zipfile.ZipFile(p) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is corrupt or unsafe to load (unreadable archive: {e})"
        ) from e
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {str(p)!r} is corrupt or unsafe to load: the CRC of {bad!r} does not "
            "match (the file changed after it was written); use another checkpoint or retrain"
        )


def capture_rng_state() -> dict[str, Any]:
    """The global torch, CUDA, NumPy and Python RNG states as weights-only-safe values."""
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _to_lists(random.getstate()),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`capture_rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    random.setstate(_to_tuples(state["python"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _to_lists(obj: Any) -> Any:
    if isinstance(obj, (tuple, list)):
        return [_to_lists(o) for o in obj]
    return obj


def _to_tuples(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_to_tuples(o) for o in obj)
    return obj
