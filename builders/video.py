"""Your own videos -> schema v2 triplet shards: ``python -m builders.video SRC OUT --camera CAMERA.yaml``.

SRC is a video file (mp4 / mov / mkv / avi), a folder of videos, or a folder of image sequences (one
sub-folder per sequence, frames in file-name order; a folder holding images itself is one sequence); one
unit per video / sequence, through the shared runner (Ray-parallel, resumable, byte-reproducible, manifest,
``verify``). Nothing but the camera's intrinsics is needed: no LiDAR, no poses (samples carry neither,
schema v2, ``dynamo_depth.shards.schema``).

The camera (``dynamo_depth.video.cameras``): a per-sequence file wins over ``--camera``: ``<video stem>.camera.yaml``
or ``<video stem>.cameras.txt`` beside a video, ``camera.yaml`` or ``cameras.txt`` inside a sequence folder.
No camera is an error with the hint to calibrate; nothing is guessed. Frames are undistorted to a pinhole,
cropped and resized to ``--size`` (default 640x192) by the rule of ``dynamo_depth.video.rectify``; each sample's
``k.npy`` is the output pinhole, ``meta.json`` keeps the source camera (``original_K``, ``distortion``,
``extra.camera_model``, ``extra.view_K``, ``extra.box_xywh``).

Frames (``dynamo_depth.video.frames``): a video's frame times are its stream's timestamps; an image sequence's
frame i is at i / ``--sequence-fps`` (default 10). ``--fps F`` keeps the frames nearest to the targets
t0 + k / F (``frames.select_at_rate``: ties to the earlier frame, each frame once, variable frame rates
included). ``--drop-static D`` (default 0: off) then drops a frame whose output image differs from the last
kept one by less than D grey levels: the mean absolute difference of the two frames in greyscale
(``cv2.COLOR_RGB2GRAY``), both shrunk 4x with ``cv2.INTER_AREA``, in 0-255 levels; such frames are counted
as skipped with their difference (2-3 is a usual threshold for a parked camera's sensor noise). Every three
consecutive kept frames make one sample (the first and last kept frames have no sample).

A sample: key ``{sequence}_cam_{source frame index:06d}``; JPEG quality 90 frames; ``meta.json``
``frame_indices`` = source frame indices (decode order), ``timestamps_us`` = frame times (nearest
microsecond), ``extra.gap_us`` = the gaps to the neighbours, ``extra.ts`` = the loader's time scales of
them (gap in whole ms / 100, ``dynamo_depth.shards.time_scales.frame_time_scales``).

Reproducibility: the bytes depend on the pinned PyAV (FFmpeg's decoders are bit-exact), OpenCV and Pillow;
the undistortion maps are element-wise float64 with ``math.atan`` and quantised to 1/32 pixel. Unlike the
KITTI / Waymo / nuScenes builders, this one is not run under several CPU kernels by
``tests/test_cross_kernel.py``. A phone video's rotation metadata is not applied: frames are used as stored,
so calibrate the camera in that orientation.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from collections.abc import Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from builders.cli import cli_main
from builders.spec import BuilderSpec, SkippedFrame, Unit
from dynamo_depth.shards.schema import SampleMeta, TripletSample, make_key, matrix_tuple
from dynamo_depth.shards.time_scales import frame_time_scales
from dynamo_depth.video.cameras import CALIBRATE_HINT, Camera, load_camera
from dynamo_depth.video.frames import (
    VIDEO_SUFFIXES,
    FrameRef,
    image_files,
    iter_image_sequence,
    iter_video,
    select_at_rate,
)
from dynamo_depth.video.rectify import RESIZE_RULES, Rectifier, RectifyOptions

VERSION = "1.0.0"
JPEG_QUALITY = 90
CAMERA_NAME = "cam"
SEQUENCE_CAMERA_FILES = ("camera.yaml", "CAMERA.yaml", "cameras.txt")
VIDEO_CAMERA_SUFFIXES = (".camera.yaml", ".cameras.txt")


# ---------------------------------------------------------------------------------------- units
def list_units(raw_root: str, options: Mapping[str, Any]) -> list[Unit]:
    """One unit per video file / image-sequence folder of ``raw_root`` (see the module docstring)."""
    root = Path(raw_root)
    if root.is_file():
        if root.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{root}: not a video ({', '.join(VIDEO_SUFFIXES)}) nor a folder")
        return [Unit(name=root.stem, params={"path": "", "kind": "video"})]
    if not root.is_dir():
        raise ValueError(f"{root}: no such file or folder")
    units = []
    for entry in sorted(root.iterdir()):
        if entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES:
            units.append(Unit(name=entry.stem, params={"path": entry.name, "kind": "video"}))
        elif entry.is_dir() and image_files(entry):
            units.append(Unit(name=entry.name, params={"path": entry.name, "kind": "images"}))
    if not units and image_files(root):
        units.append(Unit(name=root.name, params={"path": "", "kind": "images"}))
    return units


def sequence_camera_file(source: Path, kind: str) -> Path | None:
    """The per-sequence camera file of a video / sequence folder, if there is one."""
    if kind == "video":
        candidates = [source.with_name(source.stem + suffix) for suffix in VIDEO_CAMERA_SUFFIXES]
    else:
        candidates = [source / name for name in SEQUENCE_CAMERA_FILES]
    return next((c for c in candidates if c.is_file()), None)


def camera_for(source: Path, kind: str, options: Mapping[str, Any]) -> Camera:
    """The sequence's own camera file, else ``--camera``; ValueError with the hint to calibrate if neither."""
    own = sequence_camera_file(source, kind)
    if own is not None:
        return load_camera(own)
    if options.get("camera"):
        return load_camera(options["camera"])
    beside = (f"{source.stem}.camera.yaml beside it" if kind == "video" else f"camera.yaml inside {source}")
    raise ValueError(f"{source}: no camera intrinsics: give --camera CAMERA.yaml (or COLMAP's cameras.txt) or "
                     f"put {beside}; {CALIBRATE_HINT}")


