"""Standalone training: ``python -m med_core.train --config cfg.yaml``, or :func:`train`.

Trains one :class:`~med_core.config.TrainConfig` without a search, writes ``last.pt``,
``best.pt``, ``config.yaml`` and ``summary.json`` to the output directory and prints a JSON
summary to stdout (logs go to stderr). The test split is left alone unless asked for
(``--test``): it is scored once, on the final model, when a search is over. Works
unchanged under ``torchrun --nproc_per_node=N -m med_core.train ...``. ``medauto train``
calls :func:`train` with a :class:`TrainOptions` (options as data, not a command line).

Exit codes: 0 success, 1 a med_core error (bad config or device, missing data, NaN loss,
bad checkpoint; one message line on stderr), 2 bad command-line usage or an unexpected
error (with its traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

__all__ = ["TrainOptions", "build_parser", "main", "summary_line", "train"]

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
        help="with --test: evaluate the last epoch's weights instead of best.pt",
    )
    p.add_argument(
        "--test", action="store_true", help="also evaluate the test split once at the end"
    )
    p.add_argument("--data-dir", help="folder of the dataset (overrides data.data_dir)")
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


def _finite_or_none(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v if not (isinstance(v, float) and not math.isfinite(v)) else None)
        for k, v in d.items()
    }


@dataclass(frozen=True)
class TrainOptions:
    """What one standalone training run needs (see :func:`train`).

    Args:
        config: The TrainConfig YAML file.
        overrides: Dotted config keys and values applied on top of ``config``
            (``{"optim.lr": 0.01}``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:K`` (see
            :func:`med_core.device.resolve_device`).
        out: Output directory; ``None`` → ``./medcore-runs/<dataset>-<time>``.
        resume: Continue from ``out/last.pt`` if present (needs ``out``).
        progress: Progress bars; ``None`` → when stderr is a TTY.
        test: Evaluate the test split once at the end.
        eval_last: With ``test``: evaluate the last epoch's weights instead of ``best.pt``.
        data_dir: Folder of the dataset; overrides ``data.data_dir`` of ``config``.
        download: Fetch a missing MedMNIST file first
            (:func:`med_core.data.download_medmnist`).

    Raises:
        ConfigError: ``resume`` without ``out``.
    """

    config: str | Path
    overrides: Mapping[str, Any] = field(default_factory=dict)
    device: str = "auto"
    out: str | Path | None = None
    resume: bool = False
    progress: bool | None = None
    test: bool = False
    eval_last: bool = False
    data_dir: str | Path | None = None
    download: bool = False

    def __post_init__(self) -> None:
        if self.resume and self.out is None:
            from med_core.exceptions import ConfigError

            raise ConfigError("resume: needs an output directory (--out, holding last.pt)")


def train(options: TrainOptions) -> dict[str, Any] | None:
    """Trains ``options.config`` and writes the run folder (see the module docstring).

    Args:
        options: What to train, where and how.

    Returns:
        The summary (also written to ``summary.json``) on the main process; ``None`` on
        the other ranks of a DDP group.

    Raises:
        MedCoreError: a bad config or device, missing data, a NaN loss or a bad checkpoint.
        KeyboardInterrupt: Ctrl-C (``last.pt`` holds the last finished epoch).
    """
    from med_core.config import TrainConfig
    from med_core.device import resolve_device
    from med_core.training import DistContext
    from med_core.training import Trainer

    device = resolve_device(options.device)
    cfg = TrainConfig.from_yaml(options.config)
    overrides = dict(options.overrides)
    if options.data_dir is not None:
        overrides["data.data_dir"] = str(options.data_dir)
    if overrides:
        cfg = TrainConfig.from_flat(overrides, base=cfg)
    if options.download:
        from med_core.data import download_medmnist

        download_medmnist(cfg.data.dataset, cfg.data.data_dir)
    dist = DistContext.from_env()
    try:
        out = options.out
        if out is None:
            stem = Path(cfg.data.dataset).stem
            stamp = dist.broadcast_object(time.strftime("%Y%m%d-%H%M%S"))
            out = Path("medcore-runs") / f"{stem}-{stamp}"
        out_dir = Path(out)
        if dist.is_main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            # A resume keeps the config.yaml of the run it continues: fit() refuses a
            # last.pt written for another config, and that refusal must leave the folder
            # as it was.
            if not (options.resume and (out_dir / "last.pt").is_file()):
                cfg.to_yaml(out_dir / "config.yaml")
        trainer = Trainer(cfg, device=device, out_dir=out_dir, progress=options.progress, dist=dist)
        history = trainer.fit(resume=options.resume)
        summary: dict[str, Any] = {
            "out_dir": str(out_dir),
            "stop_reason": history.stop_reason,
            "epochs_run": len(history),
            # 1-based, as the epoch log lines count ("epoch 2/4")
            "best_epoch": None if history.best_epoch is None else history.best_epoch + 1,
            "monitor": history.monitor,
            "best_metric": history.best_metric,
        }
        if options.test:
            weights = "last"
            if not options.eval_last and (out_dir / "best.pt").is_file():
                trainer.load_weights(out_dir / "best.pt")
                weights = "best"
            summary["test_weights"] = weights
            summary["test"] = _finite_or_none(trainer.evaluate("test"))
        summary["history"] = [{**_finite_or_none(e), "epoch": int(e["epoch"]) + 1}
                              for e in history]
        if not dist.is_main_process:
            return None
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
    finally:
        dist.destroy()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)

    from med_core.exceptions import ConfigError
    from med_core.exceptions import MedCoreError

    try:
        options = TrainOptions(
            config=args.config,
            overrides=_parse_overrides(args.overrides),
            device=args.device,
            out=args.out,
            resume=args.resume,
            progress=False if args.no_progress else None,
            test=args.test,
            eval_last=args.eval_last,
            data_dir=args.data_dir,
        )
    except (ConfigError, ValueError) as e:
        parser.error(str(e))
    try:
        summary = train(options)
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
    if summary is not None:
        print(json.dumps(summary_line(summary)))
    return 0


def summary_line(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary without its per-epoch history: what the command prints on stdout."""
    return {k: v for k, v in summary.items() if k != "history"}


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess test
    sys.exit(main())
