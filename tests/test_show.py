"""``python -m dynamo_depth show``: one sample drawn to a PNG; a wrong key names the shard set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dynamo_depth.shards.manifest import Manifest, save_manifest
from dynamo_depth.shards.schema import encode
from dynamo_depth.shards.writer import ShardWriter
from dynamo_depth.show import main
from tests.samples import make_sample


def _shards(tmp_path: Path) -> Path:
    samples = [make_sample(i, n_points=50, width=64, height=32) for i in range(3)]
    with ShardWriter(str(tmp_path), prefix="kitti-train", max_count=2) as writer:
        for sample in samples:
            writer.write(sample.key, encode(sample))
    save_manifest(Manifest(dataset="kitti", split="train", builder="test", builder_version="0",
                           shards=tuple(writer.close())), str(tmp_path))
    return tmp_path


def test_show_writes_a_picture_of_the_requested_sample(tmp_path: Path, capsys) -> None:
    shards = _shards(tmp_path / "shards")
    key = make_sample(2).key
    out = tmp_path / "sample.png"
    assert main([str(shards / "manifest.json"), "--key", key, "--out", str(out)]) == 0
    assert key in capsys.readouterr().out
    picture = np.asarray(Image.open(out))
    assert picture.shape[0] > 300 and picture.shape[1] > 600
    assert picture.std() > 10  # not a blank canvas


def test_show_unknown_key_is_a_clear_error(tmp_path: Path, capsys) -> None:
    shards = _shards(tmp_path / "shards")
    assert main([str(shards), "--key", "nope_cam_000001", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no sample with key 'nope_cam_000001'" in err and str(shards) in err


def test_show_corrupt_jpeg_names_sample_and_member(tmp_path: Path, capsys) -> None:
    import dataclasses

    sample = make_sample(0, width=64, height=32)
    broken = dataclasses.replace(sample, images=(sample.images[0], sample.images[1][:40] + b"\xff\xd9",
                                                 sample.images[2]))
    with ShardWriter(str(tmp_path), prefix="kitti-train") as writer:
        writer.write(broken.key, encode(broken))
    save_manifest(Manifest(dataset="kitti", split="train", builder="test", builder_version="0",
                           shards=tuple(writer.close())), str(tmp_path))
    assert main([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert f"sample {broken.key!r}, member 'cur.jpg': cannot decode the JPEG" in capsys.readouterr().err
