"""Odometry metric: snippet ATE (absolute trajectory error) of predicted relative camera poses.

Each ``snippet``-frame window (stride 1) is expressed in its first camera; the predicted positions
are aligned to the ground truth by one least-squares scale (monocular depth has no metric scale).
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
