"""Subcommands of the ``medauto`` CLI: one small class each; they call the public API."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from typing import ClassVar

from medauto.exceptions import CLIUsageError

__all__ = ["COMMANDS", "common_parser", "packed_worker_env"]


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand takes."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    g.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    g.add_argument("--log-file", help="also write logs to this file")
    g.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


def _storage_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--storage",
        default=os.environ.get("MEDAUTO_STORAGE"),
        help="storage URL (default: $MEDAUTO_STORAGE"
        + ("" if required else ", else sqlite in --run-dir")
        + ")",
    )
    p.add_argument("--run-dir", default="medauto-runs", help="folder for the default storage")


def _storage_url(args: argparse.Namespace) -> str:
    from medauto.storage import default_storage_url

    return str(args.storage or default_storage_url(args.run_dir))


def _load_study(args: argparse.Namespace) -> Any:
    from medauto.optimizer import _load_existing
    from medauto.storage import open_storage

    return _load_existing(args.study, open_storage(_storage_url(args)))


class _Command:
    """Base: ``add_arguments`` declares options, ``take_action`` runs and returns the code."""

    name: ClassVar[str]

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        """Declares the subcommand's options."""

    def take_action(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:K (default: auto)")
    p.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    p.add_argument("--sampler", default="tpe", help="tpe, random, cmaes, gp, grid")
    p.add_argument("--sampler-arg", action="append", metavar="K=V", help="sampler argument")
    p.add_argument(
        "--pruner", default="median",
        help="median, percentile, hyperband, successive-halving, wilcoxon, none",
    )
    p.add_argument("--pruner-arg", action="append", metavar="K=V", help="pruner argument")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--data-dir", help="MedMNIST folder (default: $MEDAUTO_DATA_DIR or ~/.medmnist)")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    p.add_argument(
        "--tracking-uri", default=os.environ.get("MEDAUTO_TRACKING_URI"),
        help="MLflow tracking URI (default: $MEDAUTO_TRACKING_URI, else sqlite in --run-dir)",
    )
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "--oom-retry", action="store_true",
        help="retry a trial that runs out of memory once, with gradient checkpointing on "
        "and half the batch size",
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


def _crash_detection_argv(args: argparse.Namespace) -> list[str]:
    out = []
    for key in ("heartbeat_interval", "grace_period", "max_retry"):
        if getattr(args, key) is not None:
            out += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    return out


def _worker_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from medauto.algorithms import parse_kwargs

    return {
        "device": args.device,
        "timeout": args.timeout,
        "sampler": args.sampler,
        "sampler_kwargs": parse_kwargs(args.sampler_arg),
        "pruner": args.pruner,
        "pruner_kwargs": parse_kwargs(args.pruner_arg),
        "seed": args.seed,
        "data_dir": args.data_dir,
        "progress": False if args.no_progress else None,
        "tracking": False if args.no_tracking else args.tracking_uri,
        "storage_settings": _storage_settings(args),
        "oom_retry": args.oom_retry,
        "max_failures": args.max_failures or None,
    }


def _print_result(result: Any, args: argparse.Namespace) -> None:
    from medauto.storage import redact_url

    study = result.study
    print(f"study: {study.study_name}")
    print(f"best value ({study.user_attrs['medauto:settings']['metric']}): {result.best_value:.4f}")
    print(f"best trial: {result.best_trial_number} ({result.best_config.model.backbone})")
    # The URL as given may hold a password (also when it came from $MEDAUTO_STORAGE).
    storage = f" --storage {redact_url(args.storage)}" if args.storage else ""
    where = f"--study {study.study_name}{storage}"
    print(f"next: medauto status {where}  |  medauto best {where} > best.yaml")


