"""Hand-computed checks of dynamo_depth.evaluation.metrics: depth metrics, protocol, pooling, PR/F1, ATE."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dynamo_depth.evaluation import depth as de
from dynamo_depth.evaluation import metrics as m
from dynamo_depth.evaluation import motion as motion_metrics
from dynamo_depth.evaluation import odometry as odometry_metrics

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared (reference outputs) is absent")


def _depth_map(hw, points_uvz, fill=1.0):
    """A depth map of size hw holding each point's z at its (integer) pixel."""
    depth = np.full(hw, fill, dtype=np.float64)
    pts = np.asarray(points_uvz, dtype=np.float64)
    depth[pts[:, 1].astype(int), pts[:, 0].astype(int)] = pts[:, 2]
    return depth


# ---- depth metrics ------------------------------------------------------------------------------


def test_four_point_example_hand_computed():
    gt = np.array([1.0, 2.0, 4.0, 8.0])
    pred = np.array([1.2, 2.0, 6.8, 10.0])  # ratios 1.2, 1, 1.7, 1.25 (1.25 is NOT < 1.25)
    got = m.compute_depth_metrics(gt=gt, pred=pred)
    assert got.abs_rel == pytest.approx((0.2 / 1 + 0 + 2.8 / 4 + 2 / 8) / 4)  # 0.2875
    assert got.sq_rel == pytest.approx((0.04 / 1 + 0 + 7.84 / 4 + 4 / 8) / 4)  # 0.625
    assert got.rmse == pytest.approx(math.sqrt((0.04 + 0 + 7.84 + 4) / 4))
    assert got.rmse_log == pytest.approx(math.sqrt((math.log(1.2) ** 2 + math.log(1.7) ** 2 + math.log(1.25) ** 2) / 4))
    assert (got.a1, got.a2, got.a3) == (0.5, 0.75, 1.0)


def test_perfect_prediction():
    gt = np.array([3.0, 7.5, 20.0, 61.0])
    got = m.compute_depth_metrics(gt=gt, pred=gt.copy())
    assert got == m.DepthMetrics(abs_rel=0.0, sq_rel=0.0, rmse=0.0, rmse_log=0.0, a1=1.0, a2=1.0, a3=1.0)


def test_known_distortion():
    gt = np.array([2.0, 4.0, 10.0, 20.0])
    pred = gt * np.array([1.1, 0.9, 1.1, 0.9])
    got = m.compute_depth_metrics(gt=gt, pred=pred)
    assert got.abs_rel == pytest.approx(0.1)
    assert got.sq_rel == pytest.approx(0.01 * gt.mean())  # (0.1 g)^2 / g = 0.01 g
    assert got.rmse == pytest.approx(0.1 * math.sqrt(np.mean(gt**2)))
    assert got.rmse_log == pytest.approx(math.sqrt((math.log(1.1) ** 2 + math.log(0.9) ** 2) / 2))
    assert (got.a1, got.a2, got.a3) == (1.0, 1.0, 1.0)


def test_median_scaling_removes_constant_factor_and_clamps():
    gt = np.array([5.0, 10.0, 30.0])
    assert m.median_scale(gt=gt, pred=gt * 4.0) == pytest.approx(0.25)
    scaled, ratio = m.apply_median_scaling(gt=gt, pred=gt * 4.0, min_depth=1e-3, max_depth=75.0)
    assert ratio == pytest.approx(0.25) and scaled == pytest.approx(gt)
    clamped, _ = m.apply_median_scaling(gt=gt, pred=np.array([5.0, 10.0, 300.0]), min_depth=1e-3, max_depth=75.0)
    assert clamped.tolist() == [5.0, 10.0, 75.0]


@pytest.mark.parametrize(
    ("gt", "pred", "match"),
    [([1.0, 2.0], [1.0], "equal length"), ([1.0, 0.0], [1.0, 1.0], "gt depths"),
     ([1.0], [np.nan], "pred depths"), ([], [], "empty")],
)
def test_bad_depth_arrays_raise(gt, pred, match):
    with pytest.raises(ValueError, match=match):
        m.compute_depth_metrics(gt=np.array(gt), pred=np.array(pred))


# ---- Garg crop and caps -------------------------------------------------------------------------


