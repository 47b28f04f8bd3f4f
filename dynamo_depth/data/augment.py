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

__all__ = ["AugmentParams", "augment_params", "color_jitter", "flip_sample", "hsv_to_rgb", "rgb_to_hsv"]

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
    return np.tensordot(_LUMA, np.moveaxis(images, -3, 0), axes=1)[..., None, :, :]


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(..., 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (hue in turns)."""
    r, g, b = np.moveaxis(rgb, -3, 0)
    maxc, minc = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    delta = maxc - minc
    safe = np.where(delta > 0, delta, 1.0)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = np.where(r == maxc, bc - gc, np.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = np.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
    sat = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1.0), 0.0)
    return np.stack([hue, sat, maxc], axis=-3).astype(rgb.dtype)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """(..., 3, H, W) HSV in [0, 1] -> RGB in [0, 1].

    Channel n in (R, G, B) = v - v*s*clip(min(k, 4 - k), 0, 1) with k = (n' + 6h) mod 6, n' = 5, 3, 1.
    """
    h, s, v = np.moveaxis(hsv, -3, 0)
    chroma = v * s
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = (offset + 6.0 * h) % 6.0
        channels.append(v - chroma * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(channels, axis=-3).astype(hsv.dtype, copy=False)


def color_jitter(images: np.ndarray, *, brightness: float, contrast: float, saturation: float,
                 hue: float) -> np.ndarray:
    """Jitter (..., 3, H, W) float RGB in [0, 1] with the same parameters for every image; returns a new array."""
    out = np.clip(images * np.float32(brightness), 0.0, 1.0)
    mean = _gray(out).mean(axis=(-2, -1), keepdims=True)
    out = np.clip(np.float32(contrast) * out + np.float32(1.0 - contrast) * mean, 0.0, 1.0)
    out = np.clip(np.float32(saturation) * out + np.float32(1.0 - saturation) * _gray(out), 0.0, 1.0)
    if hue != 0.0:
        hsv = rgb_to_hsv(out)
        hsv[..., 0, :, :] = (hsv[..., 0, :, :] + np.float32(hue)) % 1.0
        out = np.clip(hsv_to_rgb(hsv), 0.0, 1.0)
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
