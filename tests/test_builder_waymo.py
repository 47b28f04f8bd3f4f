"""Waymo builder: the real PVPS frame and the synthetic-LiDAR reference against the original preprocessing's
outputs, the synthetic world against its known scene, corrupt records, Ray determinism, the reference manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from builders import waymo, waymo_motion
from builders.runner import build
from dynamo_depth.formats import waymo as wf
from dynamo_depth.formats import waymo_labels as wl
from dynamo_depth.formats.tfrecord import iter_records, write_records
from dynamo_depth.geometry import invert_se3
from dynamo_depth.shards.manifest import load_manifest
from dynamo_depth.shards.reader import iter_shard
from dynamo_depth.shards.schema import decode
from dynamo_depth.synth import waymo as sw
from dynamo_depth.synth.world import make_world
from tests.cpu_flags import cpu_flags
from tests.samples import SHARED

REPO = Path(__file__).resolve().parents[1]
SEGMENT = "segment-1024360143612057520_3580_000_3600_000"
PVPS = SHARED / "fixtures" / "waymo_v1" / "pvps_data_one_frame.tfrecord"
ASSET = SHARED / "reference" / "dynamo_depth_assets" / "tiny_waymo" / "val" / SEGMENT / "FRONT"
SYNTHETIC_LIDAR = SHARED / "reference" / "waymo_synthetic_lidar"
ORIGINAL = SYNTHETIC_LIDAR / "original_outputs" / "val" / SEGMENT / "FRONT"
needs_shared = pytest.mark.skipif(not PVPS.exists() or not SYNTHETIC_LIDAR.exists(),
                                  reason="../shared (real Waymo fixture and reference outputs) is absent")
# The reference build (manifests/README.md): write_waymo(RAW, sequences=1, frames=4, seed=0, options=SMALL),
# then `python -m builders.waymo RAW OUT --split val`. Sequence 0 of any `sequences` count is the same segment.
SMALL = sw.WaymoSynthOptions(top_width=400, short_range_hw=(60, 180), image_hw=(320, 480))
SYNTH = {"sequences": 2, "frames": 4, "seed": 0}
VAL = {"cameras": ["FRONT"], "split": "val"}
TRAIN = {"cameras": ["FRONT"], "split": "train"}


def _samples(out: Path) -> list:
    manifest = load_manifest(str(out))
    return [decode(m, key=k) for s in manifest.shards for k, m in iter_shard(str(out / s.name))]


def _cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "builders.waymo", *args, "--quiet"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _matched_fraction(ours: np.ndarray, original: np.ndarray, *, px: float, metres: float) -> float:
    """Fraction of ``original`` [u, v, z] rows with a point of ``ours`` within ``px`` in (u, v) and ``metres`` in z."""
    ours = ours.astype(np.float64)
    hits = np.zeros(len(original), dtype=bool)
    order = np.argsort(ours[:, 0], kind="stable")
    sorted_u = ours[order, 0]
    lo = np.searchsorted(sorted_u, original[:, 0] - px, side="left")
    hi = np.searchsorted(sorted_u, original[:, 0] + px, side="right")
    for i in np.flatnonzero(hi > lo):  # candidates: the few points within px in u
        near = ours[order[lo[i]:hi[i]]]
        close = np.hypot(near[:, 0] - original[i, 0], near[:, 1] - original[i, 1]) <= px
        hits[i] = np.any(close & (np.abs(near[:, 2] - original[i, 2]) <= metres))
    return float(hits.mean())


# ------------------------------------------------------------------------------------- pure functions
def test_projection_hand_computed() -> None:
    """Camera at the vehicle origin looking along vehicle +x: (10, 1, 0.5) is 1 m left, 0.5 m up, 10 m ahead."""
    K = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])
    camera_from_vehicle = invert_se3(wf.WAYMO_CAMERA_FROM_OPENCV)
    points = np.array([[10.0, 1.0, 0.5], [-5.0, 0.0, 0.0], [10.0, -20.0, 0.0], [4.0, 0.0, 0.0], [2.0, -0.99, -0.79]])
    depth, index = waymo.project_to_camera(points, camera_from_vehicle=camera_from_vehicle, K=K, hw=(80, 100))
    np.testing.assert_array_equal(index, [0, 3, 4])
    np.testing.assert_allclose(depth, [[40.0, 35.0, 10.0], [50.0, 40.0, 4.0], [99.5, 79.5, 2.0]], rtol=1e-6)
    assert depth.dtype == np.float32


def test_motion_box_test_truncation_and_drawing_order_hand_computed() -> None:
    """A 4x2x2 m box turned 90 degrees covers x in [9, 11], y in [-2, 2], z in [-1, 1] (faces included); the
    mask is read at truncated pixels; a later object overwrites an earlier one; speed 1.0 m/s is not moving."""
    box = wl.SyncedBox(type="TYPE_VEHICLE", center=np.array([10.0, 0.0, 0.0]), size=np.array([4.0, 2.0, 2.0]),
                       heading=np.pi / 2, speed=np.zeros(3))
    points = np.array([[10.0, 1.9, 0.0], [10.0, 2.1, 0.0], [11.0, 0.0, 1.0], [11.01, 0.0, 0.0], [9.5, -2.0, -0.5]])
    np.testing.assert_array_equal(waymo_motion._inside(points, box), [True, False, True, False, True])
    square = np.array([[[1, 1]], [[1, 3]], [[3, 3]], [[3, 1]]], dtype=np.int32)  # (x, y) corners: cols/rows 1..3
    objects = [waymo_motion.MaskObject(2, 1, (square,), box=0, match=0.5, speed=np.array([0.6, 0.8, 0.0])),
               waymo_motion.MaskObject(9, 1, (square + [[2, 0]],), box=0, match=0.9, speed=np.array([0.0, 1.01, 0.0])),
               waymo_motion.MaskObject(27, 0, (square + [[0, 2]],), box=None, match=0.0, speed=None)]
    mask = waymo_motion.motion_mask(objects, (6, 6))
    assert [int(o.label) for o in objects] == [2, 1, 3]
    np.testing.assert_array_equal(mask, [[0, 0, 0, 0, 0, 0], [0, 2, 2, 1, 1, 1], [0, 2, 2, 1, 1, 1],
                                         [0, 3, 3, 3, 1, 1], [0, 3, 3, 3, 0, 0], [0, 3, 3, 3, 0, 0]])
    depth = np.array([[1.99, 2.99, 5.0], [3.0, 1.5, 7.0], [1.5, 5.9, 9.0], [0.99, 5.9, 9.0], [5.99, 5.99, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(waymo_motion.motion_at(mask, depth), [2, 1, 3, 0, 0])


def _restricted_load(path: Path) -> list:
    """The original's mask pickle, unpickled with only numpy arrays allowed (never the default loader)."""
    import importlib
    import pickle

    allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "scalar")}

    class NumpyOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) not in allowed:
                raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
            if module.startswith("numpy.core") and hasattr(np, "_core"):
                module = "numpy._core" + module[len("numpy.core"):]
            return getattr(importlib.import_module(module), name)

    with open(path, "rb") as f:
        return NumpyOnly(f).load()


