"""How the builders grow with their data (#27): per-unit cost, nuScenes table cost, packing; baseline = an older commit.

    PYTHONPATH=. .venv/bin/python bench/scale_builders.py [--baseline REV] [--only tables,units,pack]
        [--scenes 2,600,6002|trainval] [--kitti-frames 100,400] [--nuscenes-frames 60,240] [--waymo-frames 10,20]
        [--pack-mb 240] [--s3] [--waymo-full-frames 50,100,200]

Every build runs as its own process (``python -m builders.<name>``), and a thread of this script polls
``/proc`` every 0.1 s for the peak RSS (``VmHWM``) of that process (the driver) and of each of its Ray
worker processes (``ray::`` / ``default_worker.py``); CPU seconds are the children's (``RUSAGE_CHILDREN``).
The baseline runs the same commands on ``git archive REV`` (default ``e01a5e2``: before #27's builder
changes) in the same run.

- ``tables``: nuScenes tables inflated (records only, ``dynamo_depth.synth.nuscenes_inflate``) to
  ``--scenes`` scenes; the same 2 real scenes built each time (``--split-file`` of their frames, ``--workers 2``).
  ``--scenes trainval``: instead, the tables are filled to v1.0-trainval's record counts with records-only
  synthetic scenes of a realistic structure (``inflate_to_counts(counts=TRAINVAL_COUNTS)``: 850 scenes,
  2,631,083 sample_data, 1,166,187 annotations), ours only (the baseline's per-worker table cost is linear
  in the records and measured at the smaller sizes); two child processes also time the driver's table load
  with the devkit's ``NuScenes`` and with ``builders.nuscenes_index`` (the default) on the same tables, each
  followed by every scene's payload (their sha256 must be equal), and the payload of a trainval-sized scene.
- ``units``: one unit per build, in-process (``--workers 0``): a KITTI drive of ``--kitti-frames`` frames
  (the real drive 0009's 10 frames repeated through symlinks, 1242x375 PNG + ~120k-point scans), a
  synthetic nuScenes scene of ``--nuscenes-frames`` CAM_FRONT frames (1600x900 JPEG, LiDAR at 20 Hz) and
  a synthetic Waymo segment of ``--waymo-frames`` frames (the FRONT 1920x1280 JPEG only, TOP 64x2650 and
  four 200x600 range images per frame; the FRONT camera built; all five images: ``waymo-full``).
- ``waymo-full``: a full-size Waymo record (``WaymoSynthOptions.full_size()``: five camera JPEGs at 1920x1280
  / 1920x886, TOP 64x2650 and four 200x600 range images) of the largest of ``--waymo-full-frames`` frames,
  written once by a child process (its wall, CPU, peak RSS and bytes are reported); the smaller sizes are its
  first N records (frames are independent of each other, so that is what ``write_waymo(frames=N)`` writes).
  Each size is built in-process (``--workers 0``, FRONT), the largest also with all five cameras.
  (Code: ``bench/scale_full.py``; the measuring helpers: ``bench/scale_measure.py``.)
- ``pack``: the pack step alone over staged units of realistic sample size (~400 kB: three 640x192 JPEGs
  and 20k depth points), ``--pack-mb`` MB in 100-sample shards: baseline ``_pack`` (one process streams
  every sample) vs ours in-process and with 2 Ray tasks; locally and (``--s3``) on SeaweedFS.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scale_full import bench_waymo_full, tables_child, tables_json_child, trainval_tables, waymo_write_child
from scale_measure import MB, REPO, baseline_checkout, measured
from scale_measure import row as _row

TRAINVAL = -1  # --scenes trainval
KITTI_FIXTURE = REPO.parent / "shared" / "fixtures" / "kitti_raw" / "2011_09_26"
KITTI_DRIVE = "2011_09_26_drive_0009_sync"


# -------------------------------------------------------------------------------------- nuScenes tables
def bench_tables(tmp: Path, base: Path, scene_counts: list[int]) -> None:
    from dynamo_depth.synth.nuscenes import write_nuscenes
    from dynamo_depth.synth.nuscenes_inflate import inflate_tables

    version, frames = "v1.0-mini", 12
    source = tmp / "nusc_source"
    write_nuscenes(source, sequences=2, frames=frames, seed=0, version=version)
    split_file = tmp / "two_scenes.txt"
    split_file.write_text("".join(f"scenes/scene-000{s} {i}\n" for s in (1, 2) for i in range(1, frames - 1)))
    print(_row("scenes in the tables", "sample_data", "table MB", "code", "wall s", "driver peak MB",
               "largest worker peak MB", "payload kB / scene"))
    print(_row(*["---"] * 8))
    for scenes in scene_counts:
        root = tmp / f"nusc_{scenes}"
        shutil.copytree(source / version, root / version)
        for folder in ("samples", "sweeps", "panoptic", "maps"):
            (root / folder).symlink_to(source / folder)
        if scenes == TRAINVAL:  # the payload from a child process: the devkit's tables are GBs at this size
            (counts, payload_kb), codes = trainval_tables(root, version), (("ours", REPO),)
        else:
            counts, codes = inflate_tables(root, version, copies=scenes // 2 - 1), (("baseline", base), ("ours", REPO))
            payload_kb = _payload_kb(root, version)
        table_mb = sum(p.stat().st_size for p in (root / version).glob("*.json")) / MB
        for label, code in codes:
            out = tmp / f"nusc_out_{scenes}_{label}"
            m = measured([sys.executable, "-m", "builders.nuscenes", str(root), str(out), "--split", "all",
                          "--split-file", str(split_file), "--workers", "2", "--quiet"], code=code)
            print(_row(counts["scene"], counts["sample_data"], f"{table_mb:.0f}", label, f"{m['wall_s']:.1f}",
                       f"{m['driver_mb']:.0f}", f"{m['worker_mb']:.0f}", f"{payload_kb:.0f}" if label == "ours" else
                       "(whole tables)"), flush=True)
            shutil.rmtree(out)
        shutil.rmtree(root)


def _payload_kb(root: Path, version: str) -> float:
    import pickle

    from builders import nuscenes as nb

    options = {"split": "all", "version": version}
    units = [u for u in nb.list_units(str(root), options) if u.name in ("scene-0001", "scene-0002")]
    sizes = [len(pickle.dumps(nb.prepare_unit(str(root), u, options))) for u in units]
    nb._NUSCENES.clear()
    return max(sizes) / 1024


# ------------------------------------------------------------------------------------------------ units
def long_kitti_drive(root: Path, frames: int) -> Path:
    """One drive of ``frames`` frames: drive 0009's 10 frames repeated (symlinks), timestamps every 0.1 s."""
    source = KITTI_FIXTURE / KITTI_DRIVE
    date = root / "2011_09_26"
    drive = date / KITTI_DRIVE
    for calib in KITTI_FIXTURE.glob("calib_*.txt"):
        date.mkdir(parents=True, exist_ok=True)
        (date / calib.name).symlink_to(calib)
    start = datetime.datetime(2011, 9, 26, 13, 8, 24)
    stamps = "".join(f"{start + datetime.timedelta(seconds=i / 10):%Y-%m-%d %H:%M:%S}.{(i % 10) * 100000000:09d}\n"
                     for i in range(frames))
    for sub, ext in (("image_02", "png"), ("image_03", "png"), ("velodyne_points", "bin"), ("oxts", "txt")):
        (drive / sub / "data").mkdir(parents=True)
        for i in range(frames):
            (drive / sub / "data" / f"{i:010d}.{ext}").symlink_to(source / sub / "data" / f"{i % 10:010d}.{ext}")
        (drive / sub / "timestamps.txt").write_text(stamps)
    if (source / "oxts" / "dataformat.txt").exists():
        (drive / "oxts" / "dataformat.txt").symlink_to(source / "oxts" / "dataformat.txt")
    return root


