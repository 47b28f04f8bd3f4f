"""Waymo motion classes as the original Dynamo-Depth makes them (``prepare_data/waymo.py`` mask + its eval reader).

For a frame whose camera image carries a PVPS panoptic label (``formats.waymo_labels.panoptic_label``):

1. Objects: for each movable camera-segmentation class (``MOVABLE_CLASSES``, ascending) present in the label,
   for each instance id ``0 .. max instance id of that class``: the pixels with that (class, id).
2. Each object is matched to a laser label: the first-return LiDAR points of all five lasers whose FIRST
   camera projection is this camera (``camera_projections`` channel 0; column, row in the distorted image),
   one point per projected pixel (the last point wins, as an image assignment does), are the object's points
   when its pixels hold them; the match of a label is the fraction of those points inside its
   ``camera_synced_box`` (box frame, heading about z, faces included). The label with the largest fraction
   (first on ties) is the object's box; no point, or no point in any box: no box.
3. The motion mask (H, W) uint8 starts at 0 (background); each object, in the order of 1, is filled by
   ``cv2.drawContours`` (thickness -1) of its ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` contours
   with 3 (no box), 1 (box speed > 1 m/s: moving) or 2 (static movable). Holes are filled and a later object
   overwrites an earlier one, as the original's drawing does.
4. A depth point's class is the mask at its TRUNCATED pixel ``[int(v), int(u)]`` of the stored float32 depth,
   as the original's evaluation reads it. The depth pixels are those of the UNDISTORTED pinhole projection
   while the panoptic label is in the distorted image: the original mixes the two and so do we.

Checked against the original's ``mask/000001.pickle`` of the synthetic-LiDAR reference (real PVPS frame):
the same 67 objects, contours, boxes and match fractions, and a pixel-identical motion mask.
Classes 6-8 and 10-13 (bicycle, motorcycle, trailer, cyclist, motorcyclist, bird, ground animal) are movable
by the paper's rule (vehicles, humans, animals); that reference frame does not contain them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from dynamo_depth.formats import waymo as wf
from dynamo_depth.formats import waymo_labels as wl
from dynamo_depth.formats import waymo_lidar, waymo_pb2
from dynamo_depth.shards.schema import MotionLabel

__all__ = ["MOVABLE_CLASSES", "MaskObject", "frame_motion", "frame_motion_and_mask", "mask_objects", "motion_at",
           "motion_mask"]

# camera segmentation types: car, truck, bus, other large vehicle, bicycle, motorcycle, trailer, pedestrian,
# cyclist, motorcyclist, bird, ground animal, dynamic (not the ego vehicle, 1)
MOVABLE_CLASSES = (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 27)
MOVING_SPEED_MPS = 1.0
LASER_ORDER = ("TOP", "FRONT", "SIDE_LEFT", "SIDE_RIGHT", "REAR")


@dataclass(frozen=True)
class MaskObject:
    """One object of the mask: (class, instance id), its contours, matched label index (None) and fraction."""

    semantic: int
    instance: int
    contours: tuple[np.ndarray, ...]
    box: int | None
    match: float
    speed: np.ndarray | None

    @property
    def label(self) -> MotionLabel:
        if self.box is None:
            return MotionLabel.UNLABELED
        moving = math.sqrt(sum(float(v) * float(v) for v in self.speed)) > MOVING_SPEED_MPS
        return MotionLabel.MOVING if moving else MotionLabel.STATIC_MOVABLE


def _camera_points(frame, camera: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points (M, 3) vehicle frame, rows (M,), cols (M,)): first-return points whose first projection is
    ``camera``, one per pixel (the last in laser order TOP, FRONT, SIDE_LEFT, SIDE_RIGHT, REAR, row-major)."""
    points = waymo_lidar.lidar_points(frame, returns=(1,))
    projections = wl.camera_projections(frame, return_index=1)
    xyz = np.concatenate([np.zeros((0, 3))] + [points[n] for n in LASER_ORDER if n in points])
    cp = np.concatenate([np.zeros((0, 6), np.int32)] + [projections.get(n, np.zeros((len(points[n]), 6), np.int32))
                                                        for n in LASER_ORDER if n in points])
    if len(cp) != len(xyz):
        raise wf.WaymoFormatError(f"{wf.frame_label(frame)}: {len(cp)} camera projections for {len(xyz)} points")
    on_camera = np.flatnonzero(cp[:, 0] == waymo_pb2.CameraName.Name.Value(camera))
    rows, cols = cp[on_camera, 2].astype(np.int64), cp[on_camera, 1].astype(np.int64)
    width = int(cols.max()) + 1 if len(cols) else 1
    pixel = rows * width + cols
    _, last_reversed = np.unique(pixel[::-1], return_index=True)  # last occurrence of each pixel
    keep = np.sort(len(pixel) - 1 - last_reversed)
    index = on_camera[keep]
    return xyz[index], rows[keep], cols[keep]


