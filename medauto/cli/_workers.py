"""``medauto worker``: join a study and run its trials, alone, packed or as a DDP group.

Packed workers (``--trials-per-device K``) are K child processes that receive the parsed
options as data: a JSON document on their stdin (:func:`packed_job`), never a rebuilt
command line. So no storage or tracking password shows in ``ps``, every option
(``-v/-q/--log-file/--debug`` included) reaches the children by construction, and a
SIGTERM or Ctrl-C of the parent is passed on to them (:func:`run_packed_workers`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING
from typing import Any

from medauto.cli._command import RESUME_NOTE
from medauto.cli._command import Command
from medauto.cli._options import add_store_options
from medauto.cli._options import add_study_option
from medauto.cli._options import add_worker_options
from medauto.cli._options import checked_device
from medauto.cli._options import worker_kwargs
from medauto.cli._store import StoreRef
from medauto.concurrency import STOP_GRACE_S
from medauto.concurrency import packed_worker_env
from medauto.concurrency import stop_processes
from medauto.exceptions import CLIUsageError
from medauto.logging import get_logger

if TYPE_CHECKING:
    import optuna

__all__ = ["STOP_GRACE_S", "WorkerCommand", "packed_job", "packed_worker_env",
           "run_packed_workers"]

_logger = get_logger(__name__)

#: Seconds between the parent's redraws of the packed workers' live line.
_POLL_S = 1.0


class WorkerCommand(Command):
    """Join an existing study and run its trials until the study's target is reached.

    Example: medauto worker --study breastmnist-fast --storage postgresql://u:p@db/optuna
    """

    name = "worker"
    on_interrupt = RESUME_NOTE

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        add_study_option(p, help="name of the study to join (default: the store's only study)")
        add_store_options(p)
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
        add_worker_options(p)

    def take_action(self, args: argparse.Namespace) -> int:
        from medauto.cli._search import print_search_result
        from medauto.cli._store import load_study

        if args.trials_per_device < 1:
            raise CLIUsageError(f"--trials-per-device must be >= 1, got {args.trials_per_device}")
        if args.gpus_per_trial < 1:
            raise CLIUsageError(f"--gpus-per-trial must be >= 1, got {args.gpus_per_trial}")
        if args.trials_per_device > 1 and args.gpus_per_trial > 1:
            raise CLIUsageError("--trials-per-device and --gpus-per-trial exclude each other")
        if args.threads_per_worker is not None and args.threads_per_worker < 1:
            raise CLIUsageError(f"--threads-per-worker must be >= 1, got {args.threads_per_worker}")
        device = checked_device(args)
        ref = StoreRef.from_args(args)
        study = load_study(ref, args.study)  # a worker joins; it never creates
        name = study.study_name
        _logger.info("worker of study %r on %s (pid %d)", name, device, os.getpid())
        if args.trials_per_device > 1:
            return run_packed_workers(args, study)
        kwargs = worker_kwargs(args, device)
        if args.gpus_per_trial > 1:
            from medauto.distributed import launch_ddp_worker

            logs = launch_ddp_worker(name, ref.url, gpus_per_trial=args.gpus_per_trial,
                                     run_dir=args.run_dir, **kwargs)
            print(f"DDP worker ({args.gpus_per_trial} ranks) trained trials "
                  f"{[t['number'] for t in logs[0].trials]}")
            return 0
        from medauto.optimizer import AutoMLOptimizer

        opt = AutoMLOptimizer.from_study(name, ref.url, run_dir=args.run_dir, **kwargs)
        print_search_result(opt.optimize(), ref)
        return 0


def packed_job(args: argparse.Namespace, study: str, k: int) -> dict[str, Any]:
    """The options of packed child ``k``: the parent's parsed options as data.

    The child is a plain single worker (``--trials-per-device 1``) of ``study``, with
    sampler seed ``--seed + k`` and no live progress line; everything else, the logging
    options included, is the parent's.
    """
    job = dict(vars(args))
    job.update(study=study, seed=args.seed + k, trials_per_device=1, no_progress=True)
    return job


def run_packed_workers(args: argparse.Namespace, study: optuna.Study) -> int:
    """Starts ``--trials-per-device`` single workers of ``study`` on the same device.

    The parent shows the one live line of the study (:class:`medauto._progress.SearchProgress`,
    on a TTY unless ``--no-progress``: every child's trials, ``running=K``), and the
    children's log lines reach the console through it (their stderr is relayed with
    ``tqdm.write``), so they never break it.

    Returns the highest exit code of the children. A ``KeyboardInterrupt`` (Ctrl-C, or
    the SIGTERM that :func:`medauto.cli.main` turns into one) is passed on to every
    child as SIGTERM; each records its running trial as interrupted and exits, or is
    killed after :data:`STOP_GRACE_S` seconds.
    """
    from medauto._progress import SearchProgress
    from medauto.study import load_settings

    env = packed_worker_env(args.trials_per_device, args.threads_per_worker)
    progress = SearchProgress(load_settings(study).n_trials,
                              enabled=False if args.no_progress else None)
    relay = subprocess.PIPE if progress.enabled else None
    procs: list[subprocess.Popen[bytes]] = []
    with progress:
        try:
            for k in range(args.trials_per_device):
                proc = subprocess.Popen([sys.executable, "-m", "medauto.cli._packed"],
                                        stdin=subprocess.PIPE, stderr=relay, env=env)
                procs.append(proc)
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(packed_job(args, study.study_name, k)).encode())
                proc.stdin.close()
                if proc.stderr is not None:
                    threading.Thread(target=progress.relay, args=(proc.stderr,),
                                     daemon=True).start()
            while any(p.poll() is None for p in procs):
                progress.update(study)
                time.sleep(_POLL_S)
            progress.update(study)
            return max(p.wait() for p in procs)
        except BaseException:
            stop_processes(procs, STOP_GRACE_S)
            raise
