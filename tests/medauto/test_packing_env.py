"""``medauto worker --trials-per-device K``: each packed worker gets its share of the CPU."""

from __future__ import annotations

import os

from medauto.cli._workers import packed_worker_env


def test_threads_default_to_cores_divided_by_k() -> None:
    cores = len(os.sched_getaffinity(0))
    env = packed_worker_env(2, base={})
    assert env["OMP_NUM_THREADS"] == str(max(1, cores // 2))
    assert env["TORCHINDUCTOR_COMPILE_THREADS"] == env["OMP_NUM_THREADS"]
    assert packed_worker_env(10 * cores, base={})["OMP_NUM_THREADS"] == "1"


def test_explicit_threads_and_user_settings() -> None:
    assert packed_worker_env(4, 3, base={"PATH": "/bin"}) == {
        "PATH": "/bin", "OMP_NUM_THREADS": "3", "TORCHINDUCTOR_COMPILE_THREADS": "3",
    }
    assert packed_worker_env(4, 3, base={"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"
