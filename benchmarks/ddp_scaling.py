#!/usr/bin/env python
"""DDP scaling of one trial: 2 GPUs vs. 1 GPU through med_core's own trainer and launcher.

Each configuration trains ``Trainer.fit()`` (the code path of a ``medauto worker
--gpus-per-trial N`` trial) in ``N`` processes started by ``med_core.training.launch``
(spawn, torchrun's environment, NCCL on CUDA, gloo on CPU), on synthetic 3-channel data
held on the device (``data.loader="tensor"``), with bf16 autocast and channels-last on
CUDA, from scratch. The per-GPU batch is fixed (weak scaling: the global batch is
``--per-gpu-batch × N``), so the ideal 2-GPU/1-GPU ratio of images/s is 2.0 (target
≥ 1.9). Reported per configuration: the Trainer's ``images_per_s`` (all ranks' training
images of an epoch over its training time, validation excluded; median over the epochs
after ``--warmup-epochs``) and the time to train one epoch; each with gradient
checkpointing off and on (the backbone's family default segments).

"per-epoch s" is the epoch time minus the training time (validation, its gathers, the
BatchNorm buffer broadcast): the cost that does not shrink with more GPUs per step; run
with an epoch long enough (``--train-images``) to see it apart from per-step scaling.
``--bucket-cap-mb`` and ``--static-graph`` set the runs' ``cfg.ddp``
(:class:`med_core.config.DDPConfig`).

The ratio is measured in one invocation: the 1-GPU and 2-GPU runs alternate per setting.
The environment is passed through to every process (keep ``NCCL_NVLS_ENABLE=0`` where
the host requires it).

Profile (``--profile DIR``): each checkpointing setting is launched once on ``--gpus``
processes for ``--warmup-epochs + 1`` epochs (``--epochs`` is not used), and the last
epoch is profiled on every rank with ``torch.profiler`` (:mod:`benchmarks._ddp_profile`):
one Chrome trace per rank (``DIR/ckpt-<off|on>/rank<R>.json``) and, per rank, the mean
step time split into compute, communication not overlapped by compute, and idle time;
the share of communication that overlaps compute; and the epoch's tail after the last
step (loss all-reduce, buffer broadcast, validation and its gathers).

``--out`` holds one section per kind of run and device (``scaling-cuda``,
``profile-cpu``, ...) between ``<!-- ddp_scaling:NAME:begin/end -->`` markers; a run
replaces only its own section and keeps the rest of the file.

CPU smoke run (gloo, 2 processes, tiny)::

    python benchmarks/ddp_scaling.py --device cpu --backbone resnet18 --img-size 32 \\
        --train-images 32 --per-gpu-batch 4 --epochs 2 --warmup-epochs 1

CPU profile (gloo, 2 processes, about 2 minutes on 2 cores)::

    python benchmarks/ddp_scaling.py --device cpu --backbone resnet18 --img-size 64 \\
        --train-images 128 --val-images 32 --per-gpu-batch 8 --warmup-epochs 1 \\
        --profile /tmp/ddp-profile --out docs/benchmarks/ddp_scaling.md

GPU profile (2 GPUs, NCCL)::

    python benchmarks/ddp_scaling.py --device cuda --gpus 2 --backbone resnet50 \\
        --img-size 224 --train-images 2048 --per-gpu-batch 128 --warmup-epochs 1 \\
        --profile /tmp/ddp-profile --out docs/benchmarks/ddp_scaling.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make `benchmarks` and `med_core` importable
    sys.path.insert(0, str(_REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import command_line  # noqa: E402
from benchmarks._common import environment  # noqa: E402
from benchmarks._common import environment_table  # noqa: E402
from benchmarks._common import fmt  # noqa: E402
from benchmarks._common import log  # noqa: E402
from benchmarks._common import markdown_table  # noqa: E402
from benchmarks._common import merge_section  # noqa: E402
from benchmarks._common import write_json  # noqa: E402
from benchmarks._common import write_text  # noqa: E402

TARGET_RATIO = 1.9
NUM_CLASSES = 10
HEADER = """\
# DDP scaling of one trial (med_core Trainer + launch)

Written by `benchmarks/ddp_scaling.py`. Each section below is the output of one run, with
its exact command and the hardware and versions it ran on; a run replaces only its own
section (between its `<!-- ddp_scaling:... -->` markers) and keeps the rest of the file.

