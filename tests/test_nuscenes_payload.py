"""A nuScenes scene task gets only its own scene's records (never the whole tables), and builds from them alone.

Synthetic dataroot: 2 scenes x 8 CAM_FRONT frames, seed 0 (the setting of ``manifests/nuscenes-synth.json``).
The expected record sets are recomputed from the JSON tables with plain loops (scene -> samples ->
sample_data of the two channels -> poses, calibrations, annotations, instances, panoptic records).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

pytest.importorskip("nuscenes", reason="nuscenes-devkit is needed by the nuScenes builder")

from builders import nuscenes as nb  # noqa: E402
from builders.runner import build, run_unit  # noqa: E402
from dynamo_depth.shards.reader import iter_shard  # noqa: E402
from dynamo_depth.synth.nuscenes import write_nuscenes  # noqa: E402
from dynamo_depth.synth.nuscenes_inflate import inflate_tables  # noqa: E402

VERSION = "v1.0-mini"
OPTIONS = {"split": "all", "version": VERSION}
COPIES = 60  # 2 scenes -> 122 scenes


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nuscenes_raw")
    write_nuscenes(root, sequences=2, frames=8, seed=0, version=VERSION)
    return root


@pytest.fixture(autouse=True)
def _fresh_tables():
    nb._NUSCENES.clear()
    yield
    nb._NUSCENES.clear()


def _json_tables(root: Path) -> dict[str, dict[str, dict]]:
    names = ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor", "sample_annotation",
             "instance", "panoptic", "category", "attribute", "visibility")
    return {n: {r["token"]: r for r in json.loads((root / VERSION / f"{n}.json").read_text())} for n in names}


def _expected_tokens(tables: dict[str, dict[str, dict]], scene_token: str) -> dict[str, set[str]]:
    samples = {t for t, s in tables["sample"].items() if s["scene_token"] == scene_token}
    data = set()
    for token, sd in tables["sample_data"].items():
        channel = tables["sensor"][tables["calibrated_sensor"][sd["calibrated_sensor_token"]]["sensor_token"]]["channel"]
        if sd["sample_token"] in samples and channel in ("CAM_FRONT", "LIDAR_TOP"):
            data.add(token)
    annotations = {t for t, a in tables["sample_annotation"].items() if a["sample_token"] in samples}
    return {
        "scene": {scene_token}, "sample": samples, "sample_data": data,
        "ego_pose": {tables["sample_data"][t]["ego_pose_token"] for t in data},
        "calibrated_sensor": {tables["sample_data"][t]["calibrated_sensor_token"] for t in data},
        "sample_annotation": annotations,
        "instance": {tables["sample_annotation"][t]["instance_token"] for t in annotations},
        "panoptic": {t for t, p in tables["panoptic"].items() if p["sample_data_token"] in data},
        **{n: set(tables[n]) for n in ("category", "attribute", "visibility", "sensor")},
    }


def _payloads(root: Path) -> dict[str, dict]:
    units = nb.list_units(str(root), OPTIONS)
    return {u.name: nb.prepare_unit(str(root), u, OPTIONS).params["tables"] for u in units}


def test_each_payload_holds_exactly_its_scene_records(dataroot: Path) -> None:
    tables = _json_tables(dataroot)
    payloads = _payloads(dataroot)
    assert sorted(payloads) == ["scene-0001", "scene-0002"]
    for name, payload in payloads.items():
        scene_token = next(t for t, s in tables["scene"].items() if s["name"] == name)
        got = {table: {r["token"] for r in rows} for table, rows in payload["records"].items()}
        assert got == _expected_tokens(tables, scene_token), name
        # 8 CAM_FRONT frames + the 20 Hz sweeps covering them; keyframes every 6th frame: 2 samples
        assert len(got["sample"]) == 2 and len(got["panoptic"]) == 2
        assert sum(tables["sample_data"][t]["fileformat"] == "jpg" for t in got["sample_data"]) == 8
    first, second = (set().union(*({r["token"] for r in rows} for table, rows in p["records"].items()
                                   if table not in ("category", "attribute", "visibility", "sensor")))
                     for p in payloads.values())
    assert not first & second  # no record of one scene in the other's payload


def test_payload_does_not_grow_with_the_number_of_other_scenes(dataroot: Path, tmp_path: Path) -> None:
    before = _payloads(dataroot)
    root = tmp_path / "raw"
    shutil.copytree(dataroot / VERSION, root / VERSION)
    for folder in ("samples", "sweeps", "panoptic", "maps"):
        (root / folder).symlink_to(dataroot / folder)
    counts = inflate_tables(root, VERSION, copies=COPIES)
    assert counts["scene"] == 2 * (COPIES + 1)
    table_bytes = sum(p.stat().st_size for p in (root / VERSION).glob("*.json"))
    assert table_bytes > 40 * sum(p.stat().st_size for p in (dataroot / VERSION).glob("*.json"))
    after = _payloads(root)
    assert len(after) == 2 * (COPIES + 1)
    for name in before:  # the same records, byte for byte, but the dataroot
        same = {**after[name], "dataroot": before[name]["dataroot"]}
        assert pickle.dumps(same) == pickle.dumps(before[name])
        assert json.dumps(same, sort_keys=True) == json.dumps(before[name], sort_keys=True)
    copy = after["scene-0001-copy0007"]["records"]
    assert {t: len(rows) for t, rows in copy.items()} == {**{t: len(rows) for t, rows in before["scene-0001"][
        "records"].items()}, "panoptic": 0}  # the copies have no label files


def test_a_scene_task_builds_its_bytes_without_the_tables(dataroot: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    report = build(nb.SPEC, str(dataroot), str(reference), split="all", options=OPTIONS, workers=0,
                   show_progress=False)
    expected = {k: m for s in report.manifest.shards for k, m in iter_shard(str(reference / s.name))}
    root = tmp_path / "raw"
    shutil.copytree(dataroot, root, symlinks=True)
    units = [nb.prepare_unit(str(root), u, OPTIONS) for u in nb.list_units(str(root), OPTIONS)]
    nb._NUSCENES.clear()
    shutil.rmtree(root / VERSION)  # what a worker process sees: no tables at all
    built = {}
    for unit in units:
        outcome = run_unit(nb.SPEC, str(root), unit, OPTIONS, str(tmp_path / "out"))
        assert outcome.error is None and outcome.record is not None and outcome.record.samples == 6
        staged = tmp_path / "out" / "_staging" / f"{unit.name}-000000.tar"
        built.update(iter_shard(str(staged)))
    assert not nb._NUSCENES  # the tables were never loaded
    assert sorted(built) == sorted(expected) and all(built[k] == expected[k] for k in expected)
