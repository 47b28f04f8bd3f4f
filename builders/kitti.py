"""KITTI raw -> schema v2 triplet shards: ``python -m builders.kitti RAW OUT [--workers N]``.

One unit per (drive, camera). What a sample holds, matching the original Dynamo-Depth / monodepth2
preprocessing:

- images: the raw PNG resized to 640x192 (PIL bilinear, JPEG quality 90);
- ``K``: the rectified projection ``P_rect_0X[:, :3]`` scaled to 640x192;
- depth: velodyne points of frame t with x >= 0, projected through P_rect_0X @ R_rect_00 @
  cam0_from_velo; pixel = round(projection) - 1; kept inside the image; depth = velodyne x; where
  several points land on one pixel the nearest wins. Stored [u=column, v=row, z] in row-major pixel
  order (the original stored [row, column, depth]);
- poses: world_from_camera from OXTS (Mercator with the scale of the drive's first packet, world =
  the IMU frame of the drive's first packet) composed with imu -> velodyne -> rectified camera;
- timestamps from the camera's ``timestamps.txt`` (microseconds).
A frame whose velodyne scan, OXTS packet or neighbour image is missing yields no sample (reported).

Split-file builds (``--split-file``, e.g. ``splits/eigen_zhou/test_files.txt``) make a sample of EVERY
listed frame: a first / last frame of the drive uses itself as its missing neighbour (the original reads
frame -1 as frame 0), flagged in ``meta.json`` ``extra["edge"]`` (``dynamo_depth.shards.schema.edge_neighbours``).
With ``--split test`` each sample also keeps the target's raw PNG file (``orig.png``), which
``eval.depth --checkpoint`` resizes bicubic for the network as the original does.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from builders.cli import cli_main
from builders.images import png_chunks_intact, read_image_bgr
from builders.spec import BuilderSpec, SkippedFrame, Unit
from dynamo_depth.formats import kitti as kf
from dynamo_depth.geometry import compose, invert_se3, resize_intrinsics
from dynamo_depth.shards.schema import EDGE_KEY, SampleMeta, TripletSample, make_key, matrix_tuple

VERSION = "1.2.0"  # 1.2.0: schema v2 (k.npy); 1.1.0: --split-file builds every listed frame (edge frames flagged), test split keeps orig.png; 1.0.1: element-wise transforms
TRAIN_HW = (192, 640)
JPEG_QUALITY = 90
SIDES = {"l": "image_02", "r": "image_03"}


# ---------------------------------------------------------------------------------------- units
def list_units(raw_root: str, options: Mapping[str, Any]) -> list[Unit]:
    """One unit per (drive, camera) found under ``raw_root/<date>/<date>_drive_<NNNN>_sync``."""
    root = Path(raw_root)
    if not root.is_dir():
        raise ValueError(f"{raw_root}: not a folder (expected the KITTI raw root holding <date>/ folders)")
    wanted = _split_frames(options.get("split_file"))
    units = []
    for drive_dir in sorted(root.glob("*/*_drive_*_sync")):
        drive = f"{drive_dir.parent.name}/{drive_dir.name}"
        for camera in options.get("cameras", ("image_02", "image_03")):
            frames = None
            if wanted is not None:
                frames = sorted(wanted.get((drive, camera), ()))
                if not frames:
                    continue
            units.append(Unit(name=f"{drive_dir.name}/{camera}", params={"drive": drive, "camera": camera,
                                                                      "frames": frames}))
    return units


def _split_frames(split_file: str | None) -> dict[tuple[str, str], set[int]] | None:
    """monodepth2-style split lines ``<date>/<drive> <frame> <l|r>`` -> {(drive, camera): frames}."""
    if not split_file:
        return None
    out: dict[tuple[str, str], set[int]] = {}
    for number, line in enumerate(Path(split_file).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[2] not in SIDES or not parts[1].isdigit():
            raise ValueError(f"{split_file}: line {number}: expected '<date>/<drive> <frame> <l|r>', got {line!r}")
        out.setdefault((parts[0], SIDES[parts[2]]), set()).add(int(parts[1]))
    return out


# -------------------------------------------------------------------------------------- helpers
def read_png_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PNG; ValueError naming the file if it is missing or corrupt.

    8-bit RGB files (every KITTI camera frame) are decoded by libspng (``pyspng``), ~20% faster than
    OpenCV's libpng and the same pixels (PNG is lossless), after every chunk's CRC-32 was checked
    (``pyspng`` skips that check: a damaged file would decode to wrong pixels). Any other PNG (grey,
    palette, alpha, 16-bit), a damaged one, or no ``pyspng`` installed goes through OpenCV as before.
    """
    import cv2

    try:
        import pyspng
    except ImportError:
        pyspng = None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read image ({exc.strerror})") from None
    if pyspng is not None and png_chunks_intact(data):
        try:
            rgb = pyspng.load(data)
        except (RuntimeError, ValueError):
            rgb = None
        if rgb is not None and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3:
            return rgb
    return cv2.cvtColor(read_image_bgr(path, kind="PNG"), cv2.COLOR_BGR2RGB)


