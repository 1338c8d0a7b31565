"""Every registered backbone through the conformance suite (med_core.testing.backbones)."""

from __future__ import annotations

import math

import pytest

from med_core.backbones import get_backbone_cfg
from med_core.backbones import list_backbones
from med_core.testing.backbones import BackboneSuite

# natural-size forward+backward of these takes over ~1 s on one core (big models,
# large natural sizes, 3D clips): marked slow, still run in CI
_SLOW_NATURAL = {
    "resnet101",
    "resnet152",
    "efficientnet_b4",
    "efficientnet_v2_s",
    "efficientnet_v2_m",
    "convnext_small",
    "convnext_base",
    "swin_s",
    "swin_b",
    "vit_base",
    *list_backbones(spatial_dims=3),
}
_VOLUMES = set(list_backbones(spatial_dims=3))


def _cost_rank(name: str) -> tuple[bool, bool, int, str]:
    """Slow before fast, volumes before images, larger natural inputs first."""
    size = get_backbone_cfg(name).natural_size
    return (name not in _SLOW_NATURAL, name not in _VOLUMES, -math.prod(size), name)


# Natural-size cases: every name with 3 channels, and with 1 channel where that is cheap.
# The natural size checks the network without small-input surgery; the 1-channel stem is
# the same adaptation at every size and runs for every name at 28 px (test_small_input).
# The slow names' 1-channel natural runs (swin3d_t's 32x224x224 clip alone costs ~14 s of
# CPU and 4 GB) repeated both and cost ~40 s of the suite's 10 minutes on 2 cores.
# Heaviest first (see conftest.py), so that pytest-xdist does not end on one long test.
_NATURAL_CASES = [
    pytest.param(
        name,
        chans,
        id=f"{name}-{'gray' if chans == 1 else 'rgb'}",
        marks=[pytest.mark.slow] if name in _SLOW_NATURAL else [],
    )
    for name in sorted(list_backbones(), key=_cost_rank)
    for chans in (1, 3)
    if chans == 3 or name not in _SLOW_NATURAL
]


@pytest.fixture(params=list_backbones())
def backbone_name(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=[1, 3], ids=["gray", "rgb"])
def in_chans(request: pytest.FixtureRequest) -> int:
    return request.param  # type: ignore[no-any-return]


# The checkpointed-vs-ordinary comparison at 28 px runs for every name except these
# costly ones (big 2D models, all 3D ones); their family representatives run the full
# CheckpointingSuite in test_backbone_checkpointing.py.
_NO_EQUIVALENCE_AT_28 = {
    "resnet101",
    "resnet152",
    "efficientnet_b4",
    "efficientnet_v2_m",
    "convnext_small",
    "convnext_base",
    "swin_s",
    "swin_b",
    "vit_small",
    "vit_base",
    *list_backbones(spatial_dims=3),
}


class TestBackbones(BackboneSuite):
    def checks_checkpoint_equivalence(self, backbone_name: str) -> bool:
        return backbone_name not in _NO_EQUIVALENCE_AT_28

    @pytest.mark.parametrize(("backbone_name", "in_chans"), _NATURAL_CASES)
    def test_natural_size(self, backbone_name: str, in_chans: int) -> None:
        super().test_natural_size(backbone_name, in_chans)


def test_registry_covers_the_design() -> None:
    """29+ names over the ten families of the design (3D counted as one family)."""
    names = list_backbones()
    assert len(names) >= 29
    families = {get_backbone_cfg(n).family for n in names}
    assert families == {
        "resnet",
        "mobilenet",
        "efficientnet",
        "efficientnet_v2",
        "regnet",
        "convnext",
        "vit",
        "maxvit",
        "swin",
        "resnet3d",
        "swin3d",
    }
    assert set(list_backbones(spatial_dims=3)) == {"r3d_18", "mc3_18", "r2plus1d_18", "swin3d_t"}
