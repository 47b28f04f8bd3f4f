"""The streaming loader on local shards: plan rules, exactly-once split, resume, batch values, augmentation."""

from __future__ import annotations

import colorsys
import io
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynamo_depth.data import (
    LoaderState,
    RetryPolicy,
    ShardCache,
    ShardIntegrityError,
    augment_params,
    color_jitter,
    make_dataset,
    make_loader,
    read_samples,
)
from dynamo_depth.data.pipeline import augment_samples, batch_samples, decode_samples
from dynamo_depth.data.plan import make_plan, shard_permutation, window_permutation, worker_positions
from dynamo_depth.data.sources import RetryingReader, ShardEntry, ShardStore, load_index
from dynamo_depth.shards import schema
from dynamo_depth.shards.manifest import Manifest, load_manifest, save_manifest
from dynamo_depth.shards.writer import ShardWriter
from tests.samples import make_sample

N_SAMPLES, PER_SHARD, SIZE = 17, 4, 32  # 5 shards (4, 4, 4, 4, 1): nothing divides evenly


def write_dataset(folder: Path, *, n: int = N_SAMPLES, per_shard: int = PER_SHARD) -> dict[str, schema.TripletSample]:
    """``n`` samples of 32x32 images in shards of ``per_shard`` plus ``manifest.json``; returns key -> sample."""
    samples = {}
    with ShardWriter(str(folder), prefix="kitti-train", max_count=per_shard) as writer:
        for i in range(n):
            sample = make_sample(i, width=SIZE, height=SIZE, n_points=2 + i % 3, with_motion=i % 2 == 0)
            writer.write(sample.key, schema.encode(sample))
            samples[sample.key] = sample
    records = writer.close()
    save_manifest(Manifest(dataset="kitti", split="train", builder="tests", builder_version="0",
                           shards=tuple(records)), str(folder))
    return samples


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, schema.TripletSample]]:
    folder = tmp_path_factory.mktemp("shards")
    return folder, write_dataset(folder)


def epoch_keys(url: str, *, world_size: int, num_workers: int, batch_size: int = 2, **kw) -> list[list[list[str]]]:
    """Per rank, the list of batches (each a list of keys) of one epoch."""
    return [[b["keys"] for b in make_loader(url, batch_size=batch_size, num_workers=num_workers, rank=r,
                                            world_size=world_size, **kw)]
            for r in range(world_size)]


def check_exactly_once(url: str, all_keys: set[str], *, world_size: int, num_workers: int) -> list[list[list[str]]]:
    ranks = epoch_keys(url, world_size=world_size, num_workers=num_workers, seed=3)
    plan = make_loader(url, batch_size=2, num_workers=0, world_size=world_size, seed=3).plan
    per_rank = len(all_keys) // world_size
    assert [len(batches) for batches in ranks] == [math.ceil(per_rank / 2)] * world_size
    flat = [k for batches in ranks for batch in batches for k in batch]
    assert len(flat) == len(set(flat)) == world_size * per_rank
    assert len(plan.dropped_keys) == len(all_keys) % world_size
    assert set(flat) | set(plan.dropped_keys) == all_keys and not set(flat) & set(plan.dropped_keys)
    for rank, batches in enumerate(ranks):
        assert [k for b in batches for k in b] == plan.rank_keys(rank)
    return ranks


def test_window_permutation_moves_samples_only_inside_their_window() -> None:
    order = window_permutation(10, window=4, seed=1, epoch=0)
    assert sorted(order[:4]) == [0, 1, 2, 3] and sorted(order[4:8]) == [4, 5, 6, 7] and sorted(order[8:]) == [8, 9]
    assert np.array_equal(order, window_permutation(10, window=4, seed=1, epoch=0))
    assert not np.array_equal(window_permutation(64, window=64, seed=1, epoch=0),
                              window_permutation(64, window=64, seed=1, epoch=1))
    assert sorted(shard_permutation(7, seed=0, epoch=2)) == list(range(7))


