"""Manifests (canonical, strict) and ``verify`` (every kind of damage named, exit codes)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from dynamo_depth.shards import storage
from dynamo_depth.shards.manifest import (
    FailedUnit,
    Manifest,
    UnitRecord,
    canonical_json,
    find_manifest,
    load_manifest,
    save_manifest,
)
from dynamo_depth.shards.schema import encode
from dynamo_depth.shards.verify import Problem, main, verify_shards
from dynamo_depth.shards.writer import ShardWriter
from tests.samples import make_sample

REPO = Path(__file__).resolve().parents[1]
ENCODED = [(s.key, encode(s)) for s in (make_sample(i, n_points=5) for i in range(9))]


def _build(out: str, *, samples=ENCODED, max_count: int = 3) -> Manifest:
    """Write shards + manifest.json into ``out`` like a builder does; return the manifest."""
    with ShardWriter(out, prefix="kitti-train", max_count=max_count) as writer:
        for key, members in samples:
            writer.write(key, members)
    manifest = Manifest(
        dataset="kitti", split="train", builder="builders.kitti", builder_version="1.0.0",
        options={"size": (192, 640), "jpeg_quality": 95}, shards=tuple(writer.close()),
        units=(UnitRecord(name="2011_09_26_drive_0009_sync/image_02", samples=len(samples), skipped=2,
                          notes=("gap after frame 5",)),),
        failed=(FailedUnit(unit="2011_09_26_drive_0011_sync/image_02", error="file oxts/data/3.txt: 29 values, need 30"),),
    )
    save_manifest(manifest, out)
    return manifest


def test_manifest_round_trip_is_canonical(tmp_path: Path) -> None:
    manifest = _build(str(tmp_path))
    path = tmp_path / "manifest.json"
    raw = path.read_bytes()
    assert raw.endswith(b"}\n") and raw == canonical_json(manifest)
    obj = json.loads(raw)
    assert raw.decode() == json.dumps(obj, sort_keys=True, indent=1) + "\n"
    assert obj["manifest_version"] == 2 and obj["schema_version"] == 2 and obj["options"]["size"] == [192, 640]
    assert [s["count"] for s in obj["shards"]] == [3, 3, 3]
    # A sample's length: per member a 512-byte header plus its data padded to 512 bytes; its sha256 is
    # that of those span bytes.
    length = sum(512 + (len(d) + 511) // 512 * 512 for d in ENCODED[3][1].values())
    span_bytes = (tmp_path / "kitti-train-000001.tar").read_bytes()[:length]
    assert obj["shards"][1]["samples"][0] == {"key": ENCODED[3][0], "offset": 0, "length": length,
                                              "sha256": hashlib.sha256(span_bytes).hexdigest()}
    loaded = load_manifest(str(tmp_path))
    assert load_manifest(str(path)) == loaded
    assert loaded.shards == manifest.shards and loaded.units == manifest.units and loaded.failed == manifest.failed
    assert loaded.num_samples == 9
    save_manifest(loaded, str(tmp_path / "again.json"))
    assert (tmp_path / "again.json").read_bytes() == raw
    # A second identical build gives identical manifest bytes.
    _build(str(tmp_path / "twin"))
    assert (tmp_path / "twin" / "manifest.json").read_bytes() == raw
    assert sorted(os.listdir(tmp_path / "twin")) == [f"kitti-train-00000{i}.tar" for i in range(3)] + ["manifest.json"]


def test_find_manifest_accepts_folder_or_file() -> None:
    assert find_manifest("/data/kitti") == "/data/kitti/manifest.json"
    assert find_manifest("/data/kitti/manifest.json") == "/data/kitti/manifest.json"
    assert find_manifest("s3://bucket/kitti/") == "s3://bucket/kitti/manifest.json"
    assert find_manifest("s3://bucket/ref/kitti-train.json") == "s3://bucket/ref/kitti-train.json"


def _edit_manifest(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize("name", ["/etc/passwd.tar", "../kitti-train-000000.tar", "sub/kitti.tar",
                                  "sub\\kitti.tar", "..", "C:kitti.tar"])
def test_unsafe_shard_names_rejected(tmp_path: Path, name: str) -> None:
    _build(str(tmp_path))
    path = tmp_path / "manifest.json"
    _edit_manifest(path, lambda obj: obj["shards"][0].__setitem__("name", name))
    with pytest.raises(ValueError, match=f"manifest {path}.*shard name"):
        load_manifest(str(path))


@pytest.mark.parametrize("edit, message", [
    (lambda o: o.__setitem__("comment", "hi"), r"unknown fields \['comment'\]"),
    (lambda o: o.pop("units"), r"missing fields \['units'\]"),
    (lambda o: o.__setitem__("manifest_version", 3), "manifest_version 3; this reader knows 1 and 2"),
    (lambda o: o.__setitem__("manifest_version", 1), "manifest_version 1: samples must not have a sha256"),
    (lambda o: o["shards"][0]["samples"][1].pop("sha256"), "samples mix manifest versions: 8 of 9"),
    (lambda o: o["shards"][0]["samples"][1].__setitem__("sha256", "ABC"), "sha256 'ABC' must be 64"),
    (lambda o: o["shards"][0].__setitem__("count", 4), "count 4 must equal the number of samples listed"),
    (lambda o: o["shards"][0].__setitem__("sha256", "abc"), "sha256 'abc'"),
    (lambda o: o["shards"][0].__setitem__("first_key", "x_y_000000"), "first_key/last_key"),
    (lambda o: o["shards"][1].__setitem__("name", o["shards"][0]["name"]), "shard names repeat"),
    (lambda o: o["shards"][0]["samples"][1].__setitem__("offset", 512), "overlaps"),
    (lambda o: o["shards"][0].__setitem__("bytes", 1024), "past the shard size"),
    (lambda o: o["units"][0].__setitem__("samples", -1), "non-negative"),
])
def test_malformed_manifest_rejected_naming_it(tmp_path: Path, edit, message: str) -> None:
    _build(str(tmp_path))
    path = tmp_path / "manifest.json"
    _edit_manifest(path, edit)
    with pytest.raises(ValueError, match=message) as info:
        load_manifest(str(tmp_path))
    assert str(path) in str(info.value)


def test_broken_json_is_a_named_error(tmp_path: Path) -> None:
    _build(str(tmp_path))
    path = tmp_path / "manifest.json"
    path.write_text(path.read_text()[:-5])
    with pytest.raises(ValueError, match=f"manifest {path}: not valid UTF-8 JSON"):
        load_manifest(str(path))
    with pytest.raises(FileNotFoundError, match="manifest .*elsewhere.*not found"):
        load_manifest(str(tmp_path / "elsewhere"))


def test_clean_set_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _build(str(tmp_path))
    assert verify_shards(str(tmp_path)) == []
    assert main([str(tmp_path / "manifest.json")]) == 0
    assert capsys.readouterr().out == "verify: 3 shards, 0 problems: OK\n"


def test_every_kind_of_damage_is_named(tmp_path: Path) -> None:
    """Flipped byte, truncation, deletion, an extra shard, a replaced shard with fewer samples."""
    out = tmp_path / "set"
    manifest = _build(str(out), max_count=2)  # 5 shards: 2, 2, 2, 2, 1 samples
    names = [s.name for s in manifest.shards]
    data = bytearray((out / names[0]).read_bytes())
    data[700] ^= 0x01
    (out / names[0]).write_bytes(bytes(data))
    (out / names[1]).write_bytes((out / names[1]).read_bytes()[:-1024])
    (out / names[2]).unlink()
    shutil.copy(out / names[4], out / "kitti-train-000099.tar")
    (out / "kitti-train-000005.tar.tmp").write_bytes(b"leftover of a killed build: ignored")
    other = _build(str(tmp_path / "other"), samples=ENCODED[6:9], max_count=3)  # one shard, 3 samples
    shutil.copy(tmp_path / "other" / other.shards[0].name, out / names[3])
    problems = verify_shards(str(out))
    assert [(p.kind, p.shard) for p in problems] == [
        ("altered", names[0]), ("sample", names[0]), ("truncated", names[1]), ("missing", names[2]),
        ("altered", names[3]), ("count", names[3]), ("extra", "kitti-train-000099.tar")]
    first = manifest.shards[0].samples[0]  # byte 700 lies in the first sample; the replaced shard's
    assert (problems[1].key, problems[1].offset) == (first.key, 0)  # first two samples are the same bytes
    assert str(problems[1]).startswith(f"SAMPLE {names[0]}: {first.key!r} at byte offset 0 ({first.length} bytes): "
                                       f"sha256 ") and problems[1].detail.endswith(f"manifest says {first.sha256}")
    assert problems[2].detail == f"{manifest.shards[1].bytes - 1024} bytes, manifest says {manifest.shards[1].bytes}"
    assert problems[5].detail == "3 samples in the tar, manifest says 2"
    assert str(problems[3]).startswith(f"MISSING {names[2]}: ")
    proc = subprocess.run([sys.executable, "-m", "dynamo_depth", "verify", str(out)], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [str(p) for p in problems] + ["verify: 5 shards, 7 problems: FAILED"]


def test_altered_and_cut_samples_are_named_with_v1_and_v2_references(tmp_path: Path) -> None:
    """A flipped byte names its sample (key, offset) from the manifest's digests, or with a version-1
    reference from the same spans beside the shards; a truncation names the samples it cut off."""
    out = tmp_path / "set"
    manifest = _build(str(out))  # 3 shards of 3 samples
    record = manifest.shards[1]
    victim = record.samples[2]
    data = bytearray((out / record.name).read_bytes())
    data[victim.offset + 600] ^= 0x04
    (out / record.name).write_bytes(bytes(data))
    expected = Problem("sample", record.name, f"{victim.key!r} at byte offset {victim.offset} ({victim.length} "
                       f"bytes): sha256 {hashlib.sha256(bytes(data[victim.offset:victim.offset + victim.length])).hexdigest()}, "
                       f"manifest says {victim.sha256}", key=victim.key, offset=victim.offset)
    assert verify_shards(str(out))[1:] == [expected]
    v1 = _strip_digests(manifest)
    assert v1.manifest_version == 1
    save_manifest(v1, str(tmp_path / "v1.json"))
    assert load_manifest(str(tmp_path / "v1.json")) == v1  # version 1 still loads
    assert verify_shards(str(out), reference=str(tmp_path / "v1.json"))[1:] == [expected]  # digests from beside
    save_manifest(v1, str(out))  # no digests anywhere: only the shard is named
    assert [p.kind for p in verify_shards(str(out))] == ["altered"]
    (out / record.name).write_bytes(bytes(data[:victim.offset + 1024]))
    assert verify_shards(str(out), reference=str(tmp_path / "v1.json")) == [
        Problem("truncated", record.name, f"{victim.offset + 1024} bytes, manifest says {record.bytes}"),
        Problem("sample", record.name, f"{victim.key!r} at byte offset {victim.offset} ({victim.length} bytes): "
                f"cut off, the shard ends at byte {victim.offset + 1024}", key=victim.key, offset=victim.offset)]


def _strip_digests(manifest: Manifest) -> Manifest:
    """The version-1 form of ``manifest`` (what builds wrote before per-sample digests)."""
    return manifest.with_shards(tuple(
        replace(s, samples=tuple(replace(span, sha256=None) for span in s.samples)) for s in manifest.shards))


def test_reference_manifest_count_mismatch_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _build(str(tmp_path / "set"))
    reference = tmp_path / "kitti-train.json"
    save_manifest(manifest, str(reference))
    assert main([str(tmp_path / "set"), "--reference", str(reference)]) == 0
    capsys.readouterr()
    # The manifest beside the shards claims 2 samples in shard 1 (its tar is unchanged): a count mismatch.
    first = manifest.shards[1]
    short = replace(first, count=2, last_key=first.samples[1].key, samples=first.samples[:2])
    save_manifest(manifest.with_shards((manifest.shards[0], short, manifest.shards[2])), str(tmp_path / "set"))
    problems = verify_shards(str(tmp_path / "set"), reference=str(reference))
    assert problems == [Problem("count", first.name, "manifest beside the shards says 2 samples, reference says 3")]
    assert main([str(tmp_path / "set"), "--reference", str(reference)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "verify: 3 shards, 1 problems: FAILED"
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "manifest" in capsys.readouterr().err


def test_cli_help_and_unreadable_manifest(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "dynamo_depth", "verify", "--help"], cwd=REPO, text=True,
                          capture_output=True, env=env, timeout=60)
    assert proc.returncode == 0 and "--reference" in proc.stdout and "exit 1" in proc.stdout
    (tmp_path / "manifest.json").write_text('{"shards": [{"name": "../../x.tar"}]}')
    assert main([str(tmp_path)]) == 2


def test_verify_on_s3(tmp_path: Path, s3_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = f"{s3_bucket}/kitti/train"
    manifest = _build(out)
    assert storage.listdir(out) == [s.name for s in manifest.shards] + ["manifest.json"]
    assert load_manifest(out) == manifest
    assert main([out]) == 0
    storage.remove(storage.join(out, manifest.shards[1].name))
    storage.write_bytes_atomic(storage.join(out, "kitti-train-000007.tar"), b"\x00" * 1024)
    problems = verify_shards(storage.join(out, "manifest.json"))
    assert [(p.kind, p.shard) for p in problems] == [("missing", manifest.shards[1].name),
                                                     ("extra", "kitti-train-000007.tar")]
    capsys.readouterr()
    assert main([out]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "verify: 3 shards, 2 problems: FAILED"


def test_manifest_of_another_schema_version_is_rejected(tmp_path: Path) -> None:
    manifest = Manifest(dataset="kitti", split="train", builder="test", builder_version="0")
    obj = json.loads(canonical_json(manifest))
    obj["schema_version"] = 3
    (tmp_path / "manifest.json").write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=r"manifest.json: schema_version 3; this reader knows \(1, 2\)"):
        load_manifest(str(tmp_path))
    obj["schema_version"] = 1  # a build of schema v1 samples (K.npy) still reads
    (tmp_path / "manifest.json").write_text(json.dumps(obj))
    assert load_manifest(str(tmp_path)).schema_version == 1
