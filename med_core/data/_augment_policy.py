"""Augmentation policies: the named policies, their op sets and maxima, and the
:class:`~med_core.config.AugmentConfig` overrides (see :mod:`med_core.data.augment`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from med_core.config import AUGMENT_POLICIES
from med_core.config import AugmentConfig

__all__ = ["AugmentSpec", "GEOMETRIC_OPS", "INTENSITY_OPS", "POLICIES", "resolve_policy"]


GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "zoom")


INTENSITY_OPS = (
    "brightness",
    "contrast",
    "gamma",
    "sharpness",
    "autocontrast",
    "equalize",
    "noise",
)


@dataclass(frozen=True)
class AugmentSpec:
    """Resolved numbers of one augmentation policy (all maxima; 0 turns an op off).

    Args:
        policy: The policy name it came from.
        hflip: Probability of a horizontal (W) flip.
        vflip: Probability of a vertical (H) flip.
        rotation: Max rotation in degrees (in-plane; 3-D also tilts by half of it).
        scale: Max zoom: the factor is drawn from ``[1 - scale, 1 + scale]``.
        translate: Max shift as a fraction of the image size, per axis.
        shear: Max shear angle in degrees (randaugment/trivialaugment only).
        brightness: Multiplicative factor drawn from ``[1 - b, 1 + b]``.
        contrast: Factor around the sample mean, drawn from ``[1 - c, 1 + c]``.
        gamma: ``x ** g`` with ``log g`` drawn from ``[-gamma, gamma]``.
        sharpness: Sharpness factor from ``[1 - s, 1 + s]`` (< 1 blurs); ops mode only.
        noise_std: Gaussian noise with a per-sample std drawn from ``[0, noise_std]``.
        num_ops: 0 for the classic policies; N ops per sample for randaugment (2) and
            trivialaugment (1).
        magnitude: Fraction of each op's maximum for randaugment; ``None`` draws it
            uniformly per sample (trivialaugment).
        mixup_alpha: Beta parameter of mixup (used by :func:`mix_batch`; 0 = off).
        cutmix_alpha: Beta parameter of cutmix (0 = off).
    """

    policy: str = "none"
    hflip: float = 0.0
    vflip: float = 0.0
    rotation: float = 0.0
    scale: float = 0.0
    translate: float = 0.0
    shear: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    sharpness: float = 0.0
    noise_std: float = 0.0
    num_ops: int = 0
    magnitude: float | None = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0


_OPS_MAXIMA = {
    "hflip": 0.5,
    "rotation": 30.0,
    "scale": 0.3,
    "translate": 0.2,
    "shear": 15.0,
    "brightness": 0.5,
    "contrast": 0.5,
    "gamma": 0.5,
    "sharpness": 0.9,
    "noise_std": 0.1,
}


POLICIES: Mapping[str, AugmentSpec] = {
    "none": AugmentSpec("none"),
    "light": AugmentSpec(
        "light", hflip=0.5, rotation=10.0, scale=0.1, translate=0.05, brightness=0.1, contrast=0.1
    ),
    "medium": AugmentSpec(
        "medium",
        hflip=0.5,
        rotation=15.0,
        scale=0.15,
        translate=0.1,
        brightness=0.2,
        contrast=0.2,
        gamma=0.2,
        noise_std=0.02,
    ),
    "heavy": AugmentSpec(
        "heavy",
        hflip=0.5,
        rotation=25.0,
        scale=0.25,
        translate=0.15,
        brightness=0.3,
        contrast=0.3,
        gamma=0.3,
        noise_std=0.05,
    ),
    "randaugment": AugmentSpec("randaugment", num_ops=2, magnitude=0.3, **_OPS_MAXIMA),  # type: ignore[arg-type]
    "trivialaugment": AugmentSpec("trivialaugment", num_ops=1, magnitude=None, **_OPS_MAXIMA),  # type: ignore[arg-type]
}


assert set(POLICIES) == set(AUGMENT_POLICIES)  # noqa: S101  (internal invariant, not input)


_OVERRIDES = (
    "hflip",
    "vflip",
    "rotation",
    "scale",
    "translate",
    "brightness",
    "contrast",
    "gamma",
    "noise_std",
)


def resolve_policy(cfg: AugmentConfig | str | None) -> AugmentSpec:
    """The :class:`AugmentSpec` of a config: the policy's numbers with set fields overriding.

    In randaugment/trivialaugment, ``rotation`` also sets the shear maximum to half of it.

    Example:
        >>> resolve_policy(AugmentConfig(policy="light", rotation=0.0)).rotation
        0.0
        >>> resolve_policy("heavy").hflip
        0.5
    """
    if cfg is None:
        cfg = AugmentConfig(policy="none")
    elif isinstance(cfg, str):
        if cfg not in POLICIES:
            raise ValueError(f"augmentation policy must be one of {list(POLICIES)}, got {cfg!r}")
        cfg = AugmentConfig(policy=cfg)
    spec = POLICIES[cfg.policy]
    changes: dict[str, float] = {
        k: float(getattr(cfg, k)) for k in _OVERRIDES if getattr(cfg, k) is not None
    }
    if spec.num_ops and cfg.rotation is not None:
        changes["shear"] = float(cfg.rotation) / 2
    changes["mixup_alpha"] = float(cfg.mixup_alpha)
    changes["cutmix_alpha"] = float(cfg.cutmix_alpha)
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]