def resized_jpeg(rgb: np.ndarray, hw: tuple[int, int] = TRAIN_HW) -> bytes:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(rgb)).resize((hw[1], hw[0]), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def project_velodyne(velo: np.ndarray, velo_to_pixels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(N, 3) float32 [u, v, z] of velodyne points on the image, exactly as the original preprocessing.

    Args:
        velo: (M, 4) float32 [x, y, z, reflectance] in the velodyne frame.
        velo_to_pixels: (3, 4) P_rect @ R_rect_00 @ cam0_from_velo.
        hw: original image (H, W).
    Returns: one point per pixel hit, row-major pixel order; z = velodyne x (m). Where several points
    land on one pixel the nearest wins. Bit-exactness with the original needs one quirk of it: it finds
    those pixels through the linear index ``row * (W - 1) + col - 1``, which also joins pixel (r, 0)
    with (r - 1, W - 1); such a group's minimum depth is written at its first point's pixel.
    """
    height, width = hw
    front = np.compress(velo[:, 0] >= 0, velo, axis=0)
    xyz = front[:, :3].T.astype(np.float64)  # (3, N); element-wise products below: same bits on any CPU
    image_u, image_v, image_w = (_projected_row(xyz, velo_to_pixels[i]) for i in range(3))
    u = np.round(np.divide(image_u, image_w, out=image_u)) - 1
    v = np.round(np.divide(image_v, image_w, out=image_v)) - 1
    keep = (u >= 0) & (v >= 0) & (u < width) & (v < height)
    rows, cols = v[keep].astype(np.int64), u[keep].astype(np.int64)
    return _nearest_per_pixel(rows * width + cols, np.compress(keep, front[:, 0]), width)


def _projected_row(xyz: np.ndarray, p_row: np.ndarray) -> np.ndarray:
    """``p_row @ [x, y, z, 1]`` per point, summed left to right as ``((((0 + a0) + a1) + a2) + a3)``.

    The bits of the original's ``(P @ [x, y, z, 1].T)`` computed element-wise (a BLAS product would
    depend on the CPU's kernel), in place: one (N,) float64 array instead of an (N, 4) and an (N, 3).
    """
    out = np.multiply(xyz[0], p_row[0])
    out += 0.0  # 0 + a0: turns -0.0 into 0.0 exactly as the sum starting from 0 does
    for j in (1, 2):
        out += xyz[j] * p_row[j]
    out += p_row[3]  # 1.0 * p_row[3] is p_row[3] exactly
    return out


def _nearest_per_pixel(pixel: np.ndarray, depth: np.ndarray, width: int) -> np.ndarray:
    """(N, 3) float32 [u, v, z] from points' flat pixel indices ``row * W + col`` and depths (m).

    One stable sort by pixel replaces a dense (H, W) map: per pixel the last point (in input order)
    gives the value; the original's groups ``row * (W - 1) + col - 1`` are non-decreasing along the
    sorted pixels (pixel (r - 1, W - 1) and (r, 0) are the only pixels sharing a group), so each
    group is one run of the sorted points: a run of >= 2 points writes its minimum depth at the pixel
    of its earliest point. Pixels whose final value is not > 0 are dropped.
    """
    if len(pixel) == 0:
        return np.zeros((0, 3), dtype=np.float32)
    order = np.argsort(pixel, kind="stable")
    sorted_pixel = pixel[order]
    pixel_starts = _run_starts(sorted_pixel)
    pixel_ends = np.append(pixel_starts[1:], len(order)) - 1
    unique_pixel = sorted_pixel[pixel_starts]
    value = depth[order[pixel_ends]]  # the last point written on each pixel
    rows, cols = np.divmod(unique_pixel, width)
    group_starts = pixel_starts[_run_starts(rows * (width - 1) + cols - 1)]
    shared = np.flatnonzero(np.diff(np.append(group_starts, len(order))) > 1)
    if len(shared):
        nearest = np.minimum.reduceat(depth[order], group_starts)[shared]
        earliest = np.minimum.reduceat(order, group_starts)[shared]
        value[np.searchsorted(unique_pixel, pixel[earliest])] = nearest
    hit = value > 0
    return np.stack([cols[hit], rows[hit], value[hit]], axis=1).astype(np.float32)


def _run_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Indices where a run of equal values starts in a sorted, non-empty 1-D array."""
    starts = np.empty(len(sorted_values), dtype=bool)
    starts[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=starts[1:])
    return np.flatnonzero(starts)


# ---------------------------------------------------------------------------------------- build
def build_unit(raw_root: str, unit: Unit, options: Mapping[str, Any]) -> Iterator[TripletSample | SkippedFrame]:
    drive, camera = unit.params["drive"], unit.params["camera"]
    drive_dir = Path(raw_root) / drive
    calib = kf.load_kitti_calib(drive_dir.parent)
    image_dir = drive_dir / camera / "data"
    frames = sorted(int(p.stem) for p in image_dir.glob("*.png"))
    if not frames:
        raise ValueError(f"{image_dir}: no PNG frames")
    stamps = kf.read_timestamps(drive_dir / camera / "timestamps.txt")
    world_from_imu = _oxts_poses(drive_dir)
    camera_from_velo = calib.camera_from_velo(camera)
    imu_from_camera = compose(invert_se3(calib.velo_from_imu), invert_se3(camera_from_velo))
    velo_to_pixels = calib.velo_to_pixels(camera)
    available = set(frames)
    listed = unit.params.get("frames")
    cache: dict[int, tuple[bytes, tuple[int, int]]] = {}
    for t in listed or frames:
        neighbours, edge = _neighbours(t, available, substitute=bool(listed))
        reason = _missing(t, neighbours, available, drive_dir, world_from_imu, stamps)
        if reason:
            yield SkippedFrame(frame=t, reason=reason)
            continue
        for i in [i for i in cache if i < t - 1]:
            del cache[i]
        for i in neighbours:
            if i not in cache:
                rgb = read_png_rgb(image_dir / f"{i:010d}.png")
                cache[i] = (resized_jpeg(rgb), rgb.shape[:2])
        hw = cache[t][1]
        velo = kf.read_velodyne(drive_dir / "velodyne_points" / "data" / f"{t:010d}.bin")
        depth = project_velodyne(velo, velo_to_pixels, hw)
        K_original = calib.K(camera)
        poses = np.stack([compose(world_from_imu[i], imu_from_camera) for i in neighbours])
        extra: dict[str, Any] = {"date": drive_dir.parent.name, "ego_frame": "oxts imu",
                                 "world": "imu of the drive's first oxts"}
        if edge:
            extra[EDGE_KEY] = list(edge)
        split = options.get("split", "train")
        meta = SampleMeta(
            dataset="kitti", split=split, sequence=drive_dir.name, camera=camera,
            frame_indices=neighbours, timestamps_us=tuple(int(stamps[i]) for i in neighbours),
            original_size=hw, original_K=matrix_tuple(K_original), ego_from_camera=matrix_tuple(imu_from_camera),
            builder="builders.kitti", builder_version=VERSION, extra=extra,
        )
        original = (image_dir / f"{t:010d}.png").read_bytes() if split == "test" else None
        yield TripletSample(
            key=make_key(drive_dir.name, camera, t), images=tuple(cache[i][0] for i in neighbours),
            K=resize_intrinsics(K_original, from_hw=hw, to_hw=TRAIN_HW), poses=poses,
            depth=depth, meta=meta, original_image=original,
        )


def _oxts_poses(drive_dir: Path) -> dict[int, np.ndarray]:
    """frame -> (4, 4) world_from_imu; world = IMU frame of the drive's first OXTS packet."""
    paths = sorted((drive_dir / "oxts" / "data").glob("*.txt"))
    if not paths:
        raise ValueError(f"{drive_dir / 'oxts' / 'data'}: no OXTS packets")
    packets = [kf.read_oxts(p) for p in paths]
    poses = kf.oxts_to_world_from_imu(packets, relative_to_first=True)
    return {int(p.stem): pose for p, pose in zip(paths, poses, strict=False)}


def _neighbours(t: int, images: set[int], *, substitute: bool) -> tuple[tuple[int, int, int], tuple[str, ...]]:
    """(t-1, t, t+1), with the target itself in place of a neighbour that has no image when
    ``substitute`` (split-file builds), and the names of the substituted neighbours."""
    if not substitute or t not in images:
        return (t - 1, t, t + 1), ()
    prev = t - 1 if t - 1 in images else t
    nxt = t + 1 if t + 1 in images else t
    edge = tuple(name for name, i in (("prev", prev), ("next", nxt)) if i == t)
    return (prev, t, nxt), edge


def _missing(t: int, neighbours: tuple[int, int, int], images: set[int], drive_dir: Path, poses: Mapping[int, Any],
             stamps: np.ndarray) -> str:
    for i in (neighbours[0], neighbours[2]):
        if i not in images:
            return f"neighbour frame {i} has no image"
    for i in neighbours:
        if i not in poses:
            return f"frame {i} has no OXTS packet"
        if i >= len(stamps):
            return f"frame {i} has no timestamp"
    if not (drive_dir / "velodyne_points" / "data" / f"{t:010d}.bin").is_file():
        return "no velodyne scan"
    if t not in images:
        return "no image"
    return ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split-file", default=None,
                        help="monodepth2-style split file ('<date>/<drive> <frame> <l|r>' per line)")
    parser.add_argument("--cameras", nargs="+", default=["image_02", "image_03"], choices=["image_02", "image_03"])


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    split_file = os.path.abspath(args.split_file) if args.split_file else None
    digest = hashlib.sha256(Path(split_file).read_bytes()).hexdigest() if split_file else None
    # the digest makes an edited split file (same path) a different build, not "already complete"
    return {"cameras": list(args.cameras), "split": args.split, "split_file": split_file, "split_file_sha256": digest}


SPEC = BuilderSpec(name="kitti", dataset="kitti", version=VERSION, list_units=list_units, build_unit=build_unit,
                   add_arguments=add_arguments, options_from_args=options_from_args)


def main(argv: list[str] | None = None) -> int:
    return cli_main(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
