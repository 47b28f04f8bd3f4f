"""The build runner with a toy builder (in-process): layout changes, failures, resume, name clashes."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from builders.runner import BuilderSpec, SkippedFrame, Unit, build
from dynamo_depth.shards.manifest import load_manifest
from tests.samples import make_sample

BROKEN: set[str] = set()  # unit names that fail (the toy "raw data" is this set)


def _units(raw_root: str, options: Mapping[str, Any]) -> list[Unit]:
    return [Unit(name=f"drive{i}/image_02", params={"first": 10 * i}) for i in range(options.get("units", 3))]


def _build_unit(raw_root: str, unit: Unit, options: Mapping[str, Any]) -> Iterator[Any]:
    if unit.name in BROKEN:
        raise ValueError(f"{raw_root}/{unit.name}/0000000003.png: corrupt or truncated PNG")
    first = unit.params["first"]
    yield SkippedFrame(frame=first, reason="neighbour frame -1 has no image")
    for i in range(first, first + 4):
        yield make_sample(i, n_points=20)


SPEC = BuilderSpec(name="toy", dataset="kitti", version="0", list_units=_units, build_unit=_build_unit)


def _build(out: Path, **kw: Any):
    kw = {"split": "train", "options": {"units": 3}, "workers": 0, "show_progress": False, **kw}
    return build(SPEC, "/raw", str(out), **kw)


def _tars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


@pytest.fixture(autouse=True)
def _no_broken_units() -> Iterator[None]:
    BROKEN.clear()
    yield
    BROKEN.clear()


def test_layout_follows_limits_and_a_changed_limit_rebuilds(tmp_path: Path) -> None:
    report = _build(tmp_path, max_count=5)
    assert [s.count for s in report.manifest.shards] == [5, 5, 2]
    assert _build(tmp_path, max_count=5).up_to_date
    report = _build(tmp_path, max_count=4)
    assert not report.up_to_date
    assert [s.count for s in report.manifest.shards] == [4, 4, 4]
    assert sorted(_tars(tmp_path)) == [f"kitti-train-00000{i}.tar" for i in range(3)]
    one = report.manifest.shards[0].bytes
    report = _build(tmp_path, max_count=100, max_bytes=one)
    assert [s.count for s in report.manifest.shards] == [4, 4, 4]  # the byte limit now decides
    assert _build(tmp_path, max_count=100, max_bytes=one).up_to_date
    assert not _build(tmp_path, max_count=100, max_bytes=one * 3).up_to_date


def test_failed_unit_keeps_staging_and_a_rerun_builds_only_it(tmp_path: Path) -> None:
    BROKEN.add("drive1/image_02")
    report = _build(tmp_path, max_count=5)
    assert [f.unit for f in report.manifest.failed] == ["drive1/image_02"]
    assert "/raw/drive1/image_02/0000000003.png: corrupt or truncated PNG" in report.manifest.failed[0].error
    assert report.manifest.num_samples == 8 and not report.ok
    assert sorted(os.listdir(tmp_path / "_staging")) == [
        "drive0-image_02-000000.tar", "drive0-image_02.json", "drive2-image_02-000000.tar", "drive2-image_02.json",
        "pack.json"]
    BROKEN.clear()
    report = _build(tmp_path, max_count=5)
    assert report.ok and report.built == ("drive1/image_02",) and len(report.reused) == 2
    assert not (tmp_path / "_staging").exists()
    assert _tars(tmp_path) == _tars(_build_fresh(tmp_path.parent / "fresh"))
    assert [u.skipped for u in report.manifest.units] == [1, 1, 1]


def _build_fresh(out: Path) -> Path:
    _build(out, max_count=5)
    return out


def test_a_rerun_where_every_unit_fails_keeps_the_earlier_build(tmp_path: Path) -> None:
    _build(tmp_path, max_count=5)
    before = _tars(tmp_path)
    manifest_bytes = (tmp_path / "manifest.json").read_bytes()
    BROKEN.update(u.name for u in _units("", {"units": 3}))
    report = _build(tmp_path, options={"units": 3, "changed": True})
    assert not report.ok and len(report.manifest.failed) == 3
    assert _tars(tmp_path) == before
    assert (tmp_path / "manifest.json").read_bytes() == manifest_bytes
    assert load_manifest(str(tmp_path)).num_samples == 12


def test_unit_names_that_collide_on_disk_are_rejected(tmp_path: Path) -> None:
    spec = BuilderSpec(name="toy", dataset="kitti", version="0", build_unit=_build_unit,
                       list_units=lambda raw, opts: [Unit(name="a/b", params={"first": 0}),
                                                     Unit(name="a-b", params={"first": 10})])
    with pytest.raises(ValueError, match="collide once made file-name safe"):
        build(spec, "/raw", str(tmp_path), split="train", options={}, workers=0, show_progress=False)


def test_workers_must_be_non_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers must be >= 0"):
        _build(tmp_path, workers=-1)


def test_frame_progress_counts_every_frame_done(tmp_path: Path) -> None:
    from builders.runner import run_unit

    counts: list[int] = []
    unit = _units("", {"units": 1})[0]
    outcome = run_unit(SPEC, "/raw", unit, {"units": 1}, str(tmp_path), on_frames=counts.append)
    assert outcome.record is not None and (outcome.record.samples, outcome.record.skipped) == (4, 1)
    assert sum(counts) == 5 and all(c > 0 for c in counts)


def test_prepare_unit_runs_in_the_driver_and_a_failure_fails_its_unit_only(tmp_path: Path) -> None:
    prepared: list[str] = []

    def prepare(raw_root: str, unit: Unit, options: Mapping[str, Any]) -> Unit:
        if unit.name == "drive1/image_02":
            raise ValueError(f"{raw_root}/tables.json: no records for {unit.name}")
        prepared.append(unit.name)
        return Unit(name=unit.name, params={**unit.params, "first": unit.params["first"] + 100})

    spec = BuilderSpec(name="toy", dataset="kitti", version="0", list_units=_units, build_unit=_build_unit,
                       prepare_unit=prepare)
    report = build(spec, "/raw", str(tmp_path), split="train", options={"units": 3}, workers=0, show_progress=False)
    assert prepared == ["drive0/image_02", "drive2/image_02"]
    assert [(f.unit, f.error) for f in report.manifest.failed] == [
        ("drive1/image_02", "/raw/tables.json: no records for drive1/image_02")]
    keys = [s.key for shard in report.manifest.shards for s in shard.samples]
    assert keys == [make_sample(i).key for i in (*range(100, 104), *range(120, 124))]  # the prepared params


def _writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The base names of the files ``storage.write_bytes_atomic`` writes from now on, in order."""
    from dynamo_depth.shards import storage

    names: list[str] = []
    real = storage.write_bytes_atomic
    monkeypatch.setattr(storage, "write_bytes_atomic", lambda url, data: (names.append(os.path.basename(url)),
                                                                           real(url, data))[1])
    return names


