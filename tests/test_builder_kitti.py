"""KITTI builder against the real drive 0009 fixture and the original preprocessing's outputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from builders import kitti
from builders.runner import build
from dynamo_depth.formats import kitti as kf
from dynamo_depth.shards.manifest import load_manifest
from dynamo_depth.shards.reader import iter_shard
from dynamo_depth.shards.schema import decode
from tests.samples import SHARED

REPO = Path(__file__).resolve().parents[1]
RAW = SHARED / "fixtures" / "kitti_raw"
DRIVE = "2011_09_26_drive_0009_sync"
ORIGINAL = SHARED / "reference" / "kitti_drive_0009_original_outputs"
needs_shared = pytest.mark.skipif(not RAW.exists(), reason="../shared/fixtures/kitti_raw is absent (a user's clone)")
OPTIONS = {"cameras": ["image_02", "image_03"], "split": "train", "split_file": None, "split_file_sha256": None}


def _samples(out: Path) -> dict:
    manifest = load_manifest(str(out))
    samples = {}
    for shard in manifest.shards:
        for key, members in iter_shard(str(out / shard.name)):
            samples[key] = decode(members, key=key)
    return samples


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, "-m", "builders.kitti", *args, "--quiet"], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def real_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not RAW.exists():
        pytest.skip("../shared/fixtures/kitti_raw is absent (a user's clone)")
    out = tmp_path_factory.mktemp("kitti_real")
    report = build(kitti.SPEC, str(RAW), str(out), split="train", options=OPTIONS, workers=0, show_progress=False)
    assert report.ok
    return out


@needs_shared
def test_real_fixture_depth_equals_original_point_for_point(real_build: Path) -> None:
    samples = _samples(real_build)
    assert sorted(samples) == sorted(f"{DRIVE}_{cam}_{t:06d}" for cam in ("image_02", "image_03") for t in range(1, 9))
    for sample in samples.values():
        t = sample.meta.frame_indices[1]
        original = np.load(ORIGINAL / sample.meta.camera / "depth" / f"{t:010d}.npy")  # [row, column, depth]
        ours = sample.depth[:, [1, 0, 2]].astype(np.float64)
        assert ours.shape == original.shape, sample.key
        np.testing.assert_allclose(ours, original, rtol=0, atol=1e-6, err_msg=sample.key)


@needs_shared
def test_real_fixture_intrinsics_sizes_timestamps(real_build: Path) -> None:
    calib_text = (RAW / "2011_09_26" / "calib_cam_to_cam.txt").read_text().splitlines()
    p_rect = {line.split(":")[0]: np.array(line.split(":")[1].split(), float) for line in calib_text
              if line.startswith("P_rect_0")}
    for sample in _samples(real_build).values():
        projection = p_rect["P_rect_0" + sample.meta.camera[-1]].reshape(3, 4)
        assert sample.meta.original_size == (375, 1242)
        np.testing.assert_array_equal(np.array(sample.meta.original_K), projection[:, :3])
        fx, cx, fy, cy = projection[0, 0], projection[0, 2], projection[1, 1], projection[1, 2]
        want = np.array([[fx * 640 / 1242, 0, cx * 640 / 1242], [0, fy * 192 / 375, cy * 192 / 375], [0, 0, 1]])
        np.testing.assert_allclose(sample.K, want, rtol=1e-12)
        stamps = kf.read_timestamps(RAW / "2011_09_26" / DRIVE / sample.meta.camera / "timestamps.txt")
        assert sample.meta.timestamps_us == tuple(int(stamps[i]) for i in sample.meta.frame_indices)
        assert 90_000 < sample.meta.timestamps_us[2] - sample.meta.timestamps_us[1] < 110_000


@needs_shared
def test_real_fixture_ego_motion_matches_oxts_velocity(real_build: Path) -> None:
    """Camera displacement between frames = OXTS speed x timestamp gap (5%)."""
    oxts_dir = RAW / "2011_09_26" / DRIVE / "oxts"
    oxts_stamps = kf.read_timestamps(oxts_dir / "timestamps.txt")
    for sample in _samples(real_build).values():
        for a, b in ((0, 1), (1, 2)):
            i, j = sample.meta.frame_indices[a], sample.meta.frame_indices[b]
            moved = np.linalg.norm(sample.poses[b][:3, 3] - sample.poses[a][:3, 3])
            packets = [kf.read_oxts(oxts_dir / "data" / f"{k:010d}.txt") for k in (i, j)]
            speed = np.mean([np.hypot(p.vf, p.vl) for p in packets])
            expected = speed * (oxts_stamps[j] - oxts_stamps[i]) * 1e-6
            assert abs(moved - expected) < 0.05 * expected, (sample.key, moved, expected)
        # the rectified camera looks forward: its z axis is close to the IMU's x axis of frame t
        assert sample.poses[1][:3, 2] @ np.array([1.0, 0, 0]) > 0.95
        # both cameras of a frame are 0.54 m apart (the stereo baseline)
    by_key = _samples(real_build)
    left, right = by_key[f"{DRIVE}_image_02_000004"], by_key[f"{DRIVE}_image_03_000004"]
    assert abs(np.linalg.norm(left.poses[1][:3, 3] - right.poses[1][:3, 3]) - 0.537) < 0.01


@needs_shared
def test_workers_1_and_2_give_identical_bytes(real_build: Path, tmp_path: Path) -> None:
    """``--workers 1`` in the local process pool, ``--workers 2`` as Ray tasks: the in-process bytes."""
    for workers, executor in (("1", "processes"), ("2", "ray")):
        result = _cli(str(RAW), str(tmp_path / workers), "--workers", workers, "--executor", executor)
        assert result.returncode == 0, result.stderr
    reference = (real_build / "manifest.json").read_bytes()
    for workers in ("1", "2"):
        assert (tmp_path / workers / "manifest.json").read_bytes() == reference
        assert sorted(os.listdir(tmp_path / workers)) == ["kitti-train-000000.tar", "manifest.index", "manifest.json"]
        assert (tmp_path / workers / "kitti-train-000000.tar").read_bytes() == \
            (real_build / "kitti-train-000000.tar").read_bytes()
    rerun = _cli(str(RAW), str(tmp_path / "1"), "--workers", "1")
    assert rerun.returncode == 0 and "already complete" in rerun.stdout


def _fake_raw(tmp_path: Path, drives: list[str], *, date: str = "2011_09_26") -> Path:
    """A raw root whose drives are file-by-file symlinks to the real drive 0009 (cheap copies)."""
    root = tmp_path / "raw"
    date_dir = root / date
    date_dir.mkdir(parents=True, exist_ok=True)
    for calib in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "calib_imu_to_velo.txt"):
        if not (date_dir / calib).exists():
            (date_dir / calib).symlink_to(RAW / "2011_09_26" / calib)
    source = RAW / "2011_09_26" / DRIVE
    for drive in drives:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                target = date_dir / drive / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(path)
    return root


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


@needs_shared
def test_bad_inputs_are_reported_and_other_drives_finish(tmp_path: Path) -> None:
    drives = [f"2011_09_26_drive_{n:04d}_sync" for n in (1, 2, 3)]
    root = _fake_raw(tmp_path, drives)
    png = root / "2011_09_26" / drives[0] / "image_02" / "data" / "0000000004.png"
    _replace(png, png.read_bytes()[:5000])
    velo = root / "2011_09_26" / drives[1] / "velodyne_points" / "data" / "0000000003.bin"
    _replace(velo, velo.read_bytes()[:-7])
    _fake_raw(tmp_path, ["2011_09_28_drive_0004_sync"], date="2011_09_28")
    (root / "2011_09_28" / "calib_velo_to_cam.txt").unlink()
    result = _cli(str(root), str(tmp_path / "out"), "--workers", "0", "--cameras", "image_02")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FAILED  {drives[0]}/image_02: {png}: corrupt or truncated PNG" in result.stdout
    assert f"FAILED  {drives[1]}/image_02: {velo}: size" in result.stdout
    assert "not a multiple of 16" in result.stdout
    assert "FAILED  2011_09_28_drive_0004_sync/image_02:" in result.stdout
    assert "calib_velo_to_cam.txt: calibration file is missing" in result.stdout
    manifest = load_manifest(str(tmp_path / "out"))
    assert [u.name for u in manifest.units] == [f"{drives[2]}/image_02"]
    assert manifest.num_samples == 8
    assert sorted(f.unit for f in manifest.failed) == sorted(
        [f"{drives[0]}/image_02", f"{drives[1]}/image_02", "2011_09_28_drive_0004_sync/image_02"])


@needs_shared
def test_missing_velodyne_frame_is_skipped_and_counted(tmp_path: Path) -> None:
    drive = "2011_09_26_drive_0001_sync"
    root = _fake_raw(tmp_path, [drive])
    (root / "2011_09_26" / drive / "velodyne_points" / "data" / "0000000005.bin").unlink()
    report = build(kitti.SPEC, str(root), str(tmp_path / "out"), split="train",
                   options={**OPTIONS, "cameras": ["image_02"]}, workers=0, show_progress=False)
    unit = report.manifest.units[0]
    assert (unit.samples, unit.skipped) == (7, 3)
    assert "frame 5: no velodyne scan" in unit.notes


@needs_shared
def test_killed_build_resumes_redoing_only_unfinished_drives(tmp_path: Path) -> None:
    drives = [f"2011_09_26_drive_{n:04d}_sync" for n in (1, 2, 3, 4)]
    root = _fake_raw(tmp_path, drives)
    args = [str(root), "--workers", "0", "--cameras", "image_02", "--shard-max-count", "5"]
    assert _cli(args[0], str(tmp_path / "straight"), *args[1:]).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "builders.kitti", args[0], str(tmp_path / "killed"), *args[1:],
                             "--quiet"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = tmp_path / "killed" / "_staging"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(staging.glob("*.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.stem for p in staging.glob("*.json"))
    assert 2 <= len(finished) < 4, finished
    assert not (tmp_path / "killed" / "manifest.json").exists()
    assert not list((tmp_path / "killed").glob("kitti-train-*.tar"))  # no final shard before packing
    result = _cli(args[0], str(tmp_path / "killed"), *args[1:])
    assert result.returncode == 0, result.stderr
    assert f"({4 - len(finished)} built now, {len(finished)} reused)" in result.stdout
    for name in os.listdir(tmp_path / "straight"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert sorted(os.listdir(tmp_path / "killed")) == sorted(os.listdir(tmp_path / "straight"))


@needs_shared
def test_split_file_restricts_frames(tmp_path: Path) -> None:
    split = tmp_path / "eigen_like.txt"
    split.write_text(f"2011_09_26/{DRIVE} 3 l\n2011_09_26/{DRIVE} 9 r\n2011_09_26/{DRIVE} 5 r\n")
    options = {**OPTIONS, "split_file": str(split)}
    report = build(kitti.SPEC, str(RAW), str(tmp_path / "out"), split="test", options=options, workers=0,
                   show_progress=False)
    samples = _samples(tmp_path / "out")
    assert sorted(samples) == [f"{DRIVE}_image_02_000003", f"{DRIVE}_image_03_000005", f"{DRIVE}_image_03_000009"]
    # frame 9 is the last of the fixture: its next frame is itself (the original's rule), flagged
    assert samples[f"{DRIVE}_image_03_000009"].meta.frame_indices == (8, 9, 9)
    assert samples[f"{DRIVE}_image_03_000009"].meta.extra["edge"] == ["next"]
    assert report.manifest.units[1].skipped == 0
    bad = tmp_path / "bad.txt"
    bad.write_text("2011_09_26/x 3 left\n")
    with pytest.raises(ValueError, match="bad.txt: line 1"):
        build(kitti.SPEC, str(RAW), str(tmp_path / "out2"), split="test", options={**OPTIONS, "split_file": str(bad)},
              workers=0, show_progress=False)


def test_cli_help() -> None:
    result = subprocess.run([sys.executable, "-m", "builders.kitti", "--help"], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "--workers" in result.stdout and "--split-file" in result.stdout
    assert json.dumps(kitti.SPEC.name) == '"kitti"'
    assert shutil.which(sys.executable)


@needs_shared
def test_real_fixture_build_matches_reference_manifest(real_build: Path) -> None:
    reference = REPO / "manifests" / "kitti-drive0009-fixture.json"
    result = subprocess.run([sys.executable, "-m", "dynamo_depth", "verify", str(real_build), "--reference",
                             str(reference)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_shared
def test_shard_bytes_do_not_depend_on_the_cpu_kernels(real_build: Path, tmp_path: Path) -> None:
    """OpenBLAS picks kernels per CPU type; every transform feeding bytes is element-wise, so the same."""
    for coretype in ("Prescott", "Haswell"):
        result = _cli(str(RAW), str(tmp_path / coretype), "--workers", "0", env={"OPENBLAS_CORETYPE": coretype})
        assert result.returncode == 0, result.stderr
        assert (tmp_path / coretype / "kitti-train-000000.tar").read_bytes() == \
            (real_build / "kitti-train-000000.tar").read_bytes(), coretype


def test_png_reader_gives_opencvs_pixels_for_every_png_kind(tmp_path: Path) -> None:
    """libspng decodes 8-bit RGB; grey, palette, alpha and 16-bit files take OpenCV's colour conversion."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    paths = {"rgb": tmp_path / "rgb.png", "grey": tmp_path / "grey.png", "rgba": tmp_path / "rgba.png",
             "palette": tmp_path / "palette.png", "rgb16": tmp_path / "rgb16.png"}
    Image.fromarray(rgb).save(paths["rgb"])
    Image.fromarray(rgb[..., 0]).save(paths["grey"])
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(paths["rgba"])
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=5).save(paths["palette"])
    cv2.imwrite(str(paths["rgb16"]), rgb.astype(np.uint16) * 257 + 3)
    if SHARED.exists():
        paths["kitti"] = RAW / "2011_09_26" / DRIVE / "image_02" / "data" / "0000000000.png"
    for kind, path in paths.items():
        want = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        got = kitti.read_png_rgb(path)
        assert got.dtype == np.uint8 and got.shape == want.shape and np.array_equal(got, want), kind
    np.testing.assert_array_equal(kitti.read_png_rgb(paths["rgb"]), rgb)
    corrupt = tmp_path / "corrupt.png"  # complete (IEND at the end) but a damaged pixel chunk
    data = bytearray(paths["rgb"].read_bytes())
    data[60] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{corrupt}: corrupt or truncated PNG"):
        kitti.read_png_rgb(corrupt)
