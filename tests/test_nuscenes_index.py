"""The driver's table reader (``builders.nuscenes_index``) gives every scene the devkit path's payload, pickle byte
for byte: synthetic tables (2 scenes x 8 frames, seed 0), the same inflated by copies (``inflate_tables``) and to
given record counts (``inflate_to_counts``), read in tiny chunks, and with a lidarseg table beside the panoptic one.
(No real nuScenes sample is among ``../shared/fixtures``.) Bad tables: ValueError naming the file, exit 2."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

pytest.importorskip("nuscenes", reason="the devkit is the reference the reader is compared with")

from builders import nuscenes as nb  # noqa: E402
from builders import nuscenes_index as ni  # noqa: E402
from builders.nuscenes_tables import scene_payload  # noqa: E402
from dynamo_depth.synth.nuscenes import write_nuscenes  # noqa: E402
from dynamo_depth.synth.nuscenes_inflate import TableCounts, inflate_tables, inflate_to_counts  # noqa: E402

VERSION = "v1.0-mini"
CHANNELS = (nb.CAMERA, nb.LIDAR)
COUNTS = TableCounts(scenes=5, samples=34, sample_data=64 + 1201, sample_annotations=28 + 150, instances=14 + 24)


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nusc_index")
    write_nuscenes(root, sequences=2, frames=8, seed=0, version=VERSION)
    return root


@pytest.fixture(autouse=True)
def _fresh_tables():
    nb._NUSCENES.clear()
    yield
    nb._NUSCENES.clear()


def _copy(dataroot: Path, root: Path) -> Path:
    shutil.copytree(dataroot / VERSION, root / VERSION)
    for folder in ("samples", "sweeps", "panoptic", "maps"):
        (root / folder).symlink_to(dataroot / folder)
    return root


def _assert_same_payloads(root: Path) -> int:
    """Every scene's payload: the default driver path (``prepare_unit``) == the devkit's, pickle byte for byte."""
    nusc = nb.load_nuscenes(dataroot=str(root), version=VERSION)
    options = {"split": "all", "version": VERSION}
    units = nb.list_units(str(root), options)
    assert [u.name for u in units] == sorted(s["name"] for s in nusc.scene)
    for unit in units:
        ours = nb.prepare_unit(str(root), unit, options).params["tables"]
        devkit = scene_payload(nusc, unit.params["scene_token"], channels=CHANNELS)
        assert pickle.dumps(ours) == pickle.dumps(devkit), unit.name
    assert isinstance(nb._NUSCENES[(str(root.resolve()), VERSION)], ni.NuScenesIndex)
    return len(units)


def test_synthetic_tables_give_the_devkit_payloads(dataroot: Path) -> None:
    assert _assert_same_payloads(dataroot) == 2
    index = nb.load_tables(dataroot=str(dataroot), version=VERSION)
    sample = index.get("sample", index.scene[0]["first_sample_token"])
    assert sorted(sample["data"]) == sorted(CHANNELS) and sample["anns"]  # the fixture has these 2 sensors


def test_tiny_chunks_give_the_same_records_and_payloads(dataroot: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "spaced.json"
    records = json.loads((dataroot / VERSION / "sample_data.json").read_text())
    path.write_text(json.dumps(records, indent=2))  # whitespace between and inside records
    for chunk in (1, 7, 100):
        assert list(ni.iter_json_records(path, chunk_chars=chunk)) == records
    tricky = [{"token": f"t}}{i}", "inner": {"a": [1, {"b": "}, {"}], "c": "]"}, "n": i * 0.1} for i in range(5)]
    path.write_text(json.dumps(tricky, indent=1))  # '}' inside strings and inner objects: the one-by-one path
    for chunk in range(1, 120):  # every cut: inside strings, inner objects, between records
        assert list(ni.iter_json_records(path, chunk_chars=chunk)) == tricky
    for broken in ("", "{}", "[{}", "[{},]", "[{} {}]", "[1]", '[{"a": }]'):
        path.write_text(broken)
        with pytest.raises(ValueError, match="spaced.json: not a JSON list of records"):
            list(ni.iter_json_records(path, chunk_chars=3))
    path.write_text(" [ ] ")
    assert list(ni.iter_json_records(path, chunk_chars=2)) == []
    monkeypatch.setattr(ni, "CHUNK_CHARS", 101)
    assert _assert_same_payloads(dataroot) == 2


def test_inflated_tables_give_the_devkit_payloads(dataroot: Path, tmp_path: Path) -> None:
    root = _copy(dataroot, tmp_path / "raw")
    assert inflate_tables(root, VERSION, copies=3)["scene"] == 8
    assert _assert_same_payloads(root) == 8


def test_tables_at_given_counts_give_the_devkit_payloads(tmp_path: Path) -> None:
    write_nuscenes(tmp_path, sequences=2, frames=12, seed=0, version=VERSION)
    inflate_to_counts(tmp_path, VERSION, counts=COUNTS)
    assert _assert_same_payloads(tmp_path) == 5
    index = nb.load_tables(dataroot=str(tmp_path), version=VERSION)
    scene = next(s for s in index.scene if s["name"] == "synth-0000")
    sample = index.get("sample", scene["first_sample_token"])
    assert len(sample["data"]) == len(index.sensor) == 12  # every channel's keyframe token, as the devkit's
    tables = {n: {r["token"]: r for r in json.loads((tmp_path / VERSION / f"{n}.json").read_text())}
              for n in ("sample_data", "calibrated_sensor", "sensor")}
    kept = {t for t, r in tables["sample_data"].items() if tables["sensor"][tables["calibrated_sensor"][
        r["calibrated_sensor_token"]]["sensor_token"]]["channel"] in CHANNELS}
    assert set(index._tables["sample_data"]) == kept and 0 < len(kept) < len(tables["sample_data"]) / 3
    with pytest.raises(KeyError):  # another channel's record is not kept
        index.get("sample_data", sample["data"]["CAM_BACK"])


def test_lidarseg_and_panoptic_both_reach_the_payload(dataroot: Path, tmp_path: Path) -> None:
    root = _copy(dataroot, tmp_path / "raw")
    panoptic = json.loads((root / VERSION / "panoptic.json").read_text())
    (root / "lidarseg" / VERSION).mkdir(parents=True)
    lidarseg = []
    for record in panoptic:
        filename = f"lidarseg/{VERSION}/{record['token']}_lidarseg.bin"
        (root / filename).write_bytes(b"")
        lidarseg.append({"token": record["token"], "sample_data_token": record["token"], "filename": filename})
    (root / VERSION / "lidarseg.json").write_text(json.dumps(lidarseg))
    _assert_same_payloads(root)
    payload = nb.prepare_unit(str(root), nb.list_units(str(root), {"split": "all", "version": VERSION})[0],
                              {"split": "all", "version": VERSION}).params["tables"]
    assert len(payload["records"]["lidarseg"]) == len(payload["records"]["panoptic"]) == 2


@pytest.mark.parametrize(("table", "damage", "message"), [
    ("sample_annotation.json", "delete", "sample_annotation.json: missing"),
    ("sample_data.json", "truncate", "sample_data.json: not a JSON list of records"),
    ("ego_pose.json", "empty-list", "refers to ego_pose"),
    ("panoptic.json", "extra-record", "label files but 3 records"),
])
def test_bad_tables_are_named(dataroot: Path, tmp_path: Path, table: str, damage: str, message: str) -> None:
    root = _copy(dataroot, tmp_path / "raw")
    path = root / VERSION / table
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_text(path.read_text()[:-200])
    elif damage == "empty-list":
        path.write_text("[]")
    else:
        path.write_text(json.dumps(json.loads(path.read_text())[:2] + [{"token": "x"}]))
    with pytest.raises(ValueError, match=message):
        nb.load_tables(dataroot=str(root), version=VERSION)
    assert nb.main([str(root), str(tmp_path / "out"), "--split", "all", "--quiet"]) == 2
