"""KITTI builder on the synthetic KITTI world: depth and poses against the known scene; reference manifest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from builders import kitti
from builders.runner import build
from dynamo_depth.formats.kitti import load_kitti_calib
from dynamo_depth.geometry import invert_se3
from dynamo_depth.shards.manifest import load_manifest
from dynamo_depth.shards.reader import iter_shard
from dynamo_depth.shards.schema import decode
from dynamo_depth.synth import kitti as synth_kitti
from dynamo_depth.synth.world import camera_rays

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "manifests" / "kitti-synth.json"
# The reference build: `python -m dynamo_depth synth kitti RAW --sequences 1 --frames 4 --seed 0`
# then `python -m builders.kitti RAW OUT --cameras image_02` (see manifests/README.md).
SYNTH = {"sequences": 1, "frames": 4, "seed": 0}
OPTIONS = {"cameras": ["image_02"], "split": "train", "split_file": None, "split_file_sha256": None}


@pytest.fixture(scope="module")
def synth_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    raw = tmp_path_factory.mktemp("kitti_synth_raw")
    synth_kitti.write_kitti(raw, **SYNTH)
    out = tmp_path_factory.mktemp("kitti_synth_out")
    report = build(kitti.SPEC, str(raw), str(out), split="train", options=OPTIONS, workers=0, show_progress=False)
    assert report.ok and report.manifest.num_samples == 2
    return raw, out


def _samples(out: Path) -> list:
    manifest = load_manifest(str(out))
    return [decode(m, key=k) for s in manifest.shards for k, m in iter_shard(str(out / s.name))]


def test_depth_equals_known_scene(synth_build: tuple[Path, Path]) -> None:
    """Each stored point [u, v, z]: the ray through pixel (u + 1, v + 1) hits the world where the
    velodyne x (the depth the original preprocessing stores) equals z (1%, >= 95% of points)."""
    raw, out = synth_build
    calib = load_kitti_calib(raw / synth_kitti.DATE)
    world = synth_kitti.drive_world(seed=0, sequence=0)
    for sample in _samples(out):
        t_s = synth_kitti.frame_time_s(sample.meta.frame_indices[1])
        world_from_camera = synth_kitti.world_from_camera(world, calib, "image_02", t_s)
        origins, directions = camera_rays(K=calib.K("image_02"), world_from_camera=world_from_camera,
                                          hw=sample.meta.original_size)
        u, v = sample.depth[:, 0].astype(int) + 1, sample.depth[:, 1].astype(int) + 1
        inside = (u < sample.meta.original_size[1]) & (v < sample.meta.original_size[0])
        index = v[inside] * sample.meta.original_size[1] + u[inside]
        hits = world.ray_cast(origins[index], directions[index], t_s)
        world_from_velo = synth_kitti.world_from_imu(world, t_s) @ invert_se3(calib.velo_from_imu)
        points_velo = (invert_se3(world_from_velo) @ np.c_[hits.points, np.ones(len(index))].T).T
        rel = np.abs(points_velo[:, 0] - sample.depth[inside, 2]) / sample.depth[inside, 2]
        assert len(index) > 1000
        assert np.mean(rel < 0.01) >= 0.95, (sample.key, np.mean(rel < 0.01))
        assert np.mean(hits.surface >= 0) > 0.97
        assert np.nanmedian(rel) < 0.003


def test_poses_match_the_synthetic_trajectory(synth_build: tuple[Path, Path]) -> None:
    raw, out = synth_build
    calib = load_kitti_calib(raw / synth_kitti.DATE)
    world = synth_kitti.drive_world(seed=0, sequence=0)
    for sample in _samples(out):
        truth = [synth_kitti.world_from_camera(world, calib, "image_02", synth_kitti.frame_time_s(i))
                 for i in sample.meta.frame_indices]
        for a, b in ((0, 1), (1, 2), (0, 2)):
            ours = invert_se3(sample.poses[a]) @ sample.poses[b]
            np.testing.assert_allclose(ours, invert_se3(truth[a]) @ truth[b], atol=1e-6)
        assert sample.meta.timestamps_us[2] - sample.meta.timestamps_us[1] == synth_kitti.FRAME_PERIOD_US


def test_rebuild_passes_verify_against_reference_manifest(synth_build: tuple[Path, Path]) -> None:
    _, out = synth_build
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "dynamo_depth", "verify", str(out), "--reference", str(REFERENCE)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problems" in result.stdout
