"""Waymo Open Dataset v1 -> schema v2 triplet shards: ``python -m builders.waymo RAW OUT [--split val]``.

``RAW/{train,val}/segment-*_with_camera_labels.tfrecord``; one unit (Ray task) per segment and camera
(``FRONT`` by default). No TensorFlow: records are read with ``dynamo_depth.formats`` (protobuf + numpy),
every record's two masked CRC32Cs are checked (a corrupt record fails its segment, naming file and byte
offset). What a sample holds, matching the original Dynamo-Depth ``prepare_data/waymo.py``:

- images: the camera JPEG decoded, undistorted with OpenCV's pinhole model (k1, k2, p1, p2, k3, the same K
  as new camera matrix; bit-identical to ``cv2.undistort``), resized to 480x320 with ``cv2.INTER_AREA``,
  JPEG quality 95 (OpenCV's default, as the original). Each frame's image is processed once.
- ``K``: the calibration's pinhole K scaled to 480x320 (fx, cx * 480 / W; fy, cy * 320 / H).
- depth: first-return points of frame t from all 5 lasers (in the order TOP, FRONT, SIDE_LEFT, SIDE_RIGHT,
  REAR), in the vehicle frame of ``Frame.pose``, moved into the camera through inv(vehicle_from_opencv_camera),
  projected with the pinhole K (no distortion), kept where z > 0, 0 <= u < W, 0 <= v < H (the camera's
  original size): float32 [u, v, z] in that order.
- poses: world_from_camera = ``CameraImage.pose`` (world_from_vehicle at the image's pose time, NOT
  ``Frame.pose``) @ vehicle_from_opencv_camera.
- timestamps: ``CameraImage.pose_timestamp`` in microseconds (the time of the stored pose); meta.extra also
  holds the frames' ``Frame.timestamp_micros`` (LiDAR sweep starts) and the gaps between the 3 image times.
- several cameras (``--cameras FRONT SIDE_LEFT ...``): one unit per segment and camera; every camera is
  stored at 480x320 (the 1920x886 side cameras are squeezed anisotropically; K is scaled per axis).
A frame without the camera's image or calibration yields no sample and breaks the window (never bridged).
- motion (``motion.npy.zst``, only for target frames whose camera image carries a PVPS panoptic label):
  the original's motion mask (``builders.waymo_motion``): panoptic instances of movable classes, each matched
  to the laser label whose camera-synced box holds the largest fraction of its LiDAR points; speed > 1 m/s
  -> 1 (moving), else 2 (static movable), unmatched 3 (unlabeled), elsewhere 0; read at each depth point's
  truncated pixel. Frames without a panoptic label have no motion member. The same frames also store the
  whole mask (``motion_mask.npy.zst``, original size), which the original's motion-segmentation evaluation
  scores pixel by pixel.
Streaming: a segment is read once, record by record; only a 3-frame window is kept in memory.
CPU-independent bytes: every product of matrices/points that reaches a shard (LiDAR decoding, projection,
poses, ego_from_camera, box tests) is element-wise in a fixed order (``dynamo_depth.geometry``), never BLAS
(``@``, einsum, ``np.linalg``), whose kernels and so last bits differ per CPU type.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from builders import waymo_motion
from builders.cli import cli_main
from builders.spec import BuilderSpec, SkippedFrame, Unit
from builders.waymo_view import camera_wedge, wedge_selector
from dynamo_depth.formats import waymo as wf
from dynamo_depth.formats import waymo_lidar
from dynamo_depth.geometry import compose, invert_se3
from dynamo_depth.shards.schema import EDGE_KEY, SampleMeta, TripletSample, make_key, matrix_tuple

VERSION = "1.4.0"  # 1.4.0: schema v2 (k.npy); the motion mask itself is stored (motion_mask.npy.zst); 1.3.0: motion from the panoptic labels as the original (none without them); 1.2.0: --split-file builds every listed frame (edge frames flagged); 1.1.0: element-wise geometry
TRAIN_HW = (320, 480)  # (H, W) of the stored images
JPEG_QUALITY = 95
SEGMENT_SUFFIX = "_with_camera_labels.tfrecord"
LASER_ORDER = ("TOP", "FRONT", "SIDE_LEFT", "SIDE_RIGHT", "REAR")


# ---------------------------------------------------------------------------------------- units
def list_units(raw_root: str, options: Mapping[str, Any]) -> list[Unit]:
    """One unit per (segment, camera) under ``raw_root/<split>/segment-*_with_camera_labels.tfrecord``,
    or per segment named by ``options["split_file"]`` (``<folder>/segment-<name> <frame>`` lines)."""
    if options.get("split_file"):
        return [Unit(name=f"{segment}/{camera}", params={"path": f"{folder}/{segment}{SEGMENT_SUFFIX}",
                                                         "sequence": segment, "camera": camera, "frames": frames})
                for (folder, segment), frames in sorted(split_file_frames(options["split_file"]).items())
                for camera in options.get("cameras", ("FRONT",))]
    split = options.get("split", "train")
    folder = Path(raw_root) / split
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder (expected RAW/<split>/segment-*{SEGMENT_SUFFIX})")
    units = []
    for path in sorted(folder.glob(f"segment-*{SEGMENT_SUFFIX}")):
        sequence = path.name[: -len(SEGMENT_SUFFIX)]
        for camera in options.get("cameras", ("FRONT",)):
            units.append(Unit(name=f"{sequence}/{camera}",
                              params={"path": f"{split}/{path.name}", "sequence": sequence, "camera": camera}))
    return units


def split_file_frames(split_file: str) -> dict[tuple[str, str], list[int]]:
    """The original's Waymo split lines ``<folder>/<segment> <frame>`` -> {(folder, segment): sorted frames}."""
    out: dict[tuple[str, str], set[int]] = {}
    for number, line in enumerate(Path(split_file).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        folder, _, segment = parts[0].rpartition("/")
        if len(parts) != 2 or not parts[1].isdigit() or not folder or not segment.startswith("segment-"):
            raise ValueError(f"{split_file}: line {number}: expected '<folder>/segment-<name> <frame>', got {line!r}")
        out.setdefault((folder, segment), set()).add(int(parts[1]))
    return {key: sorted(frames) for key, frames in out.items()}


# -------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class Undistorter:
    """Per-camera OpenCV pinhole undistortion with K as the new camera matrix, maps computed once.

    The maps are built stripe by stripe exactly as ``cv2.undistort`` builds them, so ``apply`` gives the
    same pixels as ``cv2.undistort(image, K, distortion)`` at a fraction of the cost per image.
    """

    K: np.ndarray
    distortion: tuple[float, ...]
    hw: tuple[int, int]
    map_xy: np.ndarray
    map_fraction: np.ndarray

    @classmethod
    def create(cls, *, K: np.ndarray, distortion: Sequence[float], hw: tuple[int, int]) -> Undistorter:
        return _undistorter(tuple(float(v) for v in np.asarray(K, np.float64).ravel()),
                            tuple(float(v) for v in distortion), (int(hw[0]), int(hw[1])))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> undistorted (H, W, 3) uint8 (bilinear, black outside the source)."""
        import cv2

        if image.shape[:2] != self.hw:
            raise ValueError(f"image is {image.shape[:2]}, the calibration says (H, W) = {self.hw}")
        return cv2.remap(image, self.map_xy, self.map_fraction, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


@lru_cache(maxsize=16)
def _undistorter(K_flat: tuple[float, ...], distortion: tuple[float, ...], hw: tuple[int, int]) -> Undistorter:
    import cv2

    K = np.array(K_flat).reshape(3, 3)
    height, width = hw
    stripe = min(max(1, 4096 // width), height)  # cv2.undistort's stripe height
    parts_xy, parts_fraction = [], []
    for top in range(0, height, stripe):
        shifted = K.copy()
        shifted[1, 2] -= top
        map_xy, map_fraction = cv2.initUndistortRectifyMap(
            K, np.array(distortion), None, shifted, (width, min(stripe, height - top)), cv2.CV_16SC2)
        parts_xy.append(map_xy)
        parts_fraction.append(map_fraction)
    return Undistorter(K=K, distortion=distortion, hw=hw, map_xy=np.concatenate(parts_xy),
                       map_fraction=np.concatenate(parts_fraction))


def training_intrinsics(calib: wf.CameraCalibration) -> np.ndarray:
    """(3, 3) float64 K of the stored 480x320 images: fx, cx * 480 / W; fy, cy * 320 / H (no half-pixel
    shift; normalised by the original size first, as the original's ``intrinsic_mat``)."""
    K = calib.K.copy()
    K[0] = K[0] / calib.width * TRAIN_HW[1]
    K[1] = K[1] / calib.height * TRAIN_HW[0]
    return K


def decode_jpeg(data: bytes, *, where: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR of a JPEG; ``ValueError`` naming ``where`` if it does not decode."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise ValueError(f"{where}: camera image is not a decodable JPEG ({len(data)} bytes)")
    return image


def encode_jpeg(image: np.ndarray, *, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an (H, W, 3) uint8 BGR image (OpenCV's libjpeg, deterministic)."""
    import cv2

    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"cannot JPEG-encode an image of shape {image.shape}")
    return buffer.tobytes()


def training_jpeg(undistorted: np.ndarray, *, hw: tuple[int, int] = TRAIN_HW) -> bytes:
    """The stored image: ``undistorted`` (H, W, 3) BGR resized to ``hw`` with INTER_AREA, JPEG q95."""
    import cv2

    return encode_jpeg(cv2.resize(undistorted, (hw[1], hw[0]), interpolation=cv2.INTER_AREA))


# --------------------------------------------------------------------------------------- LiDAR
def project_to_camera(points_vehicle: np.ndarray, *, camera_from_vehicle: np.ndarray, K: np.ndarray,
                      hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of vehicle-frame points, as the original preprocessing does it.

    Args:
        points_vehicle: (M, 3) metres, vehicle frame. camera_from_vehicle: (4, 4), OpenCV camera axes.
        K: (3, 3) pinhole intrinsics in pixels of the original image; hw: its (H, W).
    Returns: ((N, 3) float32 [u, v, z] with z > 0, 0 <= u < W, 0 <= v < H, in input order;
    (N,) int64 indices of those points in ``points_vehicle``). Element-wise arithmetic (no BLAS), so
    the bytes do not depend on the machine's BLAS kernels.
    """
    def axis(rows: np.ndarray, k: int) -> np.ndarray:
        r = camera_from_vehicle[k]
        return rows[:, 0] * r[0] + rows[:, 1] * r[1] + rows[:, 2] * r[2] + r[3]

    z = axis(points_vehicle, 2)
    front = np.flatnonzero(z > 0)
    ahead, z = points_vehicle[front], z[front]
    x_n, y_n = axis(ahead, 0) / z, axis(ahead, 1) / z
    u = K[0, 0] * x_n + K[0, 1] * y_n + K[0, 2]
    v = K[1, 1] * y_n + K[1, 2]
    inside = (u >= 0) & (u < hw[1]) & (v >= 0) & (v < hw[0])
    depth = np.stack([u[inside], v[inside], z[inside]], axis=1).astype(np.float32)
    return depth, front[inside]


def frame_depth(frame, calib: wf.CameraCalibration, *, cull: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Depth (N, 3) float32 [u, v, z] of a frame's first returns in camera ``calib``, and the motion
    classes (N,) uint8 (``builders.waymo_motion``), or None when the camera's image has no panoptic label.

    ``cull`` skips range-image pixels that cannot reach the camera's image before their points are
    computed (``waymo_view``); the result is the same either way, only faster with it."""
    depth, motion, _ = frame_depth_and_mask(frame, calib, cull=cull)
    return depth, motion


def frame_depth_and_mask(frame, calib: wf.CameraCalibration, *, cull: bool = True,
                         ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``frame_depth`` and the (H, W) uint8 motion mask (None without a panoptic label)."""
    wedge = camera_wedge(calib) if cull else None
    per_laser = waymo_lidar.lidar_points(frame, returns=(1,), select=wedge_selector(wedge) if wedge is not None else None)
    points = np.concatenate([np.zeros((0, 3))] + [per_laser[name] for name in LASER_ORDER if name in per_laser])
    depth, index = project_to_camera(points, camera_from_vehicle=invert_se3(calib.vehicle_from_opencv_camera),
                                     K=calib.K, hw=(calib.height, calib.width))
    both = waymo_motion.frame_motion_and_mask(frame, calib.name, depth, (calib.height, calib.width))
    return (depth, None, None) if both is None else (depth, *both)


# ---------------------------------------------------------------------------------------- build
@dataclass(frozen=True)
class _FrameView:
    """What a frame contributes to the samples around it (the record itself is kept only while needed)."""

    index: int
    offset: int
    jpeg: bytes
    world_from_camera: np.ndarray
    timestamp_us: int
    lidar_timestamp_us: int
    calib: wf.CameraCalibration


def _view(frame, index: int, offset: int, camera: str, where: str) -> _FrameView | str:
    """The frame's view of ``camera``, or the reason why it has none; ``where`` is the segment file."""
    try:
        calib = wf.camera_calibrations(frame).get(camera)
        image = wf.camera_images(frame).get(camera)
    except ValueError as error:  # WaymoFormatError, or an enum value protobuf cannot name
        raise ValueError(f"{where} record at byte offset {offset}: {error}") from error
    if calib is None or image is None:
        return f"no {camera} {'calibration' if calib is None else 'image'}"
    where = f"{where} record at byte offset {offset} (frame {index}, camera {camera})"
    bgr = decode_jpeg(image.jpeg, where=where)
    if bgr.shape[:2] != (calib.height, calib.width):
        raise ValueError(f"{where}: image is {bgr.shape[1]}x{bgr.shape[0]}, calibration says "
                         f"{calib.width}x{calib.height}")
    undistorter = Undistorter.create(K=calib.K, distortion=calib.distortion, hw=(calib.height, calib.width))
    return _FrameView(index=index, offset=offset, jpeg=training_jpeg(undistorter.apply(bgr)),
                      world_from_camera=compose(image.world_from_vehicle, calib.vehicle_from_opencv_camera),
                      timestamp_us=int(round(image.pose_timestamp_s * 1e6)),
                      lidar_timestamp_us=int(frame.timestamp_micros), calib=calib)


def build_unit(raw_root: str, unit: Unit, options: Mapping[str, Any]) -> Iterator[TripletSample | SkippedFrame]:
    """Stream one segment: every record decoded once, a 3-frame window of views, depth for targets only."""
    path = Path(raw_root) / unit.params["path"]
    camera, sequence = unit.params["camera"], unit.params["sequence"]
    if not path.is_file():
        raise ValueError(f"{path}: segment file is missing")
    if unit.params.get("frames"):
        yield from _build_listed(path, unit.params["frames"], sequence, camera, options)
        return
    window: list[_FrameView] = []  # consecutive usable frames, at most 3
    records: dict[int, Any] = {}  # index -> Frame, only for frames that may still become a target
    for index, (offset, frame) in enumerate(wf.iter_frames(path)):
        view = _view(frame, index, offset, camera, str(path))
        if isinstance(view, str):
            if len(window) >= 2:
                yield SkippedFrame(frame=window[-1].index, reason=f"no next frame (frame {index}: {view})")
            yield SkippedFrame(frame=index, reason=view)
            window, records = [], {}
            continue
        if not window:
            yield SkippedFrame(frame=index, reason="no previous frame")
        window = (window + [view])[-3:]
        records = {i: f for i, f in records.items() if i > window[0].index}  # window[0] is never a target
        if len(window) >= 2:
            records[index] = frame
        if len(window) == 3:
            yield _sample(window, records.pop(window[1].index), sequence, camera, options, where=str(path))
    if len(window) >= 2:
        yield SkippedFrame(frame=window[-1].index, reason="no next frame")


def _build_listed(path: Path, listed: Sequence[int], sequence: str, camera: str,
                  options: Mapping[str, Any]) -> Iterator[TripletSample | SkippedFrame]:
    """Samples of the listed frames (split-file builds), in frame order: a frame without a previous / next
    frame in the segment uses itself as that neighbour (the original's rule), flagged in ``meta.json``."""
    wanted = set(listed)
    views: dict[int, _FrameView | str] = {}
    pending: dict[int, Any] = {}  # listed index -> Frame, until its next frame is known
    count = 0

    def emit(t: int, last: int) -> TripletSample | SkippedFrame:
        cur = views[t]
        if isinstance(cur, str):
            return SkippedFrame(frame=t, reason=cur)
        prev = views[t - 1] if t > 0 else cur
        nxt = views[t + 1] if t < last else cur
        for i, view in ((t - 1, prev), (t + 1, nxt)):
            if isinstance(view, str):
                return SkippedFrame(frame=t, reason=f"neighbour frame {i}: {view}")
        edge = tuple(name for name, view in (("prev", prev), ("next", nxt)) if view is cur)
        return _sample([prev, cur, nxt], pending.pop(t), sequence, camera, options, where=str(path), edge=edge)

    for index, (offset, frame) in enumerate(wf.iter_frames(path)):
        count = index + 1
        views[index] = _view(frame, index, offset, camera, str(path))
        if index in wanted:
            pending[index] = frame
        for t in [t for t in sorted(pending) if t < index]:
            yield emit(t, last=10**12)
        views = {i: v for i, v in views.items() if i >= index - 1}
    for t in sorted(pending):
        yield emit(t, last=count - 1)
    for t in sorted(i for i in wanted if i >= count):
        yield SkippedFrame(frame=t, reason=f"not in the segment ({count} frames)")


def _sample(window: list[_FrameView], frame, sequence: str, camera: str, options: Mapping[str, Any], *,
            where: str, edge: tuple[str, ...] = ()) -> TripletSample:
    prev, cur, nxt = window
    calib = cur.calib
    hw = (calib.height, calib.width)
    try:
        depth, motion, mask = frame_depth_and_mask(frame, calib)
    except wf.WaymoFormatError as error:
        raise ValueError(f"{where} record at byte offset {cur.offset} (frame {cur.index}): {error}") from error
    stamps = (prev.timestamp_us, cur.timestamp_us, nxt.timestamp_us)
    meta = SampleMeta(
        dataset="waymo", split=options.get("split", "train"), sequence=sequence, camera=camera,
        frame_indices=(prev.index, cur.index, nxt.index), timestamps_us=stamps, original_size=hw,
        original_K=matrix_tuple(calib.K), distortion=tuple(float(v) for v in calib.distortion),
        ego_from_camera=matrix_tuple(calib.vehicle_from_opencv_camera), builder="builders.waymo",
        builder_version=VERSION,
        extra={"frame_gaps_us": [stamps[1] - stamps[0], stamps[2] - stamps[1]],
               "lidar_timestamps_us": [v.lidar_timestamp_us for v in window],
               "pose": "CameraImage.pose @ vehicle_from_opencv_camera", "timestamps": "CameraImage.pose_timestamp",
               "lidar": "return 1 of TOP, FRONT, SIDE_LEFT, SIDE_RIGHT, REAR in the Frame.pose vehicle frame",
               **({EDGE_KEY: list(edge)} if edge else {})},
    )
    return TripletSample(
        key=make_key(sequence, camera, cur.index), images=(prev.jpeg, cur.jpeg, nxt.jpeg),
        K=training_intrinsics(calib), poses=np.stack([v.world_from_camera for v in window]),
        depth=depth, meta=meta, motion=motion, motion_mask=mask,
    )


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cameras", nargs="+", default=["FRONT"], choices=list(wf.CAMERA_NAMES),
                        help="cameras to build (one unit per segment and camera; default FRONT)")
    parser.add_argument("--split-file", default=None,
                        help="the original's split list ('<folder>/segment-<name> <frame>' per line, e.g. "
                             "splits/waymo/test_files.txt): build exactly the listed frames, edges included")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    split_file = os.path.abspath(args.split_file) if args.split_file else None
    if split_file is None and args.split not in ("train", "val"):
        raise ValueError(f"--split must be train or val (the RAW/<split>/ folder) without --split-file, "
                         f"got {args.split!r}")
    options: dict[str, Any] = {"cameras": list(dict.fromkeys(args.cameras)), "split": args.split}
    if split_file is not None:  # the digest makes an edited split file a different build
        options.update(split_file=split_file, split_file_sha256=hashlib.sha256(Path(split_file).read_bytes()).hexdigest())
    return options


SPEC = BuilderSpec(name="waymo", dataset="waymo", version=VERSION, list_units=list_units, build_unit=build_unit,
                   add_arguments=add_arguments, options_from_args=options_from_args, default_split="train")


def main(argv: list[str] | None = None) -> int:
    return cli_main(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
