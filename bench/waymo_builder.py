"""Benchmark: Waymo builder frames/s per core on real-size records vs the original TensorFlow path.

    PYTHONPATH=. .venv/bin/python bench/waymo_builder.py [--frames 5] [--segments 8]

Input: one synthetic segment at real sizes (FRONT 1920x1280 JPEG, TOP 64x2650, the other lasers 200x600),
written once and linked as ``--segments`` segments (same bytes, different names); plus, when ``../shared``
is there, the real-size reference record ``waymo_synthetic_lidar/synthetic_lidar_3frames.tfrecord`` (real
FRONT JPEG and calibrations, ray-cast LiDAR).
Ours: ``builders.runner.build`` in-process (``--workers 0``) with OpenCV and BLAS limited to one thread (one
core; wall time and this process's CPU time, the latter being what one unshared core does), then with Ray at
1 and 2 workers (wall time of the build; ``ray.init`` and a warm-up task per worker are timed apart). Per-stage times (record parse + CRC, image, LiDAR depth) come from one
extra pass over one segment.
Baseline: the original ``prepare_data/waymo.py`` (TensorFlow 2.13, official waymo-open-dataset decoder,
upb protobuf) measured on this machine kind: 1.1-1.6 s per frame without masks (frames 0 and 2 of the
reference record; ``../shared/reference/waymo_synthetic_lidar/README.md``, "Seconds per frame"). It cannot
run here (no TensorFlow), so its recorded figures are printed beside ours.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core means one thread, BLAS included
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil
import tempfile
import time
from pathlib import Path

from builders import waymo  # noqa: E402 - after the thread limits
from builders.runner import build  # noqa: E402
from dynamo_depth.formats import waymo as wf  # noqa: E402
from dynamo_depth.formats.tfrecord import iter_records  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE_RECORD = SHARED / "reference" / "waymo_synthetic_lidar" / "synthetic_lidar_3frames.tfrecord"
BASELINE_S_PER_FRAME = (1.1, 1.6)  # original TF path, upb protobuf, no masks (reference README)
OPTIONS = {"cameras": ["FRONT"], "split": "train"}


def make_raw(root: Path, *, frames: int, segments: int) -> int:
    """Write one real-size synthetic segment, link it ``segments`` times under ``root/train``; frames in all."""
    from dynamo_depth.synth.waymo import WaymoSynthOptions, write_waymo

    start = time.perf_counter()
    (source,) = write_waymo(root / "_source", sequences=1, frames=frames, seed=0,
                            options=WaymoSynthOptions(top_width=2650, short_range_hw=(200, 600)))
    print(f"wrote {frames} real-size synthetic frames in {time.perf_counter() - start:.1f} s "
          f"({source.stat().st_size / frames / 1e6:.1f} MB per record)")
    (root / "train").mkdir(parents=True)
    for n in range(segments):
        (root / "train" / f"segment-{n:019d}_000_000_020_000{waymo.SEGMENT_SUFFIX}").symlink_to(source)
    return frames * segments


def stage_times(path: Path) -> dict[str, float]:
    """CPU seconds per frame of each stage, one pass over one segment (depth for every frame)."""
    totals = {"parse + CRC": 0.0, "image (decode, undistort, resize, JPEG)": 0.0, "LiDAR depth + motion": 0.0}
    count = 0
    start = time.process_time()
    for offset, payload in iter_records(path):
        frame = wf.parse_frame(payload)
        now = time.process_time()
        totals["parse + CRC"] += now - start
        calib = wf.camera_calibrations(frame)["FRONT"]
        bgr = waymo.decode_jpeg(wf.camera_images(frame)["FRONT"].jpeg, where=f"{path}@{offset}")
        undistorter = waymo.Undistorter.create(K=calib.K, distortion=calib.distortion, hw=(calib.height, calib.width))
        waymo.training_jpeg(undistorter.apply(bgr))
        mid = time.process_time()
        totals["image (decode, undistort, resize, JPEG)"] += mid - now
        waymo.frame_depth(frame, calib)
        start = time.process_time()
        totals["LiDAR depth + motion"] += start - mid
        count += 1
    return {name: seconds / count for name, seconds in totals.items()}


def report(label: str, frames: int, seconds: float, cores: int, cpu_seconds: float | None = None) -> None:
    """Print frames/s per core from wall time and, for in-process runs, from this process's CPU time
    (what one core does when it is not shared; the machine may be busy with other jobs)."""
    low, high = (1.0 / s for s in BASELINE_S_PER_FRAME[::-1])
    per_core = frames / seconds / cores
    line = (f"{label:44s} wall {seconds:6.2f} s  {frames / seconds:5.2f} frames/s  {per_core:5.2f} frames/s/core"
            f" = {per_core / high:4.1f}x-{per_core / low:4.1f}x")
    if cpu_seconds is not None:
        per_cpu = frames / cpu_seconds
        line += f" | CPU {cpu_seconds:6.2f} s  {per_cpu:5.2f} frames/CPU-s = {per_cpu / high:4.1f}x-{per_cpu / low:4.1f}x"
    print(line)


def timed_build(raw: Path, out: Path, *, workers: int, executor: str = "auto") -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one build."""
    start, cpu = time.perf_counter(), time.process_time()
    result = build(waymo.SPEC, str(raw), str(out), split="train", options=OPTIONS, workers=workers, executor=executor,
                   show_progress=False)
    if not result.ok:
        raise SystemExit(f"build failed: {[f.error for f in result.manifest.failed]}")
    return time.perf_counter() - start, time.process_time() - cpu


