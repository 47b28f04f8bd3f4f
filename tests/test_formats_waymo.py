"""Waymo v1 without TensorFlow: TFRecord framing/CRC32C, our proto subset, range-image decoding.

Oracles: the official decoder's points (``../shared/reference/waymo_synthetic_lidar/oracle_points``) and the
original Dynamo-Depth outputs for the real PVPS frame (``tiny_waymo`` cam.json / odometry.txt).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from dynamo_depth.formats import tfrecord, waymo_lidar, waymo_pb2
from dynamo_depth.formats import waymo as wf
from dynamo_depth.formats.tfrecord import (
    TFRecordError,
    crc32c,
    crc32c_numpy,
    iter_records,
    masked_crc32c,
    write_records,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference" / "waymo_synthetic_lidar"
PVPS = SHARED / "fixtures" / "waymo_v1" / "pvps_data_one_frame.tfrecord"
SEGMENT = "1024360143612057520_3580_000_3600_000"
ASSET = SHARED / "reference" / "dynamo_depth_assets" / "tiny_waymo" / "val" / f"segment-{SEGMENT}" / "FRONT"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared (real Waymo fixtures/references) is absent")
PROTO = Path(wf.__file__).with_name("waymo.proto")


def _crc32c_bitwise(data: bytes) -> int:
    """Textbook bit-at-a-time CRC-32C, independent of the module's tables."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("implementation", [crc32c, crc32c_numpy], ids=["default", "numpy"])
