"""builders.video on real footage: KITTI drive 0009 encoded into an mp4 inside the test, a variable-frame-rate
clip, a static camera, a fisheye sequence, a missing calibration."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from builders import video
from builders.runner import build
from dynamo_depth.data.decode import decode_jpeg
from dynamo_depth.shards.manifest import load_manifest
from dynamo_depth.shards.reader import iter_shard
from dynamo_depth.shards.schema import TripletSample, decode
from dynamo_depth.video.cameras import Camera
from dynamo_depth.video.frames import select_at_rate
from dynamo_depth.video.rectify import Rectifier, RectifyOptions
from tests.samples import SHARED
from tests.test_cameras import FISHEYE, distort_with_opencv, ideal_view, kitti_frame_and_K, psnr

REPO = Path(__file__).resolve().parents[1]
KITTI = SHARED / "fixtures" / "kitti_raw" / "2011_09_26"
IMAGES = KITTI / "2011_09_26_drive_0009_sync" / "image_02" / "data"
needs_shared = pytest.mark.skipif(not KITTI.exists(), reason="../shared/fixtures/kitti_raw is absent")


def options(**changes: object) -> dict:
    base = {"camera": None, "camera_sha256": {}, "fps": None, "sequence_fps": "10", "drop_static": 0.0,
            "size": [192, 640], "resize": "crop", "fov": None, "split": "train"}
    return {**base, **changes}


def samples_of(out: Path) -> dict[str, TripletSample]:
    found = {}
    for shard in load_manifest(str(out)).shards:
        for key, members in iter_shard(str(out / shard.name)):
            found[key] = decode(members, key=key)
    return found


def kitti_frames() -> list[np.ndarray]:
    return [cv2.cvtColor(cv2.imread(str(IMAGES / f"{i:010d}.png")), cv2.COLOR_BGR2RGB) for i in range(10)]


def write_video(path: Path, frames: list[np.ndarray], *, pts_ms: list[int] | None = None, rate: int = 10) -> None:
    """H.264 (yuv444p, qp 0: near lossless) at ``rate`` fps, or with explicit timestamps in ms (VFR)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt, stream.options = "yuv444p", {"qp": "0"}
        if pts_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def kitti_camera_yaml(path: Path) -> np.ndarray:
    _, K = kitti_frame_and_K()
    path.write_text(f"model: PINHOLE\nwidth: 1242\nheight: 375\nparams: [{K[0, 0]!r}, {K[1, 1]!r}, {K[0, 2]!r}, "
                    f"{K[1, 2]!r}]\n")
    return K


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "builders.video", *args, "--quiet"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def kitti_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    if not KITTI.exists():
        pytest.skip("../shared/fixtures/kitti_raw is absent")
    folder = tmp_path_factory.mktemp("kitti_video")
    write_video(folder / "drive0009.mp4", kitti_frames())
    K = kitti_camera_yaml(folder / "CAMERA.yaml")
    return folder / "drive0009.mp4", folder / "CAMERA.yaml", K


