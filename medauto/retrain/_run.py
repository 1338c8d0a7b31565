"""The retrain run: select trials, retrain each at each seed, ensemble, quantize, log.

The work of one model is :func:`medauto.retrain._train.train_and_test`; the results
schema is :mod:`medauto.retrain.results`; MLflow logging is
:func:`medauto.tracking.log_retrain`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import numpy as np
import torch
from optuna.study import StudyDirection
from optuna.trial import TrialState

from med_core.config import TrainConfig
from med_core.data import load_dataset
from med_core.device import resolve_device
from medauto import __version__
from medauto.evaluation import evaluate_test
from medauto.evaluation import roc_png
from medauto.exceptions import MedautoError
from medauto.keys import CONFIG_ATTR
from medauto.logging import get_logger
from medauto.model_file import atomic_write_bytes
from medauto.partial import best_partial_trial
from medauto.partial import partial_value
from medauto.results import ranked_trials
from medauto.retrain._train import ModelJob
from medauto.retrain._train import train_and_test
from medauto.retrain.options import RetrainOptions
from medauto.retrain.quantize import quantize_retrained
from medauto.retrain.results import PREDICTIONS_FILE
from medauto.retrain.results import RESULTS_FILE
from medauto.retrain.results import ROC_FILE
from medauto.retrain.results import RetrainResult
from medauto.retrain.results import SeedResult
from medauto.retrain.results import aggregate_seeds
from medauto.retrain.results import retrain_dir
from medauto.scoring import split_metrics
from medauto.storage import default_storage_url
from medauto.storage import open_storage
from medauto.study import load_existing_study
from medauto.study import load_settings_dict
from medauto.study import validate_study_name
from medauto.tracking import BaseTracker
from medauto.tracking import log_retrain
from medauto.tracking import tracking_uri

if TYPE_CHECKING:
    import optuna

__all__ = ["retrain", "select_trials"]

_logger = get_logger(__name__)


def select_trials(
    study: optuna.Study, k: int, *, partial: bool = False
) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` best trials by :func:`medauto.results.ranked_trials` (best first; the rule
    ``best``, the report and the dashboard use: foreign trials are passed over). With
    ``partial`` and no completed trial at all, the best pruned trial
    (:func:`medauto.partial.best_partial_trial`) stands in, with a warning.

    Raises:
        MedautoError: fewer than ``k`` such trials.
    """
    done = ranked_trials(study)
    if not done and partial:
        stand_in = best_partial_trial(study)
        if stand_in is not None:
            _logger.warning(
                "no trial of study %r completed: retraining the best PRUNED trial, %d, which "
                "stopped early; treat its model as partial", study.study_name, stand_in.number,
            )
            return [stand_in]
    if len(done) < k:
        raise MedautoError(
            f"study {study.study_name!r} has {len(done)} completed trial(s); retraining the "
            f"top {k} needs at least {k} (run more trials, or lower --ensemble)"
        )
    return done[:k]


def _trial_value(trial: optuna.trial.FrozenTrial, maximize: bool) -> float:
    """A completed trial's value; a pruned stand-in's best reported value."""
    if trial.value is not None:
        return float(trial.value)
    return float(partial_value(trial, maximize) or float("nan"))


def _resolve_study(study: optuna.Study | str, storage: str | None, run_dir: Path) -> optuna.Study:
    if not isinstance(study, str):
        return study
    validate_study_name(study)  # the name becomes a folder under run_dir
    return load_existing_study(study, open_storage(storage or default_storage_url(run_dir)))


