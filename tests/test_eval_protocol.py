"""eval.depth equals the original protocol (../shared/reference/eval_protocol.md) on shards built from the
real samples: KITTI drive 0009 (fixtures/kitti_raw) and the Waymo PVPS frame with its synthetic LiDAR
(reference/waymo_synthetic_lidar), both built from split files that name their edge frames.

One fixed set of predictions (the network's sigmoid, at the training size): a plane
``s(r', c') = a + b r' + c c'`` per sample, whose bilinear upsampling is the plane at the clamped source
coordinates ``clamp((x + 0.5) * size' / size - 0.5, 0, size' - 1)``. The expected numbers are computed here,
in float64, from the facts alone: ``disp_to_depth`` 0.01 + 9.99 s, truncated pixel, gt in (1e-3, cap), the
Garg bounds ``int(fraction * size)``, lower-middle medians, clamp, mean over images, point-weighted classes.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from builders import kitti, waymo
from builders.runner import build
from dynamo_depth.shards.manifest import load_manifest
from dynamo_depth.shards.reader import iter_shard
from dynamo_depth.shards.schema import decode, edge_neighbours
from eval import depth as eval_depth
from tests.samples import SHARED

KITTI_RAW = SHARED / "fixtures" / "kitti_raw"
SEGMENT = "segment-1024360143612057520_3580_000_3600_000"
SYNTHETIC_LIDAR = SHARED / "reference" / "waymo_synthetic_lidar" / "synthetic_lidar_3frames.tfrecord"
pytestmark = pytest.mark.skipif(not KITTI_RAW.exists() or not SYNTHETIC_LIDAR.exists(),
                                reason="../shared (real KITTI / Waymo samples) is absent")
GARG = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def _samples(out: Path) -> list:
    manifest = load_manifest(str(out))
    return [decode(members, key=key) for shard in manifest.shards for key, members in iter_shard(str(out / shard.name))]


@pytest.fixture(scope="module")
def kitti_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kitti_test")
    split = root / "test_files.txt"  # frames 0 and 9 are the first and last of the fixture drive
    split.write_text("".join(f"2011_09_26/2011_09_26_drive_0009_sync {f:010d} {s}\n"
                             for f, s in ((0, "l"), (4, "l"), (9, "l"), (0, "r"))))
    options = {"cameras": ["image_02", "image_03"], "split": "test", "split_file": str(split),
               "split_file_sha256": "test"}
    assert build(kitti.SPEC, str(KITTI_RAW), str(root / "out"), split="test", options=options, workers=0,
                 show_progress=False).ok
    return root / "out"


@pytest.fixture(scope="module")
def waymo_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("waymo_test")
    (root / "raw" / "val").mkdir(parents=True)
    shutil.copy(SYNTHETIC_LIDAR, root / "raw" / "val" / f"{SEGMENT}_with_camera_labels.tfrecord")
    split = root / "test_files.txt"
    split.write_text("".join(f"val/{SEGMENT} {f}\n" for f in (2, 0, 1)))
    options = {"cameras": ["FRONT"], "split": "test", "split_file": str(split), "split_file_sha256": "test"}
    assert build(waymo.SPEC, str(root / "raw"), str(root / "out"), split="test", options=options, workers=0,
                 show_progress=False).ok
    return root / "out"


def _plane(index: int, hw: tuple[int, int]) -> tuple[float, float, float]:
    """(a, b, c) of sample ``index``'s sigmoid plane: 0.004..0.05 over the map, different per sample."""
    a = 0.004 + 0.002 * index
    return a, 0.03 / hw[0], (0.01 + 0.003 * index) / hw[1]