@needs_shared
def test_kitti_mp4_every_frame_once_in_order_K_scaled_bytes_reproducible(kitti_video, tmp_path: Path) -> None:
    mp4, camera, K = kitti_video
    from builders.cli import make_parser

    parsed = make_parser(video.SPEC).parse_args([str(mp4), str(tmp_path / "a"), "--camera", str(camera)])
    report = build(video.SPEC, str(mp4), str(tmp_path / "a"), split="train", options=video.options_from_args(parsed),
                   workers=0, show_progress=False)
    assert report.ok and report.manifest.schema_version == 2 and report.manifest.dataset == "video"
    samples = samples_of(tmp_path / "a")
    assert sorted(samples) == [f"drive0009_cam_{t:06d}" for t in range(1, 9)]
    # the box is 1242x373 at y0 = 1 (round(1242 * 192 / 640) = 373), resized to 640x192
    want_K = np.array([[K[0, 0] * 640 / 1242, 0, K[0, 2] * 640 / 1242],
                       [0, K[1, 1] * 192 / 373, (K[1, 2] - 1) * 192 / 373], [0, 0, 1]])
    originals = [cv2.resize(f[1:374], (640, 192), interpolation=cv2.INTER_AREA) for f in kitti_frames()]
    for t in range(1, 9):
        sample = samples[f"drive0009_cam_{t:06d}"]
        assert sample.meta.frame_indices == (t - 1, t, t + 1)
        assert sample.meta.timestamps_us == (100_000 * (t - 1), 100_000 * t, 100_000 * (t + 1))
        assert sample.meta.extra["gap_us"] == [100_000, 100_000] and sample.meta.extra["ts"] == [1.0, 1.0]
        assert sample.depth is None and sample.poses is None and sample.meta.original_size == (375, 1242)
        np.testing.assert_allclose(sample.K, want_K, rtol=1e-12)
        for offset, jpeg in zip((-1, 0, 1), sample.images, strict=True):
            image = decode_jpeg(jpeg, key=sample.key, member="cur.jpg").astype(np.float64)
            errors = [np.mean((image - o) ** 2) for o in originals]
            assert int(np.argmin(errors)) == t + offset  # this very frame, not a neighbour
            assert 10 * np.log10(255 ** 2 / errors[t + offset]) > 30
    result = cli(str(mp4), str(tmp_path / "b"), "--camera", str(camera), "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in os.listdir(tmp_path / "a"):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
    again = cli(str(mp4), str(tmp_path / "b"), "--camera", str(camera), "--workers", "0")
    assert again.returncode == 0 and "already complete" in again.stdout
    verify = subprocess.run([sys.executable, "-m", "dynamo_depth", "verify", str(tmp_path / "b")], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


VFR_MS = [0, 33, 70, 100, 180, 200, 233, 300, 310, 420, 500, 580, 620]
# --fps 10: targets 0, 100, ..., 600 ms (700 > 620, the last frame); nearest frames 0, 100, 200, 300, 420
# (20 ms off, 310 is 90 ms off), 500, and for 600 the tie 580 / 620 goes to the earlier: 580.
VFR_KEPT = [0, 3, 5, 7, 9, 10, 11]


def test_select_at_rate_rule_on_numbers() -> None:
    times = [Fraction(ms, 1000) for ms in VFR_MS]
    assert [times.index(t) for t in select_at_rate(times, rate=Fraction(10), time=lambda t: t)] == VFR_KEPT
    # a rate above the frames' keeps every frame once; a target on the last frame takes it
    assert list(select_at_rate(times, rate=Fraction(1000), time=lambda t: t)) == times
    assert list(select_at_rate([Fraction(0), Fraction(1, 2), Fraction(1)], rate=Fraction(1), time=lambda t: t)) == \
        [Fraction(0), Fraction(1)]


@needs_shared
def test_fps_on_a_variable_frame_rate_clip_picks_the_nearest_frames(tmp_path: Path) -> None:
    frames = [np.ascontiguousarray(f[:, :496]) for f in kitti_frames()]  # 496x375
    clip = [frames[i % 10] for i in range(len(VFR_MS))]
    write_video(tmp_path / "phone.mkv", clip, pts_ms=VFR_MS, rate=30)
    camera = tmp_path / "phone.camera.yaml"  # the per-video camera file beside it
    camera.write_text("model: SIMPLE_PINHOLE\nwidth: 496\nheight: 375\nparams: [700, 248, 187]\n")
    report = build(video.SPEC, str(tmp_path), str(tmp_path / "out"), split="train",
                   options=options(fps="10", size=[96, 128]), workers=0, show_progress=False)
    assert report.ok, report.manifest.failed
    samples = samples_of(tmp_path / "out")
    targets = VFR_KEPT[1:-1]
    assert sorted(samples) == [f"phone_cam_{i:06d}" for i in targets]
    for j, i in enumerate(targets, start=1):
        meta = samples[f"phone_cam_{i:06d}"].meta
        assert meta.frame_indices == tuple(VFR_KEPT[j - 1:j + 2])
        assert meta.timestamps_us == tuple(1000 * VFR_MS[k] for k in VFR_KEPT[j - 1:j + 2])
        gaps = [1000 * (VFR_MS[VFR_KEPT[j]] - VFR_MS[VFR_KEPT[j - 1]]), 1000 * (VFR_MS[VFR_KEPT[j + 1]] - VFR_MS[i])]
        assert meta.extra["gap_us"] == gaps
        assert meta.extra["ts"] == pytest.approx([g / 100_000 for g in gaps], abs=1e-6)
    assert samples["phone_cam_000009"].meta.extra["ts"] == pytest.approx([1.2, 0.8])


@needs_shared
def test_static_frames_are_dropped_and_counted(tmp_path: Path) -> None:
    sequence = tmp_path / "src" / "parked"
    sequence.mkdir(parents=True)
    for name, frame in enumerate([0, 1, 1, 1, 2, 3]):
        (sequence / f"{name:04d}.png").symlink_to(IMAGES / f"{frame:010d}.png")
    kitti_camera_yaml(sequence / "camera.yaml")
    report = build(video.SPEC, str(tmp_path / "src"), str(tmp_path / "out"), split="train",
                   options=options(drop_static=2.0), workers=0, show_progress=False)
    unit = report.manifest.units[0]
    assert (unit.name, unit.samples, unit.skipped) == ("parked", 2, 2)
    assert unit.notes == ("frame 2: static: mean difference 0.00 < 2 grey levels",
                          "frame 3: static: mean difference 0.00 < 2 grey levels")
    samples = samples_of(tmp_path / "out")
    assert [s.meta.frame_indices for s in samples.values()] == [(0, 1, 4), (1, 4, 5)]
    assert samples["parked_cam_000004"].meta.extra["gap_us"] == [300_000, 100_000]
    from dynamo_depth.show import main as show  # a sample without depth / poses draws too

    assert show([str(tmp_path / "out"), "--out", str(tmp_path / "sample.png")]) == 0
    assert (tmp_path / "sample.png").stat().st_size > 10_000


@needs_shared
def test_fisheye_sequence_is_undistorted_by_the_builder(tmp_path: Path) -> None:
    sequence = tmp_path / "src" / "fisheye"
    sequence.mkdir(parents=True)
    originals = []
    for t in range(3):
        original, K = kitti_frame_and_K(t + 2)
        originals.append(original)
        distorted = distort_with_opencv(original, K, FISHEYE)
        cv2.imwrite(str(sequence / f"{t:04d}.png"), cv2.cvtColor(distorted, cv2.COLOR_RGB2BGR))
    (sequence / "cameras.txt").write_text("# COLMAP: pixel centres at 0.5\n1 OPENCV_FISHEYE 1242 375 "
                                          + " ".join(repr(p + (0.5 if i in (2, 3) else 0.0))
                                                     for i, p in enumerate(FISHEYE.params)) + "\n")
    report = build(video.SPEC, str(tmp_path / "src"), str(tmp_path / "out"), split="train", options=options(),
                   workers=0, show_progress=False)
    assert report.ok, report.manifest.failed
    (sample,) = samples_of(tmp_path / "out").values()
    rectifier = Rectifier.plan(Camera(model=FISHEYE.model, width=1242, height=375, params=FISHEYE.params))
    np.testing.assert_allclose(sample.K, rectifier.K, rtol=1e-9)
    assert sample.meta.distortion == FISHEYE.distortion and sample.meta.extra["camera_model"] == "OPENCV_FISHEYE"
    truth, inside = ideal_view(originals[1], K, rectifier)
    assert psnr(decode_jpeg(sample.images[1], key=sample.key, member="cur.jpg"), truth, inside) >= 30.0


def test_missing_intrinsics_is_an_error_with_the_hint_to_calibrate(tmp_path: Path) -> None:
    write_video(tmp_path / "clip.mp4", [np.full((64, 96, 3), 10 * i, np.uint8) for i in range(4)])
    result = cli(str(tmp_path / "clip.mp4"), str(tmp_path / "out"), "--workers", "0")
    assert result.returncode == 1
    assert f"FAILED  clip: {tmp_path / 'clip.mp4'}: no camera intrinsics: give --camera CAMERA.yaml" in result.stdout
    assert "calibrate the camera first" in result.stdout
    (tmp_path / "CAMERA.yaml").write_text("model: PINHOLE\nwidth: 640\nheight: 480\nparams: [500, 500, 320, 240]\n")
    wrong = cli(str(tmp_path / "clip.mp4"), str(tmp_path / "out"), "--camera", str(tmp_path / "CAMERA.yaml"),
                "--workers", "0")
    assert wrong.returncode == 1 and "frame 0: frame is 96x64, the camera" in wrong.stdout
    assert cli(str(tmp_path / "nothing.mp4"), str(tmp_path / "out2")).returncode == 2


def test_help_lists_the_options() -> None:
    result = subprocess.run([sys.executable, "-m", "builders.video", "--help"], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0
    for option in ("--camera", "--fps", "--drop-static", "--size", "--fov", "--workers"):
        assert option in result.stdout
    assert RectifyOptions().out_hw == (192, 640)
