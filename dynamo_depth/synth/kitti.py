"""Write a small synthetic KITTI raw dataset rendered from ``dynamo_depth.synth.world``.

Layout (as the real download)::

    <out>/2011_09_26/calib_{cam_to_cam,velo_to_cam,imu_to_velo}.txt
    <out>/2011_09_26/2011_09_26_drive_<9001+s>_sync/image_0{2,3}/data/%010d.png + timestamps.txt
        velodyne_points/data/%010d.bin + timestamps{,_start,_end}.txt
        oxts/data/%010d.txt + dataformat.txt + timestamps.txt

Frames: the ego frame (x forward, y left, z up, origin on the ground) carries the IMU at
``EGO_FROM_IMU`` (0.93 m up, level). Calibration numbers are realistic (fx 721.5, baseline 0.54 m,
velodyne 1.73 m above ground). All geometry used for rendering is the calibration READ BACK from the
written files (7 significant digits), so a reader composing the files reproduces the scene exactly.
Every sensor of frame i is captured at the same instant ``t = i / 10`` s (velodyne start/end +-50 ms).
Products are ``dynamo_depth.synth.fused`` FMA chains and inverses closed-form (no BLAS/LAPACK), so the
bytes do not depend on the CPU's BLAS kernels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from dynamo_depth.formats import kitti as fmt
from dynamo_depth.formats import kitti_write
from dynamo_depth.synth.fused import matmul_fused, matvec_fused
from dynamo_depth.synth.world import World, hdl64_directions, make_world, rotate

DATE = "2011_09_26"
FIRST_DRIVE = 9001
FRAME_PERIOD_US = 100_000
BASE_TIME_US = 1_317_042_000_000_000  # 2011-09-26 13:00:00 UTC
IMU_HEIGHT_M = 0.93
EGO_FROM_IMU = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, IMU_HEIGHT_M], [0, 0, 0, 1.0]])
MAX_RANGE_M = 120.0
MIN_RANGE_M = 2.0
AZIMUTH_STEP_DEG = 0.4
GRAVITY = 9.81
_FOCAL, _CX, _CY = 721.5377, 609.5593, 172.854
# rectified camera centre offsets t (P_rect = K [I | t]); cameras 02 and 03 are 0.54 m apart
_CAMERA_T = {0: (0.0, 0.0, 0.0), 1: (-0.537, 0.0, 0.0), 2: (0.06, -0.0003, 0.0027), 3: (-0.48, 0.0031, 0.0027)}


def _small_rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    return matmul_fused(np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]),
                        np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]),
                        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))


def invert_affine(transform: np.ndarray) -> np.ndarray:
    """Inverse of a (4, 4) [A | t; 0 0 0 1] with any invertible A (the read-back, 7-digit rotations are not
    exactly orthonormal): A^-1 = adj(A) / det(A) by cofactors, element-wise (no LAPACK)."""
    a = np.asarray(transform, dtype=np.float64)[:3, :3]
    cofactor = np.array([[a[(i + 1) % 3, (j + 1) % 3] * a[(i + 2) % 3, (j + 2) % 3]
                          - a[(i + 1) % 3, (j + 2) % 3] * a[(i + 2) % 3, (j + 1) % 3] for j in range(3)]
                         for i in range(3)])
    det = a[0, 0] * cofactor[0, 0] + a[0, 1] * cofactor[0, 1] + a[0, 2] * cofactor[0, 2]
    if not abs(det) > 1e-12:
        raise ValueError(f"invert_affine: singular 3x3 block (det {det!r})")
    out = np.eye(4)
    out[:3, :3] = cofactor.T / det
    out[:3, 3] = -matvec_fused(out[:3, :3], np.asarray(transform, dtype=np.float64)[:3, 3])
    return out


def cam_to_cam_values() -> dict[str, object]:
    """The ``calib_cam_to_cam.txt`` entries (realistic KITTI-like numbers), in file order."""
    values: dict[str, object] = {"calib_time": "01-Jan-2012 12:00:00", "corner_dist": 9.95e-02}
    k_rect = np.array([[_FOCAL, 0, _CX], [0, _FOCAL, _CY], [0, 0, 1.0]])
    for index in range(4):
        tag = f"{index:02d}"
        k_raw = np.array([[960.0 - 10 * index, 0, 695.0 + index], [0, 957.0 - 10 * index, 224.0], [0, 0, 1.0]])
        values[f"S_{tag}"] = (1392.0, 512.0)
        values[f"K_{tag}"] = k_raw
        values[f"D_{tag}"] = (-0.369, 0.197, 0.0013, 0.00057, -0.068)
        values[f"R_{tag}"] = _small_rotation(0.003 * index, -0.004 * index, 0.005 * index)
        values[f"T_{tag}"] = np.array(_CAMERA_T[index])
        values[f"S_rect_{tag}"] = (1242.0, 375.0)
        values[f"R_rect_{tag}"] = _small_rotation(0.0043 - 0.001 * index, -0.0074 + 0.002 * index, -0.0098)
        values[f"P_rect_{tag}"] = np.concatenate([k_rect, matvec_fused(k_rect, np.array(_CAMERA_T[index]))[:, None]],
                                                 axis=1)
    return values


def velo_to_cam_values() -> dict[str, object]:
    """``calib_velo_to_cam.txt``: camera 0 from velodyne (x fwd, y left, z up -> x right, y down, z fwd)."""
    axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    return {"calib_time": "01-Jan-2012 12:00:00", "R": matmul_fused(axes, _small_rotation(0.0006, -0.0148, 0.0075)),
            "T": (-4.07e-03, -7.63e-02, -2.72e-01), "delta_f": (0.0, 0.0), "delta_c": (0.0, 0.0)}


def imu_to_velo_values() -> dict[str, object]:
    """``calib_imu_to_velo.txt``: velodyne from IMU (both x fwd, y left, z up)."""
    return {"calib_time": "01-Jan-2012 12:00:00", "R": _small_rotation(0.0148, 0.002, -0.0008),
            "T": (-8.09e-01, 3.20e-01, -8.00e-01)}


def write_calibration(date_dir: Path) -> fmt.KittiCalib:
    """Write the three calibration files of a date folder and return them as read back."""
    date_dir.mkdir(parents=True, exist_ok=True)
    kitti_write.write_calib_file(date_dir / "calib_cam_to_cam.txt", cam_to_cam_values())
    kitti_write.write_calib_file(date_dir / "calib_velo_to_cam.txt", velo_to_cam_values())
    kitti_write.write_calib_file(date_dir / "calib_imu_to_velo.txt", imu_to_velo_values())
    return fmt.load_kitti_calib(date_dir)


def drive_world(*, seed: int, sequence: int) -> World:
    """The synthetic world of drive ``sequence`` for ``seed`` (deterministic)."""
    return make_world(seed * 1009 + sequence)


def drive_name(sequence: int) -> str:
    return f"{DATE}_drive_{FIRST_DRIVE + sequence:04d}_sync"


def frame_time_s(frame: int) -> float:
    return frame * FRAME_PERIOD_US / 1e6


def world_from_imu(world: World, t_s: float) -> np.ndarray:
    """(4, 4) synthetic-world pose of the IMU at ``t_s`` seconds."""
    return matmul_fused(world.world_from_ego(t_s), EGO_FROM_IMU)


def oxts_packets(world: World, frames: int) -> list[fmt.OxtsPacket]:
    """OXTS packets of frames 0..frames-1: poses via Mercator, velocities/rates of the circular arc."""
    poses = np.stack([world_from_imu(world, frame_time_s(i)) for i in range(frames)])
    geodetic = kitti_write.world_from_imu_to_geodetic(poses)
    speed, yaw_rate = world.ego_speed, world.ego_yaw_rate
    packets = []
    for lat, lon, alt, roll, pitch, yaw in geodetic:
        lateral = speed * yaw_rate  # centripetal acceleration towards the left (m/s^2)
        packets.append(fmt.OxtsPacket(
            lat=lat, lon=lon, alt=alt, roll=roll, pitch=pitch, yaw=yaw,
            vn=speed * math.sin(yaw), ve=speed * math.cos(yaw), vf=speed, vl=0.0, vu=0.0,
            ax=0.0, ay=lateral, az=GRAVITY, af=0.0, al=lateral, au=GRAVITY,
            wx=0.0, wy=0.0, wz=yaw_rate, wf=0.0, wl=0.0, wu=yaw_rate,
            pos_accuracy=0.4, vel_accuracy=0.05, navstat=4, numsats=8, posmode=4, velmode=4, orimode=0))
    return packets


def velodyne_scan(world: World, calib: fmt.KittiCalib, t_s: float) -> np.ndarray:
    """(N, 4) float32 [x, y, z, reflectance] in the velodyne frame: HDL-64E-like rays cast at ``t_s``."""
    directions_velo = hdl64_directions(azimuth_step_deg=AZIMUTH_STEP_DEG)
    world_from_velo = matmul_fused(world_from_imu(world, t_s), invert_affine(calib.velo_from_imu))
    directions_world = rotate(world_from_velo[:3, :3], directions_velo)
    origins = np.broadcast_to(world_from_velo[:3, 3], directions_world.shape)
    hits = world.ray_cast(origins, directions_world, t_s)
    keep = (hits.surface >= 0) & (hits.distance <= MAX_RANGE_M) & (hits.distance >= MIN_RANGE_M)
    points = directions_velo[keep] * hits.distance[keep, None]  # exact in the velodyne frame
    reflectance = world.reflectance(hits, t_s)[keep]
    return np.concatenate([points, reflectance[:, None]], axis=1).astype(np.float32)


def world_from_camera(world: World, calib: fmt.KittiCalib, camera: str, t_s: float) -> np.ndarray:
    """(4, 4) synthetic-world pose of the rectified ``camera`` (OpenCV axes) at ``t_s`` seconds."""
    velo_from_camera = invert_affine(calib.camera_from_velo(camera))
    return matmul_fused(world_from_imu(world, t_s), invert_affine(calib.velo_from_imu), velo_from_camera)


def render_camera(world: World, calib: fmt.KittiCalib, camera: str, t_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(image (375, 1242, 3) uint8, z_depth (375, 1242) metres) of a rectified camera at ``t_s``."""
    return world.render(K=calib.K(camera), world_from_camera=world_from_camera(world, calib, camera, t_s),
                        hw=calib.image_hw[camera], t_s=t_s)


