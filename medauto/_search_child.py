"""Entry of one of a search's concurrent workers (:mod:`medauto.concurrency`):
``python -m medauto._search_child`` reads its job (JSON on stdin: the study, its storage
URL, the worker options, the parent's budget plan and start) and runs trials of the study
as one more worker (:func:`medauto._search_run.run_search` with a
:class:`~medauto._search_run.ChildRole`). The job travels on stdin, so a storage or
tracking password never shows in ``ps``."""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["main", "run_child"]


def run_child(job: dict[str, Any]) -> int:
    """Runs the child worker of ``job``; returns its exit code (130: interrupted)."""
    from medauto._search_run import ChildRole
    from medauto._search_run import run_search
    from medauto.budget import BudgetPlan
    from medauto.exceptions import MedautoError
    from medauto.logging import get_logger
    from medauto.logging import set_verbosity
    from medauto.optimizer import AutoMLOptimizer
    from medauto.storage import StorageSettings

    set_verbosity(int(job["verbosity"]))
    kwargs = dict(job["kwargs"])
    if kwargs.get("storage_settings") is not None:
        kwargs["storage_settings"] = StorageSettings(**kwargs["storage_settings"])
    opt = AutoMLOptimizer.from_study(job["study"], job["storage"], device=job["device"],
                                     seed=job["seed"], progress=False, **kwargs)
    role = ChildRole(plan=None if job["plan"] is None else BudgetPlan(**job["plan"]),
                     start=float(job["start"]), timeout_at=job["timeout_at"],
                     members=bool(job["members"]), k=int(job["plan_k"]))
    try:
        run_search(opt, child=role)
    except KeyboardInterrupt:
        return 130
    except MedautoError as e:  # e.g. too many failures in a row: the parent goes on
        get_logger(__name__).warning("worker stopped: %s", str(e).splitlines()[0])
        return 1
    return 0


def main() -> int:
    """Reads the job from stdin and runs it (SIGTERM ends it as a Ctrl-C would)."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    return run_child(json.loads(sys.stdin.read()))


if __name__ == "__main__":
    sys.exit(main())
