"""nuScenes motion classes per LiDAR point, from the nuScenes-panoptic labels (the original's rule).

At a sample's keyframe LIDAR_TOP sweep with a ``panoptic`` record (``<version>/panoptic.json``, files
``panoptic/<version>/<token>_panoptic.npz``: ``data`` uint16 per point = category index * 1000 + instance id):

- a point of a non-movable category: 0 (background);
- a point of a movable category (``animal``, ``human.*``, ``vehicle.*``, not ``vehicle.ego``): its instance
  (all points of the sweep with the same panoptic value) is matched to the sample's annotation box of the
  SAME category that holds the largest fraction of the instance's points (first in ``sample["anns"]`` order
  on ties; points in global coordinates at the sweep's time, the box test of the devkit's ``points_in_box``:
  box frame, faces included, no margin); 1 (moving) if that box has an attribute whose name contains
  ``moving``, else 2 (static movable); no box of that category holding any of its points: 3 (unlabeled).
Sweeps that are not a sample's keyframe sweep, and versions without panoptic labels: no motion.
Every transform is element-wise (no BLAS), so the labels do not depend on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dynamo_depth.geometry import invert_se3, pose_from_translation_quaternion
from dynamo_depth.schema import MotionLabel

__all__ = ["MOVABLE_PREFIXES", "is_movable", "motion_labels", "panoptic_of", "points_in_box", "record_pose"]

MOVABLE_PREFIXES = ("animal", "human", "vehicle")
LIDAR = "LIDAR_TOP"
PANOPTIC_DIVISOR = 1000


def record_pose(record: Mapping[str, Any]) -> np.ndarray:
    """(4, 4) target_from_source of a nuScenes record's ``translation`` and ``rotation`` (w, x, y, z)."""
    return pose_from_translation_quaternion(record["translation"], record["rotation"])


def _apply(target_from_source: np.ndarray, points: np.ndarray) -> np.ndarray:
    T = np.asarray(target_from_source, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return np.stack([T[i, 0] * p[:, 0] + T[i, 1] * p[:, 1] + T[i, 2] * p[:, 2] + T[i, 3] for i in range(3)], axis=1)


def is_movable(category: str) -> bool:
    return category.split(".")[0] in MOVABLE_PREFIXES and category != "vehicle.ego"


def points_in_box(points_global: np.ndarray, annotation: Mapping[str, Any]) -> np.ndarray:
    """(N,) bool: points (global, metres) inside the annotation box, faces included (x along its length)."""
    local = _apply(invert_se3(record_pose(annotation)), points_global)
    width, length, height = (float(s) for s in annotation["size"])
    return ((np.abs(local[:, 0]) <= length / 2) & (np.abs(local[:, 1]) <= width / 2)
            & (np.abs(local[:, 2]) <= height / 2))


def panoptic_of(nusc: Any, lidar: Mapping[str, Any], count: int) -> np.ndarray | None:
    """(count,) int64 panoptic labels of a LiDAR sweep, or None when the version has none for it."""
    if not getattr(nusc, "panoptic", None):
        return None
    try:
        record = nusc.get("panoptic", lidar["token"])  # a panoptic record's token is its sweep's token
    except KeyError:
        return None
    path = Path(nusc.dataroot) / record["filename"]
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = np.asarray(archive["data"])
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"{path}: unreadable panoptic label file ({error})") from error
    if data.shape != (count,) or data.dtype.kind not in "ui":
        raise ValueError(f"{path}: panoptic labels {data.dtype}{list(data.shape)}, expected {count} integers "
                         f"(one per point of {lidar['filename']})")
    return data.astype(np.int64)


def _is_moving(nusc: Any, annotation: Mapping[str, Any]) -> bool:
    return any("moving" in nusc.get("attribute", a)["name"] for a in annotation["attribute_tokens"])


def motion_labels(nusc: Any, lidar: Mapping[str, Any], points_global: np.ndarray) -> np.ndarray | None:
    """(N,) uint8 ``MotionLabel`` of ALL points of a keyframe sweep (global), or None (see the module docstring)."""
    sample = nusc.get("sample", lidar["sample_token"])
    if not lidar["is_key_frame"] or sample["data"].get(LIDAR) != lidar["token"]:
        return None
    panoptic = panoptic_of(nusc, lidar, len(points_global))
    if panoptic is None:
        return None
    names = nusc.lidarseg_idx2name_mapping
    labels = np.full(len(points_global), MotionLabel.BACKGROUND, dtype=np.uint8)
    annotations = [nusc.get("sample_annotation", token) for token in sample["anns"]]
    for value in np.unique(panoptic):
        category = names.get(int(value) // PANOPTIC_DIVISOR)
        if category is None:
            raise ValueError(f"panoptic label {int(value)} of {lidar['filename']}: unknown category index "
                             f"{int(value) // PANOPTIC_DIVISOR}")
        if not is_movable(category):
            continue
        members = np.flatnonzero(panoptic == value)
        best, best_count = None, 0
        for annotation in annotations:
            if annotation["category_name"] != category:
                continue
            inside = int(np.count_nonzero(points_in_box(points_global[members], annotation)))
            if inside > best_count:  # same instance, same denominator: the largest count is the largest fraction
                best, best_count = annotation, inside
        if best is None:
            labels[members] = MotionLabel.UNLABELED
        else:
            labels[members] = MotionLabel.MOVING if _is_moving(nusc, best) else MotionLabel.STATIC_MOVABLE
    return labels
