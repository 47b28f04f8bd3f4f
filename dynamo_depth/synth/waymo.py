"""Synthetic Waymo Open Dataset v1 segments: TFRecords of ``Frame`` protos ray-cast from the shared world.

Layout: ``<out>/val/segment-<name>_with_camera_labels.tfrecord`` for sequence 0 and
``<out>/train/segment-<name>_with_camera_labels.tfrecord`` for sequences 1, 2, ... (sequence s uses
``make_world(seed + s)``). Each record is one frame, 10 Hz.

What a frame holds (real-data conventions, see ``dynamo_depth.formats.waymo``):
- context: segment name, 5 camera calibrations (FRONT like the real one: f ~ 2055 px, c ~ (940, 640),
  k1 ~ 0.04) and 5 laser calibrations (TOP with 64 non-uniform ascending ``beam_inclinations``, the
  short-range lasers with min/max only); lasers are written in the real order FRONT, REAR, SIDE_LEFT,
  SIDE_RIGHT, TOP (not enum order).
- timing: world time of frame k starts at t_k = k * 0.1 s; ``timestamp_micros = BASE_TIMESTAMP_US +
  t_k * 1e6`` is the TOP sweep start, ``Frame.pose`` = world_from_vehicle(t_k + 0.05) (mid sweep).
- TOP: ``top_width`` columns (default 1000 for speed; 2650 is the real width) x 64 rows; column c is
  captured at t_k + (c + 0.5) / W * 0.1 from the per-column pose stored (float32) in
  ``range_image_pose_compressed``; rays are cast from that float32 pose, boxes at the column time.
- FRONT, SIDE_LEFT, SIDE_RIGHT, REAR: ``short_range_hw`` (default 200 x 600), rays from the vehicle at
  ``Frame.pose`` time, forward hemisphere only, max 20 m (TOP 75 m). Second returns are written as
  all -1 images (no second return). No camera projections are written.
- ``CameraImage`` of each camera in ``camera_images`` (default FRONT only; ``CAMERA_NAMES`` for all five, in
  enum order): JPEG of that camera's distorted render at its calibrated size (FRONT, FRONT_LEFT, FRONT_RIGHT
  1920x1280, SIDE_LEFT, SIDE_RIGHT 1920x886 at full ``image_hw``) at t_k + IMAGE_DELAY_S (the same instant for
  every camera; real cameras trigger one after another as the TOP sweep passes), its pose =
  world_from_vehicle at that time, ``velocity`` in the world frame; the other cameras carry calibrations only.
- ``laser_labels``: one 3D box per world box at ``Frame.pose`` time, speed in the vehicle axes.

Products are ``dynamo_depth.synth.fused`` FMA chains and the pose inverse is closed-form (no BLAS/LAPACK),
so the bytes do not depend on the CPU's BLAS kernels.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dynamo_depth.formats import waymo as wf
from dynamo_depth.formats import waymo_lidar, waymo_pb2
from dynamo_depth.formats.tfrecord import write_records
from dynamo_depth.geometry import invert_se3
from dynamo_depth.synth.fused import matmul_fused, matvec_fused, norm_sequential, rotate_fused
from dynamo_depth.synth.world import World, make_world

BASE_TIMESTAMP_US = 1_557_000_000_000_000  # fixed synthetic epoch of world time t = 0
FRAME_PERIOD_S = 0.1
SWEEP_S = 0.1
IMAGE_DELAY_S = 0.055  # FRONT image pose time after the sweep start (real data: ~0.05 s)
MAX_RANGE_M = {"TOP": 75.0, "FRONT": 20.0, "SIDE_LEFT": 20.0, "SIDE_RIGHT": 20.0, "REAR": 20.0}
LASER_WRITE_ORDER = ("FRONT", "REAR", "SIDE_LEFT", "SIDE_RIGHT", "TOP")
FULL_IMAGE_HW = (1280, 1920)
FRONT_INTRINSICS = (2055.0, 2055.0, 940.0, 640.0)  # f_u, f_v, c_u, c_v at FULL_IMAGE_HW
FRONT_DISTORTION = (0.04, -0.33, 0.001, -0.0015, 0.0)  # k1, k2, p1, p2, k3
# (roll, pitch, yaw) rad and (x, y, z) m of each sensor in the vehicle frame (close to the real rig).
_CAMERA_MOUNTS = {
    "FRONT": ((0.0088, -0.0019, 0.0027), (1.5386, -0.0244, 2.1151), FULL_IMAGE_HW),
    "FRONT_LEFT": ((0.0029, 0.0194, 0.7727), (1.4932, 0.0914, 2.1148), FULL_IMAGE_HW),
    "FRONT_RIGHT": ((0.0095, 0.0079, -0.7788), (1.4897, -0.0944, 2.1156), FULL_IMAGE_HW),
    "SIDE_LEFT": ((0.0002, 0.0249, 1.5576), (1.4319, 0.1111, 2.1150), (886, 1920)),
    "SIDE_RIGHT": ((-0.0002, 0.0007, -1.5724), (1.4276, -0.1117, 2.1160), (886, 1920)),
}
_LASER_MOUNTS = {
    "TOP": ((0.0063, -0.0016, 2.5822), (1.43, 0.0, 2.184)),
    "FRONT": ((0.0037, 0.0217, -0.0049), (4.07, 0.0, 0.689)),
    "SIDE_LEFT": ((0.0054, 0.0230, 1.5493), (3.245, 1.025, 0.979)),
    "SIDE_RIGHT": ((0.0029, 0.0240, -1.6094), (3.245, -1.025, 0.979)),
    "REAR": ((0.0082, 0.0270, 3.1130), (-1.155, 0.0, 0.464)),
}
TOP_INCLINATION_RANGE = (-0.3118, 0.0453)  # radians, as the real TOP laser
SHORT_INCLINATION_RANGE = (-math.pi / 2, math.pi / 6)


@dataclass(frozen=True)
class WaymoSynthOptions:
    """Sizes of what is written. Defaults are small and fast; real sizes: ``WaymoSynthOptions.full_size()``.

    ``camera_images``: the cameras whose images are written (any of ``CAMERA_NAMES``; written in enum order).
    """

    top_width: int = 1000
    short_range_hw: tuple[int, int] = (200, 600)
    image_hw: tuple[int, int] = FULL_IMAGE_HW
    jpeg_quality: int = 90
    camera_images: tuple[str, ...] = ("FRONT",)

    def __post_init__(self) -> None:
        unknown = [name for name in self.camera_images if name not in wf.CAMERA_NAMES]
        if unknown or not self.camera_images:
            raise ValueError(f"camera_images must be a non-empty subset of {wf.CAMERA_NAMES}, got {self.camera_images!r}")

    @classmethod
    def full_size(cls) -> WaymoSynthOptions:
        """A real-size record: 5 camera images (1920x1280, sides 1920x886), TOP 64x2650, 4 x 200x600 range images."""
        return cls(top_width=2650, short_range_hw=(200, 600), image_hw=FULL_IMAGE_HW, camera_images=wf.CAMERA_NAMES)


def segment_name(*, seed: int, sequence: int) -> str:
    """Waymo-like segment name of a synthetic sequence (digits and underscores only)."""
    return f"{seed:010d}{sequence:09d}_000_000_020_000"


def frame_start_s(frame_index: int) -> float:
    """World time (s) of the TOP sweep start of frame ``frame_index``."""
    return frame_index * FRAME_PERIOD_S


def top_column_times_s(start_s: float, width: int) -> np.ndarray:
    """(width,) capture time (s) of each TOP range-image column (rolling sweep)."""
    return start_s + (np.arange(width) + 0.5) / width * SWEEP_S


def top_beam_inclinations() -> np.ndarray:
    """(64,) ascending, non-uniform TOP beam inclinations (rad): denser towards the horizon."""
    low, high = TOP_INCLINATION_RANGE
    u = np.linspace(0.0, 1.0, 64)
    rest = 1.0 - u
    # rest ** 1.5 as rest * sqrt(rest): numpy's power is an AVX-512 SVML routine on some CPUs and libm's pow on
    # others (different last bits); multiply and sqrt are correctly rounded everywhere
    return low + (high - low) * (1.0 - rest * np.sqrt(rest))


def _pose(angles: tuple[float, float, float], translation: tuple[float, float, float]) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = waymo_lidar.rotation_from_euler(*(np.float64(a) for a in angles))
    out[:3, 3] = translation
    return out


def _transform(matrix: np.ndarray):
    return waymo_pb2.Transform(transform=[float(v) for v in np.asarray(matrix).ravel()])


def camera_calibration(name: str, image_hw: tuple[int, int]) -> wf.CameraCalibration:
    """The calibration written for camera ``name``, intrinsics scaled to ``image_hw`` (FRONT's size)."""
    angles, translation, full_hw = _CAMERA_MOUNTS[name]
    scale_v, scale_u = image_hw[0] / FULL_IMAGE_HW[0], image_hw[1] / FULL_IMAGE_HW[1]
    f_u, f_v, c_u, c_v = FRONT_INTRINSICS
    height = round(full_hw[0] * scale_v)
    return wf.CameraCalibration(
        name=name, width=round(full_hw[1] * scale_u), height=height, f_u=f_u * scale_u, f_v=f_v * scale_v,
        c_u=c_u * scale_u, c_v=c_v * scale_v - (FULL_IMAGE_HW[0] - full_hw[0]) * scale_v / 2,
        distortion=FRONT_DISTORTION, vehicle_from_camera=_pose(angles, translation))


def laser_calibration(name: str) -> wf.LaserCalibration:
    """The calibration written for laser ``name``."""
    angles, translation = _LASER_MOUNTS[name]
    top = name == "TOP"
    low, high = TOP_INCLINATION_RANGE if top else SHORT_INCLINATION_RANGE
    return wf.LaserCalibration(name=name, vehicle_from_laser=_pose(angles, translation),
                               beam_inclinations=top_beam_inclinations() if top else None,
                               inclination_min=low, inclination_max=high)


def _context(name: str, options: WaymoSynthOptions):
    context = waymo_pb2.Context(name=name)
    for camera in wf.CAMERA_NAMES:
        calib = camera_calibration(camera, options.image_hw)
        context.camera_calibrations.add(
            name=waymo_pb2.CameraName.Name.Value(camera),
            intrinsic=[calib.f_u, calib.f_v, calib.c_u, calib.c_v, *calib.distortion],
            extrinsic=_transform(calib.vehicle_from_camera), width=calib.width, height=calib.height,
            rolling_shutter_direction=2)
    for laser in LASER_WRITE_ORDER:
        calib = laser_calibration(laser)
        entry = context.laser_calibrations.add(
            name=waymo_pb2.LaserName.Name.Value(laser), extrinsic=_transform(calib.vehicle_from_laser),
            beam_inclination_min=calib.inclination_min, beam_inclination_max=calib.inclination_max)
        if calib.beam_inclinations is not None:
            entry.beam_inclinations.extend(float(v) for v in calib.beam_inclinations)
    return context


def _laser_directions(calib: wf.LaserCalibration, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) unit ray directions in the vehicle frame and (W,) laser-frame column azimuths."""
    inclination = calib.row_inclinations(hw[0])[:, None]
    azimuth = waymo_lidar.column_azimuths(hw[1], calib.vehicle_from_laser)[None, :]
    laser = np.stack(np.broadcast_arrays(np.cos(azimuth) * np.cos(inclination),
                                         np.sin(azimuth) * np.cos(inclination), np.sin(inclination)), axis=-1)
    return rotate_fused(calib.vehicle_from_laser[:3, :3], laser), azimuth[0]


def _returns_image(world: World, hits, t_s: float, max_range: float, keep: np.ndarray) -> np.ndarray:
    """(N, 4) float32 rows (range, intensity, elongation, is_in_nlz) of N rays; -1 where no return."""
    valid = keep & (hits.surface >= 0) & (hits.distance <= max_range)
    out = np.full((len(valid), 4), -1.0, dtype=np.float32)
    out[valid, 0] = hits.distance[valid]
    out[valid, 1] = world.reflectance(hits, t_s)[valid]
    out[valid, 2] = 0.0
    return out


def _near_moving_box(world: World, origins: np.ndarray, rays: np.ndarray, start_s: float) -> np.ndarray:
    """(N,) True where a unit ray passes within the bounding sphere a moving box sweeps during the sweep."""
    near = np.zeros(len(rays), dtype=bool)
    mid_s = start_s + SWEEP_S / 2
    for box in world.boxes:
        if box.is_moving:
            radius = 0.5 * norm_sequential(box.size) + float(np.hypot(*box.velocity_xy)) * SWEEP_S / 2 + 0.1
            offset = box.center_at(mid_s) - origins
            along = np.maximum(np.sum(offset * rays, axis=1), 0.0)
            near |= np.sum(offset * offset, axis=1) - along ** 2 <= radius ** 2
    return near


def _top_rays(world: World, start_s: float, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TOP world rays per pixel: origins (64, W, 3), unit directions (64, W, 3), float32 pixel pose (64, W, 6).

    Column c is cast from the float32-rounded vehicle pose at its capture time (what a decoder reads back)."""
    calib = laser_calibration("TOP")
    directions, _ = _laser_directions(calib, (64, width))
    pose = np.empty((64, width, 6), dtype=np.float32)
    origins = np.empty((64, width, 3))
    rays = np.empty((64, width, 3))
    for column, t_s in enumerate(top_column_times_s(start_s, width)):
        world_from_vehicle = world.world_from_ego(float(t_s))
        stored = np.concatenate([waymo_lidar.euler_from_rotation(world_from_vehicle[:3, :3]),
                                 world_from_vehicle[:3, 3]]).astype(np.float32)
        pose[:, column] = stored
        rotation = waymo_lidar.rotation_from_euler(*stored[:3].astype(np.float64))
        origins[:, column] = matvec_fused(rotation, calib.vehicle_from_laser[:3, 3]) + stored[3:].astype(np.float64)
        rays[:, column] = rotate_fused(rotation, directions[:, column])
    return origins, rays, pose


def _top_range_image(world: World, start_s: float, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TOP (64, W, 4) range image, (64, W, 6) float32 pixel pose, (64, W) surface ids (-1 none).

    Columns whose rays never come near a moving box are cast together (the rest of the world is static);
    the others one by one at their own capture time."""
    origins, rays, pose = _top_rays(world, start_s, width)
    image = np.empty((64, width, 4), dtype=np.float32)
    surface = np.empty((64, width), dtype=np.int32)
    times = top_column_times_s(start_s, width)
    dynamic = _near_moving_box(world, origins.reshape(-1, 3), rays.reshape(-1, 3), start_s).reshape(64, width)
    dynamic_columns = np.flatnonzero(dynamic.any(axis=0))
    static_columns = np.flatnonzero(~dynamic.any(axis=0))
    groups = [(static_columns, start_s + SWEEP_S / 2)] + [(np.array([c]), float(times[c])) for c in dynamic_columns]
    for columns, t_s in groups:
        if columns.size == 0:
            continue
        hits = world.ray_cast(origins[:, columns].reshape(-1, 3), rays[:, columns].reshape(-1, 3), t_s)
        values = _returns_image(world, hits, t_s, MAX_RANGE_M["TOP"], np.ones(len(hits.distance), bool))
        image[:, columns] = values.reshape(64, len(columns), 4)
        surface[:, columns] = np.where(values[:, 0] > 0, hits.surface, -1).reshape(64, len(columns))
    return image, pose, surface


def _short_range_image(world: World, name: str, t_s: float, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 4) range image of a short-range laser at time ``t_s`` and (H, W) surface ids."""
    calib = laser_calibration(name)
    directions, azimuth = _laser_directions(calib, hw)
    world_from_vehicle = world.world_from_ego(t_s)
    rays = rotate_fused(world_from_vehicle[:3, :3], directions.reshape(-1, 3))
    origin = matvec_fused(world_from_vehicle[:3, :3], calib.vehicle_from_laser[:3, 3]) + world_from_vehicle[:3, 3]
    hits = world.ray_cast(np.broadcast_to(origin, rays.shape), rays, t_s)
    wrapped = (azimuth + math.pi) % (2 * math.pi) - math.pi
    forward = np.broadcast_to(np.abs(wrapped) < math.pi / 2, hw).ravel()
    image = _returns_image(world, hits, t_s, MAX_RANGE_M[name], forward).reshape(*hw, 4)
    return image, np.where(image[..., 0] > 0, hits.surface.reshape(hw), -1)


def _camera_image(world: World, camera: str, t_s: float, options: WaymoSynthOptions, frame_start_us: int):
    """``camera``'s ``CameraImage``: distorted render at ``t_s`` (calibrated size) as JPEG, with pose and timing."""
    calib = camera_calibration(camera, options.image_hw)
    world_from_vehicle = world.world_from_ego(t_s)
    world_from_camera = matmul_fused(world_from_vehicle, calib.vehicle_from_opencv_camera)
    image, _ = world.render(K=calib.K, world_from_camera=world_from_camera, hw=(calib.height, calib.width),
                            t_s=t_s, distortion=calib.distortion)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=options.jpeg_quality)
    rotation = world_from_vehicle[:3, :3]
    velocity = world.ego_speed * rotation[:, 0]
    spin = world.ego_yaw_rate * rotation[:, 2]
    pose_time = frame_start_us * 1e-6 + IMAGE_DELAY_S
    return waymo_pb2.CameraImage(
        name=waymo_pb2.CameraName.Name.Value(camera), image=buffer.getvalue(), pose=_transform(world_from_vehicle),
        velocity=waymo_pb2.Velocity(v_x=velocity[0], v_y=velocity[1], v_z=velocity[2],
                                    w_x=spin[0], w_y=spin[1], w_z=spin[2]),
        pose_timestamp=pose_time, shutter=0.005, camera_trigger_time=pose_time - 0.0125,
        camera_readout_done_time=pose_time + 0.0125)


_LABEL_TYPES = {"vehicle": "TYPE_VEHICLE", "human": "TYPE_PEDESTRIAN", "pedestrian": "TYPE_PEDESTRIAN",
                "cycle": "TYPE_CYCLIST"}


def _laser_labels(world: World, t_s: float, counts: dict[int, tuple[int, int]]) -> list:
    """One ``Label`` per world box at ``t_s`` in the vehicle frame; ``counts[k]`` = (all, TOP) points."""
    world_from_vehicle = world.world_from_ego(t_s)
    vehicle_from_world = invert_se3(world_from_vehicle)
    ego_yaw = math.atan2(world_from_vehicle[1, 0], world_from_vehicle[0, 0])
    labels = []
    for k, box in enumerate(world.boxes):
        center = matvec_fused(vehicle_from_world[:3, :3], box.center_at(t_s)) + vehicle_from_world[:3, 3]
        speed = matvec_fused(vehicle_from_world[:3, :3], np.array([box.velocity_xy[0], box.velocity_xy[1], 0.0]))
        heading = (box.yaw - ego_yaw + math.pi) % (2 * math.pi) - math.pi
        kind = next((v for key, v in _LABEL_TYPES.items() if box.category.startswith(key)), "TYPE_UNKNOWN")
        labels.append(waymo_pb2.Label(
            box=waymo_pb2.Label.Box(center_x=center[0], center_y=center[1], center_z=center[2],
                                    length=box.size[0], width=box.size[1], height=box.size[2], heading=heading),
            metadata=waymo_pb2.Label.Metadata(speed_x=speed[0], speed_y=speed[1], speed_z=0.0),
            type=waymo_pb2.Label.Type.Value(kind), id=f"box{k:02d}",
            num_lidar_points_in_box=counts.get(k + 1, (0, 0))[0],
            num_top_lidar_points_in_box=counts.get(k + 1, (0, 0))[1]))
    return labels


def _add_laser(frame, name: str, image: np.ndarray, pixel_pose: np.ndarray | None) -> None:
    laser = frame.lasers.add(name=waymo_pb2.LaserName.Name.Value(name))
    laser.ri_return1.range_image_compressed = wf.encode_matrix(image)
    laser.ri_return2.range_image_compressed = wf.encode_matrix(np.full_like(image, -1.0))
    if pixel_pose is not None:
        laser.ri_return1.range_image_pose_compressed = wf.encode_matrix(pixel_pose)


def make_frame(world: World, *, name: str, frame_index: int, options: WaymoSynthOptions) -> bytes:
    """One serialized ``Frame`` (deterministic bytes) of sequence ``name`` at ``frame_index``."""
    start_s = frame_start_s(frame_index)
    start_us = BASE_TIMESTAMP_US + round(start_s * 1e6)
    pose_s = start_s + SWEEP_S / 2
    frame = waymo_pb2.Frame(context=_context(name, options), timestamp_micros=start_us,
                            pose=_transform(world.world_from_ego(pose_s)))
    for camera in (name for name in wf.CAMERA_NAMES if name in options.camera_images):
        frame.images.append(_camera_image(world, camera, start_s + IMAGE_DELAY_S, options, start_us))
    surfaces = {}
    for laser in LASER_WRITE_ORDER:
        if laser == "TOP":
            image, pixel_pose, surfaces[laser] = _top_range_image(world, start_s, options.top_width)
        else:
            image, surfaces[laser] = _short_range_image(world, laser, pose_s, options.short_range_hw)
            pixel_pose = None
        _add_laser(frame, laser, image, pixel_pose)
    counts = {k: (sum(int(np.count_nonzero(s == k)) for s in surfaces.values()),
                  int(np.count_nonzero(surfaces["TOP"] == k))) for k in range(1, len(world.boxes) + 1)}
    frame.laser_labels.extend(_laser_labels(world, pose_s, counts))
    return frame.SerializeToString(deterministic=True)


def write_waymo(out_dir: str | Path, *, sequences: int = 1, frames: int = 4, seed: int = 0,
                options: WaymoSynthOptions | None = None) -> list[Path]:
    """Write ``sequences`` synthetic segments of ``frames`` frames; returns the TFRecord paths.

    Sequence 0 goes to ``<out>/val/``, the others to ``<out>/train/``; sequence s uses
    ``make_world(seed + s)``. Same arguments give byte-identical files.
    """
    if sequences < 1 or frames < 1:
        raise ValueError(f"write_waymo: sequences and frames must be >= 1, got {sequences}, {frames}")
    options = options or WaymoSynthOptions()
    paths = []
    for sequence in range(sequences):
        name = segment_name(seed=seed, sequence=sequence)
        split = "val" if sequence == 0 else "train"
        path = Path(out_dir) / split / f"segment-{name}_with_camera_labels.tfrecord"
        path.parent.mkdir(parents=True, exist_ok=True)
        world = make_world(seed + sequence)
        write_records(path, (make_frame(world, name=name, frame_index=k, options=options) for k in range(frames)))
        paths.append(path)
    return paths
