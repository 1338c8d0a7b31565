"""Batched, on-device augmentation for 2-D images and 3-D volumes.

Every op works on a whole batch with per-sample random parameters drawn from an explicit
``torch.Generator``; there is no per-image Python loop and no host synchronisation, so
the tensor-resident loader can augment on the GPU at the speed of a few kernel launches.

Input contract: ``x`` is a floating-point tensor of shape ``(B, C, H, W)`` or
``(B, C, D, H, W)`` with values in ``[0, 1]`` (i.e. ``uint8 / 255``, *before*
normalisation). The output has the same shape, dtype and device, with values in
``[0, 1]``. The loader normalises afterwards (``(x - 0.5) / 0.5``).

Policies (see :data:`POLICIES`; numbers are maxima, each sample draws its own value):

=============== ===== ===== ======== ===== ========= ========== ======== ===== =====
policy          hflip vflip rotation scale translate brightness contrast gamma noise
=============== ===== ===== ======== ===== ========= ========== ======== ===== =====
none            0     0     0        0     0         0          0        0     0
light           0.5   0     10       0.10  0.05      0.10       0.10     0     0
medium          0.5   0     15       0.15  0.10      0.20       0.20     0.20  0.02
heavy           0.5   0     25       0.25  0.15      0.30       0.30     0.30  0.05
=============== ===== ===== ======== ===== ========= ========== ======== ===== =====

``randaugment`` applies ``N = 2`` ops at magnitude ``M = 0.3`` (RandAugment's 9 of 30)
with a random sign, and ``trivialaugment`` one op at a magnitude drawn uniformly per
sample; both after a horizontal flip with probability 0.5. Their op set is built for
grey-scale ultrasound, X-ray and CT (no colour, solarize or posterize):
``identity, rotate, shear_x, shear_y, translate_x, translate_y, zoom`` (geometric) and
``brightness, contrast, gamma, sharpness, autocontrast, equalize, noise`` (intensity).
An :class:`AugmentConfig` field that is set overrides the policy's number: for the
classic policies the value itself, for randaugment/trivialaugment the maximum of the
matching op (``rotation`` → rotate and half of it for shear, ``scale`` → zoom,
``translate`` → translate_x/y, ``brightness``, ``contrast``, ``noise_std`` → noise,
``hflip``/``vflip`` → the flips before the ops). An op whose maximum is 0 is removed.

Design choices for medical data:

* Vertical flips are off in every policy: ultrasound has the transducer at the top and
  chest X-rays have a fixed up direction. Set ``vflip`` when the modality allows it
  (fundus, histology, volumes).
* Affine ops pad with zeros (black), the background of ultrasound, X-ray and masks.
* ``binary=True`` (binary shape masks such as AdrenalMNIST3D/VesselMNIST3D; the loader
  detects 0/255 data): intensity ops are dropped (they have no meaning on a mask) and
  the affine resampling uses ``nearest`` so the volume stays binary, as the test data
  is. Otherwise resampling is bilinear (trilinear for volumes).
* 3-D: ``hflip``/``vflip`` flip W/H; ``rotation`` is the in-plane angle about the depth
  axis, and the classic policies also tilt the volume about the H and W axes by up to
  half of it (randaugment's ``rotate`` is in-plane only); ``scale`` is isotropic;
  ``translate`` moves in all three axes (randaugment: ``translate_x``/``_y`` in-plane).
* All geometric ops of a sample (flips included) are composed into one affine matrix
  and resampled with a single ``affine_grid``/``grid_sample`` call per batch. In
  randaugment/trivialaugment the geometric ops chosen in the N layers merge into that
  one transform (angles, shears and shifts add, zooms multiply) applied before the
  intensity ops, so a batch is resampled once.

torchvision's batched functional kernels are used where their semantics are per-image
and sync-free: ``equalize`` and the sharpness blur (``adjust_sharpness``). Per-sample
factors (brightness, contrast, gamma, sharpness) are blends written here because the
torchvision kernels take one scalar per call; ``autocontrast`` is written here because
torchvision's version indexes with a boolean mask, which synchronises a CUDA stream.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from med_core.config import AUGMENT_POLICIES
from med_core.config import AugmentConfig

__all__ = [
    "GEOMETRIC_OPS",
    "AugmentParams",
    "INTENSITY_OPS",
    "POLICIES",
    "AugmentSpec",
    "BatchAugment",
    "build_augment",
    "mix_batch",
    "resolve_policy",
]

_logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- helpers


def _bview(v: Tensor, x: Tensor) -> Tensor:
    """A per-sample vector ``(B,)`` shaped to broadcast against ``x``."""
    return v.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def _sym(u: Tensor) -> Tensor:
    """Uniform [0, 1) → uniform [-1, 1)."""
    return u * 2 - 1


def _eye(b: int, n: int, ref: Tensor) -> Tensor:
    return torch.eye(n + 1, device=ref.device, dtype=torch.float32).expand(b, n + 1, n + 1).clone()


def _rot(angle: Tensor, n: int, axes: tuple[int, int], sizes: tuple[int, ...]) -> Tensor:
    """Homogeneous rotation by ``angle`` (radians, (B,)) in the plane of ``axes`` (grid order
    x, y, z = W, H, D), corrected for the aspect ratio of normalised coordinates."""
    a, b = axes
    m = _eye(angle.shape[0], n, angle)
    c, s = torch.cos(angle), torch.sin(angle)
    ra = sizes[b] / sizes[a]  # normalised coordinate scale: pixel = norm * size / 2
    m[:, a, a] = c
    m[:, a, b] = -s * ra
    m[:, b, a] = s / ra
    m[:, b, b] = c
    return m


def _affine_theta(
    *,
    n: int,
    sizes: tuple[int, ...],
    flip: Tensor,
    angles: Tensor,
    zoom: Tensor,
    shear: Tensor,
    shift: Tensor,
) -> Tensor:
    """``theta`` for ``F.affine_grid``: the inverse of (flip → zoom → shear → rotate → shift).

    Shapes: ``flip`` (B, n) of ±1 per axis; ``angles`` (B, 3) (in-plane, tilt_x, tilt_y;
    only the first is used in 2-D) in radians; ``zoom`` (B,); ``shear`` (B, 2) as tangents;
    ``shift`` (B, n) in normalised units. Axis order is the grid's (x=W, y=H, z=D).
    """
    b = zoom.shape[0]
    # Inverse factors in reverse order: theta = Flip · Zoom⁻¹ · Shear⁻¹ · Rot⁻¹ · Shift⁻¹.
    t_inv = _eye(b, n, zoom)
    t_inv[:, :n, n] = -shift
    r_inv = _rot(-angles[:, 0], n, (0, 1), sizes)
    if n == 3:
        r_inv = (
            _rot(-angles[:, 2], n, (0, 2), sizes) @ _rot(-angles[:, 1], n, (1, 2), sizes) @ r_inv
        )
    sh_inv = _eye(b, n, zoom)
    sh_inv[:, 0, 1] = -shear[:, 0] * (sizes[1] / sizes[0])
    sh_inv[:, 1, 0] = -shear[:, 1] * (sizes[0] / sizes[1])
    fz = _eye(b, n, zoom)
    idx = torch.arange(n, device=zoom.device)
    fz[:, idx, idx] = flip / zoom[:, None]
    return (fz @ sh_inv @ r_inv @ t_inv)[:, :n, :]


def _resample(x: Tensor, theta: Tensor, mode: str) -> Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.view(-1, *([1] * (a.ndim - 1))), a, b)


def _flatten_planes(x: Tensor) -> Tensor:
    """``(B, C, [D,] H, W)`` → ``(B*C*[D], 1, H, W)``: 2-D kernels see every plane."""
    return x.reshape(-1, 1, x.shape[-2], x.shape[-1])


# ---------------------------------------------------------------- intensity operations


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``x * factor`` per sample (factor 1 = unchanged), clamped to [0, 1]."""
    return (x * _bview(factor, x)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the sample's mean intensity: ``mean + factor * (x - mean)``, clamped."""
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return (mean + _bview(factor, x) * (x - mean)).clamp_(0, 1)


def adjust_gamma(x: Tensor, gamma: Tensor) -> Tensor:
    """``x ** gamma`` per sample (gamma 1 = unchanged); stays in [0, 1]."""
    return x.clamp(0, 1).pow(_bview(gamma, x))


_SMOOTH_KERNELS: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _smooth_kernel(ref: Tensor) -> Tensor:
    """torchvision's sharpness kernel (3×3, 1s around a 5, /13), cached per device/dtype."""
    key = (ref.device, ref.dtype)
    k = _SMOOTH_KERNELS.get(key)
    if k is None:
        k = torch.ones(3, 3, dtype=ref.dtype)
        k[1, 1] = 5.0
        k = (k / 13.0).view(1, 1, 3, 3).to(ref.device)
        _SMOOTH_KERNELS[key] = k
    return k


def adjust_sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """Sharpness as in torchvision (blend with a 3×3 smoothing; the 1-pixel border is kept)
    with a per-sample factor: 1 = unchanged, < 1 blurs, > 1 sharpens. Volumes are filtered
    slice by slice.

    Written here rather than calling ``torchvision``'s ``adjust_sharpness`` because that
    builds its kernel with ``torch.tensor(list, device=...)`` on every call, a
    synchronising host-to-device copy on CUDA, and takes one factor per call.
    """
    planes = _flatten_planes(x)
    if planes.shape[-1] <= 2 or planes.shape[-2] <= 2:
        return x
    blurred = planes.clone()
    blurred[..., 1:-1, 1:-1] = F.conv2d(planes, _smooth_kernel(planes))
    blurred = blurred.view_as(x)
    return (blurred + _bview(factor, x) * (x - blurred)).clamp_(0, 1)


def autocontrast(x: Tensor) -> Tensor:
    """Stretch each sample's channel to the full [0, 1] range (constant channels unchanged)."""
    flat = x.flatten(2)
    lo = flat.amin(dim=2, keepdim=True)
    hi = flat.amax(dim=2, keepdim=True)
    span = hi - lo
    ok = span > 0
    out = torch.where(ok, (flat - lo) / torch.where(ok, span, torch.ones_like(span)), flat)
    return out.clamp_(0, 1).view_as(x)


def equalize(x: Tensor) -> Tensor:
    """torchvision's histogram equalization per sample and channel (volumes as a whole)."""
    from torchvision.transforms.v2 import functional as TF

    planes = x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1])  # (B, C, [D*]H, W)
    return TF.equalize(planes.clamp(0, 1)).view_as(x)


