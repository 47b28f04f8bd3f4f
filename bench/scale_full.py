"""Full-size units of ``bench/scale_builders.py`` (#27): a 200-frame five-camera Waymo record, nuScenes tables at
v1.0-trainval's record counts. The child processes run as ``bench/scale_builders.py --<name>-child``."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scale_measure import MB, REPO, measured, row

CHILD = REPO / "bench" / "scale_builders.py"


# ------------------------------------------------------------------------------------ nuScenes trainval
def trainval_tables(root: Path, version: str) -> tuple[dict[str, int], float]:
    """Fill the tables to v1.0-trainval's counts; print the time it took and what the devkit's load alone costs."""
    from dynamo_depth.synth.nuscenes_inflate import TRAINVAL_COUNTS, inflate_to_counts

    start = time.perf_counter()
    counts = inflate_to_counts(root, version, counts=TRAINVAL_COUNTS)
    print(f"inflate_to_counts: {time.perf_counter() - start:.0f} s, {counts}", flush=True)
    outputs = {}
    for reader, what in (("devkit", "the devkit's NuScenes(...)"), ("index", "builders.nuscenes_index (the default)")):
        m = measured([sys.executable, str(CHILD), "--tables-child", str(root), version, reader], code=REPO)
        outputs[reader] = json.loads(m["output"].strip().splitlines()[-1])
        print(f"driver tables with {what} + every scene's payload (one child process): {m['output'].strip()}; "
              f"wall {m['wall_s']:.0f} s, CPU {m['cpu_s']:.0f} s, peak RSS {m['driver_mb']:.0f} MB", flush=True)
    same = outputs["devkit"]["payloads_sha256"] == outputs["index"]["payloads_sha256"]
    print(f"every scene's pickled payload identical on both paths: {same}", flush=True)
    payloads = json.dumps(outputs["index"])
    return counts, json.loads(payloads)["real_scene_payload_kb"]


def _stream_records(path: Path, chunk: int = 1 << 24) -> Iterator[dict]:
    """The records of a JSON table (a list of objects) one by one, reading ``chunk`` characters at a time."""
    decoder = json.JSONDecoder()
    with open(path) as handle:
        buffer = handle.read(chunk)
        pos = buffer.index("[") + 1
        while True:
            while pos < len(buffer) and buffer[pos] in ", \n\r\t":
                pos += 1
            if pos < len(buffer) and buffer[pos] == "]":
                return
            try:
                if pos >= len(buffer):
                    raise json.JSONDecodeError("end of buffer", buffer, pos)
                record, pos = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError:
                more = handle.read(chunk)
                if not more:
                    raise
                buffer, pos = buffer[pos:] + more, 0
                continue
            yield record


def tables_json_child(root: str, version: str, keep: str = "all") -> None:
    """The floor of any path that holds the tables as dicts: ``json.load`` of every table and a token -> record dict;
    ``keep="two-channels"``: only the sample_data of the two channels the builder reads, and their ego_pose;
    ``"two-channels-streamed"``: the same, those two tables parsed record by record (never whole)."""
    start = time.perf_counter()
    tables: dict[str, Any] = {}
    order = sorted((Path(root) / version).glob("*.json"),  # sensors, then sample_data, then ego_pose
                   key=lambda p: (p.stem == "ego_pose", p.stem == "sample_data", p.stem))
    for path in order:
        streamed = keep == "two-channels-streamed" and path.stem in ("sample_data", "ego_pose")
        records = _stream_records(path) if streamed else json.loads(path.read_text())
        if keep.startswith("two-channels") and path.stem == "sample_data":
            sensors = {t for t, r in tables["sensor"].items() if r["channel"] in ("CAM_FRONT", "LIDAR_TOP")}
            calibrations = {t for t, r in tables["calibrated_sensor"].items() if r["sensor_token"] in sensors}
            records = [r for r in records if r["calibrated_sensor_token"] in calibrations]
        if keep.startswith("two-channels") and path.stem == "ego_pose":
            poses = {r["ego_pose_token"] for r in tables["sample_data"].values()}
            records = [r for r in records if r["token"] in poses]
        tables[path.stem] = {r["token"]: r for r in records} if records and "token" in records[0] else records
    print(f"{len(tables)} tables in {time.perf_counter() - start:.0f} s ({len(tables['sample_data'])} sample_data, "
          f"{len(tables['ego_pose'])} ego_pose kept)")


def tables_child(root: str, version: str, reader: str = "devkit") -> None:
    """The driver's table load (``reader``: ``devkit``, the devkit's ``NuScenes``, or ``index``, the default
    ``builders.nuscenes_index``), then every scene's payload: the sha256 of all of them pickled, in unit order,
    and the pickled unit size of the first synthetic scene and of the real ones."""
    import hashlib
    import pickle

    from builders import nuscenes as nb
    from builders.nuscenes_tables import scene_payload

    if reader not in ("devkit", "index"):
        raise ValueError(f"reader {reader!r}: allowed devkit, index")
    start = time.perf_counter()
    tables = (nb.load_nuscenes if reader == "devkit" else nb.load_tables)(dataroot=root, version=version)
    load_s = time.perf_counter() - start
    digest, kb = hashlib.sha256(), {}
    for scene in sorted(tables.scene, key=lambda s: s["name"]):
        payload = scene_payload(tables, scene["token"], channels=(nb.CAMERA, nb.LIDAR))
        data = pickle.dumps(payload)
        digest.update(data)
        if scene["name"] in ("scene-0001", "scene-0002", "synth-0000"):
            kb[scene["name"]] = round(len(data) / 1024, 1)
    print(json.dumps({"reader": reader, "load_s": round(load_s, 1), "all_s": round(time.perf_counter() - start, 1),
                      "payloads_sha256": digest.hexdigest(), "real_scene_payload_kb": max(kb["scene-0001"],
                      kb["scene-0002"]), "synth_0000_payload_kb": kb.get("synth-0000")}))


def waymo_write_child(out: str, frames: int) -> None:
    """Write one full-size synthetic segment of ``frames`` frames under ``out`` (a child of ``bench_waymo_full``)."""
    from dynamo_depth.synth.waymo import WaymoSynthOptions, write_waymo

    write_waymo(out, sequences=1, frames=frames, seed=0, options=WaymoSynthOptions.full_size())


def record_prefix(source: Path, target: Path, records: int) -> None:
    """Copy the first ``records`` TFRecord records of ``source`` to ``target`` (headers read, bytes copied)."""
    import struct

    with open(source, "rb") as src, open(target, "wb") as dst:
        for _ in range(records):
            header = src.read(12)
            (length,) = struct.unpack("<Q", header[:8])
            dst.write(header + src.read(length + 4))


def bench_waymo_full(tmp: Path, frame_counts: list[int]) -> None:
    largest = max(frame_counts)
    raw = tmp / f"waymo_full_{largest}"
    m = measured([sys.executable, str(CHILD), "--waymo-write-child", str(raw),
                  str(largest)], code=REPO)
    record = next((raw / "val").glob("*.tfrecord"))
    print(f"writer: {largest} frames, {record.stat().st_size / MB:.0f} MB record "
          f"({record.stat().st_size / MB / largest:.2f} MB / frame), wall {m['wall_s']:.0f} s, CPU {m['cpu_s']:.0f} s "
          f"({1000 * m['cpu_s'] / largest:.0f} ms / frame), peak RSS {m['driver_mb']:.0f} MB", flush=True)
    print(row("frames", "record MB", "cameras", "wall s", "CPU s", "CPU ms / frame", "peak RSS MB", "output MB"))
    print(row(*["---"] * 8))
    try:
        for frames in sorted(frame_counts):
            root = raw if frames == largest else tmp / f"waymo_full_{frames}"
            if frames != largest:
                (root / "val").mkdir(parents=True)
                record_prefix(record, root / "val" / record.name, frames)
            size = (root / "val" / record.name).stat().st_size / MB
            for cameras in (["FRONT"], ["FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT"]):
                if len(cameras) > 1 and frames != largest:
                    continue
                out = tmp / f"waymo_full_out_{frames}"
                m = measured([sys.executable, "-m", "builders.waymo", str(root), str(out), "--split", "val",
                              "--cameras", *cameras, "--workers", "0", "--quiet"], code=REPO)
                output = sum(p.stat().st_size for p in out.glob("*.tar")) / MB
                print(row(frames, f"{size:.0f}", len(cameras), f"{m['wall_s']:.1f}", f"{m['cpu_s']:.1f}",
                           f"{1000 * m['cpu_s'] / frames / len(cameras):.0f}", f"{m['driver_mb']:.0f}",
                           f"{output:.1f}"), flush=True)
                shutil.rmtree(out)
            if frames != largest:
                shutil.rmtree(root)
    finally:
        shutil.rmtree(raw, ignore_errors=True)