# ---------------------------------------------------------------------------------------- build
def _frames(source: Path, kind: str, options: Mapping[str, Any]) -> Iterator[FrameRef]:
    frames = iter_video(source) if kind == "video" else iter_image_sequence(
        source, rate=Fraction(options.get("sequence_fps") or "10"))
    if options.get("fps"):
        frames = select_at_rate(frames, rate=Fraction(options["fps"]), time=lambda f: f.time)
    return frames


def _jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def static_thumbnail(rgb: np.ndarray) -> np.ndarray:
    """(h/4, w/4) float64 greyscale of an output frame, what ``--drop-static`` compares."""
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (max(1, grey.shape[1] // 4), max(1, grey.shape[0] // 4)), interpolation=cv2.INTER_AREA)
    return small.astype(np.float64)


def build_unit(raw_root: str, unit: Unit, options: Mapping[str, Any]) -> Iterator[TripletSample | SkippedFrame]:
    root = Path(raw_root)
    source = root / unit.params["path"] if unit.params["path"] else root
    kind = unit.params["kind"]
    camera = camera_for(source, kind, options)
    rectifier = Rectifier.plan(camera, RectifyOptions(out_hw=tuple(options.get("size", (192, 640))),
                                                      resize=options.get("resize", "crop"),
                                                      fov_deg=options.get("fov")))
    threshold = float(options.get("drop_static") or 0.0)
    window: list[tuple[FrameRef, bytes]] = []
    last_thumbnail: np.ndarray | None = None
    kept = 0
    for frame in _frames(source, kind, options):
        out = rectifier.apply(frame.load(), name=f"{source} frame {frame.index}")
        if threshold > 0:
            thumbnail = static_thumbnail(out)
            if last_thumbnail is not None:
                difference = float(np.mean(np.abs(thumbnail - last_thumbnail)))
                if difference < threshold:
                    yield SkippedFrame(frame=frame.index, reason=f"static: mean difference {difference:.2f} < "
                                                                 f"{threshold:g} grey levels")
                    continue
            last_thumbnail = thumbnail
        kept += 1
        window = [*window[-2:], (frame, _jpeg(out))]
        if len(window) == 3:
            yield _sample(unit, source, root, camera, rectifier, window, options)
    if kept < 3:
        raise ValueError(f"{source}: {kept} frame(s) kept, a sample needs 3 consecutive frames")


def _sample(unit: Unit, source: Path, root: Path, camera: Camera, rectifier: Rectifier,
            window: list[tuple[FrameRef, bytes]], options: Mapping[str, Any]) -> TripletSample:
    frames = [f for f, _ in window]
    stamps = tuple(f.time_us for f in frames)
    ts = frame_time_scales(np.asarray(stamps, dtype=np.int64), dataset="video")
    extra = {"source": str(source.relative_to(root)) if source != root else source.name,
             "gap_us": [stamps[1] - stamps[0], stamps[2] - stamps[1]], "ts": [float(v) for v in ts],
             "fps": options.get("fps"), **rectifier.describe()}
    meta = SampleMeta(
        dataset="video", split=options.get("split", "train"), sequence=unit.name, camera=CAMERA_NAME,
        frame_indices=tuple(f.index for f in frames), timestamps_us=stamps,  # type: ignore[arg-type]
        original_size=(camera.height, camera.width), original_K=matrix_tuple(camera.K()),
        ego_from_camera=matrix_tuple(np.eye(4)), builder="builders.video", builder_version=VERSION,
        distortion=camera.distortion or None, extra=extra,
    )
    return TripletSample(key=make_key(unit.name, CAMERA_NAME, frames[1].index),
                         images=tuple(jpeg for _, jpeg in window),  # type: ignore[arg-type]
                         K=rectifier.K, poses=None, depth=None, meta=meta)


# ---------------------------------------------------------------------------------------- options
def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 640x192") from None
    return height, width


def _rate(text: str) -> str:
    try:
        rate = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a frame rate such as 10 or 29.97") from None
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a frame rate must be > 0")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--camera", default=None, help="CAMERA.yaml or COLMAP cameras.txt for every sequence "
                        "without its own (see the module docstring)")
    parser.add_argument("--fps", type=_rate, default=None, help="keep the frames nearest to this rate (timestamps)")
    parser.add_argument("--sequence-fps", type=_rate, default="10", help="frame rate of image sequences (default 10)")
    parser.add_argument("--drop-static", type=float, default=0.0, metavar="D",
                        help="drop frames differing from the last kept one by < D grey levels (default 0: off)")
    parser.add_argument("--size", type=_size, default=(192, 640), metavar="WxH", help="output size (default 640x192)")
    parser.add_argument("--resize", choices=RESIZE_RULES, default="crop",
                        help="crop to the output's aspect ratio, then resize (default), or stretch the whole frame")
    parser.add_argument("--fov", type=float, default=None, metavar="DEG",
                        help="horizontal field of view of the undistorted output (distorted models); default: the "
                             "widest view without black corners")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that changes the bytes, with the digests of every camera file that may be read (an edited
    camera file is a different build, not 'already complete')."""
    camera = os.path.abspath(args.camera) if args.camera else None
    files: dict[str, str] = {}
    if camera is not None and os.path.isfile(camera):
        files["--camera"] = _sha256(Path(camera))
    root = Path(args.raw_root)
    if root.exists():
        for unit in list_units(args.raw_root, {}):
            source = root / unit.params["path"] if unit.params["path"] else root
            own = sequence_camera_file(source, unit.params["kind"])
            if own is not None:
                files[unit.name] = _sha256(own)
    return {"camera": camera, "camera_sha256": files, "fps": args.fps, "sequence_fps": args.sequence_fps,
            "drop_static": args.drop_static, "size": list(args.size), "resize": args.resize, "fov": args.fov,
            "split": args.split}


SPEC = BuilderSpec(name="video", dataset="video", version=VERSION, list_units=list_units, build_unit=build_unit,
                   add_arguments=add_arguments, options_from_args=options_from_args)


def main(argv: list[str] | None = None) -> int:
    return cli_main(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
