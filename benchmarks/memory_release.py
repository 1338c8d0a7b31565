#!/usr/bin/env python
"""Device memory is released between trials: many real trials in one worker process.

Runs ``--trials`` trials of a small search (backbone, batch size and learning rate vary
from trial to trial, so allocations of different shapes come and go) through the real
worker loop (:func:`medauto.worker.run_worker`) and the real :class:`medauto.objective.Objective`
(training, evaluation, learning-curve and confusion-matrix artifacts), in one process, on
a real MedMNIST file. Before each trial — after the worker loop has released the previous
one — it records

* on CUDA: ``torch.cuda.memory_allocated`` (live tensors), ``memory_reserved`` (the
  caching allocator's pool) and the previous trial's ``max_memory_allocated``;
* everywhere: the number of live ``torch.Tensor`` objects (``gc``) and the process RSS.

The checks (issue 6): allocated device memory does not grow from trial to trial; once
cuBLAS's workspaces (allocated on the first matrix product and kept by every CUDA process
for its lifetime) are freed at the end, it is back at the baseline measured before the
first trial; no live tensor survives a trial. The report
says PASS or FAIL per check with the numbers.

GPU (one H200, about a minute)::

    python benchmarks/memory_release.py --device cuda --trials 20

CPU (tiny, as the test runs it)::

    python benchmarks/memory_release.py --device cpu --trials 3 --max-train 64
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make `benchmarks`, `medauto` importable
    sys.path.insert(0, str(_REPO))

import torch  # noqa: E402

from benchmarks._common import command_line  # noqa: E402
from benchmarks._common import environment  # noqa: E402
from benchmarks._common import environment_table  # noqa: E402
from benchmarks._common import fmt  # noqa: E402
from benchmarks._common import log  # noqa: E402
from benchmarks._common import markdown_table  # noqa: E402
from benchmarks._common import write_json  # noqa: E402
from benchmarks._common import write_text  # noqa: E402
from med_core.torch_compat import clear_cublas_workspaces  # noqa: E402

#: The search the trials come from: models of different sizes, so blocks of different
#: shapes are allocated and freed from one trial to the next.
SPACE = """\
name: memory-release
description: small backbones of different sizes, a few epochs, batch and lr searched
fidelity: {{min_epochs: 1, max_epochs: {epochs}, reduction_factor: 2}}
fixed:
  augment.policy: light
  data.loader: tensor
  compile: false
params:
  model.backbone: [{backbones}]
  batch_size: [32, 64, 128]
  optim.lr: {{type: float, low: 1.0e-3, high: 1.0e-2, log: true}}
