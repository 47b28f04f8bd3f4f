"""KITTI raw format: calibration text files, velodyne .bin, OXTS packets and poses, timestamps.

Readers follow the layout of the real KITTI raw download (the writers, their inverses, are in
``dynamo_depth.formats.kitti_write``)::

    <root>/<date>/calib_cam_to_cam.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt
    <root>/<date>/<date>_drive_<NNNN>_sync/{image_02,image_03}/data/%010d.png + timestamps.txt
    .../velodyne_points/data/%010d.bin (float32 x, y, z, reflectance) + timestamps{,_start,_end}.txt
    .../oxts/data/%010d.txt (30 values) + dataformat.txt + timestamps.txt

Frames: velodyne x forward, y left, z up; IMU/OXTS x forward, y left, z up; cameras OpenCV axes.
Poses from OXTS follow the KITTI devkit (Mercator projection scaled by cos(lat) of the FIRST packet,
t = [x, y, alt], R = Rz(yaw) Ry(pitch) Rx(roll)). Builders use ``relative_to_first=True``
(world = the IMU frame of the drive's first OXTS packet, as the devkit's MATLAB tools do).
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from dynamo_depth.geometry import compose, invert_se3, matmul_exact

EARTH_RADIUS_M = 6378137.0
MISSING_TIMESTAMP_US = -1  # an empty line of a timestamps.txt (missing frame)
CAMERAS = ("image_00", "image_01", "image_02", "image_03")
_TIMESTAMP_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?$")


class KittiFormatError(ValueError):
    """A KITTI raw file is missing or malformed; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


# ------------------------------------------------------------------------------------ calibration
def read_calib_file(path: str | Path) -> dict[str, np.ndarray]:
    """``key: v v v`` lines -> {key: float64 (n,) array}; non-numeric entries (calib_time) are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise KittiFormatError(path, f"cannot read calibration file ({error})") from error
    values: dict[str, np.ndarray] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        if not sep or not key.strip():
            raise KittiFormatError(path, f"line {number} is not 'key: values': {line[:60]!r}")
        try:
            values[key.strip()] = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError:
            continue  # calib_time and other text entries
    return values


def rigid_from_calib(values: Mapping[str, np.ndarray], *, path: str | Path, rotation_key: str = "R",
                     translation_key: str = "T") -> np.ndarray:
    """(4, 4) from the 9 values of ``R`` (row-major) and 3 of ``T`` of a calibration dict."""
    rotation = _calib_entry(values, rotation_key, 9, path)
    translation = _calib_entry(values, translation_key, 3, path)
    out = np.eye(4)
    out[:3, :3] = rotation.reshape(3, 3)
    out[:3, 3] = translation
    return out


def _calib_entry(values: Mapping[str, np.ndarray], key: str, size: int, path: str | Path) -> np.ndarray:
    if key not in values:
        raise KittiFormatError(path, f"missing key {key!r}")
    entry = np.asarray(values[key], dtype=np.float64)
    if entry.size != size or not np.all(np.isfinite(entry)):
        raise KittiFormatError(path, f"key {key!r} must hold {size} finite numbers, got {entry.size}")
    return entry


@dataclass(frozen=True)
class KittiCalib:
    """Per-date KITTI calibration. Transforms are (4, 4) float64 ``target_from_source``.

    velo_from_imu: calib_imu_to_velo.txt. cam0_from_velo: calib_velo_to_cam.txt (unrectified camera 0).
    R_rect_00: (3, 3) rectifying rotation of camera 0. P_rect: camera name ("image_02") -> (3, 4)
    rectified projection (pixels of the rectified image, applied to rectified camera-0 coordinates).
    image_hw: camera name -> (H, W) of the rectified images (from ``S_rect_0x``, stored W H in the file).
    """

    velo_from_imu: np.ndarray
    cam0_from_velo: np.ndarray
    R_rect_00: np.ndarray
    P_rect: dict[str, np.ndarray]
    image_hw: dict[str, tuple[int, int]]

    def K(self, camera: str) -> np.ndarray:
        """(3, 3) pinhole intrinsics of the rectified ``camera``."""
        return self._projection(camera)[:, :3].copy()

    def _projection(self, camera: str) -> np.ndarray:
        if camera not in self.P_rect:
            raise ValueError(f"unknown KITTI camera {camera!r}; known: {sorted(self.P_rect)}")
        return self.P_rect[camera]

    def rect0_from_velo(self) -> np.ndarray:
        """(4, 4) rectified camera 0 from velodyne: R_rect_00 @ cam0_from_velo."""
        rect = np.eye(4)
        rect[:3, :3] = self.R_rect_00
        return compose(rect, self.cam0_from_velo)

    def camera_from_velo(self, camera: str) -> np.ndarray:
        """(4, 4) rectified ``camera`` (OpenCV axes, optical centre as origin) from velodyne.

        P_rect = K [I | t] with t = K^-1 P[:, 3], so camera = rect0 translated by t. Projecting
        ``K @ (camera_from_velo @ p)[:3]`` equals the devkit's ``P_rect @ R_rect_00 @ cam0_from_velo @ p``.
        """
        projection = self._projection(camera)
        offset = np.eye(4)
        offset[:3, 3] = _solve_upper_triangular(projection[:, :3], projection[:, 3])
        return compose(offset, self.rect0_from_velo())

    def velo_to_pixels(self, camera: str) -> np.ndarray:
        """(3, 4) matrix mapping homogeneous velodyne points to homogeneous pixels of ``camera``."""
        return matmul_exact(self._projection(camera), self.rect0_from_velo())


def _solve_upper_triangular(K: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x with K x = b for an upper-triangular (3, 3) K (a rectified P_rect's left block), element-wise."""
    if abs(K[1, 0]) > 0 or abs(K[2, 0]) > 0 or abs(K[2, 1]) > 0:
        raise ValueError(f"P_rect's left 3x3 block is not upper triangular: {K.tolist()}")
    z = b[2] / K[2, 2]
    y = (b[1] - K[1, 2] * z) / K[1, 1]
    x = (b[0] - K[0, 1] * y - K[0, 2] * z) / K[0, 0]
    return np.array([x, y, z])