def test_a_build_writes_its_sidecar_index_then_the_manifest_and_a_rerun_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from dynamo_depth.shards.index import _parse_header
    from dynamo_depth.shards.index_store import sidecar_bytes

    writes = _writes(monkeypatch)
    out = tmp_path / "out"
    report = _build(out, max_count=5)
    assert writes[-2:] == ["manifest.index", "manifest.json"]  # the manifest (the commit point) last
    assert sorted(os.listdir(out)) == [f"kitti-train-00000{i}.tar" for i in range(3)] + ["manifest.index",
                                                                                         "manifest.json"]
    side = (out / "manifest.index").read_bytes()
    assert side == sidecar_bytes(str(out / "manifest.json"))  # what `python -m dynamo_depth index` writes
    header, _ = _parse_header(side, "manifest.index")
    assert header["manifest_sha256"] == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    assert report.manifest.num_samples == 12
    _build(tmp_path / "twin", max_count=5)
    assert (tmp_path / "twin" / "manifest.index").read_bytes() == side  # deterministic
    del writes[:]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert _build(out, max_count=5).up_to_date
    assert writes == [] and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    report = _build(out, max_count=4)  # a changed layout: both rewritten, consistently
    assert writes[-2:] == ["manifest.index", "manifest.json"]
    assert (out / "manifest.index").read_bytes() == sidecar_bytes(str(out / "manifest.json")) != side


def test_loader_start_up_on_a_fresh_build_reads_the_sidecar_and_verify_and_index_check_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from dynamo_depth import __main__ as cli
    from dynamo_depth.data import make_dataset
    from dynamo_depth.shards import index_store
    from dynamo_depth.shards import manifest as manifest_mod

    out = tmp_path / "out"
    _build(out, max_count=5)
    keys = sorted(span.key for shard in load_manifest(str(out)).shards for span in shard.samples)
    assert len(keys) == 12
    cache = tmp_path / "index-cache"
    monkeypatch.setenv("DYNAMO_DEPTH_INDEX_DIR", str(cache))

    def no_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the loader parsed the manifest")

    monkeypatch.setattr(index_store, "manifest_index_arrays", no_parse)
    monkeypatch.setattr(manifest_mod, "parse_manifest", no_parse)
    dataset = make_dataset(str(out), shuffle=False, decode=False)
    assert sorted(sample["__key__"] for sample in dataset) == keys
    assert not list(cache.glob("*.idx"))  # nothing parsed, nothing cached: the sidecar was opened in place
    monkeypatch.undo()
    capsys.readouterr()
    assert cli.main(["verify", str(out)]) == 0
    assert cli.main(["index", str(out), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_a_build_without_shards_writes_no_sidecar_and_drops_a_stale_one(tmp_path: Path) -> None:
    (tmp_path / "manifest.index").write_bytes(b"a sidecar of an earlier build")
    BROKEN.update(u.name for u in _units("", {"units": 3}))
    report = _build(tmp_path)
    assert not report.ok and report.manifest.num_samples == 0
    assert (tmp_path / "manifest.json").exists() and not (tmp_path / "manifest.index").exists()
