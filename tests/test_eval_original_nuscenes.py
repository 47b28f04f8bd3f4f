"""eval.motion_segmentation and eval.odometry on the synthetic nuScenes world (builder output: 2 scenes x 8
frames, motion labels at keyframes) against numbers computed here from the facts (eval_protocol.md 6, 7): the
cell grid by explicit loops, the pooled counts, and the odometry windows with SfMLearner's formulas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from eval import motion_segmentation as eval_motion
from eval import odometry as eval_odometry
from tests.test_builder_nuscenes import synth  # noqa: F401  (module fixture; skips without nuscenes-devkit)
from tests.test_eval_original_protocols import THRESHOLDS, _hand_f1


def _grid_by_loops(sample) -> np.ndarray:
    """The facts: a (H/5, W/5) grid of 3, each point's label at (int(v / 5), int(u / 5)) in point order (the
    last wins), every cell a 5x5 block of the full-resolution mask."""
    h, w = sample.meta.original_size
    grid = np.full((h // 5, w // 5), 3, np.uint8)
    for (u, v, _), label in zip(sample.depth.tolist(), sample.motion.tolist(), strict=True):
        grid[min(int(v / 5), h // 5 - 1), min(int(u / 5), w // 5 - 1)] = label
    return np.kron(grid, np.ones((5, 5), np.uint8))


def _linspace_thresholds() -> np.ndarray:
    """The facts: ``torch.linspace(-eps, 1 - eps, 150)`` in float32, eps = 1/149 (one ulp off (k - 1)/149 at some k;
    random scores sit that close to a threshold, so the test compares against the same float32 values)."""
    import torch

    return torch.linspace(-1 / 149, 1 - 1 / 149, 150).numpy()


def _float32_upsample(prediction: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(prediction.astype(np.float32))[None, None]  # the facts: utils.interp, float32 bilinear
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False)[0, 0].numpy()


def test_synthetic_motion_by_hand(synth, tmp_path: Path) -> None:  # noqa: F811
    _, out, samples = synth
    ordered = [samples[k] for k in sorted(samples)]
    rng = np.random.default_rng(7)
    preds = {s.key: rng.uniform(0, 1, (288, 512)).astype(np.float32) for s in ordered}
    np.savez(tmp_path / "pred.npz", **preds)
    assert eval_motion.main(["--data", str(out), "--predictions", str(tmp_path / "pred.npz"),
                             "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    labelled = [s for s in ordered if s.motion is not None]
    assert report["num_images"] == len(labelled) >= 2
    tp = fp = fn = np.zeros(150)
    for s in labelled:
        mask = _grid_by_loops(s)
        scores = _float32_upsample(preds[s.key], tuple(s.meta.original_size))
        t32 = _linspace_thresholds()
        valid, moving = mask != 3, mask == 1
        image_tp = np.array([np.sum(moving & (scores > t)) for t in t32])
        image_pred = np.array([np.sum(valid & (scores > t)) for t in t32])
        tp, fp, fn = tp + image_tp, fp + image_pred - image_tp, fn + moving.sum() - image_tp
    assert report["num_moving"] == int(fn[-1] + tp[-1]) > 0
    np.testing.assert_array_equal(report["curve"]["tp"], tp)
    np.testing.assert_array_equal(report["curve"]["fp"], fp)
    np.testing.assert_array_equal(report["curve"]["fn"], fn)
    precision, recall, f1 = _hand_f1(tp, fp, fn)
    np.testing.assert_allclose(report["curve"]["precision"], precision, rtol=0, atol=1e-6)
    np.testing.assert_allclose(report["curve"]["f1"], f1, rtol=0, atol=1e-6)
    assert report["best_f1"] == pytest.approx(f1.max(), abs=1e-6)
    np.testing.assert_allclose(report["curve"]["thresholds"], THRESHOLDS, rtol=0, atol=6e-8)


def _sfm_windows(pred: list[np.ndarray], local: list[np.ndarray], *, reorder: bool) -> list[float]:
    def xyz(poses):
        out, pose = [np.zeros(3)], np.eye(4)
        for p in poses:
            pose = pose @ p
            out.append(pose[:3, 3].copy())
        return np.array(out)
    ates = []
    for i in range(len(pred)):
        p, g = xyz(pred[i:i + 4]), xyz(local[i:i + 4])
        if len(p) < 4:
            continue
        p = p[:, [2, 0, 1]] if reorder else p
        scale = np.sum(g * p) / np.sum(p * p)
        ates.append(math.sqrt(np.sum((scale * p - g) ** 2)) / len(g))
    return ates


def test_synthetic_odometry_by_hand(synth, tmp_path: Path) -> None:  # noqa: F811
    """Predictions: the camera's true relative motion with its translation times 3 (monocular scale), float32;
    GT the ego pose world_from_camera @ inv(ego_from_camera), first line skipped, local poses inverted."""
    _, out, samples = synth
    by_sequence: dict[str, list] = {}
    for key in sorted(samples):
        by_sequence.setdefault(samples[key].meta.sequence, []).append(samples[key])
    preds, want = {}, []
    for sequence in sorted(by_sequence):
        run = sorted(by_sequence[sequence], key=lambda s: s.meta.frame_indices[1])
        pred = []
        for s in run:
            relative = np.linalg.inv(s.poses[1]) @ s.poses[2]
            relative[:3, 3] *= 3.0
            preds[s.key] = relative.astype(np.float32)
            pred.append(preds[s.key].astype(np.float64))
        ego = np.linalg.inv(np.asarray(run[0].meta.ego_from_camera))
        gt = [s.poses[1] @ ego for s in run] + [run[-1].poses[2] @ ego]
        local = [np.linalg.inv(np.linalg.inv(gt[i - 1]) @ gt[i]) for i in range(1, len(gt))]
        want += _sfm_windows(pred, local, reorder=True)
    np.savez(tmp_path / "poses.npz", **preds)
    assert eval_odometry.main(["--data", str(out), "--predictions", str(tmp_path / "poses.npz"),
                               "--out", str(tmp_path / "r")]) == 0
    record = np.load(tmp_path / "r" / "record.npy")
    assert len(want) == 2 * (6 - 2) and record.shape == (len(want), 2)
    np.testing.assert_allclose(record[:, 0], want, rtol=0, atol=1e-6)
    assert max(want) > 0.001  # the exact camera motion does not score 0 under the original's protocol