def load_kitti_calib(date_dir: str | Path) -> KittiCalib:
    """Read the three ``calib_*.txt`` of a KITTI date folder; ValueError naming a missing/corrupt file."""
    date_dir = Path(date_dir)
    files = {name: date_dir / f"calib_{name}.txt" for name in ("cam_to_cam", "velo_to_cam", "imu_to_velo")}
    for path in files.values():
        if not path.is_file():
            raise KittiFormatError(path, "calibration file is missing")
    cam = read_calib_file(files["cam_to_cam"])
    velo_from_imu = rigid_from_calib(read_calib_file(files["imu_to_velo"]), path=files["imu_to_velo"])
    cam0_from_velo = rigid_from_calib(read_calib_file(files["velo_to_cam"]), path=files["velo_to_cam"])
    r_rect = _calib_entry(cam, "R_rect_00", 9, files["cam_to_cam"]).reshape(3, 3)
    projections, sizes = {}, {}
    for index, camera in enumerate(CAMERAS):
        projections[camera] = _calib_entry(cam, f"P_rect_{index:02d}", 12, files["cam_to_cam"]).reshape(3, 4)
        width, height = _calib_entry(cam, f"S_rect_{index:02d}", 2, files["cam_to_cam"])
        sizes[camera] = (int(round(height)), int(round(width)))
        if projections[camera][0, 0] <= 0 or projections[camera][1, 1] <= 0 or min(sizes[camera]) <= 0:
            raise KittiFormatError(files["cam_to_cam"], f"camera {camera}: non-positive focal length or size")
    return KittiCalib(velo_from_imu=velo_from_imu, cam0_from_velo=cam0_from_velo, R_rect_00=r_rect,
                      P_rect=projections, image_hw=sizes)


# --------------------------------------------------------------------------------------- velodyne
def read_velodyne(path: str | Path) -> np.ndarray:
    """(N, 4) float32 [x, y, z, reflectance] in the velodyne frame (metres) from a ``.bin`` file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size % 16:
            raise KittiFormatError(path, f"size {size} bytes is not a multiple of 16 (4 float32 per point)")
        points = np.fromfile(path, dtype="<f4")  # read straight into the array (no bytes object, no copy)
    except OSError as error:
        raise KittiFormatError(path, f"cannot read velodyne scan ({error})") from error
    if points.size * 4 != size:
        raise KittiFormatError(path, f"read {points.size * 4} of its {size} bytes (it changed while read)")
    return points.reshape(-1, 4).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------- oxts
@dataclass(frozen=True)
class OxtsPacket:
    """One OXTS line (30 values, order of ``oxts/dataformat.txt``). Degrees, metres, radians, SI."""

    lat: float  # latitude (deg)
    lon: float  # longitude (deg)
    alt: float  # altitude (m)
    roll: float  # rad, 0 = level, positive = left side up
    pitch: float  # rad, 0 = level, positive = front down
    yaw: float  # rad, 0 = east, positive = counter-clockwise
    vn: float  # velocity towards north (m/s)
    ve: float  # velocity towards east (m/s)
    vf: float  # forward velocity parallel to the earth surface (m/s)
    vl: float  # leftward velocity parallel to the earth surface (m/s)
    vu: float  # upward velocity (m/s)
    ax: float  # acceleration along vehicle x / front (m/s^2)
    ay: float  # acceleration along vehicle y / left (m/s^2)
    az: float  # acceleration along vehicle z / top (m/s^2)
    af: float  # forward acceleration (m/s^2)
    al: float  # leftward acceleration (m/s^2)
    au: float  # upward acceleration (m/s^2)
    wx: float  # angular rate around x (rad/s)
    wy: float  # angular rate around y (rad/s)
    wz: float  # angular rate around z (rad/s)
    wf: float  # angular rate around forward axis (rad/s)
    wl: float  # angular rate around leftward axis (rad/s)
    wu: float  # angular rate around upward axis (rad/s)
    pos_accuracy: float  # position accuracy (north/east, m)
    vel_accuracy: float  # velocity accuracy (north/east, m/s)
    navstat: int  # navigation status
    numsats: int  # satellites tracked by the primary GPS receiver
    posmode: int  # position mode of the primary GPS receiver
    velmode: int  # velocity mode of the primary GPS receiver
    orimode: int  # orientation mode of the primary GPS receiver


OXTS_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(OxtsPacket))
_OXTS_INT_FIELDS = frozenset(("navstat", "numsats", "posmode", "velmode", "orimode"))


def read_oxts(path: str | Path) -> OxtsPacket:
    """Parse one ``oxts/data/%010d.txt`` file (30 whitespace-separated numbers)."""
    path = Path(path)
    try:
        tokens = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as error:
        raise KittiFormatError(path, f"cannot read OXTS packet ({error})") from error
    if len(tokens) != len(OXTS_FIELDS):
        raise KittiFormatError(path, f"expected {len(OXTS_FIELDS)} values, found {len(tokens)}")
    try:
        numbers = [float(token) for token in tokens]
    except ValueError as error:
        raise KittiFormatError(path, f"non-numeric OXTS value ({error})") from error
    kwargs = {name: (int(v) if name in _OXTS_INT_FIELDS else v) for name, v in zip(OXTS_FIELDS, numbers, strict=True)}
    return OxtsPacket(**kwargs)


def _rotation_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """R = Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


