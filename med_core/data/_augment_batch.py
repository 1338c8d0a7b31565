"""The augmentation module: per-sample parameters drawn from a generator, composed into
one affine resample and the intensity ops of a batch (see :mod:`med_core.data.augment`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from med_core.config import AugmentConfig
from med_core.data._augment_ops import _affine_theta
from med_core.data._augment_ops import _resample
from med_core.data._augment_ops import _sym
from med_core.data._augment_ops import _where
from med_core.data._augment_ops import add_noise
from med_core.data._augment_ops import adjust_brightness
from med_core.data._augment_ops import adjust_contrast
from med_core.data._augment_ops import adjust_gamma
from med_core.data._augment_ops import adjust_sharpness
from med_core.data._augment_ops import autocontrast
from med_core.data._augment_ops import equalize
from med_core.data._augment_policy import GEOMETRIC_OPS
from med_core.data._augment_policy import AugmentSpec
from med_core.data._augment_policy import resolve_policy

__all__ = ["AugmentParams", "BatchAugment", "build_augment"]

_logger = logging.getLogger("med_core.data.augment")


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters of one draw (any field may be ``None`` = op off).

    ``theta`` is the ``affine_grid`` matrix (all geometric ops and flips); ``hflip`` and
    ``vflip`` are used only when there is no affine part. Factors are per sample; the
    ``autocontrast``/``equalize`` fields are per-sample masks. Index with a slice to get
    the parameters of a sub-batch.
    """

    n: int
    theta: Tensor | None = None
    hflip: Tensor | None = None
    vflip: Tensor | None = None
    brightness: Tensor | None = None
    contrast: Tensor | None = None
    gamma: Tensor | None = None
    sharpness: Tensor | None = None
    autocontrast: Tensor | None = None
    equalize: Tensor | None = None
    noise_std: Tensor | None = None

    def __getitem__(self, sl: slice) -> AugmentParams:
        start, stop, _ = sl.indices(self.n)
        return AugmentParams(
            max(0, stop - start),
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[sl]
                for f in dataclasses.fields(self)
                if f.name != "n"
            },
        )