def add_noise(x: Tensor, std: Tensor, generator: torch.Generator) -> Tensor:
    """Additive Gaussian noise with a per-sample ``std`` (0 = unchanged), clamped."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + noise * _bview(std, x)).clamp_(0, 1)


# ------------------------------------------------------------------------ the module


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


# ----------------------------------------------------------------------- mixup/cutmix


def _sample_gamma(alpha: float, n: int, g: torch.Generator, device: torch.device) -> Tensor:
    """Gamma(alpha, 1) samples drawn with ``g`` (Marsaglia–Tsang, vectorised, sync-free).

    ``torch.distributions`` cannot take a generator. Eight proposals per sample are drawn
    at once and the first accepted one is used (each is accepted with probability > 0.95
    for shape >= 1, so all eight fail with probability < 1e-10; then the mean is used).
    ``alpha < 1`` uses the boost ``Gamma(a) = Gamma(a + 1) * U ** (1 / a)``.
    """
    a = alpha + 1.0 if alpha < 1.0 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    rounds = 8
    z = torch.randn(n, rounds, generator=g, device=device)
    u = torch.rand(n, rounds + 1, generator=g, device=device)
    v = (1 + c * z) ** 3
    ok = (v > 0) & (
        torch.log(u[:, :rounds].clamp_min(1e-30))
        < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-30))
    )
    first = ok.float().argmax(1, keepdim=True)
    sample = torch.where(
        ok.any(1), (d * v).gather(1, first).squeeze(1), torch.full((n,), a, device=device)
    )
    if alpha < 1.0:
        sample = sample * u[:, rounds].clamp_min(1e-30) ** (1.0 / alpha)
    return sample


def _sample_beta(alpha: float, n: int, g: torch.Generator, device: torch.device) -> Tensor:
    x = _sample_gamma(alpha, n, g, device)
    y = _sample_gamma(alpha, n, g, device)
    return x / (x + y).clamp_min(1e-30)


def mix_batch(
    x: Tensor,
    y_onehot: Tensor,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Mixup and/or CutMix with a per-sample mixing ratio; sample ``i`` mixes with ``B-1-i``.

    Each sample draws ``lam ~ Beta(alpha, alpha)``. With both alphas > 0, each sample uses
    cutmix or mixup with probability 0.5. CutMix pastes a box (a cube for volumes) of the
    partner covering ``1 - lam`` of the area and then sets ``lam`` to the exact kept share.
    Labels mix with the same ``lam``. Works on normalised or [0, 1] input, 2-D and 3-D,
    and on multi-label targets. With both alphas 0 it returns its inputs unchanged.

    Args:
        x: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` float batch.
        y_onehot: ``(B, K)`` float targets (one-hot or multi-label).
        mixup_alpha: Beta parameter of mixup; 0 turns it off.
        cutmix_alpha: Beta parameter of cutmix; 0 turns it off.
        generator: Source of all randomness (same device as ``x``).

    Returns:
        ``(x_mixed, y_soft)`` with the input shapes and dtypes.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.rand(4, 1, 8, 8), torch.eye(2)[[0, 1, 1, 0]]
        >>> xm, ym = mix_batch(x, y, mixup_alpha=0.2, cutmix_alpha=0.0, generator=g)
        >>> xm.shape, bool(torch.allclose(ym.sum(1), torch.ones(4)))
        (torch.Size([4, 1, 8, 8]), True)
    """
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"alphas must be >= 0, got {mixup_alpha=}, {cutmix_alpha=}")
    if y_onehot.ndim != 2 or y_onehot.shape[0] != x.shape[0]:
        raise ValueError(
            f"y_onehot must be (B, K) with B={x.shape[0]}, got shape {tuple(y_onehot.shape)}"
        )
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or x.shape[0] == 0:
        return x, y_onehot
    b, dev = x.shape[0], x.device
    xp, yp = x.flip(0), y_onehot.flip(0)
    lam = torch.ones(b, device=dev)
    out = x
    if mixup_alpha > 0:
        lam_mix = _sample_beta(mixup_alpha, b, generator, dev)
        lm = _bview(lam_mix, x)
        x_mix = lm * x + (1 - lm) * xp
    if cutmix_alpha > 0:
        lam_cut = _sample_beta(cutmix_alpha, b, generator, dev)
        spatial = x.shape[2:]
        nd = len(spatial)
        side = (1 - lam_cut).clamp_min(0) ** (1.0 / nd)  # box side as a fraction, per sample
        centre = torch.rand(b, nd, generator=generator, device=dev)
        mask = torch.ones((b, *spatial), dtype=torch.bool, device=dev)
        kept_area = torch.ones(b, device=dev)
        for i, size in enumerate(spatial):
            lo = ((centre[:, i] - side / 2) * size).round().clamp(0, size)
            hi = ((centre[:, i] + side / 2) * size).round().clamp(0, size)
            pos = torch.arange(size, device=dev)
            inside = (pos[None] >= lo[:, None]) & (pos[None] < hi[:, None])  # (B, size)
            shape = [b] + [1] * nd
            shape[1 + i] = size
            mask = mask & inside.view(shape)
            kept_area = kept_area * (hi - lo) / size
        lam_cut = 1 - kept_area
        x_cut = torch.where(mask[:, None], xp, x)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cut = torch.rand(b, generator=generator, device=dev) < 0.5
        out = _where(use_cut, x_cut, x_mix)
        lam = torch.where(use_cut, lam_cut, lam_mix)
    elif mixup_alpha > 0:
        out, lam = x_mix, lam_mix
    else:
        out, lam = x_cut, lam_cut
    ly = lam.to(y_onehot.dtype)[:, None]
    return out.to(x.dtype), ly * y_onehot + (1 - ly) * yp
