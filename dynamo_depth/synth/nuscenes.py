"""Write a small synthetic nuScenes dataroot (tables + files) that nuscenes-devkit 1.2.0 loads.

Layout written under ``out_dir``::

    <version>/{category,attribute,visibility,instance,sensor,calibrated_sensor,ego_pose,log,scene,
               sample,sample_data,sample_annotation,map}.json
    maps/<token>.png                                   tiny semantic-prior mask (stub)
    samples/CAM_FRONT/<log>__CAM_FRONT__<us>.jpg       keyframe images, 1600x900 JPEG
    sweeps/CAM_FRONT/<log>__CAM_FRONT__<us>.jpg        the other camera frames (~12 Hz in all)
    samples/LIDAR_TOP/<log>__LIDAR_TOP__<us>.pcd.bin   keyframe sweeps
    sweeps/LIDAR_TOP/<log>__LIDAR_TOP__<us>.pcd.bin    the other sweeps (20 Hz in all)
    <version>/panoptic.json, panoptic/<version>/<lidar token>_panoptic.npz   keyframe panoptic labels

Scene ``i`` (``scene-{i+1:04d}``) is rendered from ``make_world(scene_world_seed(seed, i))``. World
time ``t_s`` (seconds) is ``(timestamp_us - scene_start_us) * 1e-6``, where the scene starts at its
first LiDAR sweep. nuScenes "global" = ``GLOBAL_FROM_WORLD @ world``: a fixed yaw and offset, so the
coordinates look like real ones while the transform stays known. Keyframes (samples) are at 2 Hz:
every 10th LiDAR sweep and every 6th camera frame; a sample's timestamp is its LiDAR sweep's, and
the camera keyframe comes a few ms later (sensors are not synchronous, as in nuScenes).

LiDAR files hold float32 (x, y, z, intensity, ring) per point in the LIDAR_TOP frame (x right,
y forward, z up, metres), 32 beams from -30.67 to +10.67 deg, returns up to 70 m. Every ray of a
sweep is cast at the sweep's timestamp (no rolling-shutter motion inside a sweep).
Panoptic labels of the keyframe sweeps: ``dynamo_depth.synth.nuscenes_panoptic``.
Tokens are md5 hex digests of names and the seed: the same arguments give byte-identical files. Products
and norms are ``dynamo_depth.synth.fused`` (no BLAS), so the bytes do not depend on the CPU's BLAS kernels.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dynamo_depth.synth import world as world_module
from dynamo_depth.synth.fused import matmul_fused
from dynamo_depth.synth.nuscenes_panoptic import write_panoptic
from dynamo_depth.synth.nuscenes_rig import (
    ATTRIBUTE_NAMES,
    CAM_FRONT_INTRINSIC,
    CAM_FRONT_ROTATION,
    CAMERA_FRAMES_PER_SAMPLE,
    CAMERA_PERIOD_US,
    CATEGORY_NAMES,
    EGO_FROM_CAMERA,
    EGO_FROM_LIDAR,
    FIRST_SCENE_START_US,
    GLOBAL_FROM_WORLD,
    IMAGE_HW,
    JPEG_QUALITY,
    LIDAR_AZIMUTH_COUNT,
    LIDAR_ELEVATIONS_DEG,
    LIDAR_MAX_RANGE_M,
    LIDAR_PERIOD_US,
    LIDAR_SWEEPS_PER_SAMPLE,
    LIDAR_TOP_ROTATION,
    SCENE_SPACING_US,
    VISIBILITY_LEVELS,
    _quaternion_from_rotation,
)

_VERSION_RE = re.compile(r"^v1\.0-[a-z]+$")


def scene_world_seed(seed: int, scene_index: int) -> int:
    """Seed of ``make_world`` for scene ``scene_index`` (0-based) of a dataset written with ``seed``."""
    return seed * 1000 + scene_index


@dataclass(frozen=True)
class NuScenesSynth:
    """What ``write_nuscenes`` wrote: enough to rebuild each scene's world and clock."""

    dataroot: Path
    version: str
    scene_names: tuple[str, ...]
    world_seeds: tuple[int, ...]  # make_world seed per scene
    scene_start_us: tuple[int, ...]  # world t_s = (timestamp_us - scene_start_us) * 1e-6


