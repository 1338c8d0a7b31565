"""Batched kernels of the augmentation: affine-matrix helpers and the intensity ops
(per-sample factors, no host synchronisation; see :mod:`med_core.data.augment`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "add_noise",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_gamma",
    "adjust_sharpness",
    "autocontrast",
    "equalize",
]


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