def _warm_worker(record: str) -> int:
    """Ray warm-up task: the imports and one frame's parse + image work of a unit task; returns the worker pid."""
    from builders import waymo as waymo_builder
    from dynamo_depth.formats import waymo as waymo_format

    _, frame = next(waymo_format.iter_frames(record))
    waymo_builder.decode_jpeg(waymo_format.camera_images(frame)["FRONT"].jpeg, where=record)
    time.sleep(1.0)  # hold the worker so that each warm-up task lands on its own worker process
    return os.getpid()


def ray_build(raw: Path, out: Path, *, workers: int) -> tuple[float, float, float]:
    """(ray.init s, warm-up s, build wall s) with ``workers`` workers: start-up timed apart from the build."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=workers, object_store_memory=100_000_000, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}})
    init_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        record = str(next((raw / "train").iterdir()).resolve())
        pids = ray.get([ray.remote(num_cpus=1)(_warm_worker).remote(record) for _ in range(workers)])
        warm_s = time.perf_counter() - start
        if len(set(pids)) != workers:
            print(f"  note: warm-up reached {len(set(pids))} worker processes, not {workers}")
        build_s, _ = timed_build(raw, out, workers=workers, executor="ray")
    finally:
        ray.shutdown()
    return init_s, warm_s, build_s


def _one_core(times: tuple[float, float]) -> tuple[float, int, float]:
    return times[0], 1, times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5, help="frames of the synthetic segment (default 5)")
    parser.add_argument("--segments", type=int, default=8, help="segments (links to it) to build (default 8)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import cv2

    cv2.setNumThreads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_waymo_"))
    try:
        frames = make_raw(tmp / "raw", frames=args.frames, segments=args.segments)
        print(f"baseline (original TF prepare_data/waymo.py, recorded): {BASELINE_S_PER_FRAME[0]}-"
              f"{BASELINE_S_PER_FRAME[1]} s/frame = {1 / BASELINE_S_PER_FRAME[1]:.2f}-{1 / BASELINE_S_PER_FRAME[0]:.2f}"
              " frames/s per process (CPU, 2 cores, TF import excluded)")
        print("stage CPU times (one pass, depth for every frame, as in a long segment):")
        stages = stage_times(next((tmp / "raw" / "train").iterdir()))
        for name, seconds in stages.items():
            print(f"  stage {name:40s} {seconds * 1000:7.1f} ms/frame")
        steady = sum(stages.values())
        print(f"  all stages {steady * 1000:.1f} ms/frame = {1 / steady:.2f} frames/CPU-s = "
              f"{BASELINE_S_PER_FRAME[0] / steady:.1f}x-{BASELINE_S_PER_FRAME[1] / steady:.1f}x the original per core")
        report(f"ours in-process, 1 core ({frames} frames)", frames, *_one_core(timed_build(tmp / "raw", tmp / "o0", workers=0)))
        if REFERENCE_RECORD.exists():
            (tmp / "ref" / "train").mkdir(parents=True)
            for n in range(4):
                (tmp / "ref" / "train" / f"segment-{n}_ref{waymo.SEGMENT_SUFFIX}").symlink_to(REFERENCE_RECORD)
            report("ours in-process, reference record (4x3 frames)", 12,
                   *_one_core(timed_build(tmp / "ref", tmp / "r0", workers=0)))
        ray_seconds = {}
        for workers in (1, 2):
            init_s, warm_s, ray_seconds[workers] = ray_build(tmp / "raw", tmp / f"ray{workers}", workers=workers)
            report(f"ours Ray --workers {workers} (warm workers)", frames, ray_seconds[workers], workers)
            print(f"  start-up apart: ray.init {init_s:.1f} s, warm-up {warm_s:.1f} s")
        print(f"Ray speed-up, 2 workers vs 1: {ray_seconds[1] / ray_seconds[2]:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
