"""Waymo v1 labels a motion mask needs, decoded with protobuf, zlib, numpy and OpenCV (no TensorFlow).

- ``panoptic_label(frame, camera)``: a camera's PVPS panoptic label (``CameraImage.camera_segmentation_label``):
  a 16-bit PNG of ``semantic * panoptic_label_divisor + instance`` per pixel of the (distorted) camera image,
  split into ``semantic`` and ``instance`` (H, W) int64; None when the image carries no panoptic label
  (most frames: the PVPS labels cover a subset of frames).
- ``camera_projections(frame, return_index=1)``: per laser, the (N, 6) int32 camera projection of every
  point of that return, in the points' order (row-major over pixels with range > 0, as
  ``waymo.lidar_points``): (camera name, column, row, name2, column2, row2) in pixels of the DISTORTED
  image, 0 = none.
- ``synced_boxes(frame)``: the ``laser_labels``' ``camera_synced_box`` (the box moved to the camera's time)
  with the label's type and speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dynamo_depth.formats import waymo_pb2
from dynamo_depth.formats.waymo import RANGE_CHANNELS, WaymoFormatError, decode_matrix, frame_label

__all__ = ["PanopticLabel", "SyncedBox", "camera_projections", "panoptic_label", "synced_boxes"]

PROJECTION_CHANNELS = 6


@dataclass(frozen=True)
class PanopticLabel:
    """One camera's panoptic label: ``semantic`` and ``instance`` (H, W) int64 (camera segmentation types,
    local instance ids; 0 = none) of the distorted image."""

    semantic: np.ndarray
    instance: np.ndarray


@dataclass(frozen=True)
class SyncedBox:
    """A laser label's ``camera_synced_box`` (vehicle frame): centre (3,), size (length, width, height),
    heading (rad about z); the label's ``type`` name and metadata ``speed`` (3,) m/s."""

    type: str
    center: np.ndarray
    size: np.ndarray
    heading: float
    speed: np.ndarray


def _camera_image(frame, camera: str):
    try:
        wanted = waymo_pb2.CameraName.Name.Value(camera)
    except ValueError as error:
        raise WaymoFormatError(f"unknown camera name {camera!r}") from error
    return next((image for image in frame.images if image.name == wanted), None)


def panoptic_label(frame, camera: str) -> PanopticLabel | None:
    """The panoptic label of ``camera``'s image, or None when the frame has none for that camera."""
    image = _camera_image(frame, camera)
    if image is None or not image.HasField("camera_segmentation_label"):
        return None
    label = image.camera_segmentation_label
    where = f"{frame_label(frame)} camera {camera} panoptic label"
    if not label.panoptic_label:
        return None
    if label.panoptic_label_divisor <= 0:
        raise WaymoFormatError(f"{where}: panoptic_label_divisor {label.panoptic_label_divisor} must be positive")
    decoded = cv2.imdecode(np.frombuffer(label.panoptic_label, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.ndim != 2 or decoded.dtype != np.uint16:
        raise WaymoFormatError(f"{where}: not a single-channel 16-bit PNG")
    panoptic = decoded.astype(np.int64)
    return PanopticLabel(semantic=panoptic // label.panoptic_label_divisor,
                         instance=panoptic % label.panoptic_label_divisor)


def camera_projections(frame, *, return_index: int = 1) -> dict[str, np.ndarray]:
    """(N, 6) int32 camera projections of each laser's points of one return, keyed by laser name in enum order.

    N is the laser's number of pixels with range > 0, in row-major order (the order of ``lidar_points``);
    a laser without a projection image gets zeros (no camera), one without that return a (0, 6) array."""
    out = {}
    for laser in sorted(frame.lasers, key=lambda item: item.name):
        name = waymo_pb2.LaserName.Name.Name(laser.name)
        ri = laser.ri_return1 if return_index == 1 else laser.ri_return2
        where = f"{frame_label(frame)} laser {name} return {return_index}"
        if not ri.range_image_compressed:
            out[name] = np.zeros((0, PROJECTION_CHANNELS), dtype=np.int32)
            continue
        ranges = decode_matrix(ri.range_image_compressed, channels=RANGE_CHANNELS, where=f"{where} range image")
        valid = ranges[..., 0] > 0
        if not ri.camera_projection_compressed:
            out[name] = np.zeros((int(valid.sum()), PROJECTION_CHANNELS), dtype=np.int32)
            continue
        projection = decode_matrix(ri.camera_projection_compressed, channels=PROJECTION_CHANNELS, integer=True,
                                   where=f"{where} camera projection")
        if projection.shape[:2] != valid.shape:
            raise WaymoFormatError(f"{where}: camera projection {projection.shape[:2]} != range image {valid.shape}")
        out[name] = projection[valid]
    return out


def synced_boxes(frame) -> list[SyncedBox]:
    """The laser labels' camera-synced boxes, in record order (a label without one has an all-zero box)."""
    out = []
    for label in frame.laser_labels:
        box, meta = label.camera_synced_box, label.metadata
        out.append(SyncedBox(type=waymo_pb2.Label.Type.Name(label.type),
                             center=np.array([box.center_x, box.center_y, box.center_z]),
                             size=np.array([box.length, box.width, box.height]), heading=float(box.heading),
                             speed=np.array([meta.speed_x, meta.speed_y, meta.speed_z])))
    return out
