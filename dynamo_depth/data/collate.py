"""Stack decoded samples into the training batch (torch tensors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dynamo_depth.shards.schema import MotionLabel
from dynamo_depth.shards.time_scales import frame_time_scales

__all__ = ["collate_batch", "collate_geometry", "scaled_intrinsics"]

def scaled_intrinsics(K: np.ndarray, *, scales: int) -> np.ndarray:
    """(S, 4, 4) float64: ``K`` (3, 3) embedded in 4x4, rows 0 and 1 divided by ``2**s`` for s < S."""
    K4 = np.eye(4, dtype=np.float64)
    K4[:3, :3] = K
    out = np.repeat(K4[None], scales, axis=0)
    out[:, :2, :] /= (2.0 ** np.arange(scales))[:, None, None]
    return out


def collate_batch(samples: Sequence[dict[str, Any]], *, scales: int) -> dict[str, Any]:
    """Batch decoded samples.

    Returns a dict of:
        images, images_aug: (B, 3, 3, H, W) float32 in [0, 1], frames (prev, cur, next);
        K, inv_K: (B, S, 4, 4) float32, scale s has rows 0, 1 of K divided by 2**s;
        poses: (B, 3, 4, 4) float64 world_from_camera (metres); timestamps_us: (B, 3) int64;
        ts: (B, 2) float32 time scales of the source frames (t-1, t+1) (``frame_time_scales``);
        depth_points: (B, Nmax, 3) float32 [u, v, z] zero-padded, depth_valid: (B, Nmax) bool;
        motion: (B, Nmax) uint8 (only if some sample has labels; padding and unlabeled samples = 3);
        flipped: (B,) bool; keys: list of B keys;
        has_depth, has_poses: (B,) bool, False for schema-v2 samples without LiDAR depth (no points) /
        without poses (NaN poses).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    keys = [s["__key__"] for s in samples]
    shapes = {tuple(s["images"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"samples {keys} have different image shapes {sorted(shapes)}; one batch needs one size")
    batch = collate_geometry(samples, scales=scales)
    batch["images"] = torch.from_numpy(np.stack([s["images"] for s in samples]))
    batch["images_aug"] = torch.from_numpy(np.stack([s.get("images_aug", s["images"]) for s in samples]))
    return batch


def _dataset(sample: dict[str, Any]) -> str:
    meta = sample.get("meta")
    return str(getattr(meta, "dataset", sample.get("dataset", "")))


def collate_geometry(samples: Sequence[dict[str, Any]], *, scales: int) -> dict[str, Any]:
    """Everything of ``collate_batch`` except the images (K, inv_K, poses, depth, motion, flipped, keys)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    K = np.stack([scaled_intrinsics(s["K"], scales=scales) for s in samples])
    batch: dict[str, Any] = {
        "K": torch.from_numpy(K.astype(np.float32)),
        "inv_K": torch.from_numpy(np.linalg.inv(K).astype(np.float32)),
        "poses": torch.from_numpy(np.stack([s["poses"] for s in samples]).astype(np.float64)),
        "timestamps_us": torch.from_numpy(np.stack([s["timestamps_us"] for s in samples]).astype(np.int64)),
        "ts": torch.from_numpy(np.stack([frame_time_scales(s["timestamps_us"], dataset=_dataset(s)) for s in samples])),
        "flipped": torch.tensor([bool(s.get("flipped", False)) for s in samples]),
        "has_depth": torch.tensor([bool(s.get("has_depth", True)) for s in samples]),
        "has_poses": torch.tensor([bool(s.get("has_poses", True)) for s in samples]),
        "keys": [s["__key__"] for s in samples],
    }
    n_max = max(len(s["depth_points"]) for s in samples)
    depth = np.zeros((len(samples), n_max, 3), dtype=np.float32)
    valid = np.zeros((len(samples), n_max), dtype=bool)
    for i, s in enumerate(samples):
        depth[i, : len(s["depth_points"])] = s["depth_points"]
        valid[i, : len(s["depth_points"])] = True
    batch["depth_points"], batch["depth_valid"] = torch.from_numpy(depth), torch.from_numpy(valid)
    if any(s.get("motion") is not None for s in samples):
        motion = np.full((len(samples), n_max), int(MotionLabel.UNLABELED), dtype=np.uint8)
        for i, s in enumerate(samples):
            if s.get("motion") is not None:
                motion[i, : len(s["motion"])] = s["motion"]
        batch["motion"] = torch.from_numpy(motion)
    return batch
