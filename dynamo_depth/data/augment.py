"""Training augmentations of Dynamo-Depth / monodepth2: horizontal flip and colour jitter.

Both are drawn per sample from a generator seeded by (seed, epoch, sha256(key)), so they are
reproducible and independent of rank, worker count and read order. The three frames of a sample
always share the same parameters.

Flip (p = 0.5): images (and their jittered copies) are mirrored left-right. Pixel centres sit at
integer coordinates (OpenCV convention), so column ``u`` moves to ``W - 1 - u`` and the intrinsics
become ``cx' = W - 1 - cx`` and ``skew' = -skew`` (the mirrored image is the exact pinhole image of a
camera with x mirrored). Depth points move on the ORIGINAL width: ``u' = W_orig - 1 - u``.
Poses are NOT changed: a mirror is not a rotation (it changes handedness), so ``poses`` keep the
unflipped world_from_camera and the batch carries ``flipped``; the photometric path uses only
images + K (as monodepth2 does), eval and odometry must use unflipped samples (``augment=False``).

Colour jitter (p = 0.5), applied to ``images_aug`` only (the copy the networks see; the loss uses
the originals), in the fixed order brightness, contrast, saturation, hue, each clipped to [0, 1]:
``x*b``; ``c*x + (1-c)*mean(gray)``; ``s*x + (1-s)*gray``; hue rotated by ``h`` turns in HSV;
``b, c, s ~ U(0.8, 1.2)``, ``h ~ U(-0.1, 0.1)``; gray = 0.299 R + 0.587 G + 0.114 B.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["AugmentParams", "augment_params", "color_jitter", "flip_sample", "rotate_hue"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class AugmentParams:
    """One sample's augmentation draw."""

    flip: bool
    jitter: bool
    brightness: float
    contrast: float
    saturation: float
    hue: float


def augment_params(key: str, *, seed: int, epoch: int) -> AugmentParams:
    """The draw for sample ``key`` in ``epoch`` (all six values are always drawn, in a fixed order)."""
    key_word = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, key_word]))
    flip, jitter = rng.random(2) < 0.5
    b, c, s = rng.uniform(0.8, 1.2, size=3)
    h = rng.uniform(-0.1, 0.1)
    return AugmentParams(bool(flip), bool(jitter), float(b), float(c), float(s), float(h))


def _gray(images: np.ndarray) -> np.ndarray:
    """(..., 1, H, W) luma of (..., 3, H, W) RGB."""
    r, g, b = images[..., 0:1, :, :], images[..., 1:2, :, :], images[..., 2:3, :, :]
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def rotate_hue(images: np.ndarray, hue: float) -> np.ndarray:
    """(..., 3, H, W) float32 RGB in [0, 1] with the HSV hue of every pixel turned by ``hue`` turns (OpenCV)."""
    import cv2

    flat = images.reshape(-1, *images.shape[-3:])
    out = np.empty_like(flat)
    for i, frame in enumerate(flat):
        hsv = cv2.cvtColor(np.ascontiguousarray(frame.transpose(1, 2, 0), dtype=np.float32), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + np.float32(360.0 * hue)) % np.float32(360.0)  # OpenCV float hue: degrees
        out[i] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).transpose(2, 0, 1)
    return out.reshape(images.shape)


def color_jitter(images: np.ndarray, *, brightness: float, contrast: float, saturation: float,
                 hue: float) -> np.ndarray:
    """Jitter (..., 3, H, W) float RGB in [0, 1] with the same parameters for every image; returns a new array."""
    out = np.multiply(images, np.float32(brightness), dtype=np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    mean = _gray(out).mean(axis=(-2, -1), keepdims=True)
    out *= np.float32(contrast)
    out += np.float32(1.0 - contrast) * mean
    np.clip(out, 0.0, 1.0, out=out)
    gray = _gray(out)
    out *= np.float32(saturation)
    out += np.float32(1.0 - saturation) * gray
    np.clip(out, 0.0, 1.0, out=out)
    if hue != 0.0:
        out = np.clip(rotate_hue(out, hue), 0.0, 1.0)
    return out.astype(images.dtype, copy=False)


def flip_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Mirror a decoded sample left-right (images, images_aug, K, depth u); see the module docstring."""
    out = dict(sample)
    width = sample["images"].shape[-1]
    out["images"] = np.ascontiguousarray(sample["images"][..., ::-1])
    if "images_aug" in sample:
        out["images_aug"] = np.ascontiguousarray(sample["images_aug"][..., ::-1])
    K = np.array(sample["K"], dtype=np.float64)
    K[0, 2] = width - 1 - K[0, 2]
    K[0, 1] = -K[0, 1]
    out["K"] = K
    depth = np.array(sample["depth_points"], dtype=np.float32)
    depth[:, 0] = np.float32(sample["original_size"][1] - 1) - depth[:, 0]
    out["depth_points"] = depth
    out["flipped"] = not sample.get("flipped", False)
    return out


def augment_sample(sample: dict[str, Any], *, seed: int, epoch: int) -> dict[str, Any]:
    """Apply the (seed, epoch, key) draw to a decoded sample: sets ``images_aug`` and maybe flips."""
    params = augment_params(sample["__key__"], seed=seed, epoch=epoch)
    out = dict(sample)
    if params.jitter:
        out["images_aug"] = color_jitter(sample["images"], brightness=params.brightness,
                                         contrast=params.contrast, saturation=params.saturation, hue=params.hue)
    else:
        out["images_aug"] = sample["images"]
    return flip_sample(out) if params.flip else out
