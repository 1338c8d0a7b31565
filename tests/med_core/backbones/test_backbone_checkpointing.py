"""Gradient checkpointing: the suite on one representative per family, plus unit tests."""

from __future__ import annotations

import pytest

from med_core.testing.backbones import CheckpointingSuite

# the cheapest member of each family (all other names get the checkpoint-equivalence
# check in the backbone suite's small-input test)
REPRESENTATIVES = [
    "resnet18",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_y_400mf",
    "convnext_tiny",
    "vit_tiny",
    "maxvit_t",
    "swin_t",
    "r3d_18",
    "swin3d_t",
]


@pytest.fixture(scope="module", params=REPRESENTATIVES)
def ckpt_name(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


class TestCheckpointing(CheckpointingSuite):
    pass