def test_garg_crop_bounds_at_kitti_size():
    assert m.garg_crop_bounds(h=375, w=1242) == (153, 371, 44, 1197)
    mask = m.garg_crop_mask(h=375, w=1242)
    assert mask.sum() == (371 - 153) * (1197 - 44)
    assert mask[153, 44] and mask[370, 1196]
    assert not mask[152, 500] and not mask[371, 500] and not mask[200, 43] and not mask[200, 1197]
    # the original tests the FLOAT coordinates against the integer bounds (then truncates)
    u = np.array([44.0, 43.4, 43.99, 1196.0, 1196.99, 600.0, 600.0, 600.0, 600.0])
    v = np.array([153.0, 200.0, 200.0, 370.0, 200.0, 152.4, 152.99, 370.49, 370.99])
    expected = [True, False, False, True, True, False, False, True, True]
    pts = np.stack([u, v, np.full(u.size, 10.0)], axis=1)
    kitti = m.DATASET_PROTOCOL["kitti"]
    assert de.valid_points(points_uvz=pts, original_hw=(375, 1242), protocol=kitti).tolist() == expected
    nearest = [True, False, True, True, False, False, True, True, False]  # --pixel nearest: tested at the rounded pixel
    assert de.valid_points(points_uvz=pts, original_hw=(375, 1242), protocol=kitti, pixel="nearest").tolist() == nearest


def test_kitti_crop_and_80m_cap_in_evaluate_image():
    hw = (375, 1242)
    pts = np.array([
        [44.0, 153.0, 10.0],  # top-left corner of the crop: in
        [1196.0, 370.0, 79.99],  # bottom-right corner, gt just below the cap: in
        [600.0, 200.0, 80.0],  # exactly at the cap: out (strict z < max, as the original)
        [43.0, 200.0, 10.0],  # column left of the crop: out
        [600.0, 371.0, 10.0],  # row below the crop: out
        [600.0, 152.0, 10.0],  # row above the crop: out
        [700.0, 300.0, 1e-3],  # at min depth (exclusive): out
        [1500.0, 300.0, 10.0],  # outside the image: out
    ])
    result = de.evaluate_image(points_uvz=pts, prediction=_depth_map(hw, pts[[0, 1]]), original_hw=hw,
                              dataset="kitti", kind="depth")
    assert result.num_points == 2
    assert result.metrics.abs_rel == pytest.approx(0.0)
    assert [s.count for s in result.distance_sums] == [1, 0, 0, 0, 0, 0, 0, 1]  # 10 m in (0, 10], 80 m in (70, 80]


def test_waymo_75m_cap_no_crop():
    hw = (4, 6)
    pts = np.array([[0.0, 0.0, 74.99], [5.0, 3.0, 20.0], [2.0, 1.0, 75.0], [3.0, 2.0, 5.0]])
    depth = _depth_map(hw, pts)
    for dataset in ("waymo", "nuscenes"):  # 74.99 in, 75.0 out (strict), no crop: the corner pixel (0, 0) counts
        result = de.evaluate_image(points_uvz=pts, prediction=depth, original_hw=hw, dataset=dataset, kind="depth")
        assert result.num_points == 3
        assert result.distance_edges == tuple(float(x) for x in range(0, 81, 10))
        assert [s.count for s in result.distance_sums] == [1, 1, 0, 0, 0, 0, 0, 1]  # 5, 20 (10, 20], 75 (70, 80]


def test_prediction_above_cap_is_clamped():
    hw = (1, 3)
    pts = np.array([[0.0, 0.0, 10.0], [1.0, 0.0, 10.0], [2.0, 0.0, 70.0]])
    pred_depth = np.array([[10.0, 10.0, 140.0]])
    result = de.evaluate_image(points_uvz=pts, prediction=pred_depth, original_hw=hw, dataset="waymo", kind="depth")
    assert result.median_ratio == pytest.approx(1.0)
    assert result.metrics.abs_rel == pytest.approx((75.0 - 70.0) / 70.0 / 3, rel=1e-6)


# ---- evaluate_image: upsampling, disparity, median scaling ---------------------------------------


