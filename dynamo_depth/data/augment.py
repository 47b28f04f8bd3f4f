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

__all__ = ["AugmentParams", "augment_params", "color_jitter", "flip_geometry", "flip_sample", "jitter_frames_into",
           "rotate_hue", "saturate_rotate_hue"]

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


def _clip01(image: np.ndarray) -> np.ndarray:
    """float32 ``image`` clipped to [0, 1] in place (OpenCV thresholds: one fast pass each)."""
    import cv2

    cv2.threshold(image, 1.0, 1.0, cv2.THRESH_TRUNC, dst=image)
    cv2.threshold(image, 0.0, 0.0, cv2.THRESH_TOZERO, dst=image)
    return image


def saturate_rotate_hue(image: np.ndarray, *, saturation: float, hue: float) -> np.ndarray:
    """Saturation then hue steps of the jitter on a (N, W, 3) float32 RGB image (frames stacked along N).

    Saturation is one 3x3 colour matrix ``s*I + (1-s) * 1 luma^T`` then a clip; hue turns every pixel by
    ``hue`` turns in OpenCV's float HSV (degrees), then a clip. Returns a new (N, W, 3) float32 array.
    """
    import cv2

    matrix = np.float32(saturation) * np.eye(3, dtype=np.float32)
    matrix += np.float32(1.0 - saturation) * np.repeat(_LUMA[None, :], 3, axis=0)
    out = _clip01(cv2.transform(image, matrix))
    if hue != 0.0:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        degrees = 360.0 * hue if hue >= 0 else 360.0 * hue + 360.0  # OpenCV wraps hue >= 360, not < 0
        cv2.add(hsv, (degrees, 0.0, 0.0, 0.0), dst=hsv)
        out = _clip01(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    return out


def rotate_hue(images: np.ndarray, hue: float) -> np.ndarray:
    """(..., 3, H, W) float32 RGB in [0, 1] with the HSV hue of every pixel turned by ``hue`` turns (OpenCV)."""
    height, width = images.shape[-2:]
    stacked = np.ascontiguousarray(images.reshape(-1, 3, height, width).transpose(0, 2, 3, 1), dtype=np.float32)
    turned = saturate_rotate_hue(stacked.reshape(-1, width, 3), saturation=1.0, hue=hue)
    return turned.reshape(-1, height, width, 3).transpose(0, 3, 1, 2).reshape(images.shape)


def color_jitter(images: np.ndarray, *, brightness: float, contrast: float, saturation: float,
                 hue: float) -> np.ndarray:
    """Jitter (..., 3, H, W) float RGB in [0, 1] with the same parameters for every image; returns a new array."""
    out = np.multiply(images, np.float32(brightness), dtype=np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    mean = _gray(out).mean(axis=(-2, -1), keepdims=True)
    out *= np.float32(contrast)
    out += np.float32(1.0 - contrast) * mean
    np.clip(out, 0.0, 1.0, out=out)
    height, width = images.shape[-2:]
    stacked = np.ascontiguousarray(out.reshape(-1, 3, height, width).transpose(0, 2, 3, 1))
    jittered = saturate_rotate_hue(stacked.reshape(-1, width, 3), saturation=saturation, hue=hue)
    result = jittered.reshape(-1, height, width, 3).transpose(0, 3, 1, 2).reshape(images.shape)
    return np.ascontiguousarray(result, dtype=images.dtype)


def jitter_frames_into(frames: list[np.ndarray], params: AugmentParams, *, out: np.ndarray) -> None:
    """``color_jitter`` of (H, W, 3) uint8 RGB frames, written as float32 (F, 3, H, W) into ``out``.

    Same equations as ``color_jitter`` on ``frames / 255``: brightness and contrast are per-value maps
    of the uint8 input, so they run as one 256-entry table per frame (the frame mean comes from its
    histograms); saturation and hue run once on the frames stacked as one image.
    """
    import cv2

    height, width = frames[0].shape[:2]
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    bright = np.clip(levels * np.float32(params.brightness), 0.0, 1.0)
    stacked = np.empty((len(frames) * height, width, 3), dtype=np.float32)
    for f, frame in enumerate(frames):
        channel_means = [float(cv2.calcHist([frame], [c], None, [256], [0, 256]).ravel().astype(np.float64)
                               @ bright.astype(np.float64)) / (height * width) for c in range(3)]
        mean = np.float32(float(np.dot(_LUMA.astype(np.float64), channel_means)))
        table = bright * np.float32(params.contrast) + np.float32(1.0 - params.contrast) * mean
        np.clip(table, 0.0, 1.0, out=table)
        cv2.LUT(frame, table, dst=stacked[f * height:(f + 1) * height])
    jittered = saturate_rotate_hue(stacked, saturation=params.saturation, hue=params.hue)
    for f in range(len(frames)):
        cv2.split(jittered[f * height:(f + 1) * height], list(out[f]))


def _mirror_columns(images: np.ndarray) -> np.ndarray:
    """(..., H, W) array with the W axis reversed (a contiguous copy; OpenCV for 2-D-able dtypes)."""
    import cv2

    width = images.shape[-1]
    if images.dtype in (np.float32, np.uint8) and images.size and images.flags.c_contiguous:
        return cv2.flip(images.reshape(-1, width), 1).reshape(images.shape)
    return np.ascontiguousarray(images[..., ::-1])


def flip_geometry(sample: dict[str, Any], *, width: int) -> dict[str, Any]:
    """The non-image part of a left-right mirror of an image ``width`` pixels wide: K, depth u, ``flipped``."""
    out = dict(sample)
    K = np.array(sample["K"], dtype=np.float64)
    K[0, 2] = width - 1 - K[0, 2]
    K[0, 1] = -K[0, 1]
    out["K"] = K
    depth = np.array(sample["depth_points"], dtype=np.float32)
    depth[:, 0] = np.float32(sample["original_size"][1] - 1) - depth[:, 0]
    out["depth_points"] = depth
    out["flipped"] = not sample.get("flipped", False)
    return out


def flip_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Mirror a decoded sample left-right (images, images_aug, K, depth u); see the module docstring."""
    out = flip_geometry(sample, width=sample["images"].shape[-1])
    out["images"] = _mirror_columns(sample["images"])
    if "images_aug" in sample:
        same = sample["images_aug"] is sample["images"]
        out["images_aug"] = out["images"] if same else _mirror_columns(sample["images_aug"])
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
