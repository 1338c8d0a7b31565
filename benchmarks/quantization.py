#!/usr/bin/env python
"""int8 quantization benchmark: a ResNet-18 trained on BreastMNIST, float32 vs int8 (CPU).

1. Trains ``resnet18`` (med_core's classifier for 1×28×28) on BreastMNIST with
   :class:`med_core.training.Trainer` (fixed seed, ``--epochs``, AdamW, cosine schedule,
   ``light`` augmentation) and keeps the best-validation-AUC checkpoint; the training
   wall time is recorded. ``--checkpoint`` skips training and loads a ``best.pt``.
2. Quantizes it with :func:`med_core.optimization.quantize_model`: ``dynamic`` (int8
   Linear weights, torchao ``quantize_``) and ``static`` (int8 weights and activations,
   torchao PT2E + ``X86InductorQuantizer``, calibrated on ``--calib-batches`` training
   batches).
3. For float32, dynamic and static int8 it measures the file size on disk (float32:
   ``torch.save(state_dict)``; int8: :func:`save_quantized` ``.pt2``), CPU latency per
   batch at batch 1 and 64 (median of ``--iters`` calls after warm-up, ``--threads``
   intra-op threads) in eager mode and compiled by Inductor with weight freezing
   (:func:`compile_quantized`; the int8 kernels only exist compiled), and test ACC/AUC
   with MedMNIST's definitions (ACC at 0.5 on the positive-class softmax score, ROC-AUC of
   that score; :func:`med_core.training.compute_metrics`). The static model is evaluated
   after a round trip through its file.
4. Prints a Markdown table and writes ``docs/benchmarks/quantization.md`` (command,
   versions, CPU, load average, ratios, targets).

Quick smoke run (about two minutes on 2 CPU cores)::

    python benchmarks/quantization.py --epochs 1 --calib-batches 1 --iters 3 --no-compile \
        --out /tmp/quantization.md
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
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
from benchmarks._common import log  # noqa: E402
from benchmarks._common import markdown_table  # noqa: E402
from benchmarks._common import write_json  # noqa: E402
from benchmarks._common import write_text  # noqa: E402

EVAL_BATCH = 64  # compiled graphs are specialised per batch size: pad the last batch


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with breastmnist.npz (default: $MEDAUTO_DATA_DIR, else "
        "../shared/data/medmnist beside the checkout)",
    )
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a Trainer best.pt to evaluate instead of training",
    )
    p.add_argument(
        "--calib-batches",
        type=int,
        default=8,
        help="training batches (of --calib-batch-size) for static calibration",
    )
    p.add_argument("--calib-batch-size", type=int, default=32)
    p.add_argument(
        "--threads", type=int, default=1, help="intra-op CPU threads for the latency measurements"
    )
    p.add_argument("--iters", type=int, default=30, help="timed calls per latency figure")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the Inductor-compiled variants (much faster, but int8 is only fast compiled)",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where checkpoints and model files go (default: a temp dir)",
    )
    p.add_argument("--out", type=Path, default=_REPO / "docs" / "benchmarks" / "quantization.md")
    p.add_argument("--json", type=Path, default=None, help="also write raw numbers here")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- helpers
def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return "unavailable"
    keep = [x for x in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if x in flags]
    return " ".join(keep) or "none of avx2/avx512/vnni/amx"


def _load_avg() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unavailable"


def _batches(split: Any, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from med_core.data import build_loader

    loader = build_loader(split, batch_size=batch_size, train=False, mode="tensor")
    return [(x.cpu(), y.cpu()) for x, y in loader]


def _scores(
    model: Callable[..., torch.Tensor], batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and positive-class softmax scores, every call at batch EVAL_BATCH (padded)."""
    ys, ss = [], []
    with torch.no_grad():
        for x, y in batches:
            n = x.shape[0]
            if n < EVAL_BATCH:
                x = torch.cat([x, x.new_zeros((EVAL_BATCH - n, *x.shape[1:]))])
            ss.append(model(x)[:n].float().softmax(1)[:, 1].numpy())
            ys.append(y.numpy())
    return np.concatenate(ys), np.concatenate(ss)


