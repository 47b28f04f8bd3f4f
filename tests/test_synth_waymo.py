"""Synthetic Waymo segments: decoded with our own reader, checked against the world they were cast from."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dynamo_depth.formats import waymo as wf
from dynamo_depth.formats import waymo_lidar
from dynamo_depth.formats.tfrecord import iter_records
from dynamo_depth.synth import waymo as sw
from dynamo_depth.synth.world import World, make_world

SMALL = sw.WaymoSynthOptions(top_width=400, short_range_hw=(60, 180), image_hw=(320, 480))
SEED = 5


@pytest.fixture(scope="module")
def small_segments(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return sw.write_waymo(tmp_path_factory.mktemp("waymo"), sequences=2, frames=2, seed=SEED, options=SMALL)


def _world_time(timestamp_us: int) -> float:
    return (timestamp_us - sw.BASE_TIMESTAMP_US) * 1e-6


def _surface_distances(world: World, points: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(N, 1 + boxes) distance of world points to the ground and to each box at each point's time."""
    distances = [np.abs(points[:, 2])]
    for box in world.boxes:
        half = 0.5 * np.asarray(box.size)
        centres = np.stack([box.center_at(float(t)) for t in times]) if len(times) else np.zeros((0, 3))
        rotation = box.world_from_box(0.0)[:3, :3]
        local = (points - centres) @ rotation  # box axes (yaw only, no motion of the rotation)
        excess = np.abs(local) - half
        outside = np.linalg.norm(np.maximum(excess, 0.0), axis=1)
        distances.append(np.abs(outside + np.minimum(excess.max(axis=1), 0.0)))
    return np.stack(distances, axis=1)


def _world_points_and_times(frame) -> tuple[np.ndarray, np.ndarray]:
    """All first-return points of a frame in the world frame, (N, 3), and their capture times (N,) s."""
    start = _world_time(frame.timestamp_micros)
    images = wf.range_images(frame, returns=(1,))
    points, times = [], []
    for name, vehicle_points in waymo_lidar.lidar_points(frame).items():
        if name == "TOP":
            _, cols = np.nonzero(images[name].returns[1][..., 0] > 0)
            times.append(sw.top_column_times_s(start, images[name].returns[1].shape[1])[cols])
        else:
            times.append(np.full(len(vehicle_points), start + 0.05))
        points.append(vehicle_points)
    world_from_vehicle = wf.frame_pose(frame)
    stacked = np.concatenate(points)
    return stacked @ world_from_vehicle[:3, :3].T + world_from_vehicle[:3, 3], np.concatenate(times)


def test_layout_and_crcs(small_segments: list[Path]) -> None:
    val, train = small_segments
    assert val.parent.name == "val" and train.parent.name == "train"
    assert val.name == f"segment-{sw.segment_name(seed=SEED, sequence=0)}_with_camera_labels.tfrecord"
    for path in small_segments:
        records = list(iter_records(path))  # verifies both masked CRC32Cs of every record
        assert len(records) == 2
        frames = [wf.parse_frame(payload) for _, payload in records]
        assert [f.timestamp_micros for f in frames] == [sw.BASE_TIMESTAMP_US, sw.BASE_TIMESTAMP_US + 100_000]
        assert [wf.laser_calibrations(frames[0])["TOP"].beam_inclinations.size] == [64]
        assert [laser.name for laser in frames[0].lasers] == [2, 5, 3, 4, 1]  # real order, not enum order