"""

MIB = 2**20


@dataclass
class Sample:
    """Memory before one trial (after the previous one was released)."""

    trial: int
    allocated_mib: float | None
    reserved_mib: float | None
    prev_peak_mib: float | None
    live_tensors: int
    rss_mib: float


def _rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MIB


def live_tensors() -> list[torch.Tensor]:
    """The ``torch.Tensor`` objects the garbage collector tracks now.

    While the worker loop runs, objects alive at its start are frozen (``gc.freeze``) and
    not listed, so counts are taken relative to the tensors alive before the run (see
    :func:`count_new_tensors`), the same way inside and outside the loop.
    """
    with warnings.catch_warnings():  # isinstance() touches deprecated torch module attributes
        warnings.simplefilter("ignore", FutureWarning)
        return [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]


def count_new_tensors(before: set[int]) -> int:
    """Live tensors that are not among ``before`` (ids of tensors kept alive by the caller)."""
    return sum(1 for t in live_tensors() if id(t) not in before)


def _sample(trial: int, device: torch.device, before: set[int]) -> Sample:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    return Sample(
        trial=trial,
        allocated_mib=torch.cuda.memory_allocated(device) / MIB if cuda else None,
        reserved_mib=torch.cuda.memory_reserved(device) / MIB if cuda else None,
        prev_peak_mib=torch.cuda.max_memory_allocated(device) / MIB if cuda else None,
        live_tensors=count_new_tensors(before),
        rss_mib=_rss_mib(),
    )


def _small_copy(data: str, data_dir: str | None, max_train: int, out: Path) -> tuple[str, str]:
    """``data`` cut to ``max_train`` train images (and as many val/test), for tiny runs."""
    from med_core.data import default_data_dir
    from med_core.data import medmnist_path
    from med_core.testing.data import cut_medmnist

    cut_medmnist(medmnist_path(data, data_dir or default_data_dir()), out / f"{data}.npz",
                 max_train)
    return data, str(out)


def run(args: argparse.Namespace, work: Path) -> tuple[list[Sample], list[dict[str, object]]]:
    """Runs the trials; returns the samples (one per trial, plus one after the last)."""
    import optuna

    from med_core.config import DataConfig
    from med_core.data import load_dataset
    from medauto.artifacts import artifact_store_for
    from medauto.objective import Objective
    from medauto.space import SearchSpace
    from medauto.worker import run_worker

    device = torch.device(args.device)
    data, data_dir = args.data, args.data_dir
    if args.max_train:
        data, data_dir = _small_copy(data, data_dir, args.max_train, work)
    dataset = load_dataset(DataConfig(dataset=data, data_dir=data_dir))
    space_file = work / "space.yaml"
    space_file.write_text(SPACE.format(epochs=args.epochs, backbones=", ".join(args.backbones)))
    objective = Objective(
        SearchSpace.from_yaml(space_file),
        dataset=dataset,
        device=str(device),
        overrides={"data.dataset": data, "data.data_dir": data_dir, "monitor": "val_auc"},
        artifact_store=artifact_store_for(work / "run"),
    )
    samples: list[Sample] = []
    trials: list[dict[str, object]] = []
    kept = live_tensors()  # held here, so their ids stay unique while we compare
    before = {id(t) for t in kept}

    def measured(trial: optuna.Trial) -> float:
        samples.append(_sample(trial.number, device, before))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        try:
            return objective(trial)  # pruned/failed trials must be released too
        finally:
            trials.append(
                {"trial": trial.number, "seconds": time.perf_counter() - t0, **trial.params}
            )
            log(f"trial {trial.number}: {trial.params}")

    study = optuna.create_study(
        direction="maximize",
        storage=optuna.storages.InMemoryStorage(),
        sampler=optuna.samplers.RandomSampler(seed=args.seed),
    )
    run_worker(study, measured, target=args.trials)
    samples.append(_sample(args.trials, device, before))  # after the last trial was released
    return samples, trials


def allocated_without_cublas_workspaces(device: torch.device) -> float | None:
    """Allocated MiB after freeing cuBLAS's per-handle workspaces (``None`` on CPU).

    cuBLAS keeps one workspace per handle and stream, allocated through the caching
    allocator on the first matrix product and held for the life of the process: memory a
    process keeps on purpose, not memory a trial leaked.
    """
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    clear_cublas_workspaces()
    return torch.cuda.memory_allocated(device) / MIB


def checks(
    samples: Sequence[Sample], slack_mib: float, without_cublas_mib: float | None = None
) -> list[tuple[str, str, bool]]:
    """(check, numbers, passed) rows of the report.

    Device memory: from the second trial on (the first one creates what a CUDA process
    keeps for good, such as cuBLAS workspaces), allocated memory before each trial equals
    the value after the first one, within ``slack_mib``; with ``without_cublas_mib`` (the
    allocation after freeing cuBLAS's workspaces at the end) it must also be back at the
    baseline before the first trial.
    """
    first, last = samples[0], samples[-1]
    out = []
    if first.allocated_mib is not None and last.allocated_mib is not None:
        steady = samples[1].allocated_mib if len(samples) > 1 else first.allocated_mib
        assert steady is not None
        grown = max(s.allocated_mib or 0.0 for s in samples[1:]) - steady
        out.append((
            "allocated device memory does not grow from trial to trial",
            f"after the first trial {steady:.2f} MiB, largest after a later trial "
            f"{steady + grown:.2f} MiB, after the last {last.allocated_mib:.2f} MiB "
            f"(slack {slack_mib:g} MiB)",
            grown <= slack_mib,
        ))
        if without_cublas_mib is not None:
            out.append((
                "allocated device memory back at the baseline once cuBLAS's workspaces "
                "are freed",
                f"baseline {first.allocated_mib:.2f} MiB, after the last trial "
                f"{last.allocated_mib:.2f} MiB, after freeing cuBLAS workspaces "
                f"{without_cublas_mib:.2f} MiB",
                without_cublas_mib - first.allocated_mib <= slack_mib,
            ))
    tensors = [s.live_tensors for s in samples]
    out.append((
        "no live torch.Tensor survives a trial",
        f"live tensors before each trial: min {min(tensors)}, max {max(tensors)}, "
        f"baseline {tensors[0]}",
        max(tensors) <= tensors[0],
    ))
    return out


def report(
    args: argparse.Namespace,
    command: str,
    samples: Sequence[Sample],
    trials: Sequence[dict[str, object]],
    without_cublas_mib: float | None = None,
) -> str:
    device = torch.device(args.device)
    rows = []
    for s, t in zip(samples[1:], trials, strict=True):
        rows.append([
            t["trial"], t.get("model.backbone"), t.get("batch_size"), fmt(float(t["seconds"])),
            fmt(s.prev_peak_mib), fmt(s.allocated_mib, 2), fmt(s.reserved_mib),
            s.live_tensors, fmt(s.rss_mib),
        ])
    check_rows = [[name, nums, "PASS" if ok else "FAIL"]
                  for name, nums, ok in checks(samples, args.slack_mib, without_cublas_mib)]
    base = samples[0]
    return "\n".join([
        "# Memory released between trials",
        "",
        "Generated by:",
        "",
        "```bash",
        command,
        "```",
        "",
        environment_table(environment(device)),
        "",
        f"{args.trials} trials of a search over {', '.join(args.backbones)} (batch 32/64/128, "
        f"{args.epochs} epochs, random sampler) on `{args.data}`, one worker process, real "
        "objective (training, evaluation, artifacts). Memory is read before each trial, after "
        "the worker loop released the previous one; the last row is after the last trial.",
        "",
        "## Checks",
        "",
        markdown_table(["check", "numbers", "result"], check_rows, align="llc"),
        "",
        "## Per trial",
        "",
        f"Before the first trial: allocated {fmt(base.allocated_mib, 2)} MiB, reserved "
        f"{fmt(base.reserved_mib)} MiB, {base.live_tensors} live tensors, RSS "
        f"{fmt(base.rss_mib)} MiB.",
        "",
        markdown_table(
            ["trial", "backbone", "batch", "seconds", "peak allocated MiB (during)",
             "allocated MiB (after)", "reserved MiB (after)", "live tensors (after)",
             "RSS MiB (after)"],
            rows,
        ),
        "",
    ])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default="breastmnist")
    p.add_argument("--data-dir", default=os.environ.get("MEDAUTO_DATA_DIR"))
    p.add_argument("--max-train", type=int, default=0,
                   help="cut every split to this many images (0: the whole file)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--backbones", type=lambda s: s.split(","),
                   default=["resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slack-mib", type=float, default=0.0,
                   help="allowed growth of allocated device memory over the baseline")
    p.add_argument("--out", default=str(_REPO / "docs" / "benchmarks" / "memory_release.md"))
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; returns 0 when every check passed, 1 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.trials < 1 or args.epochs < 1:
        raise SystemExit("--trials and --epochs must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    command = command_line(__file__, argv)
    log(f"$ {command}")
    with tempfile.TemporaryDirectory(prefix="memory-release-") as tmp:
        samples, trials = run(args, Path(tmp))
    without_cublas = allocated_without_cublas_workspaces(torch.device(args.device))
    text = report(args, command, samples, trials, without_cublas)
    write_text(args.out, text)
    if args.json:
        write_json(args.json, {"command": command, "samples": [asdict(s) for s in samples],
                               "trials": trials, "without_cublas_mib": without_cublas})
    passed = all(ok for _, _, ok in checks(samples, args.slack_mib, without_cublas))
    log(f"wrote {args.out}: {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