def _metrics(
    model: Callable[..., torch.Tensor], batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    from med_core.training import compute_metrics

    y, s = _scores(model, batches)
    m = compute_metrics("binary", y, s)
    return {"acc": float(m["acc"]), "auc": float(m["auc"])}


def _latency(
    model: Callable[..., Any], x: torch.Tensor, args: argparse.Namespace
) -> dict[str, float]:
    from med_core.optimization import measure_latency

    return measure_latency(model, x, warmup=args.warmup, iters=args.iters, threads=args.threads)


def _earlier_training(checkpoint: Path) -> dict[str, Any]:
    """Training facts of the run that wrote ``checkpoint``, from the Trainer's ``last.pt``
    beside it (its history has every epoch's wall time); empty if there is none."""
    from med_core.training import load_checkpoint

    last = checkpoint.parent / "last.pt"
    try:
        history = load_checkpoint(last).get("history") or {}
    except Exception as exc:  # a missing/unreadable file only loses these facts: logged
        log(f"no training history next to {checkpoint} ({type(exc).__name__}: {exc})")
        return {}
    epochs = history.get("epochs") or []
    if not epochs:
        return {}
    return {
        "train_seconds": float(sum(e.get("epoch_time_s", 0.0) for e in epochs)),
        "epochs_run": len(epochs),
        "best_epoch": history.get("best_epoch"),
        "best_val_auc": history.get("best_metric"),
        "stop_reason": history.get("stop_reason"),
    }


def _train(args: argparse.Namespace, data_dir: Path, work: Path) -> tuple[Any, dict[str, Any]]:
    from med_core.config import TrainConfig
    from med_core.training import Trainer

    cfg = TrainConfig.from_flat(
        {
            "data.dataset": "breastmnist",
            "data.data_dir": str(data_dir),
            "data.num_workers": 0,
            "model.backbone": "resnet18",
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optim.lr": args.lr,
            "seed": args.seed,
            "monitor": "val_auc",
        }
    )
    trainer = Trainer(cfg, device="cpu", out_dir=work / "train", progress=False)
    info: dict[str, Any] = {"config": cfg.flatten()}
    if args.checkpoint is not None:
        trainer.load_weights(args.checkpoint)
        info.update(trained=False, checkpoint=str(args.checkpoint))
        info.update(_earlier_training(args.checkpoint))
        return trainer, info
    log(f"training resnet18 on BreastMNIST for {args.epochs} epochs (CPU) ...")
    t0 = time.perf_counter()
    history = trainer.fit()
    seconds = time.perf_counter() - t0
    trainer.load_weights(work / "train" / "best.pt")
    info.update(
        trained=True,
        train_seconds=seconds,
        epochs_run=len(history.epochs),
        best_epoch=history.best_epoch,
        best_val_auc=history.best_metric,
        stop_reason=history.stop_reason,
    )
    log(
        f"trained in {seconds:.0f} s; best epoch {history.best_epoch} "
        f"(val AUC {history.best_metric:.4f})"
    )
    return trainer, info


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    data_dir = args.data_dir or Path(
        os.environ.get("MEDAUTO_DATA_DIR") or _REPO.parent / "shared" / "data" / "medmnist"
    )
    cleanup = None
    if args.work_dir is None:
        cleanup = tempfile.TemporaryDirectory(prefix="quant_bench_")
        work = Path(cleanup.name)
    else:
        work = args.work_dir
        work.mkdir(parents=True, exist_ok=True)
    load_start = _load_avg()
    env = environment("cpu")

    from med_core.optimization import compile_quantized
    from med_core.optimization import load_quantized
    from med_core.optimization import model_size_bytes
    from med_core.optimization import quantize_model
    from med_core.optimization import save_quantized

    trainer, train_info = _train(args, data_dir, work)
    model = trainer.model.eval().cpu()
    dataset = trainer.dataset
    test = _batches(dataset.test, EVAL_BATCH)
    calib = _batches(dataset.train, args.calib_batch_size)[: args.calib_batches]
    reference = trainer.evaluate("test")  # the Trainer's own numbers, as a cross-check

    rows: dict[str, dict[str, Any]] = {}
    fp32_file = work / "fp32_state_dict.pt"
    torch.save(model.state_dict(), fp32_file)

    log("quantizing: dynamic ...")
    t0 = time.perf_counter()
    dynamic = quantize_model(model, "dynamic", example_inputs=test[0][0])
    t_dyn = time.perf_counter() - t0
    log("quantizing: static (export, calibration, convert) ...")
    t0 = time.perf_counter()
    static = quantize_model(model, "static", calibration_data=[x for x, _ in calib])
    t_static = time.perf_counter() - t0
    dyn_file, static_file = work / "dynamic_int8.pt2", work / "static_int8.pt2"
    save_quantized(dynamic, dyn_file)
    save_quantized(static, static_file)
    static_loaded = load_quantized(static_file)  # evaluate what was written to disk

    variants: list[tuple[str, str, Callable[..., Any], Path | None, float | None]] = [
        ("float32", "eager", model, fp32_file, None),
        ("dynamic int8", "eager", dynamic, dyn_file, t_dyn),
        ("static int8", "eager (reference q/dq graph)", static_loaded, static_file, t_static),
    ]
    if not args.no_compile:
        variants += [
            ("float32", "Inductor + freezing", compile_quantized(model), fp32_file, None),
            ("dynamic int8", "Inductor + freezing", compile_quantized(dynamic), dyn_file, None),
            (
                "static int8",
                "Inductor + freezing (oneDNN int8)",
                compile_quantized(static_loaded),
                static_file,
                None,
            ),
        ]
    x1 = test[0][0][:1].contiguous()
    x64 = test[0][0][:EVAL_BATCH].contiguous()
    for name, mode, fn, path, q_seconds in variants:
        key = f"{name} / {mode}"
        log(f"measuring {key} ...")
        row: dict[str, Any] = {"variant": name, "mode": mode, "quantize_s": q_seconds}
        try:
            row["size_bytes"] = model_size_bytes(path) if path else None
            t0 = time.perf_counter()
            row.update(_metrics(fn, test))
            row["first_eval_s"] = time.perf_counter() - t0  # includes compilation
            row["b1"] = _latency(fn, x1, args)
            row["b64"] = _latency(fn, x64, args)
        except Exception as exc:  # a variant that cannot run is reported, not hidden
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            log(f"  FAILED: {row['error']}")
        rows[key] = row

    # ------------------------------------------------------------------ report
    base = rows["float32 / eager"]
    base_c = rows.get("float32 / Inductor + freezing")

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}×" if a and b else "–"

    table = []
    for row in rows.values():
        if "error" in row:
            table.append(
                [
                    row["variant"],
                    row["mode"],
                    "–",
                    "–",
                    "–",
                    "–",
                    "–",
                    "–",
                    "–",
                    "–",
                    f"failed: {row['error']}",
                ]
            )
            continue
        b1, b64 = row["b1"]["median_ms"], row["b64"]["median_ms"]
        table.append(
            [
                row["variant"],
                row["mode"],
                f"{row['size_bytes'] / 1e6:.2f}",
                ratio(base["size_bytes"], row["size_bytes"]),
                f"{b1:.1f} ({row['b1']['p90_ms']:.1f})",
                f"{b64:.0f} ({row['b64']['p90_ms']:.0f})",
                ratio(base["b1"]["median_ms"], b1),
                ratio(base["b64"]["median_ms"], b64),
                f"{100 * row['acc']:.2f}",
                f"{row['auc']:.4f}",
                f"{100 * (row['acc'] - base['acc']):+.2f}",
            ]
        )
    headers = [
        "model",
        "execution",
        "file (MB)",
        "size ×",
        "batch 1: ms (p90)",
        "batch 64: ms (p90)",
        "speed × b1",
        "speed × b64",
        "test ACC (%)",
        "test AUC",
        "ACC Δ (points)",
    ]
    main_table = markdown_table(headers, table, align="llrrrrrrrrr")

    # targets: static int8 ≥ 3× smaller, faster on CPU, ≤ 1 point of ACC lost
    s_key = "static int8 / Inductor + freezing (oneDNN int8)"
    s_row = rows.get(s_key) if s_key in rows and "error" not in rows[s_key] else None
    se = rows["static int8 / eager (reference q/dq graph)"]
    target_lines = []
    if "error" not in se:
        size_x = base["size_bytes"] / se["size_bytes"]
        d_acc = 100 * (se["acc"] - base["acc"])
        verdict = "met" if d_acc >= -1 else f"MISSED by {-1 - d_acc:.2f} points"
        target_lines.append(
            f"* **≥ 3× smaller on disk:** {size_x:.2f}× ({base['size_bytes'] / 1e6:.2f} MB → "
            f"{se['size_bytes'] / 1e6:.2f} MB) — {'met' if size_x >= 3 else 'MISSED'}."
        )
        target_lines.append(
            f"* **≤ 1 point of test ACC lost:** {d_acc:+.2f} points "
            f"({100 * base['acc']:.2f} % → {100 * se['acc']:.2f} %; AUC {base['auc']:.4f} → "
            f"{se['auc']:.4f}) — {verdict}."
        )
    if s_row is not None:
        parts = []
        for b in ("b1", "b64"):
            vs_eager = base[b]["median_ms"] / s_row[b]["median_ms"]
            vs_comp = (
                base_c[b]["median_ms"] / s_row[b]["median_ms"]
                if base_c and "error" not in base_c
                else float("nan")
            )
            parts.append(
                f"batch {b[1:]}: {vs_eager:.2f}× vs float32 eager, "
                f"{vs_comp:.2f}× vs float32 compiled"
            )
        faster = all(base[b]["median_ms"] > s_row[b]["median_ms"] for b in ("b1", "b64"))
        target_lines.append(
            f"* **Faster on CPU (static int8, compiled):** {'; '.join(parts)} — "
            f"{'met' if faster else 'MISSED'} against float32 eager."
        )
        target_lines.append(
            f"* Eager (uncompiled) static int8 is *slower* than float32: "
            f"{se['b1']['median_ms']:.1f} ms vs {base['b1']['median_ms']:.1f} ms at batch 1 — "
            "the converted PT2E graph is a reference representation (explicit quantize/"
            "dequantize around float kernels); only Inductor lowers it to int8 kernels."
            if "error" not in se
            else ""
        )
    elif args.no_compile:
        target_lines.append(
            "* Latency target not assessed: run without `--no-compile` "
            "(int8 kernels are only used when compiled)."
        )

    t = train_info
    if "epochs_run" in t:
        train_line = (
            f"Trained {t['epochs_run']} epochs in {t['train_seconds']:.0f} s "
            f"({t['train_seconds'] / max(t['epochs_run'], 1):.0f} s/epoch) on this CPU; best "
            f"epoch {t['best_epoch']} by validation AUC ({t['best_val_auc']:.4f}), stop reason "
            f"`{t['stop_reason']}`."
        )
        if not t.get("trained"):
            train_line = (
                f"Weights: `{t['checkpoint']}`, written by an earlier run of this script on "
                "this machine (same options without `--checkpoint`, which trains first). "
                + train_line.replace(" s (", " s of epoch time (", 1)
            )
    else:
        train_line = f"Weights loaded from `{t['checkpoint']}` (not trained here)."
    ref_line = (
        f"Cross-check: `Trainer.evaluate('test')` on the same float32 weights gives ACC "
        f"{100 * reference['test_acc']:.2f} %, AUC {reference['test_auc']:.4f}."
    )
    env.update(
        {
            "torchao": _version("torchao"),
            "CPU flags (int8-relevant)": _cpu_flags(),
            "latency threads": str(args.threads),
            "load average (1/5/15 min) at start": load_start,
            "load average at end": _load_avg(),
        }
    )
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    load_begin = float(load_start.split(" / ")[0]) if "/" in load_start else 0.0
    cores = os.cpu_count() or 1
    noise_line = (
        f"**Noise:** this machine was shared with other jobs during the run (1-minute load "
        f"average {load_begin:.1f} at the start and {load_end:.1f} at the end, on {cores} "
        "cores), so the latencies are noisy: compare each median with its p90, and read the "
        "speed ratios as indicative. Sizes and accuracies are unaffected."
        if max(load_begin, load_end) > cores
        else ""
    )
    quant_line = (
        f"Quantization time: dynamic {t_dyn:.1f} s; static {t_static:.1f} s (torch.export, "
        f"{len(calib)} calibration batches of {args.calib_batch_size} training images, "
        f"convert)."
    )
    n_params = sum(p.numel() for p in model.parameters())
    md = "\n".join(
        [
            "# Quantization benchmark: ResNet-18 on BreastMNIST (CPU)",
            "",
            "Generated by `benchmarks/quantization.py`; do not edit by hand. Command:",
            "",
            "```",
            command_line(__file__, sys.argv[1:] if argv is None else argv),
            "```",
            "",
            "Model: med_core `build_classifier(resnet18, in_chans=1, img_size=28)` "
            f"(small-input stem, no max-pool; {n_params / 1e6:.2f} M "
            "parameters), trained with `med_core.training.Trainer` "
            f"(seed {args.seed}, batch {args.batch_size}, AdamW lr {args.lr}, cosine, light "
            "augmentation). " + train_line,
            "",
            "Test split: the official BreastMNIST test set (156 images). ACC: positive-class "
            "softmax score > 0.5; AUC: ROC-AUC of that score (MedMNIST definitions, "
            "`med_core.training.compute_metrics`). " + ref_line,
            "",
            "Latency: median of "
            f"{args.iters} calls after {args.warmup} warm-up calls (compilation happens in the "
            f"warm-up), `torch.no_grad()`, {args.threads} intra-op thread(s); speed × and size × "
            "are relative to float32 eager (the first row). File sizes: float32 = "
            "`torch.save(model.state_dict())`; int8 = `save_quantized` (`torch.export` `.pt2` "
            "program, graph included). The static int8 rows run the model loaded back from its "
            "file. " + quant_line,
            "",
            main_table,
            "",
            noise_line,
            "",
            "## Against the issue's targets (static int8)",
            "",
            *[ln for ln in target_lines if ln],
            "",
            "## Environment",
            "",
            environment_table(env),
            "",
        ]
    )
    print(main_table)
    print("\n".join(ln for ln in target_lines if ln))
    write_text(args.out, md)
    log(f"wrote {args.out}")
    if args.json:
        write_json(
            args.json,
            {"train": train_info, "reference": reference, "rows": rows, "environment": env},
        )
    if cleanup is not None:
        cleanup.cleanup()
    return 0


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    raise SystemExit(main())