def test_points_lie_on_world_surfaces(small_segments: list[Path]) -> None:
    world = make_world(SEED)
    for _, frame in wf.iter_frames(small_segments[0]):
        start = _world_time(frame.timestamp_micros)
        world_from_vehicle = wf.frame_pose(frame)
        np.testing.assert_allclose(world_from_vehicle, world.world_from_ego(start + 0.05), atol=1e-12)
        points = waymo_lidar.lidar_points(frame)
        images = wf.range_images(frame, returns=(1,))
        for name, vehicle_points in points.items():
            assert len(vehicle_points) > 500, name
            if name == "TOP":
                _, cols = np.nonzero(images[name].returns[1][..., 0] > 0)
                times = sw.top_column_times_s(start, SMALL.top_width)[cols]
            else:
                times = np.full(len(vehicle_points), start + 0.05)
            world_points = vehicle_points @ world_from_vehicle[:3, :3].T + world_from_vehicle[:3, 3]
            distances = _surface_distances(world, world_points, times)
            distance, surface = distances.min(axis=1), distances.argmin(axis=1)
            assert distance.max() <= 0.01, (name, distance.max())
            assert np.any(surface == 0) and (name == "REAR" or np.any(surface > 0)), name
            ranges = images[name].returns[1][..., 0]
            assert ranges.max() <= sw.MAX_RANGE_M[name] and np.all((ranges > 0) | (ranges == -1))


def test_front_projection_matches_rendered_depth(small_segments: list[Path]) -> None:
    world = make_world(SEED)
    _, frame = next(wf.iter_frames(small_segments[0]))
    calib = wf.camera_calibrations(frame)["FRONT"]
    image = wf.camera_images(frame)["FRONT"]
    assert (calib.width, calib.height) == (480, 320) and calib.f_u == pytest.approx(2055 / 4)
    t_image = image.pose_timestamp_s - sw.BASE_TIMESTAMP_US * 1e-6
    world_from_camera = image.world_from_vehicle @ calib.vehicle_from_opencv_camera
    rendered, z_depth = world.render(K=calib.K, world_from_camera=world_from_camera, hw=(320, 480), t_s=t_image,
                                     distortion=calib.distortion)
    world_points, times = _world_points_and_times(frame)
    distances = _surface_distances(world, world_points, times)
    moving = [k + 1 for k, box in enumerate(world.boxes) if box.is_moving]
    static = (distances.min(axis=1) < 0.01) & np.all(distances[:, moving] > 0.05, axis=1)
    camera_from_world = np.linalg.inv(world_from_camera)
    cam = world_points[static] @ camera_from_world[:3, :3].T + camera_from_world[:3, 3]
    cam = cam[cam[:, 2] > 1.0]
    pinhole = cam[:, :2] / cam[:, 2:] * [calib.f_u, calib.f_v] + [calib.c_u, calib.c_v]
    cam = cam[np.all((pinhole > -50) & (pinhole < [530, 370]), axis=1)]  # no fold-back of the polynomial model
    uv, _ = cv2.projectPoints(cam, np.zeros(3), np.zeros(3), calib.K, np.array(calib.distortion))
    uv = uv.reshape(-1, 2)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] <= 478.99) & (uv[:, 1] >= 0) & (uv[:, 1] <= 318.99)
    uv, z = uv[inside], cam[inside, 2]
    u0, v0 = np.floor(uv).astype(int).T
    # Inverse depth is affine in the image over a plane: interpolate it bilinearly, and call a 2x2 cell
    # smooth (one surface) when its cross difference vanishes; depth edges are left out.
    inverse = 1.0 / z_depth
    c00, c01, c10, c11 = inverse[v0, u0], inverse[v0, u0 + 1], inverse[v0 + 1, u0], inverse[v0 + 1, u0 + 1]
    smooth = (np.minimum.reduce([c00, c01, c10, c11]) > 0) & (np.abs(c00 + c11 - c01 - c10) < 2e-3 * c00)
    fu, fv = uv[:, 0] - u0, uv[:, 1] - v0
    interpolated = 1.0 / ((1 - fu) * (1 - fv) * c00 + fu * (1 - fv) * c01 + (1 - fu) * fv * c10 + fu * fv * c11)
    assert len(z) > 2000 and smooth.mean() > 0.8, (len(z), smooth.mean())
    # LiDAR and camera sit at different places: a few LiDAR points are hidden from the camera behind a closer
    # surface, or lie within a pixel of a depth edge (a car roof seen at grazing angle). Everything else matches.
    relative = interpolated[smooth] / z[smooth] - 1.0
    matched = np.abs(relative) < 0.01
    assert matched.mean() > 0.99 and np.median(np.abs(relative)) < 1e-4, matched.mean()
    padded = np.pad(z_depth, 2, mode="edge")
    for index in np.flatnonzero(~matched):
        u, v = u0[smooth][index] + 2, v0[smooth][index] + 2
        window = padded[v - 1:v + 3, u - 1:u + 3]
        assert relative[index] < 0 or window.max() / window.min() > 1.5, (uv[smooth][index], relative[index])
    decoded = np.asarray(Image.open(io.BytesIO(image.jpeg)).convert("RGB"), dtype=np.float64)
    undistorted, _ = world.render(K=calib.K, world_from_camera=world_from_camera, hw=(320, 480), t_s=t_image)
    error_distorted = np.abs(decoded - rendered).mean()
    assert error_distorted < 4.0 and error_distorted < np.abs(decoded - undistorted).mean()


