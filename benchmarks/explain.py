#!/usr/bin/env python
"""Explanation benchmark: faithfulness (deletion/insertion AUC) of every method against a
random-map baseline, and time per image, on a 2D and a 3D MedMNIST model.

1. Models: for each ``--case`` (``dataset:backbone``, default BreastMNIST with resnet18
   and vit_tiny, AdrenalMNIST3D with r3d_18) a classifier is trained briefly with
   :class:`med_core.training.Trainer` (``--epochs``, best validation AUC kept; 3D data
   resized to ``--img-size-3d`` and the training split cut to ``--train-3d`` volumes to
   fit a CPU), or loaded from ``--model`` files (``medauto retrain`` model files). With
   ``--predictor`` the cases are final predictors of ``medauto search``: every member
   model, weighted as the predictor weighs them, so the ensemble's output is explained.
2. Images: the first ``--images`` images of the **validation** split (the test split is
   not used at all). Each map explains the model's predicted class.
3. For each method of :data:`med_core.explain.METHODS` (``random`` is the baseline):
   the mean deletion and insertion AUC of the predicted-class probability
   (:func:`med_core.explain.faithfulness`, torchcam's ``DeletionInsertionMetric``,
   ``--steps`` steps, mid-grey baseline), ``score = insertion - deletion`` (higher is
   more faithful), whether it beats the random map, and the wall time per image of
   :func:`~med_core.explain.explain` next to one forward + backward pass per image.
4. Prints the table and writes ``docs/benchmarks/explain.md`` (command, environment).

Quick smoke run (a few minutes on 2 CPU cores)::

    python benchmarks/explain.py --epochs 1 --images 4 --steps 4 --shap-samples 4 \
        --max-channels 16 --out /tmp/explain.md
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from typing import cast

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make `benchmarks` and `med_core` importable
    sys.path.insert(0, str(_REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import command_line  # noqa: E402
from benchmarks._common import environment  # noqa: E402
from benchmarks._common import environment_table  # noqa: E402
from benchmarks._common import log  # noqa: E402
from benchmarks._common import markdown_table  # noqa: E402
from benchmarks._common import synchronize  # noqa: E402
from benchmarks._common import write_text  # noqa: E402
from med_core.backbones import Backbone  # noqa: E402

DEFAULT_CASES = ("breastmnist:resnet18", "breastmnist:vit_tiny", "adrenalmnist3d:r3d_18")
H200_COMMAND = (
    "python benchmarks/explain.py --device cuda --epochs 10 --images 64 --steps 20 "
    "--shap-samples 32 --img-size-3d 28 --train-3d 0 --out docs/benchmarks/explain_h200.md"
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None,
                   help="MedMNIST folder (default: $MEDAUTO_DATA_DIR, else "
                   "../shared/data/medmnist beside the checkout)")  # fmt: skip
    p.add_argument("--case", action="append", metavar="DATASET:BACKBONE",
                   help=f"repeatable (default: {' '.join(DEFAULT_CASES)})")  # fmt: skip
    p.add_argument("--model", action="append", type=Path, metavar="PT",
                   help="model files to explain instead of training (one per --case)")
    p.add_argument("--predictor", action="append", type=Path, metavar="DIR",
                   help="a search's final predictor (RUN_DIR/final/STUDY/predictor), "
                   "explained as the ensemble it is (weighted members); repeatable, replaces "
                   "--case")  # fmt: skip
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--img-size-3d", type=int, default=16, help="3D volumes resized to this")
    p.add_argument("--train-3d", type=int, default=256,
                   help="3D training volumes used (0: all); the CPU cannot train on all")
    p.add_argument("--images", type=int, default=16, help="validation images per case")
    p.add_argument("--steps", type=int, default=10, help="deletion/insertion steps")
    p.add_argument("--shap-samples", type=int, default=16)
    p.add_argument("--max-channels", type=int, default=None,
                   help="Score-CAM on the K highest-variance channels (default: all)")
    p.add_argument("--cam-units", default="default", metavar="LIST",
                   help="comma list of CAM target layers to compare: 'default' (the "
                   "backbone's cam_target_layer) or an index into Backbone.units() (-3: the "
                   "third unit from the end); layers other than the default run the CAM "
                   "methods and the random map only (default: default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=_REPO / "docs" / "benchmarks" / "explain.md")
    return p.parse_args(argv)


def _data_dir(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    env = os.environ.get("MEDAUTO_DATA_DIR")
    return Path(env) if env else _REPO.parent / "shared" / "data" / "medmnist"


def _train(dataset: str, backbone: str, args: argparse.Namespace, data_dir: Path,
           work: Path) -> tuple[torch.nn.Module, dict[str, Any]]:  # fmt: skip
    from med_core.config import TrainConfig
    from med_core.data import load_dataset
    from med_core.testing.data import cut_medmnist
    from med_core.training import Trainer

    volumes = load_dataset(dataset, data_dir=data_dir).info.spatial_dims == 3
    src = data_dir
    if volumes and args.train_3d:
        src = work / "data"
        cut_medmnist(data_dir / f"{dataset}.npz", src / f"{dataset}.npz",
                     {"train": args.train_3d})  # fmt: skip
    flat: dict[str, Any] = {
        "data.dataset": dataset, "data.data_dir": str(src), "data.num_workers": 0,
        "model.backbone": backbone, "epochs": args.epochs, "batch_size": args.batch_size,
        "seed": args.seed, "monitor": "val_auc",
    }  # fmt: skip
    if volumes:
        flat["data.img_size"] = args.img_size_3d
    cfg = TrainConfig.from_flat(flat)
    trainer = Trainer(cfg, device=args.device, out_dir=work / f"{dataset}-{backbone}",
                      progress=False)  # fmt: skip
    t0 = time.perf_counter()
    history = trainer.fit()
    trainer.load_weights(work / f"{dataset}-{backbone}" / "best.pt")
    info = {"train_s": time.perf_counter() - t0, "best_val_auc": history.best_metric,
            "epochs": len(history.epochs)}  # fmt: skip
    log(f"{dataset}:{backbone} trained in {info['train_s']:.0f} s, val AUC "
        f"{history.best_metric:.3f}")  # fmt: skip
    return trainer.model.eval(), info


def _load_predictor(folder: Path, device: str
                    ) -> tuple[list[torch.nn.Module], list[float], str, str]:
    """A final predictor's member models, their weights, its dataset and a backbone label
    (``ensemble of N: a xW, ...``)."""
    from medauto.ensemble import Predictor
    from medauto.model_file import load_model

    predictor = Predictor.load(folder)
    dataset = predictor.spec.get("dataset")
    if not dataset:
        raise SystemExit(f"--predictor {folder}: predictor.json names no dataset")
    members = [load_model(predictor.folder / m.file, device=device).model
               for m in predictor.members]  # fmt: skip
    shares: dict[str, float] = {}
    for m in predictor.members:
        shares[m.backbone] = shares.get(m.backbone, 0.0) + m.weight
    label = (f"ensemble of {len(members)}: "
             + ", ".join(f"{b} x{w:.2f}" for b, w in sorted(shares.items())))  # fmt: skip
    return members, [m.weight for m in predictor.members], str(dataset), label


def _val_images(model: torch.nn.Module, dataset: str, data_dir: Path, n: int,
                device: str) -> torch.Tensor:  # fmt: skip
    from med_core.data import build_loader
    from med_core.data import load_dataset
    from med_core.explain import expected_input

    split = load_dataset(dataset, data_dir=data_dir).val
    split = split.subset(np.arange(min(n, len(split))))
    size = expected_input(model)[1]
    loader = build_loader(split, batch_size=len(split), train=False, img_size=size,
                          device=device)  # fmt: skip
    return torch.cat([x for x, _ in loader])


def _timed(fn: Any, device: torch.device) -> tuple[Any, float]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def _forward_backward(members: list[torch.nn.Module], x: torch.Tensor) -> None:
    xi = x.detach().requires_grad_(True)
    sum(m(xi).max(1).values.sum() for m in members).backward()
    for m in members:
        m.zero_grad(set_to_none=True)


def _backbone(member: torch.nn.Module) -> Backbone:
    """A med_core classifier's backbone (typed)."""
    return cast(Backbone, member.backbone)