# ------------------------------------------------------------------------------ real frame, reference
@needs_shared
def test_real_frame_images_match_the_original_asset() -> None:
    _, frame = next(wf.iter_frames(PVPS))
    calib, image = wf.camera_calibrations(frame)["FRONT"], wf.camera_images(frame)["FRONT"]
    bgr = waymo.decode_jpeg(image.jpeg, where=str(PVPS))
    undistorter = waymo.Undistorter.create(K=calib.K, distortion=calib.distortion, hw=(calib.height, calib.width))
    undistorted = undistorter.apply(bgr)
    np.testing.assert_array_equal(undistorted, cv2.undistort(bgr, calib.K, np.array(calib.distortion)))
    full = cv2.imdecode(np.frombuffer(waymo.encode_jpeg(undistorted), np.uint8), cv2.IMREAD_COLOR)
    assert _psnr(full, cv2.imread(str(ASSET / "rgb" / "original" / "000001.jpg"))) >= 35.0
    small = cv2.imdecode(np.frombuffer(waymo.training_jpeg(undistorted), np.uint8), cv2.IMREAD_COLOR)
    assert small.shape == (320, 480, 3)
    assert _psnr(small, cv2.imread(str(ASSET / "rgb" / "downsample" / "000001.jpg"))) >= 30.0
    cam = json.loads((ASSET / "rgb" / "cam.json").read_text())
    np.testing.assert_allclose(waymo.training_intrinsics(calib), np.array(cam["intrinsic_mat"]) * [[480], [320], [1]],
                               rtol=1e-15)