class SearchCommand(_Command):
    """Create (or resume) a study and run trials in this process.

    Example: medauto search --data breastmnist --trials 20 --space fast
    """

    name = "search"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", default="breastmnist", help="MedMNIST name, .npz, folder or CSV")
        p.add_argument(
            "--space", help="search space name or YAML (default: default on GPU, fast on CPU)"
        )
        p.add_argument("--trials", type=int,
                       help="finished trials (default 20; 10000 with --budget)")
        p.add_argument("--study", help="study name (default: <data>-<space>)")
        p.add_argument("--metric", default="val_auc", help="validation metric (default val_auc)")
        g = p.add_argument_group("wall-clock budget (see docs/search_spaces.md)")
        g.add_argument("--budget", metavar="DURATION",
                       help="search + final retrain within e.g. 90s, 15m, 1h30m (then the "
                       "best trial is retrained and tested; slack: 2%%, 5-60 s)")
        g.add_argument("--budget-seeds", type=int, default=3, metavar="N",
                       help="retrain seeds within the budget (default 3)")
        g.add_argument("--budget-ensemble", type=int, default=1, metavar="K",
                       help="retrain the top-K trials per seed within the budget (default 1)")
        g.add_argument("--tta", choices=("trial", "on", "off", "auto"), default="auto",
                       help="flip TTA of the budget's retrain (default auto: chosen per "
                       "model on validation AUC)")
        _storage_args(p, required=False)
        _worker_args(p)

    def take_action(self, args: argparse.Namespace) -> int:
        from medauto.optimizer import AutoMLOptimizer

        opt = AutoMLOptimizer(
            args.data,
            args.space,
            metric=args.metric,
            study_name=args.study,
            storage=args.storage,
            run_dir=args.run_dir,
            n_trials=args.trials,
            budget=args.budget,
            budget_seeds=args.budget_seeds,
            budget_ensemble=args.budget_ensemble,
            **_worker_kwargs(args),
        )
        _print_result(opt.optimize(), args)
        if args.budget is None:
            return 0
        from medauto.cli._results import TTA_CHOICES
        from medauto.cli._results import print_retrain_summary

        result = opt.retrain(
            tta=TTA_CHOICES[args.tta],
            ensemble_select="val" if args.budget_ensemble > 1 else "fixed",
        )
        print_retrain_summary(result)
        print(f"results: {Path(result.out_dir) / 'retrain.json'}")
        return 0


class WorkerCommand(_Command):
    """Join an existing study and run its trials until the study's target is reached.

    Example: medauto worker --study breastmnist-fast --storage postgresql://u:p@db/optuna
    """

    name = "worker"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--study", required=True, help="name of the study to join")
        _storage_args(p, required=True)
        p.add_argument(
            "--trials-per-device", type=int, default=1, metavar="K",
            help="run K worker processes that share the device (small models)",
        )
        p.add_argument(
            "--threads-per-worker", type=int, default=None, metavar="N",
            help="CPU threads of each packed worker (OMP_NUM_THREADS, torch's intra-op and "
            "inductor compile threads; default: usable cores // K)",
        )
        p.add_argument(
            "--gpus-per-trial", type=int, default=1, metavar="N",
            help="train each trial as a DDP group of N processes (one per GPU; gloo on CPU)",
        )
        _worker_args(p)

    def take_action(self, args: argparse.Namespace) -> int:
        if args.trials_per_device < 1:
            raise CLIUsageError(f"--trials-per-device must be >= 1, got {args.trials_per_device}")
        if args.gpus_per_trial < 1:
            raise CLIUsageError(f"--gpus-per-trial must be >= 1, got {args.gpus_per_trial}")
        if args.trials_per_device > 1 and args.gpus_per_trial > 1:
            raise CLIUsageError("--trials-per-device and --gpus-per-trial exclude each other")
        if args.trials_per_device > 1:
            return _spawn_packed_workers(args)
        if args.gpus_per_trial > 1:
            from medauto.distributed import launch_ddp_worker

            logs = launch_ddp_worker(
                args.study, _storage_url(args), gpus_per_trial=args.gpus_per_trial,
                run_dir=args.run_dir, **_worker_kwargs(args),
            )
            print(f"DDP worker ({args.gpus_per_trial} ranks) trained trials "
                  f"{[t['number'] for t in logs[0].trials]}")
            return 0
        from medauto.optimizer import AutoMLOptimizer

        opt = AutoMLOptimizer.from_study(
            args.study, _storage_url(args), run_dir=args.run_dir, **_worker_kwargs(args)
        )
        _print_result(opt.optimize(), args)
        return 0