def bench_units(tmp: Path, kitti_frames: list[int], nuscenes_frames: list[int], waymo_frames: list[int]) -> None:
    from dynamo_depth.synth.nuscenes import write_nuscenes
    from dynamo_depth.synth.waymo import WaymoSynthOptions, write_waymo

    print(_row("unit", "frames", "wall s", "CPU s", "CPU ms / frame", "peak RSS MB", "output MB"))
    print(_row(*["---"] * 7))
    for frames in kitti_frames:
        raw = long_kitti_drive(tmp / f"kitti_{frames}", frames)
        out = tmp / f"kitti_out_{frames}"
        m = measured([sys.executable, "-m", "builders.kitti", str(raw), str(out), "--cameras", "image_02",
                      "--workers", "0", "--quiet"], code=REPO)
        _unit_row("KITTI drive x 1 camera (real frames)", frames, m, out)
    for frames in nuscenes_frames:
        raw = tmp / f"nusc_scene_{frames}"
        write_nuscenes(raw, sequences=1, frames=frames, seed=0)
        out = tmp / f"nusc_scene_out_{frames}"
        m = measured([sys.executable, "-m", "builders.nuscenes", str(raw), str(out), "--split", "all",
                      "--workers", "0", "--quiet"], code=REPO)
        _unit_row("nuScenes scene, CAM_FRONT (synthetic)", frames, m, out)
        shutil.rmtree(raw)
    for frames in waymo_frames:
        raw = tmp / f"waymo_{frames}"
        write_waymo(raw, sequences=1, frames=frames, seed=0,
                    options=WaymoSynthOptions(top_width=2650, short_range_hw=(200, 600)))
        out = tmp / f"waymo_out_{frames}"
        m = measured([sys.executable, "-m", "builders.waymo", str(raw), str(out), "--split", "val",
                      "--workers", "0", "--quiet"], code=REPO)
        _unit_row("Waymo segment, FRONT (synthetic, real-size record)", frames, m, out)
        shutil.rmtree(raw)


