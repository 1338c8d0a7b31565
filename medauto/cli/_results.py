"""Subcommands that turn a finished study into results: ``retrain``, ``report``, ``export``.

One class per subcommand, thin, calling the public API. ``retrain`` and ``report`` read
the study without ever creating a store (:func:`medauto.cli._store.load_study`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from medauto.cli._command import Command
from medauto.cli._hints import next_hint
from medauto.cli._options import add_device_option
from medauto.cli._options import add_store_options
from medauto.cli._options import add_study_option
from medauto.cli._options import add_tracking_options
from medauto.cli._options import checked_device
from medauto.cli._options import tracking_of
from medauto.cli._store import StoreRef
from medauto.cli._store import load_study
from medauto.evaluation import HonestEvaluation
from medauto.exceptions import CLIUsageError
from medauto.exceptions import MedautoError
from medauto.retrain.options import ENSEMBLE_SELECT
from medauto.retrain.options import QUANT_METHODS
from medauto.retrain.options import TTA_MODES
from medauto.retrain.options import WEIGHTS
from medauto.retrain.options import RetrainOptions
from medauto.retrain.results import RESULTS_FILE
from medauto.retrain.results import retrain_dir
from medauto.storage import redact_url

if TYPE_CHECKING:
    from medauto.retrain import RetrainResult

__all__ = ["ExportCommand", "ReportCommand", "RetrainCommand", "print_retrain_summary"]


def _fmt(mean: float, std: float | None = None) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


class RetrainCommand(Command):
    """Retrain the best trial (or the top-k) and evaluate it once on the test split.

    Trains the selected trial config(s) with fixed seeds for the full epoch budget, keeps
    the best-validation-epoch weights (the last epoch's with --train-on-val), evaluates
    once on the held-out test split with MedMNIST's ACC/AUC, saves each model (weights +
    config, loadable with torch.load(weights_only=True)) and logs it to MLflow.

    Example: medauto retrain --study breastmnist-fast --seeds 0 1 2 --ensemble 3 --quantize static
    """

    name = "retrain"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        add_study_option(p)
        add_store_options(p)
        p.add_argument("--ensemble", type=int, default=1, metavar="K",
                       help="retrain the top-K trials and average their scores (default 1)")
        p.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="S",
                       help="training seeds; mean ± std over them (default: 0)")
        p.add_argument("--ensemble-select", choices=ENSEMBLE_SELECT, default="fixed",
                       help="use all K members, or the best j <= K chosen on validation AUC")
        p.add_argument("--tta", choices=TTA_MODES, default="trial",
                       help="flip test-time augmentation: the trial's setting, on, off, or "
                       "auto (per model, on validation AUC) (default: trial)")
        p.add_argument("--train-on-val", action="store_true",
                       help="train on train+val (keeps the last epoch's weights)")
        p.add_argument("--weights", choices=WEIGHTS, default="auto",
                       help="best-validation or last epoch (default: auto)")
        add_device_option(p)
        p.add_argument("--data-dir", help="MedMNIST folder (default: the trials' setting)")
        p.add_argument("--out", help="output folder (default: RUN_DIR/retrain/STUDY)")
        p.add_argument("--quantize", choices=QUANT_METHODS,
                       help="also quantize the best model to int8 and measure it")
        p.add_argument("--calibration-batches", type=int, default=8, metavar="N",
                       help="training batches for static calibration (default 8)")
        p.add_argument("--latency-batch", type=int, default=32, metavar="B")
        p.add_argument("--latency-iters", type=int, default=20, metavar="N")
        p.add_argument("--latency-threads", type=int, default=1, metavar="T")
        p.add_argument("--latency-compile", action="store_true",
                       help="also time Inductor-compiled float and int8 models")
        add_tracking_options(p)
        p.add_argument("--progress", action="store_true", help="per-epoch progress bars")

    def take_action(self, args: argparse.Namespace) -> int:
        from medauto.retrain import retrain

        if args.ensemble < 1:
            raise CLIUsageError(f"--ensemble must be >= 1, got {args.ensemble}")
        device = checked_device(args)
        ref = StoreRef.from_args(args)
        options = RetrainOptions(
            ensemble=args.ensemble,
            ensemble_select=args.ensemble_select,
            tta=args.tta,
            seeds=tuple(args.seeds),
            train_on_val=args.train_on_val,
            weights=args.weights,
            quantize=args.quantize,
            calibration_batches=args.calibration_batches,
            latency_batch_size=args.latency_batch,
            latency_iters=args.latency_iters,
            latency_threads=args.latency_threads,
            latency_compile=args.latency_compile,
        )
        result = retrain(
            load_study(ref, args.study), options, device=device, data_dir=args.data_dir,
            run_dir=args.run_dir, out_dir=args.out, tracking=tracking_of(args),
            progress=args.progress,
        )
        print_retrain_summary(result)
        q = result.quantization
        code = 0
        if q is not None:
            if q.error:
                print(f"quantization ({q.method}) failed: {redact_url(str(q.error))}")
                code = 1
            else:
                print(
                    f"int8 ({q.method}): {q.float_size_bytes / 1e6:.2f} MB -> "
                    f"{q.int8_size_bytes / 1e6:.2f} MB ({q.size_ratio:.2f}x smaller), "
                    f"ACC {_fmt(q.float_test['acc'])} -> {_fmt(q.int8_test['acc'])}, "
                    f"latency {q.float_latency_ms:.2f} -> {q.int8_latency_ms:.2f} ms "
                    f"(eager, batch {q.latency_batch_size})"
                )
        if result.mlflow:
            uri = redact_url(str(result.mlflow["tracking_uri"]))
            print(f"mlflow: run {result.mlflow['run_id']} at {uri}")
        print(f"results: {Path(result.out_dir) / RESULTS_FILE}")
        print(next_hint(ref, result.study, ["report", "export"]))
        return code


def print_retrain_summary(result: RetrainResult) -> None:
    """The retrain's selection and its test AUC/ACC (mean ± std over seeds), on stdout."""
    m, s = result.test_mean, result.test_std
    used = result.ensemble_used
    what = f"ensemble of top {used}" if used > 1 else "best trial"
    trials = result.trials[:used]
    print(f"study: {result.study} ({result.dataset}, {what}: trials {trials})")
    if result.partial:
        print(f"WARNING: PARTIAL: no trial completed; trial(s) {result.partial} were pruned "
              "before their last epoch and were retrained as they were")
    tta = sorted({"on" if mr.tta else "off" for mr in result.models})
    print(f"seeds: {result.seeds}; weights: {result.weights}; tta: {'/'.join(tta)} "
          f"({result.tta}); n_test: {result.n_test}")
    print(f"test AUC: {_fmt(m['auc'], s['auc'])}")
    print(f"test ACC: {_fmt(m['acc'], s['acc'])}")
    if "balanced_acc" in m:
        print(f"test balanced ACC: {_fmt(m['balanced_acc'], s.get('balanced_acc'))}")
    if result.evaluation:  # the first seed's final model, with its intervals and warnings
        for line in HonestEvaluation.from_dict(result.evaluation).lines():
            print(line if line.startswith("WARNING") else f"seed {result.seeds[0]} {line}")


