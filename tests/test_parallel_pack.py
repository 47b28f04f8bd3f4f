"""The pack step: shards planned from the unit sidecars and written one per task give the bytes of
streaming every staged sample through ONE ``ShardWriter`` (the pack before #27), for any layout, locally,
on S3 and from Ray tasks; a pack killed after some shards resumes with the others only; a staged sample
that changed is named, and nothing partial is left under a final name.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from builders import packing
from builders.runner import BuilderSpec, Unit, build
from dynamo_depth.shards import storage
from dynamo_depth.shards.reader import iter_shard
from dynamo_depth.shards.schema import EDGE_KEY, is_edge_meta_json
from dynamo_depth.shards.writer import ShardWriter
from tests import s3server
from tests.s3server import BUCKET, SeaweedS3
from tests.samples import make_sample

s3_server, s3_env = s3server.s3_server, s3server.s3_env  # the fixtures, used by name
UNITS, PER_UNIT = 3, 5


def _units(raw_root: str, options: Mapping[str, Any]) -> list[Unit]:
    return [Unit(name=f"drive{i}/image_02", params={"first": 10 * i}) for i in range(UNITS)]


def _build_unit(raw_root: str, unit: Unit, options: Mapping[str, Any]) -> Iterator[Any]:
    first = unit.params["first"]
    for i in range(first, first + PER_UNIT):
        sample = make_sample(i, n_points=7 + 37 * (i % 4))  # sizes differ: the byte limit cuts unevenly
        if i == first:  # the first sample of each unit is an edge sample (split-file builds)
            meta = dataclasses.replace(sample.meta, extra={**sample.meta.extra, EDGE_KEY: ["prev"]})
            sample = dataclasses.replace(sample, meta=meta)
        yield sample


SPEC = BuilderSpec(name="toy", dataset="kitti", version="0", list_units=_units, build_unit=_build_unit)


def _build(out: str, **kw: Any):
    kw = {"split": "train", "options": {}, "workers": 0, "show_progress": False, **kw}
    return build(SPEC, "/raw", out, **kw)


def _one_writer_pack(staging: Path, out: Path, *, max_count: int, max_bytes: int) -> list[dict]:
    """The pack before #27: every staged sample, in unit order, streamed through one ShardWriter."""
    with ShardWriter(str(out), prefix="kitti-train", max_count=max_count, max_bytes=max_bytes) as writer:
        for unit in sorted(packing.staging_name(u.name) for u in _units("", {})):
            for key, members in iter_shard(str(staging / f"{unit}-000000.tar")):
                writer.write(key, members, edge=is_edge_meta_json(members["meta.json"], key=key))
    return [r.to_json() for r in writer.close()]


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.mark.parametrize("max_count,max_bytes_samples", [(4, None), (1, None), (2000, None), (100, 3), (3, 2)])
def test_packed_bytes_equal_one_writer(tmp_path: Path, max_count: int, max_bytes_samples: int | None) -> None:
    probe = _build(str(tmp_path / "probe"))
    sizes = [s.length for shard in probe.manifest.shards for s in shard.samples]
    # a byte limit of about max_bytes_samples average samples (plus the end-of-archive blocks)
    max_bytes = 2**40 if max_bytes_samples is None else max_bytes_samples * sum(sizes) // len(sizes) + 1024
    report = _build(str(tmp_path / "out"), max_count=max_count, max_bytes=max_bytes, keep_staging=True)
    expected = _one_writer_pack(tmp_path / "out" / "_staging", tmp_path / "one", max_count=max_count,
                                max_bytes=max_bytes)
    assert [s.to_json() for s in report.manifest.shards] == expected
    assert _tars(tmp_path / "out") == _tars(tmp_path / "one") and len(expected) >= (1 if max_count == 2000 else 3)
    assert sum(s.edge for shard in report.manifest.shards for s in shard.samples) == UNITS
    assert not list((tmp_path / "out").rglob("*.tmp"))


class _Interrupt(Exception):
    pass


