"""Checkpointing internals: exact BatchNorm handling, ``keep_last`` and the family defaults."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from med_core.backbones import create_backbone
from med_core.backbones import get_backbone_cfg
from med_core.backbones import list_backbones
from med_core.backbones._checkpointing import FAMILY_DEFAULTS
from med_core.backbones._checkpointing import _FreezeNormStats
from med_core.backbones._checkpointing import plan_groups
from med_core.backbones._checkpointing import unit_activation_bytes
from med_core.backbones._registry import FAMILIES
from med_core.testing.backbones import saved_activation_bytes


def _step(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    net(x).square().mean().backward()
    return {n: p.grad for n, p in net.named_parameters() if p.grad is not None}


def _assert_same_step(ref: nn.Module, other: nn.Module, x: torch.Tensor) -> None:
    """One seeded training step of each from the same state: the same gradients (within
    float tolerance) and bitwise the same buffers (BatchNorm statistics)."""
    torch.manual_seed(1)
    g_ref = _step(ref, x)
    torch.manual_seed(1)
    g_other = _step(other, x)
    assert g_ref.keys() == g_other.keys()
    for n in g_ref:
        torch.testing.assert_close(g_other[n], g_ref[n], rtol=1e-5, atol=1e-6, msg=n)
    for (n, a), (_, b) in zip(ref.named_buffers(), other.named_buffers(), strict=True):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("momentum", [0.1, None])  # None: cumulative average (reads the count)
def test_checkpointed_steps_leave_batchnorm_state_bit_identical(momentum: float | None) -> None:
    torch.manual_seed(0)
    ref = create_backbone("resnet18", img_size=16)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    ckpt = copy.deepcopy(ref)
    ckpt.enable_gradient_checkpointing(3)
    x = torch.randn(4, 3, 16, 16)
    for _ in range(2):  # the second step starts from updated statistics and counts
        g_ref, g_ckpt = _step(ref, x), _step(ckpt, x)
    assert g_ref.keys() == g_ckpt.keys()
    for n in g_ref:
        torch.testing.assert_close(g_ckpt[n], g_ref[n], rtol=1e-5, atol=1e-6, msg=n)
    for (n, a), (_, b) in zip(ref.named_buffers(), ckpt.named_buffers(), strict=True):
        assert torch.equal(a, b), n  # running stats and num_batches_tracked: exact
    assert all(
        int(m.num_batches_tracked) == 2 for m in ckpt.modules() if isinstance(m, nn.BatchNorm2d)
    )
    # momentum and the count buffer are back after recomputation
    norms = [m for m in ckpt.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == momentum for m in norms)
    assert all(isinstance(m.num_batches_tracked, torch.Tensor) for m in norms)
    assert {n for n, _ in ckpt.named_buffers()} == {n for n, _ in ref.named_buffers()}


def test_freeze_context_recomputes_the_same_activations_without_touching_stats() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3).train()
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    first = bn(x)
    stats = [b.clone() for b in bn.buffers()]
    with _FreezeNormStats([bn]):
        again = bn(x)
    assert torch.equal(again, first)  # batch statistics, as in the first pass
    assert all(torch.equal(a, b) for a, b in zip(stats, bn.buffers(), strict=True))
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 1


def test_keep_last_skips_the_last_groups_recomputation() -> None:
    torch.manual_seed(0)
    net = create_backbone("resnet18", img_size=16)
    units = net.units()
    calls = [0] * len(units)
    for i, u in enumerate(units):
        u.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    x = torch.randn(2, 3, 16, 16)
    net.enable_gradient_checkpointing(2, keep_last=True)
    assert net.checkpoint_keep_last and "keep_last" in repr(net)
    net(x).sum().backward()
    assert calls == [2] * 4 + [1] * 4  # first half recomputed once, last half never
    calls[:] = [0] * len(units)
    net.enable_gradient_checkpointing(2)  # an explicit count alone checkpoints every group
    assert not net.checkpoint_keep_last
    net(x).sum().backward()
    assert calls == [2] * 8
    net.disable_gradient_checkpointing()
    assert not net.checkpoint_keep_last


def test_keep_last_needs_two_groups() -> None:
    net = create_backbone("resnet18", img_size=16)
    with pytest.raises(ValueError, match=r"keep_last=True needs segments >= 2 .* got segments=1"):
        net.enable_gradient_checkpointing(1, keep_last=True)
    with pytest.raises(ValueError, match=r"keep_last must be a bool or None, got 'yes'"):
        net.enable_gradient_checkpointing(2, keep_last="yes")  # type: ignore[arg-type]


def test_family_defaults_table_is_valid_for_every_registered_backbone() -> None:
    assert set(FAMILY_DEFAULTS) <= set(FAMILIES) - {"timm"}
    for family, budget in FAMILY_DEFAULTS.items():
        names = [n for n in list_backbones() if get_backbone_cfg(n).family == family]
        assert names, f"no registered backbone of family {family!r}"
        assert 0 < budget < 1, family
        assert all(get_backbone_cfg(n).default_memory_budget == budget for n in names)


def test_enable_without_arguments_plans_the_family_budget_from_measured_bytes() -> None:
    torch.manual_seed(0)
    net = create_backbone("resnet18", img_size=28)
    net.enable_gradient_checkpointing()
    assert net.checkpoint_memory_budget == FAMILY_DEFAULTS["resnet"]
    assert net.checkpoint_plan is None  # planned on the first training pass
    x = torch.randn(4, 3, 28, 28)
    net(x).sum().backward()
    units = net.units()
    per_unit = unit_activation_bytes(units, net.forward_stem(x))
    plan = net.checkpoint_plan
    assert plan == plan_groups(per_unit, FAMILY_DEFAULTS["resnet"]) and plan
    # by bytes, not by unit count: layer1 (units 0-1, full resolution) holds most bytes,
    # so its groups are shorter than half the net, and the plainly run tail is longer
    assert plan[-1][1] < len(units) // 2
    assert sum(per_unit[plan[-1][1] :]) <= FAMILY_DEFAULTS["resnet"] * sum(per_unit)
    assert f"memory_budget={FAMILY_DEFAULTS['resnet']}" in repr(net)


def test_plan_groups_keeps_at_most_the_budget_in_the_tail_and_in_each_group() -> None:
    rng = torch.Generator().manual_seed(0)
    for _ in range(50):
        sizes = (
            torch.rand(int(torch.randint(1, 20, (1,), generator=rng)), generator=rng) * 10
        ).tolist()
        budget = float(torch.rand(1, generator=rng) * 0.8 + 0.1)
        groups = plan_groups(sizes, budget)
        cap = budget * sum(sizes)
        tail_start = groups[-1][1] if groups else 0
        assert sum(sizes[tail_start:]) <= cap + 1e-9
        covered = [i for lo, hi in groups for i in range(lo, hi)]
        assert covered == list(range(tail_start))  # contiguous from the first unit
        for lo, hi in groups:
            assert hi - lo == 1 or sum(sizes[lo:hi]) <= cap + 1e-9
    assert plan_groups([0, 0, 0], 0.5) == ()
    assert plan_groups([10, 1], 0.4) == ((0, 1),)  # a unit above the budget: its own group


def test_the_measuring_pass_leaves_rng_and_batchnorm_state_alone() -> None:
    """A budgeted step (which measures first) equals an ordinary one exactly, with dropout
    drawing the same masks: vit_tiny has stochastic depth, resnet18 BatchNorm."""
    for name, kwargs in (("vit_tiny", {"drop_path_rate": 0.2}), ("resnet18", {})):
        torch.manual_seed(0)
        ref = create_backbone(name, img_size=32, **kwargs)
        ckpt = copy.deepcopy(ref)
        ckpt.enable_gradient_checkpointing(memory_budget=0.3)
        _assert_same_step(ref, ckpt, torch.randn(4, 3, 32, 32))
        assert ckpt.checkpoint_plan


def test_memory_budget_arguments_are_checked() -> None:
    net = create_backbone("resnet18", img_size=16)
    for bad in (0, 1, 1.5, -0.1, True, "0.4"):
        with pytest.raises(
            ValueError, match=r"memory_budget for backbone 'resnet18' must be a number in \(0, 1\)"
        ):
            net.enable_gradient_checkpointing(memory_budget=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="segments and memory_budget exclude each other"):
        net.enable_gradient_checkpointing(2, memory_budget=0.4)
    with pytest.raises(ValueError, match="keep_last needs an explicit segments"):
        net.enable_gradient_checkpointing(keep_last=True)
    assert not net.is_gradient_checkpointing_enabled()


@pytest.mark.parametrize("name", ["efficientnet_b0", "vit_tiny"])
def test_selective_checkpointing_is_exact(name: str) -> None:
    """Selective checkpointing keeps convolution/matmul outputs: the step equals the plain
    one. EfficientNet's in-place SiLU right after a convolution would change a kept output
    (wrong gradients, measured), so in-place activations are turned off. What it saves in
    memory and time is measured by the GPU benchmark."""
    torch.manual_seed(0)
    ref = create_backbone(name, img_size=32)
    sel = copy.deepcopy(ref)
    sel.enable_gradient_checkpointing(memory_budget=0.3, selective=True)
    assert sel.checkpoint_selective and "selective" in repr(sel)
    assert not any(getattr(m, "inplace", False) for u in sel.units() for m in u.modules())
    _assert_same_step(ref, sel, torch.randn(4, 3, 32, 32))
    assert sel.checkpoint_plan
    inplace = [m for m in ref.modules() if getattr(m, "inplace", False)]
    assert inplace or name == "vit_tiny"  # EfficientNet's SiLUs are built in-place
    sel.disable_gradient_checkpointing()  # back in place, as it was built
    assert sum(bool(getattr(m, "inplace", False)) for m in sel.modules()) == len(inplace)
    sel.enable_gradient_checkpointing(selective=True)
    sel.enable_gradient_checkpointing(selective=False)
    assert sum(bool(getattr(m, "inplace", False)) for m in sel.modules()) == len(inplace)


def test_offloaded_checkpointing_is_exact_and_keeps_the_tail_off_the_device() -> None:
    """``offload=True`` keeps what the plain tail saves in host memory: the step is the
    same, and the tail's saved tensors are handed to ``save_on_cpu`` (the innermost
    saved-tensor hooks), so a counting hook around the model sees far fewer bytes than
    with the same plan on the device."""
    torch.manual_seed(0)
    ref = create_backbone("r3d_18", img_size=16)
    off, on_device = copy.deepcopy(ref), copy.deepcopy(ref)
    off.enable_gradient_checkpointing(offload=True)
    on_device.enable_gradient_checkpointing()
    assert off.checkpoint_offload and "offload" in repr(off)
    x = torch.randn(4, 3, 16, 16, 16)
    _assert_same_step(ref, off, x)
    _step(on_device, x)  # plans the same groups
    assert off.checkpoint_plan == on_device.checkpoint_plan
    held_off = saved_activation_bytes(off, x)
    held_on = saved_activation_bytes(on_device, x)
    assert held_off < 0.7 * held_on, (held_off, held_on)


def test_measuring_the_plan_frees_its_activations() -> None:
    """The measuring passes leave nothing alive: a pack hook that returned the saved tensor
    itself closed a reference cycle through autograd's graph (a ReLU output saved by its own
    grad_fn), and each plan leaked its passes' activations (268 MiB per plan for resnet50 at
    224², seen on the H200)."""
    import gc
    import weakref

    net = create_backbone("resnet18", img_size=32)
    stem = net.forward_stem(torch.randn(8, 3, 32, 32)).detach()
    outputs: list[weakref.ref[torch.Tensor]] = []
    for unit in net.units():
        unit.register_forward_hook(lambda m, i, o: outputs.append(weakref.ref(o)))
    assert all(b > 0 for b in unit_activation_bytes(net.units(), stem))
    gc.collect()
    assert outputs and all(ref() is None for ref in outputs)
