"""Schema v1: exact encode/decode round trips and named errors for malformed samples."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import zstandard

from dynamo_depth.shards.schema import (
    ALL_MEMBERS,
    REQUIRED_MEMBERS,
    SampleError,
    TripletSample,
    decode,
    encode,
    npy_bytes,
    zstd_npy_bytes,
)
from tests.samples import make_sample


def _assert_same_sample(a: TripletSample, b: TripletSample) -> None:
    assert a.key == b.key
    assert a.images == b.images
    for name in ("K", "poses", "depth"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name
    if a.motion is None:
        assert b.motion is None
    else:
        assert a.motion.dtype == b.motion.dtype == np.uint8 and a.motion.tobytes() == b.motion.tobytes()
    assert a.meta == b.meta


@pytest.mark.parametrize("with_motion", [True, False])
def test_round_trip_is_exact(with_motion: bool) -> None:
    sample = make_sample(3, n_points=11, with_motion=with_motion)
    members = encode(sample)
    full = {*REQUIRED_MEMBERS, "poses.npy", "depth.npy.zst"}
    expected = {*full, "motion.npy.zst"} if with_motion else full
    assert set(members) == expected and set(members) <= set(ALL_MEMBERS)
    back = decode(members, key=sample.key)
    _assert_same_sample(sample, back)
    # JPEG bytes pass through untouched; arrays keep their exact values.
    assert members["cur.jpg"] == sample.images[1] and members["cur.jpg"][:3] == b"\xff\xd8\xff"
    assert back.poses[1, 2, 3] == 4.0 and back.K[0, 2] == 8.0
    assert back.depth.shape == (11, 3)
    # Encoding is deterministic and re-encoding the decoded sample gives the same bytes.
    assert encode(back) == members == encode(sample)


def test_meta_json_is_canonical() -> None:
    sample = make_sample(0)
    text = encode(sample)["meta.json"].decode("utf-8")
    obj = json.loads(text)
    assert text == json.dumps(obj, sort_keys=True, separators=(",", ":"))
    assert obj["frame_indices"] == [0, 1, 2] and obj["original_size"] == [375, 1242]
    assert obj["timestamps_us"][1] - obj["timestamps_us"][0] == 103_000


def test_webdataset_key_in_members_dict() -> None:
    sample = make_sample(1)
    members = {"__key__": sample.key, **encode(sample)}
    _assert_same_sample(sample, decode(members))


def _pickled_object_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _meta_with_version(members: dict[str, bytes], version: int) -> bytes:
    obj = json.loads(members["meta.json"])
    obj["schema_version"] = version
    return json.dumps(obj).encode()


CASES = {
    "wrong shape": ("k.npy", lambda m: npy_bytes(np.eye(4))),
    "wrong dtype": ("poses.npy", lambda m: npy_bytes(np.tile(np.eye(4, dtype=np.float32), (3, 1, 1)))),
    "depth wrong columns": ("depth.npy.zst", lambda m: zstd_npy_bytes(np.zeros((5, 2), np.float32))),
    "motion wrong length": ("motion.npy.zst", lambda m: zstd_npy_bytes(np.zeros(3, np.uint8))),
    "corrupt zstd": ("depth.npy.zst", lambda m: m["depth.npy.zst"][:-7] + b"garbage"),
    "not zstd at all": ("motion.npy.zst", lambda m: b"\x00" * 32),
    "pickled object array": ("k.npy", lambda m: _pickled_object_npy()),
    "pickled object array in zstd": ("depth.npy.zst", lambda m: zstandard.compress(_pickled_object_npy())),
    "unknown schema version": ("meta.json", lambda m: _meta_with_version(m, 3)),
    "meta not json": ("meta.json", lambda m: b"{not json"),
    "not a jpeg": ("next.jpg", lambda m: b"\x89PNG\r\n\x1a\n" + b"\x00" * 16),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_member_names_key_and_member(case: str) -> None:
    sample = make_sample(2)
    members = encode(sample)
    member, corrupt = CASES[case]
    members[member] = corrupt(members)
    with pytest.raises(SampleError) as info:
        decode(members, key=sample.key)
    assert info.value.key == sample.key
    assert info.value.member == member
    assert sample.key in str(info.value) and member in str(info.value)


def test_missing_and_unknown_members() -> None:
    sample = make_sample(4)
    members = encode(sample)
    del members["cur.jpg"]
    with pytest.raises(SampleError, match="missing member") as info:
        decode(members, key=sample.key)
    assert (info.value.key, info.value.member) == (sample.key, "cur.jpg")
    members = encode(sample)
    members["lidar.bin"] = b"\x00"
    with pytest.raises(SampleError, match="unknown member") as info:
        decode(members, key=sample.key)
    assert (info.value.key, info.value.member) == (sample.key, "lidar.bin")


def test_constructor_rejects_bad_pose_and_key() -> None:
    sample = make_sample(5)
    bad_poses = sample.poses.copy()
    bad_poses[2, 3, 3] = 2.0
    with pytest.raises(SampleError, match="poses.npy"):
        TripletSample(key=sample.key, images=sample.images, K=sample.K, poses=bad_poses,
                      depth=sample.depth, meta=sample.meta)
    with pytest.raises(SampleError, match="no dots"):
        TripletSample(key="seq.a_cam_000001", images=sample.images, K=sample.K, poses=sample.poses,
                      depth=sample.depth, meta=sample.meta)


def test_non_finite_arrays_and_malformed_meta_matrices_are_rejected() -> None:
    import dataclasses

    from dynamo_depth.shards.schema import SampleError, SampleMeta, decode, encode

    sample = make_sample(0)
    bad_K = sample.K.copy()
    bad_K[0, 2] = np.nan
    with pytest.raises(SampleError, match=r"member 'k.npy': holds NaN or infinite values"):
        dataclasses.replace(sample, K=bad_K)
    bad_depth = sample.depth.copy()
    bad_depth[0, 2] = np.inf
    with pytest.raises(SampleError, match=r"member 'depth.npy.zst': holds NaN"):
        dataclasses.replace(sample, depth=bad_depth)
    members = encode(sample)
    meta = json.loads(members["meta.json"])
    meta["ego_from_camera"] = meta["ego_from_camera"][:3]
    with pytest.raises(SampleError, match=r"meta.json.*ego_from_camera: expected a 4x4 matrix"):
        decode({**members, "meta.json": json.dumps(meta).encode()}, key=sample.key)
    meta = json.loads(members["meta.json"])
    meta["original_size"] = [375]
    with pytest.raises(SampleError, match=r"original_size: expected 2 values"):
        decode({**members, "meta.json": json.dumps(meta).encode()}, key=sample.key)
    assert SampleMeta.from_json(json.loads(members["meta.json"])) == sample.meta


def test_original_png_member_and_edge_flag_round_trip() -> None:
    import dataclasses

    from dynamo_depth.shards.schema import edge_neighbours

    sample = make_sample(3, n_points=5, with_motion=False)
    png = b"\x89PNG\r\n\x1a\n" + b"rest-of-file"
    meta = dataclasses.replace(sample.meta, extra={**sample.meta.extra, "edge": ["prev"]})
    edged = dataclasses.replace(sample, original_image=png, meta=meta)
    members = encode(edged)
    assert members["orig.png"] == png
    back = decode(members, key=sample.key)
    assert back.original_image == png and edge_neighbours(back.meta) == ("prev",)
    assert edge_neighbours(sample.meta) == ()
    with pytest.raises(ValueError, match="orig.png"):
        dataclasses.replace(sample, original_image=b"not a png")
    with pytest.raises(ValueError, match="allowed"):
        edge_neighbours(dataclasses.replace(sample.meta, extra={"edge": ["left"]}))


def test_v2_sample_without_depth_and_poses_round_trips() -> None:
    """Schema v2: lower-case names; no depth.npy.zst / poses.npy for a camera-only sample."""
    import dataclasses

    sample = make_sample(6, with_motion=False)
    assert sample.meta.schema_version == 2 and "k.npy" in encode(sample)
    meta = dataclasses.replace(sample.meta, dataset="video")
    bare = dataclasses.replace(sample, depth=None, poses=None, meta=meta)
    members = encode(bare)
    assert set(members) == {"prev.jpg", "cur.jpg", "next.jpg", "k.npy", "meta.json"}
    back = decode(members, key=sample.key)
    assert back.depth is None and back.poses is None and back.meta.schema_version == 2
    assert encode(back) == members
    with pytest.raises(SampleError, match="motion labels need depth"):
        dataclasses.replace(bare, motion=np.zeros(0, np.uint8))
    with pytest.raises(SampleError, match="missing member") as info:  # v2 names only
        decode({("K.npy" if n == "k.npy" else n): v for n, v in members.items()}, key=sample.key)
    assert info.value.member == "k.npy"


def _v1(sample: TripletSample) -> TripletSample:
    import dataclasses

    return dataclasses.replace(sample, meta=dataclasses.replace(sample.meta, schema_version=1))


def test_v1_samples_keep_reading_and_re_encode_byte_for_byte() -> None:
    """A v1 shard's sample: ``K.npy``, schema_version 1, depth and poses required."""
    import dataclasses

    old = _v1(make_sample(8))
    members = encode(old)
    assert "K.npy" in members and "k.npy" not in members
    assert b'"schema_version":1' in members["meta.json"]
    back = decode(members, key=old.key)
    _assert_same_sample(old, back)
    assert encode(back) == members
    del members["depth.npy.zst"]
    with pytest.raises(SampleError, match="missing member") as info:
        decode(members, key=old.key)
    assert info.value.member == "depth.npy.zst"
    with pytest.raises(SampleError, match="schema_version 1 needs depth.npy.zst and poses.npy"):
        dataclasses.replace(old, depth=None, motion=None)


