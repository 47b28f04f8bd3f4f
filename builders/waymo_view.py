"""Which LiDAR range-image pixels can land in a camera image: a conservative test run before any point is computed.

The Waymo builder needs the points of frame t inside one camera's image (``waymo.project_to_camera``),
but turning a range-image pixel into a vehicle-frame point (beam angles, extrinsic, per-pixel rolling-
shutter pose) is most of the LiDAR cost, and the FRONT camera sees ~50 of TOP's 360 degrees. So each
pixel is first tested against the camera's horizontal wedge, in the vehicle frame, without the
rolling-shutter correction but widened by a bound on it. A pixel that fails cannot be seen; the ones
that pass go through the unchanged float64 pipeline, so depth bytes are identical with and without the
test (``tests/test_waymo_view.py`` checks this, and the reference manifest still verifies).

The test. A pixel at range r with laser-frame unit direction d (its row's inclination, its column's
azimuth) is at ``p = o + r R d`` in the vehicle frame of its own pose (o, R: the laser extrinsic), and at
``p' = Q p + t`` after the rolling-shutter correction, where Q (angle alpha) and t (length T) take the
pixel's pose to the frame pose. ``|p' - p| <= alpha |p| + T <= alpha (|o| + r) + T =: eps(r)``. A
visible point has its horizontal offset from the camera centre inside the wedge, an intersection of
two half-planes, so its uncorrected point p lies within eps(r) of both: with (x, y) the horizontal
offset of p from the camera centre in wedge axes (x along the wedge's centre line) and h the half-width,
``|y| cos(h) - x sin(h) <= eps(r)``. ``x, y`` are ``r * (unit direction, per pixel, cached per
calibration) + laser offset``: a few multiply-adds per pixel. alpha and T are bounded over every pixel
pose of the frame (0 for lasers without pixel poses).

The wedge is the horizontal projection of the pinhole frustum through the image corners (the depth
projection uses the undistorted pinhole K); a camera whose wedge is not narrower than 180 degrees gets
no test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dynamo_depth.formats import waymo as wf
from dynamo_depth.formats import waymo_lidar

__all__ = ["HorizontalWedge", "camera_wedge", "rolling_shutter_bound", "wedge_selector"]

_SLACK = 1e-6  # relative and absolute slack (metres) on top of the bound: float rounding of the test itself


@dataclass(frozen=True)
class HorizontalWedge:
    """Horizontal directions from ``origin_xy`` (2,) metres, vehicle frame, within ``half_width`` rad of
    ``center`` rad (azimuth, counter-clockwise from the vehicle's x axis)."""

    origin_xy: np.ndarray
    center: float
    half_width: float


def _wrap(angle: np.ndarray | float) -> np.ndarray:
    """Angle(s) wrapped into [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2.0 * np.pi) - np.pi


def camera_wedge(calib: wf.CameraCalibration) -> HorizontalWedge | None:
    """The wedge holding every ray through the camera's image (pinhole ``calib.K``, 0..W x 0..H), or None
    when the wedge would be 180 degrees or wider (or a corner ray is vertical): no test for such a camera."""
    vehicle_from_camera = calib.vehicle_from_opencv_camera
    # The depth projects with invert_se3 (R^T); a ray is R^-T c, which is R c only for an exactly
    # orthonormal R: solve, so that a calibration a few ulps off orthonormal cannot lose border points.
    camera_rotation_t = vehicle_from_camera[:3, :3].T
    corners = [(0.0, 0.0), (calib.width, 0.0), (0.0, calib.height), (calib.width, calib.height)]
    rays = [np.linalg.solve(camera_rotation_t, [(u - calib.c_u) / calib.f_u, (v - calib.c_v) / calib.f_v, 1.0])
            for u, v in corners]
    flat = np.array([ray[:2] / np.linalg.norm(ray) for ray in rays])
    if np.min(np.linalg.norm(flat, axis=1)) < 1e-3:
        return None
    mean = (flat / np.linalg.norm(flat, axis=1, keepdims=True)).sum(axis=0)
    if np.linalg.norm(mean) < 1e-6:
        return None
    center = math.atan2(mean[1], mean[0])
    half = float(np.max(np.abs(_wrap(np.arctan2(flat[:, 1], flat[:, 0]) - center))))
    if half >= 0.5 * np.pi - 1e-3:
        return None
    return HorizontalWedge(origin_xy=vehicle_from_camera[:2, 3].copy(), center=center, half_width=half)


def rolling_shutter_bound(pixels: waymo_lidar.LaserPixels) -> tuple[float, float]:
    """(alpha rad, T metres): bounds on the rotation angle and the translation between any pixel pose
    and the frame pose; (0, 0) for a laser without pixel poses.

    alpha uses d(Rz Ry Rx, Rz' Ry' Rx') <= |dyaw| + |dpitch| + |droll| (the rotation angle is a
    bi-invariant metric, so the triangle inequality splits the product factor by factor). Every pixel
    pose counts, with or without a return: a looser bound, never a wrong one."""
    if pixels.pixel_pose is None or pixels.world_from_vehicle is None:
        return 0.0, 0.0
    pose = pixels.pixel_pose.reshape(-1, wf.POSE_CHANNELS)
    roll, pitch, yaw = (float(a) for a in waymo_lidar.euler_from_rotation(pixels.world_from_vehicle[:3, :3]))
    turn = (np.abs(pose[:, 0] - np.float32(roll)) + np.abs(pose[:, 1] - np.float32(pitch))
            + np.abs(_wrap(pose[:, 2] - np.float32(yaw))))
    origin = pixels.world_from_vehicle[:3, 3]
    shift_sq = sum((pose[:, 3 + k] - np.float32(origin[k])) ** 2 for k in range(3))
    # float32 arithmetic here: add its rounding (relative 1e-6 of the magnitudes involved) to the bound
    return float(turn.max()) * (1 + 1e-5) + 1e-6, float(np.sqrt(shift_sq.max())) * (1 + 1e-5) + 1e-6 * (
        1.0 + float(np.abs(origin).sum()))


@lru_cache(maxsize=32)
def _directions(laser_key: bytes, inclinations: bytes, azimuths: bytes, center: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) x and y, in wedge axes, of the horizontal part of each pixel's vehicle-frame unit direction."""
    rotation = np.frombuffer(laser_key, dtype=np.float64).reshape(4, 4)[:3, :3]
    inc, azi = np.frombuffer(inclinations, dtype=np.float64), np.frombuffer(azimuths, dtype=np.float64)
    cos_c, sin_c = math.cos(center), math.sin(center)
    axes = np.array([[cos_c, sin_c], [-sin_c, cos_c]]) @ rotation[:2]  # wedge x/y of the vehicle x/y rows
    cos_i, sin_i = np.cos(inc)[:, None], np.sin(inc)[:, None]
    cos_a, sin_a = np.cos(azi)[None, :], np.sin(azi)[None, :]
    return tuple(cos_i * (axis[0] * cos_a + axis[1] * sin_a) + sin_i * axis[2] for axis in axes)  # type: ignore[return-value]


def wedge_selector(wedge: HorizontalWedge) -> waymo_lidar.PixelSelector:
    """A ``lidar_points`` selector keeping every pixel that may land in ``wedge`` (see the module docstring)."""
    cos_c, sin_c = math.cos(wedge.center), math.sin(wedge.center)
    cos_h, sin_h = math.cos(wedge.half_width), math.sin(wedge.half_width)

    def select(pixels: waymo_lidar.LaserPixels) -> np.ndarray:
        extrinsic = np.ascontiguousarray(pixels.calib.vehicle_from_laser, dtype=np.float64)
        dir_x, dir_y = _directions(extrinsic.tobytes(),
                                   np.ascontiguousarray(pixels.inclinations, dtype=np.float64).tobytes(),
                                   np.ascontiguousarray(pixels.azimuths, dtype=np.float64).tobytes(), wedge.center)
        alpha, shift = rolling_shutter_bound(pixels)
        offset = extrinsic[:2, 3] - wedge.origin_xy
        off_x, off_y = cos_c * offset[0] + sin_c * offset[1], -sin_c * offset[0] + cos_c * offset[1]
        ranges = pixels.ranges.astype(np.float64)
        x = ranges * dir_x + off_x
        y = np.abs(ranges * dir_y + off_y)
        eps = alpha * (float(np.linalg.norm(extrinsic[:3, 3])) + ranges) + (shift + _SLACK)
        return y * cos_h - x * sin_h <= eps * (1.0 + _SLACK)

    return select
