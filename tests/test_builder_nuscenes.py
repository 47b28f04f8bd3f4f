"""nuScenes builder on a generated synthetic dataroot (2 scenes x 8 CAM_FRONT frames, seed 0, v1.0-mini).

That is exactly ``python -m dynamo_depth synth nuscenes OUT --sequences 2 --frames 8 --seed 0`` followed by
``python -m builders.nuscenes OUT BUILD --split all``, whose manifest is ``manifests/nuscenes-synth.json``.
Expected values are recomputed from the JSON tables with numpy + pyquaternion, or from the synthetic
world itself (ray casting), never through the builder's code path.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("nuscenes", reason="nuscenes-devkit is needed by the nuScenes builder")
from pyquaternion import Quaternion  # noqa: E402

from builders import nuscenes as nb  # noqa: E402
from builders.runner import Unit, build  # noqa: E402
from dynamo_depth.shards.manifest import load_manifest  # noqa: E402
from dynamo_depth.shards.reader import iter_shard  # noqa: E402
from dynamo_depth.shards.schema import decode  # noqa: E402
from dynamo_depth.synth.nuscenes import write_nuscenes  # noqa: E402
from dynamo_depth.synth.nuscenes_rig import GLOBAL_FROM_WORLD  # noqa: E402
from dynamo_depth.synth.world import make_world  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference" / "dynamo_depth_assets" / "tiny_nuscenes" / "scenes" / "scene-0001" / "FRONT"
needs_reference = pytest.mark.skipif(not REFERENCE.exists(), reason=f"reference outputs absent: {REFERENCE}")
SEQUENCES, FRAMES, SEED, VERSION = 2, 8, 0, "v1.0-mini"  # the setting of manifests/nuscenes-synth.json
OPTIONS = {"split": "all", "version": VERSION}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("nuscenes_raw")
    info = write_nuscenes(root, sequences=SEQUENCES, frames=FRAMES, seed=SEED, version=VERSION)
    out = tmp_path_factory.mktemp("nuscenes_build")
    report = build(nb.SPEC, str(root), str(out), split="all", options=OPTIONS, workers=0, show_progress=False)
    assert report.ok and report.manifest.num_samples == SEQUENCES * (FRAMES - 2)
    samples = {}
    for shard in report.manifest.shards:
        samples.update({key: decode(m, key=key) for key, m in iter_shard(str(out / shard.name))})
    return info, out, samples


def _cli(*args: str, module: str = "builders.nuscenes") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    extra = ["--quiet"] if module == "builders.nuscenes" else []
    return subprocess.run([sys.executable, "-m", module, *args, *extra], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


# ---------------------------------------------------------------- independent recomputation from the tables
def _tables(root: Path) -> dict[str, dict[str, dict]]:
    return {name: {r["token"]: r for r in json.loads((root / VERSION / f"{name}.json").read_text())}
            for name in ("sample_data", "sample", "scene", "ego_pose", "calibrated_sensor", "sensor")}


def _matrix(record: dict) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Quaternion(record["rotation"]).rotation_matrix
    out[:3, 3] = record["translation"]
    return out


def _channel_records(tables: dict, scene_name: str, channel: str) -> list[dict]:
    """A scene's sample_data of one channel, sorted by timestamp."""
    scene = next(s for s in tables["scene"].values() if s["name"] == scene_name)
    out = [sd for sd in tables["sample_data"].values()
           if tables["sample"][sd["sample_token"]]["scene_token"] == scene["token"]
           and tables["sensor"][tables["calibrated_sensor"][sd["calibrated_sensor_token"]]["sensor_token"]]["channel"]
           == channel]
    return sorted(out, key=lambda sd: sd["timestamp"])


def _global_from(tables: dict, sd: dict) -> np.ndarray:
    return _matrix(tables["ego_pose"][sd["ego_pose_token"]]) @ _matrix(tables["calibrated_sensor"][sd["calibrated_sensor_token"]])