class BatchAugment:
    """Applies an :class:`AugmentSpec` to batches; see the module docstring for semantics.

    ``aug(x, generator)`` draws the parameters of the batch and applies them. A loader can
    instead draw the parameters of a whole epoch at once with :meth:`sample` and apply
    slices of them with :meth:`apply`; the result is the same function of the generator
    state, and the per-batch work shrinks to the resampling and a few pointwise kernels.

    Args:
        spec: The resolved policy (:func:`resolve_policy`).
        spatial_dims: 2 for ``(B, C, H, W)``, 3 for ``(B, C, D, H, W)``.
        binary: Binary masks: drop intensity ops and resample with ``nearest``.
        interpolation: ``"bilinear"`` or ``"nearest"``; ``None`` picks by ``binary``.

    Example:
        >>> aug = build_augment("light")
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(4, 1, 28, 28, generator=g)
        >>> y = aug(x, g)
        >>> y.shape, y.dtype, bool(y.min() >= 0 and y.max() <= 1)
        (torch.Size([4, 1, 28, 28]), torch.float32, True)
    """

    def __init__(
        self,
        spec: AugmentSpec,
        *,
        spatial_dims: int = 2,
        binary: bool = False,
        interpolation: str | None = None,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if interpolation not in (None, "bilinear", "nearest"):
            raise ValueError(
                f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}"
            )
        if binary:
            dropped = {
                k: getattr(spec, k)
                for k in ("brightness", "contrast", "gamma", "sharpness", "noise_std")
            }
            if not spec.num_ops and any(v > 0 for v in dropped.values()):
                _logger.info("binary masks: intensity augmentation %s is not applied", dropped)
            spec = dataclasses.replace(
                spec, brightness=0.0, contrast=0.0, gamma=0.0, sharpness=0.0, noise_std=0.0
            )
        self.spec = spec
        self.spatial_dims = spatial_dims
        self.binary = binary
        self.mode = interpolation or ("nearest" if binary else "bilinear")
        self.ops = self._op_list() if spec.num_ops else ()

    # The op set of randaugment/trivialaugment: identity plus every op with a maximum > 0.
    def _op_list(self) -> tuple[str, ...]:
        s = self.spec
        maxima = {
            "rotate": s.rotation,
            "shear_x": s.shear,
            "shear_y": s.shear,
            "translate_x": s.translate,
            "translate_y": s.translate,
            "zoom": s.scale,
            "brightness": s.brightness,
            "contrast": s.contrast,
            "gamma": s.gamma,
            "sharpness": s.sharpness,
            "autocontrast": 0.0 if self.binary else 1.0,
            "equalize": 0.0 if self.binary else 1.0,
            "noise": s.noise_std,
        }
        return ("identity",) + tuple(k for k, v in maxima.items() if v > 0)

    @property
    def is_identity(self) -> bool:
        """``True`` when this augmentation never changes its input."""
        s = self.spec
        if s.num_ops:
            return len(self.ops) == 1 and s.hflip == 0 and s.vflip == 0
        return not any(
            getattr(s, k) > 0
            for k in (
                "hflip", "vflip", "rotation", "scale", "translate", "shear",
                "brightness", "contrast", "gamma", "sharpness", "noise_std",
            )
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"BatchAugment({self.spec}, spatial_dims={self.spatial_dims}, "
            f"binary={self.binary}, mode={self.mode!r})"
        )

    def _check(self, x: Tensor) -> None:
        if not x.is_floating_point():
            raise TypeError(f"augmentation needs a float tensor in [0, 1], got {x.dtype}")
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"expected a batch of {self.spatial_dims}-D samples with "
                f"{self.spatial_dims + 2} dims, got shape {tuple(x.shape)}"
            )

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augments a batch (see the module docstring for the input contract)."""
        self._check(x)
        if self.is_identity or x.shape[0] == 0:
            return x
        params = self.sample(x.shape[0], generator, spatial_size=tuple(x.shape[2:]),
                             device=x.device)  # fmt: skip
        return self.apply(x, params, generator)

    # ------------------------------------------------------------------ parameters
    def sample(
        self,
        n: int,
        generator: torch.Generator,
        *,
        spatial_size: tuple[int, ...],
        device: torch.device | str,
    ) -> AugmentParams:
        """Draws the parameters of ``n`` samples of spatial size ``spatial_size``.

        One ``torch.rand`` call on ``device`` supplies every scalar, so the layout of the
        generator stream is fixed by the policy and ``n``.
        """
        if len(spatial_size) != self.spatial_dims:
            raise ValueError(f"spatial_size {spatial_size!r} is not {self.spatial_dims}-D")
        if self.is_identity or n == 0:
            return AugmentParams(n)
        if self.spec.num_ops:
            return self._sample_ops(n, generator, spatial_size, torch.device(device))
        return self._sample_classic(n, generator, spatial_size, torch.device(device))

    def _sample_classic(
        self, b: int, g: torch.Generator, size: tuple[int, ...], dev: torch.device
    ) -> AugmentParams:
        s, n = self.spec, self.spatial_dims
        u = torch.rand(b, 16, generator=g, device=dev)
        fx = u[:, 0] < s.hflip
        fy = u[:, 1] < s.vflip
        theta = None
        if s.rotation > 0 or s.scale > 0 or s.translate > 0 or s.shear > 0:
            deg = math.radians(s.rotation)
            ang = _sym(u[:, 2:5]) * torch.tensor([deg, deg / 2, deg / 2], device=dev)
            zoom = 1 + _sym(u[:, 5]) * s.scale
            shear = _sym(u[:, 6:8]) * math.tan(math.radians(s.shear))
            shift = _sym(u[:, 8 : 8 + n]) * (2 * s.translate)
            theta = _affine_theta(
                n=n, sizes=tuple(reversed(size)), flip=_flip_signs(fx, fy, n), angles=ang,
                zoom=zoom, shear=shear, shift=shift,
            )  # fmt: skip
        return AugmentParams(
            b,
            theta=theta,
            hflip=fx if theta is None and s.hflip > 0 else None,
            vflip=fy if theta is None and s.vflip > 0 else None,
            brightness=1 + _sym(u[:, 11]) * s.brightness if s.brightness > 0 else None,
            contrast=1 + _sym(u[:, 12]) * s.contrast if s.contrast > 0 else None,
            gamma=torch.exp(_sym(u[:, 13]) * s.gamma) if s.gamma > 0 else None,
            sharpness=1 + _sym(u[:, 14]) * s.sharpness if s.sharpness > 0 else None,
            noise_std=u[:, 15] * s.noise_std if s.noise_std > 0 else None,
        )

    def _sample_ops(
        self, b: int, g: torch.Generator, size: tuple[int, ...], dev: torch.device
    ) -> AugmentParams:
        """randaugment/trivialaugment: ``num_ops`` ops per sample, merged per op type.

        Ops chosen in several layers combine (angles, shears, shifts and log-zooms add;
        brightness, contrast and sharpness factors multiply; log-gammas add; noise
        variances add), and the merged ops run in a fixed order: affine, brightness,
        contrast, gamma, sharpness, autocontrast, equalize, noise. Each op then runs once
        per batch instead of once per layer.
        """
        s, n, k, ops = self.spec, self.spatial_dims, self.spec.num_ops, self.ops
        u = torch.rand(b, 2 + 3 * k, generator=g, device=dev)
        fx, fy = u[:, 0] < s.hflip, u[:, 1] < s.vflip
        choice = (u[:, 2 : 2 + k] * len(ops)).long().clamp_(max=len(ops) - 1)  # (B, k)
        if s.magnitude is None:
            mag = u[:, 2 + k : 2 + 2 * k]
        else:
            mag = torch.full_like(u[:, :k], s.magnitude)
        signed = torch.where(u[:, 2 + 2 * k :] < 0.5, -mag, mag)
        zeros = torch.zeros(b, device=dev)

        def amount(op: str) -> Tensor:
            """Sum over layers of the signed magnitude of ``op`` ((B,), 0 where not chosen)."""
            return (signed * (choice == ops.index(op))).sum(1) if op in ops else zeros

        def chosen(op: str) -> Tensor | None:
            return (choice == ops.index(op)).any(1) if op in ops else None

        theta = None
        if any(op in ops for op in GEOMETRIC_OPS):
            rot = amount("rotate") * math.radians(s.rotation)
            tan = math.tan(math.radians(s.shear))
            shift = torch.zeros(b, n, device=dev)
            shift[:, 0] = amount("translate_x") * (2 * s.translate)
            shift[:, 1] = amount("translate_y") * (2 * s.translate)
            theta = _affine_theta(
                n=n,
                sizes=tuple(reversed(size)),
                flip=_flip_signs(fx, fy, n),
                angles=torch.stack([rot, zeros, zeros], 1),  # in-plane only
                zoom=torch.exp(amount("zoom") * math.log1p(s.scale)),
                shear=torch.stack([amount("shear_x") * tan, amount("shear_y") * tan], 1),
                shift=shift,
            )

        def factor(op: str, scale: float) -> Tensor | None:
            if op not in ops:
                return None
            sel = choice == ops.index(op)
            return torch.where(sel, 1 + signed * scale, 1.0).prod(1)

        noise = None
        if "noise" in ops:
            sel = choice == ops.index("noise")
            noise = ((signed * s.noise_std).square() * sel).sum(1).sqrt()
        return AugmentParams(
            b,
            theta=theta,
            hflip=fx if theta is None and s.hflip > 0 else None,
            vflip=fy if theta is None and s.vflip > 0 else None,
            brightness=factor("brightness", s.brightness),
            contrast=factor("contrast", s.contrast),
            gamma=torch.exp(amount("gamma") * s.gamma) if "gamma" in ops else None,
            sharpness=factor("sharpness", s.sharpness),
            autocontrast=chosen("autocontrast"),
            equalize=chosen("equalize"),
            noise_std=noise,
        )

    # ------------------------------------------------------------------ application
    def apply(self, x: Tensor, params: AugmentParams, generator: torch.Generator) -> Tensor:
        """Applies drawn parameters to a batch (``generator`` feeds the noise only)."""
        self._check(x)
        if params.n != x.shape[0]:
            raise ValueError(f"parameters for {params.n} samples, batch of {x.shape[0]}")
        p = params
        if p.theta is not None:
            x = _resample(x, p.theta, self.mode).clamp_(0, 1)
        if p.hflip is not None:
            x = _where(p.hflip, x.flip(-1), x)
        if p.vflip is not None:
            x = _where(p.vflip, x.flip(-2), x)
        if p.brightness is not None:
            x = adjust_brightness(x, p.brightness)
        if p.contrast is not None:
            x = adjust_contrast(x, p.contrast)
        if p.gamma is not None:
            x = adjust_gamma(x, p.gamma)
        if p.sharpness is not None:
            x = adjust_sharpness(x, p.sharpness)
        if p.autocontrast is not None:
            x = _where(p.autocontrast, autocontrast(x), x)
        if p.equalize is not None:
            x = _where(p.equalize, equalize(x), x)
        if p.noise_std is not None:
            x = add_noise(x, p.noise_std, generator)
        return x


def _flip_signs(fx: Tensor, fy: Tensor, n: int) -> Tensor:
    """±1 per grid axis (x=W, y=H[, z=D]) from the flip decisions."""
    ones = torch.ones_like(fx, dtype=torch.float32)
    cols = [1 - 2 * fx.float(), 1 - 2 * fy.float()] + [ones] * (n - 2)
    return torch.stack(cols, 1)


def build_augment(
    cfg: AugmentConfig | AugmentSpec | str | None,
    *,
    spatial_dims: int = 2,
    binary: bool = False,
    interpolation: str | None = None,
) -> BatchAugment:
    """A :class:`BatchAugment` for a config, a spec or a policy name (``None`` = no-op).

    Example:
        >>> build_augment(AugmentConfig(policy="none")).is_identity
        True
    """
    spec = cfg if isinstance(cfg, AugmentSpec) else resolve_policy(cfg)
    return BatchAugment(spec, spatial_dims=spatial_dims, binary=binary, interpolation=interpolation)