def _predictions(samples: list, train_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    rows, cols = np.meshgrid(np.arange(train_hw[0]), np.arange(train_hw[1]), indexing="ij")
    out = {}
    for i, sample in enumerate(samples):
        a, b, c = _plane(i, train_hw)
        out[sample.key] = (a + b * rows + c * cols).astype(np.float32)
    return out


def _source(x: np.ndarray, *, size: int, train: int) -> np.ndarray:
    return np.clip((x + 0.5) * train / size - 0.5, 0.0, train - 1)


def _lower_median(x: np.ndarray) -> float:
    return float(np.sort(x)[(x.size - 1) // 2])


def _errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    thresh = np.maximum(gt / pred, pred / gt)
    return {"abs_rel": np.mean(np.abs(gt - pred) / gt), "sq_rel": np.mean((gt - pred) ** 2 / gt),
            "rmse": math.sqrt(np.mean((gt - pred) ** 2)), "rmse_log": math.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2)),
            "a1": np.mean(thresh < 1.25), "a2": np.mean(thresh < 1.25**2), "a3": np.mean(thresh < 1.25**3)}


def _by_hand(samples: list, train_hw: tuple[int, int], *, cap: float, garg: bool) -> dict:
    """Per image: valid points, truncated pixel, plane depth, lower-median scaling, clamp, errors."""
    per_image, classes = [], {0: [], 1: [], 2: []}
    for i, sample in enumerate(samples):
        h, w = sample.meta.original_size
        u, v, z = (sample.depth[:, k].astype(np.float64) for k in range(3))
        frac = GARG if garg else (0.0, 1.0, 0.0, 1.0)
        top, bottom, left, right = int(frac[0] * h), int(frac[1] * h), int(frac[2] * w), int(frac[3] * w)
        valid = (z > 1e-3) & (z < cap) & (v >= top) & (v < bottom) & (u >= left) & (u < right)
        r, c = np.floor(v[valid]), np.floor(u[valid])
        a, b, cc = _plane(i, train_hw)
        sigmoid = a + b * _source(r, size=h, train=train_hw[0]) + cc * _source(c, size=w, train=train_hw[1])
        pred = 1.0 / (0.01 + 9.99 * sigmoid)
        gt = z[valid]
        pred = np.clip(pred * _lower_median(gt) / _lower_median(pred), 1e-3, cap)
        per_image.append(_errors(gt, pred))
        if sample.motion is not None:
            labels = sample.motion[valid]
            for label in classes:
                if np.any(labels == label):
                    classes[label].append((_errors(gt[labels == label], pred[labels == label]), int(np.sum(labels == label))))
    overall = {n: float(np.mean([e[n] for e in per_image])) for n in NAMES}
    weighted = {label: {n: sum(e[n] * k for e, k in parts) / sum(k for _, k in parts) for n in NAMES}
                for label, parts in classes.items() if parts}
    return {"overall": overall, "classes": weighted}


def _evaluate(out: Path, samples: list, train_hw: tuple[int, int], tmp_path: Path) -> dict:
    np.savez(tmp_path / "pred.npz", **_predictions(samples, train_hw))
    assert eval_depth.main(["--data", str(out), "--predictions", str(tmp_path / "pred.npz"),
                            "--out", str(tmp_path / "report")]) == 0
    return json.loads((tmp_path / "report" / "metrics.json").read_text())


def _assert_close(got: dict, want: dict) -> None:
    for name in NAMES:
        assert got[name] == pytest.approx(want[name], rel=1e-6), name


def test_kitti_test_split_equals_the_hand_computed_protocol(kitti_test: Path, tmp_path: Path) -> None:
    samples = _samples(kitti_test)
    keys = sorted(s.key for s in samples)
    assert keys == sorted(f"2011_09_26_drive_0009_sync_{cam}_{f:06d}"
                          for f, cam in ((0, "image_02"), (4, "image_02"), (9, "image_02"), (0, "image_03")))
    edges = {s.key: edge_neighbours(s.meta) for s in samples}
    assert edges["2011_09_26_drive_0009_sync_image_02_000000"] == ("prev",)
    assert edges["2011_09_26_drive_0009_sync_image_02_000009"] == ("next",)
    assert edges["2011_09_26_drive_0009_sync_image_02_000004"] == ()
    first = next(s for s in samples if s.key.endswith("image_02_000000"))
    assert first.meta.frame_indices == (0, 0, 1) and first.images[0] == first.images[1]
    png = KITTI_RAW / "2011_09_26" / "2011_09_26_drive_0009_sync" / "image_02" / "data" / "0000000000.png"
    assert first.original_image == png.read_bytes()  # the raw PNG, for the bicubic network input
    report = _evaluate(kitti_test, samples, (192, 640), tmp_path)
    assert report["protocol"]["name"] == "original" and report["num_images"] == 4
    _assert_close(report["overall"], _by_hand(samples, (192, 640), cap=80.0, garg=True)["overall"])


def test_waymo_test_split_equals_the_hand_computed_protocol(waymo_test: Path, tmp_path: Path) -> None:
    samples = _samples(waymo_test)
    assert [s.key for s in samples] == [f"{SEGMENT}_FRONT_{f:06d}" for f in (0, 1, 2)]
    assert [edge_neighbours(s.meta) for s in samples] == [("prev",), (), ("next",)]
    assert [s.meta.frame_indices for s in samples] == [(0, 0, 1), (0, 1, 2), (1, 2, 2)]
    report = _evaluate(waymo_test, samples, (320, 480), tmp_path)
    hand = _by_hand(samples, (320, 480), cap=75.0, garg=False)
    _assert_close(report["overall"], hand["overall"])
    assert report["num_labelled_images"] == 1  # only the real frame 1 carries labels
    for name, label in (("background", 0), ("moving", 1), ("static_movable", 2)):
        _assert_close(report["per_class"][name], hand["classes"][label])
