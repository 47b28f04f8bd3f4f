"""The synthetic nuScenes dataroot: loads in nuscenes-devkit, geometry agrees with the world, deterministic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("nuscenes", reason="nuscenes-devkit is needed to check the synthetic nuScenes tables")
from nuscenes.nuscenes import NuScenes  # noqa: E402
from nuscenes.utils.data_classes import LidarPointCloud  # noqa: E402
from pyquaternion import Quaternion  # noqa: E402

from dynamo_depth.synth.nuscenes import write_nuscenes  # noqa: E402
from dynamo_depth.synth.nuscenes_rig import GLOBAL_FROM_WORLD  # noqa: E402
from dynamo_depth.synth.world import make_world  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE_CAM = SHARED / "reference/dynamo_depth_assets/tiny_nuscenes/scenes/scene-0001/FRONT/rgb/cam.json"
VERSION = "v1.0-mini"
FRAMES = 7  # camera frames 0 and 6 are keyframes: 2 samples


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("nuscenes")
    info = write_nuscenes(out, sequences=1, frames=FRAMES, seed=3, version=VERSION)
    nusc = NuScenes(version=VERSION, dataroot=str(out), verbose=False)
    return info, nusc, make_world(info.world_seeds[0])


def _matrix(record: dict) -> np.ndarray:
    """target_from_source from a record, via pyquaternion (independent of the writer's quaternion code)."""
    out = np.eye(4)
    out[:3, :3] = Quaternion(record["rotation"]).rotation_matrix
    out[:3, 3] = record["translation"]
    return out


def _chain(nusc: NuScenes, channel: str) -> list[dict]:
    records = [sd for sd in nusc.sample_data if sd["channel"] == channel]
    first = [sd for sd in records if sd["prev"] == ""]
    assert len(first) == 1
    chain = [first[0]]
    while chain[-1]["next"]:
        chain.append(nusc.get("sample_data", chain[-1]["next"]))
    assert len(chain) == len(records)
    return chain


def _world_from_sensor(nusc: NuScenes, sd: dict) -> np.ndarray:
    global_from_ego = _matrix(nusc.get("ego_pose", sd["ego_pose_token"]))
    ego_from_sensor = _matrix(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))
    return np.linalg.inv(GLOBAL_FROM_WORLD) @ global_from_ego @ ego_from_sensor


def _t_s(info, sd: dict) -> float:
    return (sd["timestamp"] - info.scene_start_us[0]) * 1e-6


def test_devkit_loads_and_accessors_work(synth):
    info, nusc, world = synth
    (scene,) = nusc.scene
    assert scene["name"] == "scene-0001" and scene["nbr_samples"] == 2
    first = nusc.get("sample", scene["first_sample_token"])
    last = nusc.get("sample", scene["last_sample_token"])
    assert first["next"] == last["token"] and last["prev"] == first["token"] and first["prev"] == last["next"] == ""
    assert set(first["data"]) == {"CAM_FRONT", "LIDAR_TOP"} and len(first["anns"]) == len(world.boxes)
    lidar_path = nusc.get_sample_data_path(first["data"]["LIDAR_TOP"])
    raw = np.fromfile(lidar_path, dtype=np.float32).reshape(-1, 5)
    cloud = LidarPointCloud.from_file(lidar_path)
    np.testing.assert_array_equal(cloud.points, raw[:, :4].T)
    assert raw.shape[0] > 5000 and set(np.unique(raw[:, 4]).astype(int)) <= set(range(32))
    assert np.all(np.linalg.norm(raw[:, :3], axis=1) <= 70.0 + 1e-3)
    elevation = np.degrees(np.arcsin(raw[:, 2] / np.linalg.norm(raw[:, :3], axis=1)))
    np.testing.assert_allclose(elevation, -30.67 + raw[:, 4] * (41.34 / 31), atol=1e-3)
    image = Image.open(nusc.get_sample_data_path(first["data"]["CAM_FRONT"]))
    assert image.format == "JPEG" and image.size == (1600, 900)
    _, boxes, intrinsic = nusc.get_sample_data(first["data"]["CAM_FRONT"])
    assert intrinsic[0, 0] == pytest.approx(1266.417203046554) and len(boxes) >= 3
    assert nusc.get("map", nusc.map[0]["token"])["mask"].mask().shape == (20, 20)


