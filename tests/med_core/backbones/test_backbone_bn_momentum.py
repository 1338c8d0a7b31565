"""BatchNorm momentum is at least PyTorch's 0.1 on every registered torchvision backbone.

torchvision builds MobileNetV3 and MaxViT with momentum 0.01; in a short MedMNIST run their
running statistics then stay near the initial values and eval-mode predictions collapse.
"""

from __future__ import annotations

import pytest
import torch

from med_core.backbones import create_backbone


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "maxvit_t", "resnet18"])
def test_batchnorm_momentum_is_at_least_default(name: str) -> None:
    model = create_backbone(name, in_chans=1, img_size=28)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    assert min(m.momentum for m in norms) >= 0.1