@dataclass(frozen=True)
class _SceneTiming:
    """Integer microsecond timestamps of one scene; keyframe flags; sample (LiDAR keyframe) times."""

    camera_us: tuple[int, ...]
    camera_key: tuple[bool, ...]
    lidar_us: tuple[int, ...]
    lidar_key: tuple[bool, ...]


def _scene_timing(*, seed: int, scene_index: int, frames: int) -> _SceneTiming:
    """Camera at 12 Hz, LiDAR at 20 Hz, both with a few hundred us of jitter; keyframes at 2 Hz."""
    rng = np.random.default_rng([seed, scene_index, 7])
    start = FIRST_SCENE_START_US + scene_index * SCENE_SPACING_US
    camera_lag = int(rng.integers(4_000, 20_000))
    camera_us = [start + camera_lag + round(i * CAMERA_PERIOD_US) + int(rng.integers(-300, 301))
                 for i in range(frames)]
    samples = -(-frames // CAMERA_FRAMES_PER_SAMPLE)
    sweeps = max((samples - 1) * LIDAR_SWEEPS_PER_SAMPLE + 1,
                 (camera_us[-1] - start) // LIDAR_PERIOD_US + 2)
    lidar_us = [start] + [start + j * LIDAR_PERIOD_US + int(rng.integers(-300, 301)) for j in range(1, sweeps)]
    lidar_key = [j % LIDAR_SWEEPS_PER_SAMPLE == 0 and j // LIDAR_SWEEPS_PER_SAMPLE < samples
                 for j in range(sweeps)]
    return _SceneTiming(camera_us=tuple(camera_us),
                        camera_key=tuple(i % CAMERA_FRAMES_PER_SAMPLE == 0 for i in range(frames)),
                        lidar_us=tuple(lidar_us), lidar_key=tuple(lidar_key))


def _token(seed: int, *parts: object) -> str:
    return hashlib.md5("/".join(["dynamo-depth-synth", str(seed), *map(str, parts)]).encode()).hexdigest()


def _link(records: list[dict]) -> list[dict]:
    """Fill ``prev``/``next`` of records in order ('' at the ends)."""
    for i, record in enumerate(records):
        record["prev"] = records[i - 1]["token"] if i > 0 else ""
        record["next"] = records[i + 1]["token"] if i + 1 < len(records) else ""
    return records


def lidar_directions() -> tuple[np.ndarray, np.ndarray]:
    """Unit LIDAR_TOP ray directions (N, 3) (x right, y forward, z up) and ring index (N,), beam-minor."""
    azimuth = np.arange(LIDAR_AZIMUTH_COUNT) * (2.0 * math.pi / LIDAR_AZIMUTH_COUNT)
    azimuth_grid, elevation_grid = np.meshgrid(azimuth, np.radians(LIDAR_ELEVATIONS_DEG), indexing="ij")
    cos_el = np.cos(elevation_grid)
    directions = np.stack([cos_el * np.cos(azimuth_grid), cos_el * np.sin(azimuth_grid),
                           np.sin(elevation_grid)], axis=-1).reshape(-1, 3)
    ring = np.tile(np.arange(len(LIDAR_ELEVATIONS_DEG)), LIDAR_AZIMUTH_COUNT)
    return directions, ring


def _cast_sweep(world: world_module.World, *, world_from_lidar: np.ndarray, t_s: float) -> tuple[np.ndarray, np.ndarray]:
    """One sweep: float32 (M, 5) points [x, y, z, intensity, ring] in the LiDAR frame, surface ids (M,)."""
    directions, ring = lidar_directions()
    world_directions = world_module.rotate(world_from_lidar[:3, :3], directions)
    origins = np.broadcast_to(world_from_lidar[:3, 3], world_directions.shape)
    hits = world.ray_cast(origins, world_directions, t_s)
    keep = np.isfinite(hits.distance) & (hits.distance <= LIDAR_MAX_RANGE_M)
    distance, surface = hits.distance[keep], hits.surface[keep].astype(np.int32)
    intensity = np.rint(255.0 * world.reflectance(hits, t_s)[keep].astype(np.float64))
    points = np.concatenate([directions[keep] * distance[:, None], intensity[:, None],
                             ring[keep, None].astype(np.float64)], axis=1)
    return points.astype(np.float32), surface


def _render_jpeg(world: world_module.World, *, world_from_camera: np.ndarray, t_s: float) -> bytes:
    image, _ = world.render(K=np.array(CAM_FRONT_INTRINSIC), world_from_camera=world_from_camera,
                            hw=IMAGE_HW, t_s=t_s)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _pose_record(token: str, global_from_source: np.ndarray, timestamp: int) -> dict:
    return {"token": token, "timestamp": timestamp, "translation": [float(v) for v in global_from_source[:3, 3]],
            "rotation": _quaternion_from_rotation(global_from_source[:3, :3])}


def _static_tables(seed: int, box_categories: set[str]) -> dict[str, list[dict]]:
    """category (with lidarseg indices; unknown world categories appended), attribute, visibility, sensor."""
    names = list(CATEGORY_NAMES) + sorted(box_categories - set(CATEGORY_NAMES))
    return {
        "category": [{"token": _token(seed, "category", n), "name": n, "description": f"synthetic {n}",
                      "index": i} for i, n in enumerate(names)],
        "attribute": [{"token": _token(seed, "attribute", n), "name": n, "description": f"synthetic {n}"}
                      for n in ATTRIBUTE_NAMES],
        "visibility": [{"token": t, "level": level, "description": f"visibility of the box is {level[1:]} %"}
                       for t, level in VISIBILITY_LEVELS],
        "sensor": [{"token": _token(seed, "sensor", ch), "channel": ch, "modality": mod}
                   for ch, mod in (("CAM_FRONT", "camera"), ("LIDAR_TOP", "lidar"))],
    }


def _attribute_name(box: world_module.Box, box_index: int) -> str:
    """nuScenes attribute of a box: moving if it has a velocity, else parked/stopped (alternating)."""
    if box.category.startswith("human.pedestrian"):
        return "pedestrian.moving" if box.is_moving else "pedestrian.standing"
    if box.category in ("vehicle.bicycle", "vehicle.motorcycle"):
        return "cycle.with_rider" if box.is_moving else "cycle.without_rider"
    if box.is_moving:
        return "vehicle.moving"
    return "vehicle.parked" if box_index % 2 == 0 else "vehicle.stopped"


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _sample_data_chain(*, seed: int, scene_index: int, channel: str, timestamps, keys, sample_tokens,
                       calibrated_sensor_token: str, logfile: str, extension: str, hw: tuple[int, int]) -> list[dict]:
    """Linked sample_data records of one channel; a sweep belongs to the next sample (the last one at the end)."""
    records, keys_before = [], 0
    for i, (timestamp, is_key) in enumerate(zip(timestamps, keys, strict=True)):
        folder = "samples" if is_key else "sweeps"
        token = _token(seed, "sample_data", scene_index, channel, i)
        records.append({
            "token": token, "sample_token": sample_tokens[min(keys_before, len(sample_tokens) - 1)],
            "ego_pose_token": token, "calibrated_sensor_token": calibrated_sensor_token,
            "timestamp": int(timestamp), "fileformat": extension.split(".")[0], "is_key_frame": bool(is_key),
            "height": hw[0], "width": hw[1],
            "filename": f"{folder}/{channel}/{logfile}__{channel}__{timestamp}.{extension}"})
        keys_before += int(is_key)
    return _link(records)


def _annotation_records(*, seed: int, scene_index: int, world: world_module.World,
                        samples: list[dict], key_surfaces: list[np.ndarray],
                        start_us: int) -> tuple[list[dict], list[dict]]:
    """(instance records, sample_annotation records): every box at every sample, boxes in global."""
    instances, annotations = [], []
    for b, box in enumerate(world.boxes):
        chain = []
        for sample, surface in zip(samples, key_surfaces, strict=True):
            t_s = (sample["timestamp"] - start_us) * 1e-6
            global_from_box = matmul_fused(GLOBAL_FROM_WORLD, box.world_from_box(t_s))
            lidar_points = int(np.count_nonzero(surface == b + 1))
            chain.append({
                "token": _token(seed, "sample_annotation", scene_index, b, sample["token"]),
                "sample_token": sample["token"], "instance_token": _token(seed, "instance", scene_index, b),
                "attribute_tokens": [_token(seed, "attribute", _attribute_name(box, b))],
                "visibility_token": "4" if lidar_points > 0 else "1",
                "translation": [float(v) for v in global_from_box[:3, 3]],
                "size": [float(box.size[1]), float(box.size[0]), float(box.size[2])],  # nuScenes: w, l, h
                "rotation": _quaternion_from_rotation(global_from_box[:3, :3]),
                "num_lidar_pts": lidar_points, "num_radar_pts": 0})
        annotations += _link(chain)
        instances.append({"token": _token(seed, "instance", scene_index, b),
                          "category_token": _token(seed, "category", box.category), "nbr_annotations": len(chain),
                          "first_annotation_token": chain[0]["token"], "last_annotation_token": chain[-1]["token"]})
    return instances, annotations


def _write_sensor_files(root: Path, *, world: world_module.World, records: list[dict], start_us: int, channel: str,
                        ego_from_sensor: np.ndarray) -> tuple[list[dict], list[np.ndarray]]:
    """Render/cast each sample_data file; return ego_pose records and keyframe LiDAR surface ids."""
    poses, key_surfaces = [], []
    for record in records:
        t_s = (record["timestamp"] - start_us) * 1e-6
        world_from_ego = world.world_from_ego(t_s)
        global_from_ego = matmul_fused(GLOBAL_FROM_WORLD, world_from_ego)
        poses.append(_pose_record(record["token"], global_from_ego, record["timestamp"]))
        world_from_sensor = matmul_fused(world_from_ego, ego_from_sensor)
        if channel == "CAM_FRONT":
            data = _render_jpeg(world, world_from_camera=world_from_sensor, t_s=t_s)
        else:
            points, surface = _cast_sweep(world, world_from_lidar=world_from_sensor, t_s=t_s)
            data = points.tobytes()
            if record["is_key_frame"]:
                key_surfaces.append(surface)
        _write_bytes(root / record["filename"], data)
    return poses, key_surfaces


def _write_scene(root: Path, tables: dict[str, list[dict]], *, seed: int, scene_index: int, frames: int) -> int:
    """Write one scene's files and append its records to ``tables``; returns the scene start (us)."""
    timing = _scene_timing(seed=seed, scene_index=scene_index, frames=frames)
    world = world_module.make_world(scene_world_seed(seed, scene_index))
    start_us = timing.lidar_us[0]
    logfile = f"n900-2018-07-18-11-{scene_index // 60:02d}-{scene_index % 60:02d}+0800"
    log_token, scene_token = _token(seed, "log", scene_index), _token(seed, "scene", scene_index)
    samples = _link([{"token": _token(seed, "sample", scene_index, k), "timestamp": int(t), "scene_token": scene_token}
                     for k, t in enumerate(t for t, key in zip(timing.lidar_us, timing.lidar_key, strict=True) if key)])
    sample_tokens = [s["token"] for s in samples]
    channels = (("CAM_FRONT", timing.camera_us, timing.camera_key, "jpg", IMAGE_HW, EGO_FROM_CAMERA),
                ("LIDAR_TOP", timing.lidar_us, timing.lidar_key, "pcd.bin", (0, 0), EGO_FROM_LIDAR))
    for channel, stamps, keys, extension, hw, ego_from_sensor in channels:
        cs_token = _token(seed, "calibrated_sensor", scene_index, channel)
        tables["calibrated_sensor"].append({
            "token": cs_token, "sensor_token": _token(seed, "sensor", channel),
            "translation": [float(v) for v in ego_from_sensor[:3, 3]],
            "rotation": list(CAM_FRONT_ROTATION if channel == "CAM_FRONT" else LIDAR_TOP_ROTATION),
            "camera_intrinsic": [list(row) for row in CAM_FRONT_INTRINSIC] if channel == "CAM_FRONT" else []})
        records = _sample_data_chain(seed=seed, scene_index=scene_index, channel=channel, timestamps=stamps,
                                     keys=keys, sample_tokens=sample_tokens, calibrated_sensor_token=cs_token,
                                     logfile=logfile, extension=extension, hw=hw)
        poses, key_surfaces = _write_sensor_files(root, world=world, records=records, start_us=start_us,
                                                  channel=channel, ego_from_sensor=ego_from_sensor)
        if channel == "LIDAR_TOP":
            keyframes = [r["token"] for r in records if r["is_key_frame"]]
            tables["_panoptic"] += [{"token": t, "surface": surface, "categories": [b.category for b in world.boxes]}
                                    for t, surface in zip(keyframes, key_surfaces, strict=True)]
        tables["sample_data"] += records
        tables["ego_pose"] += poses
    instances, annotations = _annotation_records(seed=seed, scene_index=scene_index, world=world, samples=samples,
                                                 key_surfaces=key_surfaces, start_us=start_us)
    tables["instance"] += instances
    tables["sample_annotation"] += annotations
    tables["sample"] += samples
    tables["log"].append({"token": log_token, "logfile": logfile, "vehicle": "n900", "date_captured": "2018-07-18",
                          "location": "singapore-onenorth"})
    tables["scene"].append({
        "token": scene_token, "name": f"scene-{scene_index + 1:04d}", "log_token": log_token,
        "description": f"synthetic drive, world seed {scene_world_seed(seed, scene_index)}",
        "nbr_samples": len(samples), "first_sample_token": samples[0]["token"], "last_sample_token": samples[-1]["token"]})
    tables["_box_categories"] += [{"name": box.category} for box in world.boxes]
    return start_us


def _map_png() -> bytes:
    """A tiny 8-bit semantic-prior mask: a horizontal drivable band (255) on background (0)."""
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[6:14, :] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _check_arguments(*, sequences: int, frames: int, seed: int, version: str) -> None:
    for name, value, minimum in (("sequences", sequences, 1), ("frames", frames, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"write_nuscenes: {name} must be an integer >= {minimum}, got {value!r}")
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ValueError(f"write_nuscenes: version must look like 'v1.0-mini' (v1.0-<lowercase name>), got {version!r}")


def write_nuscenes(out_dir: str | Path, *, sequences: int = 1, frames: int = 12, seed: int = 0,
                   version: str = "v1.0-mini") -> NuScenesSynth:
    """Write ``sequences`` scenes of ``frames`` CAM_FRONT frames each as a nuScenes dataroot at ``out_dir``.

    Keyframes every 6th camera frame (``ceil(frames / 6)`` samples per scene); LiDAR sweeps at 20 Hz
    cover the camera frames. Returns where things are and how to rebuild each scene's world.
    """
    _check_arguments(sequences=sequences, frames=frames, seed=seed, version=version)
    root = Path(out_dir)
    names = ("instance", "sample_annotation", "sample", "sample_data", "ego_pose", "calibrated_sensor", "log",
             "scene", "_box_categories", "_panoptic")
    tables: dict[str, list[dict]] = {name: [] for name in names}
    starts = tuple(_write_scene(root, tables, seed=seed, scene_index=i, frames=frames) for i in range(sequences))
    tables.update(_static_tables(seed, {entry["name"] for entry in tables.pop("_box_categories")}))
    tables["panoptic"] = write_panoptic(root, version, tables.pop("_panoptic"), tables["category"])
    map_token = _token(seed, "map")
    tables["map"] = [{"token": map_token, "category": "semantic_prior", "filename": f"maps/{map_token}.png",
                      "log_tokens": [log["token"] for log in tables["log"]]}]
    _write_bytes(root / tables["map"][0]["filename"], _map_png())
    for name, records in sorted(tables.items()):
        text = json.dumps(records, indent=1, sort_keys=True, allow_nan=False) + "\n"
        _write_bytes(root / version / f"{name}.json", text.encode())
    return NuScenesSynth(dataroot=root, version=version, scene_names=tuple(s["name"] for s in tables["scene"]),
                         world_seeds=tuple(scene_world_seed(seed, i) for i in range(sequences)), scene_start_us=starts)