@needs_shared
def test_real_one_frame_segment_builds_no_sample(tmp_path: Path) -> None:
    (tmp_path / "raw" / "val").mkdir(parents=True)
    shutil.copy(PVPS, tmp_path / "raw" / "val" / f"{SEGMENT}_with_camera_labels.tfrecord")
    report = build(waymo.SPEC, str(tmp_path / "raw"), str(tmp_path / "out"), split="val", options=VAL, workers=0,
                   show_progress=False)
    assert report.ok and report.manifest.num_samples == 0
    assert report.manifest.units[0].notes == ("frame 0: no previous frame",)


@pytest.fixture(scope="module")
def reference_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SYNTHETIC_LIDAR.exists():
        pytest.skip("../shared/reference/waymo_synthetic_lidar is absent")
    raw = tmp_path_factory.mktemp("waymo_reference_raw")
    (raw / "val").mkdir()
    shutil.copy(SYNTHETIC_LIDAR / "synthetic_lidar_3frames.tfrecord", raw / "val" / f"{SEGMENT}_with_camera_labels.tfrecord")
    out = tmp_path_factory.mktemp("waymo_reference_out")
    report = build(waymo.SPEC, str(raw), str(out), split="val", options=VAL, workers=0, show_progress=False)
    assert report.ok and report.manifest.num_samples == 1
    return out


@needs_shared
def test_reference_depth_matches_original_outputs(reference_build: Path) -> None:
    (sample,) = _samples(reference_build)
    assert sample.key == f"{SEGMENT}_FRONT_000001" and sample.meta.frame_indices == (0, 1, 2)
    original = np.load(ORIGINAL / "depth" / "000001.npy", allow_pickle=False)
    assert abs(len(sample.depth) - len(original)) <= 0.01 * len(original)
    assert _matched_fraction(sample.depth, original, px=2.0, metres=0.02) >= 0.99
    assert np.all((sample.depth[:, 0] >= 0) & (sample.depth[:, 0] < 1920) & (sample.depth[:, 1] < 1280))
    assert np.all(sample.depth[:, 2] > 0)


@needs_shared
def test_reference_poses_intrinsics_meta_match_original(reference_build: Path) -> None:
    (sample,) = _samples(reference_build)
    cam = json.loads((ORIGINAL / "rgb" / "cam.json").read_text())
    np.testing.assert_allclose(sample.K, np.array(cam["intrinsic_mat"]) * [[480], [320], [1]], rtol=1e-15)
    odometry = np.loadtxt(ORIGINAL / "odometry.txt").reshape(-1, 4, 4)
    vehicle_from_camera = np.array(sample.meta.ego_from_camera)
    np.testing.assert_allclose(vehicle_from_camera, np.array(cam["extrinsic"]).reshape(4, 4) @ wf.WAYMO_CAMERA_FROM_OPENCV,
                               atol=1e-15)
    for k in range(3):
        np.testing.assert_allclose(sample.poses[k] @ invert_se3(vehicle_from_camera), odometry[k], rtol=0, atol=1e-9)
    assert sample.meta.original_size == tuple(cam["dim"]) == (1280, 1920)
    assert sample.meta.distortion == tuple(cam["intrinsic"][4:])
    np.testing.assert_array_equal(np.array(sample.meta.original_K)[[0, 1, 0, 1], [0, 1, 2, 2]], cam["intrinsic"][:4])
    images = [wf.camera_images(f)["FRONT"] for _, f in wf.iter_frames(SYNTHETIC_LIDAR / "synthetic_lidar_3frames.tfrecord")]
    assert sample.meta.timestamps_us == tuple(round(i.pose_timestamp_s * 1e6) for i in images)
    assert sample.meta.extra["frame_gaps_us"] == [100_000, 100_000]
    assert sample.meta.extra["lidar_timestamps_us"] == [1553735853462203 + d for d in (-100_000, 0, 100_000)]


