"""A reusable conformance suite for :mod:`med_core.backbones` (needs ``pytest``).

Two pieces, in the shape of optuna's ``StorageTestCase``:

* ``check_*`` functions: plain assertions usable from any test;
* :class:`BackboneSuite` and :class:`CheckpointingSuite`: test classes to subclass in a test
  module that provides the fixtures they name (``backbone_name`` and ``in_chans``;
  ``ckpt_name``), usually parametrized over ``list_backbones()``.

All checks run on CPU with batches of 1-2. Tolerances are stated where they are used:
checkpointed and ordinary training steps must agree within ``rtol=1e-4, atol=1e-5``
(recomputation repeats the same kernels; only the order of gradient accumulation may
differ), and eval-mode outputs must be bitwise identical.
"""

from __future__ import annotations

import copy
import functools
import math
import pickle
import re
from collections.abc import Callable
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from med_core.backbones import Backbone
from med_core.backbones import create_backbone
from med_core.backbones import get_backbone_cfg

__all__ = [
    "GRAD_ATOL",
    "GRAD_RTOL",
    "SAVED_FRACTION_MARGIN",
    "BackboneSuite",
    "CheckpointingSuite",
    "build_cached",
    "check_same_step",
    "checkpoint_test_size",
    "check_cfg_matches",
    "check_checkpoint_matches",
    "check_forward_backward",
    "check_saved_bytes_drop",
    "input_for",
    "saved_activation_bytes",
    "small_size",
]

GRAD_RTOL = 1e-4
GRAD_ATOL = 1e-5

#: With the family's default checkpointing (a memory budget ``b``, ``FAMILY_DEFAULTS``),
#: activation bytes saved for backward must be at most ``b + SAVED_FRACTION_MARGIN`` of
#: the non-checkpointed bytes at :func:`checkpoint_test_size`. The margin covers what the
#: plan does not govern: one input tensor per checkpointed group, and the stem's and the
#: head's saved tensors. Measured (torch 2.14, CPU, the family budgets): 0.28 (maxvit_t)
#: to 0.67-0.68 (resnet18 at 28², whose small-input 3×3 stem runs at full resolution, and
#: mc3_18 at 12³: their stems hold the largest shares).
SAVED_FRACTION_MARGIN = 0.2

SMALL_SIDE = 28


def small_size(name: str) -> tuple[int, ...]:
    """MedMNIST size for ``name``: 28x28, or 28³ for volumes."""
    return (SMALL_SIDE,) * get_backbone_cfg(name).spatial_dims


def checkpoint_test_size(name: str) -> tuple[int, ...]:
    """Input size of the checkpointing suite: 28x28 for images, 12³ for volumes (CPU time;
    none of the checked properties depends on the size, and 12³ still leaves the last
    BatchNorm of a 3D ResNet more than one value per channel)."""
    return (SMALL_SIDE,) * 2 if get_backbone_cfg(name).spatial_dims == 2 else (12, 12, 12)


def input_for(
    name: str, size: tuple[int, ...], in_chans: int, *, batch: int | None = None, seed: int = 0
) -> torch.Tensor:
    """A seeded standard-normal batch ``(batch, in_chans, *size)``; the default batch is 2
    for images and 1 for volumes (CPU time)."""
    if batch is None:
        batch = 2 if len(size) == 2 else 1
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, in_chans, *size), generator=g)


@functools.lru_cache(maxsize=2)
def build_cached(
    name: str, in_chans: int, img_size: tuple[int, ...] | None, seed: int = 0
) -> Backbone:
    """A seeded build, cached per process for consecutive tests. Tests may run it (which
    sets gradients, the train/eval mode and BatchNorm statistics) but must not change its
    weights or checkpointing: those work on ``copy.deepcopy`` of it."""
    torch.manual_seed(seed)
    return create_backbone(name, in_chans=in_chans, img_size=img_size)


def _loss(out: torch.Tensor) -> torch.Tensor:
    # a loss that depends on every feature with distinct weights (sum() alone would hide
    # permutations and give identical gradients to all outputs)
    w = torch.linspace(-1.0, 1.0, out.shape[1], dtype=out.dtype)
    return (out * w).sum() + out.pow(2).mean()