**Profile tables** (`--profile`), per rank, over the profiled epoch (the one after the
warm-up). A *step* runs from the end of one optimizer step to the end of the next
(loading, zero_grad, forward, backward with its all-reduces, optimizer); the epoch's
first step is left out; values are means over the steps. *compute*: on CUDA the device
kernels that are not NCCL's, on CPU the ops of the main thread. *comm*: time in
collectives (NCCL kernels; on CPU gloo's work items on gloo's threads); it includes the
wait for the slower rank. *comm overlapped*: the share of comm time during which compute
runs. *exposed comm*: comm time with no compute, the step's wait for the network.
*idle*: time with neither (step = compute + exposed comm + idle). *tail*: from the end
of the last step to the end of the epoch: the loss all-reduce, the BatchNorm buffer
broadcast, validation and its metric gathers, i.e. the per-epoch costs. One Chrome trace
per rank lies in the `--profile` folder (open it in Perfetto or `chrome://tracing`).
"""


def synthetic_dataset(n_train: int, n_val: int, size: int, seed: int) -> Any:
    """Random 3×size×size uint8 images with balanced labels (a ``MedicalDataset``)."""
    from med_core.data import DatasetInfo
    from med_core.data import MedicalDataset
    from med_core.data import Split

    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        images = rng.integers(1, 256, size=(n, 3, size, size), dtype=np.uint8)
        return Split(images, rng.permutation(np.arange(n, dtype=np.int64) % NUM_CLASSES))

    info = DatasetInfo(
        name="ddp-synthetic",
        task="multi-class",
        num_classes=NUM_CLASSES,
        in_chans=3,
        spatial_dims=2,
        image_size=(size, size),
        class_names=tuple(f"c{i}" for i in range(NUM_CLASSES)),
        source=f"synthetic (numpy seed {seed})",
    )
    return MedicalDataset(info, split(n_train), split(n_val), split(n_val))


def train_rank(dist: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """One rank of one configuration (called by ``launch``): ``Trainer.fit()``."""
    from med_core.config import AugmentConfig
    from med_core.config import DataConfig
    from med_core.config import DDPConfig
    from med_core.config import ModelConfig
    from med_core.config import OptimConfig
    from med_core.config import TrainConfig
    from med_core.training import Trainer

    ds = synthetic_dataset(spec["train_images"], spec["val_images"], spec["img_size"], 0)
    cuda = spec["device"] == "cuda"
    cfg = TrainConfig(
        data=DataConfig(dataset=ds.info.name, loader="tensor", num_workers=0),
        model=ModelConfig(
            backbone=spec["backbone"],
            checkpoint_segments=0 if spec["checkpointing"] else None,  # 0: family default
        ),
        augment=AugmentConfig(policy="none"),
        optim=OptimConfig(optimizer="sgd", lr=0.01, weight_decay=0.0),
        ddp=DDPConfig(bucket_cap_mb=spec["bucket_cap_mb"], static_graph=spec["static_graph"]),
        epochs=spec["epochs"],
        batch_size=spec["per_gpu_batch"] * dist.world_size,
        amp_dtype="bf16" if cuda else "none",
        channels_last=cuda,
        seed=0,
    )
    profiler = None
    if spec["profile"] is not None:
        from benchmarks._ddp_profile import EpochProfiler

        trace = Path(spec["profile"]) / f"rank{dist.rank}.json"
        profiler = EpochProfiler(spec["epochs"] - 1, trace)
    trainer = Trainer(
        cfg,
        dataset=ds,
        device=spec["device"],
        progress=False,
        dist=dist,
        callbacks=[profiler] if profiler is not None else [],
    )
    t0 = time.perf_counter()
    try:
        history = trainer.fit()
    finally:
        trainer.close()
    return {
        "profile": profiler.summary if profiler is not None else None,
        "rank": dist.rank,
        "world_size": dist.world_size,
        "wall_s": time.perf_counter() - t0,
        "epochs": [
            {k: float(e[k]) for k in ("epoch_time_s", "images_per_s", "train_loss")}
            for e in history.epochs
        ],
        "stop_reason": history.stop_reason,
    }


def rank_spec(args: argparse.Namespace, checkpointing: bool) -> dict[str, Any]:
    """What :func:`train_rank` needs (picklable); ``profile``: the trace folder or ``None``."""
    mode = "on" if checkpointing else "off"
    return {
        "device": args.device,
        "backbone": args.backbone,
        "img_size": args.img_size,
        "train_images": args.train_images,
        "val_images": args.val_images,
        "per_gpu_batch": args.per_gpu_batch,
        "epochs": args.warmup_epochs + 1 if args.profile else args.epochs,
        "checkpointing": checkpointing,
        "bucket_cap_mb": args.bucket_cap_mb,
        "static_graph": args.static_graph,
        "profile": str(args.profile / f"ckpt-{mode}") if args.profile else None,
    }


def launch_ranks(args: argparse.Namespace, gpus: int, checkpointing: bool) -> list[Any] | str:
    """Every rank's :func:`train_rank` result, or the error as a row status."""
    from med_core.training import launch

    backend = "nccl" if args.device == "cuda" else "gloo"
    try:
        return launch(train_rank, gpus, args=(rank_spec(args, checkpointing),), backend=backend)
    except Exception as exc:  # recorded in the row; the other configurations still run
        return f"error: {type(exc).__name__}: {str(exc).strip()[:300]}"


