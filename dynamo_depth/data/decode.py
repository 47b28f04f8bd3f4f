"""Sample decoding: JPEG -> uint8 frames -> float32 images, alone (``decode_sample``) or fused with
augmentation and collation into a batch (``decode_batch``, what ``make_loader`` runs).

Why fused: the per-sample path builds float32 (3, 3, H, W) images, jitters and mirrors them as
floats, and ``collate_batch`` then copies every sample once more into the batch. ``decode_batch``
does the same arithmetic with fewer passes over the pixels: the mirror runs on the uint8 frames
(a quarter of the bytes; the jitter is per pixel plus a frame mean, so mirroring first gives the
same values), the uint8 -> float conversion (and brightness + contrast, see
``augment.jitter_frames_into``) is a 256-entry table lookup, and every result is written straight
into the batch arrays. Its batches equal ``collate_batch`` of ``augment_sample(decode_sample(raw))``
(images exactly; jittered images to float32 rounding, < 1e-6).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dynamo_depth.data.augment import augment_params, flip_geometry, jitter_frames_into
from dynamo_depth.data.collate import collate_geometry
from dynamo_depth.shards import schema

__all__ = ["decode_batch", "decode_frames", "decode_jpeg", "decode_sample", "frames_into_float"]

_LEVELS = np.arange(256, dtype=np.float32) / np.float32(255.0)  # uint8 value -> float32 in [0, 1]


def decode_jpeg(data: bytes, *, key: str, member: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from JPEG bytes (simplejpeg when installed, else PIL); ``SampleError`` if not JPEG."""
    try:
        import simplejpeg

        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ImportError:
        pass
    except ValueError as exc:
        raise schema.SampleError(key, member, f"cannot decode JPEG: {exc}") from exc
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise schema.SampleError(key, member, f"not a JPEG image ({image.format})")
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise schema.SampleError(key, member, f"cannot decode JPEG: {exc}") from exc


def decode_frames(sample: schema.TripletSample) -> list[np.ndarray]:
    """The three (H, W, 3) uint8 RGB frames (prev, cur, next) of a sample; ``SampleError`` if sizes differ."""
    frames = [decode_jpeg(data, key=sample.key, member=name)
              for name, data in zip(schema.IMAGE_MEMBERS, sample.images, strict=True)]
    if len({f.shape for f in frames}) != 1:
        raise schema.SampleError(sample.key, "next.jpg", f"frames differ in size: {[f.shape for f in frames]}")
    return frames


def frames_into_float(frames: Sequence[np.ndarray], *, out: np.ndarray) -> None:
    """Write (H, W, 3) uint8 RGB frames into ``out`` (F, 3, H, W) float32 as ``value / 255``."""
    import cv2

    for f, frame in enumerate(frames):
        for c, plane in enumerate(cv2.split(frame)):
            cv2.LUT(plane, _LEVELS, dst=out[f, c])


_NO_POSES = np.full((3, 4, 4), np.nan)
_NO_DEPTH = np.zeros((0, 3), dtype=np.float32)


def _geometry(sample: schema.TripletSample, shard: str | None) -> dict[str, Any]:
    """A schema-v2 sample without poses gets NaN poses and ``has_poses`` False; without depth, zero points and
    ``has_depth`` False (``collate_geometry`` batches both flags)."""
    return {
        "__key__": sample.key, "__shard__": shard, "K": sample.K,
        "poses": _NO_POSES if sample.poses is None else sample.poses, "has_poses": sample.poses is not None,
        "has_depth": sample.depth is not None,
        "timestamps_us": np.asarray(sample.meta.timestamps_us, dtype=np.int64),
        "depth_points": _NO_DEPTH if sample.depth is None else sample.depth,
        "motion": sample.motion, "original_size": tuple(sample.meta.original_size), "meta": sample.meta,
        "flipped": False,
    }


def _schema_sample(raw: dict[str, Any]) -> schema.TripletSample:
    return schema.decode({k: v for k, v in raw.items() if not k.startswith("__")}, key=raw["__key__"])


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw members -> dict with ``images`` (3, 3, H, W) float32 in [0, 1], ``K`` (3, 3), ``poses`` (3, 4, 4),
    ``timestamps_us`` (3,) int64, ``depth_points`` (N, 3) float32, ``motion`` (N,) uint8 or None,
    ``original_size`` (H, W), ``meta`` (``SampleMeta``), ``flipped`` False, ``__key__``, ``__shard__``."""
    sample = _schema_sample(raw)
    frames = decode_frames(sample)
    height, width = frames[0].shape[:2]
    images = np.empty((len(frames), 3, height, width), dtype=np.float32)
    frames_into_float(frames, out=images)
    return {**_geometry(sample, raw.get("__shard__")), "images": images}


_ARENA: list[np.ndarray] = []  # batch image arrays this process may refill (see _batch_array)
_ARENA_SIZE = 6


def _batch_array(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array of ``shape``, reusing one of ours that nothing else references.

    Fresh 35 MB arrays cost a page fault per page on first write (~1.5 ms per 640x192 sample here).
    An array in ``_ARENA`` is handed out again only when its reference count shows that no batch,
    tensor (``torch.from_numpy`` holds a reference) or view of it is alive anywhere.
    """
    idle_refs = 3  # the _ARENA list, the loop variable, getrefcount's argument
    for array in _ARENA:
        if array.shape == shape and sys.getrefcount(array) <= idle_refs:
            return array
    array = np.empty(shape, dtype=np.float32)
    if len(_ARENA) >= _ARENA_SIZE:
        _ARENA.pop(0)
    _ARENA.append(array)
    return array


def decode_batch(raws: Sequence[dict[str, Any]], *, scales: int, seed: int, epoch: int,
                 augment: bool) -> dict[str, Any]:
    """Decode, augment (when ``augment``: the (seed, epoch, key) draw) and collate raw samples in one go.

    Returns the ``collate_batch`` dict: images, images_aug (B, 3, 3, H, W) float32 in [0, 1], K, inv_K
    (B, S, 4, 4), poses, timestamps_us, depth_points, depth_valid, motion (if any), flipped, keys.
    """
    if not raws:
        raise ValueError("cannot collate an empty batch")
    decoded = [_schema_sample(raw) for raw in raws]
    frames = [decode_frames(sample) for sample in decoded]
    shapes = {f[0].shape for f in frames}
    if len(shapes) != 1:
        keys = [s.key for s in decoded]
        image_shapes = sorted((3, 3, s[0], s[1]) for s in shapes)
        raise ValueError(f"samples {keys} have different image shapes {image_shapes}; one batch needs one size")
    height, width = frames[0][0].shape[:2]
    images = _batch_array((len(raws), 3, 3, height, width))
    images_aug = _batch_array((len(raws), 3, 3, height, width))
    geometry = []
    for i, (sample, raw) in enumerate(zip(decoded, raws, strict=True)):
        params = augment_params(sample.key, seed=seed, epoch=epoch) if augment else None
        sample_frames, item = frames[i], _geometry(sample, raw.get("__shard__"))
        if params is not None and params.flip:
            import cv2

            sample_frames = [cv2.flip(frame, 1) for frame in sample_frames]
            item = flip_geometry(item, width=width)
        frames_into_float(sample_frames, out=images[i])
        if params is not None and params.jitter:
            jitter_frames_into(sample_frames, params, out=images_aug[i])
        else:
            images_aug[i] = images[i]
        geometry.append(item)
    batch = collate_geometry(geometry, scales=scales)
    batch["images"], batch["images_aug"] = torch.from_numpy(images), torch.from_numpy(images_aug)
    return batch
