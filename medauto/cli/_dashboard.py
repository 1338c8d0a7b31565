"""``medauto dashboard``: optuna-dashboard on the study store."""

from __future__ import annotations

import argparse
import sys

from medauto.cli._command import Command
from medauto.cli._options import add_store_options
from medauto.cli._store import StoreRef
from medauto.cli._store import open_existing_storage

__all__ = ["DashboardCommand"]


class DashboardCommand(Command):
    """Serve optuna-dashboard on the study storage (127.0.0.1 unless --host is given)."""

    name = "dashboard"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        add_store_options(p)
        p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=8080)

    def take_action(self, args: argparse.Namespace) -> int:
        import optuna_dashboard

        from medauto.artifacts import artifact_store_for
        from medauto.logging import get_logger

        if args.host not in ("127.0.0.1", "localhost", "::1"):
            get_logger(__name__).warning(
                "dashboard bound to %s: anyone who can reach this address can read the study",
                args.host,
            )
        storage = open_existing_storage(StoreRef.from_args(args))
        print(f"optuna-dashboard on http://{args.host}:{args.port}/", file=sys.stderr)
        optuna_dashboard.run_server(
            storage, host=args.host, port=args.port,
            artifact_store=artifact_store_for(args.run_dir),
        )
        return 0