def test_crc32c_known_vectors_and_numpy_path(implementation) -> None:
    assert implementation(b"123456789") == 0xE3069283  # the CRC catalogue's check value
    assert implementation(b"") == 0
    assert implementation(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
    assert implementation(b"\xff" * 32) == 0x62A8AB43
    assert implementation(bytes(range(32))) == 0x46DD794E
    assert implementation(bytearray(b"123456789")) == implementation(memoryview(b"123456789")) == 0xE3069283
    rng = np.random.default_rng(1)
    for size in (16_383, 16_384, 70_001):  # both sides of the pure-python / numpy switch
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert implementation(data) == _crc32c_bitwise(data)


def test_crc32c_uses_the_c_package_from_requirements() -> None:
    import google_crc32c

    assert google_crc32c.implementation == "c"
    assert tfrecord._C_CRC32C is google_crc32c.value


def test_masked_crc32c_hand_computed() -> None:
    # crc 0xE3069283 rotated right by 15 bits = 0x2507C60D; + 0xA282EAD8 = 0xC78AB0E5 (mod 2**32)
    assert masked_crc32c(b"123456789") == 0xC78AB0E5


def test_records_round_trip_offsets(tmp_path: Path) -> None:
    payloads = [b"", b"a", bytes(range(256)) * 100]
    path = tmp_path / "x.tfrecord"
    assert write_records(path, payloads) == sum(16 + len(p) for p in payloads) == path.stat().st_size
    records = list(iter_records(path))
    assert [p for _, p in records] == payloads
    assert [o for o, _ in records] == [0, 16, 33]
    raw = path.read_bytes()  # framing by hand: length, masked CRC of the length, data, masked CRC of data
    assert raw[16:24] == (1).to_bytes(8, "little") and raw[24:28] == masked_crc32c(raw[16:24]).to_bytes(4, "little")
    assert raw[29:33] == masked_crc32c(b"a").to_bytes(4, "little")


def _corrupt_copy(source: Path, target: Path, *, flip_at: int | None = None, keep: int | None = None) -> Path:
    data = bytearray(source.read_bytes())
    if flip_at is not None:
        data[flip_at] ^= 0x01
    target.write_bytes(bytes(data[:keep] if keep is not None else data))
    return target


def test_corruption_and_truncation_name_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "ok.tfrecord"
    write_records(path, [b"x" * 100, b"y" * 200])
    second = 16 + 100
    cases = [(dict(flip_at=second + 12 + 50), second, "payload CRC32C mismatch"),
             (dict(flip_at=second + 2), second, "length CRC32C mismatch"),
             (dict(keep=second + 12 + 150), second, "truncated payload"),
             (dict(keep=second + 5), second, "truncated header"),
             (dict(keep=second + 12 + 200 + 2), second, "truncated payload CRC")]
    for k, (how, offset, reason) in enumerate(cases):
        bad = _corrupt_copy(path, tmp_path / f"bad{k}.tfrecord", **how)
        with pytest.raises(TFRecordError, match=re.escape(reason)) as info:
            list(iter_records(bad))
        assert info.value.offset == offset and str(bad) in str(info.value) and f"offset {offset}" in str(info.value)
        assert isinstance(info.value, ValueError)


def test_length_beyond_end_of_file_is_named_before_reading(tmp_path: Path) -> None:
    """A corrupt 8-byte length (2**64 - 1 read with verify=False; 10**12 with a valid length CRC) is compared with
    the bytes left in the file: a named TFRecordError, never a MemoryError from reading that many bytes."""
    path = tmp_path / "ok.tfrecord"
    write_records(path, [b"x" * 100, b"y" * 200])
    second, size = 16 + 100, path.stat().st_size  # the file holds 116 + 216 = 332 bytes
    data = bytearray(path.read_bytes())
    data[second:second + 8] = b"\xff" * 8
    (tmp_path / "huge.tfrecord").write_bytes(bytes(data))
    length = (10**12).to_bytes(8, "little")
    data[second:second + 12] = length + masked_crc32c(length).to_bytes(4, "little")
    (tmp_path / "crc_ok.tfrecord").write_bytes(bytes(data))
    left = size - second - 12
    for name, verify, claimed in (("huge", False, 2**64 - 1), ("crc_ok", True, 10**12), ("crc_ok", False, 10**12)):
        bad = tmp_path / f"{name}.tfrecord"
        records = iter_records(bad, verify=verify)
        assert next(records) == (0, b"x" * 100)
        with pytest.raises(TFRecordError) as info:
            next(records)
        assert info.value.offset == second and str(bad) in str(info.value)
        assert info.value.reason == (f"truncated payload: the length header says {claimed} bytes, only {left} are "
                                     "left in the file (truncated file or corrupt length)")
    with pytest.raises(TFRecordError, match="length CRC32C mismatch"):  # verify=True: the CRC catches it first
        list(iter_records(tmp_path / "huge.tfrecord"))


@needs_shared
def test_flipped_byte_in_real_record_copy(tmp_path: Path) -> None:
    bad = _corrupt_copy(PVPS, tmp_path / "pvps_flipped.tfrecord", flip_at=1_000_000)
    with pytest.raises(TFRecordError, match=r"pvps_flipped\.tfrecord.*byte offset 0: payload CRC32C mismatch"):
        list(iter_records(bad))
    short = _corrupt_copy(PVPS, tmp_path / "pvps_short.tfrecord", keep=2_000_000)
    with pytest.raises(TFRecordError, match=r"pvps_short\.tfrecord.*byte offset 0: truncated payload"):
        list(iter_records(short))


def _parse_proto_text(text: str) -> tuple[dict, dict]:
    """{message: {(label, type, name, number, packed)}}, {enum: {(name, number)}} from .proto text."""
    messages: dict[str, set] = {}
    enums: dict[str, set] = {}
    scope: list[tuple[str, str]] = []
    field = re.compile(r"^(optional|repeated) ([\w.]+) (\w+) = (\d+)( \[packed = true\])?;$")
    for line in (raw.split("//")[0].strip() for raw in text.splitlines()):
        if match := re.match(r"^(message|enum) (\w+) \{$", line):
            scope.append((match[1], match[2]))
            (messages if match[1] == "message" else enums)[".".join(n for _, n in scope)] = set()
        elif line == "}":
            scope.pop()
        elif match := field.match(line):
            messages[".".join(n for _, n in scope)].add((match[1], match[2], match[3], int(match[4]), bool(match[5])))
        elif match := re.match(r"^(\w+) = (\d+);$", line):
            enums[".".join(n for _, n in scope)].add((match[1], int(match[2])))
    return messages, enums


def test_descriptor_matches_proto_text() -> None:
    messages, enums = _parse_proto_text(PROTO.read_text())
    assert set(messages) == set(waymo_pb2._MESSAGES) and len(messages) == 22
    assert set(enums) == set(waymo_pb2._ENUMS) and len(enums) == 6
    for full_name, fields in messages.items():
        descriptor = waymo_pb2._POOL.FindMessageTypeByName(f"waymo.open_dataset.{full_name}")
        built = set()
        for f in descriptor.fields:
            if f.message_type is not None or f.enum_type is not None:
                target = (f.message_type or f.enum_type).full_name
                written = next(kind for _, kind, name, _, _ in fields if name == f.name)
                assert target.endswith(written), (full_name, f.name, target, written)
                kind = written
            else:
                kind = {1: "double", 2: "float", 3: "int64", 5: "int32", 8: "bool", 9: "string", 12: "bytes"}[f.type]
            label = "repeated" if f.is_repeated else "optional"
            built.add((label, kind, f.name, f.number, f.is_packed))
        assert built == fields, full_name
    for full_name, values in enums.items():
        descriptor = waymo_pb2._POOL.FindEnumTypeByName(f"waymo.open_dataset.{full_name}")
        assert {(v.name, v.number) for v in descriptor.values} == values


def test_hand_built_frame_points() -> None:
    """Uniform cell-centre inclinations, half-pixel azimuths, extrinsic, and a TOP pixel pose, by hand."""
    frame = waymo_pb2.Frame(timestamp_micros=5, pose=waymo_pb2.Transform(transform=np.eye(4).ravel().tolist()))
    extrinsic = np.eye(4)
    extrinsic[:3, 3] = (1.0, 2.0, 3.0)
    for name in ("FRONT", "TOP"):
        frame.context.laser_calibrations.add(
            name=waymo_pb2.LaserName.Name.Value(name), beam_inclination_min=-0.4, beam_inclination_max=0.4,
            extrinsic=waymo_pb2.Transform(transform=extrinsic.ravel().tolist()))
    image = np.full((4, 4, 4), -1.0, dtype=np.float32)
    image[0, 0, 0] = 2.0  # row 0 = highest cell centre 0.3 rad; column 0 azimuth 0.75 pi
    image[3, 2, 0] = 10.0  # row 3 = -0.3 rad; column 2 azimuth -0.25 pi
    pose = np.zeros((4, 4, 6), dtype=np.float32)
    pose[..., 2] = math.pi / 2  # yaw 90 deg
    pose[..., 3] = 1.0  # x + 1 m
    for name, pixel_pose in (("FRONT", None), ("TOP", pose)):
        laser = frame.lasers.add(name=waymo_pb2.LaserName.Name.Value(name))
        laser.ri_return1.range_image_compressed = wf.encode_matrix(image)
        if pixel_pose is not None:
            laser.ri_return1.range_image_pose_compressed = wf.encode_matrix(pixel_pose)
    points = waymo_lidar.lidar_points(frame, returns=(1, 2))
    assert list(points) == ["TOP", "FRONT"]
    c3, s3 = math.cos(0.3), math.sin(0.3)
    expected = np.array([[2 * c3 * math.cos(0.75 * math.pi), 2 * c3 * math.sin(0.75 * math.pi), 2 * s3],
                         [10 * c3 * math.cos(-0.25 * math.pi), 10 * c3 * math.sin(-0.25 * math.pi), -10 * s3]])
    expected += (1.0, 2.0, 3.0)
    np.testing.assert_allclose(points["FRONT"], expected, atol=1e-6)
    rotated = np.stack([-expected[:, 1] + 1.0, expected[:, 0], expected[:, 2]], axis=1)  # Rz(90) then x + 1
    np.testing.assert_allclose(points["TOP"], rotated, atol=1e-5)


def test_euler_matrix_and_columns() -> None:
    roll, pitch, yaw = 0.1, -0.2, 2.5

    def axis(k: int, a: float) -> np.ndarray:
        c, s = math.cos(a), math.sin(a)
        i, j = [(1, 2), (2, 0), (0, 1)][k]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    rotation = waymo_lidar.rotation_from_euler(np.float64(roll), np.float64(pitch), np.float64(yaw))
    np.testing.assert_allclose(rotation, axis(2, yaw) @ axis(1, pitch) @ axis(0, roll), atol=1e-15)
    np.testing.assert_allclose(waymo_lidar.euler_from_rotation(rotation), [roll, pitch, yaw], atol=1e-12)
    np.testing.assert_allclose(waymo_lidar.column_azimuths(4, np.eye(4)), [0.75 * math.pi, 0.25 * math.pi,
                                                                  -0.25 * math.pi, -0.75 * math.pi])
    calib = wf.LaserCalibration(name="X", vehicle_from_laser=np.eye(4), beam_inclinations=None,
                                inclination_min=-0.4, inclination_max=0.4)
    np.testing.assert_allclose(calib.row_inclinations(4), [0.3, 0.1, -0.1, -0.3])


def test_matrix_encoding_and_errors() -> None:
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5.5
    message = waymo_pb2.MatrixFloat(data=array.ravel().tolist())
    message.shape.dims.extend([2, 3, 4])
    assert wf.serialize_matrix_float(array) == message.SerializeToString(deterministic=True)
    np.testing.assert_array_equal(wf.decode_matrix(wf.encode_matrix(array), channels=4, where="t"), array)
    ints = np.arange(-6, 6, dtype=np.int32).reshape(2, 1, 6)
    np.testing.assert_array_equal(wf.decode_matrix(wf.encode_matrix(ints), channels=6, integer=True, where="t"), ints)
    with pytest.raises(wf.WaymoFormatError, match=r"laser TOP pose: matrix dims \[2, 3, 4\].*expected \[H, W, 6\]"):
        wf.decode_matrix(wf.encode_matrix(array), channels=6, where="laser TOP pose")
    with pytest.raises(wf.WaymoFormatError, match="laser X: cannot decompress"):
        wf.decode_matrix(b"not zlib", channels=4, where="laser X")
    truncated = wf.encode_matrix(array)[:-6]
    with pytest.raises(wf.WaymoFormatError, match="laser Y: cannot decompress"):
        wf.decode_matrix(truncated, channels=4, where="laser Y")
    with pytest.raises(wf.WaymoFormatError, match="rec 7: not a serialized waymo Frame"):
        wf.parse_frame(b"\xff\xff\xff", source="rec 7")
    with pytest.raises(ValueError, match="returns must be"):
        waymo_lidar.lidar_points(waymo_pb2.Frame(), returns=(3,))
    assert zlib.decompress(wf.encode_matrix(array))[:1] == b"\x0a"


def test_inflate_is_isal_and_equals_zlib() -> None:
    from isal import isal_zlib

    assert wf.inflate is isal_zlib.decompress  # pinned in requirements.txt; zlib is only the fallback
    data = np.random.default_rng(0).normal(size=50_000).astype(np.float32).tobytes() + bytes(100_000)
    for level in (1, 6, 9):
        assert wf.inflate(zlib.compress(data, level)) == data


def test_without_the_c_packages_the_pure_paths_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "isal", None)  # import isal -> ImportError
    monkeypatch.setitem(sys.modules, "google_crc32c", None)
    assert wf._inflate_function() is zlib.decompress
    assert tfrecord._c_crc32c() is None