def run_config(args: argparse.Namespace, gpus: int, checkpointing: bool) -> dict[str, Any]:
    """Launches one configuration on ``gpus`` processes and summarizes rank 0's history."""
    row: dict[str, Any] = {"gpus": gpus, "checkpointing": checkpointing, "status": "ok"}
    t0 = time.perf_counter()
    ranks = launch_ranks(args, gpus, checkpointing)
    if isinstance(ranks, str):
        row.update(status=ranks)
        return row
    epochs = ranks[0]["epochs"][args.warmup_epochs :] or ranks[0]["epochs"]
    row["images_per_s"] = statistics.median(e["images_per_s"] for e in epochs)
    # training time of one epoch: train images (full global batches) / images per second
    global_batch = args.per_gpu_batch * gpus
    row["epoch_images"] = (args.train_images // global_batch) * global_batch
    row["epoch_train_s"] = row["epoch_images"] / row["images_per_s"]
    row["epoch_total_s"] = statistics.median(e["epoch_time_s"] for e in epochs)
    row["launch_wall_s"] = time.perf_counter() - t0
    row["stop_reason"] = ranks[0]["stop_reason"]
    return row


def run_profile(args: argparse.Namespace, checkpointing: bool) -> list[dict[str, Any]]:
    """Profiles the epoch after the warm-up on every rank; one row per rank."""
    from benchmarks._ddp_profile import as_row

    ranks = launch_ranks(args, args.gpus, checkpointing)
    if isinstance(ranks, str):
        return [{"checkpointing": checkpointing, "status": ranks}]
    return [as_row(checkpointing, r["rank"], r["profile"]) for r in ranks]


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``ratio`` = images/s of an N-GPU row over the 1-GPU row with the same checkpointing."""
    one = {r["checkpointing"]: r for r in rows if r["gpus"] == 1 and r["status"] == "ok"}
    for r in rows:
        base = one.get(r["checkpointing"])
        ok = r["status"] == "ok" and base is not None
        r["ratio"] = r["images_per_s"] / base["images_per_s"] if ok else None


def per_epoch_s(row: dict[str, Any]) -> float | None:
    """The part of an epoch that does not scale with its steps: epoch time minus training
    time (validation, its gathers, the buffer broadcast, the loss all-reduce)."""
    if row.get("epoch_total_s") is None or row.get("epoch_train_s") is None:
        return None
    return float(row["epoch_total_s"] - row["epoch_train_s"])


def render(
    rows: list[dict[str, Any]], title: str, command: str, env: dict[str, str], gpus: int
) -> str:
    """The scaling section: one row per checkpointing setting and number of GPUs."""
    body = [
        [
            "on" if r["checkpointing"] else "off",
            r["gpus"],
            fmt(r.get("images_per_s"), 0),
            fmt(r.get("ratio"), 2),
            fmt(r.get("epoch_train_s"), 2),
            fmt(r.get("epoch_total_s"), 2),
            fmt(per_epoch_s(r), 2),
            r["status"],
        ]
        for r in rows
    ]
    table = markdown_table(
        [
            "checkpointing",
            "GPUs",
            "images/s",
            f"ratio vs 1 GPU (target ≥ {TARGET_RATIO})",
            "epoch train s",
            "epoch s (incl. val)",
            "per-epoch s",
            "status",
        ],
        body,
    )
    verdict = [
        f"- checkpointing {'on' if r['checkpointing'] else 'off'}: {gpus}-GPU/1-GPU = "
        f"{r['ratio']:.2f}× ({'meets' if r['ratio'] >= TARGET_RATIO else 'misses'} the target)"
        for r in rows
        if r["gpus"] == gpus and r.get("ratio") is not None
    ]
    return "\n".join(
        [
            *section_head(f"Scaling: {gpus} vs 1 ({title})", command, env),
            "### Results",
            "",
            table,
            "",
            *verdict,
        ]
    )


def section_key(args: argparse.Namespace, env: dict[str, str]) -> tuple[str, str]:
    """The section name's tail and the title of a run: device, backend and ``cfg.ddp``
    options other than the defaults (``("cpu-bucket4", "CPU (gloo), bucket 4 MiB")``)."""
    key = args.device + (f"-bucket{args.bucket_cap_mb:g}" if args.bucket_cap_mb else "")
    words = [f"{env.get('GPU', 'CPU')} ({'NCCL' if args.device == 'cuda' else 'gloo'})"]
    if args.bucket_cap_mb:
        words.append(f"bucket {args.bucket_cap_mb:g} MiB")
    if args.static_graph:
        key, words = key + "-static", [*words, "static graph"]
    return key, ", ".join(words)


def section_head(title: str, command: str, env: dict[str, str]) -> list[str]:
    """A section's title, exact command and environment table (Markdown lines)."""
    return [
        f"## {title}",
        "",
        "Generated by:",
        "",
        "```",
        command,
        "```",
        "",
        "### Environment",
        "",
        environment_table(env),
        "",
    ]


def render_profile(
    rows: list[dict[str, Any]], title: str, command: str, env: dict[str, str]
) -> str:
    """The ``--profile`` section: one row per rank and checkpointing setting."""
    from benchmarks._ddp_profile import profile_table

    return "\n".join(
        [
            *section_head(f"Profile: {title}", command, env),
            "### Per rank (columns: see the top of the file)",
            "",
            profile_table(rows),
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/ddp_scaling.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--gpus", type=int, default=2, help="processes of the multi-GPU run")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--train-images", type=int, default=8192)
    p.add_argument("--val-images", type=int, default=256)
    p.add_argument("--per-gpu-batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument(
        "--checkpointing",
        default="off,on",
        help="comma list of off/on (family-default gradient checkpointing segments)",
    )
    p.add_argument(
        "--bucket-cap-mb",
        type=float,
        default=None,
        help="ddp.bucket_cap_mb of the runs (default: torch's, 25 MiB with a 1 MiB first bucket)",
    )
    p.add_argument("--static-graph", action="store_true", help="ddp.static_graph: true")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile the epoch after the warm-up on every rank instead of the 1-vs-N run; "
        "Chrome traces go to DIR",
    )
    p.add_argument("--out", type=Path, default=None, help="Markdown report (own section)")
    p.add_argument("--json", type=Path, default=None, help="raw results as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and torch.cuda.device_count() < args.gpus:
        raise SystemExit(f"--gpus {args.gpus} but {torch.cuda.device_count()} CUDA devices")
    if args.epochs <= args.warmup_epochs:
        raise SystemExit("--epochs must be larger than --warmup-epochs")
    modes = [m.strip() for m in args.checkpointing.split(",") if m.strip()]
    if not modes or set(modes) - {"off", "on"}:
        raise SystemExit(f"--checkpointing takes off/on, got {args.checkpointing!r}")
    if args.profile and args.train_images // (args.per_gpu_batch * args.gpus) < 3:
        raise SystemExit("--profile needs >= 3 steps per epoch: raise --train-images")
    command = command_line(__file__, argv)
    log(f"$ {command}")
    env = environment(torch.device(args.device))
    key, title = section_key(args, env)
    if args.profile:
        rows = [r for mode in modes for r in run_profile(args, mode == "on")]
        name, md = f"profile-{key}", render_profile(rows, title, command, env)
    else:
        rows = []
        for mode in modes:
            for gpus in (1, args.gpus):
                row = run_config(args, gpus, mode == "on")
                rows.append(row)
                log(
                    f"ckpt={mode} gpus={gpus}: {fmt(row.get('images_per_s'), 0)} images/s, "
                    f"epoch train {fmt(row.get('epoch_train_s'), 2)} s [{row['status']}]"
                )
        add_ratios(rows)
        name, md = f"scaling-{key}", render(rows, title, command, env, args.gpus)
    print(md)
    if args.out:
        existing = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
        write_text(args.out, merge_section(existing, f"ddp_scaling:{name}", md, header=HEADER))
    if args.json:
        write_json(args.json, {"command": command, "env": env, "rows": rows})
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