def _interrupted_pack(monkeypatch: pytest.MonkeyPatch, out: str, *, after: int, **kw: Any) -> list[str]:
    """Build with a pack that dies when its shard number ``after`` starts; the shards it packed before."""
    packed: list[str] = []
    real = packing.pack_shard

    def dying(shard: packing.PlannedShard, out_url: str):
        if len(packed) == after:
            raise _Interrupt(shard.name)
        packed.append(shard.name)
        return real(shard, out_url)

    monkeypatch.setattr(packing, "pack_shard", dying)
    with pytest.raises(_Interrupt):
        _build(out, **kw)
    monkeypatch.setattr(packing, "pack_shard", real)
    return packed


def test_killed_pack_resumes_with_the_other_shards_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = _build(str(tmp_path / "fresh"), max_count=4)
    assert [s.count for s in fresh.manifest.shards] == [4, 4, 4, 3]
    out = tmp_path / "out"
    assert _interrupted_pack(monkeypatch, str(out), after=2, max_count=4) == ["kitti-train-000000.tar",
                                                                             "kitti-train-000001.tar"]
    state = json.loads((out / "_staging" / packing.PACK_STATE).read_bytes())
    assert [s["name"] for s in state["shards"]] == ["kitti-train-000000.tar", "kitti-train-000001.tar"]
    assert sorted(p.name for p in out.iterdir()) == ["_staging", "kitti-train-000000.tar", "kitti-train-000001.tar"]
    (out / "kitti-train-000001.tar").write_bytes(b"torn")  # a committed shard damaged since: packed again
    packed: list[str] = []
    real = packing.pack_shard
    monkeypatch.setattr(packing, "pack_shard", lambda shard, url: (packed.append(shard.name), real(shard, url))[1])
    report = _build(str(out), max_count=4)
    assert packed == ["kitti-train-000001.tar", "kitti-train-000002.tar", "kitti-train-000003.tar"]
    assert report.built == () and len(report.reused) == UNITS
    assert _tars(out) == _tars(tmp_path / "fresh")
    for name in ("manifest.index", "manifest.json"):  # the resumed build's sidecar is the fresh one's
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    assert not (out / "_staging").exists()


def test_changed_staged_sample_is_named_and_nothing_partial_is_left(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    _interrupted_pack(monkeypatch, str(out), after=0, max_count=4)
    staged = out / "_staging" / "drive1-image_02-000000.tar"
    data = bytearray(staged.read_bytes())
    data[700] ^= 0xFF  # inside the first sample's first member data
    staged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{staged}: sample .* differs from its sidecar"):
        _build(str(out), max_count=4)
    assert sorted(p.name for p in out.glob("*.tar*")) == ["kitti-train-000000.tar"]  # the shard before it
    assert not list(out.rglob("*.tmp")) and not (out / "manifest.json").exists()


@pytest.mark.parametrize("executor", ["processes", "ray"])
def test_pack_tasks_write_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executor: str) -> None:
    if executor == "ray":
        pytest.importorskip("ray")
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _build(str(tmp_path / "fresh"), max_count=2)
    out = tmp_path / "out"
    _interrupted_pack(monkeypatch, str(out), after=1, max_count=2)  # staged in-process, one shard packed
    # the toy units need no worker: the 7 shards left do
    report = _build(str(out), max_count=2, workers=2, executor=executor)
    assert len(report.manifest.shards) == 8 and report.built == ()
    assert _tars(out) == _tars(tmp_path / "fresh")
    assert (out / "manifest.json").read_bytes() == (tmp_path / "fresh" / "manifest.json").read_bytes()


def test_s3_pack_equals_local(s3_env: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = _build(str(tmp_path / "local"), max_count=4)
    url = f"s3://{BUCKET}/pack-test"
    packed = _interrupted_pack(monkeypatch, url, after=1, max_count=4)
    assert packed == ["kitti-train-000000.tar"]
    report = _build(url, max_count=4)  # resumed on S3
    assert [s.to_json() for s in report.manifest.shards] == [s.to_json() for s in local.manifest.shards]
    for name, data in _tars(tmp_path / "local").items():
        assert storage.read_bytes(f"{url}/{name}") == data, name
    for name in ("manifest.index", "manifest.json"):
        assert storage.read_bytes(f"{url}/{name}") == (tmp_path / "local" / name).read_bytes(), name
    assert not [n for n in storage.listdir(f"{url}/_staging") if n.endswith((".tar", ".json"))]  # staging removed