def test_bilinear_upsampling_half_pixel_centres():
    up = de.depth_map(prediction=np.array([[1.0, 3.0]]), original_hw=(1, 4), kind="depth")
    assert up.dtype == np.float32 and up[0].tolist() == pytest.approx([1.0, 1.5, 2.5, 3.0])
    # sigmoid: disp_to_depth(0.1, 100) = 0.01 + 9.99 * s, upsampled, THEN inverted
    sig = de.depth_map(prediction=np.array([[0.0, 1.0]]), original_hw=(1, 4), kind="sigmoid")
    assert sig[0].tolist() == pytest.approx([100.0, 1 / (0.01 + 9.99 * 0.25), 1 / (0.01 + 9.99 * 0.75), 0.1], rel=1e-6)


def test_lower_median_and_truncation():
    assert m.lower_median(np.array([4.0, 1.0, 3.0, 2.0])) == 2.0  # torch.median: lower middle, not 2.5
    assert m.median_scale(gt=np.array([1.0, 2.0, 3.0, 4.0]), pred=np.array([1.0, 1.0, 4.0, 4.0])) == 2.0
    rows, cols = de.point_pixels(points_uvz=np.array([[3.9, 2.6, 1.0]]), pixel="truncate")
    assert (rows[0], cols[0]) == (2, 3)
    rows, cols = de.point_pixels(points_uvz=np.array([[3.9, 2.6, 1.0]]), pixel="nearest")
    assert (rows[0], cols[0]) == (3, 4)
    with pytest.raises(ValueError, match="allowed"):
        de.EvalProtocol(pixel="round")


def test_perfect_and_scaled_disparity_from_training_resolution():
    # Original 4x8, training 2x4: a depth that is constant per 2x2 block upsamples to a blend, so use
    # a disparity constant along rows: each training row covers two original rows.
    disparity = np.array([[0.1] * 4, [0.1] * 4])  # depth 10 m everywhere
    pts = np.array([[0.0, 0.0, 10.0], [7.0, 3.0, 10.0], [3.6, 1.4, 10.0]])
    perfect = de.evaluate_image(points_uvz=pts, prediction=disparity, original_hw=(4, 8), dataset="nuscenes",
                                kind="disparity")
    assert perfect.metrics.abs_rel == pytest.approx(0.0) and perfect.metrics.a1 == 1.0
    ramp = np.array([[1 / 5, 1 / 10, 1 / 20, 1 / 40]])  # depths 5, 10, 20, 40 per training column
    pts = np.array([[0.0, 0.0, 5.0], [7.0, 0.0, 40.0]])  # extreme columns keep the exact values
    scaled = de.evaluate_image(points_uvz=pts, prediction=ramp * 3.0, original_hw=(1, 8), dataset="waymo",
                               kind="disparity")
    assert scaled.median_ratio == pytest.approx(3.0, rel=1e-6)
    assert scaled.metrics.abs_rel == pytest.approx(0.0, abs=1e-6) and scaled.metrics.rmse == pytest.approx(0.0, abs=1e-5)


def test_per_class_errors_weighted_by_point_count_or_pooled():
    # image A: labels [moving, bg, bg], pred of the moving point 2x too far (median ratio stays 1)
    pts_a = np.array([[0.0, 0.0, 10.0], [1.0, 0.0, 10.0], [2.0, 0.0, 10.0]])
    res_a = de.evaluate_image(points_uvz=pts_a, prediction=np.array([[20.0, 10.0, 10.0]]), original_hw=(1, 3),
                             dataset="waymo", kind="depth", labels=np.array([1, 0, 0], dtype=np.uint8))
    # image B: labels [moving, moving, bg, bg, unlabeled], first moving point 1.5x too far
    pts_b = np.array([[float(i), 0.0, 10.0] for i in range(5)])
    res_b = de.evaluate_image(points_uvz=pts_b, prediction=np.array([[15.0, 10, 10, 10, 10]]), original_hw=(1, 5),
                             dataset="waymo", kind="depth", labels=np.array([1, 1, 0, 0, 3], dtype=np.uint8))
    report = de.aggregate([res_a, res_b])
    moving = report["per_class"]["moving"]
    assert moving["num_points"] == 3 and moving["num_images"] == 2
    assert moving["abs_rel"] == pytest.approx((1.0 * 1 + 0.25 * 2) / 3)  # not the image mean 0.625
    # the original: point-count-weighted mean of per-image RMSEs (10 m, sqrt(25 / 2) m), not a pooled RMSE
    assert moving["rmse"] == pytest.approx((10.0 * 1 + math.sqrt(25.0 / 2) * 2) / 3)
    assert moving["a1"] == pytest.approx(1 / 3)
    assert report["per_class"]["background"]["num_points"] == 4
    assert report["per_class"]["background"]["abs_rel"] == 0.0
    assert set(report["per_class"]) == {"background", "moving", "static_movable"}
    assert report["per_class"]["static_movable"] == {**dict.fromkeys(m.METRIC_NAMES), "num_points": 0, "num_images": 0}
    pooled = de.aggregate([res_a, res_b], protocol=de.EvalProtocol(class_rmse="pooled"))["per_class"]["moving"]
    assert pooled["rmse"] == pytest.approx(math.sqrt((100.0 + 25.0) / 3))
    assert report["overall"]["abs_rel"] == pytest.approx((1.0 / 3 + 0.5 / 5) / 2)
    assert report["num_images"] == 2 and report["num_points"] == 8
    assert report["by_distance"][0]["num_points"] == 8  # all gt 10 m in (0, 10]


