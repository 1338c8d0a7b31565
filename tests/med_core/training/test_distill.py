"""Knowledge distillation in the Trainer: the loss, the cached teacher, the augmented path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from training_helpers import base_cfg
from training_helpers import small_dataset

from med_core.config import DistillConfig
from med_core.data import build_loader
from med_core.exceptions import ConfigError
from med_core.training import Trainer
from med_core.training.distill import CACHED
from med_core.training.distill import ON_THE_FLY
from med_core.training.distill import Distillation
from med_core.training.distill import kd_loss
from med_core.training.distill import pack_targets


class RecordingTeacher:
    """A fixed linear teacher over the pixels that keeps every batch it is shown."""

    def __init__(self, pixels: int, classes: int = 2) -> None:
        g = torch.Generator().manual_seed(7)
        self.w = torch.randn(pixels, classes, generator=g) * 0.05
        self.seen: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return torch.softmax(x.flatten(1).float() @ self.w, dim=1)


def _softmax(v: list[float]) -> list[float]:
    e = [math.exp(a) for a in v]
    return [a / sum(e) for a in e]


def test_kd_loss_matches_a_hand_computed_value() -> None:
    logits = [[1.0, -0.5, 0.2], [0.3, 0.9, -1.2]]
    labels = [0, 2]
    teacher = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]
    t, alpha = 2.0, 0.3
    expected = 0.0
    for z, y, p in zip(logits, labels, teacher, strict=True):
        ce = -math.log(_softmax(z)[y])
        q = _softmax([math.log(a) / t for a in p])  # teacher softened: p ** (1/T), renormed
        s = _softmax([a / t for a in z])
        kl = sum(qi * math.log(qi / si) for qi, si in zip(q, s, strict=True))
        expected += (alpha * t * t * kl + (1 - alpha) * ce) / len(labels)
    target = pack_targets(torch.nn.functional.one_hot(torch.tensor(labels), 3),
                          torch.tensor(teacher))
    got = kd_loss(torch.tensor(logits), target, task="multi-class", temperature=t, alpha=alpha)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_kd_loss_multilabel_matches_a_hand_computed_value() -> None:
    z, y, p, t, alpha = [0.4, -1.0], [1.0, 0.0], [0.8, 0.3], 3.0, 0.5

    def sig(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    bce = sum(-(yi * math.log(sig(zi)) + (1 - yi) * math.log(1 - sig(zi)))
              for zi, yi in zip(z, y, strict=True)) / 2
    kl = 0.0
    for zi, pi in zip(z, p, strict=True):
        q, s = sig(math.log(pi / (1 - pi)) / t), sig(zi / t)
        kl += (q * math.log(q / s) + (1 - q) * math.log((1 - q) / (1 - s))) / 2
    target = pack_targets(torch.tensor([y]), torch.tensor([p]))
    got = kd_loss(torch.tensor([z]), target, task="multi-label", temperature=t, alpha=alpha)
    assert float(got) == pytest.approx(alpha * t * t * kl + (1 - alpha) * bce, rel=1e-5)


@pytest.mark.parametrize(("key", "value", "rule"), [
    ("temperature", 0.0, "a number in [0.05, 100.0]"),
    ("alpha", 1.5, "a number in [0.0, 1.0]"),
])
def test_distill_config_errors_name_key_rule_and_value(key: str, value: float,
                                                       rule: str) -> None:
    with pytest.raises(ConfigError) as e:
        DistillConfig.from_dict({key: value})
    assert str(e.value) == f"{key}: must be {rule}, got {value!r}"


def test_cached_teacher_runs_once_per_sample_and_targets_follow_the_index(
    medmnist_dir: Path,
) -> None:
    n, epochs = 64, 3
    ds = small_dataset(medmnist_dir, n_train=n, n_val=32)
    cfg = base_cfg(medmnist_dir, epochs=epochs, batch_size=16)
    teacher = RecordingTeacher(28 * 28)
    distill = Distillation(teacher, DistillConfig(temperature=2.0, alpha=0.5))
    Trainer(cfg, dataset=ds, distill=distill, progress=False).fit()
    assert distill.mode == CACHED
    assert distill.teacher_samples == n  # once per sample over all 3 epochs
    seen = torch.cat(teacher.seen)
    assert seen.shape[0] == n
    plain = build_loader(ds.train, batch_size=n, train=False, augment=None)
    assert torch.equal(seen, next(iter(plain))[0])  # every sample, in sample order

    # Each training batch gets the rows of its own samples (the shuffled epoch order).
    loader = build_loader(ds.train, batch_size=16, train=True, augment=None, seed=cfg.seed)
    loader.set_epoch(2)
    trainer = Trainer(cfg, dataset=ds, progress=False)
    targets = distill.prepare(trainer, loader, trainer._settings())
    start = 0
    for x, y in loader:
        got = targets(x, y, start)
        assert torch.allclose(got[:, 1], teacher(x), atol=1e-6)
        assert torch.equal(got[:, 0], torch.nn.functional.one_hot(y, 2).float())
        start += x.shape[0]
    assert distill.teacher_samples == n  # the lookups above did not call the teacher


def test_augmented_batches_reach_the_teacher_exactly_as_the_student_sees_them(
    medmnist_dir: Path,
) -> None:
    ds = small_dataset(medmnist_dir, n_train=48, n_val=32)
    cfg = base_cfg(medmnist_dir, epochs=2, batch_size=16,
                   **{"augment.policy": "medium", "augment.mixup_alpha": 0.4})
    teacher = RecordingTeacher(28 * 28)
    distill = Distillation(teacher, DistillConfig())
    trainer = Trainer(cfg, dataset=ds, distill=distill, progress=False)
    student_inputs: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if module.training:
            student_inputs.append(args[0].detach().clone())

    trainer.model.register_forward_pre_hook(record)
    trainer.fit()
    assert distill.mode == ON_THE_FLY
    assert len(student_inputs) == len(teacher.seen) == 2 * (48 // 16)
    for s, t in zip(student_inputs, teacher.seen, strict=True):
        assert torch.equal(s, t)


def test_a_teacher_of_the_wrong_width_is_refused(medmnist_dir: Path) -> None:
    ds = small_dataset(medmnist_dir, n_train=32, n_val=16)
    cfg = base_cfg(medmnist_dir, epochs=1, batch_size=16)
    distill = Distillation(RecordingTeacher(28 * 28, classes=3))
    with pytest.raises(ConfigError, match=r"distill teacher: must return \(batch, 2\)"):
        Trainer(cfg, dataset=ds, distill=distill, progress=False).fit()
