"""Standalone training: ``python -m med_core.train --config cfg.yaml``.

Trains one :class:`~med_core.config.TrainConfig` without a search, writes ``last.pt``,
``best.pt``, ``config.yaml`` and ``summary.json`` to the output directory, evaluates the
best checkpoint on the test split and prints a JSON summary to stdout (logs go to
stderr). Works unchanged under ``torchrun --nproc_per_node=N -m med_core.train ...``.
``medauto train`` reuses :func:`main`.

Exit codes: 0 success, 1 a med_core error (bad config, missing data, NaN loss, bad
checkpoint; one message line on stderr), 2 bad command-line usage or an unexpected error
(with its traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

_logger = logging.getLogger("med_core.train")


def build_parser(prog: str = "python -m med_core.train") -> argparse.ArgumentParser:
    """The argument parser (``medauto train`` embeds the same options)."""
    p = argparse.ArgumentParser(prog=prog, description="Train one med_core TrainConfig.")
    p.add_argument("--config", required=True, help="TrainConfig YAML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a dotted config key, e.g. --set optim.lr=0.01 (YAML value; repeatable)",
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:K or auto (CUDA when available)"
    )
    p.add_argument(
        "--out", default=None, help="output directory (default ./medcore-runs/<dataset>-<time>)"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if present")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--eval-last",
        action="store_true",
        help="evaluate the test split with the last epoch's weights instead of best.pt",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def _configure_logging(verbose: bool, quiet: bool) -> None:
    # CLI boundary: the library itself never adds handlers.
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger("med_core")
    root.setLevel(level)
    if not root.handlers and not logging.getLogger().handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:  # also refuses tags such as !!python/object
            problem = " ".join(str(e).split())
            raise ValueError(
                f"--set {key.strip()}: the value is not plain YAML ({problem})"
            ) from None
    return out


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _finite_or_none(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v if not (isinstance(v, float) and not math.isfinite(v)) else None)
        for k, v in d.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)

    from med_core.config import TrainConfig
    from med_core.exceptions import MedCoreError
    from med_core.training import DistContext
    from med_core.training import Trainer

    dist = None
    try:
        cfg = TrainConfig.from_yaml(args.config)
        if args.overrides:
            try:
                overrides = _parse_overrides(args.overrides)
            except ValueError as e:
                parser.error(str(e))
            cfg = TrainConfig.from_flat(overrides, base=cfg)
        if args.resume and args.out is None:
            parser.error("--resume needs --out (the directory holding last.pt)")
        dist = DistContext.from_env()
        out = args.out
        if out is None:
            stem = Path(cfg.data.dataset).stem
            stamp = dist.broadcast_object(time.strftime("%Y%m%d-%H%M%S"))
            out = str(Path("medcore-runs") / f"{stem}-{stamp}")
        out_dir = Path(out)
        if dist.is_main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            # A resume keeps the config.yaml of the run it continues: fit() refuses a
            # last.pt written for another config, and that refusal must leave the folder
            # as it was.
            if not (args.resume and (out_dir / "last.pt").is_file()):
                cfg.to_yaml(out_dir / "config.yaml")
        trainer = Trainer(
            cfg,
            device=_resolve_device(args.device),
            out_dir=out_dir,
            progress=False if args.no_progress else None,
            dist=dist,
        )
        history = trainer.fit(resume=args.resume)
        weights = "last"
        if not args.eval_last and (out_dir / "best.pt").is_file():
            trainer.load_weights(out_dir / "best.pt")
            weights = "best"
        test = trainer.evaluate("test")
        summary = {
            "out_dir": str(out_dir),
            "stop_reason": history.stop_reason,
            "epochs_run": len(history),
            "best_epoch": history.best_epoch,
            "monitor": history.monitor,
            "best_metric": history.best_metric,
            "test_weights": weights,
            "test": _finite_or_none(test),
            "history": [_finite_or_none(e) for e in history],
        }
        if dist.is_main_process:
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
        return 0
    except MedCoreError as e:
        _logger.debug("training failed", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        _logger.exception("unexpected error")
        return 2
    finally:
        if dist is not None:
            dist.destroy()


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess test
    sys.exit(main())