def _choose_ensemble_size(result: RetrainResult, members_of: dict[int, list[str]],
                          y_val: Any, val_scores: dict[str, Any]) -> None:
    """Sets ``result.val_selection`` and ``ensemble_used``: validation only, the mean over
    seeds of the val AUC of the best-j ensemble (ties: fewer members)."""
    for j in range(1, result.ensemble + 1):
        aucs = [
            split_metrics(result.task, y_val, np.mean([val_scores[m] for m in mem[:j]], 0))["auc"]
            for mem in members_of.values()
        ]
        result.val_selection[str(j)] = float(np.mean(aucs))
    result.ensemble_used = int(max(result.val_selection, key=lambda j: (
        result.val_selection[j], -int(j))))
    _logger.info("ensemble size chosen on validation AUC: %d of %d (%s)",
                 result.ensemble_used, result.ensemble, result.val_selection)


def retrain(
    study: optuna.Study | str,
    options: RetrainOptions | None = None,
    *,
    storage: str | None = None,
    deadline: float | None = None,
    device: str = "auto",
    data_dir: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] = "medauto-runs",
    out_dir: str | os.PathLike[str] | None = None,
    tracking: bool | str | BaseTracker | None = None,
    progress: bool = False,
) -> RetrainResult:
    """Retrains the best trial (or the top ``options.ensemble``) and tests it once.

    Args:
        study: An Optuna study created by medauto, or its name (opened from ``storage``).
        options: What to retrain and how (default: :class:`RetrainOptions` ``()``: the
            best trial, seed 0, its best-validation weights).
        storage: Storage URL when ``study`` is a name (default: SQLite in ``run_dir``).
        deadline: ``time.monotonic()`` by which training must end; each model gets an
            equal share of the time left and stops (keeping its best weights) at it.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:K"``.
        data_dir: Overrides the trials' ``data.data_dir`` (where MedMNIST files live).
        run_dir: The search's run folder (default storage, MLflow store, output root).
        out_dir: Output folder (default :func:`~medauto.retrain.results.retrain_dir`).
        tracking: ``None``/``True`` → MLflow store ``<run_dir>/mlflow.db``; a tracking URI;
            ``False`` → off; or a ``medauto.tracking`` tracker.
        progress: Show the trainer's per-epoch bars.

    Returns:
        The :class:`RetrainResult` (also written to ``out_dir/retrain.json``).

    Raises:
        MedautoError: no such study, or too few completed trials.
        DataError, ConfigError: the data or a trial's config cannot be used.
    """
    opts = options if options is not None else RetrainOptions()
    run_dir = Path(run_dir)
    study = _resolve_study(study, storage, run_dir)
    selected = select_trials(study, opts.ensemble, partial=opts.partial)
    maximize = study.direction == StudyDirection.MAXIMIZE
    dev = resolve_device(device)
    out = Path(out_dir) if out_dir is not None else retrain_dir(run_dir, study.study_name)
    if (out / RESULTS_FILE).exists():
        _logger.warning("replacing the previous retrain results in %s", out)
    result = RetrainResult(
        study=study.study_name, metric=str(load_settings_dict(study).get("metric", "")),
        direction=study.direction.name.lower(), trials=[t.number for t in selected],
        trial_values=[_trial_value(t, maximize) for t in selected],
        partial=[t.number for t in selected if t.state != TrialState.COMPLETE],
        seeds=list(opts.seeds), ensemble=opts.ensemble, ensemble_used=opts.ensemble,
        ensemble_select=opts.ensemble_select, tta=opts.tta,
        train_on_val=opts.train_on_val, weights=opts.kept_weights,
        device=dev, out_dir=str(out), created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        versions={"medauto": __version__, "torch": torch.__version__},
    )
    datasets: dict[str, Any] = {}
    model_data: dict[str, str] = {}  # model name -> its datasets key
    scores: dict[str, Any] = {}
    val_scores: dict[str, Any] = {}
    y_ref: Any = None
    y_val: Any = None
    members_of: dict[int, list[str]] = {}
    n_left = len(opts.seeds) * len(selected)
    for seed in opts.seeds:
        members = []
        for trial in selected:
            base = TrainConfig.from_dict(trial.user_attrs[CONFIG_ATTR])
            flat: dict[str, Any] = {"seed": seed, "data.train_on_val": opts.train_on_val}
            if data_dir is not None:
                flat["data.data_dir"] = os.fspath(data_dir)
            cfg = TrainConfig.from_flat(flat, base=base)
            key = json.dumps(cfg.data.to_dict(), sort_keys=True)
            if key not in datasets:
                datasets[key] = load_dataset(cfg.data)
            ds = datasets[key]
            name = f"trial{trial.number}-seed{seed}"
            stop_at = None
            if deadline is not None:
                stop_at = time.monotonic() + max(0.0, deadline - time.monotonic()) / n_left
            n_left -= 1
            job = ModelJob(name=name, study=study.study_name, trial=trial.number, seed=seed,
                           cfg=cfg, dataset=ds, keep=opts.kept_weights, tta=opts.tta,
                           stop_at=stop_at)
            trained = train_and_test(job, device=dev, out=out, progress=progress)
            if trained.val is not None:
                y_val, val_scores[name] = trained.val
            if y_ref is None:
                y_ref = trained.y_true
            elif not np.array_equal(y_ref, trained.y_true):
                raise MedautoError(f"{name}: its test labels differ from the first model's")
            result.models.append(trained.result)
            model_data[name] = key
            scores[name] = trained.y_score
            members.append(name)
        result.task, result.dataset = ds.info.task, ds.info.name
        members_of[seed] = members
    if opts.ensemble_select == "val" and opts.ensemble > 1:
        _choose_ensemble_size(result, members_of, y_val, val_scores)
    by_name = {m.name: m for m in result.models}
    for seed, members in members_of.items():
        used = members[: result.ensemble_used]
        if len(used) == 1:
            seed_test = dict(by_name[used[0]].test)
        else:
            mean_scores = np.mean([scores[m] for m in used], axis=0)
            scores[f"ensemble-seed{seed}"] = mean_scores
            seed_test = split_metrics(result.task, y_ref, mean_scores)
        result.per_seed.append(SeedResult(seed=seed, test=seed_test, members=used))
        _logger.info("seed %d: test auc=%.4f acc=%.4f (%s)", seed, seed_test["auc"],
                     seed_test["acc"], ", ".join(used))
    result.n_test = int(len(y_ref))
    result.test_mean, result.test_std = aggregate_seeds(result.per_seed)
    np.savez(out / PREDICTIONS_FILE, y_true=y_ref, **scores)
    # the honest view of the first seed's final model (the one report and predict use)
    first_seed = result.per_seed[0]
    final_scores = scores[first_seed.members[0] if len(first_seed.members) == 1
                          else f"ensemble-seed{first_seed.seed}"]
    ev = evaluate_test(result.task, y_ref, final_scores, ds.info.class_names,
                       what=f"the retrained model (seed {first_seed.seed})")
    result.evaluation = ev.to_dict()
    atomic_write_bytes(out / ROC_FILE, roc_png(result.task, y_ref, final_scores,
                                               ds.info.class_names))
    for w in ev.warnings:
        _logger.warning("%s", w)

    if opts.quantize is not None:
        first = result.models[0]  # the best trial, first seed
        result.quantization = quantize_retrained(
            out / first.path, method=opts.quantize, dataset=datasets[model_data[first.name]],
            calibration_batches=opts.calibration_batches,
            latency_batch_size=opts.latency_batch_size, latency_iters=opts.latency_iters,
            latency_threads=opts.latency_threads, latency_compile=opts.latency_compile,
        )
        for attr in ("float_path", "int8_path"):
            value = getattr(result.quantization, attr)
            if value:
                setattr(result.quantization, attr, os.path.relpath(value, out))
    result.save(out / RESULTS_FILE)
    uri = tracking_uri(tracking, run_dir)
    if uri is not None:
        result.mlflow = log_retrain(study, result, out, uri, run_dir=run_dir,
                                    files=[out / RESULTS_FILE, out / PREDICTIONS_FILE,
                                           out / ROC_FILE])
        if result.mlflow is not None:
            result.save(out / RESULTS_FILE)
    return result
