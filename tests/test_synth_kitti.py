"""The synthetic KITTI writer, checked only through files read back with our KITTI readers."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynamo_depth.formats import kitti as fmt
from dynamo_depth.synth import cli
from dynamo_depth.synth import kitti as synth
from dynamo_depth.synth.world import World

FRAMES = 3


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kitti_synth")
    summary = synth.write_kitti(out, sequences=1, frames=FRAMES, seed=0)
    assert summary["drives"] == ["2011_09_26_drive_9001_sync"] and summary["files"] == 3 + 7 + 4 * FRAMES
    return out


def _drive(tree: Path) -> Path:
    return tree / "2011_09_26" / "2011_09_26_drive_9001_sync"


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _read_back(tree: Path) -> tuple[fmt.KittiCalib, np.ndarray, World]:
    """Calibration, world_from_imu poses of the frames (OXTS, relative to the first), and the scene."""
    calib = fmt.load_kitti_calib(tree / "2011_09_26")
    packets = [fmt.read_oxts(p) for p in sorted((_drive(tree) / "oxts" / "data").glob("*.txt"))]
    poses = fmt.oxts_to_world_from_imu(packets, relative_to_first=True)
    return calib, poses, synth.drive_world(seed=0, sequence=0)


def _on_surface(world: World, points: np.ndarray, t_s: float, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(on the ground z=0, on a face of some box at t_s) masks for world points (N, 3)."""
    on_ground = np.abs(points[:, 2]) < tolerance
    on_box = np.zeros(len(points), dtype=bool)
    for box in world.boxes:
        local = (np.linalg.inv(box.world_from_box(t_s)) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
        slack = 0.5 * np.asarray(box.size) - np.abs(local)
        on_box |= (slack.min(axis=1) > -tolerance) & (slack.min(axis=1) < tolerance)
    return on_ground, on_box


def test_layout_images_and_timestamps(tree: Path) -> None:
    drive = _drive(tree)
    for camera in ("image_02", "image_03"):
        for frame in range(FRAMES):
            with Image.open(drive / camera / "data" / f"{frame:010d}.png") as image:
                assert image.size == (1242, 375) and image.mode == "RGB"
    times = fmt.read_timestamps(drive / "velodyne_points" / "timestamps.txt")
    np.testing.assert_array_equal(np.diff(times), [100_000] * (FRAMES - 1))
    np.testing.assert_array_equal(fmt.read_timestamps(drive / "velodyne_points" / "timestamps_start.txt"), times - 50_000)
    np.testing.assert_array_equal(fmt.read_timestamps(drive / "image_02" / "timestamps.txt"), times)
    assert (drive / "oxts" / "dataformat.txt").read_text().splitlines()[0].startswith("lat:")
    assert len((drive / "oxts" / "dataformat.txt").read_text().splitlines()) == 30


def test_calibration_is_realistic(tree: Path) -> None:
    calib = fmt.load_kitti_calib(tree / "2011_09_26")
    assert calib.K("image_02")[0, 0] == pytest.approx(721.5377) and calib.image_hw["image_03"] == (375, 1242)
    centre_02 = np.linalg.inv(calib.camera_from_velo("image_02"))[:3, 3]
    centre_03 = np.linalg.inv(calib.camera_from_velo("image_03"))[:3, 3]
    assert np.linalg.norm(centre_02 - centre_03) == pytest.approx(0.54, abs=1e-3)
    assert (centre_02 - centre_03)[1] > 0.5  # camera 02 is the left one (velodyne y = left)
    velo_in_ego = synth.EGO_FROM_IMU @ np.linalg.inv(calib.velo_from_imu)
    assert velo_in_ego[2, 3] == pytest.approx(1.73, abs=0.01)


def test_oxts_poses_compose_as_designed(tree: Path) -> None:
    calib, poses, world = _read_back(tree)
    packets = [fmt.read_oxts(p) for p in sorted((_drive(tree) / "oxts" / "data").glob("*.txt"))]
    first = synth.world_from_imu(world, 0.0)
    for frame in range(FRAMES):
        t_s = frame / 10.0
        expected = np.linalg.inv(first) @ world.world_from_ego(t_s) @ synth.EGO_FROM_IMU
        np.testing.assert_allclose(poses[frame, :3, 3], expected[:3, 3], atol=1e-8)
        np.testing.assert_allclose(poses[frame, :3, :3], expected[:3, :3], atol=1e-12)
        assert packets[frame].vf == pytest.approx(world.ego_speed)
        assert math.hypot(packets[frame].vn, packets[frame].ve) == pytest.approx(world.ego_speed)
    # chord of the arc travelled in 0.1 s: 2 v / w sin(w dt / 2)
    w, v = world.ego_yaw_rate, world.ego_speed
    chord = 2 * v / w * math.sin(w * 0.1 / 2)
    assert np.linalg.norm(poses[1, :3, 3] - poses[0, :3, 3]) == pytest.approx(chord, rel=1e-9)
    assert math.atan2(poses[2, 1, 0], poses[2, 0, 0]) == pytest.approx(w * 0.2, abs=1e-12)


def _velodyne_in_world(tree: Path, frame: int) -> tuple[np.ndarray, np.ndarray]:
    """(velodyne points (N, 4) as read, the same points in the synthetic world frame (N, 3))."""
    calib, poses, world = _read_back(tree)
    scan = fmt.read_velodyne(_drive(tree) / "velodyne_points" / "data" / f"{frame:010d}.bin")
    synth_from_kitti = synth.world_from_imu(world, 0.0)  # the OXTS world is the first IMU frame
    world_from_velo = synth_from_kitti @ poses[frame] @ np.linalg.inv(calib.velo_from_imu)
    homogeneous = np.c_[scan[:, :3].astype(np.float64), np.ones(len(scan))]
    return scan, (world_from_velo @ homogeneous.T).T[:, :3]


@pytest.mark.parametrize("frame", [0, FRAMES - 1])
def test_lidar_points_lie_on_scene_surfaces(tree: Path, frame: int) -> None:
    scan, points = _velodyne_in_world(tree, frame)
    world = synth.drive_world(seed=0, sequence=0)
    on_ground, on_box = _on_surface(world, points, frame / 10.0, tolerance=0.01)
    assert np.all(on_ground | on_box), f"{np.count_nonzero(~(on_ground | on_box))} points off every surface"
    assert on_ground.mean() > 0.5 and on_box.sum() > 500
    ranges = np.linalg.norm(scan[:, :3], axis=1)
    assert ranges.max() <= synth.MAX_RANGE_M + 1e-3 and ranges.min() >= synth.MIN_RANGE_M - 1e-3
    assert 0.0 <= scan[:, 3].min() and scan[:, 3].max() <= 1.0 and scan[:, 3].std() > 0.02


def test_lidar_projects_onto_rendered_depth(tree: Path) -> None:
    calib, poses, world = _read_back(tree)
    scan = fmt.read_velodyne(_drive(tree) / "velodyne_points" / "data" / f"{1:010d}.bin")
    homogeneous = np.c_[scan[:, :3].astype(np.float64), np.ones(len(scan))]
    uvw = (calib.velo_to_pixels("image_02") @ homogeneous.T).T  # the devkit's P_rect @ R_rect @ Tr
    z = uvw[:, 2]
    front = z > 1.0
    u = np.rint(uvw[front, 0] / z[front]).astype(int)
    v = np.rint(uvw[front, 1] / z[front]).astype(int)
    inside = (u >= 1) & (u < 1241) & (v >= 1) & (v < 374)
    u, v, z = u[inside], v[inside], z[front][inside]
    # render camera 02 from the files: world = first IMU frame of the OXTS poses
    world_from_camera = (synth.world_from_imu(world, 0.0) @ poses[1] @ np.linalg.inv(calib.velo_from_imu)
                         @ np.linalg.inv(calib.camera_from_velo("image_02")))
    image, depth = world.render(K=calib.K("image_02"), world_from_camera=world_from_camera, hw=(375, 1242), t_s=0.1)
    stored = np.asarray(Image.open(_drive(tree) / "image_02" / "data" / f"{1:010d}.png"))
    np.testing.assert_array_equal(image, stored)  # the PNG is exactly this render
    # the LiDAR sits ~0.3 m behind and above the camera: a few points it sees are hidden from the camera
    camera_centre = world_from_camera[:3, 3]
    points = (world_from_camera @ calib.camera_from_velo("image_02") @ homogeneous[front][inside].T).T[:, :3]
    to_points = points - camera_centre
    hits = world.ray_cast(np.broadcast_to(camera_centre, to_points.shape), to_points, 0.1)
    visible = hits.distance > np.linalg.norm(to_points, axis=1) - 0.01
    assert visible.mean() > 0.97
    # compare where the depth map is smooth and near enough that half a pixel changes depth < 1 %
    window = np.stack([depth[v + dv, u + du] for dv in (-1, 0, 1) for du in (-1, 0, 1)])
    smooth = (window.max(axis=0) - window.min(axis=0)) < 0.01 * z
    check = smooth & (z < 15.0) & visible
    assert check.sum() > 2000
    np.testing.assert_allclose(depth[v[check], u[check]], z[check], rtol=0.01)


def test_same_seed_same_bytes_and_cli(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["kitti", str(tmp_path / "again"), "--frames", str(FRAMES), "--seed", "0"]) == 0
    assert _tree_hash(tmp_path / "again") == _tree_hash(tree)
    assert '"dataset": "kitti"' in capsys.readouterr().out
    assert cli.main(["kitti", str(tmp_path / "none"), "--frames", "0"]) == 2
    with pytest.raises(ValueError, match="unknown synthetic dataset"):
        cli.load_writer("argoverse")
    with pytest.raises(SystemExit):
        cli.main(["argoverse", str(tmp_path / "x")])
