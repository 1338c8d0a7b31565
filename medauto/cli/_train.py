"""``medauto train``: one TrainConfig without a search, through :func:`med_core.train.train`."""

from __future__ import annotations

import argparse
import json

from medauto.cli._command import Command
from medauto.cli._options import add_device_option
from medauto.cli._options import add_download_option
from medauto.exceptions import CLIUsageError

__all__ = ["TrainCommand"]


class TrainCommand(Command):
    """Train one configuration (a YAML TrainConfig, e.g. from `medauto best`) without a search.

    The test split is left alone unless --test asks for it (score it once, at the end).

    Example: medauto train --config best.yaml --out runs/best --data-dir ~/.medmnist
    """

    name = "train"
    on_interrupt = "OUT/last.pt holds the last finished epoch; re-run with --resume to continue"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, help="TrainConfig YAML")
        add_device_option(p)
        p.add_argument("--out", help="checkpoint folder (enables --resume)")
        p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
        p.add_argument("--data-dir", help="dataset folder (overrides data.data_dir of --config)")
        add_download_option(p)
        p.add_argument("--test", action="store_true",
                       help="also evaluate the test split once, with the best epoch's weights")

    def take_action(self, args: argparse.Namespace) -> int:
        from med_core.exceptions import ConfigError
        from med_core.train import TrainOptions
        from med_core.train import summary_line
        from med_core.train import train

        try:
            options = TrainOptions(
                config=args.config, device=args.device, out=args.out, resume=args.resume,
                data_dir=args.data_dir, test=args.test, progress=False if args.quiet else None,
                download=args.download,
            )
        except ConfigError as e:
            raise CLIUsageError(str(e)) from None
        summary = train(options)
        if summary is not None:
            print(json.dumps(summary_line(summary)))
        return 0
