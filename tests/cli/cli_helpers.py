"""Shared by the CLI tests: the micro search space and the type of the ``run`` fixture."""

from __future__ import annotations

from collections.abc import Callable

MICRO_SPACE = """\
name: micro
description: one small backbone, one or two epochs at 28 px; for CPU tests of the CLI
fidelity: {min_epochs: 1, max_epochs: 2, reduction_factor: 2}
fixed:
  augment.policy: none
  batch_size: 16
  data.loader: tensor
  model.backbone: mobilenet_v3_small
params:
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""

Run = Callable[..., tuple[int, str, str]]
