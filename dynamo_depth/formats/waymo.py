"""Waymo Open Dataset v1 ``Frame`` decoding with protobuf and numpy, no TensorFlow (range images are
inflated by ISA-L when the optional ``isal`` is installed, else by zlib: the same bytes).

Frames and axes (the public dataset's conventions):
- vehicle frame: x forward, y left, z up, metres, origin on the ground below the rear axle;
- Waymo camera frame: x forward (optical axis), y left, z up; ``waymo_camera_from_opencv`` converts
  to the OpenCV axes we store (x right, y down, z forward);
- ``Frame.pose`` and ``CameraImage.pose`` are world_from_vehicle (4, 4) at different times;
  ``Frame.timestamp_micros`` is the start of the TOP sweep, ``Frame.pose`` roughly mid-sweep.

LiDAR decoding follows the official range-image convention (see the reference README's facts 1-9):
rows are inclinations in DESCENDING order (row 0 = highest beam; uniform inclinations are cell centres),
column c has laser-frame azimuth ((W - c - 0.5) / W * 2 - 1) * pi - atan2(E[1, 0], E[0, 0]),
a point is r * (cos az cos inc, sin az cos inc, sin inc) through the laser extrinsic E, and the TOP
laser's per-pixel vehicle pose (roll, pitch, yaw, x, y, z; R = Rz Ry Rx) maps it to the world and
back into the vehicle frame of ``Frame.pose``. Everything is float64.

Every product of matrices/points here is element-wise in a fixed order (``dynamo_depth.geometry``'s
``compose``/``transform_points``/``invert_se3``, never ``@``/einsum/``np.linalg``): OpenBLAS picks its
kernels per CPU (FMA or not), so BLAS results differ in the last bit between machines, and these values
end up in shard bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynamo_depth.formats import waymo_pb2
from dynamo_depth.formats.tfrecord import iter_records
from dynamo_depth.geometry import compose, invert_se3, transform_points

LASER_NAMES = ("TOP", "FRONT", "SIDE_LEFT", "SIDE_RIGHT", "REAR")  # LaserName enum order (1..5)
CAMERA_NAMES = ("FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT")  # CameraName enum order
RANGE_CHANNELS = 4  # range (m), intensity, elongation, is_in_nlz
POSE_CHANNELS = 6  # roll, pitch, yaw (rad), x, y, z (m)

# Columns are the OpenCV axes (x right, y down, z forward) written in Waymo camera axes.
WAYMO_CAMERA_FROM_OPENCV = np.array(
    [[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


class WaymoFormatError(ValueError):
    """A Waymo record breaks the format; the message names the frame/field and the reason."""


@dataclass(frozen=True)
class CameraCalibration:
    """One camera's calibration. Intrinsics in pixels of the full image (width x height).

    ``distortion`` is OpenCV's (k1, k2, p1, p2, k3). ``vehicle_from_camera`` (4, 4) uses Waymo camera axes.
    """

    name: str
    width: int
    height: int
    f_u: float
    f_v: float
    c_u: float
    c_v: float
    distortion: tuple[float, float, float, float, float]
    vehicle_from_camera: np.ndarray

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual symbol
        """(3, 3) float64 pinhole matrix."""
        return np.array([[self.f_u, 0.0, self.c_u], [0.0, self.f_v, self.c_v], [0.0, 0.0, 1.0]])

    @property
    def vehicle_from_opencv_camera(self) -> np.ndarray:
        """(4, 4) camera-to-vehicle with OpenCV camera axes (x right, y down, z forward)."""
        return compose(self.vehicle_from_camera, WAYMO_CAMERA_FROM_OPENCV)


@dataclass(frozen=True)
class CameraImageData:
    """One ``CameraImage``: JPEG bytes, vehicle pose at ``pose_timestamp_s`` and shutter times (s)."""

    name: str
    jpeg: bytes
    world_from_vehicle: np.ndarray
    pose_timestamp_s: float
    trigger_time_s: float
    readout_done_time_s: float


@dataclass(frozen=True)
class LaserCalibration:
    """One laser: ``vehicle_from_laser`` (4, 4) and its beam inclinations (rad, ascending, or None = uniform)."""

    name: str
    vehicle_from_laser: np.ndarray
    beam_inclinations: np.ndarray | None
    inclination_min: float
    inclination_max: float

    def row_inclinations(self, height: int) -> np.ndarray:
        """(height,) inclination of each range-image row in radians; row 0 is the HIGHEST beam."""
        if self.beam_inclinations is not None:
            if len(self.beam_inclinations) != height:
                raise WaymoFormatError(f"laser {self.name}: {len(self.beam_inclinations)} beam_inclinations "
                                       f"but the range image has {height} rows")
            return self.beam_inclinations[::-1].copy()
        centres = self.inclination_min + (np.arange(height) + 0.5) / height * (
            self.inclination_max - self.inclination_min)
        return centres[::-1].copy()


@dataclass(frozen=True)
class LaserRangeImages:
    """Decoded range images of one laser: ``returns[r]`` (H, W, 4) float32 for r in (1, 2);
    ``pixel_pose`` (H, W, 6) float32 world_from_vehicle per pixel (TOP only), else None."""

    name: str
    returns: dict[int, np.ndarray]
    pixel_pose: np.ndarray | None


@dataclass(frozen=True)
class LaserLabel:
    """A 3D box label in the vehicle frame of ``Frame.pose``: centre (3,) m, size (length, width, height) m,
    heading (rad about z), speed (3,) m/s, type name (``TYPE_VEHICLE``...)."""

    id: str
    type: str
    center: np.ndarray
    size: np.ndarray
    heading: float
    speed: np.ndarray


def frame_label(frame) -> str:
    """``segment@timestamp`` naming a frame in error messages."""
    return f"frame {frame.context.name or '?'}@{frame.timestamp_micros}"


def parse_frame(payload: bytes, *, source: str = "<bytes>"):
    """Parse one serialized ``Frame`` (a TFRecord payload); ``source`` names it in errors."""
    frame = waymo_pb2.Frame()
    try:
        frame.ParseFromString(bytes(payload))
    except Exception as error:  # protobuf raises its own DecodeError
        raise WaymoFormatError(f"{source}: not a serialized waymo Frame ({error})") from error
    return frame


def iter_frames(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield ``(offset, Frame)`` for every record of a Waymo TFRecord file (CRCs checked)."""
    for offset, payload in iter_records(path):
        yield offset, parse_frame(payload, source=f"{path} record at byte offset {offset}")