def test_evaluate_image_bad_input():
    pts = np.array([[0.0, 0.0, 10.0]])
    good = {"points_uvz": pts, "prediction": np.ones((2, 2)), "original_hw": (2, 2), "dataset": "waymo"}
    with pytest.raises(ValueError, match="unknown dataset"):
        de.evaluate_image(**{**good, "dataset": "argo"})
    with pytest.raises(ValueError, match="positive 2-D"):
        de.evaluate_image(**{**good, "prediction": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"'k0'.*motion labels"):
        de.evaluate_image(**good, labels=np.array([1, 2]), key="k0")
    with pytest.raises(m.NoValidPointsError, match="no LiDAR point"):
        de.evaluate_image(**{**good, "points_uvz": np.array([[0.0, 0.0, 90.0]])})
    with pytest.raises(ValueError, match="no image results"):
        de.aggregate([])


# ---- motion segmentation ------------------------------------------------------------------------


def test_pr_counts_hand_example():
    """Strict ``score > t``, unlabeled (3) ignored in the predictions, precision 0 where nothing is predicted."""
    scores = np.array([0.9, 0.8, 0.3, 0.1, 0.95], dtype=np.float32)
    labels = np.array([1, 0, 1, 2, 3], dtype=np.uint8)
    thresholds = np.array([0.0, 0.3, 0.85, 0.95], dtype=np.float32)
    tp, fp, fn = motion_metrics.image_counts(scores=scores, labels=labels, thresholds=thresholds)
    assert tp.tolist() == [2, 1, 1, 0] and fp.tolist() == [2, 1, 0, 0] and fn.tolist() == [0, 1, 1, 2]
    counts = motion_metrics.PooledCounts(num_thresholds=4)
    counts.add(tp, fp, fn)
    counts.add(tp, fp, fn)
    precision, recall, f1 = motion_metrics.precision_recall_f1(counts)
    assert precision.dtype == np.float32 and precision.tolist() == [0.5, 0.5, 1.0, 0.0]
    assert recall.tolist() == [1.0, 0.5, 0.5, 0.0]
    assert f1 == pytest.approx([2 / 3, 0.5, 2 / 3, 0.0], abs=1e-7)
    assert motion_metrics.best_f1(f1=f1, thresholds=thresholds)[1:] == (0.0, 0)
    t = motion_metrics.original_thresholds()
    assert t.dtype == np.float32 and t.size == 150 and t[1] == 0.0
    np.testing.assert_allclose(t, [(k - 1) / 149 for k in range(150)], rtol=0, atol=6e-8)


def test_pooled_float32_counts_round_as_the_original():
    """The original adds each image's counts to float32 accumulators: above 2^24 a count of 1 is lost."""
    counts = motion_metrics.PooledCounts(num_thresholds=1)
    counts.add(np.array([2**24]), np.array([0]), np.array([0]))
    counts.add(np.array([1]), np.array([0]), np.array([0]))
    assert counts.tp[0] == 2**24
    exact = motion_metrics.PooledCounts(num_thresholds=1, dtype="int64")
    exact.add(np.array([2**24]), np.array([0]), np.array([0]))
    exact.add(np.array([1]), np.array([0]), np.array([0]))
    assert exact.tp[0] == 2**24 + 1


def test_counts_and_pooling_equal_the_torch_formulation_of_the_facts():
    """The facts' per-image counts (``pred > thrds`` broadcast over (T, H, W), valid = label != 3) and the float32
    ``record += count`` of torch, on random maps with ties at the thresholds, many images, totals above 2^24."""
    import torch

    rng = np.random.default_rng(3)
    thresholds = motion_metrics.original_thresholds()
    thrds = torch.from_numpy(thresholds).reshape(150, 1, 1)
    record = {k: torch.zeros(150) for k in ("tp", "fp", "fn")}
    ours = motion_metrics.PooledCounts(num_thresholds=150)
    for _ in range(12):
        scores = rng.choice(np.concatenate([thresholds, rng.uniform(0, 1, 50).astype(np.float32)]), (300, 400))
        labels = rng.integers(0, 4, (300, 400)).astype(np.uint8)
        scores[:, :3] = 0.0  # exactly the threshold 0: strict, not predicted there
        pm = torch.from_numpy(scores)[None] > thrds
        gm, vm = torch.from_numpy(labels == 1)[None], torch.from_numpy(labels != 3).int()[None]
        tp = torch.logical_and(gm, pm).sum((1, 2))
        record["tp"] += tp
        record["fp"] += (pm * vm).sum((1, 2)) - tp
        record["fn"] += gm.sum((1, 2)) - tp
        ours.add(*motion_metrics.image_counts(scores=scores, labels=labels, thresholds=thresholds))
    ours.add(np.full(150, 2**24 + 1), np.full(150, 2**24 + 3), np.full(150, 5))  # float32 rounding of the totals
    for k, v in (("tp", 2**24 + 1), ("fp", 2**24 + 3), ("fn", 5)):
        record[k] += torch.full((150,), v, dtype=torch.int64)
        np.testing.assert_array_equal(getattr(ours, k), record[k].numpy())
    precision = (record["tp"] / (record["tp"] + record["fp"] + 1e-10)).numpy()
    recall = (record["tp"] / (record["tp"] + record["fn"] + 1e-10)).numpy()
    f1 = 2 * (precision * recall) / (precision + recall + 1e-10)
    got = motion_metrics.precision_recall_f1(ours)
    for mine, theirs in zip(got, (precision, recall, f1), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_nuscenes_grid_mask_hand_example():
    """Cells of 5x5 pixels: (v/5, u/5) truncated; the last point of a cell wins; empty cells are 3."""
    points = np.array([[1.5, 2.0, 9.0], [4.9, 4.9, 9.0], [7.0, 3.0, 9.0], [12.0, 9.99, 9.0]], dtype=np.float32)
    mask = motion_metrics.nuscenes_grid_mask(points_uvz=points, labels=np.array([1, 2, 0, 1], np.uint8),
                                             original_hw=(10, 15))
    want = np.full((2, 3), 3, np.uint8)
    want[0, 0], want[0, 1], want[1, 2] = 2, 0, 1
    np.testing.assert_array_equal(mask, np.repeat(np.repeat(want, 5, axis=0), 5, axis=1))


# ---- odometry -----------------------------------------------------------------------------------


def _rot_z(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _pose(rotation, translation):
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rotation, translation
    return pose


def test_ate_zero_for_scaled_copy_of_gt():
    gt = np.stack([_pose(_rot_z(0.1 * i), [math.cos(i), 0.5 * i, 0.2 * i * i]) for i in range(7)])
    rel = np.stack([np.linalg.inv(gt[i]) @ gt[i + 1] for i in range(6)])
    rel[:, :3, 3] *= 2.5  # monocular scale ambiguity
    mean, std = odometry_metrics.ate_5frame(gt_poses=gt, pred_relative=rel)
    assert mean == pytest.approx(0.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_ate_known_offset():
    # gt drives 1 m forward per frame; pred's first step also slides a = sqrt(7.5) m sideways.
    # Window 0: pred = (0,0,0), (a,0,k) k=1..4; scale = 30 / (30 + 4 a^2) = 0.5;
    # squared errors sum 4 (0.5 a)^2 + 30 (0.5 - 1)^2 = 15 -> ATE sqrt(15 / 5) = sqrt(3).
    gt = np.stack([_pose(np.eye(3), [0.0, 0.0, float(i)]) for i in range(6)])
    rel = np.stack([_pose(np.eye(3), [0.0, 0.0, 1.0]) for _ in range(5)])
    rel[0, 0, 3] = math.sqrt(7.5)
    mean5, std5 = odometry_metrics.ate_5frame(gt_poses=gt[:5], pred_relative=rel[:4])
    assert mean5 == pytest.approx(math.sqrt(3.0)) and std5 == 0.0
    mean6, std6 = odometry_metrics.ate_5frame(gt_poses=gt, pred_relative=rel)  # window 1 is exact
    assert mean6 == pytest.approx(math.sqrt(3.0) / 2) and std6 == pytest.approx(math.sqrt(3.0) / 2)
    sfm, _ = odometry_metrics.ate_5frame(gt_poses=gt[:5], pred_relative=rel[:4], convention="sfmlearner")
    assert sfm == pytest.approx(math.sqrt(15.0) / 5)
    with pytest.raises(ValueError, match=r"pred_relative must have shape \(5, 4, 4\)"):
        odometry_metrics.ate_5frame(gt_poses=gt, pred_relative=rel[:3])
    with pytest.raises(ValueError, match="at least snippet=5"):
        odometry_metrics.ate_5frame(gt_poses=gt[:4], pred_relative=rel[:3])


# ---- real reference outputs ---------------------------------------------------------------------


@needs_shared
def test_kitti_reference_depth_crop_and_cap_counts():
    rcd = np.load(REFERENCE / "kitti_drive_0009_original_outputs/image_02/depth/0000000000.npy", allow_pickle=False)
    hw = (375, 1242)
    pts = np.stack([rcd[:, 1], rcd[:, 0], rcd[:, 2]], axis=1)  # [row, col, z] -> [u, v, z]
    result = de.evaluate_image(points_uvz=pts, prediction=_depth_map(hw, pts), original_hw=hw,
                              dataset="kitti", kind="depth")
    crop = m.garg_crop_mask(h=375, w=1242)[rcd[:, 0].astype(int), rcd[:, 1].astype(int)]
    expected = int(np.sum(crop & (rcd[:, 2] > 1e-3) & (rcd[:, 2] < 80.0)))
    assert 1000 < result.num_points == expected < len(rcd)
    assert result.metrics.abs_rel == pytest.approx(0.0) and result.metrics.a1 == 1.0


@needs_shared
def test_nuscenes_reference_labels_per_class_counts():
    scene = REFERENCE / "dynamo_depth_assets/tiny_nuscenes/scenes/scene-0001/FRONT"
    pts = np.load(scene / "depth/000000.npy", allow_pickle=False)
    with np.load(scene / "mask/000000.npz", allow_pickle=False) as npz:
        labels = npz["motion_label"]
    result = de.evaluate_image(points_uvz=pts, prediction=np.full((288, 512), 0.05), original_hw=(900, 1600),
                               dataset="nuscenes", labels=labels, kind="disparity")
    in_range = (pts[:, 2] > 1e-3) & (pts[:, 2] < 75.0)
    assert result.num_points == int(in_range.sum())
    # the original's label of a point: the last label splatted into its 5x5 cell of a 180x320 grid
    grid = np.full((180, 320), 3, dtype=np.uint8)
    pts32 = pts.astype(np.float32)
    cell_r, cell_c = (pts32[:, 1] / np.float32(5)).astype(int), (pts32[:, 0] / np.float32(5)).astype(int)
    for r, c, label in zip(cell_r, cell_c, labels, strict=True):
        grid[r, c] = label
    read = grid[cell_r, cell_c]
    assert np.mean(read == labels) > 0.9
    for name, label in de.MOTION_CLASSES.items():
        assert result.class_sums[name].count == int(np.sum(in_range & (read == label)))
    gt_in = np.sort(pts32[in_range, 2])
    assert result.median_ratio == pytest.approx(float(gt_in[(gt_in.size - 1) // 2]) / 20.0, rel=1e-6)
