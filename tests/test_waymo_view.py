"""The Waymo builder's LiDAR pixel cull (builders/waymo_view.py): hand-computed wedge and bounds, never drops a
visible point (random tilted lasers, fast rolling shutter, points next to the camera), same depth bytes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from builders import waymo
from builders.waymo_view import camera_wedge, rolling_shutter_bound, wedge_selector
from dynamo_depth.formats import waymo as wf
from dynamo_depth.formats import waymo_lidar
from dynamo_depth.formats.tfrecord import iter_records
from dynamo_depth.geometry import invert_se3
from dynamo_depth.synth import waymo as sw
from tests.samples import SHARED

REFERENCE_RECORD = SHARED / "reference" / "waymo_synthetic_lidar" / "synthetic_lidar_3frames.tfrecord"


def _camera(*, yaw: float = 0.0, pitch: float = 0.0, xyz=(1.5, 0.0, 2.0), width: int = 1920, height: int = 1280,
            f: float = 960.0) -> wf.CameraCalibration:
    """A pinhole camera (Waymo axes: x forward) at ``xyz`` turned by ``yaw`` then pitched by ``pitch``."""
    rotation = waymo_lidar.rotation_from_euler(np.float64(0.0), np.float64(pitch), np.float64(yaw))
    vehicle_from_camera = np.eye(4)
    vehicle_from_camera[:3, :3], vehicle_from_camera[:3, 3] = rotation, xyz
    return wf.CameraCalibration(name="FRONT", width=width, height=height, f_u=f, f_v=f, c_u=width / 2, c_v=height / 2,
                                distortion=(0.0,) * 5, vehicle_from_camera=vehicle_from_camera)


def test_camera_wedge_hand_computed() -> None:
    # level camera, f = W/2: the image's left/right edges are 45 degrees off its axis
    wedge = camera_wedge(_camera(yaw=0.3))
    assert wedge.center == pytest.approx(0.3, abs=1e-12)
    assert wedge.half_width == pytest.approx(math.pi / 4, abs=1e-12)
    np.testing.assert_allclose(wedge.origin_xy, [1.5, 0.0])
    # pitched down by 30 degrees: a corner ray (1, 1, -1)/sqrt3 in camera axes pitched -> wider in azimuth
    pitch = math.radians(30)
    top_right = np.array([math.cos(pitch) * 1 + math.sin(pitch) * (640 / 960), 1.0])  # x after pitch, y
    bottom_right = np.array([math.cos(pitch) * 1 - math.sin(pitch) * (640 / 960), 1.0])
    expected = max(math.atan2(v[1], v[0]) for v in (top_right, bottom_right))
    assert camera_wedge(_camera(pitch=pitch)).half_width == pytest.approx(expected, abs=1e-12)
    # looking 80 degrees down, the bottom corners' rays point backwards: no wedge below 180 degrees, no cull
    assert camera_wedge(_camera(pitch=math.radians(80))) is None


def test_rolling_shutter_bound_hand_computed() -> None:
    world_from_vehicle = np.eye(4)
    world_from_vehicle[:3, :3] = waymo_lidar.rotation_from_euler(np.float64(0.01), np.float64(-0.02), np.float64(3.1))
    world_from_vehicle[:3, 3] = [100.0, -50.0, 3.0]
    pose = np.zeros((2, 3, 6), dtype=np.float32)
    pose[...] = [0.01, -0.02, 3.1, 100.0, -50.0, 3.0]
    pose[1, 2] = [0.01, -0.02, -3.1, 103.0, -46.0, 3.0]  # yaw across +-pi: 2 pi - 6.2 rad; moved (3, 4, 0) m
    laser = wf.LaserCalibration(name="TOP", vehicle_from_laser=np.eye(4), beam_inclinations=None,
                                inclination_min=-0.3, inclination_max=0.05)
    pixels = waymo_lidar.LaserPixels(calib=laser, ranges=np.ones((2, 3), np.float32), inclinations=np.zeros(2),
                            azimuths=np.zeros(3), pixel_pose=pose, world_from_vehicle=world_from_vehicle)
    turn, shift = rolling_shutter_bound(pixels)
    assert turn == pytest.approx(2 * math.pi - 6.2, abs=2e-5)
    assert shift == pytest.approx(5.0, abs=1e-3)
    assert rolling_shutter_bound(waymo_lidar.LaserPixels(calib=laser, ranges=pixels.ranges, inclinations=np.zeros(2),
                                                azimuths=np.zeros(3), pixel_pose=None, world_from_vehicle=None)) == (0, 0)


def _visible(points: np.ndarray, calib: wf.CameraCalibration) -> np.ndarray:
    _, index = waymo.project_to_camera(points, camera_from_vehicle=invert_se3(calib.vehicle_from_opencv_camera),
                                       K=calib.K, hw=(calib.height, calib.width))
    return index


@pytest.mark.parametrize(("seed", "turn", "shift", "most_kept"), [(s, 0.2, 4.0, 1.0) for s in range(4)]
                         + [(s, 0.005, 0.3, 0.45) for s in range(4, 8)], ids=lambda v: str(v))
def test_cull_never_drops_a_visible_point(seed: int, turn: float, shift: float, most_kept: float) -> None:
    """Random tilted lasers near a random camera, random ranges (0.2-80 m), a rolling shutter of per-pixel
    yaw +-``turn`` rad and +-``shift`` m (violent: 0.2 rad, 4 m; a car at 30 m/s: 0.005 rad, 0.3 m):
    every pixel whose point lands in the image is selected; at most ``most_kept`` of all are."""
    rng = np.random.default_rng(seed)
    calib = _camera(yaw=rng.uniform(-np.pi, np.pi), pitch=rng.uniform(-0.3, 0.3), xyz=rng.uniform(-2, 2, 3))
    wedge = camera_wedge(calib)
    extrinsic = np.eye(4)
    extrinsic[:3, :3] = waymo_lidar.rotation_from_euler(*(np.float64(a) for a in rng.uniform([-0.5, -0.5, -np.pi],
                                                                                     [0.5, 0.5, np.pi])))
    extrinsic[:3, 3] = rng.uniform(-2, 2, 3)
    laser = wf.LaserCalibration(name="TOP", vehicle_from_laser=extrinsic, beam_inclinations=None,
                                inclination_min=-1.2, inclination_max=0.4)
    height, width = 48, 720
    ranges = rng.uniform(0.2, 80.0, (height, width)).astype(np.float32)
    ranges[rng.random((height, width)) < 0.05] = 0.0
    world_from_vehicle = np.eye(4)
    world_from_vehicle[:3, :3] = waymo_lidar.rotation_from_euler(np.float64(0.02), np.float64(0.01), np.float64(1.0))
    world_from_vehicle[:3, 3] = [500.0, 200.0, 10.0]
    pose = np.empty((height, width, 6), dtype=np.float32)
    pose[..., :3] = [0.02, 0.01, 1.0] + rng.uniform(-1, 1, (height, width, 3)) * [turn / 4, turn / 4, turn]
    pose[..., 3:] = [500.0, 200.0, 10.0] + rng.uniform(-shift, shift, (height, width, 3))
    image = np.zeros((height, width, 4), dtype=np.float32)
    image[..., 0] = ranges
    every = waymo_lidar._laser_points(image, laser, pose, world_from_vehicle)
    visible = _visible(every, calib)
    rows, cols = np.nonzero(ranges > 0)
    selected = wedge_selector(wedge)(waymo_lidar.LaserPixels(
        calib=laser, ranges=ranges, inclinations=laser.row_inclinations(height),
        azimuths=waymo_lidar.column_azimuths(width, extrinsic), pixel_pose=pose, world_from_vehicle=world_from_vehicle))
    assert len(visible) > 100
    assert selected[rows[visible], cols[visible]].all()
    assert selected.mean() <= most_kept  # a ~90-degree wedge of a 360-degree laser, widened by the bounds
    culled = waymo_lidar._laser_points(image, laser, pose, world_from_vehicle, select=wedge_selector(wedge))
    np.testing.assert_array_equal(culled, every[selected[rows, cols]])  # same bits for the points it keeps


@pytest.mark.parametrize("scale", [1 + 1e-7, 1 - 1e-7])
@pytest.mark.parametrize("column", [0, 1, 2])
def test_cull_keeps_border_points_of_a_not_quite_orthonormal_camera(scale: float, column: int) -> None:
    """A calibration a few ulps off orthonormal (one column of R scaled by 1 +- 1e-7): the depth projects
    with R^T, so the wedge must be built from R^-T rays. Points found by bisection to lie on the image's
    left and right borders (within 1e-12 rad of azimuth) at 75 m are kept."""
    calib = _camera(yaw=0.1, xyz=(1.5, 0.0, 2.0), f=2000.0)
    calib.vehicle_from_camera[:3, column] *= scale
    wedge = camera_wedge(calib)
    extrinsic = np.eye(4)
    extrinsic[:3, 3] = [1.0, 0.3, 2.2]
    laser = wf.LaserCalibration(name="FRONT", vehicle_from_laser=extrinsic, beam_inclinations=None,
                                inclination_min=-0.2, inclination_max=0.2)
    select, r = wedge_selector(wedge), float(np.float32(75.0))

    def point(inclination: float, azimuth: float) -> np.ndarray:
        direction = [math.cos(azimuth) * math.cos(inclination), math.sin(azimuth) * math.cos(inclination),
                     math.sin(inclination)]
        return (extrinsic[:3, 3] + r * np.array(direction))[None, :]

    kept = 0
    for inclination in np.linspace(-0.15, 0.15, 7):
        for side in (-1.0, 1.0):
            inside, outside = 0.1, 0.1 + side * (wedge.half_width + 0.3)
            assert len(_visible(point(inclination, inside), calib)) == 1
            while abs(outside - inside) > 1e-12:
                middle = 0.5 * (inside + outside)
                inside, outside = (middle, outside) if len(_visible(point(inclination, middle), calib)) else (inside, middle)
            pixel = waymo_lidar.LaserPixels(calib=laser, ranges=np.full((1, 1), r, np.float32), inclinations=np.array([inclination]),
                                   azimuths=np.array([inside]), pixel_pose=None, world_from_vehicle=None)
            kept += bool(select(pixel)[0, 0])
    assert kept == 14


def _frame_depths(path: Path, *, cull: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
    out = []
    for _, payload in iter_records(path):
        frame = wf.parse_frame(payload)
        out.append(waymo.frame_depth(frame, wf.camera_calibrations(frame)["FRONT"], cull=cull))
    return out


def _assert_same(full: list, culled: list) -> None:
    assert len(full) == len(culled)
    for (depth, motion), (depth_c, motion_c) in zip(full, culled, strict=True):
        assert len(depth) > 1000
        assert depth.tobytes() == depth_c.tobytes()
        assert (motion is None) == (motion_c is None)
        assert motion is None or motion.tobytes() == motion_c.tobytes()


def test_cull_gives_the_same_depth_bytes_on_the_synthetic_world(tmp_path: Path) -> None:
    (path,) = sw.write_waymo(tmp_path, sequences=1, frames=3, seed=3,
                             options=sw.WaymoSynthOptions(top_width=900, short_range_hw=(80, 240)))
    _assert_same(_frame_depths(path, cull=False), _frame_depths(path, cull=True))


@pytest.mark.skipif(not REFERENCE_RECORD.exists(), reason="../shared (Waymo synthetic-LiDAR reference) is absent")
def test_cull_gives_the_same_depth_bytes_on_the_reference_record() -> None:
    _assert_same(_frame_depths(REFERENCE_RECORD, cull=False), _frame_depths(REFERENCE_RECORD, cull=True))