def test_worker_positions_take_blocks_round_robin() -> None:
    assert worker_positions(7, start=0, block=2, worker=0, num_workers=2) == [0, 1, 4, 5]
    assert worker_positions(7, start=0, block=2, worker=1, num_workers=2) == [2, 3, 6]
    assert worker_positions(7, start=3, block=2, worker=1, num_workers=3) == [5, 6]
    with pytest.raises(ValueError, match="worker split"):
        worker_positions(7, start=0, block=2, worker=2, num_workers=2)


def test_plan_cuts_equal_rank_streams_and_drops_the_tail() -> None:
    entries = tuple(ShardEntry(f"s-{i:06d}.tar", 1024, None, tuple(f"k_{i}_{j:06d}" for j in range(c)))
                    for i, c in enumerate([3, 1, 3]))
    plans = [make_plan(entries, rank=r, world_size=3, seed=5, epoch=0, shuffle=True, shuffle_buffer=2)
             for r in range(3)]
    everything = plans[0].global_keys()
    assert sorted(everything) == sorted(k for e in entries for k in e.keys)
    assert [p.rank_keys() for p in plans] == [everything[0:2], everything[2:4], everything[4:6]]
    assert plans[0].dropped_keys == everything[6:] and len(everything[6:]) == 1
    with pytest.raises(ValueError, match="rank 3"):
        make_plan(entries, rank=3, world_size=3, seed=0, epoch=0, shuffle=True, shuffle_buffer=2)
    with pytest.raises(ValueError, match="8 ranks"):
        make_plan(entries, rank=0, world_size=8, seed=0, epoch=0, shuffle=True, shuffle_buffer=2)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_exactly_once_and_equal_batches_for_any_worker_count(dataset, world_size: int) -> None:
    folder, samples = dataset
    results = [check_exactly_once(str(folder), set(samples), world_size=world_size, num_workers=nw)
               for nw in (0, 1, 2)]
    assert results[0] == results[1] == results[2]  # the order does not depend on num_workers


def test_order_is_reproducible_and_changes_with_epoch_and_seed(dataset) -> None:
    folder, _ = dataset
    keys = [s["__key__"] for s in make_dataset(str(folder), seed=1, epoch=0, decode=False, shuffle_buffer=8)]
    again = [s["__key__"] for s in make_dataset(str(folder), seed=1, epoch=0, decode=False, shuffle_buffer=8)]
    other_epoch = [s["__key__"] for s in make_dataset(str(folder), seed=1, epoch=1, decode=False, shuffle_buffer=8)]
    other_seed = [s["__key__"] for s in make_dataset(str(folder), seed=2, epoch=0, decode=False, shuffle_buffer=8)]
    assert keys == again and sorted(keys) == sorted(other_epoch) == sorted(other_seed)
    assert keys != other_epoch and keys != other_seed
    plain = [s["__key__"] for s in make_dataset(str(folder / "manifest.json"), shuffle=False, decode=False)]
    assert plain == sorted(plain)  # manifest order: samples were written in key order


def test_resume_with_another_worker_count_continues_with_the_next_batch(dataset) -> None:
    folder, _ = dataset
    full = [b["keys"] for b in make_loader(str(folder), batch_size=2, num_workers=2, world_size=2, rank=1, epoch=4)]
    loader = make_loader(str(folder), batch_size=2, num_workers=2, world_size=2, rank=1, epoch=4)
    first = []
    for batch in loader:
        first.append(batch["keys"])
        if len(first) == 2:
            break
    state = loader.state()
    assert state == LoaderState(epoch=4, consumed=4, seed=0, world_size=2)
    for workers in (0, 1):
        resumed = make_loader(str(folder), batch_size=2, num_workers=workers, world_size=2, rank=1, epoch=4,
                              resume_from=LoaderState.from_dict(state.to_dict()))
        assert len(resumed) == len(full) - 2
        assert first + [b["keys"] for b in resumed] == full
    with pytest.raises(ValueError, match="epoch=5"):
        make_loader(str(folder), batch_size=2, num_workers=0, world_size=2, rank=1, epoch=5, resume_from=state)


