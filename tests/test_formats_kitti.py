"""KITTI raw readers/writers: the real fixture, byte-exact layout, round trips, clear errors."""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import numpy as np
import pytest

from dynamo_depth.formats import kitti as fmt
from dynamo_depth.formats import kitti_write

SHARED = Path(__file__).resolve().parents[2] / "shared"
KITTI_DATE = SHARED / "fixtures" / "kitti_raw" / "2011_09_26"
DRIVE = KITTI_DATE / "2011_09_26_drive_0009_sync"
needs_fixture = pytest.mark.skipif(not KITTI_DATE.exists(), reason="real KITTI fixture ../shared/fixtures/kitti_raw absent")


def _utc_us(*args: int) -> int:
    return (datetime.datetime(*args) - datetime.datetime(1970, 1, 1)) // datetime.timedelta(microseconds=1)


@needs_fixture
def test_real_calibration_reads_and_rewrites_byte_identically(tmp_path: Path) -> None:
    calib = fmt.load_kitti_calib(KITTI_DATE)
    assert calib.image_hw["image_02"] == (375, 1242)
    np.testing.assert_allclose(calib.K("image_02"), [[721.5377, 0, 609.5593], [0, 721.5377, 172.854], [0, 0, 1]])
    np.testing.assert_allclose(calib.velo_from_imu[:3, 3], [-0.8086759, 0.3195559, -0.7997231])
    np.testing.assert_allclose(calib.cam0_from_velo[:3, 3], [-4.069766e-03, -7.631618e-02, -2.717806e-01])
    # the camera frame form and the devkit's P_rect @ R_rect @ Tr project identically
    points = np.array([[10.0, 1.0, -0.5, 1.0], [25.0, -4.0, 0.3, 1.0]])
    cam = calib.K("image_02") @ (calib.camera_from_velo("image_02") @ points.T)[:3]
    devkit = calib.velo_to_pixels("image_02") @ points.T
    np.testing.assert_allclose(cam[:2] / cam[2], devkit[:2] / devkit[2], atol=1e-9)
    np.testing.assert_allclose(cam[2], devkit[2], atol=1e-12)
    for name in ("cam_to_cam", "velo_to_cam", "imu_to_velo"):
        source = KITTI_DATE / f"calib_{name}.txt"
        text = source.read_text()
        values: dict[str, object] = {}
        numbers = fmt.read_calib_file(source)
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            values[key] = numbers[key] if key in numbers else rest.strip()
        kitti_write.write_calib_file(tmp_path / source.name, values)
        assert (tmp_path / source.name).read_bytes() == source.read_bytes()