def test_first_ego_pose_is_the_known_world_to_global_offset(synth):
    info, nusc, _ = synth
    first_lidar = _chain(nusc, "LIDAR_TOP")[0]
    assert first_lidar["timestamp"] == info.scene_start_us[0]
    pose = nusc.get("ego_pose", first_lidar["ego_pose_token"])
    np.testing.assert_allclose(pose["translation"], [400.0, 1100.0, 0.0], atol=1e-9)  # world origin at t = 0
    yaw = Quaternion(pose["rotation"]).yaw_pitch_roll[0]
    assert yaw == pytest.approx(math.radians(28.0), abs=1e-9)
    camera = nusc.get("calibrated_sensor", nusc.get("sample_data", nusc.sample[0]["data"]["CAM_FRONT"])[
        "calibrated_sensor_token"])
    ego_from_camera = _matrix(camera)[:3, :3]
    np.testing.assert_allclose(ego_from_camera[:, 2], [1.0, 0.0, 0.0], atol=0.02)  # optical axis: ego forward
    np.testing.assert_allclose(ego_from_camera[:, 0], [0.0, -1.0, 0.0], atol=0.02)  # image x: ego right
    lidar = nusc.get("calibrated_sensor", first_lidar["calibrated_sensor_token"])
    ego_from_lidar = _matrix(lidar)[:3, :3]
    np.testing.assert_allclose(ego_from_lidar[:, 1], [1.0, 0.0, 0.0], atol=0.03)  # lidar y: ego forward
    np.testing.assert_allclose(lidar["translation"], [0.943713, 0.0, 1.84023])


def test_lidar_points_lie_on_world_surfaces(synth):
    info, nusc, world = synth
    for sd in _chain(nusc, "LIDAR_TOP")[::4]:
        raw = np.fromfile(nusc.get_sample_data_path(sd["token"]), dtype=np.float32).reshape(-1, 5)
        world_from_lidar = _world_from_sensor(nusc, sd)
        points = raw[:, :3].astype(np.float64) @ world_from_lidar[:3, :3].T + world_from_lidar[:3, 3]
        origin = np.broadcast_to(world_from_lidar[:3, 3], points.shape)
        hits = world.ray_cast(origin, points - origin, _t_s(info, sd))
        np.testing.assert_allclose(hits.distance, np.linalg.norm(points - origin, axis=1), atol=0.01)
        ground = hits.surface == 0
        assert ground.mean() > 0.5 and np.all(np.abs(points[ground, 2]) < 0.01)
        assert set(np.unique(hits.surface)) - {0} <= set(range(1, len(world.boxes) + 1))


def test_panoptic_labels_of_keyframe_sweeps_name_the_hit_surface(synth):
    """nuScenes-panoptic files for the keyframe sweeps only, loaded by the devkit's own reader: category index *
    1000 + instance (world box b -> b + 1; ground flat.driveable_surface, instance 0), from an independent ray cast."""
    from nuscenes.utils.data_io import load_bin_file

    info, nusc, world = synth
    keyframes = [sd for sd in _chain(nusc, "LIDAR_TOP") if sd["is_key_frame"]]
    assert sorted(r["sample_data_token"] for r in nusc.panoptic) == sorted(sd["token"] for sd in keyframes)
    index = nusc.lidarseg_name2idx_mapping
    for sd in keyframes:
        record = nusc.get("panoptic", sd["token"])
        labels = load_bin_file(str(Path(nusc.dataroot) / record["filename"]), type="panoptic")
        raw = np.fromfile(nusc.get_sample_data_path(sd["token"]), dtype=np.float32).reshape(-1, 5)
        assert labels.dtype == np.uint16 and labels.shape == (len(raw),)
        world_from_lidar = _world_from_sensor(nusc, sd)
        points = raw[:, :3].astype(np.float64) @ world_from_lidar[:3, :3].T + world_from_lidar[:3, 3]
        origin = np.broadcast_to(world_from_lidar[:3, 3], points.shape)
        surface = world.ray_cast(origin, points - origin, _t_s(info, sd)).surface
        want = np.array([index["flat.driveable_surface"] * 1000]
                        + [index[box.category] * 1000 + b + 1 for b, box in enumerate(world.boxes)])[surface]
        assert np.mean(labels == want) > 0.999 and np.sum(labels % 1000 > 0) > 100


