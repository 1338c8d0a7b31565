"""Option groups shared by the subcommands, and the parsed options turned into data.

Each group is declared once here; a subcommand composes the groups it needs. The choices
that ``--help`` lists come from their owners (samplers and pruners from
:mod:`medauto.algorithms`, metrics from :mod:`medauto.optimizer`, spaces from
:mod:`medauto.space`, devices from :mod:`med_core.device`), so they cannot drift; the API
checks them (one message shape, with "did you mean"), not argparse.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from medauto.cli._store import STORAGE_ENV
from medauto.exceptions import CLIUsageError

__all__ = [
    "TRACKING_ENV",
    "add_common_options",
    "add_device_option",
    "add_download_option",
    "add_search_options",
    "add_store_options",
    "add_study_option",
    "add_tracking_options",
    "add_worker_options",
    "checked_device",
    "download_data",
    "tracking_of",
    "worker_kwargs",
]

#: The environment variable ``--tracking-uri`` falls back to.
TRACKING_ENV = "MEDAUTO_TRACKING_URI"


def add_common_options(p: argparse.ArgumentParser) -> None:
    """``-v/-q/--log-file/--debug``: every subcommand takes them."""
    g = p.add_argument_group("common options")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    g.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    g.add_argument("--log-file", help="also write logs to this file")
    g.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def add_store_options(p: argparse.ArgumentParser, *, default_store: bool = True) -> None:
    """``--storage`` and ``--run-dir``."""
    fallback = ", else sqlite in --run-dir" if default_store else ""
    p.add_argument("--storage", help=f"storage URL (default: ${STORAGE_ENV}{fallback})")
    p.add_argument("--run-dir", default="medauto-runs",
                   help="folder of the default storage and the run outputs "
                   "(default: medauto-runs)")


def add_study_option(p: argparse.ArgumentParser, *, required: bool = False,
                     help: str | None = None) -> None:
    """``--study``; optional where the store's only study is meant."""
    p.add_argument(
        "--study", required=required,
        help=help or "study name (default: the only study in the store)",
    )


def add_download_option(p: argparse.ArgumentParser) -> None:
    """``--download``: fetch a missing MedMNIST file first (:func:`download_data`)."""
    p.add_argument("--download", action="store_true",
                   help="fetch a missing MedMNIST file into --data-dir (default "
                   "$MEDAUTO_DATA_DIR or ~/.medmnist) first; needs internet and the "
                   "medmnist package")


