"""Inflate a nuScenes dataroot's tables to many scenes, records only (no new sensor files).

``inflate_tables(dataroot, version, copies=N)`` appends N copies of every scene's records to the tables:
scene, sample, sample_data, ego_pose, sample_annotation and instance records with new tokens (every token
of a copied record that points at another copied record is remapped), scene names suffixed ``-copyNNNN``;
the copies' sample_data point at the original sensor files. Calibrations, logs, maps and the fixed tables
are shared; panoptic / lidarseg records are not copied (the devkit requires one label file per record), so
the copies have no motion labels. Used to measure what table size costs the builder (``bench/``) and to
pin that a scene task's payload does not grow with the number of other scenes (tests). Deterministic:
the new tokens are sha1 of (token, copy index).

``inflate_to_counts(dataroot, version, counts=TRAINVAL_COUNTS)`` instead adds records-only synthetic scenes
of a realistic structure (12 channels with sweeps, ~40 samples, ~1,370 annotations per scene at trainval's
counts) until the tables hold exactly the given numbers of scenes, samples, sample_data / ego_pose,
annotations and instances: the table cost at v1.0-trainval's size.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = ["COPIED_TABLES", "TRAINVAL_COUNTS", "TableCounts", "inflate_tables", "inflate_to_counts"]

COPIED_TABLES = ("scene", "sample", "sample_data", "ego_pose", "sample_annotation", "instance")


def _copy_token(token: str, copy: int) -> str:
    return hashlib.sha1(f"{token}/copy{copy}".encode()).hexdigest()[:32]


def _remapped(value: Any, tokens: dict[str, str]) -> Any:
    if isinstance(value, str):
        return tokens.get(value, value)
    if isinstance(value, list):
        return [_remapped(v, tokens) for v in value]
    return value


def inflate_tables(dataroot: str | Path, version: str, *, copies: int) -> dict[str, int]:
    """Append ``copies`` copies of every scene's records to ``dataroot/version/*.json``; return record counts."""
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}")
    folder = Path(dataroot) / version
    tables = {name: json.loads((folder / f"{name}.json").read_text()) for name in COPIED_TABLES}
    originals = {name: list(records) for name, records in tables.items()}
    own = {r["token"] for records in originals.values() for r in records}
    for copy in range(1, copies + 1):
        tokens = {token: _copy_token(token, copy) for token in own}
        for name, records in originals.items():
            for record in records:
                clone = {key: _remapped(value, tokens) for key, value in record.items()}
                if name == "scene":
                    clone["name"] = f"{record['name']}-copy{copy:04d}"
                tables[name].append(clone)
    for name, records in tables.items():
        path = folder / f"{name}.json"
        if path.is_symlink():
            path.unlink()  # a linked copy of a dataroot: never write through to the original
        path.write_text(json.dumps(records, sort_keys=True, separators=(",", ":")) + "\n")
    return {name: len(records) for name, records in tables.items()}


# ------------------------------------------------------------------------ synthetic scenes to given counts
@dataclass(frozen=True)
class TableCounts:
    """Record counts of a nuScenes version's tables (what ``inflate_to_counts`` makes the tables hold)."""

    scenes: int
    samples: int
    sample_data: int
    sample_annotations: int
    instances: int


TRAINVAL_COUNTS = TableCounts(scenes=850, samples=34_149, sample_data=2_631_083, sample_annotations=1_166_187,
                              instances=64_386)  # v1.0-trainval, as the devkit's load message counts them
# (channel, modality, Hz): the real rig's 12 sensors; a channel's share of a scene's sample_data is its rate's
SYNTH_CHANNELS = (
    *((c, "camera", 12.0) for c in ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT",
                                    "CAM_FRONT_LEFT")),
    ("LIDAR_TOP", "lidar", 20.0),
    *((c, "radar", 13.0) for c in ("RADAR_FRONT", "RADAR_FRONT_LEFT", "RADAR_FRONT_RIGHT", "RADAR_BACK_LEFT",
                                   "RADAR_BACK_RIGHT")),
)
_LIDAR = [c for c, _, _ in SYNTH_CHANNELS].index("LIDAR_TOP")
_SAMPLE_PERIOD_US = 500_000  # keyframes at 2 Hz
_SCENE_GAP_US = 100_000_000


def _share(total: int, parts: int, index: int) -> int:
    """Part ``index`` of ``total`` split into ``parts`` near-equal integers (the first ones take the remainder)."""
    return total // parts + (1 if index < total % parts else 0)


