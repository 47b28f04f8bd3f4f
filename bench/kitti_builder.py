"""Benchmark: KITTI builder camera-frames/s per core vs the original file-per-frame loop, same run.

    PYTHONPATH=. .venv/bin/python bench/kitti_builder.py [--drives 4]

Input: the real drive 0009 (``../shared/fixtures/kitti_raw``, 10 frames x 2 cameras) replicated as
``--drives`` drives through symlinks (falls back to a synthetic KITTI world when ../shared is absent).
Baseline ("original way"): one process, per frame and camera: PIL open + resize + save one JPEG per
frame, numpy projection with a Python ``Counter`` loop over duplicate pixels, one ``.npy`` per frame.
Ours: ``builders.runner.build`` in-process (``--workers 0``, one core), then with Ray at 1 and 2 workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from builders import kitti
from builders.runner import build
from dynamo_depth.formats import kitti as kf

SHARED_RAW = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "kitti_raw"


def make_raw(root: Path, drives: int) -> Path:
    if not SHARED_RAW.exists():
        from dynamo_depth.synth.kitti import write_kitti

        write_kitti(root, sequences=drives, frames=10, seed=0)
        return root
    source = SHARED_RAW / "2011_09_26" / "2011_09_26_drive_0009_sync"
    date = root / "2011_09_26"
    date.mkdir(parents=True)
    for calib in SHARED_RAW.glob("2011_09_26/calib_*.txt"):
        (date / calib.name).symlink_to(calib)
    for n in range(drives):
        for path in source.rglob("*"):
            if path.is_file():
                target = date / f"2011_09_26_drive_{n + 1:04d}_sync" / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(path)
    return root


def original_way(raw: Path, out: Path) -> int:
    """File-per-frame loop as the original preprocessing works; returns camera-frames processed."""
    frames = 0
    for drive in sorted(raw.glob("*/*_drive_*_sync")):
        calib = kf.load_kitti_calib(drive.parent)
        for camera in ("image_02", "image_03"):
            velo_to_pixels = calib.velo_to_pixels(camera)
            (out / drive.name / camera).mkdir(parents=True, exist_ok=True)
            for png in sorted((drive / camera / "data").glob("*.png")):
                image = Image.open(png).convert("RGB")
                width, height = image.size
                image.resize((640, 192), Image.BILINEAR).save(out / drive.name / camera / f"{png.stem}.jpg")
                velo_path = drive / "velodyne_points" / "data" / f"{png.stem}.bin"
                velo = np.fromfile(velo_path, dtype=np.float32).reshape(-1, 4)
                depth = _original_depth(velo, velo_to_pixels, (height, width))
                rows, cols = np.nonzero(depth)
                np.save(out / drive.name / camera / f"{png.stem}.npy", np.stack([rows, cols, depth[rows, cols]], 1))
                frames += 1
    return frames


def _original_depth(velo: np.ndarray, p_velo2im: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    velo = velo[velo[:, 0] >= 0].astype(np.float64)
    velo[:, 3] = 1.0
    pts = (p_velo2im @ velo.T).T
    pts[:, :2] /= pts[:, 2:3]
    pts[:, 2] = velo[:, 0]
    pts[:, :2] = np.round(pts[:, :2]) - 1
    ok = (pts[:, 0] >= 0) & (pts[:, 1] >= 0) & (pts[:, 0] < hw[1]) & (pts[:, 1] < hw[0])
    pts = pts[ok]
    depth = np.zeros(hw)
    depth[pts[:, 1].astype(int), pts[:, 0].astype(int)] = pts[:, 2]
    inds = pts[:, 1] * (hw[1] - 1) + pts[:, 0] - 1
    for index in [i for i, c in Counter(inds).items() if c > 1]:
        where = np.where(inds == index)[0]
        depth[int(pts[where[0], 1]), int(pts[where[0], 0])] = pts[where, 2].min()
    depth[depth < 0] = 0
    return depth


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drives", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = Path(tempfile.mkdtemp(prefix="bench_kitti_"))
    try:
        raw = make_raw(tmp / "raw", args.drives)
        base_s, frames = timed(original_way, raw, tmp / "baseline")
        print(f"input: {args.drives} drives x 2 cameras, {frames} camera-frames ({'real' if SHARED_RAW.exists() else 'synthetic'})")
        print(f"baseline (original file-per-frame, 1 process): {base_s:6.2f} s  {frames / base_s:6.1f} camera-frames/s")
        options = {"cameras": ["image_02", "image_03"], "split": "train", "split_file": None}
        ours_s, report = timed(build, kitti.SPEC, str(raw), str(tmp / "ours0"), split="train", options=options,
                               workers=0, show_progress=False)
        print(f"ours (in-process, 1 core):                     {ours_s:6.2f} s  {frames / ours_s:6.1f} camera-frames/s"
              f"  -> {base_s / ours_s:.2f}x baseline per core ({report.manifest.num_samples} triplets)")
        for workers in (1, 2):
            import ray

            ray.init(num_cpus=workers, object_store_memory=100_000_000, include_dashboard=False,
                     log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parents[1])}})
            seconds, _ = timed(build, kitti.SPEC, str(raw), str(tmp / f"ray{workers}"), split="train",
                               options=options, workers=workers, show_progress=False)
            ray.shutdown()
            print(f"ours (Ray, --workers {workers}, warm cluster):         {seconds:6.2f} s  "
                  f"{frames / seconds:6.1f} camera-frames/s  ({frames / seconds / workers:.1f} per worker)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
