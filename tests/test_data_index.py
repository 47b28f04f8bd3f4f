"""The compact sample index (#27): what a DataLoader worker receives does not grow with the samples,
the epoch plan is the one the loader made before, index files are exact and never used stale."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest

from dynamo_depth.data import make_dataset, make_loader
from dynamo_depth.data.plan import make_plan
from dynamo_depth.data.sources import ShardEntry, load_index, open_index
from dynamo_depth.shards.index import SampleIndex, encode_index, index_arrays, open_index_file
from dynamo_depth.shards.manifest import canonical_json, load_manifest, parse_manifest
from tests import reference_plan
from tests.synthetic_manifest import manifest_text, synthetic_key, write_manifest


@pytest.fixture(autouse=True)
def index_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "index-cache"
    monkeypatch.setenv("DYNAMO_DEPTH_INDEX_DIR", str(folder))
    return folder


def test_synthetic_manifest_is_the_canonical_json_of_what_it_describes() -> None:
    text = manifest_text(450, per_shard=200, edge_every=7).encode("ascii")
    manifest = parse_manifest(text, "synthetic")
    assert canonical_json(manifest) == text
    assert [s.count for s in manifest.shards] == [200, 200, 50] and manifest.manifest_version == 2
    assert sum(sp.edge for s in manifest.shards for sp in s.samples) == 65  # 0, 7, ..., 448
    assert manifest.shards[2].samples[-1].key == synthetic_key(449) == \
        "segment-00000000000000000000_0000_000_with_camera_labels_FRONT_RIGHT_000049"


ENTRIES = (
    ShardEntry("a-000000.tar", 3072, "ab" * 32, ("k0", "k1"), ((0, 1024), (1024, 1536)), ("01" * 32, "fe" * 32),
               (False, True)),
    ShardEntry("a-000001.tar", 2048, None, ("k2",)),  # a scanned shard: no hash, no spans
    ShardEntry("a-000002.tar", 4096, "cd" * 32, ("k3", "ké4"), ((512, 1024), (2048, 1024))),  # version 1
)


def test_index_file_holds_exactly_the_entries(tmp_path: Path) -> None:
    data = encode_index(index_arrays(ENTRIES), manifest_sha256="00" * 32)
    assert data == encode_index(index_arrays(ENTRIES), manifest_sha256="00" * 32)  # deterministic bytes
    assert data[:8] == b"DDIDX\x00\x00\x01" and len(data) % 64 == 0
    (tmp_path / "x.idx").write_bytes(data)
    index = open_index_file(tmp_path / "x.idx", check_body=True)
    assert index.num_shards == 3 and index.num_samples == 5 and index.manifest_sha256 == "00" * 32
    got = index.entries()
    assert got == ENTRIES  # names, sizes, hashes; keys / spans / digests / edges element by element
    assert [e.spans is None for e in got] == [False, True, False]
    assert [e.digests is None for e in got] == [False, True, True] and got[0].digests[1] == "fe" * 32
    assert [e.edges for e in got] == [(False, True), None, None]
    assert got[2].keys[-1] == "ké4" and got[0].spans[1] == (1024, 1536) and got[2].keys.index("ké4") == 1
    assert len(pickle.dumps(index)) < 300  # a file-backed index pickles as its path and digest
    altered = bytearray(data)
    altered[-70] ^= 1
    (tmp_path / "y.idx").write_bytes(bytes(altered))
    with pytest.raises(ValueError, match="y.idx: body sha256 differs"):
        open_index_file(tmp_path / "y.idx", check_body=True)


def _worker_payload(url: str) -> bytes:
    """What a DataLoader worker of ``make_loader`` receives: its dataset, collate and init functions."""
    loader = make_loader(url, batch_size=4, num_workers=2, rank=0, world_size=8).dataloader
    return pickle.dumps((loader.dataset, loader.collate_fn, loader.worker_init_fn))


def test_what_a_worker_receives_does_not_grow_with_the_number_of_samples(tmp_path: Path) -> None:
    small, large = write_manifest(tmp_path / "a", 2_000), write_manifest(tmp_path / "b", 200_000)
    payloads = [_worker_payload(str(small)), _worker_payload(str(large))]
    # 100x the samples, the same bytes but for the counts (rank length, samples) pickled as longer integers
    assert len(payloads[0]) < 4096 and 0 <= len(payloads[1]) - len(payloads[0]) <= 8
    assert b"waymo-train-" not in payloads[1] and synthetic_key(7).encode() not in payloads[1]
    dataset = pickle.loads(payloads[1])[0]
    assert dataset.plan.index.num_samples == 200_000 and dataset.plan.rank_keys()[:3] == \
        make_dataset(str(large), rank=0, world_size=8, decode=False).plan.rank_keys()[:3]


def _plans(path: Path, **kw: object) -> tuple[reference_plan.EpochPlan, object]:
    old = reference_plan.make_plan(reference_plan.reference_entries(load_manifest(str(path))), **kw)  # type: ignore[arg-type]
    _, index = open_index(str(path))
    return old, make_plan(index, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("world_size", "shuffle", "shuffle_buffer", "include_edges"),
                         [(8, True, 256, False), (3, True, 7, True), (5, False, 256, False), (1, True, 1000, False)])
def test_epoch_plan_is_the_one_made_before_the_compact_index(tmp_path: Path, world_size: int, shuffle: bool,
                                                             shuffle_buffer: int, include_edges: bool) -> None:
    path = write_manifest(tmp_path / "m", 2_345, per_shard=200, edge_every=13)
    for seed, epoch in ((0, 0), (7, 3)):
        kw = {"world_size": world_size, "seed": seed, "epoch": epoch, "shuffle": shuffle,
              "shuffle_buffer": shuffle_buffer, "include_edges": include_edges}
        old, new = _plans(path, rank=world_size - 1, **kw)
        assert [e.name for e in new.shards] == [e.name for e in old.shards]
        for name in ("shard_of_source", "ordinal_of_source", "source_of_position"):
            assert np.array_equal(getattr(new, name), getattr(old, name)), name
        assert new.rank_length == old.rank_length and new.num_samples == old.num_samples
        assert new.global_keys() == old.global_keys() and new.dropped_keys == old.dropped_keys
        assert [new.rank_keys(r) for r in range(world_size)] == [old.rank_keys(r) for r in range(world_size)]
        for start, block, workers in ((0, 4, 3), (37, 8, 8), (5, 1, 1)):
            for worker in range(workers):
                split = {"start": start, "block": block, "worker": worker, "num_workers": workers}
                assert new.wanted(**split) == old.wanted(**split)
                assert new.owned_shards(**split) == old.owned_shards(**split)


def _keys_in_a_fresh_process(payload: bytes) -> list[str]:
    dataset = pickle.loads(payload)
    return [w.source for w in dataset.plan.wanted(start=3, block=2, worker=1, num_workers=3)] + \
        dataset.plan.rank_keys()[:50] + [dataset.plan.index.path]


def test_a_worker_process_opens_the_same_index_and_plans_the_same_samples(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m", 3_000, edge_every=11)
    dataset = make_dataset(str(path), rank=1, world_size=2, seed=4, epoch=1, decode=False, block=2)
    expected = _keys_in_a_fresh_process(pickle.dumps(dataset))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_keys_in_a_fresh_process, (pickle.dumps(dataset),)) == expected


def test_an_index_is_used_only_for_the_manifest_it_was_made_from(tmp_path: Path, index_cache: Path) -> None:
    path = write_manifest(tmp_path / "m", 500)
    _, first = load_index(str(path))
    cached = sorted(index_cache.glob("*.idx"))
    assert len(cached) == 1 and first[0].keys[0] == synthetic_key(0)
    text = manifest_text(400).replace(synthetic_key(0), synthetic_key(10**6))
    path.write_text(text)  # the manifest changed: a new index, the old one ignored
    _, second = load_index(str(path))
    assert second[0].keys[0] == synthetic_key(10**6) and sum(len(e.keys) for e in second) == 400
    assert len(list(index_cache.glob("*.idx"))) == 2
    index = open_index(str(path))[1]
    assert isinstance(index, SampleIndex) and index.path is not None
    broken = bytearray(Path(index.path).read_bytes())
    broken[-100] ^= 1  # a cache file altered on disk: rebuilt from the manifest
    Path(index.path).write_bytes(bytes(broken))
    assert open_index(str(path))[1].entries() == reference_plan.reference_entries(load_manifest(str(path)))


def test_the_column_parse_gives_the_strict_parse_arrays_and_errors(tmp_path: Path) -> None:
    from dynamo_depth.shards.index import manifest_arrays
    from dynamo_depth.shards.index_parse import manifest_index_arrays

    text = manifest_text(650, per_shard=200, edge_every=9)
    fast = manifest_index_arrays(text.encode(), "m.json")
    strict = manifest_arrays(parse_manifest(text.encode(), "m.json"))
    assert encode_index(fast, manifest_sha256=None) == encode_index(strict, manifest_sha256=None)
    first_sha = text.split('"sha256": "')[1][:64]  # sample 0's digest
    bad = {  # each breaks one rule of Manifest.from_json
        "overlap": text.replace('"offset": 1024000,', '"offset": 1023488,', 1),
        "uppercase sha256": text.replace(first_sha, first_sha.upper(), 1),
        "mixed versions": text.replace(f',\n     "sha256": "{first_sha}"', "", 1),
        "edge false": text.replace('"edge": true', '"edge": false', 1),
        "count": text.replace('"count": 200', '"count": 199', 1),
        "repeated shard": text.replace("waymo-train-000001.tar", "waymo-train-000000.tar", 1),
        "unaligned": text.replace('"length": 1024000', '"length": 1024001', 1),
        "not json": text[:-3],
    }
    for name, broken in bad.items():
        assert broken != text, name
        path = tmp_path / f"{name.replace(' ', '-')}.json"
        path.write_text(broken)
        with pytest.raises(ValueError) as strict_error:
            load_manifest(str(path))
        with pytest.raises(ValueError) as loader_error:
            open_index(str(path))
        assert str(loader_error.value) == str(strict_error.value), name


def test_sidecar_index_is_written_beside_the_manifest_used_verified_and_ignored_when_stale(
        tmp_path: Path, index_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from dynamo_depth.shards import index_cli, verify
    from dynamo_depth.shards.manifest import save_manifest
    from tests.test_data_local import write_dataset

    folder = tmp_path / "shards"
    samples = write_dataset(folder, n=6, per_shard=4)
    assert index_cli.main([str(folder)]) == 0
    side = folder / "manifest.index"
    first = side.read_bytes()
    assert index_cli.main([str(folder / "manifest.json")]) == 0 and side.read_bytes() == first
    assert index_cli.main([str(folder), "--check"]) == 0
    base, index = open_index(str(folder))
    assert index.path == str(side) and not list(index_cache.glob("*.idx"))  # read in place, no parse
    assert sorted(k for e in index.entries() for k in e.keys) == sorted(samples)
    assert verify.verify_shards(str(folder)) == []
    altered = bytearray(first)
    altered[-200] ^= 1
    side.write_bytes(bytes(altered))
    assert [p.kind for p in verify.verify_shards(str(folder))] == ["index"]
    assert open_index(str(folder))[1].path != str(side)  # an altered sidecar is not used
    manifest = load_manifest(str(folder))
    save_manifest(manifest.with_shards(tuple(replace(s, samples=tuple(replace(sp, sha256=None) for sp in s.samples))
                                             for s in manifest.shards)), str(folder))
    side.write_bytes(first)  # the sidecar of the previous manifest: stale
    assert verify.verify_shards(str(folder)) == [] and index_cli.main([str(folder), "--check"]) == 1
    assert all(e.digests is None for e in load_index(str(folder))[1])
    capsys.readouterr()
