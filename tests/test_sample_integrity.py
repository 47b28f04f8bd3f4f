"""Issue #19: per-sample integrity. One flipped byte in one sample is named (key, shard, byte offset) by
a 1-step training run, by ``verify`` and by eval before any of its bytes are used; the shard's other
samples still read when that sample is not in the plan."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dynamo_depth.data import SampleIntegrityError, make_dataset
from dynamo_depth.shards.manifest import load_manifest, save_manifest
from dynamo_depth.shards.records import SampleSpan, ShardRecord
from dynamo_depth.shards.verify import main as verify_main
from tests.test_data_local import write_dataset

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
TINY = ["data.height=64", "data.width=64", "data.batch_size=2", "data.num_workers=0", "train.threads=1",
        "train.progress=false", "train.checkpoint_every=0", "train.image_every=0", "train.log_every=1",
        "schedule.iterations_per_epoch=2"]


def _first_planned_key(url: str) -> str:
    """The first sample key the trainer's loader yields (seed 0 of configs/demo.yaml, epoch 0, one rank)."""
    return make_dataset(url, seed=0, epoch=0, decode=False).plan.rank_keys()[0]


def _flip_one_byte(folder: Path, key: str) -> tuple[ShardRecord, SampleSpan]:
    """Flip one byte inside the first member's data of sample ``key``; returns its shard record and span."""
    manifest = load_manifest(str(folder))
    record, span = next((r, s) for r in manifest.shards for s in r.samples if s.key == key)
    shard = folder / record.name
    data = bytearray(shard.read_bytes())
    data[span.offset + 512 + 100] ^= 0x10  # past the first member's header: a valid tar, different bytes
    shard.write_bytes(bytes(data))
    return record, span


def _train(url: str, run_dir: Path) -> int:
    from train import main as train_main

    return train_main.main(["--config", str(DEMO), "--set", f"data.url={url}", f"train.run_dir={run_dir}", *TINY,
                            "--max-steps", "1"])


@pytest.fixture
def corrupted(tmp_path: Path) -> tuple[Path, ShardRecord, SampleSpan]:
    """6 samples in shards of 3 (32x32 images); one byte flipped in the first sample the trainer reads."""
    folder = tmp_path / "shards"
    write_dataset(folder, n=6, per_shard=3)
    record, span = _flip_one_byte(folder, _first_planned_key(str(folder)))
    return folder, record, span


def test_one_step_run_fails_naming_the_sample_and_a_plan_without_it_trains(
        corrupted, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, record, span = corrupted
    assert _train(str(folder), tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.startswith("train: error: ") and "Traceback" not in err, err
    assert f"sample {span.key!r}" in err and f"shard {record.name}" in err and f"byte offset {span.offset}" in err, err
    assert "sha256" in err and "altered or corrupted" in err, err
    # The same shard, with a manifest whose plan leaves that sample out: its other samples still read.
    manifest = load_manifest(str(folder))
    kept = tuple(s for s in record.samples if s.key != span.key)
    subset = manifest.with_shards(tuple(
        replace(r, samples=kept, count=len(kept), first_key=kept[0].key, last_key=kept[-1].key)
        if r.name == record.name else r for r in manifest.shards))
    save_manifest(subset, str(folder / "without.json"))
    read = [s["__key__"] for s in make_dataset(str(folder / "without.json"), decode=False)]
    assert sorted(read) == sorted(s.key for r in subset.shards for s in r.samples) and span.key not in read
    assert _train(str(folder / "without.json"), tmp_path / "run2") == 0, capsys.readouterr().err


def test_verify_and_eval_name_the_sample(corrupted, capsys: pytest.CaptureFixture[str]) -> None:
    from eval import iter_samples

    folder, record, span = corrupted
    assert verify_main([str(folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"ALTERED {record.name}: sha256 ")
    assert out[1].startswith(f"SAMPLE {record.name}: {span.key!r} at byte offset {span.offset} ({span.length} bytes)")
    assert out[2:] == ["verify: 2 shards, 2 problems: FAILED"]
    seen = []
    with pytest.raises(SampleIntegrityError, match=f"sample {span.key!r}.* of shard {record.name} .*"
                                                   f"at byte offset {span.offset} ") as info:
        for sample in iter_samples(str(folder)):
            seen.append(sample.key)
    assert (info.value.key, info.value.shard, info.value.offset) == (span.key, record.name, span.offset)
    ordered = [s.key for r in load_manifest(str(folder)).shards for s in r.samples]
    assert seen == ordered[:ordered.index(span.key)]  # every sample before it, none from it on


def test_read_sample_checks_the_span_digest(corrupted) -> None:
    """``shards.read_sample`` (what ``show --key`` uses) checks a version-2 span before parsing it."""
    from dynamo_depth.shards.reader import read_sample

    folder, record, span = corrupted
    with pytest.raises(ValueError, match=f"{record.name}: sample {span.key!r} at byte offset {span.offset} .*sha256"):
        read_sample(str(folder / record.name), span)
    other = next(s for s in record.samples if s.key != span.key)
    assert read_sample(str(folder / record.name), other)["cur.jpg"][:2] == b"\xff\xd8"
