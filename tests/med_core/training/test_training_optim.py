"""Optimizers and per-batch learning-rate schedules."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from med_core.config import OptimConfig
from med_core.training._optim import build_optimizer
from med_core.training._optim import build_scheduler


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def _lrs(cfg: OptimConfig, *, epochs: int = 4, steps: int = 10) -> list[float]:
    opt = build_optimizer(_model(), cfg)
    sched = build_scheduler(opt, cfg, epochs=epochs, steps_per_epoch=steps)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adamw", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("sgd", torch.optim.SGD),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_optimizers_and_weight_decay_groups(name: str, cls: type) -> None:
    opt = build_optimizer(_model(), OptimConfig(optimizer=name, weight_decay=0.05, momentum=0.9))
    assert isinstance(opt, cls)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.05]  # biases and norm parameters are not decayed
    n_no_decay = len(
        opt.param_groups[[g["weight_decay"] for g in opt.param_groups].index(0.0)]["params"]
    )
    assert n_no_decay == 4  # 2 linear biases + BN weight and bias
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] is True


def test_linear_warmup_then_cosine() -> None:
    lrs = _lrs(OptimConfig(lr=1.0, scheduler="cosine", warmup_epochs=1.0))
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    # monotone decay after warm-up
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))


def test_step_constant_onecycle_shapes() -> None:
    step = _lrs(OptimConfig(lr=1.0, scheduler="step", step_size=1, gamma=0.5))
    assert step[0] == step[9] == 1.0 and step[10] == 0.5 and step[39] == 0.125
    const = _lrs(OptimConfig(lr=0.3, scheduler="constant", warmup_epochs=0.5))
    assert const[:5] == pytest.approx([0.06, 0.12, 0.18, 0.24, 0.3]) and set(const[5:]) == {0.3}
    one = _lrs(OptimConfig(lr=1.0, scheduler="onecycle"))
    peak = max(range(len(one)), key=one.__getitem__)
    assert one[0] == pytest.approx(1 / 25) and peak == 12  # 30 % of 40 steps
    assert one[peak] == pytest.approx(1.0) and one[-1] == pytest.approx(1 / 25e4)


def test_scheduler_state_is_weights_only_safe_and_resumes() -> None:
    cfg = OptimConfig(lr=1.0, scheduler="cosine", warmup_epochs=1.0)
    full = _lrs(cfg)
    opt = build_optimizer(_model(), cfg)
    sched = build_scheduler(opt, cfg, epochs=4, steps_per_epoch=10)
    for _ in range(17):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = build_optimizer(_model(), cfg)
    sched2 = build_scheduler(opt2, cfg, epochs=4, steps_per_epoch=10)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(full[17])
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(full[18])
