"""The three test splits build from the synthetic worlds with the original's split-file formats: every listed
frame exactly once, first and last frames of a sequence included (the missing neighbour is the frame itself,
flagged in meta.json). Small worlds (4-5 frames) keep this fast."""

from __future__ import annotations

from pathlib import Path

import pytest

from builders import kitti, nuscenes, waymo
from builders.cli import make_parser
from builders.runner import build
from dynamo_depth.shards.manifest import load_manifest
from dynamo_depth.shards.reader import iter_shard
from dynamo_depth.shards.schema import decode, edge_neighbours
from dynamo_depth.synth import kitti as synth_kitti
from dynamo_depth.synth import waymo as synth_waymo
from dynamo_depth.synth.nuscenes import write_nuscenes

SMALL_WAYMO = synth_waymo.WaymoSynthOptions(top_width=400, short_range_hw=(60, 180), image_hw=(320, 480))


def _samples(out: Path) -> list:
    manifest = load_manifest(str(out))
    assert not manifest.failed, manifest.failed
    return [decode(members, key=key) for shard in manifest.shards for key, members in iter_shard(str(out / shard.name))]


def _check(samples: list, expected: dict[int, tuple[str, ...]], last: int) -> None:
    """Each expected frame once; its edge flag and frame indices follow the original's rule."""
    frames = [s.meta.frame_indices[1] for s in samples]
    assert sorted(frames) == sorted(expected) and len(set(s.key for s in samples)) == len(samples)
    for sample in samples:
        t = sample.meta.frame_indices[1]
        assert edge_neighbours(sample.meta) == expected[t], t
        assert sample.meta.frame_indices == (t - 1 if t > 0 else t, t, t + 1 if t < last else t)
        if "prev" in expected[t]:
            assert sample.images[0] == sample.images[1]
        if "next" in expected[t]:
            assert sample.images[2] == sample.images[1]


def test_kitti_split_file_builds_edge_frames(tmp_path: Path) -> None:
    synth_kitti.write_kitti(tmp_path / "raw", sequences=1, frames=4, seed=0)
    drive = next((tmp_path / "raw").glob("*/*_drive_*_sync"))
    split = tmp_path / "test_files.txt"
    split.write_text("".join(f"{drive.parent.name}/{drive.name} {f:010d} l\n" for f in (3, 0, 1, 3)))  # 3 twice
    options = kitti.options_from_args(make_parser(kitti.SPEC).parse_args(
        ["RAW", "OUT", "--split", "test", "--split-file", str(split), "--cameras", "image_02"]))
    assert build(kitti.SPEC, str(tmp_path / "raw"), str(tmp_path / "out"), split="test", options=options,
                 workers=0, show_progress=False).ok
    samples = _samples(tmp_path / "out")
    _check(samples, {0: ("prev",), 1: (), 3: ("next",)}, last=3)
    assert all(s.original_image is not None and s.original_image[:4] == b"\x89PNG" for s in samples)


def test_waymo_split_file_builds_edge_frames(tmp_path: Path) -> None:
    (path,) = synth_waymo.write_waymo(tmp_path / "raw", sequences=1, frames=4, seed=0, options=SMALL_WAYMO)
    segment = path.name[: -len(waymo.SEGMENT_SUFFIX)]
    split = tmp_path / "test_files.txt"
    split.write_text("".join(f"val/{segment} {f}\n" for f in (3, 0, 2)))
    options = waymo.options_from_args(make_parser(waymo.SPEC).parse_args(
        ["RAW", "OUT", "--split", "test", "--split-file", str(split)]))
    assert build(waymo.SPEC, str(tmp_path / "raw"), str(tmp_path / "out"), split="test", options=options,
                 workers=0, show_progress=False).ok
    _check(_samples(tmp_path / "out"), {0: ("prev",), 2: (), 3: ("next",)}, last=3)


