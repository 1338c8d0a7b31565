"""``medauto predict``: class probabilities of new images from a study's final model or a
model file, as a CSV. Thin: arguments → :mod:`medauto.predict`."""

from __future__ import annotations

import argparse
from pathlib import Path

from medauto.cli._command import Command
from medauto.cli._options import add_device_option
from medauto.cli._options import add_store_options
from medauto.cli._options import add_study_option
from medauto.cli._options import checked_device
from medauto.cli._store import StoreRef
from medauto.cli._store import load_study

__all__ = ["PredictCommand"]


class PredictCommand(Command):
    """Predict classes of new images with a study's final model or a model file (CSV out).

    The model is the study's final predictor (--study; optional when the store holds one
    study) or --model: a predictor folder or one model file (.pt of the search or of
    `medauto retrain`); both predict through the same code. Inputs are image files
    (PNG/JPEG/BMP/TIFF), folders of them, CSV manifests (column 'path', optional 'label')
    and .npz files (MedMNIST layout; --split picks the split). Every image is prepared as
    training prepared it (the preprocessing recorded in the model: channels, resize,
    normalisation). The CSV has one row per image: name, label (if given), one p_<class>
    column per class and the predicted class. With labels (manifest, .npz) the metrics of
    the labelled images are printed with their 95 % intervals, per-class sensitivity and
    specificity, and warnings.

    Example: medauto predict --study breastmnist-fast scan1.png scans/ --output preds.csv
    """

    name = "predict"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("inputs", nargs="+", metavar="INPUT",
                       help="image files, folders, .csv manifests or .npz files")
        add_study_option(p)
        p.add_argument("--model", metavar="PATH",
                       help="a predictor folder or a model file (instead of --study)")
        add_store_options(p)
        p.add_argument("--split", default="test", choices=("train", "val", "test"),
                       help="the split of .npz inputs (default test)")
        p.add_argument("--output", default="predictions.csv",
                       help="the CSV to write (default: predictions.csv)")
        p.add_argument("--batch-size", type=int, default=256, help="images per batch")
        add_device_option(p)

    def take_action(self, args: argparse.Namespace) -> int:
        from medauto.exceptions import CLIUsageError
        from medauto.exceptions import MedautoError
        from medauto.final import final_dir
        from medauto.predict import load_inputs
        from medauto.predict import open_model
        from medauto.predict import predict_table
        from medauto.predict import write_csv

        if args.model is not None and args.study is not None:
            raise CLIUsageError("--model and --study exclude each other")
        device = checked_device(args)
        if args.model is not None:
            predictor = open_model(args.model)
        else:
            study = load_study(StoreRef.from_args(args), args.study)
            folder = final_dir(args.run_dir, study.study_name) / "predictor"
            if not folder.is_dir():
                raise MedautoError(f"study {study.study_name!r} has no final model at "
                                   f"{str(folder)!r} (searched with --no-final-model? pass "
                                   "--model with a model file of `medauto retrain`)")
            predictor = open_model(folder)
        prep = predictor.preprocessing
        inputs = load_inputs(args.inputs, prep, class_names=predictor.class_names,
                             split=args.split)
        scores = predictor.scores(inputs.pixels, device=device, batch_size=args.batch_size)
        frame = predict_table(predictor, inputs, scores)
        out = write_csv(frame, args.output)
        counts = frame["predicted"].value_counts().to_dict()
        print(f"model: {predictor.folder} ({len(predictor.members)} member(s), "
              f"{predictor.task}); preprocessing: {prep.describe()}")
        print(f"predicted {len(frame)} image(s): "
              + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        labelled = [i for i, v in enumerate(inputs.labels) if v is not None]
        if labelled and predictor.task != "multi-label":  # labelled inputs: honest numbers
            import numpy as np

            from medauto.evaluation import evaluate_test

            y_true = np.asarray([inputs.labels[i] for i in labelled])
            ev = evaluate_test(predictor.task, y_true, scores[labelled], predictor.class_names,
                               what="the model")
            print(f"labelled inputs ({len(labelled)} of {len(frame)}):")
            for line in ev.lines():
                print(f"  {line}")
        print(f"predictions: {Path(out)}")
        return 0
