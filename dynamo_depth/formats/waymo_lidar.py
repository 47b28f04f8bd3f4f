"""Waymo LiDAR range images -> points (numpy, float64), the official range-image convention (see the
reference README's facts 1-9):

rows are inclinations in DESCENDING order (row 0 = highest beam; uniform inclinations are cell centres),
column c has laser-frame azimuth ((W - c - 0.5) / W * 2 - 1) * pi - atan2(E[1, 0], E[0, 0]),
a point is r * (cos az cos inc, sin az cos inc, sin inc) through the laser extrinsic E, and the TOP
laser's per-pixel vehicle pose (roll, pitch, yaw, x, y, z; R = Rz Ry Rx) maps it to the world and
back into the vehicle frame of ``Frame.pose``. Everything is float64.

The frame's calibrations and decoded range images come from ``dynamo_depth.formats.waymo``. Every product
is element-wise in a fixed order (no BLAS), as there: these values end up in shard bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dynamo_depth.formats.waymo import (
    LaserCalibration,
    WaymoFormatError,
    frame_label,
    frame_pose,
    laser_calibrations,
    range_images,
)
from dynamo_depth.geometry import invert_se3, transform_points


def rotation_from_euler(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """(..., 3, 3) R = Rz(yaw) @ Ry(pitch) @ Rx(roll) (3-2-1 Euler angles, radians)."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rows = [[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr]]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def euler_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """(..., 3) (roll, pitch, yaw) with ``rotation_from_euler(*angles) == rotation`` (|pitch| < pi/2)."""
    roll = np.arctan2(rotation[..., 2, 1], rotation[..., 2, 2])
    pitch = -np.arcsin(np.clip(rotation[..., 2, 0], -1.0, 1.0))
    yaw = np.arctan2(rotation[..., 1, 0], rotation[..., 0, 0])
    return np.stack([roll, pitch, yaw], axis=-1)


def column_azimuths(width: int, vehicle_from_laser: np.ndarray) -> np.ndarray:
    """(width,) laser-frame azimuth (rad) of each range-image column (half-pixel centres, extrinsic yaw removed)."""
    yaw = np.arctan2(vehicle_from_laser[1, 0], vehicle_from_laser[0, 0])
    return ((width - np.arange(width) - 0.5) / width * 2.0 - 1.0) * np.pi - yaw


@dataclass(frozen=True)
class LaserPixels:
    """What a pixel selector of ``lidar_points`` sees of one range image before any point is computed.

    ``ranges`` (H, W) float32 metres (0 = no return); ``inclinations`` (H,) and ``azimuths`` (W,) radians in
    the laser frame (``column_azimuths``); ``pixel_pose`` (H, W, 6) float32 (TOP) or None; ``world_from_vehicle``
    (4, 4) the frame pose, or None when no laser of the frame has pixel poses.
    """

    calib: LaserCalibration
    ranges: np.ndarray
    inclinations: np.ndarray
    azimuths: np.ndarray
    pixel_pose: np.ndarray | None
    world_from_vehicle: np.ndarray | None


PixelSelector = Callable[[LaserPixels], np.ndarray]  # -> (H, W) bool: pixels that may be kept


def _laser_points(range_image: np.ndarray, calib: LaserCalibration, pixel_pose: np.ndarray | None,
                  world_from_vehicle: np.ndarray | None, select: PixelSelector | None = None) -> np.ndarray:
    """(N, 3) float64 vehicle-frame points of the pixels with range > 0 (and ``select``), row-major order.

    Every point is computed element-wise from its own pixel, so the points of a selected subset are
    bit-identical to the same points of the full set.
    """
    height, width = range_image.shape[:2]
    inclination = calib.row_inclinations(height)
    azimuth = column_azimuths(width, calib.vehicle_from_laser)
    valid = range_image[..., 0] > 0
    if select is not None:
        valid &= select(LaserPixels(calib=calib, ranges=range_image[..., 0], inclinations=inclination,
                                    azimuths=azimuth, pixel_pose=pixel_pose, world_from_vehicle=world_from_vehicle))
    rows, cols = np.nonzero(valid)
    distance = range_image[rows, cols, 0].astype(np.float64)
    cos_inc = np.cos(inclination)[rows] * distance
    laser_xyz = np.stack([np.cos(azimuth)[cols] * cos_inc, np.sin(azimuth)[cols] * cos_inc,
                          np.sin(inclination)[rows] * distance], axis=-1)
    points = transform_points(calib.vehicle_from_laser, laser_xyz)
    if pixel_pose is None:
        return points
    pose = pixel_pose[rows, cols].astype(np.float64)
    world = _rotate_by_euler(pose[:, :3], points) + pose[:, 3:]
    # vehicle = R^T (world - t): subtract first (world coordinates are large), then the closed-form R^T
    vehicle_from_world_rotation = invert_se3(_rotation_only(world_from_vehicle))
    return transform_points(vehicle_from_world_rotation, world - world_from_vehicle[:3, 3])


def _rotation_only(transform: np.ndarray) -> np.ndarray:
    """(4, 4) copy of a rigid ``transform`` with its translation set to zero."""
    out = np.array(transform, dtype=np.float64)
    out[:3, 3] = 0.0
    return out


def _rotate_by_euler(angles: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 3) Rz(yaw) Ry(pitch) Rx(roll) @ point per row, angles (N, 3) = (roll, pitch, yaw)."""
    cr, sr = np.cos(angles[:, 0]), np.sin(angles[:, 0])
    cp, sp = np.cos(angles[:, 1]), np.sin(angles[:, 1])
    cy, sy = np.cos(angles[:, 2]), np.sin(angles[:, 2])
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    y1, z1 = cr * y - sr * z, sr * y + cr * z  # Rx(roll)
    x2, z2 = cp * x + sp * z1, -sp * x + cp * z1  # Ry(pitch)
    return np.stack([cy * x2 - sy * y1, sy * x2 + cy * y1, z2], axis=-1)  # Rz(yaw)


def lidar_points(frame, *, returns: Sequence[int] = (1,), select: PixelSelector | None = None) -> dict[str, np.ndarray]:
    """Points per laser, (N, 3) float64 metres in the vehicle frame of ``Frame.pose``.

    Keys: every calibrated laser in enum order (TOP, FRONT, SIDE_LEFT, SIDE_RIGHT, REAR). The requested
    returns are concatenated in the order given; a laser or return without data gives a (0, 3) array.
    ``select`` (optional) drops pixels before their points are computed (e.g. ones no camera can see);
    the points it keeps are bit-identical to the same points without it.
    """
    if not returns or any(r not in (1, 2) for r in returns):
        raise ValueError(f"returns must be a non-empty sequence of 1 and/or 2, got {returns!r}")
    calibrations = laser_calibrations(frame)
    decoded = range_images(frame, returns=returns)
    world_from_vehicle = frame_pose(frame) if any(d.pixel_pose is not None for d in decoded.values()) else None
    out = {}
    for name, calib in calibrations.items():
        parts = [np.zeros((0, 3))]
        images = decoded.get(name)
        for index in returns:
            if images is not None and index in images.returns:
                parts.append(_laser_points(images.returns[index], calib, images.pixel_pose, world_from_vehicle, select))
        out[name] = np.concatenate(parts, axis=0)
    missing = set(decoded) - set(calibrations)
    if missing:
        raise WaymoFormatError(f"{frame_label(frame)}: range images without laser calibration: {sorted(missing)}")
    return out
