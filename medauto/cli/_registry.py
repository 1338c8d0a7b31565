"""The ``medauto`` subcommands by name, in the order ``--help`` lists them."""

from __future__ import annotations

from medauto.cli._command import Command
from medauto.cli._dashboard import DashboardCommand
from medauto.cli._distill import DistillCommand
from medauto.cli._explain import ExplainCommand
from medauto.cli._inspect import BestCommand
from medauto.cli._inspect import StatusCommand
from medauto.cli._predict import PredictCommand
from medauto.cli._results import ExportCommand
from medauto.cli._results import ReportCommand
from medauto.cli._results import RetrainCommand
from medauto.cli._search import CreateStudyCommand
from medauto.cli._search import SearchCommand
from medauto.cli._train import TrainCommand
from medauto.cli._workers import WorkerCommand

__all__ = ["COMMANDS"]

COMMANDS: dict[str, type[Command]] = {
    c.name: c
    for c in (SearchCommand, CreateStudyCommand, WorkerCommand, StatusCommand, BestCommand,
              TrainCommand, DashboardCommand, RetrainCommand, DistillCommand, ReportCommand,
              ExportCommand, ExplainCommand, PredictCommand)
}
