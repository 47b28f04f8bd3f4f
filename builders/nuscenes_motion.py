"""nuScenes motion classes per LiDAR point, from the nuScenes-panoptic labels (the original's rule).

At a sample's keyframe LIDAR_TOP sweep with a ``panoptic`` record (``<version>/panoptic.json``, files
``panoptic/<version>/<token>_panoptic.npz``: ``data`` uint16 per point = category index * 1000 + instance id):

- a point of a non-movable category: 0 (background);
- a point of a movable category (``animal``, ``human.*``, ``vehicle.*``, not ``vehicle.ego``): its instance
  (the points KEPT FOR DEPTH, i.e. in the image with z > 1 m, with the same panoptic value: the original labels
  only those) is matched to the sample's annotation box of the SAME category that holds the largest fraction
  (> 0) of the instance's points (first in ``sample["anns"]`` order on ties), with the original's STRICT test
  (``get_intersect_fraction``: open intervals along the box's three edges, a point on a face is outside);
  1 (moving) if that box has an attribute whose name contains ``moving``, else 2 (static movable); no box of
  that category holding any of its points: 3 (unlabeled).
- the points are global as the devkit's ``LidarPointCloud`` chain makes them (``devkit_global_points``): float32
  points rotated (float64 product rounded to float32) and translated (a float32 addition of the float32
  translation: numpy < 2's scalar casting, which the devkit pins) by the LiDAR's calibration, then by the
  sweep's ego pose, as ``rotate`` / ``translate`` assign into the float32 array.
Sweeps that are not a sample's keyframe sweep, and versions without panoptic labels: no motion.
Every transform is element-wise (no BLAS), so the labels do not depend on the CPU; the devkit's ``np.dot`` is
a BLAS product in float64 whose last bit may differ, which after the float32 rounding changes a coordinate only
at a rounding tie.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dynamo_depth.geometry import invert_se3, pose_from_translation_quaternion
from dynamo_depth.shards.schema import MotionLabel

__all__ = ["MOVABLE_PREFIXES", "devkit_global_points", "is_movable", "motion_labels", "panoptic_of", "points_in_box",
           "record_pose"]

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


def _rotate32(rotation: np.ndarray, points: np.ndarray) -> np.ndarray:
    """float32 ``R @ p`` computed in float64 (element-wise, fixed order) and rounded, as the devkit's ``rotate``."""
    p = points.astype(np.float64)
    return np.stack([rotation[i, 0] * p[:, 0] + rotation[i, 1] * p[:, 1] + rotation[i, 2] * p[:, 2]
                     for i in range(3)], axis=1).astype(np.float32)


def devkit_global_points(points_lidar: np.ndarray, *, sensor: Mapping[str, Any], ego: Mapping[str, Any]) -> np.ndarray:
    """(N, 3) float32 global points of a LIDAR_TOP sweep as the devkit chain gives them: ``rotate`` and
    ``translate`` by the ``calibrated_sensor`` record, then by the sweep's ``ego_pose`` record, each step in or
    rounded to float32 (``points_lidar`` (N, 3) float32 as read from the ``.pcd.bin``)."""
    p = np.asarray(points_lidar, dtype=np.float32)
    for record in (sensor, ego):
        pose = record_pose(record)
        p = _rotate32(pose[:3, :3], p)
        p = p + np.asarray(record["translation"], dtype=np.float64).astype(np.float32)[None, :]  # numpy < 2: float32
    return p


def is_movable(category: str) -> bool:
    return category.split(".")[0] in MOVABLE_PREFIXES and category != "vehicle.ego"


def points_in_box(points_global: np.ndarray, annotation: Mapping[str, Any]) -> np.ndarray:
    """(N,) bool: points (global, metres) STRICTLY inside the annotation box (x along its length): a point on a
    face is outside, as the original's ``get_intersect_fraction`` (``0 < v . i < i . i`` on each edge)."""
    local = _apply(invert_se3(record_pose(annotation)), points_global)
    width, length, height = (float(s) for s in annotation["size"])
    return ((np.abs(local[:, 0]) < length / 2) & (np.abs(local[:, 1]) < width / 2)
            & (np.abs(local[:, 2]) < height / 2))


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


def motion_labels(nusc: Any, lidar: Mapping[str, Any], points_global: np.ndarray,
                  keep: np.ndarray | None = None) -> np.ndarray | None:
    """(M,) uint8 ``MotionLabel`` of the points ``keep`` selects (default all) of a keyframe sweep's (N, 3) global
    points, instances and fractions over those points only; or None (see the module docstring)."""
    sample = nusc.get("sample", lidar["sample_token"])
    if not lidar["is_key_frame"] or sample["data"].get(LIDAR) != lidar["token"]:
        return None
    panoptic = panoptic_of(nusc, lidar, len(points_global))
    if panoptic is None:
        return None
    if keep is not None:
        panoptic, points_global = panoptic[keep], points_global[keep]
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