def test_nuscenes_split_file_builds_edge_frames(tmp_path: Path) -> None:
    info = write_nuscenes(tmp_path / "raw", sequences=1, frames=5, seed=0, version="v1.0-mini")
    scene = info.scene_names[0]
    split = tmp_path / "test_files.txt"
    split.write_text("".join(f"scenes/{scene} {f}\n" for f in (0, 2, 4)))
    options = nuscenes.options_from_args(make_parser(nuscenes.SPEC).parse_args(
        [str(tmp_path / "raw"), "OUT", "--split", "test", "--split-file", str(split)]))
    assert build(nuscenes.SPEC, str(tmp_path / "raw"), str(tmp_path / "out"), split="test", options=options,
                 workers=0, show_progress=False).ok
    _check(_samples(tmp_path / "out"), {0: ("prev",), 2: (), 4: ("next",)}, last=4)


@pytest.mark.parametrize(("module", "line"), [(kitti, "drive 0 x"), (waymo, "segment-x 1"), (nuscenes, "scene-1 0")])
def test_bad_split_lines_name_file_and_line(module, line: str, tmp_path: Path) -> None:
    split = tmp_path / "bad.txt"
    split.write_text(f"\n{line}\n")
    parse = {kitti: kitti._split_frames, waymo: waymo.split_file_frames, nuscenes: nuscenes.split_file_frames}[module]
    with pytest.raises(ValueError, match=r"bad.txt: line 2: expected"):
        parse(str(split))


def test_loader_leaves_edge_samples_out_of_training_unless_asked(tmp_path: Path) -> None:
    """A split-file build flags its edge samples in the manifest (from meta.json); the plan drops them BEFORE
    the rank cut, so every rank still gets the same number of batches; include_edges keeps them."""
    import json

    from dynamo_depth.data import make_dataset, make_loader

    synth_kitti.write_kitti(tmp_path / "raw", sequences=1, frames=4, seed=0)
    drive = next((tmp_path / "raw").glob("*/*_drive_*_sync"))
    split = tmp_path / "test_files.txt"
    split.write_text("".join(f"{drive.parent.name}/{drive.name} {f:010d} {side}\n"
                             for f in (0, 1, 2, 3) for side in "lr"))
    options = kitti.options_from_args(make_parser(kitti.SPEC).parse_args(
        ["RAW", "OUT", "--split", "test", "--split-file", str(split)]))
    out = tmp_path / "out"
    assert build(kitti.SPEC, str(tmp_path / "raw"), str(out), split="test", options=options,
                 workers=0, show_progress=False).ok
    samples = _samples(out)
    edges = {s.key for s in samples if edge_neighbours(s.meta)}
    regular = {s.key for s in samples} - edges
    assert len(edges) == 4 and len(regular) == 4  # frames 0 and 3 of both cameras
    spans = [span for shard in json.loads((out / "manifest.json").read_text())["shards"] for span in shard["samples"]]
    assert {span["key"] for span in spans if span.get("edge")} == edges
    assert all(span.get("edge", True) is True for span in spans)  # written only as "edge": true

    for include_edges, want in ((False, regular), (True, regular | edges)):
        for world_size in (1, 3):
            per_rank = [[raw["__key__"] for raw in make_dataset(str(out), rank=r, world_size=world_size, seed=1,
                                                                 decode=False, include_edges=include_edges)]
                        for r in range(world_size)]
            seen = [k for keys in per_rank for k in keys]
            assert len(set(map(len, per_rank))) == 1 and len(seen) == len(set(seen)), per_rank
            assert set(seen) <= want and len(seen) == len(want) // world_size * world_size
            loaders = [make_loader(str(out), batch_size=2, num_workers=0, rank=r, world_size=world_size,
                                   include_edges=include_edges) for r in range(world_size)]
            batches = [[list(b["keys"]) for b in loader] for loader in loaders]
            assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(loaders[0]) > 0
            assert {k for b in batches for keys in b for k in keys} <= want
    default = {k for b in make_loader(str(out), batch_size=8, num_workers=0) for k in b["keys"]}
    assert default == regular
