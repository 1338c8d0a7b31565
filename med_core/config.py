"""Configuration dataclasses of one training run, with validation and YAML round-trip.

:class:`TrainConfig` holds every hyperparameter of a run. It nests five groups:
:class:`DataConfig`, :class:`ModelConfig`, :class:`AugmentConfig`, :class:`OptimConfig`
and :class:`DDPConfig`.
All are frozen; each validates its fields when built and names the key, the rule and
the value on error. Dotted names (``"optim.lr"``) address nested fields: they are the
names used by search spaces, MLflow params and :meth:`TrainConfig.from_flat`.

Example:
    >>> cfg = TrainConfig.from_flat({"model.backbone": "resnet18", "optim.lr": 0.01})
    >>> cfg.optim.lr
    0.01
    >>> TrainConfig.from_yaml_str(cfg.to_yaml()) == cfg
    True
    >>> cfg.flatten()["model.backbone"]
    'resnet18'
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import TypeVar

from med_core.exceptions import ConfigError

__all__ = [
    "AMP_DTYPES",
    "AUGMENT_POLICIES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "AugmentConfig",
    "DDPConfig",
    "DataConfig",
    "DistillConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
]

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop")
SCHEDULERS = ("cosine", "onecycle", "step", "constant")
AMP_DTYPES = ("none", "bf16", "fp16")
AUGMENT_POLICIES = ("none", "light", "medium", "heavy", "randaugment", "trivialaugment")
LOADER_MODES = ("auto", "tensor", "dataloader")

Scalar = bool | int | float | str | None
_C = TypeVar("_C", bound="_ConfigBase")


def _check(ok: bool, key: str, rule: str, value: object) -> None:
    if not ok:
        raise ConfigError(key=key, rule=rule, value=value)


def _in_range(lo: float, hi: float) -> Callable[[str, Any], None]:
    def check(key: str, v: Any) -> None:
        _check(isinstance(v, (int, float)) and lo <= v <= hi, key, f"a number in [{lo}, {hi}]", v)

    return check


def _positive(key: str, v: Any) -> None:
    _check(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, key, "a number > 0", v)


def _non_negative(key: str, v: Any) -> None:
    _check(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, key, "a number >= 0", v)


def _one_of(options: tuple[str, ...]) -> Callable[[str, Any], None]:
    def check(key: str, v: Any) -> None:
        _check(v in options, key, f"one of {list(options)}", v)

    return check


def _optional(inner: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    def check(key: str, v: Any) -> None:
        if v is not None:
            inner(key, v)

    return check


def _positive_int(key: str, v: Any) -> None:
    _check(isinstance(v, int) and not isinstance(v, bool) and v > 0, key, "an integer > 0", v)


def _non_negative_int(key: str, v: Any) -> None:
    _check(isinstance(v, int) and not isinstance(v, bool) and v >= 0, key, "an integer >= 0", v)


def _non_empty_str(key: str, v: Any) -> None:
    _check(isinstance(v, str) and v.strip() != "", key, "a non-empty string", v)


def _is_type(expected: type) -> Callable[[str, Any], None]:
    def check(key: str, v: Any) -> None:
        _check(isinstance(v, expected), key, f"of type {expected.__name__}", v)

    return check


def _rule(check: Callable[[str, Any], None], default: Any) -> Any:
    """A dataclass field with a validation rule stored in its metadata."""
    return field(default=default, metadata={"check": check})


class _ConfigBase:
    """Validation, dict conversion and dotted-name access shared by all config groups."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            value = _coerce(value, hints[f.name])
            object.__setattr__(self, f.name, value)
            check = f.metadata.get("check")
            if check is not None:
                check(f.name, value)

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any], *, _prefix: str = "") -> _C:
        """Builds the config from a (nested) mapping; unknown keys raise :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(key=_prefix.rstrip(".") or "config", rule="a mapping", value=data)
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown key(s) {[_prefix + k for k in unknown]}; allowed: "
                f"{[_prefix + k for k in known]}"
            )
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            sub = hints[name]
            if isinstance(sub, type) and issubclass(sub, _ConfigBase):
                kwargs[name] = sub.from_dict(value or {}, _prefix=f"{_prefix}{name}.")
            else:
                kwargs[name] = value
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise e.nested_in(_prefix) from None

    def to_dict(self) -> dict[str, Any]:
        """A nested dict of plain Python values (YAML- and JSON-safe)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]

    def flatten(self) -> dict[str, Scalar]:
        """Every leaf value under its dotted name, e.g. ``{"optim.lr": 0.001, ...}``."""
        out: dict[str, Scalar] = {}

        def walk(d: Mapping[str, Any], prefix: str) -> None:
            for k, v in d.items():
                if isinstance(v, Mapping):
                    walk(v, f"{prefix}{k}.")
                else:
                    out[prefix + k] = v

        walk(self.to_dict(), "")
        return out