def _pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1).astype(np.float32) / 255


def test_batch_holds_the_decoded_sample_values(dataset) -> None:
    folder, samples = dataset
    batch = next(iter(make_loader(str(folder), batch_size=3, num_workers=0, scales=3)))
    assert batch["images"].shape == (3, 3, 3, SIZE, SIZE) and batch["K"].shape == (3, 3, 4, 4)
    for b, key in enumerate(batch["keys"]):
        sample = samples[key]
        for f in range(3):
            assert np.allclose(batch["images"][b, f].numpy(), _pil_rgb(sample.images[f]), atol=2 / 255)
        assert np.array_equal(batch["images_aug"][b].numpy(), batch["images"][b].numpy())
        # fx = fy = 20, cx = cy = 16 (make_sample); scale s divides rows 0 and 1 by 2**s
        assert np.allclose(batch["K"][b, 2].numpy(), [[5, 0, 4, 0], [0, 5, 4, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        assert np.allclose(batch["inv_K"][b] @ batch["K"][b], np.eye(4), atol=1e-6)
        assert batch["poses"][b, :, 2, 3].tolist() == list(sample.meta.frame_indices)
        assert batch["timestamps_us"][b].tolist() == list(sample.meta.timestamps_us)
        n = len(sample.depth)
        assert batch["depth_valid"][b].sum() == n and not batch["depth_valid"][b, n:].any()
        assert np.array_equal(batch["depth_points"][b, :n].numpy(), sample.depth)
        expected_motion = sample.motion if sample.motion is not None else np.full(n, 3, np.uint8)
        assert np.array_equal(batch["motion"][b, :n].numpy(), expected_motion)
    assert not batch["flipped"].any()


def test_color_jitter_matches_hand_values_and_colorsys() -> None:
    gray = np.full((1, 3, 1, 2), 0.5, dtype=np.float32)
    assert np.allclose(color_jitter(gray, brightness=1.2, contrast=1, saturation=1, hue=0), 0.6)
    two = np.array([0.2, 0.6], dtype=np.float32).reshape(1, 1, 1, 2).repeat(3, axis=1)  # gray pixels 0.2, 0.6
    out = color_jitter(two, brightness=1, contrast=0.5, saturation=1, hue=0)  # mean 0.4 -> 0.3, 0.5
    assert np.allclose(out[0, 0, 0], [0.3, 0.5])
    red = np.array([1.0, 0.0, 0.0], dtype=np.float32).reshape(1, 3, 1, 1)
    assert np.allclose(color_jitter(red, brightness=1, contrast=1, saturation=0, hue=0).ravel(), 0.299)
    assert np.allclose(color_jitter(red, brightness=1, contrast=1, saturation=1, hue=1 / 3).ravel(), [0, 1, 0],
                       atol=1e-6)
    rgb = np.random.default_rng(0).uniform(0, 1, size=(1, 3, 4, 5)).astype(np.float32)
    got = color_jitter(rgb, brightness=1, contrast=1, saturation=1, hue=0.07)
    for y in range(4):
        for x in range(5):
            h, s, v = colorsys.rgb_to_hsv(*rgb[0, :, y, x])
            assert np.allclose(got[0, :, y, x], colorsys.hsv_to_rgb((h + 0.07) % 1, s, v), atol=1e-5)


def test_augmentation_flips_k_and_depth_and_jitters_three_frames_alike(dataset) -> None:
    folder, samples = dataset
    plain = {b["keys"][0]: b for b in make_loader(str(folder), batch_size=1, num_workers=0, seed=7)}
    augmented = [make_loader(str(folder), batch_size=1, num_workers=nw, seed=7, augment=True) for nw in (0, 2)]
    runs = [list(loader) for loader in augmented]
    seen = {"flip": 0, "jitter": 0}
    for a, b in zip(*runs, strict=True):
        key = a["keys"][0]
        assert b["keys"][0] == key and all(np.array_equal(a[k], b[k]) for k in ("images", "images_aug", "K"))
        params = augment_params(key, seed=7, epoch=0)
        ref = plain[key]
        images, depth, K = ref["images"][0].numpy(), ref["depth_points"][0].numpy(), ref["K"][0, 0].numpy()
        expected_aug = color_jitter(images, brightness=params.brightness, contrast=params.contrast,
                                    saturation=params.saturation, hue=params.hue) if params.jitter else images
        if params.flip:
            images, expected_aug = images[..., ::-1], expected_aug[..., ::-1]
            K = K.copy()
            K[0, 2] = SIZE - 1 - K[0, 2]
            depth = depth.copy()
            depth[:, 0] = 1242 - 1 - depth[:, 0]
        assert bool(a["flipped"][0]) == params.flip
        assert np.allclose(a["images"][0].numpy(), images) and np.allclose(a["K"][0, 0].numpy(), K)
        assert np.allclose(a["images_aug"][0].numpy(), expected_aug, atol=1e-6)
        assert np.allclose(a["depth_points"][0].numpy(), depth)
        assert np.array_equal(a["poses"], ref["poses"])  # poses are never mirrored
        seen["flip"] += params.flip
        seen["jitter"] += params.jitter
    assert 0 < seen["flip"] < N_SAMPLES and 0 < seen["jitter"] < N_SAMPLES
    draws = [augment_params(f"k_{i:06d}", seed=0, epoch=0) for i in range(400)]
    assert 0.43 < np.mean([d.flip for d in draws]) < 0.57 and 0.43 < np.mean([d.jitter for d in draws]) < 0.57
    assert all(0.8 <= d.brightness <= 1.2 and -0.1 <= d.hue <= 0.1 for d in draws)


def test_altered_or_truncated_local_shard_is_named(tmp_path: Path) -> None:
    write_dataset(tmp_path, n=6, per_shard=3)
    shard = tmp_path / "kitti-train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first member's data: same size, different bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match="kitti-train-000001.tar.*sha256"):
        list(make_dataset(str(tmp_path), decode=False))
    shard.write_bytes(bytes(data[:2048]))
    with pytest.raises(ShardIntegrityError, match="kitti-train-000001.tar"):
        list(make_dataset(str(tmp_path), decode=False))


def test_folder_without_manifest_is_scanned_and_bad_urls_are_named(tmp_path: Path) -> None:
    samples = write_dataset(tmp_path, n=5, per_shard=2)
    (tmp_path / "manifest.json").unlink()
    keys = [s["__key__"] for s in make_dataset(str(tmp_path), decode=False)]
    assert sorted(keys) == sorted(samples)
    with pytest.raises(ValueError, match="neither a manifest"):
        make_dataset(str(tmp_path / "kitti-train-000000.tar.d"), decode=False)


def test_retrying_reader_resumes_at_the_failed_offset(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 40
    (tmp_path / "blob").write_bytes(payload)
    failures = iter([True, True, False, False])
    opened = []

    class Flaky(io.BytesIO):
        fail = False

        def read(self, n: int = -1) -> bytes:
            if self.fail and self.tell() >= 1000 + opened[-1]:
                raise ConnectionResetError("reset by peer")
            return super().read(min(n, 700))

    def open_at(offset: int) -> io.BytesIO:
        opened.append(offset)
        stream = Flaky(payload)
        stream.seek(offset)
        stream.fail = next(failures)
        return stream

    delays: list[float] = []
    reader = RetryingReader(open_at, size=len(payload), name="x.tar", retry=RetryPolicy(base_delay_s=0.5),
                            sleep=delays.append)
    got = b"".join(iter(lambda: reader.read(4096), b""))
    assert got == payload and opened == [0, 1400, 2800] and delays == [0.5, 0.5]
    reader = RetryingReader(lambda off: Flaky(b""), size=10, name="gone.tar", retry=RetryPolicy(max_attempts=3),
                            sleep=delays.append)
    with pytest.raises(OSError, match="gone.tar.*after 3 attempts"):
        reader.read(10)


def test_cache_evicts_least_recently_used_by_bytes(tmp_path: Path) -> None:
    cache = ShardCache(tmp_path, max_bytes=250)
    for i, name in enumerate("abc"):
        tmp = cache.temporary(name)
        tmp.write_bytes(b"x" * 100)
        os.utime(tmp, ns=(i * 10**9, i * 10**9))
        cache.commit(tmp, name)
        os.utime(cache.path(name), ns=(i * 10**9, i * 10**9))
    assert cache.lookup("a") is None and cache.lookup("b") is not None and cache.lookup("c") is not None


def test_each_shard_is_owned_by_the_worker_of_its_first_block() -> None:
    entries = tuple(ShardEntry(f"s-{i:06d}.tar", 1024, None, tuple(f"k_{i}_{j:06d}" for j in range(c)))
                    for i, c in enumerate([3, 1, 3]))
    plan = make_plan(entries, rank=0, world_size=1, seed=0, epoch=0, shuffle=False, shuffle_buffer=4)
    # positions 0-2: shard 0, 3: shard 1, 4-6: shard 2; blocks of 2 -> [0, 1] w0, [2, 3] w1, [4, 5] w0, [6] w1
    owned = [plan.owned_shards(start=0, block=2, worker=w, num_workers=2) for w in (0, 1)]
    assert owned == [{0, 2}, {1}]
    assert [plan.owned_shards(start=3, block=2, worker=w, num_workers=2) for w in (0, 1)] == [{1, 2}, set()]
    assert plan.owned_shards(start=0, block=2, worker=0, num_workers=1) == {0, 1, 2}


class CountingStore(ShardStore):
    """A local ShardStore that records whole-shard streams and ranged reads."""

    def __init__(self, base: str) -> None:
        super().__init__(base)
        self.streamed: list[str] = []
        self.ranges: list[tuple[str, int, int]] = []

    def samples(self, entry, **kw):  # type: ignore[no-untyped-def]
        self.streamed.append(entry.name)
        return super().samples(entry, **kw)

    def read_range(self, entry, *, offset: int, length: int) -> bytes:  # type: ignore[no-untyped-def]
        self.ranges.append((entry.name, offset, length))
        return super().read_range(entry, offset=offset, length=length)


def test_workers_range_read_only_their_samples_and_each_shard_is_hashed_once(dataset) -> None:
    folder, samples = dataset
    base, entries = load_index(str(folder))
    plan = make_plan(entries, rank=0, world_size=1, seed=0, epoch=0, shuffle=False, shuffle_buffer=8)
    stores, yielded = [CountingStore(base) for _ in range(2)], []
    for worker, store in enumerate(stores):
        split = {"start": 0, "block": 2, "worker": worker, "num_workers": 2}
        raws = list(read_samples(plan.wanted(**split), plan=plan, store=store, owned=plan.owned_shards(**split)))
        assert all(schema.encode(samples[r["__key__"]]) == raw_members(r) for r in raws)
        yielded.append([r["__key__"] for r in raws])
    # 17 samples, shards of 4 in order: every shard's first block (positions 4k, 4k+1) is worker 0's
    assert sorted(stores[0].streamed) == [e.name for e in entries] and stores[0].ranges == []
    assert stores[1].streamed == []
    spans = {e.name: e.spans for e in entries}
    # worker 1 wants positions 4k+2, 4k+3 of shards 0-3: touching spans, one ranged read per shard
    assert stores[1].ranges == [(e.name, spans[e.name][2][0], spans[e.name][2][1] + spans[e.name][3][1])
                                for e in entries[:4]]
    bytes_read = sum(e.bytes for e in entries) + sum(length for _, _, length in stores[1].ranges)
    assert bytes_read < 1.6 * sum(e.bytes for e in entries)  # was 2x (every worker read every shard)
    interleaved = [k for i in range(0, 17, 2) for k in (yielded[0][i:i + 2] + yielded[1][i:i + 2])]
    assert interleaved[:17] == plan.rank_keys() and len(set(interleaved)) == 17


def raw_members(raw: dict) -> dict:
    return {k: v for k, v in raw.items() if not k.startswith("__")}


def test_corruption_read_by_a_non_owner_is_still_named_with_two_workers(tmp_path: Path) -> None:
    write_dataset(tmp_path, n=8, per_shard=4)
    _, entries = load_index(str(tmp_path))
    shard = tmp_path / entries[0].name
    data = bytearray(shard.read_bytes())
    data[entries[0].spans[2][0] + 700] ^= 0xFF  # inside sample #2, range-read by worker 1 (shuffle off, block 2)
    shard.write_bytes(bytes(data))
    loader = make_loader(str(tmp_path), batch_size=2, num_workers=2, shuffle=False)
    key, offset = entries[0].keys[2], entries[0].spans[2][0]
    with pytest.raises(ShardIntegrityError, match=f"sample '{key}' .*of shard {entries[0].name} .*"
                                                  f"at byte offset {offset} .*sha256"):
        list(loader)


def test_a_bad_sample_stops_only_the_rank_that_reads_it(tmp_path: Path) -> None:
    """Per-sample digests: the rank whose plan holds the altered sample fails naming it (key, shard,
    offset) before yielding it, owner stream or ranged read alike; the other rank reads the same shard."""
    write_dataset(tmp_path, n=8, per_shard=8)  # one shard; rank 0 takes plan positions 0-3, rank 1 4-7
    _, (entry,) = load_index(str(tmp_path))
    assert entry.digests is not None and len(entry.digests) == 8
    plan = make_loader(str(tmp_path), batch_size=2, num_workers=0, world_size=2, seed=5).plan
    victim = entry.keys.index(plan.rank_keys(1)[-1])  # the last sample rank 1 yields
    offset = entry.spans[victim][0]
    data = bytearray((tmp_path / entry.name).read_bytes())
    data[offset + 512 + 40] ^= 0x80
    (tmp_path / entry.name).write_bytes(bytes(data))
    for workers in (0, 2):
        kw = {"batch_size": 2, "num_workers": workers, "world_size": 2, "seed": 5}
        assert [k for b in make_loader(str(tmp_path), rank=0, **kw) for k in b["keys"]] == plan.rank_keys(0)
        seen: list[str] = []
        with pytest.raises(ShardIntegrityError, match=f"sample '{entry.keys[victim]}' \\(#{victim}\\) of shard "
                                                      f"{entry.name} .*at byte offset {offset} "):
            for batch in make_loader(str(tmp_path), rank=1, **kw):
                seen.extend(batch["keys"])
        assert seen == plan.rank_keys(1)[:2]  # the batch holding it never came out


def test_version_1_manifest_still_reads_and_names_an_altered_shard(tmp_path: Path) -> None:
    samples = write_dataset(tmp_path, n=6, per_shard=3)
    manifest = load_manifest(str(tmp_path))
    save_manifest(manifest.with_shards(tuple(
        replace(s, samples=tuple(replace(span, sha256=None) for span in s.samples)) for s in manifest.shards)),
        str(tmp_path))
    assert load_manifest(str(tmp_path)).manifest_version == 1
    _, entries = load_index(str(tmp_path))
    assert all(e.digests is None and e.spans is not None for e in entries)
    for workers in (0, 2):
        keys = [k for b in make_loader(str(tmp_path), batch_size=2, num_workers=workers) for k in b["keys"]]
        assert sorted(keys) == sorted(samples)
    data = bytearray((tmp_path / entries[1].name).read_bytes())
    data[entries[1].spans[1][0] + 700] ^= 0x01
    (tmp_path / entries[1].name).write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match=f"shard {entries[1].name} .*sha256"):
        list(make_dataset(str(tmp_path), decode=False))


def test_fused_batches_equal_the_per_sample_stages(dataset) -> None:
    folder, _ = dataset
    fused = list(make_loader(str(folder), batch_size=3, num_workers=0, seed=7, augment=True, scales=2))
    staged = list(batch_samples(augment_samples(decode_samples(make_dataset(str(folder), seed=7, decode=False)),
                                                seed=7, epoch=0, enabled=True), batch_size=3, scales=2))
    assert len(fused) == len(staged) == 6
    jittered = 0
    for a, b in zip(fused, staged, strict=True):
        assert a["keys"] == b["keys"] and set(a) == set(b)
        for name in ("images", "K", "inv_K", "poses", "timestamps_us", "depth_points", "depth_valid", "flipped"):
            assert np.array_equal(a[name].numpy(), b[name].numpy()), name
        assert np.allclose(a["images_aug"].numpy(), b["images_aug"].numpy(), atol=1e-6)
        jittered += int((a["images_aug"] != a["images"]).any(dim=(1, 2, 3, 4)).sum())
    assert 0 < jittered < N_SAMPLES


def test_negative_hue_matches_colorsys() -> None:
    rgb = np.random.default_rng(1).uniform(0, 1, size=(2, 3, 3, 4)).astype(np.float32)
    got = color_jitter(rgb, brightness=1, contrast=1, saturation=1, hue=-0.09)
    for f, y, x in np.ndindex(2, 3, 4):
        h, s, v = colorsys.rgb_to_hsv(*rgb[f, :, y, x])
        assert np.allclose(got[f, :, y, x], colorsys.hsv_to_rgb((h - 0.09) % 1, s, v), atol=1e-5)


def test_batch_arrays_are_reused_only_once_nothing_references_them() -> None:
    from dynamo_depth.data import decode

    first, second = decode._batch_array((2, 3)), decode._batch_array((2, 3))
    assert first is not second
    tensor, first_id = torch.from_numpy(first), id(first)
    view, second_id = second[0], id(second)
    del first, second
    busy = decode._batch_array((2, 3))  # both still referenced (a tensor, a view): a new array
    assert id(busy) not in (first_id, second_id)
    del view
    assert id(decode._batch_array((2, 3))) == second_id
    del tensor
    assert id(decode._batch_array((2, 3))) == first_id


def _remote_copy(folder: Path, name: str) -> str:
    """The shards of ``folder`` copied into fsspec's in-memory file system: a non-local base URL."""
    import fsspec

    memory = fsspec.filesystem("memory")
    for shard in sorted(folder.glob("*.tar")):
        memory.pipe(f"/{name}/{shard.name}", shard.read_bytes())
    return f"memory://{name}"


def test_cached_shard_evicted_by_another_worker_mid_read_or_before_open(tmp_path: Path) -> None:
    samples = write_dataset(tmp_path / "src", n=6, per_shard=3)
    _, entries = load_index(str(tmp_path / "src"))
    entry, cache_dir = entries[0], tmp_path / "cache"
    store = ShardStore(_remote_copy(tmp_path / "src", f"race-{tmp_path.name}"), cache=ShardCache(cache_dir, max_bytes=10**6))
    expected = [k for k, _ in store.samples(entry)]
    assert expected == sorted(samples)[:3] and store.cache.path(entry.sha256).exists()

    handle = store.cache.lookup(entry.sha256)  # this worker opened the copy ...
    ShardCache(cache_dir, max_bytes=0).evict()  # ... then another worker evicted everything
    assert not store.cache.path(entry.sha256).exists()
    with handle:
        assert handle.read() == (tmp_path / "src" / entry.name).read_bytes()
    assert store.cache.lookup(entry.sha256) is None

    class EvictedAfterOpen(ShardCache):
        def lookup(self, sha256: str):
            found = super().lookup(sha256)
            self.path(sha256).unlink(missing_ok=True)
            return found

    class EvictedBeforeOpen(ShardCache):
        def lookup(self, sha256: str):
            self.path(sha256).unlink(missing_ok=True)
            return super().lookup(sha256)

    list(store.samples(entry))  # cached again (read from the remote copy)
    racy = ShardStore(store.base_url, cache=EvictedAfterOpen(cache_dir, max_bytes=10**6))
    span_offset, span_length = load_index(str(tmp_path / "src"))[1][0].spans[1]
    assert [k for k, _ in racy.samples(entry)] == expected  # served by the open handle, hash checked
    assert not racy.cache.path(entry.sha256).exists()
    list(store.samples(entry))
    assert racy.read_range(entry, offset=span_offset, length=span_length) == \
        (tmp_path / "src" / entry.name).read_bytes()[span_offset:span_offset + span_length]
    racy = ShardStore(store.base_url, cache=EvictedBeforeOpen(cache_dir, max_bytes=10**6))
    assert [k for k, _ in racy.samples(entry)] == expected  # a miss: read remotely and cached anew
    assert racy.cache.path(entry.sha256).read_bytes() == (tmp_path / "src" / entry.name).read_bytes()
    assert racy.read_range(entry, offset=span_offset, length=span_length) == \
        (tmp_path / "src" / entry.name).read_bytes()[span_offset:span_offset + span_length]


def test_cache_evict_removes_dead_or_stale_temporaries_and_counts_live_ones(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()  # its pid now names no live process
    cache = ShardCache(tmp_path, max_bytes=250, stale_tmp_s=3600)
    for i, name in enumerate("ab"):
        cache.path(name).write_bytes(b"x" * 100)
        os.utime(cache.path(name), ns=((i + 1) * 10**9, (i + 1) * 10**9))
    live = cache.temporary("c")  # being written by this (live) process, touched just now
    live.write_bytes(b"y" * 100)
    silent = tmp_path / f"d.tar.{os.getpid()}.tmp"  # live pid, but untouched for two hours
    silent.write_bytes(b"z" * 1000)
    two_hours_ago = time.time_ns() - 7200 * 10**9
    os.utime(silent, ns=(two_hours_ago, two_hours_ago))
    orphan = tmp_path / f"e.tar.{finished.pid}.tmp"  # left by a killed worker
    orphan.write_bytes(b"w" * 1000)
    cache.evict()
    # a 100 + b 100 + live temporary 100 = 300 > 250: the oldest shard goes; the dead ones neither count nor stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar", live.name]
    live.unlink()
    cache.commit(live, "c")  # the temporary vanished (removed as stale elsewhere): not cached, no error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar"]
    with pytest.raises(ValueError, match="max_bytes"):
        ShardCache(tmp_path, max_bytes=-1)


def test_frame_time_scales_follow_the_original() -> None:
    """ts = gap in whole ms / 100 for nuScenes (no uint8 wrap above 255 ms), 1 for evenly spaced datasets."""
    from dynamo_depth.shards.time_scales import frame_time_scales

    stamps = np.array([1_000_000, 1_050_000, 1_361_400], dtype=np.int64)  # 50 ms and 311.4 ms gaps
    assert frame_time_scales(stamps, dataset="nuscenes").tolist() == pytest.approx([0.5, 3.11])
    assert frame_time_scales(stamps, dataset="kitti").tolist() == [1.0, 1.0]
    assert frame_time_scales(stamps, dataset="waymo").dtype == np.float32
