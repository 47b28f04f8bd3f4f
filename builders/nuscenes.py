"""nuScenes -> schema v2 triplet shards: ``python -m builders.nuscenes DATAROOT OUT [--split S] [--workers N]``.

One unit (a worker task) per scene. The tables are read in the driver only, once (``load_tables``:
``builders.nuscenes_index`` streams the big tables and keeps the CAM_FRONT / LIDAR_TOP records and what the
payloads need, no devkit; ``_NUSCENES`` caches it by (dataroot, version)); each scene task gets its own
scene's records as a small payload (``builders.nuscenes_tables``: a few MB per 20 s scene, whatever the
size of the tables) and never loads the tables itself. What a sample holds,
matching the original Dynamo-Depth preprocessing (``prepare_data/nuScenes.py``):

- frames: every ``CAM_FRONT`` sample_data of the scene (keyframes and sweeps, ~12 Hz), in the order
  of the ``next`` chain from the scene's first sample's CAM_FRONT; a sample is frame t with t-1, t+1
  (the first and last frames of a scene are edges, not samples, and are not counted as skipped);
- images: the 1600x900 JPEG resized to 512x288 with cv2 ``INTER_AREA`` and written with cv2 at JPEG
  quality 95 (cv2's default, what the original wrote: byte-identical to its ``rgb/downsample``);
- ``K``: the calibrated sensor's ``camera_intrinsic`` scaled by 512/1600 and 288/900 (no half-pixel shift);
- depth of frame t: the ``LIDAR_TOP`` sweep nearest in time to the camera (the earlier one on a tie)
  among the chain from the scene's first sample's LIDAR_TOP; at a keyframe the sample's own LIDAR_TOP.
  Points go lidar -> ego (lidar time) -> global -> ego (camera time) -> camera and are kept where
  z > 1 m and 1 < u < W-1, 1 < v < H-1 (strict, at the original W x H); stored [u, v, z] float32;
- poses: world_from_camera = global_from_ego (the camera sample_data's ego_pose) @ ego_from_camera;
  nuScenes camera frames already use OpenCV axes;
- ``meta.extra``: ``gap_prev_us``/``gap_next_us`` (exact microsecond gaps to the neighbours; the
  original's ``ts.json`` held ``uint8(rint(gap / 1000))``, which wraps modulo 256 above 255 ms: see
  ``original_ts_json``), ``large_gap`` (true when a gap exceeds 3x the nominal 1/12 s period: the
  sample is still written, flagged, never silently bridged), ``lidar_token``, ``lidar_dt_us`` (LiDAR
  minus camera timestamp), ``camera_token``, ``is_key_frame``;
- motion (``motion.npy.zst``, at frames whose sweep is a sample's keyframe sweep with nuScenes-panoptic labels):
  per point, from its panoptic instance (among the depth points) matched to the sample's annotation boxes of
  its category with the original's strict box test on the devkit's float32 global points
  (``builders.nuscenes_motion``): 0 not movable, 1 moving, 2 static movable, 3 movable without a box;
  versions without panoptic labels have no motion member.
A missing or corrupt image or LiDAR file fails its scene with the file's path; the others complete.

Splits: ``--split all`` builds every scene of the tables; ``--split train|val|test|mini_train|...``
the scenes of that official list (``create_splits_scenes``), with train/val read as mini_train/mini_val
for ``v1.0-mini``. The default is ``train`` (never a silent train+val mix); scene names that are in no
official list (the synthetic data of ``python -m dynamo_depth synth nuscenes``) need ``--split all``,
which the error says. ``--version`` defaults to the only ``v1.0-*`` folder of DATAROOT.
``--split-file splits/nuscenes/test_files.txt`` builds exactly the listed frames (``scenes/<scene> <index>``,
index in the CAM_FRONT chain), first and last frames included: the missing neighbour is the frame itself,
flagged in ``meta.json`` ``extra["edge"]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from builders.cli import cli_main
from builders.images import read_image_bgr as read_jpeg_bgr
from builders.nuscenes_index import NuScenesIndex, load_index
from builders.nuscenes_motion import devkit_global_points, motion_labels, record_pose
from builders.nuscenes_tables import SceneTables, scene_payload
from builders.spec import BuilderSpec, SkippedFrame, Unit
from dynamo_depth.geometry import invert_se3, resize_intrinsics
from dynamo_depth.shards.schema import EDGE_KEY, SampleMeta, TripletSample, make_key, matrix_tuple

VERSION = "1.3.0"  # 1.3.0: schema v2 (k.npy); motion labels with the original's strict box test on the devkit's float32 global points, instances among the depth points; 1.2.0: motion from the nuScenes-panoptic labels as the original; 1.1.0: --split-file builds every listed frame (edge frames flagged in meta.json)
TRAIN_HW = (288, 512)
JPEG_QUALITY = 95
CAMERA = "CAM_FRONT"
LIDAR = "LIDAR_TOP"
LIDAR_FLOATS_PER_POINT = 5  # x, y, z, intensity, ring (float32)
MIN_DEPTH_M = 1.0
BORDER_PX = 1.0
NOMINAL_PERIOD_US = 1_000_000 / 12
LARGE_GAP_US = 3 * NOMINAL_PERIOD_US
MINI_SPLITS = {"train": "mini_train", "val": "mini_val"}
_NUSCENES: dict[tuple[str, str], NuScenesIndex] = {}


# -------------------------------------------------------------------------------------- tables
def resolve_version(dataroot: str, version: str | None) -> str:
    """``version`` if given, else the only ``v1.0-*`` table folder of ``dataroot`` (``v1.0-trainval`` if several)."""
    root = Path(dataroot)
    if not root.is_dir():
        raise ValueError(f"{dataroot}: not a folder (expected a nuScenes dataroot holding v1.0-*/ tables)")
    if version:
        if not (root / version / "scene.json").is_file():
            raise ValueError(f"{root / version / 'scene.json'}: missing (is --version {version} right?)")
        return version
    found = sorted(p.parent.name for p in root.glob("v1.0-*/scene.json"))
    if len(found) == 1:
        return found[0]
    if "v1.0-trainval" in found:
        return "v1.0-trainval"
    raise ValueError(f"{dataroot}: {'no' if not found else 'several'} v1.0-*/scene.json tables "
                     f"({found}); pass --version")


def load_nuscenes(*, dataroot: str, version: str) -> Any:
    """The devkit ``NuScenes`` of (dataroot, version) (not cached; the build reads ``load_tables``: this is the
    reference its payloads are tested against, ``tests/test_nuscenes_index.py``)."""
    from nuscenes.nuscenes import NuScenes

    root = os.path.abspath(dataroot)
    try:
        return NuScenes(version=version, dataroot=root, verbose=False)
    except (AssertionError, FileNotFoundError, KeyError, ValueError) as exc:
        raise ValueError(f"{root}/{version}: cannot load the nuScenes tables ({exc})") from None


def load_tables(*, dataroot: str, version: str) -> NuScenesIndex:
    """The driver's tables of (dataroot, version), read once per process (``builders.nuscenes_index``: the
    CAM_FRONT / LIDAR_TOP sample_data and what the payloads need, no devkit); ValueError naming a bad file."""
    key = (os.path.abspath(dataroot), version)
    if key not in _NUSCENES:
        _NUSCENES[key] = load_index(dataroot=key[0], version=version, channels=(CAMERA, LIDAR))
    return _NUSCENES[key]


def split_scene_names(*, scene_names: Sequence[str], split: str, version: str) -> list[str]:
    """Scenes of ``split``: all for ``all``; else the official list (train/val -> mini_* for v1.0-mini)."""
    if split == "all":
        return sorted(scene_names)
    from nuscenes.utils.splits import create_splits_scenes

    official = create_splits_scenes(verbose=False)
    name = MINI_SPLITS.get(split, split) if version == "v1.0-mini" else split
    if name not in official:
        raise ValueError(f"--split {split!r}: not an official nuScenes split; allowed: all, {sorted(official)}")
    chosen = sorted(set(scene_names) & set(official[name]))
    if not chosen:
        raise ValueError(f"--split {split!r} ({version}): none of the {len(scene_names)} scenes "
                         f"({sorted(scene_names)[:3]}...) is in the official list {name!r}; "
                         "for data whose scene names are not official (synthetic) use --split all")
    return chosen


def list_units(raw_root: str, options: Mapping[str, Any]) -> list[Unit]:
    nusc = load_tables(dataroot=raw_root, version=options["version"])
    tokens = {scene["name"]: scene["token"] for scene in nusc.scene}
    if options.get("split_file"):
        listed = split_file_frames(options["split_file"])
        unknown = sorted(set(listed) - set(tokens))
        if unknown:
            raise ValueError(f"{options['split_file']}: scenes {unknown[:5]} are not in {options['version']}")
        return [Unit(name=name, params={"scene_token": tokens[name], "frames": frames})
                for name, frames in sorted(listed.items())]
    names = split_scene_names(scene_names=list(tokens), split=options["split"], version=options["version"])
    return [Unit(name=name, params={"scene_token": tokens[name]}) for name in names]


def split_file_frames(split_file: str) -> dict[str, list[int]]:
    """The original's nuScenes split lines ``scenes/<scene> <index>`` -> {scene: sorted CAM_FRONT indices}."""
    out: dict[str, set[int]] = {}
    for number, line in enumerate(Path(split_file).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].startswith("scenes/") or not parts[1].isdigit():
            raise ValueError(f"{split_file}: line {number}: expected 'scenes/<scene> <index>', got {line!r}")
        out.setdefault(parts[0][len("scenes/"):], set()).add(int(parts[1]))
    return {scene: sorted(frames) for scene, frames in out.items()}