@needs_shared
def test_reference_motion_mask_equals_the_originals(reference_build: Path) -> None:
    """Frame 1 (the real PVPS frame): the same 67 objects as the original's mask/000001.pickle (classes, contours,
    matched box type, match fraction, speed), a pixel-identical motion mask, and the sample's motion is that mask
    at its depth points' truncated pixels. Frames 0 and 2 have no panoptic label: no objects."""
    frames = [f for _, f in wf.iter_frames(SYNTHETIC_LIDAR / "synthetic_lidar_3frames.tfrecord")]
    assert waymo_motion.mask_objects(frames[0], "FRONT") is None and waymo_motion.mask_objects(frames[2], "FRONT") is None
    objects = waymo_motion.mask_objects(frames[1], "FRONT")
    original = _restricted_load(ORIGINAL / "mask" / "000001.pickle")
    assert len(objects) == len(original) == 67
    for ours, theirs in zip(objects, original, strict=True):
        assert ours.semantic == theirs["mask_label"]
        assert len(ours.contours) == len(theirs["mask"])
        assert all(np.array_equal(a, b) for a, b in zip(ours.contours, theirs["mask"], strict=True))
        assert ours.match == pytest.approx(theirs["match"], abs=1e-12)
        if theirs["box_label"] is None:
            assert ours.box is None
        else:
            assert frames[1].laser_labels[ours.box].type == theirs["box_label"]
            np.testing.assert_allclose(ours.speed, theirs["speed"], rtol=0, atol=1e-12)
    matched = [(o.semantic, round(o.match, 4), int(o.label)) for o in objects if o.box is not None]
    assert matched == [(3, 0.9965, 2), (3, 0.9873, 2), (9, 0.9898, 1), (9, 0.849, 1), (27, 0.0968, 2)]
    reference = np.zeros((1280, 1920), np.uint8)
    for theirs in original:
        label = 3 if theirs["box_label"] is None else 1 if np.hypot(*theirs["speed"][:2]) > 1.0 else 2
        cv2.drawContours(reference, list(theirs["mask"]), -1, label, thickness=-1)
    mask = waymo_motion.motion_mask(objects, (1280, 1920))
    np.testing.assert_array_equal(mask, reference)
    assert np.bincount(mask.ravel()).tolist() == [2313703, 64381, 32406, 47110]
    (sample,) = _samples(reference_build)
    np.testing.assert_array_equal(sample.motion, reference[sample.depth[:, 1].astype(int), sample.depth[:, 0].astype(int)])
    depth = np.load(ORIGINAL / "depth" / "000001.npy", allow_pickle=False).astype(np.float32)  # the original's eval
    assert np.bincount(waymo_motion.motion_at(reference, depth), minlength=4).tolist() == [16281, 1218, 769, 18]


@needs_shared
def test_real_pvps_frame_has_panoptic_and_laser_labels_but_no_lidar() -> None:
    """The real PVPS record: a FRONT panoptic label and 75 laser labels, but no range images and all-zero
    camera-synced boxes, so every object is unmatched (3)."""
    _, frame = next(wf.iter_frames(PVPS))
    panoptic = wl.panoptic_label(frame, "FRONT")
    assert panoptic is not None and panoptic.semantic.shape == (1280, 1920)
    assert len(frame.laser_labels) == 75 and all(b.size.sum() == 0 for b in wl.synced_boxes(frame))
    objects = waymo_motion.mask_objects(frame, "FRONT")
    assert len(objects) > 0 and all(o.box is None and int(o.label) == 3 for o in objects)


# ------------------------------------------------------------------------------------ synthetic world
@pytest.fixture(scope="module")
def synth_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("waymo_synth_raw")
    sw.write_waymo(raw, **SYNTH, options=SMALL)
    return raw