def _write_png(path: Path, image: np.ndarray) -> None:
    """Deterministic PNG: fixed compression level, no metadata chunks."""
    Image.fromarray(image, mode="RGB").save(path, format="PNG", compress_level=6)


def write_drive(drive_dir: Path, *, world: World, calib: fmt.KittiCalib, frames: int, sequence: int) -> int:
    """Write one drive folder; returns the number of files written."""
    times_us = [BASE_TIME_US + sequence * 3_600_000_000 + i * FRAME_PERIOD_US for i in range(frames)]
    folders = {name: drive_dir / name for name in ("image_02", "image_03", "velodyne_points", "oxts")}
    for folder in folders.values():
        (folder / "data").mkdir(parents=True, exist_ok=True)
        kitti_write.write_timestamps(folder / "timestamps.txt", times_us)
    kitti_write.write_timestamps(folders["velodyne_points"] / "timestamps_start.txt", [t - 50_000 for t in times_us])
    kitti_write.write_timestamps(folders["velodyne_points"] / "timestamps_end.txt", [t + 50_000 for t in times_us])
    (folders["oxts"] / "dataformat.txt").write_text(kitti_write.OXTS_DATAFORMAT, encoding="ascii")
    for frame, packet in enumerate(oxts_packets(world, frames)):
        kitti_write.write_oxts(folders["oxts"] / "data" / f"{frame:010d}.txt", packet)
    for frame in range(frames):
        t_s = frame_time_s(frame)
        for camera in ("image_02", "image_03"):
            image, _ = render_camera(world, calib, camera, t_s)
            _write_png(folders[camera] / "data" / f"{frame:010d}.png", image)
        kitti_write.write_velodyne(folders["velodyne_points"] / "data" / f"{frame:010d}.bin", velodyne_scan(world, calib, t_s))
    return 7 + 4 * frames