def _nearest_lidar(cameras: list[dict], lidars: list[dict], t: int) -> dict:
    camera = cameras[t]
    if camera["is_key_frame"]:
        return next(sd for sd in lidars if sd["is_key_frame"] and sd["sample_token"] == camera["sample_token"])
    return lidars[int(np.argmin([abs(sd["timestamp"] - camera["timestamp"]) for sd in lidars]))]


def _expected_depth(root: Path, tables: dict, camera: dict, lidar: dict) -> tuple[np.ndarray, np.ndarray]:
    """([u, v, z] of the kept points, kept points in global) with the original's filter, from the raw files."""
    raw = np.fromfile(root / lidar["filename"], dtype=np.float32).reshape(-1, 5)[:, :3].astype(np.float64)
    in_global = raw @ _global_from(tables, lidar)[:3, :3].T + _global_from(tables, lidar)[:3, 3]
    camera_from_global = np.linalg.inv(_global_from(tables, camera))
    in_camera = in_global @ camera_from_global[:3, :3].T + camera_from_global[:3, 3]
    K = np.array(tables["calibrated_sensor"][camera["calibrated_sensor_token"]]["camera_intrinsic"])
    uv = in_camera @ K.T
    uv = uv[:, :2] / uv[:, 2:3]
    keep = (in_camera[:, 2] > 1) & (uv[:, 0] > 1) & (uv[:, 0] < 1599) & (uv[:, 1] > 1) & (uv[:, 1] < 899)
    return np.column_stack([uv[keep], in_camera[keep, 2]]), in_global[keep]


# ------------------------------------------------------------------------------------------------- tests
def test_poses_timestamps_gaps_and_lidar_choice_equal_the_tables(synth) -> None:
    info, _, samples = synth
    tables = _tables(info.dataroot)
    assert sorted(samples) == sorted(f"scene-{s:04d}_CAM_FRONT_{t:06d}" for s in (1, 2) for t in range(1, FRAMES - 1))
    for name in info.scene_names:
        cameras, lidars = _channel_records(tables, name, "CAM_FRONT"), _channel_records(tables, name, "LIDAR_TOP")
        for t in range(1, FRAMES - 1):
            sample = samples[f"{name}_CAM_FRONT_{t:06d}"]
            stamps = [cameras[i]["timestamp"] for i in (t - 1, t, t + 1)]
            assert sample.meta.timestamps_us == tuple(stamps) and sample.meta.frame_indices == (t - 1, t, t + 1)
            for k, i in enumerate((t - 1, t, t + 1)):
                np.testing.assert_allclose(sample.poses[k], _global_from(tables, cameras[i]), rtol=0, atol=1e-9)
            extra = sample.meta.extra
            assert (extra["gap_prev_us"], extra["gap_next_us"]) == (stamps[1] - stamps[0], stamps[2] - stamps[1])
            assert extra["large_gap"] is False and 80_000 < extra["gap_next_us"] < 87_000
            lidar = _nearest_lidar(cameras, lidars, t)
            assert extra["lidar_token"] == lidar["token"] and extra["camera_token"] == cameras[t]["token"]
            assert extra["lidar_dt_us"] == lidar["timestamp"] - stamps[1] and abs(extra["lidar_dt_us"]) <= 25_000
            assert extra["is_key_frame"] == (t == 6)
            calibration = tables["calibrated_sensor"][cameras[t]["calibrated_sensor_token"]]
            np.testing.assert_allclose(np.array(sample.meta.ego_from_camera), _matrix(calibration), atol=1e-12)


