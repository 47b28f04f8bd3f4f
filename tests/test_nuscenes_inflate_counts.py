"""``inflate_to_counts``: nuScenes tables with exact record counts and a realistic per-scene structure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("nuscenes", reason="nuscenes-devkit loads the inflated tables")

from nuscenes.nuscenes import NuScenes  # noqa: E402

from builders import nuscenes as nb  # noqa: E402
from dynamo_depth.synth.nuscenes import write_nuscenes  # noqa: E402
from dynamo_depth.synth.nuscenes_inflate import TableCounts, inflate_to_counts  # noqa: E402

VERSION = "v1.0-mini"
# the 2-scene source (12 frames each) holds 2 scenes, 4 samples, 64 sample_data, 28 annotations, 14 instances;
# 3 new scenes of 10 samples, 400 sample_data, 50 annotations, 8 instances each (the first one: 401 sample_data)
COUNTS = TableCounts(scenes=5, samples=34, sample_data=64 + 1201, sample_annotations=28 + 150, instances=14 + 24)


@pytest.fixture(scope="module")
def inflated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("nusc_counts")
    write_nuscenes(root, sequences=2, frames=12, seed=0, version=VERSION)
    return root, inflate_to_counts(root, VERSION, counts=COUNTS)


def test_exact_counts_and_the_devkit_loads_them(inflated: tuple[Path, dict[str, int]]) -> None:
    root, written = inflated
    assert written == {"scene": 5, "sample": 34, "sample_data": 1265, "ego_pose": 1265, "sample_annotation": 178,
                       "instance": 38, "calibrated_sensor": 4 + 3 * 12, "sensor": 12}
    nusc = NuScenes(version=VERSION, dataroot=str(root), verbose=False)
    assert (len(nusc.scene), len(nusc.sample), len(nusc.sample_data), len(nusc.sample_annotation)) == (5, 34, 1265, 178)
    for name in written:  # the streamed tables are what json.dumps of the whole list writes
        text = (root / VERSION / f"{name}.json").read_text()
        assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")) + "\n"


def test_a_synthetic_scene_has_the_real_structure(inflated: tuple[Path, dict[str, int]]) -> None:
    root, _ = inflated
    nusc = NuScenes(version=VERSION, dataroot=str(root), verbose=False)
    scene = next(s for s in nusc.scene if s["name"] == "synth-0000")  # the first one: 401 sample_data
    samples = [nusc.get("sample", scene["first_sample_token"])]
    while samples[-1]["next"]:
        samples.append(nusc.get("sample", samples[-1]["next"]))
    assert len(samples) == scene["nbr_samples"] == 10
    assert all(len(s["data"]) == 12 for s in samples)  # one keyframe per sample of each of the 12 channels
    assert sum(len(s["anns"]) for s in samples) == 50
    # 400 records split by rate (12 Hz x 6, 20 Hz, 13 Hz x 5 of 157): CAM_FRONT 30 + 1 + the rounding rest
    chains = {}
    for channel, token in samples[0]["data"].items():
        count = 0
        while token:
            record = nusc.get("sample_data", token)
            assert record["is_key_frame"] == (record["token"] in {s["data"][channel] for s in samples})
            count, token = count + 1, record["next"]
        chains[channel] = count
    assert chains["LIDAR_TOP"] == 401 * 20 // 157 == 51
    assert chains["CAM_FRONT_LEFT"] == 401 * 12 // 157 == 30 and chains["RADAR_FRONT"] == 401 * 13 // 157 == 33
    assert sum(chains.values()) == 401 and chains["CAM_FRONT"] == 401 - 5 * 30 - 51 - 5 * 33 == 35
    for sample in samples:  # a sample's time is its LIDAR_TOP keyframe's; camera keyframes within a frame period
        assert nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["timestamp"] == sample["timestamp"]
        assert abs(nusc.get("sample_data", sample["data"]["CAM_FRONT"])["timestamp"] - sample["timestamp"]) < 1e6 / 12


def test_a_synthetic_scene_payload_holds_its_two_channels(inflated: tuple[Path, dict[str, int]]) -> None:
    root, _ = inflated
    options = {"split": "all", "version": VERSION}
    nb._NUSCENES.clear()
    try:
        unit = next(u for u in nb.list_units(str(root), options) if u.name == "synth-0000")
        records = nb.prepare_unit(str(root), unit, options).params["tables"]["records"]
    finally:
        nb._NUSCENES.clear()
    assert len(records["sample"]) == 10 and len(records["sample_annotation"]) == 50
    assert len(records["sample_data"]) == len(records["ego_pose"]) == 35 + 51  # CAM_FRONT and LIDAR_TOP chains
    assert len(records["calibrated_sensor"]) == 2 and len(records["instance"]) == 8


def test_counts_below_the_dataroot_are_refused(tmp_path: Path) -> None:
    write_nuscenes(tmp_path, sequences=2, frames=12, seed=0, version=VERSION)
    with pytest.raises(ValueError, match="must exceed the dataroot's own"):
        inflate_to_counts(tmp_path, VERSION, counts=TableCounts(2, 4, 64, 28, 14))
