"""Batched augmentation: invariants of every policy, each op's effect, determinism, mixing."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from med_core.config import AUGMENT_POLICIES
from med_core.config import AugmentConfig
from med_core.data import _augment_ops
from med_core.data import _mix
from med_core.data import augment as A
from med_core.data.augment import BatchAugment
from med_core.data.augment import build_augment
from med_core.data.augment import mix_batch
from med_core.data.augment import resolve_policy

KINDS = {
    "grey2d": ((8, 1, 20, 24), 2, False),
    "rgb2d": ((8, 3, 20, 20), 2, False),
    "vol3d": ((4, 1, 10, 12, 14), 3, False),
    "mask3d": ((4, 1, 12, 12, 12), 3, True),
}


def _batch(kind: str, seed: int = 0) -> torch.Tensor:
    shape, _, binary = KINDS[kind]
    g = torch.Generator().manual_seed(seed)
    if binary:  # a solid off-centre block: a binary shape mask
        x = torch.zeros(shape)
        x[..., 2:9, 3:8, 4:10] = 1.0
        return x
    # smooth-ish content in [0.1, 0.9] so intensity ops have room in both directions
    x = torch.rand(shape, generator=g)
    return 0.1 + 0.8 * x


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("policy", AUGMENT_POLICIES)
def test_policy_keeps_shape_dtype_range_and_is_deterministic(policy, kind):
    shape, dims, binary = KINDS[kind]
    x = _batch(kind)
    aug = build_augment(policy, spatial_dims=dims, binary=binary)
    x_in = x.clone()
    y = aug(x_in, _gen(1))
    assert torch.equal(x_in, x)  # the input is never modified in place
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.min() >= 0 and y.max() <= 1
    assert torch.isfinite(y).all()
    if policy == "none":
        assert torch.equal(y, x)
    else:
        assert not torch.equal(y, x), f"{policy} left the batch unchanged"
    assert torch.equal(aug(x.clone(), _gen(1)), y)  # same seed → same output
    if policy != "none":
        assert not torch.equal(aug(x.clone(), _gen(2)), y)
    if binary:  # masks stay binary: nearest resampling, no intensity ops
        assert set(torch.unique(y).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_float_dtypes_kept(dtype):
    x = _batch("grey2d").to(dtype)
    y = build_augment("medium")(x, _gen())
    assert y.dtype == dtype and y.shape == x.shape


def test_no_global_rng_side_effects():
    state = torch.get_rng_state()
    for policy in AUGMENT_POLICIES:
        build_augment(policy)(_batch("grey2d"), _gen())
    mix_batch(
        _batch("grey2d"),
        torch.eye(2)[torch.arange(8) % 2],
        mixup_alpha=0.4,
        cutmix_alpha=1.0,
        generator=_gen(),
    )
    assert torch.equal(torch.get_rng_state(), state)


PARAMETRIC = [
    "hflip",
    "vflip",
    "rotation",
    "scale",
    "translate",
    "brightness",
    "contrast",
    "noise_std",
]


@pytest.mark.parametrize("kind", ["grey2d", "rgb2d", "vol3d"])
@pytest.mark.parametrize("field", PARAMETRIC)
def test_each_parametric_field_changes_input_only_when_positive(field, kind):
    _, dims, _ = KINDS[kind]
    x = _batch(kind)
    on = build_augment(
        AugmentConfig(policy="none", **{field: 1.0 if "flip" in field else 0.3}), spatial_dims=dims
    )
    y = on(x.clone(), _gen())
    assert not torch.equal(y, x), f"{field} > 0 did nothing"
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    off = build_augment(
        AugmentConfig(policy="heavy", **{k: 0.0 for k in PARAMETRIC}), spatial_dims=dims
    )
    assert not off.is_identity  # heavy still has gamma
    off = BatchAugment(dataclasses.replace(off.spec, gamma=0.0), spatial_dims=dims)
    assert off.is_identity and torch.equal(off(x.clone(), _gen()), x)
    zero = build_augment(AugmentConfig(policy="none", **{field: 0.0}), spatial_dims=dims)
    assert torch.equal(zero(x.clone(), _gen()), x)


def test_flip_probability_one_is_exact_flip():
    x = _batch("grey2d")
    y = build_augment(AugmentConfig(policy="none", hflip=1.0))(x, _gen())
    assert torch.equal(y, x.flip(-1))
    y = build_augment(AugmentConfig(policy="none", vflip=1.0))(x, _gen())
    assert torch.equal(y, x.flip(-2))
    # folded into the affine transform (rotation present) the flip is still exact at 0°
    spec = dataclasses.replace(
        resolve_policy(AugmentConfig(policy="none", hflip=1.0)), rotation=1e-9
    )
    assert torch.allclose(BatchAugment(spec)(x, _gen()), x.flip(-1), atol=1e-5)


def test_overrides_replace_policy_numbers():
    spec = resolve_policy(
        AugmentConfig(policy="light", rotation=42.0, noise_std=0.1, mixup_alpha=0.2)
    )
    assert (spec.rotation, spec.noise_std, spec.mixup_alpha) == (42.0, 0.1, 0.2)
    assert spec.scale == A.POLICIES["light"].scale
    ra = resolve_policy(AugmentConfig(policy="randaugment", rotation=0.0, brightness=0.0))
    ops = BatchAugment(ra).ops
    assert "rotate" not in ops and "shear_x" not in ops and "brightness" not in ops
    assert "contrast" in ops and ops[0] == "identity"


def test_binary_drops_intensity_ops_and_uses_nearest():
    aug = build_augment("heavy", spatial_dims=3, binary=True)
    assert aug.mode == "nearest" and aug.spec.brightness == 0 and aug.spec.noise_std == 0
    ta = build_augment("trivialaugment", spatial_dims=3, binary=True)
    assert set(ta.ops) <= {"identity", *A.GEOMETRIC_OPS}


_OP_FIELD = {
    "rotate": "rotation",
    "shear_x": "shear",
    "shear_y": "shear",
    "translate_x": "translate",
    "translate_y": "translate",
    "zoom": "scale",
    "brightness": "brightness",
    "contrast": "contrast",
    "gamma": "gamma",
    "sharpness": "sharpness",
    "noise": "noise_std",
}


def _single_op(op: str, magnitude: float | None) -> BatchAugment:
    """randaugment (3 layers, no flip) whose op set is exactly ``identity`` and ``op``."""
    ra = A.POLICIES["randaugment"]
    fields = {f: 0.0 for f in set(_OP_FIELD.values())}
    if op in _OP_FIELD:
        fields[_OP_FIELD[op]] = getattr(ra, _OP_FIELD[op])
    spec = dataclasses.replace(ra, hflip=0.0, magnitude=magnitude, num_ops=3, **fields)
    aug = BatchAugment(spec)
    aug.ops = ("identity", op)  # also drops the parameter-free autocontrast/equalize
    return aug


@pytest.mark.parametrize("op", A.GEOMETRIC_OPS + A.INTENSITY_OPS)
def test_each_randaugment_op_changes_input_and_is_neutral_at_zero(op):
    x = _batch("grey2d")
    x[:, :, :, :3] = 0.5  # a constant band: low-contrast images for autocontrast
    y = _single_op(op, magnitude=1.0)(x.clone(), _gen(3))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    changed = (y != x).flatten(1).any(1)
    assert 0 < int(changed.sum()) <= len(x), f"{op} changed nothing"
    if op not in ("autocontrast", "equalize"):  # these two have no strength
        y0 = _single_op(op, magnitude=0.0)(x.clone(), _gen(3))
        assert torch.allclose(y0, x, atol=1e-5), f"{op} at magnitude 0 changed the input"


@pytest.mark.parametrize(
    ("fn", "neutral"),
    [
        (A.adjust_brightness, 1.0),
        (A.adjust_contrast, 1.0),
        (A.adjust_gamma, 1.0),
        (A.adjust_sharpness, 1.0),
    ],
)
def test_intensity_op_neutral_and_active(fn, neutral):
    x = _batch("grey2d")
    assert torch.allclose(fn(x.clone(), torch.full((8,), neutral)), x, atol=1e-6)
    assert not torch.allclose(fn(x.clone(), torch.full((8,), neutral + 0.5)), x, atol=1e-3)
    # per-sample: only sample 0 gets a non-neutral factor
    f = torch.full((8,), neutral)
    f[0] = neutral + 0.5
    y = fn(x.clone(), f)
    assert not torch.allclose(y[0], x[0], atol=1e-3) and torch.allclose(y[1:], x[1:], atol=1e-6)


def test_noise_zero_std_is_identity():
    x = _batch("vol3d")
    assert torch.equal(A.add_noise(x.clone(), torch.zeros(4), _gen()), x)
    assert not torch.equal(A.add_noise(x.clone(), torch.full((4,), 0.1), _gen()), x)


def test_autocontrast_and_equalize_per_volume():
    x = _batch("vol3d") * 0.5  # values in [0.05, 0.45]
    y = A.autocontrast(x)
    assert torch.allclose(y.flatten(1).amin(1), torch.zeros(4)) and torch.allclose(
        y.flatten(1).amax(1), torch.ones(4)
    )
    const = torch.full((2, 1, 4, 4), 0.3)
    assert torch.equal(A.autocontrast(const), const)
    e = A.equalize(x)
    assert e.shape == x.shape and e.max() > x.max()


@pytest.mark.parametrize(("axis", "dims"), [(0, (3, 4)), (1, (2, 3)), (2, (2, 4))])
def test_3d_affine_axes(axis, dims):
    """Angle 0 is the in-plane (H-W) rotation about the depth axis; 1 and 2 are the tilts."""
    x = torch.rand(1, 1, 6, 6, 6, generator=_gen())
    angles = torch.zeros(1, 3)
    angles[0, axis] = math.pi / 2
    theta = _augment_ops._affine_theta(
        n=3,
        sizes=(6, 6, 6),
        flip=torch.ones(1, 3),
        angles=angles,
        zoom=torch.ones(1),
        shear=torch.zeros(1, 2),
        shift=torch.zeros(1, 3),
    )
    y = _augment_ops._resample(x, theta, "bilinear")
    assert any(torch.allclose(y, torch.rot90(x, k, dims), atol=1e-5) for k in (1, -1))


def test_2d_affine_matches_pixel_geometry_on_non_square_images():
    x = torch.rand(1, 1, 6, 10, generator=_gen())
    theta = _augment_ops._affine_theta(
        n=2,
        sizes=(10, 6),
        flip=torch.ones(1, 2),
        angles=torch.zeros(1, 3),
        zoom=torch.ones(1),
        shear=torch.zeros(1, 2),
        shift=torch.tensor([[2 / 10, 0.0]]),
    )
    y = _augment_ops._resample(x, theta, "bilinear")  # one pixel to the right
    assert torch.allclose(y[..., 1:], x[..., :-1], atol=1e-5)
    sq = torch.rand(1, 1, 8, 8, generator=_gen())
    theta = _augment_ops._affine_theta(
        n=2,
        sizes=(8, 8),
        flip=torch.ones(1, 2),
        angles=torch.tensor([[math.pi / 2, 0.0, 0.0]]),
        zoom=torch.ones(1),
        shear=torch.zeros(1, 2),
        shift=torch.zeros(1, 2),
    )
    assert torch.allclose(
        _augment_ops._resample(sq, theta, "bilinear"), torch.rot90(sq, -1, (2, 3)), atol=1e-5
    )


# ----------------------------------------------------------------------- mix_batch


@pytest.mark.parametrize("kind", ["grey2d", "rgb2d", "vol3d"])
@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mix_batch(kind, mixup, cutmix):
    x = _batch(kind)
    b = x.shape[0]
    y = torch.eye(b)  # every sample its own class, so ym[i, i] is its kept share
    xm, ym = mix_batch(x, y, mixup_alpha=mixup, cutmix_alpha=cutmix, generator=_gen())
    assert xm.shape == x.shape and xm.dtype == x.dtype and ym.shape == y.shape
    assert xm.min() >= x.min() - 1e-6 and xm.max() <= x.max() + 1e-6
    assert torch.allclose(ym.sum(1), torch.ones(b))
    assert not torch.equal(xm, x)
    lam = ym.diagonal()
    assert ((lam >= 0) & (lam <= 1)).all()
    xm2, ym2 = mix_batch(x, y, mixup_alpha=mixup, cutmix_alpha=cutmix, generator=_gen())
    assert torch.equal(xm, xm2) and torch.equal(ym, ym2)
    if mixup == 0:  # pure cutmix: every pixel is from the sample or its partner
        partner = x.flip(0)
        assert ((xm == x) | (xm == partner)).all()
        kept = (xm == x).flatten(1).float().mean(1)
        own = ym.diagonal()
        differs = (x != partner).flatten(1).all(1)
        assert torch.allclose(kept[differs], own[differs], atol=1e-6)


def test_mix_batch_off_and_multilabel():
    x = _batch("grey2d")
    y = (torch.rand(8, 5, generator=_gen()) > 0.5).float()
    assert mix_batch(x, y, mixup_alpha=0.0, cutmix_alpha=0.0, generator=_gen()) == (x, y)
    _, ym = mix_batch(x, y, mixup_alpha=1.0, cutmix_alpha=0.0, generator=_gen())
    assert ym.shape == y.shape and ym.min() >= 0 and ym.max() <= 1


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_beta_sampler_moments(alpha):
    s = _mix._sample_beta(alpha, 40000, _gen(), torch.device("cpu"))
    assert abs(s.mean().item() - 0.5) < 0.01
    assert abs(s.var().item() - 1 / (4 * (2 * alpha + 1))) < 0.01
    assert s.min() >= 0 and s.max() <= 1


def test_bad_arguments():
    with pytest.raises(TypeError, match="float tensor"):
        build_augment("light")(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), _gen())
    with pytest.raises(ValueError, match="3-D samples"):
        build_augment("light", spatial_dims=3)(torch.zeros(2, 1, 8, 8), _gen())
    with pytest.raises(ValueError, match="policy must be one of"):
        resolve_policy("extreme")
    with pytest.raises(ValueError, match="y_onehot"):
        mix_batch(
            torch.zeros(2, 1, 4, 4),
            torch.zeros(3, 2),
            mixup_alpha=1.0,
            cutmix_alpha=0.0,
            generator=_gen(),
        )


@pytest.mark.parametrize("policy", ["light", "heavy", "randaugment"])
def test_epoch_parameters_applied_in_slices_match_one_batch(policy):
    """What the loaders do (draw an epoch's parameters, apply slices) equals one call."""
    x = _batch("grey2d")
    aug = build_augment(AugmentConfig(policy=policy, noise_std=0.0))
    params = aug.sample(8, _gen(4), spatial_size=(20, 24), device="cpu")
    whole = aug.apply(x, params, _gen(5))
    parts = torch.cat(
        [aug.apply(x[:3], params[:3], _gen(5)), aug.apply(x[3:], params[3:], _gen(5))]
    )
    assert torch.allclose(whole, parts, atol=1e-6)
    assert torch.equal(
        aug(x, _gen(4)),
        aug.apply(x, aug.sample(8, _gen(4), spatial_size=(20, 24), device="cpu"), _gen(4)),
    )
    with pytest.raises(ValueError, match="parameters for 3 samples"):
        aug.apply(x, params[:3], _gen())
