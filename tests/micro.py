"""The micro search space shared by the CLI and reliability tests (one owner).

One fixed small backbone, one epoch at 28 px, batch 16, only the learning rate searched:
a trial trains in about a second on a 2-core CPU. The ``micro_space`` and
``micro_data_dir`` fixtures of ``tests/conftest.py`` write it and the matching data.
"""

MICRO_SPACE = """\
name: micro
description: one small fixed backbone, one epoch, only the learning rate searched
fidelity: {min_epochs: 1, max_epochs: 1, reduction_factor: 2}
fixed:
  augment.policy: none
  batch_size: 16
  data.loader: tensor
  model.backbone: mobilenet_v3_small
params:
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""