def write_kitti(out_dir: str | Path, *, sequences: int = 1, frames: int = 6, seed: int = 0,
                progress: bool = False) -> dict[str, object]:
    """Write ``sequences`` synthetic KITTI raw drives of ``frames`` frames under ``out_dir``.

    Returns a summary {"dataset", "root", "date", "drives", "frames", "files"}. Same arguments,
    same bytes.
    """
    if sequences < 1 or frames < 1:
        raise ValueError(f"sequences and frames must be >= 1, got {sequences}, {frames}")
    if FIRST_DRIVE + sequences - 1 > 9999:
        raise ValueError(f"at most {10000 - FIRST_DRIVE} sequences fit the 4-digit drive number")
    date_dir = Path(out_dir) / DATE
    calib = write_calibration(date_dir)
    files, drives = 3, []
    for sequence in range(sequences):
        name = drive_name(sequence)
        files += write_drive(date_dir / name, world=drive_world(seed=seed, sequence=sequence), calib=calib,
                             frames=frames, sequence=sequence)
        drives.append(name)
        if progress:
            print(f"synth kitti: drive {sequence + 1}/{sequences} {name} ({frames} frames)", flush=True)
    return {"dataset": "kitti", "root": str(out_dir), "date": DATE, "drives": drives, "frames": frames,
            "files": files}
