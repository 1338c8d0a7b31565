#!/usr/bin/env python
"""How long should a CPU trial train? Out-of-fold AUC of a space's recipe per backbone and
epoch count, with k-fold cross-validation on train+val, as a budgeted search scores it.

1. ``--quality``: each ``--config`` (``backbone:epochs``, the space's first portfolio entry
   with that backbone and that many epochs, whole one-cycle schedule) trains on the
   ``--folds`` stratified folds of train+val that the search uses
   (:func:`med_core.data.cross_validation_folds`, seed 0), for ``--seeds`` training seeds.
   Reported: the out-of-fold AUC (every train+val image scored by the fold model that did
   not train on it, as ensemble selection reads it) and the mean of the folds' best
   validation AUC (as a trial's value reads it). The test split is never read. The
   models are small, so many run at once (``--jobs`` processes, one CPU thread each).
2. ``--cpu-times``: seconds per epoch (training one fold and validating it: the history's
   ``epoch_time_s``) per backbone on this machine's CPU with ``--threads`` threads, 4
   epochs, the first one apart.
3. Writes both tables (one section each) to ``docs/benchmarks/fast_space.md``.

Quality numbers do not depend on the device (the space trains in fp32), so the quality
table can come from a GPU and the time table from the CPU it is for::

    python benchmarks/fast_space.py --quality --device cuda --jobs 16
    python benchmarks/fast_space.py --cpu-times --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make `benchmarks` and `med_core` importable
    sys.path.insert(0, str(_REPO))

from benchmarks._common import command_line  # noqa: E402
from benchmarks._common import environment  # noqa: E402
from benchmarks._common import environment_table  # noqa: E402
from benchmarks._common import log  # noqa: E402
from benchmarks._common import markdown_table  # noqa: E402
from benchmarks._common import merge_section  # noqa: E402
from benchmarks._common import write_text  # noqa: E402

BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2", "regnet_x_400mf",
             "efficientnet_b0", "resnet18")
DEFAULT_CONFIGS = tuple(f"{b}:{e}" for b in BACKBONES for e in (6, 12, 24))
HEADER = "# How long a `fast`-space trial should train (BreastMNIST, k-fold CV)\n"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quality", action="store_true", help="out-of-fold AUC per --config")
    p.add_argument("--cpu-times", action="store_true", help="CPU seconds per epoch")
    p.add_argument("--dataset", default="breastmnist")
    p.add_argument("--space", default="fast", help="space whose first portfolio entry is "
                   "the recipe (default: fast)")  # fmt: skip
    p.add_argument("--config", action="append", metavar="BACKBONE:EPOCHS",
                   help=f"repeatable (default: {len(DEFAULT_CONFIGS)} configurations, "
                   f"{', '.join(BACKBONES)} at 6, 12 and 24 epochs)")  # fmt: skip
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--jobs", type=int, default=1, help="processes training at once")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for --cpu-times")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=_REPO / "docs" / "benchmarks" / "fast_space.md")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not (args.quality or args.cpu_times):
        p.error("give --quality, --cpu-times or both")
    return args


def _recipe(space: str, dataset: str, backbone: str, epochs: int, seed: int) -> Any:
    from med_core.config import TrainConfig
    from medauto.space import SearchSpace

    sp = SearchSpace.from_yaml(space)  # a shipped space's name, or a YAML path
    base = TrainConfig.from_flat({"data.dataset": dataset, "data.num_workers": 0})
    cfg = sp.config_from_params(sp.portfolio[0].params, base=base)
    return TrainConfig.from_flat({"model.backbone": backbone, "epochs": epochs, "seed": seed},
                                 base=cfg)


def cross_validated(job: tuple[str, str, str, int, int, int, str]) -> dict[str, Any]:
    """One configuration and seed over every fold: out-of-fold and mean-fold AUC."""
    space, dataset, backbone, epochs, seed, folds, device = job
    import numpy as np
    import torch

    from med_core.data import cross_validation_folds
    from med_core.data import load_dataset
    from med_core.training import KeepBestWeights
    from med_core.training import Trainer
    from medauto.scoring import split_metrics

    torch.set_num_threads(1)
    ds = load_dataset(dataset)
    cfg = _recipe(space, dataset, backbone, epochs, seed)
    pool_y = np.concatenate([ds.train.labels, ds.val.labels])
    oof: np.ndarray | None = None
    best: list[float] = []
    t0 = time.monotonic()
    for val_idx, fold in cross_validation_folds(ds, folds, seed=0):
        keeper = KeepBestWeights()
        trainer = Trainer(cfg, dataset=fold, device=device, callbacks=[keeper], progress=False)
        best.append(max(trainer.fit().metric("val_auc")))
        keeper.restore(trainer)
        _, score = trainer.predict("val", tta=False)
        trainer.close()
        if oof is None:
            oof = np.zeros((len(pool_y), *score.shape[1:]), dtype=np.float32)
        oof[val_idx] = score
    auc = split_metrics(ds.info.task, pool_y, oof)["auc"]
    return {"backbone": backbone, "epochs": epochs, "seed": seed, "oof_auc": auc,
            "fold_auc": float(np.mean(best)), "s": time.monotonic() - t0}


def quality_section(args: argparse.Namespace) -> str:
    """The quality table: mean over seeds of out-of-fold and mean-fold AUC."""
    configs = [(b, int(e)) for b, _, e in (c.partition(":") for c in
                                           args.config or DEFAULT_CONFIGS)]  # fmt: skip
    jobs = [(args.space, args.dataset, b, e, s, args.folds, args.device)
            for b, e in configs for s in range(args.seeds)]
    jobs.sort(key=lambda j: -j[3])  # the longest first: the pool ends sooner
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for fut in as_completed([pool.submit(cross_validated, j) for j in jobs]):
            r = fut.result()
            results.append(r)
            log(f"[fast_space] {r['backbone']} {r['epochs']} epochs seed {r['seed']}: "
                f"out-of-fold AUC {r['oof_auc']:.3f}, folds {r['fold_auc']:.3f}")
    rows = []
    for b, e in configs:
        rs = [r for r in results if (r["backbone"], r["epochs"]) == (b, e)]
        oof = [r["oof_auc"] for r in rs]
        spread = f" ± {statistics.stdev(oof):.3f}" if len(oof) > 1 else ""
        rows.append([b, e, f"{statistics.mean(oof):.3f}{spread}",
                     f"{statistics.mean(r['fold_auc'] for r in rs):.3f}",
                     f"{statistics.mean(r['s'] for r in rs):.0f}"])
    table = markdown_table(["backbone", "epochs", "out-of-fold AUC (± std over seeds)",
                            "mean fold best val AUC", f"s per config ({args.device})"], rows,
                           align="lrrrr")  # fmt: skip
    return (f"## Quality: {args.folds}-fold CV on train+val, {args.seeds} seed(s), the "
            f"`{args.space}` recipe\n\n```\n{command_line(__file__, args.argv)}\n```\n\n"
            f"{environment_table(environment(args.device))}\n\n{table}\n")


def cpu_times_section(args: argparse.Namespace) -> str:
    """Seconds per epoch on this CPU, per backbone, on one fold."""
    import torch

    from med_core.data import cross_validation_folds
    from med_core.data import load_dataset
    from med_core.training import Trainer

    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    _, fold = next(iter(cross_validation_folds(ds, args.folds, seed=0)))
    rows = []
    for b in dict.fromkeys(c.partition(":")[0] for c in args.config or DEFAULT_CONFIGS):
        trainer = Trainer(_recipe(args.space, args.dataset, b, 4, 0), dataset=fold,
                          device="cpu", progress=False)  # fmt: skip
        times = trainer.fit().metric("epoch_time_s")  # training + validation, per epoch
        trainer.close()
        later = statistics.median(times[1:])
        log(f"[fast_space] {b}: first epoch {times[0]:.2f} s, then {later:.2f} s")
        rows.append([b, f"{times[0]:.2f}", f"{later:.2f}",
                     f"{12 * args.folds * later:.0f}", f"{24 * args.folds * later:.0f}"])
    table = markdown_table(["backbone", "first epoch s", "later epochs s (median)",
                            f"12 epochs x {args.folds} folds s",
                            f"24 epochs x {args.folds} folds s"], rows, align="lrrrr")
    return (f"## CPU seconds per epoch ({len(fold.train)} training images per fold, "
            f"{args.threads} threads)\n\n```\n{command_line(__file__, args.argv)}\n```\n\n"
            f"{environment_table(environment('cpu'))}\n\n{table}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the chosen parts, prints their tables and merges them into ``--out``."""
    args = _parse(argv)
    doc = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
    for name, wanted, build in (("quality", args.quality, quality_section),
                                ("cpu_times", args.cpu_times, cpu_times_section)):
        if wanted:
            block = build(args)
            print(block)
            doc = merge_section(doc, name, block, header=HEADER)
            write_text(args.out, doc)
    log(f"[fast_space] wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MEDAUTO_DATA_DIR", str(_REPO.parent / "shared" / "data" / "medmnist"))
    raise SystemExit(main())