def test_depth_equals_the_tables_and_the_world(synth) -> None:
    """Depth = independent recomputation (1e-4 m) and = the world ray-cast from the camera at camera time."""
    info, _, samples = synth
    tables = _tables(info.dataroot)
    for index, name in enumerate(info.scene_names):
        world = make_world(info.world_seeds[index])
        cameras, lidars = _channel_records(tables, name, "CAM_FRONT"), _channel_records(tables, name, "LIDAR_TOP")
        moving = [k + 1 for k, box in enumerate(world.boxes) if box.is_moving]
        for t in range(1, FRAMES - 1):
            depth = samples[f"{name}_CAM_FRONT_{t:06d}"].depth
            expected, _ = _expected_depth(info.dataroot, tables, cameras[t], _nearest_lidar(cameras, lidars, t))
            assert depth.dtype == np.float32 and depth.shape == expected.shape and len(depth) > 1500
            np.testing.assert_allclose(depth, expected, rtol=0, atol=1e-4)
            world_from_camera = np.linalg.inv(GLOBAL_FROM_WORLD) @ _global_from(tables, cameras[t])
            K = np.array(tables["calibrated_sensor"][cameras[t]["calibrated_sensor_token"]]["camera_intrinsic"])
            rays = np.column_stack([depth[:, :2], np.ones(len(depth))]).astype(np.float64) @ np.linalg.inv(K).T
            directions = rays @ world_from_camera[:3, :3].T
            t_s = (cameras[t]["timestamp"] - info.scene_start_us[index]) * 1e-6
            hits = world.ray_cast(np.broadcast_to(world_from_camera[:3, 3], directions.shape), directions, t_s)
            z_world = hits.distance / np.linalg.norm(rays, axis=1)  # rays have camera z = 1
            static = ~np.isin(hits.surface, moving)
            relative = np.abs(z_world[static] - depth[static, 2]) / depth[static, 2]
            assert static.mean() > 0.8 and np.mean(relative < 0.01) >= 0.95 and np.median(relative) < 1e-5


def test_motion_labels_at_keyframes_follow_the_world_boxes(synth) -> None:
    info, _, samples = synth
    tables = _tables(info.dataroot)
    for index, name in enumerate(info.scene_names):
        world = make_world(info.world_seeds[index])
        cameras, lidars = _channel_records(tables, name, "CAM_FRONT"), _channel_records(tables, name, "LIDAR_TOP")
        for t in range(1, FRAMES - 1):
            sample = samples[f"{name}_CAM_FRONT_{t:06d}"]
            if t != 6:
                assert sample.motion is None  # sweeps carry no labels
                continue
            lidar = _nearest_lidar(cameras, lidars, t)
            _, points_global = _expected_depth(info.dataroot, tables, cameras[t], lidar)
            world_from_global = np.linalg.inv(GLOBAL_FROM_WORLD)
            points = points_global @ world_from_global[:3, :3].T + world_from_global[:3, 3]
            origin = (world_from_global @ _global_from(tables, lidar))[:3, 3]
            t_s = (lidar["timestamp"] - info.scene_start_us[index]) * 1e-6
            surface = world.ray_cast(np.broadcast_to(origin, points.shape), points - origin, t_s).surface
            want = np.zeros(len(points), np.uint8)  # ground, sky, static_object.* boxes: 0
            for k, box in enumerate(world.boxes):
                if box.category.startswith("vehicle"):
                    want[surface == k + 1] = 1 if box.is_moving else 2
            assert sample.motion.dtype == np.uint8 and sample.motion.shape == (len(sample.depth),)
            assert np.mean(sample.motion == want) > 0.99 and np.sum(sample.motion == 1) > 20
            assert np.sum(sample.motion == 2) > 50 and not np.any(sample.motion == 3)  # every instance has a box


class _FakeNusc:
    """The few devkit accessors ``nuscenes_motion.motion_labels`` uses, over hand-made tables."""

    def __init__(self, root: Path, annotations: list[dict], panoptic: np.ndarray) -> None:
        (root / "panoptic").mkdir(parents=True, exist_ok=True)
        np.savez_compressed(root / "panoptic" / "L_panoptic.npz", data=panoptic.astype(np.uint16))
        self.dataroot, self.panoptic = str(root), [{"token": "L", "sample_data_token": "L",
                                                     "filename": "panoptic/L_panoptic.npz"}]
        self.lidarseg_idx2name_mapping = {2: "human.pedestrian.adult", 17: "vehicle.car", 24: "flat.driveable_surface",
                                          31: "vehicle.ego"}
        self.tables = {"sample": {"S": {"data": {"LIDAR_TOP": "L"}, "anns": [a["token"] for a in annotations]}},
                       "sample_annotation": {a["token"]: a for a in annotations}, "panoptic": {"L": self.panoptic[0]},
                       "attribute": {"mov": {"name": "vehicle.moving"}, "park": {"name": "vehicle.parked"}}}

    def get(self, table: str, token: str) -> dict:
        return self.tables[table][token]


