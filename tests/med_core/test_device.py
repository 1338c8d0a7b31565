"""``med_core.device``: one device resolution and one OOM detector for the whole project."""

from __future__ import annotations

import pytest
import torch

from med_core.device import is_oom
from med_core.device import release_memory
from med_core.device import resolve_device
from med_core.exceptions import ConfigError

CPU_OOM = RuntimeError(
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"
)


def test_auto_and_cpu() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("bad", ["gpu0", "cuda:x", "CPU0", "", "cuda:-1"])
def test_malformed_devices_are_refused_naming_the_forms(bad: str) -> None:
    with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:K") as e:
        resolve_device(bad)
    assert repr(bad) in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("absent", ["cuda", "cuda:0"])
def test_a_gpu_this_machine_lacks_is_refused(absent: str) -> None:
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        resolve_device(absent)


def test_one_detector_for_trials_and_benchmarks() -> None:
    from benchmarks import _common
    from medauto.worker import classify_failure

    assert _common.is_oom is is_oom
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_oom(ValueError("out of memory")) and not is_oom(RuntimeError("shape"))
    # The CPU allocator's message: a trial that ran out of host memory is pruned as "oom",
    # as the benchmarks always counted it (the worker's own detector called it an error).
    assert is_oom(CPU_OOM)
    assert classify_failure(CPU_OOM)[1] == "oom"


def test_release_memory_runs_on_cpu() -> None:
    release_memory("cpu")
    release_memory(collect=False)
