"""The README's three-command tutorial (build from a video, train, predict on the video), run end to end on CPU at
192x64 with KITTI drive 0009 encoded into an mp4; predict's video options; eval.depth refusing depth-less shards."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from dynamo_depth.pictures import motion_overlay
from tests.test_builder_video import KITTI, kitti_camera_yaml, kitti_frames, write_video

REPO = Path(__file__).resolve().parents[1]
SMALL = {  # appended to the README's lines: small size, few steps, one CPU thread
    "builders.video": ["--size", "192x64", "--workers", "0", "--quiet"],
    "train/main.py": ["--set", "data.height=64", "--set", "data.width=192", "--set", "data.batch_size=2",
                      "--set", "data.num_workers=0", "--set", "schedule.iterations_per_epoch=1",
                      "--set", "schedule.mask_init.epochs=1", "--set", "schedule.fine_tune.epochs=1",
                      "--set", "train.threads=1"],
    "predict": ["--quiet"],
}


def readme_tutorial() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- tutorial -->\n```bash\n(.*?)```\n<!-- /tutorial -->", text, re.S)
    assert block is not None, "README.md lost its tutorial block"
    return [shlex.split(line) for line in block.group(1).strip().splitlines()]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def video_facts(path: Path) -> tuple[Fraction, int, int, int]:
    """(frame rate, width, height, frame count) of a video file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return Fraction(stream.average_rate), stream.width, stream.height, count


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not KITTI.exists():
        pytest.skip("../shared/fixtures/kitti_raw is absent")
    work = tmp_path_factory.mktemp("tutorial")
    write_video(work / "my_drive.mp4", kitti_frames())
    kitti_camera_yaml(work / "CAMERA.yaml")
    for name in ("train", "configs"):
        (work / name).symlink_to(REPO / name)
    commands = readme_tutorial()
    assert [c[:3] for c in commands] == [["python", "-m", "builders.video"], ["python", "train/main.py", "--config"],
                                         ["python", "-m", "dynamo_depth"]]
    for command, small in zip(commands, SMALL.values(), strict=True):
        result = run([sys.executable, *command[1:], *small], work)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        if command[1] == "train/main.py":
            assert result.stderr.count("no depth metrics can be computed") == 1  # said once
    return work


def test_readme_tutorial_runs_end_to_end(tutorial: Path) -> None:
    assert (tutorial / "shards" / "my_drive" / "manifest.json").is_file()
    assert list((tutorial / "runs" / "my_drive" / "checkpoints").glob("step-*.pt"))
    # the source's frame rate, every frame, the source's size (yuv420p pads 375 rows to 376)
    assert video_facts(tutorial / "predictions" / "my_drive_depth.mp4") == (Fraction(10), 1242, 376, 10)
    assert video_facts(tutorial / "predictions" / "my_drive_motion.mp4") == (Fraction(10), 1242, 376, 10)


def test_predict_every_and_max_frames(tutorial: Path) -> None:
    base = [sys.executable, "-m", "dynamo_depth", "predict", "--checkpoint", "runs/my_drive", "my_drive.mp4",
            "--quiet"]
    every = run([*base, "--out", "every", "--every", "2"], tutorial)
    assert every.returncode == 0, every.stderr
    assert "5 frame(s)" in every.stdout
    assert video_facts(tutorial / "every" / "my_drive_depth.mp4") == (Fraction(5), 1242, 376, 5)
    capped = run([*base, "--out", "capped", "--max-frames", "3"], tutorial)
    assert capped.returncode == 0, capped.stderr
    assert video_facts(tutorial / "capped" / "my_drive_depth.mp4")[3] == 3
    bad = run([*base, "--out", "bad", "--every", "0"], tutorial)
    assert bad.returncode == 2 and "--every must be >= 1" in bad.stderr


def test_eval_depth_refuses_shards_without_depth(tutorial: Path) -> None:
    result = run([sys.executable, "-m", "eval.depth", "--checkpoint", "runs/my_drive", "--data", "shards/my_drive"],
                 tutorial)
    assert result.returncode == 2
    assert "has no LiDAR depth" in result.stderr and "eval.depth needs ground-truth depth" in result.stderr
    odometry = run([sys.executable, "-m", "eval.odometry", "--checkpoint", "runs/my_drive", "--data",
                    "shards/my_drive"], tutorial)
    assert odometry.returncode == 2 and "eval.odometry needs ground-truth poses" in odometry.stderr


def test_motion_overlay_by_hand() -> None:
    rgb = np.full((2, 4, 3), 100, np.uint8)
    mask = np.array([[0.0, 1.0], [0.5, 0.0]], np.float32)  # 2x2, upsampled to 2x4 (bilinear)
    out = motion_overlay(rgb, mask)
    assert out.shape == (2, 4, 3)
    assert out[0, 0].tolist() == [100, 100, 100]  # no motion: the frame
    assert out[0, 3].tolist() == [int(100 * 0.4 + 255 * 0.6 + 0.5), 40, 40]  # full motion: 0.4 frame + 0.6 red