def test_panoptic_motion_classes_hand_computed(tmp_path: Path) -> None:
    """Boxes 2x2x2 m (w, l, h) at x = 0 and x = 10, and a pedestrian box at x = 20. Car instance 1 has 3 points in
    box A (parked) and 1 in box B (moving): A holds the largest fraction -> 2. Car 2: 1 point in A, 2 in B -> 1.
    Car 3 lies in the pedestrian box only (another category): 3. Road and the ego vehicle: 0. A pedestrian with
    a box of its category but outside it: 3."""
    from builders import nuscenes_motion as nm

    def box(token: str, category: str, x: float, attributes: list[str]) -> dict:
        return {"token": token, "category_name": category, "translation": [x, 0.0, 0.0], "size": [2.0, 2.0, 2.0],
                "rotation": [1.0, 0.0, 0.0, 0.0], "attribute_tokens": attributes}

    annotations = [box("A", "vehicle.car", 0.0, ["park"]), box("B", "vehicle.car", 10.0, ["mov"]),
                   box("P", "human.pedestrian.adult", 20.0, [])]
    points = np.array([[0.0, 0, 0], [0.5, 0, 0], [1.0, 1.0, 1.0], [10.0, 0, 0],  # car 1: A A A(corner) B
                       [-0.9, 0, 0], [9.5, 0, 0], [10.9, 0, 0.5],  # car 2: A B B
                       [20.0, 0, 0], [30.0, 0, 0], [0.0, 0, 0], [50.0, 0, 0]])  # car 3, road, ego, pedestrian
    panoptic = np.array([17001] * 4 + [17002] * 3 + [17003, 24000, 31000, 2004])
    labels = nm.motion_labels(_FakeNusc(tmp_path, annotations, panoptic),
                              {"token": "L", "sample_token": "S", "is_key_frame": True, "filename": "x"}, points)
    np.testing.assert_array_equal(labels, [2, 2, 2, 2, 1, 1, 1, 3, 0, 0, 3])
    assert nm.motion_labels(_FakeNusc(tmp_path, annotations, panoptic),
                            {"token": "L", "sample_token": "S", "is_key_frame": False, "filename": "x"}, points) is None
    with pytest.raises(ValueError, match="uint16\\[3\\], expected 11 integers"):
        nm.motion_labels(_FakeNusc(tmp_path, annotations, panoptic[:3]),
                         {"token": "L", "sample_token": "S", "is_key_frame": True, "filename": "x"}, points)


@needs_reference
def test_intrinsics_and_calibration_reproduce_the_reference_cam_json(synth) -> None:
    reference = json.loads((REFERENCE / "rgb" / "cam.json").read_text())
    sample = next(iter(synth[2].values()))
    fx, cx = reference["camera_intrinsic"][0][0], reference["camera_intrinsic"][0][2]
    fy, cy = reference["camera_intrinsic"][1][1], reference["camera_intrinsic"][1][2]
    want = np.array([[fx * 512 / 1600, 0, cx * 512 / 1600], [0, fy * 288 / 900, cy * 288 / 900], [0, 0, 1]])
    np.testing.assert_allclose(sample.K, want, rtol=1e-15)
    np.testing.assert_allclose(sample.K[0, 0], 405.25350497, rtol=1e-10)  # 1266.4172 * 0.32
    np.testing.assert_allclose(sample.K / [[512], [288], [1]], reference["intrinsic_mat"], rtol=1e-14)
    assert [list(r) for r in sample.meta.original_K] == reference["camera_intrinsic"]
    assert list(sample.meta.original_size) == reference["dim"] == [900, 1600]
    np.testing.assert_allclose(np.array(sample.meta.ego_from_camera), _matrix(reference), atol=1e-12)


