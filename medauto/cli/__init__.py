"""The ``medauto`` command line: ``search``, ``create-study``, ``worker``, ``status``,
``best``, ``train``, ``dashboard``, ``retrain``, ``report``, ``export``, ``explain``,
``predict``.

One private module per command group (``_search``, ``_workers``, ``_inspect``, ``_train``,
``_dashboard``, ``_results``, ``_explain``, ``_predict``), the option groups they share
(``_options``), where a study lives (``_store``) and the one "next:" hint (``_hints``).

``main(argv)`` returns the exit code: 0 on success, 1 for a ``MedautoError`` or a med_core
error (bad data, config, device or backbone; one line, passwords redacted), 2 for a usage
error or an unexpected exception (``--debug`` shows the traceback), 130 after
Ctrl-C/SIGTERM (the running trial is recorded as interrupted; re-run the same command to
resume). Results go to stdout, logs and progress to stderr; every line is redacted with
:func:`medauto.storage.redact_url`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from med_core.exceptions import MedCoreError
from medauto.cli._options import add_common_options
from medauto.cli._registry import COMMANDS
from medauto.exceptions import CLIUsageError
from medauto.exceptions import MedautoError
from medauto.storage import redact_url

__all__ = ["main", "run_parsed"]

_LOG_ROOTS = ("medauto", "med_core", "optuna")
#: MLflow's log level variable (read when ``mlflow`` is imported).
_MLFLOW_LEVEL_ENV = "MLFLOW_LOGGING_LEVEL"


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from medauto import __version__

    parser = argparse.ArgumentParser(
        prog="medauto", description="AutoML for medical imaging on Optuna studies."
    )
    parser.add_argument("--version", action="version", version=f"medauto {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common)
    subparsers = {}
    for name, cls in COMMANDS.items():
        doc = (cls.__doc__ or "").strip()
        p = sub.add_parser(
            name, parents=[common], help=doc.splitlines()[0], description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cls.add_arguments(p)
        subparsers[name] = p
    return parser, subparsers


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class _RedactingFilter(logging.Filter):
    """Redacts every record a CLI handler writes (:func:`medauto.storage.redact_url`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_url(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _configure_logging(args: argparse.Namespace) -> None:
    import optuna

    from medauto.logging import get_logger
    from medauto.logging import set_verbosity

    if args.log_file and not Path(args.log_file).parent.is_dir():
        raise MedautoError(
            f"--log-file: the folder {str(Path(args.log_file).parent)!r} does not exist"
        )
    get_logger("medauto")
    level = logging.INFO - 10 * args.verbose + 10 * args.quiet
    set_verbosity(max(logging.DEBUG, min(logging.CRITICAL, level)))
    # Optuna's and MLflow's own INFO lines (study created, MLflow's database set-up) show
    # with -v only; MLflow reads its level when first imported, and later from its logger.
    others = logging.INFO if args.verbose else max(logging.WARNING, level)
    optuna.logging.set_verbosity(others)
    os.environ[_MLFLOW_LEVEL_ENV] = logging.getLevelName(others)
    logging.getLogger("mlflow").setLevel(others)
    if args.log_file:
        handler = logging.FileHandler(args.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        for root in _LOG_ROOTS:
            logging.getLogger(root).addHandler(handler)
    for root in _LOG_ROOTS:
        for h in logging.getLogger(root).handlers:
            if not any(isinstance(f, _RedactingFilter) for f in h.filters):
                h.addFilter(_RedactingFilter())


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI with ``argv`` (default ``sys.argv[1:]``) and returns the exit code.

    ``medauto`` without a subcommand prints the help.
    """
    parser, _ = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return run_parsed(args)


def run_parsed(args: argparse.Namespace) -> int:
    """Runs the subcommand of already parsed options (also a packed worker's entry).

    Returns:
        The exit code (see the module docstring).
    """
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        _configure_logging(args)
        return int(COMMANDS[args.command]().take_action(args) or 0)
    except CLIUsageError as e:
        _, subparsers = _build_parser()
        subparsers[args.command].print_usage(sys.stderr)
        print(f"medauto {args.command}: error: {redact_url(str(e))}", file=sys.stderr)
        return 2
    except (MedautoError, MedCoreError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"medauto {args.command}: error: {redact_url(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        note = COMMANDS[args.command].on_interrupt
        print(f"medauto {args.command}: interrupted; {note}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence prints one line
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (run with --debug for the traceback)"
        msg = redact_url(f"{type(e).__name__}: {e}")
        print(f"medauto {args.command}: unexpected error: {msg}{hint}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