def test_v1_shard_read_through_webdataset_decodes(tmp_path) -> None:
    """webdataset.WebDataset hands a v1 shard's ``K.npy`` over as ``k.npy``; decode reads it as K."""
    import webdataset as wds

    from dynamo_depth.shards.writer import ShardWriter

    old = _v1(make_sample(7))
    with ShardWriter(str(tmp_path), prefix="x", max_count=10, max_bytes=2**30) as writer:
        writer.write(old.key, encode(old))
    (item,) = list(wds.WebDataset(str(tmp_path / "x-000000.tar"), shardshuffle=False))
    assert "k.npy" in item and "K.npy" not in item
    members = {k: v for k, v in item.items() if k not in ("__url__", "__local_path__")}
    _assert_same_sample(old, decode(members))


def test_a_v1_shard_set_trains_through_the_loader_next_to_v2(tmp_path) -> None:
    """Shards written before schema v2 (K.npy, manifest schema_version 1) load and batch as before."""
    from dynamo_depth.data import make_loader
    from dynamo_depth.shards.manifest import Manifest, save_manifest
    from dynamo_depth.shards.writer import ShardWriter

    for version in (1, 2):
        samples = [make_sample(i) for i in range(4)]
        if version == 1:
            samples = [_v1(s) for s in samples]
        root = tmp_path / f"v{version}"
        with ShardWriter(str(root), prefix="kitti-train", max_count=2) as writer:
            for sample in samples:
                writer.write(sample.key, encode(sample))
        save_manifest(Manifest(dataset="kitti", split="train", builder="tests", builder_version="0",
                               shards=tuple(writer.close()), schema_version=version), str(root))
        (batch,) = list(make_loader(str(root), batch_size=4, num_workers=0, shuffle=False, scales=1))
        assert sorted(batch["keys"]) == sorted(s.key for s in samples)
        np.testing.assert_array_equal(batch["K"][:, 0, :3, :3].numpy(), np.stack([s.K for s in samples]))
        assert batch["has_depth"].all() and batch["has_poses"].all()