@needs_fixture
def test_real_oxts_velodyne_timestamps_are_plausible() -> None:
    packets = [fmt.read_oxts(path) for path in sorted((DRIVE / "oxts" / "data").glob("*.txt"))]
    assert len(packets) == 10
    assert packets[0].lat == pytest.approx(49.009347760599) and packets[0].numsats == 7
    assert isinstance(packets[0].navstat, int)
    poses = fmt.oxts_to_world_from_imu(packets, relative_to_first=True)
    np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-9)
    times = fmt.read_timestamps(DRIVE / "oxts" / "timestamps.txt")
    assert times.dtype == np.int64 and len(times) == 447
    assert times[0] == _utc_us(2011, 9, 26, 13, 8, 24, 969505)  # '.969505176' truncated to microseconds
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    expected = np.array([p.vf for p in packets[:-1]]) * np.diff(times[:10]) / 1e6
    np.testing.assert_allclose(steps, expected, rtol=0.05)  # speed ~10.7 m/s matches the positions
    for name in ("timestamps.txt", "timestamps_start.txt", "timestamps_end.txt"):
        stamps = fmt.read_timestamps(DRIVE / "velodyne_points" / name)
        missing = stamps == fmt.MISSING_TIMESTAMP_US  # this drive lacks velodyne frames 177-180 (empty lines)
        np.testing.assert_array_equal(np.flatnonzero(missing), [177, 178, 179, 180])
        assert len(stamps) == 447 and np.all(np.diff(stamps[:177]) > 80_000) and np.all(np.diff(stamps[:177]) < 120_000)
    scan_path = DRIVE / "velodyne_points" / "data" / "0000000000.bin"
    scan = fmt.read_velodyne(scan_path)
    assert scan.shape == (scan_path.stat().st_size // 16, 4) and scan.dtype == np.float32
    assert 0.0 <= scan[:, 3].min() and scan[:, 3].max() <= 1.0
    ranges = np.linalg.norm(scan[:, :3], axis=1)
    assert ranges.max() < 130.0 and np.median(scan[:, 2]) == pytest.approx(-1.5, abs=0.6)  # ground ~1.73 m below


def test_velodyne_round_trip_and_bad_size(tmp_path: Path) -> None:
    points = np.array([[1.5, -2.25, 0.125, 0.5], [100.0, 3.0, -1.7, 0.0]], dtype=np.float32)
    kitti_write.write_velodyne(tmp_path / "a.bin", points)
    assert (tmp_path / "a.bin").stat().st_size == 32
    np.testing.assert_array_equal(fmt.read_velodyne(tmp_path / "a.bin"), points)
    (tmp_path / "bad.bin").write_bytes(b"\0" * 20)
    with pytest.raises(ValueError, match=r"bad\.bin.*multiple of 16"):
        fmt.read_velodyne(tmp_path / "bad.bin")
    with pytest.raises(ValueError, match="N, 4"):
        kitti_write.write_velodyne(tmp_path / "c.bin", points[:, :3])


def test_oxts_round_trip_exact_and_errors(tmp_path: Path) -> None:
    values = {name: 0.1 * i + 1.0 / 3.0 for i, name in enumerate(fmt.OXTS_FIELDS)}
    values.update(navstat=4, numsats=9, posmode=4, velmode=4, orimode=0)
    packet = fmt.OxtsPacket(**values)
    kitti_write.write_oxts(tmp_path / "p.txt", packet)
    assert fmt.read_oxts(tmp_path / "p.txt") == packet
    assert (tmp_path / "p.txt").read_text().endswith(" 4 9 4 4 0\n")
    (tmp_path / "short.txt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"short\.txt.*expected 30 values, found 3"):
        fmt.read_oxts(tmp_path / "short.txt")


def test_oxts_mercator_hand_values() -> None:
    base = dict.fromkeys(fmt.OXTS_FIELDS, 0.0) | dict(navstat=4, numsats=8, posmode=4, velmode=4, orimode=0)
    first = fmt.OxtsPacket(**(base | dict(lat=49.0, lon=8.4, alt=110.0, yaw=math.pi / 2)))
    second = fmt.OxtsPacket(**(base | dict(lat=49.0, lon=8.4 + 1e-4, alt=111.0, yaw=math.pi / 2)))
    poses = fmt.oxts_to_world_from_imu([first, second])
    scale = math.cos(math.radians(49.0))
    assert poses[0, 0, 3] == pytest.approx(scale * 8.4 * math.pi * 6378137.0 / 180.0, rel=1e-15)
    assert poses[0, 1, 3] == pytest.approx(scale * 6378137.0 * math.log(math.tan(math.radians(90 + 49.0) / 2)))
    relative = fmt.oxts_to_world_from_imu([first, second], relative_to_first=True)
    east_m = scale * 1e-4 * math.pi * 6378137.0 / 180.0  # 1e-4 deg of longitude at 49 deg, ~7.3 m east
    # heading north (yaw 90 deg): east is the IMU's -y (right); 1 m up is +z
    np.testing.assert_allclose(relative[1, :3, 3], [0.0, -east_m, 1.0], atol=1e-8)


def test_geodetic_inverse_round_trip_is_exact() -> None:
    rng = np.random.default_rng(0)
    poses = np.tile(np.eye(4), (6, 1, 1))
    for i in range(6):
        roll, pitch, yaw = rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), rng.uniform(-3.0, 3.0)
        poses[i, :3, :3] = fmt._rotation_rpy(roll, pitch, yaw)
        poses[i, :3, 3] = rng.uniform(-800.0, 800.0, size=3) * [1, 1, 0.02]
    geodetic = kitti_write.world_from_imu_to_geodetic(poses)
    assert geodetic[0, 0] == pytest.approx(49.0) and geodetic[0, 1] == pytest.approx(8.4)
    base = dict.fromkeys(fmt.OXTS_FIELDS, 0.0) | dict(navstat=4, numsats=8, posmode=4, velmode=4, orimode=0)
    names = ("lat", "lon", "alt", "roll", "pitch", "yaw")
    packets = [fmt.OxtsPacket(**(base | dict(zip(names, map(float, row), strict=True)))) for row in geodetic]
    recovered = fmt.oxts_to_world_from_imu(packets, relative_to_first=True)
    expected = np.linalg.inv(poses[0]) @ poses
    np.testing.assert_allclose(recovered[:, :3, 3], expected[:, :3, 3], atol=2e-9)
    np.testing.assert_allclose(recovered[:, :3, :3], expected[:, :3, :3], atol=1e-12)


def test_timestamps_round_trip_truncate_and_errors(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("2011-09-26 13:02:25.964389273\n2011-09-26 13:02:26.000000999\n")
    times = fmt.read_timestamps(tmp_path / "t.txt")
    np.testing.assert_array_equal(times, [_utc_us(2011, 9, 26, 13, 2, 25, 964389), _utc_us(2011, 9, 26, 13, 2, 26, 0)])
    kitti_write.write_timestamps(tmp_path / "u.txt", times)
    assert (tmp_path / "u.txt").read_text() == "2011-09-26 13:02:25.964389000\n2011-09-26 13:02:26.000000000\n"
    np.testing.assert_array_equal(fmt.read_timestamps(tmp_path / "u.txt"), times)
    kitti_write.write_timestamps(tmp_path / "gap.txt", [times[0], fmt.MISSING_TIMESTAMP_US, times[1]])
    np.testing.assert_array_equal(fmt.read_timestamps(tmp_path / "gap.txt"), [times[0], -1, times[1]])
    (tmp_path / "bad.txt").write_text("2011-09-26 13:02:25.1\nyesterday\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 2"):
        fmt.read_timestamps(tmp_path / "bad.txt")


def test_load_calib_names_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"calib_cam_to_cam\.txt: calibration file is missing"):
        fmt.load_kitti_calib(tmp_path)
    kitti_write.write_calib_file(tmp_path / "calib_cam_to_cam.txt", {"calib_time": "x", "R_rect_00": np.eye(3)})
    kitti_write.write_calib_file(tmp_path / "calib_velo_to_cam.txt", {"R": np.eye(3), "T": (0.0, 0.0, 0.0)})
    kitti_write.write_calib_file(tmp_path / "calib_imu_to_velo.txt", {"R": np.eye(3), "T": (1.0, 2.0)})
    with pytest.raises(ValueError, match=r"calib_imu_to_velo\.txt: key 'T' must hold 3"):
        fmt.load_kitti_calib(tmp_path)
    kitti_write.write_calib_file(tmp_path / "calib_imu_to_velo.txt", {"R": np.eye(3), "T": (1.0, 2.0, 3.0)})
    with pytest.raises(ValueError, match=r"calib_cam_to_cam\.txt: missing key 'P_rect_00'"):
        fmt.load_kitti_calib(tmp_path)
    (tmp_path / "calib_velo_to_cam.txt").write_text("no colon here\n")
    with pytest.raises(ValueError, match=r"calib_velo_to_cam\.txt: line 1"):
        fmt.read_calib_file(tmp_path / "calib_velo_to_cam.txt")