def neighbours(t: int, count: int) -> tuple[tuple[int, int, int], tuple[str, ...]]:
    """(t-1, t, t+1) with the frame itself in place of a neighbour outside the scene (the original's
    rule for split-file builds), and the names of the substituted neighbours."""
    prev, nxt = (t - 1 if t > 0 else t), (t + 1 if t < count - 1 else t)
    return (prev, t, nxt), tuple(name for name, i in (("prev", prev), ("next", nxt)) if i == t)


def _chain(nusc: Any, first: dict) -> list[dict]:
    records = [first]
    while records[-1]["next"]:
        records.append(nusc.get("sample_data", records[-1]["next"]))
    return records


@dataclass(frozen=True)
class SceneFrames:
    """One scene's CAM_FRONT frames in chain order and, per frame, the LIDAR_TOP sweep used for its depth."""

    cameras: tuple[dict, ...]
    lidars: tuple[dict, ...]


def scene_frames(nusc: Any, scene: Mapping[str, Any]) -> SceneFrames:
    """Camera chain from the first sample's CAM_FRONT; nearest LiDAR sweep per frame (keyframes: their own)."""
    first = nusc.get("sample", scene["first_sample_token"])
    cameras = _chain(nusc, nusc.get("sample_data", first["data"][CAMERA]))
    sweeps = _chain(nusc, nusc.get("sample_data", first["data"][LIDAR]))
    sweep_us = np.array([s["timestamp"] for s in sweeps], dtype=np.int64)
    lidars = []
    for camera in cameras:
        if camera["is_key_frame"]:
            lidars.append(nusc.get("sample_data", nusc.get("sample", camera["sample_token"])["data"][LIDAR]))
        else:
            lidars.append(sweeps[int(np.argmin(np.abs(sweep_us - camera["timestamp"])))])
    return SceneFrames(cameras=tuple(cameras), lidars=tuple(lidars))


