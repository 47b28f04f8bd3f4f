"""Shard writer/reader: byte reproducibility, rollover, spans, atomic commits, crash recovery, S3."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import webdataset

from dynamo_depth.shards import storage
from dynamo_depth.shards.reader import iter_shard, parse_sample_bytes, read_sample, sha256_of
from dynamo_depth.shards.records import ShardRecord, shard_name
from dynamo_depth.shards.schema import decode, encode
from dynamo_depth.shards.writer import ShardWriter
from tests.samples import make_sample

REPO = Path(__file__).resolve().parents[1]
PREFIX = "kitti-train"
SAMPLES = [make_sample(i, n_points=4 + i) for i in range(9)]
ENCODED = [(s.key, encode(s)) for s in SAMPLES]

# Writes the same 9 samples as ENCODED, 3 per shard, sleeping argv[2] s after each sample.
WRITER_SCRIPT = """
import sys, time
from dynamo_depth.shards.schema import encode
from dynamo_depth.shards.writer import ShardWriter
from tests.samples import make_sample
out, delay = sys.argv[1], float(sys.argv[2])
def on_shard(record):
    print("COMMITTED", record.name, record.sha256, flush=True)
with ShardWriter(out, prefix="kitti-train", max_count=3, on_shard=on_shard) as writer:
    for i in range(9):
        sample = make_sample(i, n_points=4 + i)
        writer.write(sample.key, encode(sample))
        time.sleep(delay)