class ReportCommand(Command):
    """Write a self-contained Markdown + HTML report of a study.

    Best params, optimization history and parameter importances, test metrics of
    `medauto retrain` next to the published MedMNIST v2 baselines, pruning statistics and
    the quantization table.

    Example: medauto report --study breastmnist-fast
    """

    name = "report"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        add_study_option(p)
        add_store_options(p)
        p.add_argument("--retrain", metavar="JSON",
                       help="retrain.json (default: RUN_DIR/retrain/STUDY/retrain.json if any)")
        p.add_argument("--out", help="output folder (default: RUN_DIR/report/STUDY)")
        p.add_argument("--title", help="report title")

    def take_action(self, args: argparse.Namespace) -> int:
        from medauto.report import write_report

        study = load_study(StoreRef.from_args(args), args.study)
        name = study.study_name
        retrain_json: Path | None = Path(args.retrain) if args.retrain else None
        if retrain_json is None and (retrain_dir(args.run_dir, name) / RESULTS_FILE).is_file():
            retrain_json = retrain_dir(args.run_dir, name) / RESULTS_FILE
        if retrain_json is not None and not retrain_json.is_file():
            raise CLIUsageError(f"--retrain: no file at {str(retrain_json)!r}")
        out = Path(args.out) if args.out else Path(args.run_dir) / "report" / name
        from medauto.final import FINAL_FILE
        from medauto.final import final_dir

        paths = write_report(study, out_dir=out, retrain=retrain_json, title=args.title,
                             final=final_dir(args.run_dir, name) / FINAL_FILE)
        print(f"markdown: {paths.markdown}")
        print(f"html: {paths.html}")
        if retrain_json is None:
            print("note: no retrain results yet (run `medauto retrain`); the report has no "
                  "test metrics")
        return 0


