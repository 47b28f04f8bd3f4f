"""Odometry metric: snippet ATE (absolute trajectory error) of predicted relative camera poses.

Each window (stride 1) is expressed in its first frame; the predicted positions are aligned to the ground
truth by one least-squares scale (monocular depth has no metric scale). ``sequence_windows`` and its helpers
are the original Dynamo-Depth ``eval/odometry.py`` (``../shared/reference/eval_protocol.md`` section 7),
used by ``eval.odometry``; ``ate_snippets`` / ``ate_5frame`` are plain snippet ATEs on camera poses.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np


def _check_poses(name: str, poses: Any, count: int | None) -> np.ndarray:
    arr = np.asarray(poses, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] != (4, 4) or (count is not None and arr.shape[0] != count):
        want = f"({count}, 4, 4)" if count is not None else "(N, 4, 4)"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or not np.allclose(arr[:, 3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"{name}: every pose must be finite with last row [0, 0, 0, 1]")
    return arr


def snippet_ate(*, gt_xyz: np.ndarray, pred_xyz: np.ndarray, convention: Literal["rmse", "sfmlearner"] = "rmse") -> float:
    """ATE of one snippet: (S, 3) positions in metres, both relative to the snippet's first frame.

    The prediction is scaled by ``sum(gt . pred) / sum(pred . pred)`` (least squares); the error is
    ``sqrt(mean_k |scale * pred_k - gt_k|^2)`` (``rmse``) or SfMLearner's
    ``sqrt(sum_k |.|^2) / S`` (``sfmlearner``, smaller by sqrt(S)).
    """
    pred_xyz = pred_xyz + (gt_xyz[0] - pred_xyz[0])
    denom = float(np.sum(pred_xyz * pred_xyz))
    scale = float(np.sum(gt_xyz * pred_xyz)) / denom if denom > 0 else 0.0
    sq_err = float(np.sum((scale * pred_xyz - gt_xyz) ** 2))
    if convention == "sfmlearner":
        return math.sqrt(sq_err) / gt_xyz.shape[0]
    return math.sqrt(sq_err / gt_xyz.shape[0])


def ate_snippets(
    *, gt_poses: np.ndarray, pred_relative: np.ndarray, snippet: int = 5,
    convention: Literal["rmse", "sfmlearner"] = "rmse",
) -> np.ndarray:
    """Snippet ATE (metres) of every ``snippet``-frame window (stride 1), shape (N - snippet + 1,).

    Args:
        gt_poses: (N, 4, 4) world_from_camera of consecutive frames (metres).
        pred_relative: (N-1, 4, 4); ``pred_relative[i]`` is camera_i_from_camera_{i+1}, the pose of
            frame i+1 in frame i (translation up to scale).
    In each window starting at s, both trajectories are expressed in camera s:
    gt ``camera_s_from_camera_k = inv(gt[s]) @ gt[k]`` and pred the product of the relative poses;
    their translations go to ``snippet_ate``.
    """
    if convention not in ("rmse", "sfmlearner"):
        raise ValueError(f"convention must be 'rmse' or 'sfmlearner', got {convention!r}")
    gt = _check_poses("gt_poses", gt_poses, None)
    rel = _check_poses("pred_relative", pred_relative, gt.shape[0] - 1)
    if snippet < 2 or gt.shape[0] < snippet:
        raise ValueError(f"need at least snippet={snippet} (>= 2) ground-truth poses, got {gt.shape[0]}")
    errors = []
    for start in range(gt.shape[0] - snippet + 1):
        first_inv = np.linalg.inv(gt[start])
        gt_xyz = np.stack([(first_inv @ gt[start + k])[:3, 3] for k in range(snippet)])
        pred_pose, pred_xyz = np.eye(4), [np.zeros(3)]
        for k in range(snippet - 1):
            pred_pose = pred_pose @ rel[start + k]
            pred_xyz.append(pred_pose[:3, 3].copy())
        errors.append(snippet_ate(gt_xyz=gt_xyz, pred_xyz=np.stack(pred_xyz), convention=convention))
    return np.asarray(errors, dtype=np.float64)


def ate_5frame(
    *, gt_poses: np.ndarray, pred_relative: np.ndarray, snippet: int = 5,
    convention: Literal["rmse", "sfmlearner"] = "rmse",
) -> tuple[float, float]:
    """Mean and (population) std over windows of ``ate_snippets`` (same arguments)."""
    errors = ate_snippets(gt_poses=gt_poses, pred_relative=pred_relative, snippet=snippet, convention=convention)
    return float(np.mean(errors)), float(np.std(errors))


# ------------------------------------------------------------------ the original's eval/odometry.py
TRACK_LENGTH = 5
"""The original's ``track_length``: windows of 4 relative poses (5 positions; the last window has 4)."""
ATE_FORMS = ("sfmlearner", "rmse")
GT_DIRECTIONS = ("inverted", "forward")


