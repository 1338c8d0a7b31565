"""``medauto distill``: the study's final ensemble distilled into one deployable model."""

from __future__ import annotations

import argparse

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
from medauto.exceptions import CLIUsageError
from medauto.storage import redact_url

__all__ = ["DistillCommand"]


class DistillCommand(Command):
    """Distill the study's final ensemble into one student model, tested once.

    The student is the best single trial's configuration (--student takes another
    backbone). It trains on the ensemble's soft targets and the labels, its epoch is chosen
    on validation, it is evaluated once on the test split, saved as a model file
    (RUN_DIR/final/STUDY/student/model.pt, readable by `medauto export --model`) and
    logged to MLflow. With --deploy-table it also measures the deployment table (ensemble,
    best single, student, int8 student, ONNX student: test AUC/ACC, size, latency) into
    RUN_DIR/final/STUDY/deploy.json, which `medauto report` shows.

    Example: medauto distill --study breastmnist-fast --temperature 4 --alpha 0.7
    """

    name = "distill"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        add_study_option(p)
        add_store_options(p)
        p.add_argument("--student", metavar="BACKBONE",
                       help="the student's backbone (default: the best single trial's)")
        p.add_argument("--epochs", type=int, help="training epochs (default: the trial's)")
        p.add_argument("--temperature", type=float, default=4.0,
                       help="softening temperature T (default 4)")
        p.add_argument("--alpha", type=float, default=0.7,
                       help="weight of the distillation term in [0, 1] (default 0.7)")
        add_device_option(p)
        p.add_argument("--data-dir", help="MedMNIST folder (default: the trial's setting)")
        p.add_argument("--out", help="output folder (default: RUN_DIR/final/STUDY/student)")
        p.add_argument("--deploy-table", action="store_true",
                       help="also quantize (static int8) and export (ONNX) the student and "
                       "measure every deployable form (deploy.json, shown by `medauto report`)")
        p.add_argument("--latency-iters", type=int, default=20, metavar="N",
                       help="timed calls per latency of --deploy-table (default 20)")
        p.add_argument("--latency-seconds", type=float, default=5.0, metavar="S",
                       help="--deploy-table: stop a latency's timed calls once they add up "
                       "to S seconds, after three (default 5)")
        p.add_argument("--int8-eager", action="store_true",
                       help="--deploy-table: run the int8 student eagerly (reference "
                       "kernels) instead of compiling it with Inductor (needs a C++ "
                       "compiler; about a minute per batch size on a small CPU)")
        add_tracking_options(p)
        p.add_argument("--progress", action="store_true", help="per-epoch progress bars")

    def take_action(self, args: argparse.Namespace) -> int:
        from medauto.distill import DISTILL_FILE
        from medauto.distill import distill
        from medauto.distill import student_dir

        if args.deploy_table and args.out:
            raise CLIUsageError("--deploy-table measures the student in its default folder; "
                                f"drop --out (got {args.out!r})")
        if args.latency_iters < 1 or not args.latency_seconds > 0:
            raise CLIUsageError("--latency-iters must be >= 1 and --latency-seconds > 0; got "
                                f"{args.latency_iters} and {args.latency_seconds}")
        device = checked_device(args)
        ref = StoreRef.from_args(args)
        study = load_study(ref, args.study)
        result = distill(
            study, run_dir=args.run_dir, student=args.student, epochs=args.epochs,
            temperature=args.temperature, alpha=args.alpha, device=device,
            data_dir=args.data_dir, out_dir=args.out, tracking=tracking_of(args),
            progress=args.progress,
        )
        print(result.summary())
        if result.mlflow:
            print(f"mlflow: run {result.mlflow['run_id']} at "
                  f"{redact_url(str(result.mlflow['tracking_uri']))}")
        out = args.out or student_dir(args.run_dir, study.study_name)
        print(f"results: {out}/{DISTILL_FILE}")
        if args.deploy_table:
            self._deploy_table(args.run_dir, study.study_name, device, args)
        print(next_hint(ref, study.study_name, ["report"]))
        return 0

    @staticmethod
    def _deploy_table(run_dir: str, study_name: str, device: str,
                      args: argparse.Namespace) -> None:
        from medauto.deploy import DEPLOY_FILE
        from medauto.deploy import deploy_table
        from medauto.deploy import deployment_rows
        from medauto.deploy import save_rows
        from medauto.final import final_dir

        rows = deployment_rows(run_dir, study_name, data_dir=args.data_dir, device=device,
                               iters=args.latency_iters, max_seconds=args.latency_seconds,
                               compile_int8=not args.int8_eager)
        path = save_rows(rows, final_dir(run_dir, study_name) / DEPLOY_FILE)
        headers, cells = deploy_table(rows)
        print(" | ".join(headers[:-1]))
        for c in cells:
            print(" | ".join(c[:-1]) + (f"   ({c[-1]})" if c[-1] else ""))
        print(f"deployment table: {path}")
