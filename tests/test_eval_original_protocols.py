"""eval.motion_segmentation and eval.odometry equal the original's protocols (eval_protocol.md sections 6, 7),
against numbers computed here from the facts alone, to 1e-6:

- odometry on a synthetic world written here: a vehicle driving (1, 0.5, 0) m per frame (x forward, y left)
  with a Waymo-mounted camera, predictions = the exact camera motion; closed-form ATEs of every protocol;
- motion segmentation on the real Waymo PVPS frame (its synthetic LiDAR reference) built from a split file:
  the full-resolution mask must be the one drawn from the ORIGINAL's ``mask/000001.pickle``, and the counts of
  a dyadic prediction (exact in float32 through the 4x bilinear upsampling) are counted here pixel by pixel;
- motion segmentation and odometry on the synthetic nuScenes world (builder output): the cell grid built
  here by explicit loops, and the odometry windows from the shards' poses with SfMLearner's formulas.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dynamo_depth.shards.schema import EDGE_KEY, SampleMeta, TripletSample, encode, make_key, matrix_tuple
from eval import motion_segmentation as eval_motion
from eval import odometry as eval_odometry
from tests.test_eval_protocol import waymo_test  # noqa: F401  (module fixture: the PVPS frame built from a split file)

THRESHOLDS = np.array([(k - 1) / 149 for k in range(150)])  # the facts: linspace(-eps, 1 - eps), eps = 1/149
# the Waymo camera mounted on the vehicle: camera z = vehicle x, camera x = -vehicle y, camera y = -vehicle z
VEHICLE_FROM_CAMERA = np.array([[0.0, 0.0, 1.0, 1.5], [-1.0, 0.0, 0.0, 0.1], [0.0, -1.0, 0.0, 2.0], [0, 0, 0, 1]])
STEP = np.array([1.0, 0.5, 0.0])  # vehicle motion per frame, vehicle axes


def _translation(t) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, 3] = t
    return pose


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 12, 3), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _world_sample(sequence: str, frame: int, last: int) -> TripletSample:
    """Frame ``frame`` of 0..last; the world yaw of 0.3 rad makes the world axes differ from the vehicle's."""
    c, s = math.cos(0.3), math.sin(0.3)
    yaw = np.array([[c, -s, 0, 3.0], [s, c, 0, -2.0], [0, 0, 1, 0.5], [0, 0, 0, 1]])
    frames = (max(frame - 1, 0), frame, min(frame + 1, last))
    poses = np.stack([yaw @ _translation(STEP * f) @ VEHICLE_FROM_CAMERA for f in frames])
    edge = [n for n, f in (("prev", frames[0]), ("next", frames[2])) if f == frame]
    meta = SampleMeta(dataset="waymo", split="val", sequence=sequence, camera="FRONT", frame_indices=frames,
                      timestamps_us=tuple(100_000 * f for f in frames), original_size=(8, 12),
                      original_K=matrix_tuple(np.eye(3)), ego_from_camera=matrix_tuple(VEHICLE_FROM_CAMERA),
                      builder="tests", builder_version="0", extra={EDGE_KEY: edge} if edge else {})
    return TripletSample(key=make_key(sequence, "FRONT", frame), images=(_jpeg(),) * 3, K=np.eye(3), poses=poses,
                         depth=np.zeros((0, 3), np.float32), meta=meta)