def dump_xyz(poses: np.ndarray) -> np.ndarray:
    """(K + 1, 3) float64 positions: the translations of the running products I, P0, P0 P1, ... (SfMLearner)."""
    pose = np.eye(4)
    positions = [pose[:3, 3].copy()]
    for step in np.asarray(poses, dtype=np.float64):
        pose = pose @ step
        positions.append(pose[:3, 3].copy())
    return np.stack(positions)


def window_ate(*, gt_xyz: np.ndarray, pred_xyz: np.ndarray, form: str = "sfmlearner") -> float:
    """SfMLearner's ``compute_ate``: ``pred += gt[0] - pred[0]``, ``scale = sum(gt . pred) / sum(pred^2)``,
    ``sqrt(sum_k |scale pred_k - gt_k|^2) / K`` (``sfmlearner``, the original) or ``sqrt(... / K)`` (``rmse``)."""
    if form not in ATE_FORMS:
        raise ValueError(f"ATE form {form!r}; allowed: {ATE_FORMS}")
    gt, pred = np.asarray(gt_xyz, dtype=np.float64), np.asarray(pred_xyz, dtype=np.float64)
    pred = pred + (gt[0] - pred[0])[None, :]
    scale = np.sum(gt * pred) / np.sum(pred ** 2)
    squared = float(np.sum((pred * scale - gt) ** 2))
    return math.sqrt(squared) / gt.shape[0] if form == "sfmlearner" else math.sqrt(squared / gt.shape[0])


def local_gt_poses(global_poses: np.ndarray, *, direction: str = "inverted") -> np.ndarray:
    """(N, 4, 4) from N + 1 world_from_X poses: ``inv(inv(G[i-1]) G[i])`` (``inverted``, the original's
    SfMLearner code: X_i_from_X_i-1, running backwards) or ``inv(G[i-1]) G[i]`` (``forward``: X_i-1_from_X_i,
    the prediction's direction)."""
    if direction not in GT_DIRECTIONS:
        raise ValueError(f"GT direction {direction!r}; allowed: {GT_DIRECTIONS}")
    poses = _check_poses("global_poses", global_poses, None)
    local = [np.linalg.inv(poses[i - 1]) @ poses[i] for i in range(1, len(poses))]
    if direction == "inverted":
        local = [np.linalg.inv(p) for p in local]
    return np.stack(local) if local else np.zeros((0, 4, 4))


def sequence_windows(*, pred_poses: np.ndarray, gt_local: np.ndarray, reorder_zxy: bool = True,
                     form: str = "sfmlearner", track_length: int = TRACK_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """(ATE, speed) per window of one sequence, the original's ``eval_odom`` loop.

    ``pred_poses`` (N, 4, 4) predicted camera_t_from_camera_t+1 of the N targets, ``gt_local`` (N, 4, 4) the
    ``local_gt_poses``. Window i = 0 .. N-1 takes poses i .. i + track_length - 2 of both; a window with fewer
    than track_length - 1 positions is skipped (so N - 3 five-position windows and one four-position window).
    The predicted positions are re-ordered to (z, x, y) (``reorder_zxy``, the original) after accumulation.
    Speed: mean distance between consecutive GT positions.
    """
    pred = _check_poses("pred_poses", pred_poses, None)
    gt = _check_poses("gt_local", gt_local, pred.shape[0])
    ates, speeds = [], []
    for i in range(pred.shape[0]):
        local_xyz = dump_xyz(pred[i:i + track_length - 1])
        gt_xyz = dump_xyz(gt[i:i + track_length - 1])
        if local_xyz.shape[0] < track_length - 1:
            continue
        if reorder_zxy:
            local_xyz = local_xyz[:, [2, 0, 1]]
        ates.append(window_ate(gt_xyz=gt_xyz, pred_xyz=local_xyz, form=form))
        speeds.append(float(np.mean(np.sqrt(np.sum((gt_xyz[1:] - gt_xyz[:-1]) ** 2, axis=1)))))
    return np.asarray(ates, dtype=np.float64), np.asarray(speeds, dtype=np.float64)


def summary(values: np.ndarray) -> dict[str, float]:
    """mean, std (population), min, median, max of pooled window values (the original's printout)."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": float(np.min(v)),
            "median": float(np.median(v)), "max": float(np.max(v))}