def test_lidar_point_projects_onto_rendered_depth(synth):
    info, nusc, world = synth
    sample = nusc.sample[1]
    lidar_sd, cam_sd = (nusc.get("sample_data", sample["data"][ch]) for ch in ("LIDAR_TOP", "CAM_FRONT"))
    assert 1_000 < cam_sd["timestamp"] - lidar_sd["timestamp"] < 30_000  # not synchronous, close in time
    raw = np.fromfile(nusc.get_sample_data_path(lidar_sd["token"]), dtype=np.float32).reshape(-1, 5)
    global_from_lidar = GLOBAL_FROM_WORLD @ _world_from_sensor(nusc, lidar_sd)
    camera_from_global = np.linalg.inv(GLOBAL_FROM_WORLD @ _world_from_sensor(nusc, cam_sd))
    camera_from_lidar = camera_from_global @ global_from_lidar
    in_camera = raw[:, :3].astype(np.float64) @ camera_from_lidar[:3, :3].T + camera_from_lidar[:3, 3]
    K = np.array(nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])["camera_intrinsic"])
    world_points = raw[:, :3].astype(np.float64) @ global_from_lidar[:3, :3].T + global_from_lidar[:3, 3]
    world_points = world_points @ np.linalg.inv(GLOBAL_FROM_WORLD)[:3, :3].T + np.linalg.inv(GLOBAL_FROM_WORLD)[:3, 3]
    origin = np.broadcast_to(_world_from_sensor(nusc, lidar_sd)[:3, 3], world_points.shape)
    surface = world.ray_cast(origin, world_points - origin, _t_s(info, lidar_sd)).surface
    moving = np.isin(surface, [k + 1 for k, box in enumerate(world.boxes) if box.is_moving])
    uv = in_camera[:, :2] / in_camera[:, 2:3] * [K[0, 0], K[1, 1]] + K[:2, 2]
    column, row = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    keep = (in_camera[:, 2] > 1.0) & (column >= 0) & (column < 1600) & (row >= 0) & (row < 900) & ~moving
    image, depth = world.render(K=K, world_from_camera=_world_from_sensor(nusc, cam_sd), hw=(900, 1600),
                                t_s=_t_s(info, cam_sd))
    relative = np.abs(depth[row[keep], column[keep]] - in_camera[keep, 2]) / in_camera[keep, 2]
    assert keep.sum() > 1000
    assert np.median(relative) < 3e-3 and np.mean(relative < 0.01) > 0.97
    stored = np.asarray(Image.open(nusc.get_sample_data_path(cam_sd["token"])).convert("RGB"), dtype=np.float64)
    assert np.mean(np.abs(stored - image)) < 4.0  # the JPEG is this render (q90 loss only)


def test_sample_data_chains_and_timing(synth):
    info, nusc, world = synth
    cameras, lidars = _chain(nusc, "CAM_FRONT"), _chain(nusc, "LIDAR_TOP")
    assert len(cameras) == FRAMES
    camera_gaps, lidar_gaps = np.diff([c["timestamp"] for c in cameras]), np.diff([x["timestamp"] for x in lidars])
    assert np.all(np.abs(camera_gaps - 1e6 / 12) < 1000) and np.all(np.abs(lidar_gaps - 50_000) < 1000)
    assert lidars[-1]["timestamp"] >= cameras[-1]["timestamp"]
    assert [i for i, c in enumerate(cameras) if c["is_key_frame"]] == [0, 6]
    assert [i for i, x in enumerate(lidars) if x["is_key_frame"]] == [0, 10]
    assert [x["timestamp"] for x in lidars if x["is_key_frame"]] == [s["timestamp"] for s in nusc.sample]
    for chain in (cameras, lidars):
        for sd in chain:
            sample = nusc.get("sample", sd["sample_token"])
            assert sd["filename"].startswith("samples/" if sd["is_key_frame"] else "sweeps/")
            assert nusc.get("ego_pose", sd["ego_pose_token"])["timestamp"] == sd["timestamp"]
            assert Path(nusc.get_sample_data_path(sd["token"])).is_file()
            later = sd["timestamp"] <= sample["timestamp"] + 30_000 or sample["next"] == ""
            assert later and (sd["is_key_frame"] == (sample["data"][sd["channel"]] == sd["token"]))