def _token(*key: object) -> str:
    return hashlib.sha1("/".join(str(k) for k in key).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Scene:
    """Sizes of synthetic scene ``index``: samples, sample_data per channel, annotations, instances."""

    index: int
    samples: int
    per_channel: tuple[int, ...]
    annotations: int
    instances: int

    def time_us(self, base_us: int, channel: int, j: int) -> int:
        """Timestamp of record ``j`` of ``channel``: evenly spaced over the scene, keyframes on the samples."""
        span = (self.samples - 1) * _SAMPLE_PERIOD_US
        return base_us + self.index * _SCENE_GAP_US + (j * span // (self.per_channel[channel] - 1) if span else j)

    def keyframe(self, channel: int, sample: int) -> int:
        """Index in ``channel``'s chain of the keyframe of ``sample``."""
        return round(sample * (self.per_channel[channel] - 1) / max(self.samples - 1, 1))

    def sample_of(self, channel: int, j: int) -> int:
        """The sample (nearest keyframe) that record ``j`` of ``channel`` belongs to."""
        return round(j * (self.samples - 1) / max(self.per_channel[channel] - 1, 1))


def _scenes(extra: TableCounts) -> list[_Scene]:
    weights = [rate for _, _, rate in SYNTH_CHANNELS]
    scenes = []
    for s in range(extra.scenes):
        data = _share(extra.sample_data, extra.scenes, s)
        per_channel = [int(data * w // sum(weights)) for w in weights]
        per_channel[0] += data - sum(per_channel)
        samples = _share(extra.samples, extra.scenes, s)
        annotations = _share(extra.sample_annotations, extra.scenes, s)
        instances = max(_share(extra.instances, extra.scenes, s), -(-annotations // samples))
        if samples < 1 or min(per_channel) < samples:
            raise ValueError(f"inflate_to_counts: scene {s} would get {samples} samples and {min(per_channel)} "
                             f"records of a channel (needs >= 1 sample and >= one record per sample per channel)")
        scenes.append(_Scene(s, samples, tuple(per_channel), annotations, instances))
    return scenes


@dataclass(frozen=True)
class _Source:
    """What the synthetic scenes borrow from the dataroot's own records (logs, categories, calibrations)."""

    base_us: int
    logs: tuple[dict, ...]
    categories: tuple[str, ...]
    annotation: dict
    sensors: dict[str, str]  # channel -> sensor token
    calibration: dict[str, dict]  # modality -> a calibrated_sensor record to copy


def _source(tables: dict[str, list[dict]]) -> _Source:
    channel_of = {r["token"]: r["channel"] for r in tables["sensor"]}
    calibration = {}
    for record in tables["calibrated_sensor"]:
        modality = "camera" if channel_of[record["sensor_token"]].startswith("CAM") else "lidar"
        calibration.setdefault(modality, record)
    calibration["radar"] = {**calibration["lidar"], "camera_intrinsic": []}
    sensors = {channel: _token("sensor", channel) for channel, _, _ in SYNTH_CHANNELS}
    sensors.update({r["channel"]: r["token"] for r in tables["sensor"]})
    return _Source(base_us=max(r["timestamp"] for r in tables["sample_data"]) + _SCENE_GAP_US,
                   logs=tuple(tables["log"]), categories=tuple(sorted({r["category_token"] for r in tables["instance"]})),
                   annotation=tables["sample_annotation"][0], sensors=sensors, calibration=calibration)


def _chain(tokens: list[str]) -> list[tuple[str, str]]:
    return [(tokens[i - 1] if i else "", tokens[i + 1] if i + 1 < len(tokens) else "") for i in range(len(tokens))]


def _scene_records(scene: _Scene, src: _Source) -> dict[str, list[dict]]:
    """All records of one synthetic scene, table name -> records."""
    s, log = scene.index, src.logs[scene.index % len(src.logs)]
    samples = [_token("sample", s, k) for k in range(scene.samples)]
    out: dict[str, list[dict]] = {name: [] for name in (*COPIED_TABLES, "calibrated_sensor")}
    out["scene"].append({"token": _token("scene", s), "log_token": log["token"], "nbr_samples": scene.samples,
                         "first_sample_token": samples[0], "last_sample_token": samples[-1],
                         "name": f"synth-{s:04d}", "description": "records-only synthetic scene"})
    for k, (prev, nxt) in enumerate(_chain(samples)):
        lidar_us = scene.time_us(src.base_us, _LIDAR, scene.keyframe(_LIDAR, k))  # as real: the LIDAR_TOP sweep's
        out["sample"].append({"token": samples[k], "timestamp": lidar_us,
                              "prev": prev, "next": nxt, "scene_token": _token("scene", s)})
    for c, (channel, modality, _) in enumerate(SYNTH_CHANNELS):
        calibration = _token("cs", s, c)
        out["calibrated_sensor"].append({**src.calibration[modality], "token": calibration,
                                         "sensor_token": src.sensors[channel]})
        keyframes = {scene.keyframe(c, k) for k in range(scene.samples)}
        tokens = [_token("sd", s, c, j) for j in range(scene.per_channel[c])]
        ext = {"camera": ("jpg", "jpg"), "lidar": ("pcd", "pcd.bin"), "radar": ("pcd", "pcd")}[modality]
        for j, (prev, nxt) in enumerate(_chain(tokens)):
            t_us, key = scene.time_us(src.base_us, c, j), j in keyframes
            out["sample_data"].append({
                "token": tokens[j], "sample_token": samples[scene.sample_of(c, j)], "ego_pose_token": _token("ego", s, c, j),
                "calibrated_sensor_token": calibration, "timestamp": t_us, "fileformat": ext[0], "is_key_frame": key,
                "height": 900 if modality == "camera" else 0, "width": 1600 if modality == "camera" else 0,
                "filename": f"{'samples' if key else 'sweeps'}/{channel}/{log['logfile']}__{channel}__{t_us}.{ext[1]}",
                "prev": prev, "next": nxt})
            out["ego_pose"].append({"token": _token("ego", s, c, j), "timestamp": t_us, "rotation": [1.0, 0.0, 0.0, 0.0],
                                    "translation": [float(s), 0.01 * j, 0.0]})
    for i in range(scene.instances):
        count = _share(scene.annotations, scene.instances, i)
        first = i * (scene.samples - count) // max(scene.instances - 1, 1)
        tokens = [_token("ann", s, i, n) for n in range(count)]
        out["instance"].append({"token": _token("inst", s, i), "category_token": src.categories[i % len(src.categories)],
                                "nbr_annotations": count, "first_annotation_token": tokens[0] if tokens else "",
                                "last_annotation_token": tokens[-1] if tokens else ""})
        for n, (prev, nxt) in enumerate(_chain(tokens)):
            out["sample_annotation"].append({**src.annotation, "token": tokens[n], "sample_token": samples[first + n],
                                             "instance_token": _token("inst", s, i), "prev": prev, "next": nxt,
                                             "translation": [float(s), float(i), 0.5 * n]})
    return out


def inflate_to_counts(dataroot: str | Path, version: str, *, counts: TableCounts) -> dict[str, int]:
    """Add records-only synthetic scenes until the tables hold ``counts`` records; return the record counts.

    The dataroot's own scenes stay as they are (first in every table); the rest of ``counts`` is spread evenly
    over ``counts.scenes - own`` new scenes, each a realistic scene: a ``next`` chain of samples at 2 Hz, the
    12 channels of ``SYNTH_CHANNELS`` with their own calibrated_sensor and a share of the scene's sample_data
    (and ego_pose) proportional to their rate, one keyframe per sample per channel (sweeps point to the
    nearest sample), instances of consecutive annotations. Sensor files are not written (the new scenes are
    for table cost only). Tables are written as a stream of records, never built whole in memory.
    Deterministic: tokens are sha1 of (table, scene, index).
    """
    folder = Path(dataroot) / version
    tables = {name: json.loads((folder / f"{name}.json").read_text())
              for name in (*COPIED_TABLES, "calibrated_sensor", "sensor", "log")}
    own = TableCounts(len(tables["scene"]), len(tables["sample"]), len(tables["sample_data"]),
                      len(tables["sample_annotation"]), len(tables["instance"]))
    extra = TableCounts(*(getattr(counts, f) - getattr(own, f) for f in TableCounts.__dataclass_fields__))
    if extra.scenes < 1 or min(vars(extra).values()) < 0:
        raise ValueError(f"inflate_to_counts: {counts} must exceed the dataroot's own {own} (more scenes)")
    src, scenes = _source(tables), _scenes(extra)
    tables["sensor"] += [{"token": src.sensors[c], "channel": c, "modality": m} for c, m, _ in SYNTH_CHANNELS
                         if src.sensors[c] not in {r["token"] for r in tables["sensor"]}]
    names = (*COPIED_TABLES, "calibrated_sensor", "sensor")
    handles = {name: _open_table(folder / f"{name}.json") for name in names}
    written = dict.fromkeys(names, 0)
    try:
        for name in names:
            written[name] = _append(handles[name], tables[name], written[name])
        for scene in scenes:
            for name, records in _scene_records(scene, src).items():
                written[name] = _append(handles[name], records, written[name])
        for handle in handles.values():
            handle.write("]\n")
    finally:
        for handle in handles.values():
            handle.close()
    return written


def _open_table(path: Path) -> TextIO:
    """``path`` opened to stream a table (``json.dumps(list, sort_keys=True, separators=(",", ":"))`` + newline)."""
    if path.is_symlink():
        path.unlink()  # a linked copy of a dataroot: never write through to the original
    handle = open(path, "w")  # noqa: SIM115 (closed by the caller)
    handle.write("[")
    return handle


def _append(handle: TextIO, records: list[dict], count: int) -> int:
    """Append ``records`` to a table stream that already holds ``count``; returns the new count."""
    for record in records:
        handle.write(("," if count else "") + json.dumps(record, sort_keys=True, separators=(",", ":")))
        count += 1
    return count
