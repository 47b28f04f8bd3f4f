"""Waymo Open Dataset v1 ``Frame`` decoding with protobuf and numpy, no TensorFlow (range images are
inflated by ISA-L when the optional ``isal`` is installed, else by zlib: the same bytes).

Frames and axes (the public dataset's conventions):
- vehicle frame: x forward, y left, z up, metres, origin on the ground below the rear axle;
- Waymo camera frame: x forward (optical axis), y left, z up; ``waymo_camera_from_opencv`` converts
  to the OpenCV axes we store (x right, y down, z forward);
- ``Frame.pose`` and ``CameraImage.pose`` are world_from_vehicle (4, 4) at different times;
  ``Frame.timestamp_micros`` is the start of the TOP sweep, ``Frame.pose`` roughly mid-sweep.

Range images -> LiDAR points (the official range-image convention) are in ``dynamo_depth.formats.waymo_lidar``.

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
from dynamo_depth.geometry import compose

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