def download_data(args: argparse.Namespace, dataset: str, data_dir: str | None) -> None:
    """With ``--download``, fetches the MedMNIST file ``dataset`` into ``data_dir`` (a file
    already there is kept); without it, nothing.

    Raises:
        DataError: not a MedMNIST name, no ``medmnist`` package, or offline (one line).
    """
    if args.download:
        from med_core.data import download_medmnist

        download_medmnist(dataset, data_dir)


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device``, checked before anything is created (:func:`checked_device`)."""
    from med_core.device import DEVICE_FORMS

    p.add_argument("--device", default="auto", help=f"{DEVICE_FORMS} (default: auto)")


def checked_device(args: argparse.Namespace) -> str:
    """``--device`` resolved and checked against this machine's hardware.

    Raises:
        ConfigError: a malformed device or a GPU this machine does not have.
    """
    from med_core.device import resolve_device

    return resolve_device(args.device)


def add_tracking_options(p: argparse.ArgumentParser) -> None:
    """``--tracking-uri`` and ``--no-tracking``."""
    p.add_argument("--tracking-uri",
                   help=f"MLflow tracking URI (default: ${TRACKING_ENV}, else sqlite in --run-dir)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def tracking_of(args: argparse.Namespace) -> str | bool | None:
    """The ``tracking`` argument of the API: ``False`` (off), a URI, or ``None`` (local)."""
    if args.no_tracking:
        return False
    return args.tracking_uri or os.environ.get(TRACKING_ENV) or None


def add_search_options(p: argparse.ArgumentParser) -> None:
    """What defines a new study: data, space, metric, trial target."""
    from medauto.fingerprint import SELECTION_MODES
    from medauto.optimizer import METRICS
    from medauto.space import list_spaces

    p.add_argument("--data", default="breastmnist", help="MedMNIST name, .npz, folder or CSV")
    add_download_option(p)
    p.add_argument(
        "--space", metavar="SPACE",
        help=f"search space: {', '.join(list_spaces())} or a YAML file (default: chosen from "
        "the data: volumetric for 3D, default for 2D on a GPU, fast for 2D on a CPU)",
    )
    p.add_argument("--trials", type=int, help="finished trials (default 20; 10000 with --budget)")
    p.add_argument("--metric", default="val_auc",
                   help=f"validation metric: {', '.join(METRICS)} (default val_auc)")
    p.add_argument("--selection", choices=SELECTION_MODES, default="auto",
                   help="how trials are scored: auto (k-fold CV on train+val when the "
                   "validation split is too small to rank models, see "
                   "docs/search_quality.md), holdout (the validation split) or cv")


def add_worker_options(p: argparse.ArgumentParser) -> None:
    """How this process runs trials: device, sampler, pruner, data, tracking, failures."""
    from medauto.algorithms import PRUNERS
    from medauto.algorithms import SAMPLERS

    add_device_option(p)
    p.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    p.add_argument("--sampler", default="tpe",
                   help=f"sampler: {', '.join(sorted(SAMPLERS))} (default tpe)")
    p.add_argument("--sampler-arg", action="append", metavar="K=V", help="sampler argument")
    p.add_argument("--pruner", default="median",
                   help=f"pruner: {', '.join(sorted(PRUNERS))} (default median)")
    p.add_argument("--pruner-arg", action="append", metavar="K=V", help="pruner argument")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--data-dir", help="MedMNIST folder (default: $MEDAUTO_DATA_DIR or ~/.medmnist)")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    add_tracking_options(p)
    p.add_argument(
        "--oom-retry", action=argparse.BooleanOptionalAction, default=True,
        help="train a trial that runs out of memory again: with gradient checkpointing on "
        "at the same batch, then at half the batch (up to 3 times; default on)",
    )
    p.add_argument(
        "--max-failures", type=int, default=10, metavar="N",
        help="stop with an error after N trials in a row failed in this process "
        "(default 10; 0 never stops)",
    )
    g = p.add_argument_group("crash detection (see docs/distributed.md)")
    g.add_argument(
        "--heartbeat-interval", type=int, metavar="S",
        help="seconds between heartbeats of a running trial (default 10)",
    )
    g.add_argument(
        "--grace-period", type=int, metavar="S",
        help="seconds without a heartbeat after which a running trial counts as dead, is "
        "failed and re-enqueued (default 3 x --heartbeat-interval)",
    )
    g.add_argument(
        "--max-retry", type=int, metavar="N",
        help="how often a dead worker's trial is re-run with the same params (default 2)",
    )


def _storage_settings(args: argparse.Namespace) -> Any:
    from medauto.storage import StorageSettings

    given = {
        key: getattr(args, key)
        for key in ("heartbeat_interval", "grace_period", "max_retry")
        if getattr(args, key) is not None
    }
    try:
        return StorageSettings(**given)
    except ValueError as e:
        raise CLIUsageError(str(e)) from None


def worker_kwargs(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """The keyword arguments of :class:`~medauto.AutoMLOptimizer` that
    :func:`add_worker_options` declares, with ``device`` already checked."""
    from medauto.algorithms import parse_kwargs

    return {
        "device": device,
        "timeout": args.timeout,
        "sampler": args.sampler,
        "sampler_kwargs": parse_kwargs(args.sampler_arg),
        "pruner": args.pruner,
        "pruner_kwargs": parse_kwargs(args.pruner_arg),
        "seed": args.seed,
        "data_dir": args.data_dir,
        "progress": False if args.no_progress else None,
        "tracking": tracking_of(args),
        "storage_settings": _storage_settings(args),
        "oom_retry": args.oom_retry,
        "max_failures": args.max_failures or None,
    }