def test_labels_and_motion(small_segments: list[Path]) -> None:
    world = make_world(SEED)
    _, frame = next(wf.iter_frames(small_segments[0]))
    labels = wf.laser_labels(frame)
    assert len(labels) == len(world.boxes)
    vehicle_from_world = np.linalg.inv(wf.frame_pose(frame))
    t_pose = _world_time(frame.timestamp_micros) + 0.05
    speeds = []
    for label, box in zip(labels, world.boxes, strict=True):
        expected = vehicle_from_world[:3, :3] @ box.center_at(t_pose) + vehicle_from_world[:3, 3]
        np.testing.assert_allclose(label.center, expected, atol=1e-9)
        np.testing.assert_allclose(label.size, box.size)
        speeds.append(np.linalg.norm(label.speed))
        assert speeds[-1] == pytest.approx(np.hypot(*box.velocity_xy), abs=1e-9)
    assert max(speeds) > 1.0 and min(speeds) == 0.0
    assert sum(label.num_lidar_points_in_box for label in frame.laser_labels) > 100


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    tiny = sw.WaymoSynthOptions(top_width=50, short_range_hw=(10, 30), image_hw=(64, 96))
    first = sw.write_waymo(tmp_path / "a", frames=2, seed=2, options=tiny)
    second = sw.write_waymo(tmp_path / "b", frames=2, seed=2, options=tiny)
    other = sw.write_waymo(tmp_path / "c", frames=2, seed=3, options=tiny)
    digest = [hashlib.sha256(p[0].read_bytes()).hexdigest() for p in (first, second, other)]
    assert digest[0] == digest[1] != digest[2]
    with pytest.raises(ValueError, match="frames must be >= 1"):
        sw.write_waymo(tmp_path / "d", frames=0)


@pytest.mark.slow
def test_default_sizes_one_frame(tmp_path: Path) -> None:
    (path,) = sw.write_waymo(tmp_path, frames=1)
    _, frame = next(wf.iter_frames(path))
    jpeg = wf.camera_images(frame)["FRONT"].jpeg
    assert Image.open(io.BytesIO(jpeg)).size == (1920, 1280)
    front = wf.camera_calibrations(frame)["FRONT"]
    assert (front.f_u, front.c_u, front.c_v, front.distortion[0]) == (2055.0, 940.0, 640.0, 0.04)
    images = wf.range_images(frame)
    assert images["TOP"].returns[1].shape == (64, 1000, 4) and images["TOP"].pixel_pose.shape == (64, 1000, 6)
    assert all(images[n].returns[1].shape == (200, 600, 4) for n in ("FRONT", "SIDE_LEFT", "SIDE_RIGHT", "REAR"))
    assert all(np.all(images[n].returns[2] == -1) for n in images)
