"""nuScenes motion labels as the original's ``prepare_data/nuScenes.py`` makes them (eval_protocol.md section 6):
the devkit's float32 global points, the strict points-in-box test, instances among the depth points only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nuscenes", reason="nuscenes-devkit is needed for the devkit's point chain")
from nuscenes.utils.data_classes import LidarPointCloud  # noqa: E402
from pyquaternion import Quaternion  # noqa: E402

from builders import nuscenes_motion as nm  # noqa: E402
from tests.test_builder_nuscenes import _FakeNusc  # noqa: E402

LIDAR = {"token": "L", "sample_token": "S", "is_key_frame": True, "filename": "x"}


def test_global_points_equal_the_devkit_chain_bit_for_bit() -> None:
    """LidarPointCloud.rotate / translate (calibrated_sensor, then ego_pose) on float32 points: every coordinate."""
    rng = np.random.default_rng(0)
    for _ in range(3):
        points = rng.uniform(-60, 60, (20000, 3)).astype(np.float32)
        sensor = {"rotation": list(Quaternion(axis=rng.normal(size=3), angle=rng.uniform(-3, 3)).elements),
                  "translation": list(rng.uniform(-2, 2, 3))}
        ego = {"rotation": list(Quaternion(axis=[0, 0, 1], angle=rng.uniform(-3, 3)).elements),
               "translation": list(rng.uniform(-2000, 2000, 3))}
        cloud = LidarPointCloud(np.vstack([points.T, np.zeros((1, len(points)), np.float32)]))
        for record in (sensor, ego):
            cloud.rotate(Quaternion(record["rotation"]).rotation_matrix)
            cloud.translate(np.array(record["translation"]))
        ours = nm.devkit_global_points(points, sensor=sensor, ego=ego)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, cloud.points[:3].T)


def _box(token: str, x: float, attributes: list[str]) -> dict:
    return {"token": token, "category_name": "vehicle.car", "translation": [x, 0.0, 0.0], "size": [2.0, 2.0, 2.0],
            "rotation": [1.0, 0.0, 0.0, 0.0], "attribute_tokens": attributes}


def test_points_on_a_face_are_outside(tmp_path: Path) -> None:
    """Box A (parked) spans x in [-1, 1], box B (moving) [9, 11]. Car 1: two points on A's face x = 1 and one
    inside B: only B holds a point strictly -> moving (faces counted would give A, static). Car 2: points on
    faces and an edge of A only -> no box -> unlabeled."""
    annotations = [_box("A", 0.0, ["park"]), _box("B", 10.0, ["mov"])]
    points = np.array([[1.0, 0.0, 0.0], [1.0, 0.5, 0.5], [10.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    panoptic = np.array([17001, 17001, 17001, 17002, 17002])
    labels = nm.motion_labels(_FakeNusc(tmp_path, annotations, panoptic), LIDAR, points)
    np.testing.assert_array_equal(labels, [1, 1, 1, 3, 3])
    assert not nm.points_in_box(np.array([[1.0, 0, 0], [0.0, -1.0, 0], [0, 0, 1.0]]), annotations[0]).any()
    assert nm.points_in_box(np.array([[0.999999, 0, 0]]), annotations[0]).all()


def test_instances_are_made_of_the_depth_points_only(tmp_path: Path) -> None:
    """Car 1 has 2 points in A outside the image and 1 kept point in B: among the kept points B wins (moving);
    over the whole sweep A would (static). Labels come back for the kept points only."""
    annotations = [_box("A", 0.0, ["park"]), _box("B", 10.0, ["mov"])]
    points = np.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [10.0, 0.0, 0.0], [30.0, 0.0, 0.0]])
    panoptic = np.array([17001, 17001, 17001, 24000])
    nusc = _FakeNusc(tmp_path, annotations, panoptic)
    keep = np.array([False, False, True, True])
    np.testing.assert_array_equal(nm.motion_labels(nusc, LIDAR, points, keep), [1, 0])
    np.testing.assert_array_equal(nm.motion_labels(nusc, LIDAR, points), [2, 2, 2, 0])