"""


def _write(out: str, *, max_count: int = 3, **kw) -> list[ShardRecord]:
    with ShardWriter(out, prefix=PREFIX, max_count=max_count, **kw) as writer:
        for key, members in ENCODED:
            writer.write(key, members)
    return writer.close()


def _member_size(data: bytes) -> int:
    return 512 + (len(data) + 511) // 512 * 512


def _run_writer(out: Path, *, delay: float, env_extra: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    return subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(out), str(delay)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)


def test_same_input_same_bytes_and_fixed_headers(tmp_path: Path) -> None:
    first, second = _write(str(tmp_path / "a")), _write(str(tmp_path / "b"))
    assert [r.name for r in first] == [shard_name(PREFIX, i) for i in range(3)] == [
        "kitti-train-000000.tar", "kitti-train-000001.tar", "kitti-train-000002.tar"]
    assert first == second
    for record in first:
        a, b = (tmp_path / "a" / record.name).read_bytes(), (tmp_path / "b" / record.name).read_bytes()
        assert a == b and hashlib.sha256(a).hexdigest() == record.sha256 and len(a) == record.bytes
        assert sha256_of(str(tmp_path / "a" / record.name), chunk=1000) == (record.bytes, record.sha256)
    with tarfile.open(tmp_path / "a" / first[0].name) as tar:
        infos = tar.getmembers()
    assert all((i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode, i.type) == (0, 0, 0, "", "", 0o444, tarfile.REGTYPE)
               for i in infos)
    # Members of a sample in sorted name order; samples in write order.
    expected = [f"{key}.{m}" for key, members in ENCODED[:3] for m in sorted(members)]
    assert [i.name for i in infos] == expected


def test_other_process_with_other_clock_settings_gives_same_hashes(tmp_path: Path) -> None:
    local = _write(str(tmp_path / "here"))
    proc = _run_writer(tmp_path / "there", delay=0.0,
                       env_extra={"TZ": "Pacific/Kiritimati", "SOURCE_DATE_EPOCH": "86400", "LC_ALL": "C"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert [line.split()[1:] for line in out.splitlines()] == [[r.name, r.sha256] for r in local]


def test_rollover_by_count_and_bytes_with_exact_spans(tmp_path: Path) -> None:
    sizes = [sum(_member_size(d) for d in members.values()) for _, members in ENCODED]
    by_count = _write(str(tmp_path / "count"), max_count=4, start_index=7)
    assert [(r.name, r.count) for r in by_count] == [
        ("kitti-train-000007.tar", 4), ("kitti-train-000008.tar", 4), ("kitti-train-000009.tar", 1)]
    # Room for exactly samples 0 and 1 (+ 1024 end-of-archive bytes); sample 2 starts a new shard.
    limit = sizes[0] + sizes[1] + 1024
    by_bytes = _write(str(tmp_path / "bytes"), max_count=100, max_bytes=limit)
    assert by_bytes[0].count == 2 and by_bytes[0].bytes == limit
    assert sum(r.count for r in by_bytes) == 9 and all(r.bytes <= limit or r.count == 1 for r in by_bytes)
    record = by_count[0]
    assert [(s.offset, s.length) for s in record.samples] == [
        (0, sizes[0]), (sizes[0], sizes[1]), (sizes[0] + sizes[1], sizes[2]), (sum(sizes[:3]), sizes[3])]
    assert record.bytes == sum(sizes[:4]) + 1024 == os.path.getsize(tmp_path / "count" / record.name)
    assert (record.first_key, record.last_key) == (ENCODED[0][0], ENCODED[3][0])


def test_span_bytes_parse_to_exactly_that_sample(tmp_path: Path) -> None:
    records = _write(str(tmp_path))
    index = 0
    for record in records:
        data = (tmp_path / record.name).read_bytes()
        for span in record.samples:
            key, members = ENCODED[index]
            index += 1
            fragment = data[span.offset:span.offset + span.length]
            with tarfile.open(fileobj=io.BytesIO(fragment)) as tar:
                got = {i.name: tar.extractfile(i).read() for i in tar.getmembers()}
            assert got == {f"{key}.{m}": d for m, d in members.items()}
            assert parse_sample_bytes(fragment, key=key) == members
            assert read_sample(str(tmp_path / record.name), span) == members
    assert index == 9


def test_iter_shard_and_webdataset_agree(tmp_path: Path) -> None:
    records = _write(str(tmp_path))
    ours = [item for r in records for item in iter_shard(str(tmp_path / r.name))]
    assert ours == ENCODED
    with open(tmp_path / records[1].name, "rb") as f:
        assert list(iter_shard(f)) == ENCODED[3:6]
    urls = [str(tmp_path / r.name) for r in records]
    theirs = []
    for item in webdataset.WebDataset(urls, shardshuffle=False, empty_check=False):
        theirs.append((item["__key__"], {k: v for k, v in item.items() if not k.startswith("__")}))
    # webdataset 1.0.2 lower-cases member names and has no switch for it: schema v2's names are all lower case.
    assert theirs == ENCODED
    assert [decode(m, key=k).key for k, m in ours] == [s.key for s in SAMPLES]


@pytest.mark.parametrize("cut", ["mid_member", "at_member_boundary", "without_end_marker", "mid_header"])
def test_truncated_shard_raises_naming_it(tmp_path: Path, cut: str) -> None:
    record = _write(str(tmp_path))[0]
    path = tmp_path / record.name
    data = path.read_bytes()
    second = record.samples[1].offset
    size = {"mid_member": second + 700, "at_member_boundary": second,
            "without_end_marker": record.bytes - 1024, "mid_header": second + 100}[cut]
    path.write_bytes(data[:size])
    with pytest.raises(ValueError, match=f"shard .*{record.name}.*truncated"):
        list(iter_shard(str(path)))


def test_writer_rejects_bad_input_and_cleans_up_on_error(tmp_path: Path) -> None:
    key, members = ENCODED[0]
    with pytest.raises(ValueError, match="written twice"):
        with ShardWriter(str(tmp_path), prefix=PREFIX) as writer:
            writer.write(key, members)
            writer.write(key, members)
    assert os.listdir(tmp_path) == []  # the open shard was aborted: no final file, no .tmp
    writer = ShardWriter(str(tmp_path), prefix=PREFIX)
    for bad_key in ("a.b_c_000001", "a/b_c_000001", ""):
        with pytest.raises(ValueError, match="sample key"):
            writer.write(bad_key, members)
    with pytest.raises(ValueError, match="member name"):
        writer.write(key, {"x/y.jpg": b"1"})
    with pytest.raises(ValueError, match="shard name"):
        ShardWriter(str(tmp_path), prefix="../evil")
    assert writer.close() == []


def test_on_shard_runs_after_the_rename(tmp_path: Path) -> None:
    seen = []

    def on_shard(record: ShardRecord) -> None:
        final = tmp_path / record.name
        assert final.exists() and not Path(str(final) + ".tmp").exists()
        seen.append((record.name, sha256_of(str(final))[1] == record.sha256))

    _write(str(tmp_path), on_shard=on_shard)
    assert seen == [(shard_name(PREFIX, i), True) for i in range(3)]


def test_sigkill_mid_shard_leaves_only_committed_shards_and_rerun_matches(tmp_path: Path) -> None:
    reference = _write(str(tmp_path / "reference"))
    out = tmp_path / "killed"
    proc = _run_writer(out, delay=0.3, env_extra={})
    try:
        line = proc.stdout.readline()
        assert line.split()[:2] == ["COMMITTED", "kitti-train-000000.tar"]
        deadline = time.monotonic() + 10
        while not (out / "kitti-train-000001.tar.tmp").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.35)  # one more sample goes into shard 1, which is not yet committed
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(os.listdir(out)) == ["kitti-train-000000.tar", "kitti-train-000001.tar.tmp"]
    assert sha256_of(str(out / "kitti-train-000000.tar"))[1] == reference[0].sha256
    rerun = _write(str(out))
    assert rerun == reference
    assert sorted(os.listdir(out)) == [r.name for r in reference]


def test_s3_shards_equal_local_shards(tmp_path: Path, s3_bucket: str) -> None:
    local = _write(str(tmp_path))
    out = f"{s3_bucket}/kitti/train"
    remote = _write(out)
    assert remote == local
    assert storage.listdir(out) == [r.name for r in local]
    url = storage.join(out, local[2].name)
    assert sha256_of(url) == (local[2].bytes, local[2].sha256)
    assert list(iter_shard(url)) == ENCODED[6:]
    assert read_sample(url, local[2].samples[1]) == ENCODED[7][1]
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("kitti-train-*.tmp"))


def test_storage_helpers_local(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 1000)
    dest = storage.join(str(tmp_path / "out"), "copy.bin")
    storage.put_file(str(src), dest)
    storage.write_bytes_atomic(storage.join(str(tmp_path / "out"), "small.json"), b"{}\n")
    (tmp_path / "out" / "subfolder").mkdir()
    assert storage.listdir(str(tmp_path / "out")) == ["copy.bin", "small.json"]  # files only, no temporaries
    assert storage.read_bytes(dest) == b"abc" * 1000 and storage.size(dest) == 3000
    assert storage.read_range(dest, offset=2998, length=2) == b"bc"
    with pytest.raises(ValueError, match="past the end"):
        storage.read_range(dest, offset=2999, length=2)
    storage.remove(dest)
    storage.remove(dest)  # removing a missing file is fine
    assert not storage.exists(dest) and storage.listdir(str(tmp_path / "nothing")) == []
    assert storage.join("s3://bucket/a/", "b.tar") == "s3://bucket/a/b.tar"
    assert storage.dirname("s3://bucket/a/manifest.json") == "s3://bucket/a"
    assert storage.basename("s3://bucket/a/b.tar") == "b.tar" and not storage.is_local("s3://bucket/a")


def test_ustar_headers_equal_tarfiles_for_any_name_and_size() -> None:
    """The writer's own header builder gives tarfile's ustar bytes (names up to 100 bytes, any size)."""
    import random

    from dynamo_depth.shards.writer import _tarfile_header, _ustar_header

    rng, alphabet, compared = random.Random(0), "abcXYZ019_-é中", 0
    for _ in range(2000):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        member = "".join(rng.choice(alphabet + ".") for _ in range(rng.randint(1, 45)))
        size = rng.choice([0, 1, 511, 512, 513, rng.randint(0, 10**6), rng.randint(0, 8**11 - 1)])
        header = _ustar_header(f"{key}.{member}", size)
        if header is not None:
            assert header == _tarfile_header(key, member, size), (key, member, size)
            compared += 1
    assert compared > 1000
    assert _ustar_header("x" * 101, 1) is None and _ustar_header("x", 8**11) is None  # tarfile's cases