def transform_matrix(transform, *, where: str) -> np.ndarray:
    """(4, 4) float64 from a ``Transform`` (16 row-major doubles)."""
    values = np.asarray(transform.transform, dtype=np.float64)
    if values.size != 16:
        raise WaymoFormatError(f"{where}: transform has {values.size} values, expected 16")
    return values.reshape(4, 4)


def frame_pose(frame) -> np.ndarray:
    """(4, 4) world_from_vehicle of ``Frame.pose``."""
    return transform_matrix(frame.pose, where=f"{frame_label(frame)} pose")


def camera_calibrations(frame) -> dict[str, CameraCalibration]:
    """Camera calibrations keyed by camera name, in enum order."""
    out = {}
    for calib in sorted(frame.context.camera_calibrations, key=lambda c: c.name):
        name = waymo_pb2.CameraName.Name.Name(calib.name)
        where = f"{frame_label(frame)} camera {name}"
        intrinsic = list(calib.intrinsic)
        if len(intrinsic) != 9:
            raise WaymoFormatError(f"{where}: intrinsic has {len(intrinsic)} values, expected 9")
        f_u, f_v, c_u, c_v, k1, k2, p1, p2, k3 = intrinsic
        out[name] = CameraCalibration(
            name=name, width=calib.width, height=calib.height, f_u=f_u, f_v=f_v, c_u=c_u, c_v=c_v,
            distortion=(k1, k2, p1, p2, k3),
            vehicle_from_camera=transform_matrix(calib.extrinsic, where=f"{where} extrinsic"))
    return out


def camera_images(frame) -> dict[str, CameraImageData]:
    """Camera images keyed by camera name, in enum order."""
    out = {}
    for image in sorted(frame.images, key=lambda i: i.name):
        name = waymo_pb2.CameraName.Name.Name(image.name)
        out[name] = CameraImageData(
            name=name, jpeg=bytes(image.image),
            world_from_vehicle=transform_matrix(image.pose, where=f"{frame_label(frame)} image {name} pose"),
            pose_timestamp_s=image.pose_timestamp, trigger_time_s=image.camera_trigger_time,
            readout_done_time_s=image.camera_readout_done_time)
    return out


def laser_calibrations(frame) -> dict[str, LaserCalibration]:
    """Laser calibrations keyed by laser name, in enum order (TOP, FRONT, SIDE_LEFT, SIDE_RIGHT, REAR)."""
    out = {}
    for calib in sorted(frame.context.laser_calibrations, key=lambda c: c.name):
        name = waymo_pb2.LaserName.Name.Name(calib.name)
        inclinations = np.asarray(calib.beam_inclinations, dtype=np.float64)
        out[name] = LaserCalibration(
            name=name,
            vehicle_from_laser=transform_matrix(calib.extrinsic, where=f"{frame_label(frame)} laser {name}"),
            beam_inclinations=inclinations if inclinations.size else None,
            inclination_min=calib.beam_inclination_min, inclination_max=calib.beam_inclination_max)
    return out


