"""``medauto explain``: PNG overlays of what a study's final model (or model files) looked
at. Thin: arguments → :mod:`medauto.explain`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from medauto.cli._command import Command
from medauto.cli._options import add_download_option
from medauto.cli._options import download_data
from medauto.exceptions import CLIUsageError
from medauto.retrain.results import RESULTS_FILE
from medauto.retrain.results import retrain_dir

__all__ = ["ExplainCommand"]


class ExplainCommand(Command):
    """Write Grad-CAM/Grad-CAM++/Score-CAM/Layer-CAM/SHAP overlays (PNG) for images.

    The model is a study's final predictor (--study: the search's final ensemble, else the
    first seed's retrained models; an ensemble is explained as the mean of its members'
    maps, weighted as the predictor weighs them, for the ensemble's class) or
    one or more model files (--model, repeatable: several make an ensemble). Images are a
    dataset split with indices (--data, --split, --indices) or files/folders (--images;
    .npy volumes for 3D models). For 3D models the slices with the strongest map and a
    maximum-intensity projection are written. Maps are computed before anything is
    written; every file is written atomically. CAMs are not a diagnosis.

    Example: medauto explain --study breastmnist-fast --data breastmnist --indices 0-7 -m scorecam
    """

    name = "explain"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        src = p.add_mutually_exclusive_group()
        src.add_argument("--study", help="explain this study's final model (after retrain; "
                         "default: the only study with results in --run-dir)")
        src.add_argument("--model", action="append", metavar="PT",
                         help="a model file of `medauto retrain` (repeat for an ensemble)")
        p.add_argument("--run-dir", default="medauto-runs",
                       help="folder of the study's retrain results (default: medauto-runs)")
        p.add_argument("--retrain", metavar="JSON",
                       help="retrain.json (default: RUN_DIR/retrain/STUDY/retrain.json)")
        p.add_argument("--data", help="MedMNIST name or .npz whose split to explain")
        p.add_argument("--split", default="test", choices=("train", "val", "test"))
        p.add_argument("--indices", default="0-7", help="indices in the split (default 0-7)")
        p.add_argument("--images", nargs="+", metavar="PATH", help="image files or folders")
        p.add_argument("--data-dir", help="MedMNIST folder (default: $MEDAUTO_DATA_DIR)")
        add_download_option(p)
        # no choices=: they would import torch for every command; explain() checks the name
        # (tests/medauto/explain checks this help against med_core.explain.METHODS)
        p.add_argument("-m", "--method", action="append", metavar="METHOD",
                       help="gradcam, gradcam++, scorecam, layercam, shap or random "
                       "(repeatable; default gradcam)")
        p.add_argument("--target", type=int, help="class to explain (default: predicted)")
        p.add_argument("--out", default="explanations", help="output folder")
        p.add_argument("--slices", type=int, default=3, help="3D: slices written per map")
        p.add_argument("--shap-samples", type=int, default=32, help="SHAP gradient samples")
        p.add_argument("--max-channels", type=int,
                       help="Score-CAM: use only the K highest-variance channels (faster)")
        p.add_argument("--layer", type=int, metavar="N",
                       help="CAMs on the backbone's unit N (an index into its blocks; on "
                       "resnet18/r3d_18 -3 is layer3.1, one stage before the default, a grid "
                       "twice as fine) instead of its default layer; docs/explain.md says when "
                       "that is more faithful")

    def take_action(self, args: argparse.Namespace) -> int:
        from med_core.explain import expected_input
        from medauto.explain import explain_images
        from medauto.explain import final_model_paths
        from medauto.explain import load_images
        from medauto.explain import parse_indices
        from medauto.model_file import load_model

        if args.data is None and not args.images:
            raise CLIUsageError("give images: --data NAME (with --split/--indices) or --images")
        if args.data is not None and args.images:
            raise CLIUsageError("--data and --images exclude each other")
        if args.data is not None:
            download_data(args, args.data, args.data_dir)
        from medauto.cli._store import results_study
        from medauto.ensemble import PREDICTOR_FILE
        from medauto.ensemble import Predictor
        from medauto.final import final_dir

        study = "" if args.model or args.retrain else results_study(args.run_dir, args.study)
        final = final_dir(args.run_dir, study) / "predictor"
        weights: list[float] | None = None
        if args.model:
            paths = [Path(m) for m in args.model]
        elif args.retrain is None and (final / PREDICTOR_FILE).is_file():
            predictor = Predictor.load(final)
            paths = [predictor.folder / m.file for m in predictor.members]
            weights = [m.weight for m in predictor.members]
        else:
            default = retrain_dir(args.run_dir, study) / RESULTS_FILE
            paths = final_model_paths(args.retrain or default)
        members = [load_model(p).model for p in paths]
        _, size = expected_input(members[0])
        images = load_images(
            spatial_dims=len(size),
            data=args.data,
            split=args.split,
            indices=parse_indices(args.indices) if args.data else None,
            paths=args.images or (),
            data_dir=args.data_dir or os.environ.get("MEDAUTO_DATA_DIR"),
            size=size,
        )
        results = explain_images(
            members, images, args.out, methods=args.method or ["gradcam"], target=args.target,
            slices=args.slices, shap_samples=args.shap_samples, max_channels=args.max_channels,
            weights=weights, layer=args.layer,
        )
        for r in results:
            label = "" if r.label is None else f" label={r.label}"
            files = ", ".join(f for fs in r.files.values() for f in fs)
            print(f"{r.name}:{label} predicted={r.predicted} p={r.probability:.3f} "
                  f"explained class={r.target}: {files}")  # fmt: skip
        print(f"overlays: {Path(args.out)} (CAMs show what influenced the model; they are "
              "not a diagnosis)")  # fmt: skip
        return 0