@pytest.fixture(scope="module")
def synth_val_build(synth_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("waymo_synth_val")
    report = build(waymo.SPEC, str(synth_raw), str(out), split="val", options=VAL, workers=0, show_progress=False)
    assert report.ok and report.manifest.num_samples == 2
    return out


def _camera_hits(world, sample, calib: wf.CameraCalibration):
    """Ray-cast the world through each stored pixel from the camera at the target frame's ``Frame.pose`` time
    (the LiDAR points are in that vehicle frame): (hits, camera z of each hit)."""
    t_s = sw.frame_start_s(sample.meta.frame_indices[1]) + sw.SWEEP_S / 2
    world_from_camera = world.world_from_ego(t_s) @ calib.vehicle_from_opencv_camera
    pixels = np.c_[sample.depth[:, :2].astype(np.float64), np.ones(len(sample.depth))]
    directions = pixels @ np.linalg.inv(calib.K).T @ world_from_camera[:3, :3].T
    origins = np.broadcast_to(world_from_camera[:3, 3], directions.shape).copy()
    hits = world.ray_cast(origins, directions, t_s)
    return hits, (hits.points - world_from_camera[:3, 3]) @ world_from_camera[:3, 2]


def test_synth_depth_equals_known_scene(synth_val_build: Path) -> None:
    world = make_world(SYNTH["seed"])
    calib = sw.camera_calibration("FRONT", SMALL.image_hw)
    moving = [k + 1 for k, box in enumerate(world.boxes) if box.is_moving]
    for sample in _samples(synth_val_build):
        assert sample.meta.original_size == SMALL.image_hw and sample.depth.dtype == np.float32
        hits, z = _camera_hits(world, sample, calib)
        static = (hits.surface >= 0) & ~np.isin(hits.surface, moving)
        rel = np.abs(z - sample.depth[:, 2]) / sample.depth[:, 2]
        assert static.sum() > 1000, sample.key
        assert np.mean(rel[static] < 0.01) >= 0.95, (sample.key, np.mean(rel[static] < 0.01))


def test_synth_poses_timestamps_intrinsics(synth_val_build: Path) -> None:
    world = make_world(SYNTH["seed"])
    calib = sw.camera_calibration("FRONT", SMALL.image_hw)
    for sample in _samples(synth_val_build):
        for k, index in enumerate(sample.meta.frame_indices):
            t_s = sw.frame_start_s(index) + sw.IMAGE_DELAY_S  # the FRONT image pose time
            np.testing.assert_allclose(sample.poses[k], world.world_from_ego(t_s) @ calib.vehicle_from_opencv_camera,
                                       rtol=0, atol=1e-9)
            assert sample.meta.timestamps_us[k] == sw.BASE_TIMESTAMP_US + index * 100_000 + 55_000
        np.testing.assert_allclose(sample.K, calib.K, rtol=1e-15)  # 480x320 original: K unchanged
        assert sample.meta.distortion == sw.FRONT_DISTORTION


def test_synth_frames_without_panoptic_labels_have_no_motion(synth_val_build: Path) -> None:
    """The synthetic segments carry laser labels but no camera panoptic labels: no motion member (as the
    original writes no mask for such frames)."""
    assert all(sample.motion is None for sample in _samples(synth_val_build))


def test_rebuild_passes_verify_against_reference_manifest(synth_val_build: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "dynamo_depth", "verify", str(synth_val_build), "--reference",
                             str(REPO / "manifests" / "waymo-synth.json")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problems" in result.stdout


# OpenBLAS core types and the CPU flags they need: Prescott = SSE3 (/proc/cpuinfo calls it pni), Haswell = AVX2+FMA
CORE_TYPE_FLAGS = {"Prescott": {"pni"}, "Haswell": {"avx2", "fma"}}
_BUILD_AND_PROBE = """
import hashlib, sys
import numpy as np
import builders.waymo as w
from builders.runner import build
raw, out = sys.argv[1], sys.argv[2]
report = build(w.SPEC, raw, out, split="val", options={"cameras": ["FRONT"], "split": "val"}, workers=0,
               show_progress=False)
assert report.ok and report.manifest.num_samples == 2
rng = np.random.default_rng(0)  # a BLAS product: differs between the core types if their kernels do
print(hashlib.sha256((rng.normal(size=(4096, 3)) @ rng.normal(size=(3, 3))).tobytes()).hexdigest())
"""


def test_openblas_core_types_give_identical_shard_bytes(synth_raw: Path, synth_val_build: Path, tmp_path: Path) -> None:
    """The same raw data built under two OpenBLAS kernels (SSE3 without FMA, AVX2 with FMA), which give different
    BLAS results, gives byte-identical shards and manifest, equal to the in-process build."""
    missing = {core: sorted(need - cpu_flags()) for core, need in CORE_TYPE_FLAGS.items() if need - cpu_flags()}
    if missing:
        pytest.skip(f"this CPU lacks the flags of OpenBLAS core types {missing} (read from /proc/cpuinfo)")
    probes = {}
    for core in CORE_TYPE_FLAGS:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_CORETYPE": core, "RAY_AUTH_MODE": "disabled"}
        result = subprocess.run([sys.executable, "-c", _BUILD_AND_PROBE, str(synth_raw), str(tmp_path / core)],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        probes[core] = result.stdout.split()[-1]
    assert probes["Prescott"] != probes["Haswell"], "OPENBLAS_CORETYPE had no effect: the test would prove nothing"
    for name in ("manifest.index", "manifest.json", "waymo-val-000000.tar"):
        reference = (synth_val_build / name).read_bytes()
        assert all((tmp_path / core / name).read_bytes() == reference for core in CORE_TYPE_FLAGS), name


def _train_raw(synth_raw: Path, root: Path) -> tuple[Path, list[Path]]:
    """A raw root whose train/ holds two segments (the synthetic val and train ones)."""
    (root / "train").mkdir(parents=True)
    paths = []
    for source in sorted(synth_raw.glob("*/segment-*.tfrecord")):
        paths.append(root / "train" / source.name)
        shutil.copy(source, paths[-1])
    assert len(paths) == 2
    return root, paths


def test_corrupt_record_fails_its_segment_only(synth_raw: Path, tmp_path: Path) -> None:
    root, (bad, good) = _train_raw(synth_raw, tmp_path / "raw")
    offsets = [offset for offset, _ in iter_records(bad)]
    data = bytearray(bad.read_bytes())
    data[offsets[2] + 5000] ^= 0x40  # one flipped bit in the payload of the third record
    bad.write_bytes(bytes(data))
    result = _cli(str(root), str(tmp_path / "out"), "--split", "train", "--workers", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    bad_unit = bad.name.removesuffix(waymo.SEGMENT_SUFFIX) + "/FRONT"
    assert f"FAILED  {bad_unit}: TFRecord '{bad}', record at byte offset {offsets[2]}: payload CRC32C mismatch" \
        in result.stdout
    manifest = load_manifest(str(tmp_path / "out"))
    assert [u.name for u in manifest.units] == [good.name.removesuffix(waymo.SEGMENT_SUFFIX) + "/FRONT"]
    assert manifest.num_samples == 2 and [f.unit for f in manifest.failed] == [bad_unit]


def test_workers_1_and_2_give_identical_bytes_and_rerun_is_complete(synth_raw: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = _train_raw(synth_raw, tmp_path / "raw")
    reference = tmp_path / "inprocess"
    assert build(waymo.SPEC, str(root), str(reference), split="train", options=TRAIN, workers=0,
                 show_progress=False).manifest.num_samples == 4
    for workers in ("1", "2"):
        result = _cli(str(root), str(tmp_path / workers), "--split", "train", "--workers", workers)
        assert result.returncode == 0, result.stdout + result.stderr
        assert sorted(os.listdir(tmp_path / workers)) == ["manifest.index", "manifest.json", "waymo-train-000000.tar"]
        for name in ("manifest.index", "manifest.json", "waymo-train-000000.tar"):
            assert (tmp_path / workers / name).read_bytes() == (reference / name).read_bytes(), (workers, name)
    capsys.readouterr()
    assert waymo.main([str(root), str(tmp_path / "2"), "--split", "train", "--workers", "2", "--quiet"]) == 0
    assert "already complete: nothing to do" in capsys.readouterr().out


def test_import_and_build_never_load_tensorflow(synth_raw: Path, tmp_path: Path) -> None:
    code = ("import sys; import builders.waymo as w; from builders.runner import build; "
            "assert not any(m.split('.')[0] in ('tensorflow', 'waymo_open_dataset') for m in sys.modules); "
            f"r = build(w.SPEC, {str(synth_raw)!r}, {str(tmp_path / 'out')!r}, split='val', "
            "options={'cameras': ['FRONT'], 'split': 'val'}, workers=0, show_progress=False); "
            "assert r.manifest.num_samples == 2; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'waymo_open_dataset')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cli_errors_and_help(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert waymo.main([str(tmp_path / "nowhere"), str(tmp_path / "out"), "--split", "val", "--workers", "0"]) == 2
    assert f"{tmp_path / 'nowhere' / 'val'}: not a folder" in capsys.readouterr().err
    assert waymo.main([str(tmp_path), str(tmp_path / "out"), "--split", "test", "--workers", "0"]) == 2
    assert "--split must be train or val" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        waymo.main(["--help"])
    help_text = capsys.readouterr().out
    assert exited.value.code == 0 and "--cameras" in help_text and "--workers" in help_text


def test_bad_range_image_and_missing_camera_are_reported(synth_raw: Path, tmp_path: Path) -> None:
    """A record with a valid CRC but a broken TOP range image fails its segment naming file, offset, laser;
    a camera without images yields no samples, each frame reported."""
    (source,) = sorted(synth_raw.glob("val/segment-*.tfrecord"))
    payloads = [payload for _, payload in iter_records(source)]
    broken = wf.parse_frame(payloads[1])
    next(laser for laser in broken.lasers if laser.name == 1).ri_return1.range_image_compressed = b"not zlib"
    payloads[1] = broken.SerializeToString()
    (tmp_path / "raw" / "val").mkdir(parents=True)
    write_records(tmp_path / "raw" / "val" / source.name, payloads)
    offset = 16 + len(payloads[0])
    report = build(waymo.SPEC, str(tmp_path / "raw"), str(tmp_path / "out"), split="val", workers=0,
                   options={"cameras": ["FRONT", "FRONT_LEFT"], "split": "val"}, show_progress=False)
    (failed,) = report.manifest.failed
    assert failed.unit.endswith("/FRONT") and failed.error.startswith(
        f"{tmp_path / 'raw' / 'val' / source.name} record at byte offset {offset} (frame 1): ")
    assert "laser TOP return 1 range image: cannot decompress" in failed.error
    (unit,) = report.manifest.units
    assert unit.name.endswith("/FRONT_LEFT") and (unit.samples, unit.skipped) == (0, 4)
    assert unit.notes == tuple(f"frame {i}: no FRONT_LEFT image" for i in range(4))


def _frame_with(payload: bytes, edit) -> bytes:
    frame = wf.parse_frame(payload)
    edit(frame)
    return frame.SerializeToString()


def _drop_last_intrinsic(frame) -> None:
    calib = next(c for c in frame.context.camera_calibrations if c.name == 1)  # FRONT
    del calib.intrinsic[-1]


def _drop_last_image_pose_value(frame) -> None:
    image = next(i for i in frame.images if i.name == 1)  # FRONT
    del image.pose.transform[-1]


def test_bad_camera_calibration_or_image_pose_names_file_and_offset(synth_raw: Path, tmp_path: Path) -> None:
    """A FRONT calibration with 8 intrinsics (record 2) and a FRONT image pose with 15 values (record 1) fail their
    segment with file, byte offset and the field."""
    (source,) = sorted(synth_raw.glob("val/segment-*.tfrecord"))
    payloads = [payload for _, payload in iter_records(source)]
    (tmp_path / "raw" / "val").mkdir(parents=True)
    cases = {"segment-1": (2, _drop_last_intrinsic, "camera FRONT: intrinsic has 8 values, expected 9"),
             "segment-2": (1, _drop_last_image_pose_value, "image FRONT pose: transform has 15 values, expected 16")}
    for name, (index, edit, _) in cases.items():
        edited = [_frame_with(p, edit) if k == index else p for k, p in enumerate(payloads)]
        write_records(tmp_path / "raw" / "val" / f"{name}{waymo.SEGMENT_SUFFIX}", edited)
    report = build(waymo.SPEC, str(tmp_path / "raw"), str(tmp_path / "out"), split="val", options=VAL, workers=0,
                   show_progress=False)
    assert not report.ok and report.manifest.units == ()
    failed = {f.unit: f.error for f in report.manifest.failed}
    assert sorted(failed) == ["segment-1/FRONT", "segment-2/FRONT"]
    for name, (index, _, reason) in cases.items():
        offset = sum(16 + len(p) for p in payloads[:index])
        path = tmp_path / "raw" / "val" / f"{name}{waymo.SEGMENT_SUFFIX}"
        assert failed[f"{name}/FRONT"].startswith(f"{path} record at byte offset {offset}: frame "), failed
        assert failed[f"{name}/FRONT"].endswith(reason), failed