@needs_reference
def test_images_are_byte_identical_to_the_reference_downsample(synth) -> None:
    for i in range(3):
        original = REFERENCE / "rgb" / "original" / f"{i:06d}.jpg"
        ours = nb.resized_jpeg(nb.read_image_bgr(original))
        assert ours == (REFERENCE / "rgb" / "downsample" / f"{i:06d}.jpg").read_bytes(), original
    info, _, samples = synth
    camera = _channel_records(_tables(info.dataroot), "scene-0002", "CAM_FRONT")[4]
    small = cv2.resize(cv2.imread(str(info.dataroot / camera["filename"])), (512, 288), interpolation=cv2.INTER_AREA)
    assert samples["scene-0002_CAM_FRONT_000004"].images[1] == cv2.imencode(".jpg", small)[1].tobytes()


@needs_reference
def test_ts_json_is_uint8_milliseconds_of_our_microsecond_gaps(synth) -> None:
    reference = json.loads((REFERENCE / "rgb" / "ts.json").read_text())
    frames = len((REFERENCE / "odometry.txt").read_text().splitlines())
    assert len(reference) == frames - 1 == 232 and all(0 <= g <= 255 for g in reference)
    assert set(reference) == {50, 100, 150}  # the 12 Hz camera fires on 20 Hz LiDAR passes: 50 ms multiples
    assert abs(sum(reference) / len(reference) - 1000 / 12) < 1.0  # mean ms gap = the 12 Hz period
    gaps_us = [100_200, 49_600, 83_333, 150_499, 300_400, 255_600, 511_000]
    assert nb.original_ts_json(gaps_us) == [100, 50, 83, 150, 44, 0, 255]  # > 255 ms wraps modulo 256
    assert nb.original_ts_json(gaps_us[:4]) == np.rint(np.array(gaps_us[:4]) / 1000).astype(np.uint8).tolist()
    gaps = [s.meta.extra["gap_next_us"] for s in synth[2].values()]
    assert set(nb.original_ts_json(gaps)) <= {83, 84}
    for name in ("000000", "000006"):  # the original's depth filter, strict, at 1600x900
        depth = np.load(REFERENCE / "depth" / f"{name}.npy", allow_pickle=False)
        assert np.all((depth[:, 0] > 1) & (depth[:, 0] < 1599) & (depth[:, 1] > 1) & (depth[:, 1] < 899))
        assert depth[:, 2].min() > 1.0 and len(depth) > 1000


def test_manifest_equals_the_committed_reference(synth) -> None:
    _, out, _ = synth
    result = _cli("verify", str(out), "--reference", str(REPO / "manifests" / "nuscenes-synth.json"),
                  module="dynamo_depth")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "manifest.json").read_bytes() == (REPO / "manifests" / "nuscenes-synth.json").read_bytes()


def test_workers_1_and_2_give_identical_bytes(synth, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    info, out, _ = synth
    for workers in ("1", "2"):
        result = _cli(str(info.dataroot), str(tmp_path / workers), "--split", "all", "--workers", workers)
        assert result.returncode == 0, result.stdout + result.stderr
        assert sorted(os.listdir(tmp_path / workers)) == ["manifest.index", "manifest.json", "nuscenes-all-000000.tar"]
        for name in ("manifest.index", "manifest.json", "nuscenes-all-000000.tar"):
            assert (tmp_path / workers / name).read_bytes() == (out / name).read_bytes(), (workers, name)
    assert nb.main([str(info.dataroot), str(tmp_path / "1"), "--split", "all", "--workers", "0", "--quiet"]) == 0
    assert "already complete" in capsys.readouterr().out


def test_killed_build_resumes_to_the_same_bytes(synth, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    info, out, _ = synth
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    args = [str(info.dataroot), str(tmp_path / "killed"), "--split", "all", "--workers", "0", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "builders.nuscenes", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = tmp_path / "killed" / "_staging"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(staging.glob("*.json")):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sorted(p.stem for p in staging.glob("*.json")) == ["scene-0001"]
    assert not (tmp_path / "killed" / "manifest.json").exists()
    assert nb.main(args) == 0  # in-process rerun
    assert "(1 built now, 1 reused)" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "killed")) == sorted(os.listdir(out))
    for name in os.listdir(out):
        assert (tmp_path / "killed" / name).read_bytes() == (out / name).read_bytes(), name


def _linked_copy(source: Path, target: Path) -> Path:
    for path in sorted(source.rglob("*")):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).symlink_to(path)
    return target


