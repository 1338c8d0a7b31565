"""Mixup and CutMix of a batch, with Beta draws from an explicit generator."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from med_core.data._augment_ops import _bview
from med_core.data._augment_ops import _where

__all__ = ["mix_batch"]


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
