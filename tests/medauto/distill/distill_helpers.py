"""Helpers of the distill tests (imported by name; the shared search is in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPACE = """\
name: distill-tiny
description: mobilenet_v3_small, one epoch at 28 px; for CPU tests of distill
fidelity: {min_epochs: 1, max_epochs: 1, reduction_factor: 2}
fixed:
  augment.policy: none
  batch_size: 32
  data.loader: tensor
  model.backbone: mobilenet_v3_small
params:
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""
STUDY = "kd"


@dataclass
class Searched:
    root: Path
    run_dir: Path
    data_dir: Path
    argv: list[str]  # --study/--run-dir for follow-up commands