def test_missing_image_fails_its_scene_and_the_other_completes(synth, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    info, _, _ = synth
    root = _linked_copy(info.dataroot, tmp_path / "raw")
    camera = _channel_records(_tables(root), "scene-0001", "CAM_FRONT")[5]
    (root / camera["filename"]).unlink()
    assert nb.main([str(root), str(tmp_path / "out"), "--split", "all", "--workers", "0", "--quiet"]) == 1
    assert f"FAILED  scene-0001: {root / camera['filename']}: cannot read image" in capsys.readouterr().out
    manifest = load_manifest(str(tmp_path / "out"))
    assert [u.name for u in manifest.units] == ["scene-0002"] and manifest.num_samples == FRAMES - 2
    assert [f.unit for f in manifest.failed] == ["scene-0001"]


def test_truncated_lidar_file_names_the_file(synth, tmp_path: Path) -> None:
    info, _, _ = synth
    root = _linked_copy(info.dataroot, tmp_path / "raw")
    cameras = _channel_records(_tables(root), "scene-0002", "CAM_FRONT")
    lidar = _nearest_lidar(cameras, _channel_records(_tables(root), "scene-0002", "LIDAR_TOP"), 6)
    data = (root / lidar["filename"]).read_bytes()
    (root / lidar["filename"]).unlink()
    (root / lidar["filename"]).write_bytes(data[:-6])
    scene_token = next(s["token"] for s in _tables(root)["scene"].values() if s["name"] == "scene-0002")
    with pytest.raises(ValueError, match=re.escape(f"{lidar['filename']}: size {len(data) - 6} is not a multiple of 20")):
        list(nb.build_unit(str(root), Unit(name="scene-0002", params={"scene_token": scene_token}), OPTIONS))


def test_splits_and_versions(synth, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    info, _, _ = synth
    names = ["scene-0061", "scene-0103", "scene-0001", "scene-0003"]
    assert nb.split_scene_names(scene_names=names, split="all", version=VERSION) == sorted(names)
    assert nb.split_scene_names(scene_names=names, split="val", version="v1.0-mini") == ["scene-0103"]
    assert nb.split_scene_names(scene_names=names, split="train", version="v1.0-mini") == ["scene-0061"]
    assert nb.split_scene_names(scene_names=names, split="train", version="v1.0-trainval") == ["scene-0001", "scene-0061"]
    assert nb.split_scene_names(scene_names=names, split="val", version="v1.0-trainval") == ["scene-0003", "scene-0103"]
    with pytest.raises(ValueError, match="use --split all"):
        nb.split_scene_names(scene_names=["scene-0001"], split="train", version="v1.0-mini")
    with pytest.raises(ValueError, match="not an official nuScenes split"):
        nb.split_scene_names(scene_names=names, split="everything", version=VERSION)
    assert nb.resolve_version(str(info.dataroot), None) == VERSION
    with pytest.raises(ValueError, match="v1.0-trainval/scene.json: missing"):
        nb.resolve_version(str(info.dataroot), "v1.0-trainval")
    with pytest.raises(ValueError, match="not a folder"):
        nb.resolve_version(str(tmp_path / "nothing"), None)
    assert nb.main([str(info.dataroot), str(tmp_path / "out"), "--workers", "0"]) == 2  # default --split train
    assert "use --split all" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        nb.main(["--help"])
    assert "--version" in capsys.readouterr().out and not (tmp_path / "out").exists()