def test_annotations_follow_the_world_boxes(synth):
    info, nusc, world = synth
    assert len(nusc.instance) == len(world.boxes)
    for k, box in enumerate(world.boxes):
        instance = nusc.instance[k]
        annotations = [nusc.get("sample_annotation", instance["first_annotation_token"])]
        while annotations[-1]["next"]:
            annotations.append(nusc.get("sample_annotation", annotations[-1]["next"]))
        assert len(annotations) == instance["nbr_annotations"] == 2
        assert annotations[-1]["token"] == instance["last_annotation_token"]
        for ann in annotations:
            t_s = (nusc.get("sample", ann["sample_token"])["timestamp"] - info.scene_start_us[0]) * 1e-6
            expected = GLOBAL_FROM_WORLD @ np.append(box.center_at(t_s), 1.0)
            np.testing.assert_allclose(ann["translation"], expected[:3], atol=1e-9)
            assert ann["size"] == [box.size[1], box.size[0], box.size[2]]  # nuScenes: width, length, height
            heading = Quaternion(ann["rotation"]).yaw_pitch_roll[0]
            assert math.cos(heading - box.yaw - math.radians(28.0)) == pytest.approx(1.0, abs=1e-12)
            attribute = nusc.get("attribute", ann["attribute_tokens"][0])["name"]
            assert (attribute == "vehicle.moving") == box.is_moving
            assert attribute in ("vehicle.moving", "vehicle.parked", "vehicle.stopped")
            assert ann["category_name"] == box.category
    assert sum(ann["num_lidar_pts"] for ann in nusc.sample_annotation) > 100


@pytest.mark.skipif(not REFERENCE_CAM.exists(), reason=f"reference outputs absent: {REFERENCE_CAM}")
def test_camera_calibration_equals_the_reference_cam_json(synth):
    _, nusc, _ = synth
    reference = json.loads(REFERENCE_CAM.read_text())
    camera = nusc.get("calibrated_sensor", nusc.get("sample_data", nusc.sample[0]["data"]["CAM_FRONT"])[
        "calibrated_sensor_token"])
    assert camera["camera_intrinsic"] == reference["camera_intrinsic"]
    assert camera["translation"] == reference["translation"] and camera["rotation"] == reference["rotation"]


def test_same_seed_gives_identical_bytes(tmp_path):
    runs = [write_nuscenes(tmp_path / name, sequences=2, frames=1, seed=5) for name in ("a", "b")]
    files = [sorted(p.relative_to(info.dataroot) for p in info.dataroot.rglob("*") if p.is_file()) for info in runs]
    assert files[0] == files[1] and len(files[0]) == 14 + 1 + 2 * (1 + 2 + 1)  # tables, map, per scene jpg, 2 bins, npz
    for relative in files[0]:
        assert (runs[0].dataroot / relative).read_bytes() == (runs[1].dataroot / relative).read_bytes(), relative
    nusc = NuScenes(version=VERSION, dataroot=str(runs[0].dataroot), verbose=False)
    assert [s["name"] for s in nusc.scene] == ["scene-0001", "scene-0002"] and len(nusc.log) == 2
    assert nusc.scene[1]["first_sample_token"] != nusc.scene[0]["first_sample_token"]


@pytest.mark.parametrize("kwargs, message", [
    ({"frames": 0}, "frames"), ({"sequences": 0}, "sequences"), ({"version": "mini"}, "version"),
    ({"seed": -1}, "seed")])
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_nuscenes(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())