def train_step(model: nn.Module, x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """One seeded forward/backward in training mode (gradients reset first); returns the
    detached loss. The seed fixes dropout and stochastic-depth masks."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = _loss(model(x))
    loss.backward()
    return loss.detach()


def check_forward_backward(
    model: Backbone, x: torch.Tensor, *, seed: int = 0
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A seeded training step (the same computation as :func:`train_step`): features
    ``(B, num_features)``, finite, and every trainable parameter receives a finite
    gradient. Returns the detached loss and the spatial (or token-grid) size of the last
    feature map."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    features = model.forward_features(x)
    grid = model.grid_size(features)
    out = model.forward_head(features)
    assert out.shape == (x.shape[0], model.num_features), (out.shape, model.num_features)
    assert torch.isfinite(out).all(), "non-finite features"
    loss = _loss(out)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:10]} ({len(missing)} in all)"
    bad = [
        n
        for n, p in model.named_parameters()
        if p.grad is not None and not torch.isfinite(p.grad).all()
    ]
    assert not bad, f"non-finite gradients: {bad[:10]}"
    return loss.detach(), grid


def _prefix(name: str) -> Callable[[str], str]:
    """An ``assert_close`` message callback that names the tensor."""
    return lambda msg: f"{name}: {msg}"


def check_cfg_matches(model: Backbone) -> None:
    """The built backbone agrees with its registry metadata: ``num_features``, the number
    of units (``max_segments``), distinct units that are submodules of ``.model``."""
    cfg = get_backbone_cfg(model.name)
    assert model.cfg == cfg
    assert model.num_features == cfg.num_features
    units = model.units()
    assert len(units) == cfg.max_segments, (len(units), cfg.max_segments)
    assert cfg.default_memory_budget is not None and 0 < cfg.default_memory_budget < 1
    unit_ids = {id(u) for u in units}
    assert len(unit_ids) == len(units), "units must be distinct modules"
    assert unit_ids <= {id(m) for m in model.model.modules()}, "units must be in .model"


def check_same_step(
    reference: nn.Module, other: nn.Module, loss_ref: torch.Tensor, loss_other: torch.Tensor
) -> None:
    """Two models after one training step from the same state agree: loss and every
    parameter gradient within ``rtol=1e-4, atol=1e-5``, buffers (BatchNorm running
    statistics) within the same tolerance."""
    torch.testing.assert_close(loss_other, loss_ref, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    ref_params = dict(reference.named_parameters())
    for name, p in other.named_parameters():
        q = ref_params[name]
        if q.grad is None:
            assert p.grad is None, f"{name}: unexpected gradient"
            continue
        assert p.grad is not None, f"{name}: no gradient"
        torch.testing.assert_close(
            p.grad, q.grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=_prefix(name)
        )
    ref_buffers = dict(reference.named_buffers())
    for name, b in other.named_buffers():
        torch.testing.assert_close(
            b, ref_buffers[name], rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=_prefix(name)
        )


def check_checkpoint_matches(model: Backbone, x: torch.Tensor, segments: int | None) -> None:
    """A checkpointed training step equals an ordinary one from the same state (see
    :func:`check_same_step`). Works on deep copies; ``model`` is not changed."""
    plain, ckpt = copy.deepcopy(model), copy.deepcopy(model)
    plain.disable_gradient_checkpointing()
    ckpt.enable_gradient_checkpointing(segments)
    check_same_step(plain, ckpt, train_step(plain, x), train_step(ckpt, x))


def _param_storages(model: nn.Module) -> set[int]:
    return {
        t.untyped_storage().data_ptr()
        for t in [*model.parameters(), *model.buffers()]
        if t.numel() > 0
    }


def saved_activation_bytes(
    model: nn.Module, x: torch.Tensor, *, seed: int = 0, train: bool = True
) -> int:
    """Bytes of tensors saved for backward by one forward pass (training mode unless
    ``train=False``; autograd on), counted with ``torch.autograd.graph.saved_tensors_hooks``
    as unique storages, excluding the model's parameters and buffers (which exist anyway).
    With checkpointing, what the checkpointed groups save internally is dropped by torch
    and only their inputs are counted."""
    params = _param_storages(model)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and t.device.type != "meta":
            seen[ptr] = storage.nbytes()
        return t

    model.train(train)
    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values())


def check_saved_bytes_drop(model: Backbone, x: torch.Tensor, max_fraction: float) -> float:
    """With the default checkpointing, saved activation bytes ≤ ``max_fraction`` of the
    non-checkpointed bytes. Returns the measured fraction."""
    m = copy.deepcopy(model)
    m.disable_gradient_checkpointing()
    plain = saved_activation_bytes(m, x)
    m.enable_gradient_checkpointing()
    ckpt = saved_activation_bytes(m, x)
    fraction = ckpt / plain
    assert fraction <= max_fraction, (
        f"{model.name}: checkpointing kept {fraction:.3f} of the saved activation bytes "
        f"({ckpt} of {plain}); expected at most {max_fraction}"
    )
    return fraction


def _segment_chain(n: int) -> list[int]:
    """1, 2, 4, ... up to n, then n: each count's boundaries contain the previous ones'."""
    chain = [2**i for i in range(int(math.log2(n)) + 1)]
    return chain if chain[-1] == n else [*chain, n]


# ----------------------------------------------------------------------------- suites
class BackboneSuite:
    """Build/forward/backward conformance of one backbone name.

    Fixtures a subclass module provides: ``backbone_name`` (a registered name) and
    ``in_chans`` (1 or 3).
    """

    def checks_checkpoint_equivalence(self, backbone_name: str) -> bool:
        """Whether :meth:`test_small_input` also compares a checkpointed step with the
        ordinary one for this name (override to leave out costly names whose family
        representative runs :class:`CheckpointingSuite`)."""
        return True

    def test_small_input(self, backbone_name: str, in_chans: int) -> None:
        """28x28 (28³): forward/backward, and the last feature map keeps ≥ 2 per axis.
        With 3 channels (and :meth:`checks_checkpoint_equivalence`), a checkpointed step
        with default segments from the same state must match the ordinary one."""
        size = small_size(backbone_name)
        model = build_cached(backbone_name, in_chans, size)
        assert model.small_input, "28 px is below every family's min_size"
        check_cfg_matches(model)
        x = input_for(backbone_name, size, in_chans)
        check_ckpt = in_chans == 3 and self.checks_checkpoint_equivalence(backbone_name)
        twin = copy.deepcopy(model) if check_ckpt else None  # same state as model
        loss, grid = check_forward_backward(model, x)
        assert min(grid) >= 2, f"final feature map collapsed to {grid}"
        if twin is not None:
            twin.enable_gradient_checkpointing()
            check_same_step(model, twin, loss, train_step(twin, x))

    def test_natural_size(self, backbone_name: str, in_chans: int) -> None:
        """The natural size (no surgery): forward/backward on a batch of one."""
        cfg = get_backbone_cfg(backbone_name)
        torch.manual_seed(0)
        model = create_backbone(backbone_name, in_chans=in_chans)
        assert not model.small_input
        x = input_for(backbone_name, cfg.natural_size, in_chans, batch=1)
        check_forward_backward(model, x)


class CheckpointingSuite:
    """Gradient-checkpointing properties of one backbone, built for
    :func:`checkpoint_test_size` with 3 channels.

    Fixture a subclass module provides: ``ckpt_name`` (a registered name).
    """

    @pytest.fixture
    def ckpt_model(self, ckpt_name: str) -> Iterator[tuple[Backbone, torch.Tensor]]:
        size = checkpoint_test_size(ckpt_name)
        model = copy.deepcopy(build_cached(ckpt_name, 3, size))
        yield model, input_for(ckpt_name, size, 3)

    def test_checkpoint_matches(self, ckpt_model: tuple[Backbone, torch.Tensor]) -> None:
        """Checkpointed steps with the default memory budget, with one segment per unit
        and with the default budget made selective each equal the ordinary step from the
        same state (loss, gradients, buffers; see
        :func:`check_same_step`)."""
        model, x = ckpt_model
        plain = copy.deepcopy(model)
        loss = train_step(plain, x)
        for segments in dict.fromkeys([None, model.cfg.max_segments]):
            ckpt = copy.deepcopy(model)
            ckpt.enable_gradient_checkpointing(segments)
            check_same_step(plain, ckpt, loss, train_step(ckpt, x))
        selective = copy.deepcopy(model)
        selective.enable_gradient_checkpointing(selective=True)
        check_same_step(plain, selective, loss, train_step(selective, x))

    def test_saved_bytes_drop(self, ckpt_model: tuple[Backbone, torch.Tensor]) -> None:
        model, x = ckpt_model
        budget = model.cfg.default_memory_budget
        assert budget is not None
        check_saved_bytes_drop(model, x, budget + SAVED_FRACTION_MARGIN)

    def test_more_segments_save_more(self, ckpt_model: tuple[Backbone, torch.Tensor]) -> None:
        """Documented direction: each segment keeps its input, so saved bytes are
        non-decreasing along 1, 2, 4, ..., N (each split refines the previous one) and
        strictly larger at N than at 1 (when N > 1)."""
        model, x = ckpt_model
        n = model.cfg.max_segments
        assert n is not None
        sizes = []
        for k in _segment_chain(n):
            model.enable_gradient_checkpointing(k)
            sizes.append(saved_activation_bytes(model, x))
        assert sizes == sorted(sizes), sizes
        if n > 1:
            assert sizes[-1] > sizes[0], sizes

    def test_eval_output_identical(self, ckpt_model: tuple[Backbone, torch.Tensor]) -> None:
        """In eval mode checkpointing is inactive: outputs are bitwise identical and, with
        autograd on, the same bytes are saved for backward as without checkpointing."""
        model, x = ckpt_model
        model.eval()
        with torch.no_grad():
            plain = model(x)
        plain_bytes = saved_activation_bytes(model, x, train=False)
        model.enable_gradient_checkpointing()
        with torch.no_grad():
            no_grad = model(x)
        with_grad = model(x)
        assert torch.equal(plain, no_grad)
        assert torch.equal(plain, with_grad.detach())
        assert saved_activation_bytes(model, x, train=False) == plain_bytes

    def test_enable_disable_round_trip(self, ckpt_model: tuple[Backbone, torch.Tensor]) -> None:
        model, x = ckpt_model
        n = model.cfg.max_segments
        keys = list(model.state_dict())
        assert not model.is_gradient_checkpointing_enabled()
        assert model.checkpoint_segments is None
        plain = saved_activation_bytes(model, x)
        model.enable_gradient_checkpointing()
        assert model.is_gradient_checkpointing_enabled()
        assert model.checkpoint_segments is None  # a memory budget, not a count
        assert model.checkpoint_memory_budget == model.cfg.default_memory_budget
        assert saved_activation_bytes(model, x) < plain
        model.enable_gradient_checkpointing(n)
        assert model.checkpoint_segments == n
        assert list(model.state_dict()) == keys
        model.disable_gradient_checkpointing()
        assert not model.is_gradient_checkpointing_enabled()
        assert model.checkpoint_segments is None
        assert saved_activation_bytes(model, x) == plain
        model.disable_gradient_checkpointing()  # idempotent
        assert not model.is_gradient_checkpointing_enabled()

    def test_copy_and_pickle(self, ckpt_model: tuple[Backbone, torch.Tensor]) -> None:
        """A checkpointed model deep-copies and pickles with its setting; the copies hold
        their own weights, give the original's eval output, and a copy still trains
        checkpointed (every trainable parameter gets a gradient)."""
        model, x = ckpt_model
        model.enable_gradient_checkpointing(2)
        clone = copy.deepcopy(model)
        unpickled = pickle.loads(pickle.dumps(model))
        model.eval()
        with torch.no_grad():
            reference = model(x)
        for other in (clone, unpickled):
            assert other.checkpoint_segments == 2
            assert list(other.state_dict()) == list(model.state_dict())
            other.eval()
            with torch.no_grad():
                assert torch.equal(other(x), reference)
        trained = saved_activation_bytes(unpickled, x)  # checkpointed: few bytes saved
        unpickled.disable_gradient_checkpointing()
        assert trained < saved_activation_bytes(unpickled, x)
        unpickled.enable_gradient_checkpointing(2)
        check_forward_backward(unpickled, x)
        # the copy owns its weights: changing it leaves the original alone
        with torch.no_grad():
            next(clone.parameters()).add_(1.0)
        assert not torch.equal(next(clone.parameters()), next(model.parameters()))

    def test_bad_segments(self, ckpt_model: tuple[Backbone, torch.Tensor]) -> None:
        """0, negatives, N+1, floats, bools and strings raise ValueError naming the valid
        range and the value, and leave checkpointing off."""
        model, _ = ckpt_model
        n = model.cfg.max_segments
        assert n is not None
        for value in (0, -1, n + 1, 2.0, True, "3"):
            pattern = rf"must be an integer in \[1, {n}\].*got {re.escape(repr(value))}$"
            with pytest.raises(ValueError, match=pattern):
                model.enable_gradient_checkpointing(value)  # type: ignore[arg-type]
            assert not model.is_gradient_checkpointing_enabled()