def _inflate_function() -> Callable[[bytes], bytes]:
    """``isal_zlib.decompress`` (ISA-L, pinned in requirements.txt; about 2x zlib's speed) or ``zlib.decompress``.

    Inflating is deterministic, so both return the same bytes; only the speed differs.
    """
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.decompress
    return isal_zlib.decompress


inflate = _inflate_function()


def decode_matrix(compressed: bytes, *, channels: int, integer: bool = False, where: str) -> np.ndarray:
    """zlib-compressed serialized ``MatrixFloat`` (or ``MatrixInt32``) -> (H, W, channels) float32 (int32)."""
    message = waymo_pb2.MatrixInt32() if integer else waymo_pb2.MatrixFloat()
    try:
        message.ParseFromString(inflate(compressed))
    except Exception as error:
        raise WaymoFormatError(f"{where}: cannot decompress/parse matrix ({error})") from error
    dims = tuple(message.shape.dims)
    data = np.asarray(message.data, dtype=np.int32 if integer else np.float32)
    if len(dims) != 3 or dims[2] != channels or int(np.prod(dims)) != data.size:
        raise WaymoFormatError(f"{where}: matrix dims {list(dims)} with {data.size} values, "
                               f"expected [H, W, {channels}]")
    return data.reshape(dims)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def serialize_matrix_float(array: np.ndarray) -> bytes:
    """Serialized ``MatrixFloat`` of an (H, W, C) array, byte-equal to protobuf's own encoding
    (field 1 packed little-endian float32, then field 2 ``MatrixShape`` with unpacked dims) but fast."""
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    shape = b"".join(b"\x08" + _varint(int(d)) for d in array.shape)
    return b"".join((b"\x0a", _varint(len(data)), data, b"\x12", _varint(len(shape)), shape))


def encode_matrix(array: np.ndarray, *, level: int = 6) -> bytes:
    """Inverse of ``decode_matrix``: (H, W, C) float32 or int32 -> zlib(serialized MatrixFloat/MatrixInt32)."""
    if np.issubdtype(array.dtype, np.integer):
        message = waymo_pb2.MatrixInt32()
        message.shape.dims.extend(int(d) for d in array.shape)
        message.data.extend(np.ascontiguousarray(array, dtype=np.int32).ravel().tolist())
        return zlib.compress(message.SerializeToString(deterministic=True), level)
    return zlib.compress(serialize_matrix_float(array), level)


def range_images(frame, *, returns: Sequence[int] = (1, 2)) -> dict[str, LaserRangeImages]:
    """Decode every laser's range images (only the ``returns`` asked for), keyed by laser name in enum
    order; empty returns are left out of ``LaserRangeImages.returns``, lasers without data altogether."""
    out = {}
    for laser in sorted(frame.lasers, key=lambda item: item.name):
        name = waymo_pb2.LaserName.Name.Name(laser.name)
        where = f"{frame_label(frame)} laser {name}"
        by_return = {}
        for index, ri in ((1, laser.ri_return1), (2, laser.ri_return2)):
            if index in returns and ri.range_image_compressed:
                by_return[index] = decode_matrix(ri.range_image_compressed, channels=RANGE_CHANNELS,
                                               where=f"{where} return {index} range image")
        pose = None
        if name == "TOP" and laser.ri_return1.range_image_pose_compressed:
            pose = decode_matrix(laser.ri_return1.range_image_pose_compressed, channels=POSE_CHANNELS,
                                 where=f"{where} range image pose")
            if 1 in by_return and pose.shape[:2] != by_return[1].shape[:2]:
                raise WaymoFormatError(f"{where}: pixel pose {pose.shape[:2]} != range image {by_return[1].shape[:2]}")
        if by_return or pose is not None:  # real records may hold empty Laser entries (no name, no data)
            out[name] = LaserRangeImages(name=name, returns=by_return, pixel_pose=pose)
    return out


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


def laser_labels(frame) -> list[LaserLabel]:
    """The frame's 3D laser labels (vehicle frame of ``Frame.pose``), in record order."""
    out = []
    for label in frame.laser_labels:
        box, meta = label.box, label.metadata
        out.append(LaserLabel(
            id=label.id, type=waymo_pb2.Label.Type.Name(label.type),
            center=np.array([box.center_x, box.center_y, box.center_z]),
            size=np.array([box.length, box.width, box.height]), heading=box.heading,
            speed=np.array([meta.speed_x, meta.speed_y, meta.speed_z])))
    return out