def original_ts_json(gaps_us: Sequence[int]) -> list[int]:
    """The original ``ts.json`` of frame gaps (microseconds): ``uint8(rint(gap / 1000))``, i.e. ms modulo 256."""
    return [int(np.rint(g / 1000.0)) % 256 for g in gaps_us]


# -------------------------------------------------------------------------------------- files
def read_image_bgr(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR of a JPEG; ValueError naming the file when it is missing or corrupt."""
    return read_jpeg_bgr(path, kind="JPEG")


def resized_jpeg(bgr: np.ndarray, hw: tuple[int, int] = TRAIN_HW) -> bytes:
    """JPEG bytes (quality 95) of a BGR image resized to hw = (H, W) with cv2 INTER_AREA."""
    import cv2

    small = cv2.resize(bgr, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("cv2 could not encode a JPEG")
    return data.tobytes()


def read_lidar_points(path: Path) -> np.ndarray:
    """(N, 3) float32 [x, y, z] (metres, LIDAR_TOP frame) of a ``.pcd.bin`` (5 float32 per point)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read LiDAR file ({exc.strerror})") from None
    if len(data) % (4 * LIDAR_FLOATS_PER_POINT):
        raise ValueError(f"{path}: size {len(data)} is not a multiple of {4 * LIDAR_FLOATS_PER_POINT} "
                         "(5 float32 per point); truncated?")
    return np.frombuffer(data, dtype="<f4").reshape(-1, LIDAR_FLOATS_PER_POINT)[:, :3]


# ------------------------------------------------------------------------------------ geometry
def apply_transform(target_from_source: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 3) float64 points in the target frame; element-wise (no BLAS: the same bytes on any machine)."""
    p = np.asarray(points, dtype=np.float64)
    T = np.asarray(target_from_source, dtype=np.float64)
    return np.stack([T[i, 0] * p[:, 0] + T[i, 1] * p[:, 1] + T[i, 2] * p[:, 2] + T[i, 3] for i in range(3)], axis=1)


def project_to_image(points_camera: np.ndarray, K: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """([u, v, z] (M, 3) float32 of the kept points, keep mask (N,)): z > 1 m, 1 < u < W-1, 1 < v < H-1."""
    x, y, z = points_camera[:, 0], points_camera[:, 1], points_camera[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (K[0, 0] * x + K[0, 1] * y + K[0, 2] * z) / z
        v = (K[1, 0] * x + K[1, 1] * y + K[1, 2] * z) / z
    height, width = hw
    keep = (z > MIN_DEPTH_M) & (u > BORDER_PX) & (u < width - BORDER_PX) & (v > BORDER_PX) & (v < height - BORDER_PX)
    return np.stack([u[keep], v[keep], z[keep]], axis=1).astype(np.float32), keep


def compose_exact(*transforms: np.ndarray) -> np.ndarray:
    """Product of (4, 4) transforms in float64, element-wise in a fixed order (no BLAS, no FMA)."""
    out = np.asarray(transforms[0], dtype=np.float64)
    for T in transforms[1:]:
        T = np.asarray(T, dtype=np.float64)
        out = sum((out[:, k:k + 1] * T[k:k + 1, :] for k in range(1, 4)), out[:, 0:1] * T[0:1, :])
    return out


def camera_from_lidar(nusc: Any, camera: Mapping[str, Any], lidar: Mapping[str, Any]) -> np.ndarray:
    """(4, 4) camera (at camera time) from LIDAR_TOP (at LiDAR time) through ego and global frames."""
    global_from_lidar = compose_exact(record_pose(nusc.get("ego_pose", lidar["ego_pose_token"])),
                                      record_pose(nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])))
    return compose_exact(invert_se3(world_from_camera(nusc, camera)), global_from_lidar)


def world_from_camera(nusc: Any, camera: Mapping[str, Any]) -> np.ndarray:
    """(4, 4) global_from_camera at the camera sample_data's timestamp (OpenCV axes, metres)."""
    return compose_exact(record_pose(nusc.get("ego_pose", camera["ego_pose_token"])),
                         record_pose(nusc.get("calibrated_sensor", camera["calibrated_sensor_token"])))


# --------------------------------------------------------------------------------------- build
@dataclass(frozen=True)
class FrameDepth:
    """Depth of one frame: [u, v, z] (N, 3) float32 at the original size, motion (N,) uint8 or None."""

    depth: np.ndarray
    motion: np.ndarray | None


def frame_depth(nusc: Any, camera: Mapping[str, Any], lidar: Mapping[str, Any], hw: tuple[int, int]) -> FrameDepth:
    """Project the frame's LiDAR sweep into its camera; motion classes at keyframes with panoptic labels."""
    points = read_lidar_points(Path(nusc.dataroot) / lidar["filename"])
    K = np.asarray(nusc.get("calibrated_sensor", camera["calibrated_sensor_token"])["camera_intrinsic"], np.float64)
    depth, keep = project_to_image(apply_transform(camera_from_lidar(nusc, camera, lidar), points), K, hw)
    global_points = devkit_global_points(points, sensor=nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"]),
                                         ego=nusc.get("ego_pose", lidar["ego_pose_token"]))
    return FrameDepth(depth=depth, motion=motion_labels(nusc, lidar, global_points, keep))  # the depth points only


def _frame_meta(nusc: Any, frames: SceneFrames, t: int, scene: str, split: str,
                triple: tuple[int, int, int], edge: tuple[str, ...]) -> SampleMeta:
    cameras = frames.cameras
    camera, lidar = cameras[t], frames.lidars[t]
    stamps = tuple(int(cameras[i]["timestamp"]) for i in triple)
    gaps = (stamps[1] - stamps[0], stamps[2] - stamps[1])
    calibration = nusc.get("calibrated_sensor", camera["calibrated_sensor_token"])
    extra = {"gap_prev_us": gaps[0], "gap_next_us": gaps[1], "large_gap": bool(max(gaps) > LARGE_GAP_US),
             "lidar_token": lidar["token"], "lidar_dt_us": int(lidar["timestamp"]) - stamps[1],
             "camera_token": camera["token"], "is_key_frame": bool(camera["is_key_frame"])}
    if edge:
        extra[EDGE_KEY] = list(edge)
    return SampleMeta(
        dataset="nuscenes", split=split, sequence=scene, camera=CAMERA, frame_indices=triple,
        timestamps_us=stamps, original_size=(int(camera["height"]), int(camera["width"])),
        original_K=matrix_tuple(calibration["camera_intrinsic"]), ego_from_camera=matrix_tuple(record_pose(calibration)),
        builder="builders.nuscenes", builder_version=VERSION, extra=extra)


def _image(nusc: Any, camera: Mapping[str, Any]) -> bytes:
    path = Path(nusc.dataroot) / camera["filename"]
    bgr = read_image_bgr(path)
    want = (int(camera["height"]), int(camera["width"]))
    if bgr.shape[:2] != want:
        raise ValueError(f"{path}: image is {bgr.shape[1]}x{bgr.shape[0]}, sample_data says {want[1]}x{want[0]}")
    return resized_jpeg(bgr)


def prepare_unit(raw_root: str, unit: Unit, options: Mapping[str, Any]) -> Unit:
    """The unit with its scene's own table records (``params["tables"]``), made in the driver."""
    nusc = load_tables(dataroot=raw_root, version=options["version"])
    payload = scene_payload(nusc, unit.params["scene_token"], channels=(CAMERA, LIDAR))
    return Unit(name=unit.name, params={**unit.params, "tables": payload})


def scene_tables(raw_root: str, unit: Unit, options: Mapping[str, Any]) -> SceneTables:
    """The scene's records: the unit's payload, or (a unit made without ``prepare_unit``) from the tables."""
    payload = unit.params.get("tables")
    if payload is None:
        payload = prepare_unit(raw_root, unit, options).params["tables"]
    return SceneTables.from_payload(payload)


def build_unit(raw_root: str, unit: Unit, options: Mapping[str, Any]) -> Iterator[TripletSample | SkippedFrame]:
    nusc = scene_tables(raw_root, unit, options)
    scene = nusc.get("scene", unit.params["scene_token"])
    frames = scene_frames(nusc, scene)
    cameras = frames.cameras
    images: dict[int, bytes] = {}
    listed = unit.params.get("frames")
    for t in listed if listed else range(1, len(cameras) - 1):
        if t >= len(cameras):
            yield SkippedFrame(frame=t, reason=f"not in the scene ({len(cameras)} CAM_FRONT frames)")
            continue
        triple, edge = neighbours(t, len(cameras)) if listed else ((t - 1, t, t + 1), ())
        for i in [i for i in images if i < t - 1]:
            del images[i]
        for i in triple:
            if i not in images:
                images[i] = _image(nusc, cameras[i])
        meta = _frame_meta(nusc, frames, t, scene["name"], options["split"], triple, edge)
        K_original = np.asarray(meta.original_K, dtype=np.float64)
        result = frame_depth(nusc, cameras[t], frames.lidars[t], meta.original_size)
        yield TripletSample(
            key=make_key(scene["name"], CAMERA, t), images=tuple(images[i] for i in triple),
            K=resize_intrinsics(K_original, from_hw=meta.original_size, to_hw=TRAIN_HW),
            poses=np.stack([world_from_camera(nusc, cameras[i]) for i in triple]),
            depth=result.depth, meta=meta, motion=result.motion)


# ----------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", default=None,
                        help="table folder, e.g. v1.0-trainval (default: the only v1.0-* folder of DATAROOT)")
    parser.add_argument("--split-file", default=None,
                        help="the original's split list ('scenes/<scene> <index>' per line, e.g. "
                             "splits/nuscenes/test_files.txt): build exactly the listed frames, edges included")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"split": args.split, "version": resolve_version(args.raw_root, args.version)}
    if args.split_file:  # the digest makes an edited split file a different build
        path = os.path.abspath(args.split_file)
        options.update(split_file=path, split_file_sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return options


SPEC = BuilderSpec(name="nuscenes", dataset="nuscenes", version=VERSION, list_units=list_units,
                   build_unit=build_unit, add_arguments=add_arguments, options_from_args=options_from_args,
                   default_split="train", prepare_unit=prepare_unit)


def main(argv: list[str] | None = None) -> int:
    return cli_main(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