class ExportCommand(Command):
    """Export a retrained model: ONNX (with an onnxruntime parity check) or int8 (.pt2).

    --model takes a model.pt written by `medauto retrain`; with --study instead, the best
    trial's model of the first seed is used.

    Example: medauto export --study breastmnist-fast --format onnx --out model.onnx
    """

    name = "export"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        src = p.add_mutually_exclusive_group()
        src.add_argument("--model", help="a model.pt written by `medauto retrain`")
        src.add_argument("--study", help="use the study's retrained best model (default: "
                         "the only study with results in --run-dir)")
        p.add_argument("--run-dir", default="medauto-runs",
                       help="where `medauto retrain` wrote its results (with --study)")
        p.add_argument("--format", choices=("onnx", "int8"), default="onnx")
        p.add_argument("--out", help="output file (default: next to the model)")
        p.add_argument("--no-parity-check", action="store_true",
                       help="onnx: skip the onnxruntime comparison")
        p.add_argument("--data-dir", help="int8: MedMNIST folder for calibration/test data")
        p.add_argument("--calibration-batches", type=int, default=8, metavar="N")

    def take_action(self, args: argparse.Namespace) -> int:
        model_path = Path(args.model) if args.model else self._model_of_study(args)
        if args.format == "onnx":
            return self._onnx(model_path, args)
        return self._int8(model_path, args)

    @staticmethod
    def _model_of_study(args: argparse.Namespace) -> Path:
        from medauto.cli._store import results_study
        from medauto.retrain import RetrainResult

        study = results_study(args.run_dir, args.study)
        path = retrain_dir(args.run_dir, study) / RESULTS_FILE
        if not path.is_file():
            raise MedautoError(
                f"no retrain results of study {study!r} at {str(path.resolve())!r} "
                "(run `medauto retrain` first, or pass --run-dir or --model)"
            )
        result = RetrainResult.load(path)
        if not result.models:
            raise MedautoError(f"the retrain results of {study!r} list no model")
        return Path(result.out_dir) / result.models[0].path

    @staticmethod
    def _onnx(model_path: Path, args: argparse.Namespace) -> int:
        import torch

        from med_core.optimization import export_onnx
        from medauto.model_file import load_model

        loaded = load_model(model_path)
        meta = loaded.meta
        size = meta["img_size"]  # int, or one int per spatial axis
        dims = int(meta.get("spatial_dims", 2))
        spatial = [int(v) for v in size] if isinstance(size, list) else [int(size)] * dims
        example = torch.zeros((2, int(meta["in_chans"]), *spatial))
        out = Path(args.out) if args.out else model_path.with_suffix(".onnx")
        report = export_onnx(loaded.model, out, example, check_parity=not args.no_parity_check)
        print(f"onnx: {report.path} ({report.size_bytes / 1e6:.2f} MB, opset "
              f"{report.opset_version})")
        if report.max_abs_diff is not None:
            print(f"parity: max |onnxruntime - torch| = {report.max_abs_diff:.2e} "
                  f"(batch sizes {list(report.parity_batch_sizes)})")
        return 0

    @staticmethod
    def _int8(model_path: Path, args: argparse.Namespace) -> int:
        from medauto.retrain import quantize_retrained

        q = quantize_retrained(
            model_path, method="static", data_dir=args.data_dir, out_path=args.out,
            calibration_batches=args.calibration_batches,
        )
        if q.error:
            raise MedautoError(f"could not quantize {str(model_path)!r}: {q.error}")
        print(f"int8: {q.int8_path} ({q.float_size_bytes / 1e6:.2f} MB -> "
              f"{q.int8_size_bytes / 1e6:.2f} MB, {q.size_ratio:.2f}x smaller)")
        print(f"test ACC {_fmt(q.float_test['acc'])} -> {_fmt(q.int8_test['acc'])}, "
              f"AUC {_fmt(q.float_test['auc'])} -> {_fmt(q.int8_test['auc'])}")
        return 0