@needs_shared
def test_real_pvps_frame_matches_original_assets() -> None:
    (offset, frame), = list(wf.iter_frames(PVPS))
    assert offset == 0 and frame.context.name == SEGMENT and frame.timestamp_micros == 1553735853462203
    cameras = wf.camera_calibrations(frame)
    assert list(cameras) == ["FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT"]
    front = cameras["FRONT"]
    assert (front.width, front.height) == (1920, 1280)
    cam = json.loads((ASSET / "rgb" / "cam.json").read_text())
    assert [front.f_u, front.f_v, front.c_u, front.c_v, *front.distortion] == cam["intrinsic"]
    assert front.vehicle_from_camera.ravel().tolist() == cam["extrinsic"]
    assert cam["dim"] == [front.height, front.width]
    odometry = np.loadtxt(ASSET / "odometry.txt")
    image = wf.camera_images(frame)["FRONT"]
    np.testing.assert_allclose(image.world_from_vehicle.ravel(), odometry[1], rtol=0, atol=1e-9)
    assert image.jpeg[:2] == b"\xff\xd8" and image.pose_timestamp_s == pytest.approx(1553735853.5146208)
    lasers = wf.laser_calibrations(frame)
    assert lasers["TOP"].beam_inclinations.shape == (64,) and np.all(np.diff(lasers["TOP"].beam_inclinations) > 0)
    assert lasers["FRONT"].beam_inclinations is None and lasers["FRONT"].inclination_min == -math.pi / 2
    points = waymo_lidar.lidar_points(frame)  # the PVPS record carries no range images
    assert list(points) == list(wf.LASER_NAMES) and all(p.shape == (0, 3) for p in points.values())
    labels = wf.laser_labels(frame)
    assert len(labels) == 75 and labels[0].type == "TYPE_SIGN" and labels[0].id == "-uZgRjAOvgiK1-0dUx_4Sg"