def _cam_layer(unit: str) -> tuple[int | None, str]:
    """``--cam-units`` entry → the ``layer`` argument of ``explain`` and its table label."""
    return (None, "default") if unit == "default" else (int(unit), f"units()[{unit}]")


def _bench_case(members: list[torch.nn.Module], weights: list[float] | None, x: torch.Tensor,
                args: argparse.Namespace, device: torch.device,
                methods: tuple[str, ...] | None = None,
                layer: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Faithfulness and time per method for one model or ensemble (``weights``: its
    members' weights; the forward + backward reference runs every member), CAMs and the
    random map at ``layer`` (``explain``'s argument; ``None``: the backbone's default)."""
    from med_core.explain import METHODS
    from med_core.explain import explain
    from med_core.explain import faithfulness

    n = x.shape[0]
    _forward_backward(members, x[:1])  # warm-up
    fb = float(np.median([_timed(lambda: _forward_backward(members, x), device)[1]
                          for _ in range(3)]))  # fmt: skip
    rows = []
    for method in methods or METHODS:
        at = None if method == "shap" else layer
        explain(members, x[:1], method, shap_samples=2, max_channels=2,
                weights=weights, layer=at)  # warm-up  # fmt: skip
        maps, seconds = _timed(lambda m=method, at=at: explain(
            members, x, m, shap_samples=args.shap_samples, max_channels=args.max_channels,
            seed=args.seed, weights=weights, layer=at), device)  # fmt: skip
        f = faithfulness(members, x, maps, steps=args.steps, weights=weights)
        rows.append({"method": method, **f, "s_per_image": seconds / n,
                     "fb_per_image": fb / n})  # fmt: skip
        log(f"  {method:9s} del {f['deletion_auc']:.3f} ins {f['insertion_auc']:.3f} "
            f"score {f['score']:+.3f}  {1e3 * seconds / n:.0f} ms/image")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns 0."""
    args = _parse(argv)
    cases = ([str(p) for p in args.predictor] if args.predictor
             else args.case or list(DEFAULT_CASES))  # fmt: skip
    if args.model and len(args.model) != len(cases):
        raise SystemExit("--model: give one model file per --case")
    if args.predictor and (args.model or args.case):
        raise SystemExit("--predictor replaces --case and --model")
    from med_core.explain import METHODS

    layer_methods = tuple(m for m in METHODS if m != "shap")  # SHAP has no target layer
    data_dir = _data_dir(args.data_dir)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    table: list[list[Any]] = []
    trained: list[list[Any]] = []
    best: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="explain-bench-") as tmp:
        for k, case in enumerate(cases):
            weights: list[float] | None = None
            if args.predictor:
                members, weights, dataset, backbone = _load_predictor(args.predictor[k],
                                                                      args.device)
                info: dict[str, Any] = {"file": "final predictor"}
            elif args.model:
                from medauto.model_file import load_model

                dataset, _, backbone = case.partition(":")
                members = [load_model(args.model[k], device=args.device).model]
                info = {"file": str(args.model[k])}
            else:
                dataset, _, backbone = case.partition(":")
                model, info = _train(dataset, backbone, args, data_dir, Path(tmp))
                members = [model]
            members = [m.to(device).eval() for m in members]
            family = "+".join(sorted({_backbone(m).cfg.family for m in members}))
            x = _val_images(members[0], dataset, data_dir, args.images, args.device)
            log(f"{case} ({family}): {x.shape[0]} validation images {tuple(x.shape[1:])}")
            for unit in args.cam_units.split(","):
                at, layer = _cam_layer(unit.strip())
                if at is not None:
                    log(f"  CAM target layer: {layer}")
                rows = _bench_case(members, weights, x, args, device,
                                   None if at is None else layer_methods, layer=at)
                rand = next(r["score"] for r in rows if r["method"] == "random")
                for r in rows:
                    beats = "baseline" if r["method"] == "random" else (
                        f"yes (+{r['score'] - rand:.3f})" if r["score"] > rand
                        else f"NO ({r['score'] - rand:+.3f})")  # fmt: skip
                    table.append([dataset, backbone, family, layer, r["method"],
                                  f"{r['deletion_auc']:.3f}", f"{r['insertion_auc']:.3f}",
                                  f"{r['score']:+.3f}", beats, f"{1e3 * r['s_per_image']:.1f}",
                                  f"{r['s_per_image'] / r['fb_per_image']:.1f}"])  # fmt: skip
                cams = [r for r in rows if r["method"] not in ("random", "shap")]
                top = max(cams, key=lambda r: r["score"])
                best.append([family, backbone, layer, top["method"], f"{top['score']:+.3f}"])
            trained.append([case, info.get("epochs", "-"),
                            f"{info['best_val_auc']:.3f}" if "best_val_auc" in info else "-",
                            f"{info['train_s']:.0f}" if "train_s" in info else info.get("file")])
    headers = ["dataset", "backbone", "family", "CAM layer", "method", "deletion AUC ↓",
               "insertion AUC ↑",
               "score ↑", "beats random", "ms / image", "× fwd+bwd"]  # fmt: skip
    print(markdown_table(headers, table))
    on_cpu = not str(device).startswith("cuda")
    md = "\n".join([
        "# Explanation faithfulness and cost", "",
        "Command:", "", "```", command_line(__file__, sys.argv[1:] if argv is None else argv),
        "```", "",
        f"Images: the first {args.images} of each dataset's **validation** split (the test "
        "split is not used); each map explains the model's predicted class. Faithfulness: "
        f"deletion/insertion AUC of the predicted-class probability ({args.steps} steps, "
        "mid-grey baseline; torchcam's `DeletionInsertionMetric` through "
        "`med_core.explain.faithfulness`), `score = insertion − deletion`; `random` is a "
        "uniform random map at the CAM's feature grid, upsampled like a CAM. Time: wall "
        "time of `explain()` for the batch / images, and its ratio to one forward + backward "
        "pass of the same batch (median of 3)"
        + ("; a shared, loaded 2-core CPU makes these noisy. " if on_cpu else ". ")
        + (f"Score-CAM used the {args.max_channels} highest-variance channels."
           if args.max_channels else "Score-CAM used every channel of the target layer.")
        + f" SHAP: {args.shap_samples} expected-gradient samples, zero background.", "",
        "## Models", "",
        markdown_table(["case", "epochs", "best val AUC", "train s / file"], trained), "",
        f"## Results ({'CPU' if on_cpu else 'GPU'})", "", markdown_table(headers, table), "",
        "## Most faithful CAM method per family (this run)", "",
        markdown_table(["family", "backbone", "CAM layer", "method", "score"], best), "",
        *(["## One H200", "", "Results in `explain_h200.md` beside this file. Command:", "",
           "```", H200_COMMAND, "```", ""] if on_cpu else []),
        "## Environment", "", environment_table(environment(device)), "",
    ])
    write_text(args.out, md)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
