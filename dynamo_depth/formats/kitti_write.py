"""KITTI raw format, the writing side: calibration text files, velodyne .bin, OXTS packets (and the poses
back to geodetic packets), timestamps files, byte-compatible with the real KITTI raw download.

Each writer is the inverse of a reader in ``dynamo_depth.formats.kitti`` (the layout, the axes and the
pose convention are documented there); ``dynamo_depth.synth.kitti`` writes its drives with them.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from dynamo_depth.formats.kitti import (
    _OXTS_INT_FIELDS,
    EARTH_RADIUS_M,
    MISSING_TIMESTAMP_US,
    OXTS_FIELDS,
    OxtsPacket,
    _mercator_xy,
)


def _format_calib_value(value: object) -> str:
    if isinstance(value, str):
        return value
    array = np.asarray(value, dtype=np.float64).ravel()
    return " ".join(f"{v:e}" for v in array)


def write_calib_file(path: str | Path, values: Mapping[str, object]) -> None:
    """Write ``key: v v v`` lines in the mapping's order, numbers as ``%e`` like the real files.

    Strings (e.g. ``calib_time``) are written verbatim. Note ``%e`` keeps 7 significant digits: read
    the file back to get the exact values a reader will see.
    """
    lines = []
    for key, value in values.items():
        if not key or ":" in key or "\n" in key:
            raise ValueError(f"{path}: invalid calibration key {key!r}")
        lines.append(f"{key}: {_format_calib_value(value)}\n")
    Path(path).write_text("".join(lines), encoding="ascii")


def write_velodyne(path: str | Path, points: np.ndarray) -> None:
    """Write (N, 4) [x, y, z, reflectance] as little-endian float32 (the ``.bin`` layout)."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 4:
        raise ValueError(f"{path}: velodyne points must be (N, 4), got {points.shape}")
    Path(path).write_bytes(np.ascontiguousarray(points, dtype="<f4").tobytes())


_OXTS_DOC = {
    "lat": "latitude of the oxts unit (deg)", "lon": "longitude of the oxts unit (deg)",
    "alt": "altitude of the oxts unit (m)", "roll": "roll angle (rad), 0 = level, positive = left side up",
    "pitch": "pitch angle (rad), 0 = level, positive = front down",
    "yaw": "heading (rad), 0 = east, positive = counter clockwise",
    "vn": "velocity towards north (m/s)", "ve": "velocity towards east (m/s)",
    "vf": "forward velocity, parallel to earth surface (m/s)", "vl": "leftward velocity, parallel to earth surface (m/s)",
    "vu": "upward velocity, perpendicular to earth surface (m/s)",
    "ax": "acceleration in x, vehicle front (m/s^2)", "ay": "acceleration in y, vehicle left (m/s^2)",
    "az": "acceleration in z, vehicle top (m/s^2)", "af": "forward acceleration (m/s^2)",
    "al": "leftward acceleration (m/s^2)", "au": "upward acceleration (m/s^2)",
    "wx": "angular rate around x (rad/s)", "wy": "angular rate around y (rad/s)", "wz": "angular rate around z (rad/s)",
    "wf": "angular rate around forward axis (rad/s)", "wl": "angular rate around leftward axis (rad/s)",
    "wu": "angular rate around upward axis (rad/s)", "pos_accuracy": "position accuracy (north/east in m)",
    "vel_accuracy": "velocity accuracy (north/east in m/s)", "navstat": "navigation status",
    "numsats": "number of satellites tracked by primary GPS receiver",
    "posmode": "position mode of primary GPS receiver", "velmode": "velocity mode of primary GPS receiver",
    "orimode": "orientation mode of primary GPS receiver",
}


OXTS_DATAFORMAT = "".join(f"{name}: {_OXTS_DOC[name]}\n" for name in OXTS_FIELDS)


def write_oxts(path: str | Path, packet: OxtsPacket) -> None:
    """Write one packet on one line; floats with ``repr`` so reading back gives identical doubles."""
    values = [getattr(packet, name) for name in OXTS_FIELDS]
    text = " ".join(str(int(v)) if name in _OXTS_INT_FIELDS else repr(float(v) + 0.0)
                    for name, v in zip(OXTS_FIELDS, values, strict=True))
    Path(path).write_text(text + "\n", encoding="ascii")


def world_from_imu_to_geodetic(world_from_imu: np.ndarray, *, lat0: float = 49.0, lon0: float = 8.4,
                               alt0: float = 110.0) -> np.ndarray:
    """Inverse of ``oxts_to_world_from_imu``: (N, 4, 4) poses -> (N, 6) [lat, lon, alt, roll, pitch, yaw].

    The first pose's position is placed at (lat0, lon0, alt0) and its Mercator scale cos(lat0) is used,
    so ``oxts_to_world_from_imu(..., relative_to_first=True)`` returns ``T0^-1 @ Ti`` of the input
    (to ~1e-9 m, the resolution of doubles at Mercator magnitudes). Rotations need |pitch| < 90 deg.
    """
    poses = np.asarray(world_from_imu, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"world_from_imu must be (N, 4, 4), got {poses.shape}")
    scale = math.cos(lat0 * math.pi / 180.0)
    x0, y0 = _mercator_xy(lat0, lon0, scale)
    out = np.empty((len(poses), 6))
    for i, pose in enumerate(poses):
        dx, dy, dz = pose[:3, 3] - poses[0, :3, 3]
        mx, my = x0 + dx, y0 + dy
        lon = mx * 180.0 / (math.pi * EARTH_RADIUS_M * scale)
        lat = math.atan(math.exp(my / (scale * EARTH_RADIUS_M))) * 360.0 / math.pi - 90.0
        rot = pose[:3, :3]
        pitch = -math.asin(max(-1.0, min(1.0, rot[2, 0])))
        roll = math.atan2(rot[2, 1], rot[2, 2])
        yaw = math.atan2(rot[1, 0], rot[0, 0])
        out[i] = (lat, lon, alt0 + dz, roll, pitch, yaw)
    return out


def format_timestamp(microseconds: int) -> str:
    """int microseconds since the epoch -> ``YYYY-MM-DD HH:MM:SS.fffffffff`` (UTC, 9 digits)."""
    seconds, micro = divmod(int(microseconds), 1_000_000)
    if seconds < 0:
        raise ValueError(f"timestamp {microseconds} us is before 1970")
    stamp = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=seconds)  # naive, treated as UTC
    return f"{stamp:%Y-%m-%d %H:%M:%S}.{micro:06d}000"


def write_timestamps(path: str | Path, microseconds: Iterable[int]) -> None:
    """Write one ``YYYY-MM-DD HH:MM:SS.fffffffff`` line per timestamp (int microseconds, UTC; -1 = empty line)."""
    lines = ("" if int(t) == MISSING_TIMESTAMP_US else format_timestamp(int(t)) for t in microseconds)
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="ascii")