def _mercator_xy(lat_deg: float, lon_deg: float, scale: float) -> tuple[float, float]:
    x = scale * lon_deg * math.pi * EARTH_RADIUS_M / 180.0
    y = scale * EARTH_RADIUS_M * math.log(math.tan((90.0 + lat_deg) * math.pi / 360.0))
    return x, y


def oxts_to_world_from_imu(packets: Sequence[OxtsPacket], *, scale: float | None = None,
                           relative_to_first: bool = False) -> np.ndarray:
    """(N, 4, 4) world_from_imu poses (metres) from OXTS packets, the KITTI devkit's conversion.

    Mercator with ``scale = cos(lat of the FIRST packet)`` unless given; t = [x, y, alt];
    R = Rz(yaw) Ry(pitch) Rx(roll). ``relative_to_first=True`` returns T0^-1 @ Ti, i.e. the world is
    the first packet's IMU frame (what the builders use).
    """
    if len(packets) == 0:
        raise ValueError("oxts_to_world_from_imu needs at least one OXTS packet")
    if scale is None:
        scale = math.cos(packets[0].lat * math.pi / 180.0)
    poses = np.empty((len(packets), 4, 4))
    for i, packet in enumerate(packets):
        x, y = _mercator_xy(packet.lat, packet.lon, scale)
        poses[i] = np.eye(4)
        poses[i, :3, :3] = _rotation_rpy(packet.roll, packet.pitch, packet.yaw)
        poses[i, :3, 3] = (x, y, packet.alt)
    if relative_to_first:
        poses = compose(invert_se3(poses[0]), poses)
    return poses


# ------------------------------------------------------------------------------------- timestamps
def parse_timestamp(text: str, *, path: str | Path = "<string>", line: int = 0) -> int:
    """``2011-09-26 13:02:25.964389273`` (UTC) -> int microseconds since the epoch (ns truncated)."""
    match = _TIMESTAMP_RE.match(text.strip())
    if not match:
        raise KittiFormatError(path, f"line {line}: not a 'YYYY-MM-DD HH:MM:SS.fffffffff' timestamp: {text[:40]!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = (match.group(7) or "").ljust(9, "0")
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError) as error:
        raise KittiFormatError(path, f"line {line}: invalid date {text.strip()!r}") from error
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise KittiFormatError(path, f"line {line}: invalid date {text.strip()!r}")
    return seconds * 1_000_000 + int(fraction[:6])


def read_timestamps(path: str | Path) -> np.ndarray:
    """(N,) int64 microseconds (UTC) from a ``timestamps.txt`` file; line i is frame i.

    An empty line (real drives have them, e.g. drive 0009's velodyne frames 177-180 are missing)
    keeps its place as ``MISSING_TIMESTAMP_US`` (-1) so frame indices stay aligned.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise KittiFormatError(path, f"cannot read timestamps ({error})") from error
    values = [parse_timestamp(text, path=path, line=i) if text.strip() else MISSING_TIMESTAMP_US
              for i, text in enumerate(lines, start=1)]
    return np.array(values, dtype=np.int64)


