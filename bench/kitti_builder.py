"""Benchmark: KITTI builder camera-frames/s per core vs the original file-per-frame loop, same run.

    PYTHONPATH=. .venv/bin/python bench/kitti_builder.py [--per-core-drives 4 --repeat 5 --drives 12]

Input: the real drive 0009 (``../shared/fixtures/kitti_raw``, 10 frames x 2 cameras) replicated through
symlinks (falls back to a synthetic KITTI world when ../shared is absent): ``--per-core-drives`` drives
for the per-core comparison (baseline and in-process run in turn ``--repeat`` times, CPU and wall time
of each kept), ``--drives`` drives for Ray.
Baseline ("original way"): one process, per frame and camera: PIL open + resize + save one JPEG per
frame, numpy projection with a Python ``Counter`` loop over duplicate pixels, one ``.npy`` per frame.
Ours: ``builders.runner.build`` in-process (``--workers 0``, one core), then with Ray at 1 and 2 workers.
Ray start-up is timed apart from the build: ``ray.init`` first, then one warm-up task per worker
(each imports the builder, cv2 and PIL and decodes one PNG, so every worker process exists and has
its imports done), then the timed build. The Ray speedup printed is build(1 worker) / build(2 workers);
the pack step (one shard here: in-process in the driver) is timed inside the build and printed.
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

from builders import kitti, runner
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


def interleaved(repeat: int, runs: dict) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of each ``runs[name](attempt)``, run in turn ``repeat`` times (A B A B ...).

    CPU time (all threads of this process) is what "per core" means on a machine shared with other
    jobs; interleaving exposes both contenders to the same moments of load, and the best (min) and
    median of each are compared.
    """
    out = {name: {"wall": [], "cpu": []} for name in runs}
    for attempt in range(repeat):
        for name, fn in runs.items():
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            fn(attempt)
            out[name]["wall"].append(time.perf_counter() - wall_start)
            out[name]["cpu"].append(time.process_time() - cpu_start)
    return out


def _warm_worker(raw: str) -> int:
    """Ray warm-up task: the imports and one PNG decode a unit task needs; returns the worker pid."""
    from builders import kitti as kitti_builder

    png = next(Path(raw).glob("*/*_drive_*_sync/image_02/data/*.png"))
    kitti_builder.resized_jpeg(kitti_builder.read_png_rgb(png))
    time.sleep(1.0)  # hold the worker so that each warm-up task lands on its own worker process
    return os.getpid()


class PackTimer:
    """Wraps ``builders.runner._pack`` to time the pack step of each build."""

    def __init__(self) -> None:
        self.inner, self.seconds = runner._pack, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds = time.perf_counter() - start


def ray_build(raw: Path, out: Path, options: dict, workers: int, pack: PackTimer) -> dict[str, float]:
    """Seconds of ray.init, of the warm-up, of the build and of its pack step, with ``workers`` workers."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=workers, object_store_memory=100_000_000, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parents[1])}})
    init_s = time.perf_counter() - start
    try:
        warm = ray.remote(num_cpus=1)(_warm_worker)
        warm_s, pids = timed(ray.get, [warm.remote(str(raw)) for _ in range(workers)])
        if len(set(pids)) != workers:
            print(f"  note: warm-up reached {len(set(pids))} worker processes, not {workers}")
        build_s, _ = timed(build, kitti.SPEC, str(raw), str(out), split="train", options=options,
                           workers=workers, executor="ray", show_progress=False)
    finally:
        ray.shutdown()
    return {"init": init_s, "warm": warm_s, "build": build_s, "pack": pack.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drives", type=int, default=12, help="drives of the Ray scaling input")
    parser.add_argument("--per-core-drives", type=int, default=4, help="drives of the per-core comparison input")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved runs of baseline and in-process")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = Path(tempfile.mkdtemp(prefix="bench_kitti_"))
    pack = PackTimer()
    runner._pack = pack
    options = {"cameras": ["image_02", "image_03"], "split": "train", "split_file": None, "split_file_sha256": None}
    try:
        small = make_raw(tmp / "raw_small", args.per_core_drives)
        frames = original_way(small, tmp / "base_warm")  # imports and page cache warm for both contenders
        build(kitti.SPEC, str(small), str(tmp / "ours_warm"), split="train", options=options, workers=0,
              show_progress=False)
        print(f"per-core input: {args.per_core_drives} drives x 2 cameras, {frames} camera-frames "
              f"({'real' if SHARED_RAW.exists() else 'synthetic'}); {args.repeat} interleaved runs each; "
              f"load average {os.getloadavg()[0]:.1f}")
        runs = interleaved(args.repeat, {
            "baseline": lambda i: original_way(small, tmp / f"base{i}"),
            "ours": lambda i: build(kitti.SPEC, str(small), str(tmp / f"ours{i}"), split="train", options=options,
                                    workers=0, show_progress=False),
        })
        for name, label in (("baseline", "baseline (original file-per-frame, 1 process)"),
                            ("ours", "ours (in-process, --workers 0)               ")):
            cpu, wall = sorted(runs[name]["cpu"]), sorted(runs[name]["wall"])
            print(f"{label}: CPU s min {cpu[0]:5.2f} median {cpu[len(cpu) // 2]:5.2f} "
                  f"({frames / cpu[0]:5.1f} camera-frames/CPU-s best); wall s min {wall[0]:5.2f} "
                  f"median {wall[len(wall) // 2]:5.2f}")
        ratio = {k: sorted(runs["baseline"][k])[len(runs["baseline"][k]) // 2]
                 / sorted(runs["ours"][k])[len(runs["ours"][k]) // 2] for k in ("cpu", "wall")}
        best = {k: min(runs["baseline"][k]) / min(runs["ours"][k]) for k in ("cpu", "wall")}
        print(f"per core, ours vs baseline: {best['cpu']:.2f}x by best CPU time ({ratio['cpu']:.2f}x by median), "
              f"{best['wall']:.2f}x by best wall ({ratio['wall']:.2f}x by median)")
        raw = make_raw(tmp / "raw", args.drives)
        frames = sum(1 for _ in raw.glob("*/*_drive_*_sync/image_0[23]/data/*.png"))
        print(f"Ray input: {args.drives} drives x 2 cameras = {2 * args.drives} units, {frames} camera-frames")
        times = {}
        for workers in (1, 2):
            times[workers] = ray_build(raw, tmp / f"ray{workers}", options, workers, pack)
            t = times[workers]
            print(f"ours (Ray, --workers {workers}, warm workers):       {t['build']:6.2f} s wall  "
                  f"{frames / t['build']:6.1f} camera-frames/s ({frames / t['build'] / workers:.1f} per worker; "
                  f"pack {t['pack']:.2f} s; start-up apart: ray.init {t['init']:.1f} s + warm-up {t['warm']:.1f} s)")
        units = {w: times[w]["build"] - times[w]["pack"] for w in times}
        print(f"Ray scaling, 2 workers vs 1: {times[1]['build'] / times[2]['build']:.2f}x build wall "
              f"({units[1] / units[2]:.2f}x for the unit step, pack excluded); "
              f"load average now {os.getloadavg()[0]:.1f}")
    finally:
        runner._pack = pack.inner
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