def _coerce(value: Any, hint: Any) -> Any:
    """Lenient conversions at the boundary: int → float for float fields, list → tuple."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    is_union = origin is typing.Union or isinstance(hint, types.UnionType)
    accepts_float = hint is float or (is_union and float in args)
    accepts_int = hint is int or (is_union and int in args)
    if accepts_float and not accepts_int and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclass(frozen=True)
class DataConfig(_ConfigBase):
    """Which data a run uses and how it is fed.

    Args:
        dataset: A MedMNIST name (``"breastmnist"``, ``"pneumoniamnist_64"``), a path to an
            ``.npz`` file, an image-folder root (``root/<class>/*.png``) or a CSV manifest
            (``path,label[,split]``).
        data_dir: Where MedMNIST names are looked up; ``None`` means the caller's default
            (``MEDAUTO_DATA_DIR``, else ``~/.medmnist``), resolved at the CLI boundary.
        img_size: Side length the images are resized to; ``None`` keeps the native size.
        train_on_val: Train on train+val (used by retraining); validation then reuses val.
        val_fraction: Validation share for user data without a split column.
        test_fraction: Test share for user data without a split column.
        loader: ``"tensor"`` keeps the whole dataset as one uint8 tensor on the device;
            ``"dataloader"`` uses per-image transforms and a DataLoader; ``"auto"`` picks
            ``"tensor"`` when the data fits in the device-memory budget.
        num_workers: DataLoader workers (the tensor path ignores it).
    """

    dataset: str = _rule(_non_empty_str, "breastmnist")
    data_dir: str | None = _rule(_optional(_non_empty_str), None)
    img_size: int | None = _rule(_optional(_positive_int), None)
    train_on_val: bool = _rule(_is_type(bool), False)
    val_fraction: float = _rule(_in_range(0.0, 0.5), 0.1)
    test_fraction: float = _rule(_in_range(0.0, 0.5), 0.2)
    loader: str = _rule(_one_of(LOADER_MODES), "auto")
    num_workers: int = _rule(_non_negative_int, 2)


@dataclass(frozen=True)
class ModelConfig(_ConfigBase):
    """The network: a :mod:`med_core.backbones` backbone plus a classification head.

    Args:
        backbone: A registered backbone name (see ``med_core.backbones.list_backbones()``)
            or ``"timm/<name>"``.
        pretrained: Load pretrained weights from the local torch/timm cache.
        checkpoint_segments: Gradient checkpointing; ``None`` turns it off, ``0`` means the
            backbone family's default (a memory budget, planned from the units' measured
            activation bytes), ``k`` means k segments of near-equal unit counts.
        dropout: Dropout probability before the final linear layer.
    """

    backbone: str = _rule(_non_empty_str, "resnet18")
    pretrained: bool = _rule(_is_type(bool), False)
    checkpoint_segments: int | None = _rule(_optional(_non_negative_int), None)
    dropout: float = _rule(_in_range(0.0, 0.95), 0.0)


@dataclass(frozen=True)
class AugmentConfig(_ConfigBase):
    """Training-time augmentation: a named policy, optionally overridden number by number.

    ``None`` for a parametric field keeps the policy's value. Probabilities are in [0, 1];
    ``rotation`` is in degrees; ``scale`` and ``translate`` are fractions of the image size;
    ``brightness``/``contrast``/``gamma`` are jitter strengths (gamma: ``x ** g`` with
    ``log g`` in ``[-gamma, gamma]``); ``noise_std`` is in units of the
    [0, 1] intensity range.
    """

    policy: str = _rule(_one_of(AUGMENT_POLICIES), "light")
    hflip: float | None = _rule(_optional(_in_range(0.0, 1.0)), None)
    vflip: float | None = _rule(_optional(_in_range(0.0, 1.0)), None)
    rotation: float | None = _rule(_optional(_in_range(0.0, 180.0)), None)
    scale: float | None = _rule(_optional(_in_range(0.0, 0.9)), None)
    translate: float | None = _rule(_optional(_in_range(0.0, 0.5)), None)
    brightness: float | None = _rule(_optional(_in_range(0.0, 1.0)), None)
    contrast: float | None = _rule(_optional(_in_range(0.0, 1.0)), None)
    gamma: float | None = _rule(_optional(_in_range(0.0, 1.0)), None)
    noise_std: float | None = _rule(_optional(_in_range(0.0, 0.5)), None)
    mixup_alpha: float = _rule(_in_range(0.0, 10.0), 0.0)
    cutmix_alpha: float = _rule(_in_range(0.0, 10.0), 0.0)


@dataclass(frozen=True)
class OptimConfig(_ConfigBase):
    """Optimizer and learning-rate schedule.

    Args:
        optimizer: One of :data:`OPTIMIZERS`.
        lr: Peak learning rate.
        weight_decay: Decoupled (AdamW) or L2 weight decay.
        momentum: SGD/RMSprop momentum (ignored by Adam-type optimizers).
        scheduler: One of :data:`SCHEDULERS`; all are stepped per batch.
        warmup_epochs: Linear warm-up length in epochs (fractions allowed).
        step_size: Epochs between decays of the ``step`` schedule.
        gamma: Decay factor of the ``step`` schedule.
        grad_clip: Max global gradient norm; ``None`` disables clipping.
    """

    optimizer: str = _rule(_one_of(OPTIMIZERS), "adamw")
    lr: float = _rule(_positive, 1e-3)
    weight_decay: float = _rule(_non_negative, 1e-4)
    momentum: float = _rule(_in_range(0.0, 0.999), 0.9)
    scheduler: str = _rule(_one_of(SCHEDULERS), "cosine")
    warmup_epochs: float = _rule(_non_negative, 0.0)
    step_size: int = _rule(_positive_int, 30)
    gamma: float = _rule(_in_range(0.0, 1.0), 0.1)
    grad_clip: float | None = _rule(_optional(_positive), None)


@dataclass(frozen=True)
class DDPConfig(_ConfigBase):
    """How ``DistributedDataParallel`` reduces gradients when a run has several ranks
    (ignored in one process).

    Args:
        bucket_cap_mb: The gradient bucket size in MiB; each bucket is all-reduced as soon
            as all its gradients exist, so smaller buckets start communication earlier in
            the backward pass (and cost more collectives). ``None`` keeps torch's default:
            25 MiB, with a first bucket (the last layers' gradients) of 1 MiB; a value
            sets every bucket, the first included, to it.
        static_graph: Tell DDP that every step uses the same parameters in the same
            order (``DistributedDataParallel(static_graph=True)``), which lets it skip the
            per-step search for unused parameters after the first step.
    """

    bucket_cap_mb: float | None = _rule(_optional(_positive), None)
    static_graph: bool = _rule(_is_type(bool), False)


@dataclass(frozen=True)
class DistillConfig(_ConfigBase):
    """Knowledge distillation of a student from a teacher's soft targets (Hinton et al.).

    The loss is ``alpha * T**2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, y)``
    with both distributions softened by the temperature ``T`` (see
    :mod:`med_core.training.distill`). It is not part of :class:`TrainConfig`: the same
    student config trains with or without a teacher.

    Args:
        temperature: The softening temperature ``T`` (``1`` = the plain probabilities).
        alpha: The weight of the distillation term; ``1`` ignores the labels, ``0`` the
            teacher.
    """

    temperature: float = _rule(_in_range(0.05, 100.0), 4.0)
    alpha: float = _rule(_in_range(0.0, 1.0), 0.7)


@dataclass(frozen=True)
class TrainConfig(_ConfigBase):
    """Every hyperparameter of one training run.

    Args:
        data: See :class:`DataConfig`.
        model: See :class:`ModelConfig`.
        augment: See :class:`AugmentConfig`.
        optim: See :class:`OptimConfig`.
        ddp: See :class:`DDPConfig`.
        epochs: Number of training epochs (the fidelity budget of a search).
        batch_size: Global batch size (divided across DDP ranks).
        label_smoothing: Cross-entropy label smoothing in [0, 1).
        amp_dtype: Autocast dtype on CUDA: ``"none"``, ``"bf16"`` or ``"fp16"`` (with a grad
            scaler). Ignored on CPU.
        channels_last: Use the channels-last memory format (CUDA).
        compile: Wrap the model in ``torch.compile``.
        seed: Seed for weights, data order and augmentation.
        early_stopping_patience: Stop after this many epochs without improvement of
            ``monitor``; ``None`` disables early stopping.
        monitor: The validation metric that selects the best epoch (``"val_auc"``,
            ``"val_acc"``, ``"val_loss"``, ...). Names ending in ``loss`` are minimized.
        tta: Average predictions over flips at evaluation (test-time augmentation).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    epochs: int = _rule(_positive_int, 10)
    batch_size: int = _rule(_positive_int, 128)
    label_smoothing: float = _rule(_in_range(0.0, 0.99), 0.0)
    amp_dtype: str = _rule(_one_of(AMP_DTYPES), "none")
    channels_last: bool = _rule(_is_type(bool), False)
    compile: bool = _rule(_is_type(bool), False)
    seed: int = _rule(_non_negative_int, 0)
    early_stopping_patience: int | None = _rule(_optional(_positive_int), None)
    monitor: str = _rule(_non_empty_str, "val_auc")
    tta: bool = _rule(_is_type(bool), False)

    @property
    def monitor_mode(self) -> str:
        """``"min"`` for loss-like monitors, else ``"max"``."""
        return "min" if self.monitor.endswith("loss") else "max"

    @classmethod
    def from_flat(
        cls, values: Mapping[str, Any], *, base: TrainConfig | None = None
    ) -> TrainConfig:
        """Builds a config from dotted names, on top of ``base`` (default: all defaults).

        Raises:
            ConfigError: for an unknown dotted name or an invalid value.
        """
        nested = (base or cls()).to_dict()
        for dotted, value in values.items():
            parts = dotted.split(".")
            node = nested
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"unknown config key {dotted!r}", key=dotted,
                                      rule="a TrainConfig key", value=dotted)
                node = node[p]
            if parts[-1] not in node or isinstance(node[parts[-1]], dict):
                raise ConfigError(f"unknown config key {dotted!r}", key=dotted,
                                  rule="a TrainConfig key", value=dotted)
            node[parts[-1]] = value
        return cls.from_dict(nested)

    def replace(self, **flat: Any) -> TrainConfig:
        """A copy with dotted-name overrides, written with ``__`` for dots.

        Example:
            >>> TrainConfig().replace(optim__lr=0.1, epochs=3).optim.lr
            0.1
        """
        return TrainConfig.from_flat({k.replace("__", "."): v for k, v in flat.items()}, base=self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Serializes to YAML; writes it to ``path`` too when given. Returns the text."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml_str(cls, text: str, *, source: str = "<string>") -> TrainConfig:
        """Parses YAML text (safe loader only).

        Raises:
            ConfigError: malformed YAML, unknown keys or invalid values (naming ``source``).
        """
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from None
        try:
            return cls.from_dict(data or {})
        except ConfigError as e:
            raise e.from_source(source) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Reads a YAML file written by :meth:`to_yaml` (or by hand)."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        return cls.from_yaml_str(p.read_text(), source=p.name)