def _write(folder: Path, samples: list[TripletSample]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "waymo-val-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for member, data in sorted(encode(sample).items()):
                info = tarfile.TarInfo(f"{sample.key}.{member}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    return folder


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """Sequences seq-a (frames 0..7: targets 1..6) and seq-b (0..5: targets 1..4), edges included; predictions
    are the exact camera motion camera_t_from_camera_t+1 = translation (-0.5, 0, 1) (camera x = -vehicle y)."""
    samples = [_world_sample("seq-a", f, 7) for f in range(8)] + [_world_sample("seq-b", f, 5) for f in range(6)]
    preds = tmp_path / "poses.npz"
    np.savez(preds, **{s.key: _translation([-0.5, 0.0, 1.0]) for s in samples})
    return _write(tmp_path / "shards", samples), preds


def _odometry(shards: Path, preds: Path, out: Path, *extra: str) -> tuple[dict, np.ndarray]:
    assert eval_odometry.main(["--data", str(shards), "--predictions", str(preds), "--out", str(out), *extra]) == 0
    return json.loads((out / "metrics.json").read_text()), np.load(out / "record.npy")


def test_odometry_original_protocol_by_hand(world, tmp_path: Path) -> None:
    """Original: GT local poses inv(inv(G[i-1]) G[i]) of the VEHICLE run backwards: positions -k (1, 0.5, 0);
    the prediction (-0.5 k, 0, k) re-ordered (z, x, y) is (k, -0.5 k, 0); scale = (-1 + 0.25) / 1.25 = -0.6;
    error (0.4 k, 0.8 k, 0), |e|^2 = 0.8 k^2: 5 frames sqrt(0.8 * 30) / 5, the final 4-frame window
    sqrt(0.8 * 14) / 4. seq-a: 6 targets -> 3 + 1 windows; seq-b: 4 targets -> 1 + 1. Speed |(1, 0.5)|."""
    shards, preds = world
    report, record = _odometry(shards, preds, tmp_path / "original")
    five, four = math.sqrt(0.8 * 30) / 5, math.sqrt(0.8 * 14) / 4
    want = [five, five, five, four, five, four]
    np.testing.assert_allclose(record[:, 0], want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(record[:, 1], math.sqrt(1.25), rtol=0, atol=1e-9)
    assert report["protocol"]["name"] == "original" and report["edge_samples_left_out"] == 4
    assert (report["num_sequences"], report["num_windows"]) == (2, 6)
    assert report["ate"]["mean"] == pytest.approx(np.mean(want), abs=1e-9)
    assert report["ate"]["std"] == pytest.approx(np.std(want), abs=1e-9)
    assert report["ate"]["median"] == pytest.approx(np.median(want), abs=1e-9)
    assert (report["ate"]["min"], report["ate"]["max"]) == (pytest.approx(four), pytest.approx(five))
    assert "original Dynamo-Depth protocol" in (tmp_path / "original" / "metrics.md").read_text()
    first, _ = _odometry(shards, preds, tmp_path / "one", "--max-sequences", "1")  # the first by name only
    assert first["num_windows"] == 4 and "MODIFIED protocol: 1 sequences" in first["protocol"]["description"]


def test_odometry_corrected_protocol_scores_the_exact_motion_zero(world, tmp_path: Path) -> None:
    """Camera GT in the prediction's direction, axes kept, RMSE: the exact camera motion has ATE 0; with the
    original's axes but camera GT, the prediction re-ordered to (k, -0.5 k, 0) against (-0.5 k, 0, k):
    scale -0.5 / 1.25 = -0.4, |e|^2 = k^2 ((-0.4 + 0.5)^2 + 0.2^2 + 1) = 1.05 k^2 (RMSE: sqrt(1.05 * 30 / 5))."""
    shards, preds = world
    report, record = _odometry(shards, preds, tmp_path / "fixed", "--gt", "camera", "--axes", "none", "--ate", "rmse")
    np.testing.assert_allclose(record[:, 0], 0.0, atol=1e-12)
    assert report["protocol"]["description"].startswith("MODIFIED protocol: camera ground-truth poses")
    _, record = _odometry(shards, preds, tmp_path / "gt_only", "--gt", "camera", "--ate", "rmse")
    np.testing.assert_allclose(record[:, 0], [math.sqrt(1.05 * 30 / 5)] * 3 + [math.sqrt(1.05 * 14 / 4)]
                               + [math.sqrt(1.05 * 30 / 5), math.sqrt(1.05 * 14 / 4)], atol=1e-9)


# ------------------------------------------------------------------ the real Waymo PVPS frame
def _upsample_4x(x: np.ndarray) -> np.ndarray:
    """Bilinear, align_corners=False, exactly 4x (source (i + 0.5) / 4 - 0.5, clamped), separable, float64."""
    def along(a: np.ndarray, axis: int) -> np.ndarray:
        n = a.shape[axis]
        src = np.clip((np.arange(4 * n) + 0.5) / 4 - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        w = (src - lo).reshape([-1 if k == axis else 1 for k in range(a.ndim)])
        return np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w
    return along(along(x, 0), 1)


def _hand_counts(scores: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    valid, moving = mask != 3, mask == 1
    tp = np.array([np.sum(moving & (scores > t)) for t in THRESHOLDS])
    predicted = np.array([np.sum(valid & (scores > t)) for t in THRESHOLDS])
    return tp, predicted - tp, moving.sum() - tp


def _hand_f1(tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = tp / np.maximum(tp + fp, 1e-10)
    recall = tp / np.maximum(tp + fn, 1e-10)
    return precision, recall, np.where(precision + recall > 0, 2 * precision * recall / (precision + recall + 1e-300), 0)


@pytest.fixture(scope="module")
def waymo_mask_reference() -> np.ndarray:
    from tests.test_builder_waymo import ORIGINAL, _restricted_load

    path = ORIGINAL / "mask" / "000001.pickle"
    if not path.exists():
        pytest.skip("../shared (the original's Waymo mask pickle) is absent")
    mask = np.zeros((1280, 1920), np.uint8)  # the facts: filled contours, 3 without box, 1 if speed > 1 m/s, else 2
    for obj in _restricted_load(path):
        label = 3 if obj["box_label"] is None else 1 if np.hypot(*obj["speed"][:2]) > 1.0 else 2
        cv2.drawContours(mask, list(obj["mask"]), -1, label, thickness=-1)
    return mask


def test_waymo_real_frame_by_hand(waymo_test: Path, waymo_mask_reference: np.ndarray,  # noqa: F811
                                  tmp_path: Path) -> None:
    from tests.test_eval_protocol import _samples

    samples = _samples(waymo_test)
    target = next(s for s in samples if s.meta.frame_indices == (0, 1, 2))
    np.testing.assert_array_equal(target.motion_mask, waymo_mask_reference)
    assert all(s.motion_mask is None for s in samples if s is not target)
    rows, cols = np.meshgrid(np.arange(320), np.arange(480), indexing="ij")
    moving_below = waymo_mask_reference[4 * rows + 1, 4 * cols + 1] == 1
    prediction = (32 * moving_below + (7 * rows + 3 * cols) % 32) / 64.0  # k / 64: exact through the upsampling
    np.savez(tmp_path / "pred.npz", **{s.key: prediction.astype(np.float32) for s in samples})
    out = tmp_path / "report"
    assert eval_motion.main(["--data", str(waymo_test), "--predictions", str(tmp_path / "pred.npz"),
                             "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["num_images"] == 1 and len(report["skipped"]) == 2  # frames 0 and 2 are edges: pruned
    tp, fp, fn = _hand_counts(_upsample_4x(prediction), waymo_mask_reference)
    assert (report["num_scored"], report["num_moving"]) == (1280 * 1920 - 47110, 64381)
    for name, want in (("tp", tp), ("fp", fp), ("fn", fn)):
        np.testing.assert_array_equal(report["curve"][name], want)
    precision, recall, f1 = _hand_f1(tp, fp, fn)
    np.testing.assert_allclose(report["curve"]["precision"], precision, rtol=0, atol=1e-6)
    np.testing.assert_allclose(report["curve"]["recall"], recall, rtol=0, atol=1e-6)
    np.testing.assert_allclose(report["curve"]["f1"], f1, rtol=0, atol=1e-6)
    assert report["best_f1"] == pytest.approx(f1.max(), abs=1e-6)
    assert report["best_threshold"] == pytest.approx(THRESHOLDS[int(np.argmax(f1))], abs=1e-7)
    assert f1[-1] < f1.max() and precision[0] == pytest.approx(64381 / (1280 * 1920 - 47110))




def test_motion_mask_member_round_trips_and_is_checked() -> None:
    from dynamo_depth.shards.schema import SampleError, decode

    sample = _world_sample("seq-a", 3, 7)
    mask = (np.arange(8 * 12).reshape(8, 12) % 4).astype(np.uint8)
    with_mask = TripletSample(**{**{f: getattr(sample, f) for f in ("key", "images", "K", "poses", "depth", "meta")},
                                 "motion_mask": mask})
    members = encode(with_mask)
    assert "motion_mask.npy.zst" in members
    np.testing.assert_array_equal(decode(members, key=sample.key).motion_mask, mask)
    assert decode(encode(sample), key=sample.key).motion_mask is None
    with pytest.raises(SampleError, match=r"motion_mask.npy.zst.*shape \(8, 11\), expected \(8, 12\)"):
        TripletSample(**{**{f: getattr(sample, f) for f in ("key", "images", "K", "poses", "depth", "meta")},
                         "motion_mask": mask[:, :11]})


def test_waymo_real_frame_odometry_ground_truth_is_the_originals(waymo_test: Path, tmp_path: Path,  # noqa: F811
                                                                 capsys) -> None:
    """The original's GT is its odometry.txt (CameraImage.pose, vehicle axes), first line skipped: for the target
    frame 1 of the real segment, lines 1 and 2 are the vehicle poses of frames 1 and 2, and the one local pose
    inv(inv(G1) G2); with a single target there is no window of 4 positions (the original skips it too)."""
    from tests.test_builder_waymo import ORIGINAL
    from tests.test_eval_protocol import _samples

    lines = np.loadtxt(ORIGINAL / "odometry.txt").reshape(-1, 4, 4)
    target = next(s for s in _samples(waymo_test) if s.meta.frame_indices == (0, 1, 2))
    protocol = eval_odometry.OdometryProtocol()
    gt = np.stack([eval_odometry.gt_pose(target, 1, protocol), eval_odometry.gt_pose(target, 2, protocol)])
    np.testing.assert_allclose(gt[:, :3, :3], lines[1:, :3, :3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(gt[:, :3, 3], lines[1:, :3, 3], rtol=0, atol=1e-8)  # |t| ~ 5e4 m
    from dynamo_depth.evaluation.odometry import local_gt_poses

    want = np.linalg.inv(np.linalg.inv(lines[1]) @ lines[2])
    np.testing.assert_allclose(local_gt_poses(gt), want[None], rtol=0, atol=1e-8)
    np.savez(tmp_path / "p.npz", **{s.key: np.eye(4) for s in _samples(waymo_test)})
    assert eval_odometry.main(["--data", str(waymo_test), "--predictions", str(tmp_path / "p.npz")]) == 2
    assert "no window of 4 consecutive non-edge targets" in capsys.readouterr().err
