"""The streaming loader against a real S3 server (SeaweedFS on 127.0.0.1): split, cache, retries, integrity."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from dynamo_depth.data import RetryPolicy, ShardIntegrityError, make_dataset, make_loader
from dynamo_depth.data.sources import RetryingReader, ShardStore, load_index
from tests import s3server
from tests.s3server import BUCKET, SeaweedS3
from tests.test_data_local import check_exactly_once, write_dataset

_PREFIXES = itertools.count()
s3_server, s3_env = s3server.s3_server, s3server.s3_env  # the fixtures, used by name
FAST_RETRY = RetryPolicy(max_attempts=40, base_delay_s=0.1, max_delay_s=0.5)


def upload_dataset(server: SeaweedS3, tmp: Path, *, n: int = 17, per_shard: int = 4) -> tuple[str, set[str]]:
    """Write shards locally, PUT them under a fresh prefix; returns (s3 URL, keys)."""
    samples = write_dataset(tmp, n=n, per_shard=per_shard)
    prefix = f"data{next(_PREFIXES)}"
    client = server.client()
    for path in sorted(tmp.iterdir()):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
    return f"s3://{BUCKET}/{prefix}", set(samples)


@pytest.fixture
def remote(s3_env: SeaweedS3, tmp_path: Path) -> tuple[str, set[str]]:
    return upload_dataset(s3_env, tmp_path / "local")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_s3_exactly_once_and_equal_batches_for_any_worker_count(remote, world_size: int) -> None:
    url, keys = remote
    results = [check_exactly_once(url, keys, world_size=world_size, num_workers=nw) for nw in (0, 1, 2)]
    assert results[0] == results[1] == results[2]


def test_s3_and_local_give_the_same_batches(remote, tmp_path: Path) -> None:
    url, _ = remote
    from_s3 = list(make_loader(url, batch_size=4, num_workers=0, seed=9, augment=True))
    from_disk = list(make_loader(str(tmp_path / "local"), batch_size=4, num_workers=0, seed=9, augment=True))
    assert [b["keys"] for b in from_s3] == [b["keys"] for b in from_disk]
    for a, b in zip(from_s3, from_disk, strict=True):
        assert all(bool((a[k] == b[k]).all()) for k in ("images", "images_aug", "K", "inv_K", "depth_points"))


def test_s3_cache_serves_shards_once_fetched(remote, s3_env: SeaweedS3, tmp_path: Path) -> None:
    url, keys = remote
    cache = tmp_path / "cache"
    first = [s["__key__"] for s in make_dataset(url, decode=False, cache_dir=cache)]
    _, entries = load_index(url)
    assert sorted(p.name for p in cache.glob("*.tar")) == sorted(f"{e.sha256}.tar" for e in entries)
    client = s3_env.client()
    prefix = url.split(f"{BUCKET}/", 1)[1]
    for entry in entries:  # the shards are gone from the server: only the cache can serve them
        client.delete_object(Bucket=BUCKET, Key=f"{prefix}/{entry.name}")
    second = [s["__key__"] for s in make_dataset(url, decode=False, cache_dir=cache)]
    assert first == second and set(first) == keys
    small = tmp_path / "small"
    with pytest.raises(FileNotFoundError, match="not found"):
        list(make_dataset(url, decode=False, cache_dir=small, retry=FAST_RETRY))


def test_range_read_resumes_at_the_broken_byte_offset(remote) -> None:
    url, _ = remote
    base, entries = load_index(url)
    store, entry = ShardStore(base), entries[0]
    opened: list[int] = []

    class Breaking:
        def __init__(self, body, fail: bool) -> None:
            self.body, self.fail, self.count = body, fail, 0

        def read(self, n: int) -> bytes:
            if self.fail and self.count >= 3000:
                raise ConnectionResetError("connection reset by peer")
            data = self.body.read(min(n, 1000))
            self.count += len(data)
            return data

        def close(self) -> None:
            self.body.close()

    def open_at(offset: int) -> Breaking:
        opened.append(offset)
        return Breaking(store.open_at(entry, offset), fail=len(opened) == 1)

    reader = RetryingReader(open_at, size=entry.bytes, name=entry.name, retry=FAST_RETRY)
    data = b"".join(iter(lambda: reader.read(1 << 16), b""))
    whole = ShardStore(base).open_at(entry, 0).read()
    assert data == whole and len(data) == entry.bytes and opened == [0, 3000]


def test_epoch_survives_a_server_restart(remote, s3_env: SeaweedS3) -> None:
    url, keys = remote
    loader = make_loader(url, batch_size=2, num_workers=0, shuffle_buffer=2, retry=FAST_RETRY)
    expected = loader.plan.rank_keys()
    got: list[str] = []
    restart = None
    for batch in loader:
        got += batch["keys"]
        if restart is None:  # after the first batch: the server goes away for ~2 s, mid-epoch
            s3_env.stop()
            stopped_at = time.monotonic()
            restart = threading.Thread(target=lambda: (time.sleep(2.0), s3_env.start()))
            restart.start()
    restart.join()
    assert got == expected and set(got) == keys
    events = loader.dataset.store.retry_events
    assert events and all(name.endswith(".tar") for name, _, _ in events)
    assert time.monotonic() - stopped_at >= 2.0


def test_shard_altered_on_the_server_is_named(remote, s3_env: SeaweedS3) -> None:
    url, _ = remote
    _, entries = load_index(url)
    victim = entries[2]
    client = s3_env.client()
    key = f"{url.split(f'{BUCKET}/', 1)[1]}/{victim.name}"
    data = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[600] ^= 0x01
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    with pytest.raises(ShardIntegrityError, match=f"{victim.name}.*sha256"):
        list(make_dataset(url, decode=False))
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data[:1024]))
    with pytest.raises(ShardIntegrityError, match=f"{victim.name}.*1024 bytes on the server"):
        list(make_dataset(url, decode=False))


def test_ranged_read_of_sample_spans_resumes_inside_the_range(remote, tmp_path: Path) -> None:
    url, _ = remote
    base, entries = load_index(url)
    entry = entries[1]
    offset = entry.spans[1][0]
    length = entry.spans[1][1] + entry.spans[2][1]  # two touching spans: one ranged GET
    local = (tmp_path / "local" / entry.name).read_bytes()
    opened: list[tuple[int, int | None]] = []

    class BreakingStore(ShardStore):
        def open_at(self, e, off, end=None):  # type: ignore[no-untyped-def]
            opened.append((off, end))
            body = super().open_at(e, off, end)
            if len(opened) > 1:
                return body

            class Breaking:
                count = 0

                def read(self, n: int) -> bytes:
                    if self.count >= 1024:
                        raise ConnectionResetError("connection reset by peer")
                    data = body.read(min(n, 512))
                    self.count += len(data)
                    return data

                def close(self) -> None:
                    body.close()

            return Breaking()

    store = BreakingStore(base, retry=FAST_RETRY)
    assert store.read_range(entry, offset=offset, length=length) == local[offset:offset + length]
    assert opened == [(offset, offset + length), (offset + 1024, offset + length)]
    assert store.retry_events and store.retry_events[0][:2] == (entry.name, offset + 1024)  # absolute offset
    with pytest.raises(ShardIntegrityError, match=f"{entry.name}.*outside"):
        store.read_range(entry, offset=entry.bytes - 512, length=1024)


def test_sample_altered_on_the_server_is_named_and_the_shard_serves_the_other_ranks(
        remote, s3_env: SeaweedS3, tmp_path: Path) -> None:
    """17 samples in shards of 4, shuffle off, 3 ranks of 5: rank 0 reads sample #0 of shard 1, rank 1 its
    #1-#3. With #3 altered on the server, rank 1 fails naming it (key, shard, offset): through the owner's
    stream (one worker) and through a ranged read (two workers: #3 is worker 1's). Rank 0 reads the
    shard's #0; its owner, copying the shard into the cache, finds the shard differs and does not cache it."""
    url, _ = remote
    _, entries = load_index(url)
    entry = entries[1]
    offset = entry.spans[3][0]
    client = s3_env.client()
    key = f"{url.split(f'{BUCKET}/', 1)[1]}/{entry.name}"
    data = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[offset + 512 + 40] ^= 0x02
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    kw = {"batch_size": 2, "shuffle": False, "world_size": 3, "retry": FAST_RETRY}
    for workers in (0, 2):
        with pytest.raises(ShardIntegrityError, match=f"sample '{entry.keys[3]}' .*of shard {entry.name} "
                                                      f".*at byte offset {offset} .*sha256"):
            list(make_loader(url, rank=1, num_workers=workers, **kw))
    cache = tmp_path / "cache"
    loader = make_loader(url, rank=0, num_workers=0, cache_dir=cache, **kw)
    assert [k for b in loader for k in b["keys"]] == loader.plan.rank_keys(0) == [*entries[0].keys, entry.keys[0]]
    assert sorted(p.name for p in cache.glob("*.tar")) == [f"{entries[0].sha256}.tar"]