def _inside(points: np.ndarray, box: wl.SyncedBox) -> np.ndarray:
    """(M,) bool: points in ``box`` (its frame: heading about z), faces included; element-wise, no BLAS."""
    d = points - box.center
    cos, sin = math.cos(box.heading), math.sin(box.heading)
    half = 0.5 * box.size
    return ((np.abs(cos * d[:, 0] + sin * d[:, 1]) <= half[0]) & (np.abs(cos * d[:, 1] - sin * d[:, 0]) <= half[1])
            & (np.abs(d[:, 2]) <= half[2]))


def mask_objects(frame, camera: str) -> list[MaskObject] | None:
    """The objects of ``camera``'s panoptic label with their matched boxes (rules 1-2), or None without a label."""
    panoptic = wl.panoptic_label(frame, camera)
    if panoptic is None:
        return None
    semantic, instance = panoptic.semantic, panoptic.instance
    pairs = []
    for cls in MOVABLE_CLASSES:
        of_class = semantic == cls
        if of_class.any():
            pairs += [(cls, i) for i in range(int(instance[of_class].max()) + 1)]
    if not pairs:
        return []
    object_of_pixel = np.full(semantic.shape, -1, dtype=np.int64)
    code = {pair: k for k, pair in enumerate(pairs)}
    keyed = semantic * (int(instance.max()) + 1) + instance
    for (cls, i), k in code.items():
        object_of_pixel[keyed == cls * (int(instance.max()) + 1) + i] = k
    points, rows, cols = _camera_points(frame, camera)
    height, width = semantic.shape
    on_image = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    points, rows, cols = points[on_image], rows[on_image], cols[on_image]
    owner = object_of_pixel[rows, cols]
    points, owner = points[owner >= 0], owner[owner >= 0]
    totals = np.bincount(owner, minlength=len(pairs))
    boxes = wl.synced_boxes(frame)
    inside = np.zeros((len(pairs), max(len(boxes), 1)), dtype=np.int64)
    for b, box in enumerate(boxes):
        inside[:, b] = np.bincount(owner[_inside(points, box)], minlength=len(pairs))
    objects = []
    for k, (cls, i) in enumerate(pairs):
        contours, _ = cv2.findContours((keyed == cls * (int(instance.max()) + 1) + i).astype(np.uint8),
                                       cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        best = int(np.argmax(inside[k])) if totals[k] else 0
        match = inside[k, best] / totals[k] if totals[k] else 0.0
        box = best if match > 0 else None
        objects.append(MaskObject(semantic=cls, instance=i, contours=tuple(contours), box=box, match=float(match),
                                  speed=boxes[best].speed if box is not None else None))
    return objects


def motion_mask(objects: Sequence[MaskObject], hw: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 motion mask of ``objects`` (rule 3)."""
    mask = np.zeros(hw, dtype=np.uint8)
    for obj in objects:
        if obj.contours:
            cv2.drawContours(mask, list(obj.contours), -1, int(obj.label), thickness=-1)
    return mask


def motion_at(mask: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(N,) uint8 mask class at each depth point's truncated pixel (rule 4); depth (N, 3) float32 [u, v, z]."""
    cols, rows = depth[:, 0].astype(np.int64), depth[:, 1].astype(np.int64)
    return np.ascontiguousarray(mask[rows, cols], dtype=np.uint8)


def frame_motion_and_mask(frame, camera: str, depth: np.ndarray, hw: tuple[int, int],
                          ) -> tuple[np.ndarray, np.ndarray] | None:
    """(motion classes (N,) of ``depth`` (N, 3), the (H, W) motion mask) for ``camera`` of ``frame``, or None
    without a panoptic label. The mask is what the original's motion-segmentation evaluation scores."""
    objects = mask_objects(frame, camera)
    if objects is None:
        return None
    mask = motion_mask(objects, hw)
    return motion_at(mask, depth), mask


def frame_motion(frame, camera: str, depth: np.ndarray, hw: tuple[int, int]) -> np.ndarray | None:
    """Motion classes of ``depth`` (N, 3) for ``camera`` of ``frame``, or None without a panoptic label."""
    both = frame_motion_and_mask(frame, camera, depth, hw)
    return None if both is None else both[0]