def _unit_row(name: str, frames: int, m: dict[str, float], out: Path) -> None:
    size = sum(p.stat().st_size for p in out.glob("*.tar")) / MB
    print(_row(name, frames, f"{m['wall_s']:.1f}", f"{m['cpu_s']:.1f}", f"{1000 * m['cpu_s'] / frames:.0f}",
               f"{m['driver_mb']:.0f}", f"{size:.1f}"), flush=True)
    shutil.rmtree(out)


# ------------------------------------------------------------------------------------------------- pack
def bench_pack(tmp: Path, base: Path, total_mb: int, s3: bool) -> None:
    print(_row("storage", "staged MB, samples", "shards", "pack", "wall s", "CPU s (all processes)", "driver peak MB",
               "largest worker peak MB"))
    print(_row(*["---"] * 8))
    targets = [("local", str(tmp / "pack_out"), {})]
    server = None
    if s3:
        from tests.s3server import BUCKET, SeaweedS3, weed_binary

        server = SeaweedS3(tmp / "seaweed", binary=weed_binary() or "weed")
        server.start()
        targets.append(("S3 (SeaweedFS, 127.0.0.1)", f"s3://{BUCKET}/pack", server.env))
    try:
        for label, url, env in targets:
            samples = (total_mb if label == "local" else max(total_mb // 2, 1)) * MB // (400 * 1024)
            stage = measured([sys.executable, __file__, "--pack-child", "stage", url, str(samples)], code=REPO, env=env)
            for variant, code in (("baseline (one process)", base), ("ours, in-process", REPO),
                                  ("ours, 2 pool processes", REPO), ("ours, 2 Ray tasks", REPO)):
                m = measured([sys.executable, str(REPO / "bench" / "scale_builders.py"), "--pack-child", variant,
                              url, str(samples)], code=code, env=env)
                print(_row(label, stage["output"], m["output"], variant, f"{m['wall_s']:.1f}", f"{m['cpu_s']:.1f}",
                           f"{m['driver_mb']:.0f}", f"{m['worker_mb']:.0f}" if m["workers"] else "-"), flush=True)
    finally:
        if server is not None:
            server.stop()


def _pack_spec():
    import numpy as np

    try:
        from builders.spec import BuilderSpec, Unit
    except ImportError:  # the baseline checkout (before #28): the same classes in the runner
        from builders.runner import BuilderSpec, Unit
    from tests.samples import make_sample

    def units(raw, options):
        return [Unit(name=f"unit{u:03d}", params={"first": 1000 * u}) for u in range(options["units"])]

    def build_unit(raw, unit, options):
        for i in range(unit.params["first"], unit.params["first"] + options["per_unit"]):
            sample = make_sample(i, n_points=20_000, width=640, height=192)
            noise = np.random.default_rng(i).integers(0, 255, 40_000, dtype=np.uint8).tobytes()  # JPEG-sized
            yield type(sample)(**{**sample.__dict__, "images": tuple(img + noise for img in sample.images)})

    return BuilderSpec(name="packbench", dataset="kitti", version="0", list_units=units, build_unit=build_unit)


def pack_child(variant: str, url: str, samples: int) -> None:
    """One pack step (a child process of ``bench_pack``): ``stage`` the units, or pack them with ``variant``."""
    from builders import packing
    from builders.runner import options_digest, run_unit

    try:
        from dynamo_depth.shards import storage
    except ImportError:  # the baseline checkout (before #28's layout)
        from dynamo_depth import storage

    spec, per_unit = _pack_spec(), 20
    options = {"units": max(1, samples // per_unit), "per_unit": per_unit}
    units = spec.list_units("", options)
    if variant == "stage":
        outcomes = [run_unit(spec, "", u, options, url) for u in units]
        print(f"{sum(storage.size(packing.staged_tar(url, u.name)) for u in units) / MB:.0f}",
              sum(o.record.samples for o in outcomes))
        return
    for name in storage.listdir(url):  # a fresh pack each time: no final shard, no pack.json
        storage.remove(storage.join(url, name))
    storage.remove(storage.join(storage.join(url, packing.STAGING), packing.PACK_STATE))
    sidecars = [json.loads(storage.read_bytes(storage.join(storage.join(url, packing.STAGING),
                                                             packing.staging_name(u.name) + ".json"))) for u in units]
    kw = {"split": "train", "digest": options_digest(spec, options), "max_count": 100, "max_bytes": 2**40}
    if variant.startswith("baseline"):  # runs on the baseline checkout (before #28's layout)
        from dynamo_depth.manifest import UnitRecord

        shards = packing._pack(spec, [UnitRecord.from_json(s["unit"]) for s in sidecars], url, **kw)
    else:
        from dynamo_depth.shards.manifest import UnitRecord
        from dynamo_depth.shards.records import SampleSpan

        staged = [packing.StagedUnit(record=UnitRecord.from_json(s["unit"]),
                                     spans=tuple(SampleSpan.from_json(x) for x in s["spans"])) for s in sidecars]
        runner = None
        if "pool" in variant:
            from builders.local_pool import pool_session
            from builders.runner import _pack_runner

            with pool_session(workers=2) as ensure:
                start = time.perf_counter()
                shards = packing._pack(spec, staged, url, runner=_pack_runner(url, ensure=ensure), **kw)
                print(f"{len(shards)} (pack {time.perf_counter() - start:.1f} s, pool start-up included)")
                return
        if "Ray" in variant:
            from builders.ray_setup import ray_session
            from builders.runner import _pack_runner

            with ray_session(workers=2, address=None, quiet=True) as ensure:
                start = time.perf_counter()
                ensure()
                started = time.perf_counter()
                shards = packing._pack(spec, staged, url, runner=_pack_runner(url, ensure=ensure),
                                       **kw)
                print(f"{len(shards)} (ray.init {started - start:.1f} s + pack {time.perf_counter() - started:.1f} s)")
                return
        else:
            shards = packing._pack(spec, staged, url, runner=runner, **kw)
    print(len(shards))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="e01a5e2")
    parser.add_argument("--only", default="tables,units,pack")
    parser.add_argument("--scenes", default="2,600,6002")
    parser.add_argument("--kitti-frames", default="100,400")
    parser.add_argument("--nuscenes-frames", default="60,240")
    parser.add_argument("--waymo-frames", default="10,20")
    parser.add_argument("--pack-mb", type=int, default=240)
    parser.add_argument("--s3", action="store_true")
    parser.add_argument("--waymo-full-frames", default="50,100,200")
    parser.add_argument("--tables-json-child", nargs="+", metavar="ROOT VERSION [KEEP]", help=argparse.SUPPRESS)
    parser.add_argument("--tables-child", nargs="+", metavar="ROOT VERSION [READER]", help=argparse.SUPPRESS)
    parser.add_argument("--waymo-write-child", nargs=2, metavar=("OUT", "FRAMES"), help=argparse.SUPPRESS)
    parser.add_argument("--pack-child", nargs=3, metavar=("VARIANT", "URL", "SAMPLES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pack_child:
        return pack_child(args.pack_child[0], args.pack_child[1], int(args.pack_child[2]))
    if args.tables_json_child:
        return tables_json_child(*args.tables_json_child)
    if args.tables_child:
        return tables_child(*args.tables_child)
    if args.waymo_write_child:
        return waymo_write_child(args.waymo_write_child[0], int(args.waymo_write_child[1]))
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; uptime: "
              f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
        base = baseline_checkout(args.baseline, tmp / "baseline")
        stages = args.only.split(",")
        if "tables" in stages:
            bench_tables(tmp, base, [TRAINVAL if n == "trainval" else int(n) for n in args.scenes.split(",")])
        if "units" in stages:
            bench_units(tmp, *([int(n) for n in text.split(",") if n] for text in
                               (args.kitti_frames, args.nuscenes_frames, args.waymo_frames)))
        if "waymo-full" in stages:
            bench_waymo_full(tmp, [int(n) for n in args.waymo_full_frames.split(",")])
        if "pack" in stages:
            bench_pack(tmp, base, args.pack_mb, args.s3)
        print(f"done; uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