@needs_shared
def test_synthetic_lidar_matches_official_decoder(tmp_path: Path) -> None:
    copy = shutil.copy(REFERENCE / "synthetic_lidar_3frames.tfrecord", tmp_path / "s.tfrecord")
    frames = [frame for _, frame in wf.iter_frames(copy)]
    assert len(frames) == 3
    for k, frame in enumerate(frames):
        for ret in (1, 2):
            ours = waymo_lidar.lidar_points(frame, returns=(ret,))
            with np.load(REFERENCE / "oracle_points" / f"frame{k}_return{ret}.npz", allow_pickle=False) as oracle:
                assert list(oracle.keys()) == list(ours) == list(wf.LASER_NAMES)
                for name in oracle.keys():
                    expected = oracle[name]
                    assert ours[name].shape == expected.shape, (k, ret, name)
                    tolerance = 0.02 if name == "TOP" else 1e-4
                    if len(expected):
                        assert np.abs(ours[name] - expected).max() <= tolerance, (k, ret, name)
    assert waymo_lidar.lidar_points(frames[1], returns=(1, 2))["TOP"].shape == (104098 + 920, 3)


@needs_shared
def test_points_match_the_installed_official_decoder() -> None:
    """Live cross-check, only where ``waymo-open-dataset`` (TensorFlow) happens to be installed: our points per
    laser and return equal the official ``convert_range_image_to_point_cloud`` (same count and order)."""
    pytest.importorskip("tensorflow", reason="the official decoder needs TensorFlow; not in the default install")
    dataset_pb2 = pytest.importorskip("waymo_open_dataset.dataset_pb2", reason="waymo-open-dataset is not installed")
    frame_utils = pytest.importorskip("waymo_open_dataset.utils.frame_utils")
    for _, payload in iter_records(REFERENCE / "synthetic_lidar_3frames.tfrecord"):
        official = dataset_pb2.Frame()
        official.ParseFromString(payload)
        parsed = frame_utils.parse_range_image_and_camera_projection(official)
        range_image, projection, top_pose = parsed[0], parsed[1], parsed[-1]  # 3 or 4 values by version
        ours = wf.parse_frame(payload)
        for ret in (1, 2):
            theirs, _ = frame_utils.convert_range_image_to_point_cloud(official, range_image, projection, top_pose,
                                                                       ri_index=ret - 1)
            names = [wf.LASER_NAMES[c.name - 1] for c in sorted(official.context.laser_calibrations,
                                                                 key=lambda c: c.name)]
            mine = waymo_lidar.lidar_points(ours, returns=(ret,))
            for name, expected in zip(names, theirs, strict=True):
                assert mine[name].shape == expected.shape, (ret, name)
                tolerance = 0.02 if name == "TOP" else 1e-3
                if len(expected):
                    assert np.abs(mine[name] - expected).max() <= tolerance, (ret, name)