def packed_worker_env(
    k: int, threads: int | None = None, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of one of ``k`` worker processes packed on one device.

    Each worker gets ``threads`` CPU threads (default: the usable cores divided by ``k``,
    at least 1) through ``OMP_NUM_THREADS`` (torch's intra-op pool) and
    ``TORCHINDUCTOR_COMPILE_THREADS`` (parallel compilation). Without this, K processes
    would each start one thread per core: K-fold oversubscription, and the CPU that
    launches the GPU kernels of small models would become the bottleneck. Values already
    set in ``base`` (default ``os.environ``) win.
    """
    env = dict(os.environ if base is None else base)
    if threads is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        threads = max(1, cores // k)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(threads))
    return env


def _spawn_packed_workers(args: argparse.Namespace) -> int:
    """Starts ``--trials-per-device`` single worker processes on the same device."""
    if args.threads_per_worker is not None and args.threads_per_worker < 1:
        raise CLIUsageError(f"--threads-per-worker must be >= 1, got {args.threads_per_worker}")
    base = [sys.executable, "-m", "medauto.cli", "worker", "--study", args.study,
            "--storage", _storage_url(args), "--device", args.device, "--seed"]
    env = packed_worker_env(args.trials_per_device, args.threads_per_worker)
    procs = []
    for k in range(args.trials_per_device):
        cmd = [*base, str(args.seed + k), "--sampler", args.sampler, "--pruner", args.pruner]
        for item in args.sampler_arg or []:
            cmd += ["--sampler-arg", item]
        for item in args.pruner_arg or []:
            cmd += ["--pruner-arg", item]
        if args.timeout:
            cmd += ["--timeout", str(args.timeout)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        cmd += _crash_detection_argv(args)
        if args.oom_retry:
            cmd.append("--oom-retry")
        cmd += ["--max-failures", str(args.max_failures)]
        if args.no_tracking:
            cmd.append("--no-tracking")
        elif args.tracking_uri:
            cmd += ["--tracking-uri", args.tracking_uri]
        cmd += ["--run-dir", args.run_dir]
        procs.append(subprocess.Popen([*cmd, "--no-progress"], env=env))
    codes = [p.wait() for p in procs]
    return max(codes)


class StatusCommand(_Command):
    """Show a study: trials by state, best so far, running trials and their workers."""

    name = "status"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--study", required=True)
        _storage_args(p, required=False)
        p.add_argument("--json", action="store_true", help="print JSON")

    def take_action(self, args: argparse.Namespace) -> int:
        from medauto.results import status_summary

        s = status_summary(_load_study(args))
        if args.json:
            print(json.dumps(s, indent=2))
            return 0
        counts = ", ".join(f"{k.lower()} {v}" for k, v in s["counts"].items() if v)
        counts = counts or "no trials"
        print(f"study {s['study']}: {s['finished']}/{s['target']} finished ({counts})")
        if s["best"]:
            b = s["best"]
            print(f"best: trial {b['number']} value {b['value']:.4f} ({b['backbone']})")
        for r in s["running"]:
            print(
                f"running: trial {r['number']} on {r['worker']} {r['device'] or ''} "
                f"({r['backbone']}, {r['epochs_reported']} epochs reported)"
            )
        for reason, n in s["fail_reasons"].items():
            print(f"failed: {n} x {reason}")
        return 0


class BestCommand(_Command):
    """Print the best trial's TrainConfig as YAML (ready for `medauto train --config`)."""

    name = "best"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--study", required=True)
        _storage_args(p, required=False)
        p.add_argument("-o", "--output", help="write the YAML to this file instead of stdout")

    def take_action(self, args: argparse.Namespace) -> int:
        from medauto.results import best_config

        text = best_config(_load_study(args)).to_yaml()
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
        return 0


class TrainCommand(_Command):
    """Train one configuration (a YAML TrainConfig, e.g. from `medauto best`) without a search."""

    name = "train"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, help="TrainConfig YAML")
        p.add_argument("--device", default="auto")
        p.add_argument("--out", help="checkpoint folder (enables --resume)")
        p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
        p.add_argument("--data-dir", help="MedMNIST folder (default: $MEDAUTO_DATA_DIR)")

    def take_action(self, args: argparse.Namespace) -> int:
        from med_core.train import main as train_main
        from medauto.optimizer import resolve_device

        argv = ["--config", args.config, "--device", resolve_device(args.device)]
        if args.out:
            argv += ["--out", args.out]
        if args.resume:
            argv.append("--resume")
        if args.data_dir:
            argv += ["--data-dir", args.data_dir]
        return int(train_main(argv))


class DashboardCommand(_Command):
    """Serve optuna-dashboard on the study storage (127.0.0.1 unless --host is given)."""

    name = "dashboard"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        _storage_args(p, required=False)
        p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=8080)

    def take_action(self, args: argparse.Namespace) -> int:
        import optuna_dashboard

        from medauto.artifacts import artifact_store_for
        from medauto.logging import get_logger
        from medauto.storage import open_storage

        if args.host not in ("127.0.0.1", "localhost", "::1"):
            get_logger(__name__).warning(
                "dashboard bound to %s: anyone who can reach this address can read the study",
                args.host,
            )
        storage = open_storage(_storage_url(args))
        print(f"optuna-dashboard on http://{args.host}:{args.port}/", file=sys.stderr)
        optuna_dashboard.run_server(
            storage, host=args.host, port=args.port,
            artifact_store=artifact_store_for(args.run_dir),
        )
        return 0


from medauto.cli._explain import ExplainCommand  # noqa: E402
from medauto.cli._results import ExportCommand  # noqa: E402 (it imports the helpers above)
from medauto.cli._results import ReportCommand  # noqa: E402
from medauto.cli._results import RetrainCommand  # noqa: E402

COMMANDS: dict[str, type[_Command]] = {
    c.name: c
    for c in (SearchCommand, WorkerCommand, StatusCommand, BestCommand, TrainCommand,
              DashboardCommand, RetrainCommand, ReportCommand, ExportCommand, ExplainCommand)
}
