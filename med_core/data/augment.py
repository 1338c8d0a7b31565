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

from med_core.data._augment_batch import AugmentParams as AugmentParams
from med_core.data._augment_batch import BatchAugment as BatchAugment
from med_core.data._augment_batch import build_augment as build_augment
from med_core.data._augment_ops import add_noise as add_noise
from med_core.data._augment_ops import adjust_brightness as adjust_brightness
from med_core.data._augment_ops import adjust_contrast as adjust_contrast
from med_core.data._augment_ops import adjust_gamma as adjust_gamma
from med_core.data._augment_ops import adjust_sharpness as adjust_sharpness
from med_core.data._augment_ops import autocontrast as autocontrast
from med_core.data._augment_ops import equalize as equalize
from med_core.data._augment_policy import GEOMETRIC_OPS as GEOMETRIC_OPS
from med_core.data._augment_policy import INTENSITY_OPS as INTENSITY_OPS
from med_core.data._augment_policy import POLICIES as POLICIES
from med_core.data._augment_policy import AugmentSpec as AugmentSpec
from med_core.data._augment_policy import resolve_policy as resolve_policy
from med_core.data._mix import mix_batch as mix_batch

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
