"""Motion segmentation metrics: precision, recall and F1 of a per-point motion score.

A point is predicted moving when its score is ``>= threshold``; the ground truth is the point's
motion label (moving vs not), with unlabeled points removed by the caller. Counts are kept per
threshold so that a dataset's curve is a sum over images.
"""

from __future__ import annotations

import numpy as np


def pr_counts(*, scores: np.ndarray, is_moving: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per threshold (T,): true positives and predicted positives of ``scores >= t``; and the positives.

    ``scores`` (N,) motion scores, ``is_moving`` (N,) bool (unlabeled points removed by the caller).
    Counts add across images, so a dataset's curve never needs all points in memory.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_moving)
    t = np.asarray(thresholds, dtype=np.float64)
    if s.ndim != 1 or y.shape != s.shape or y.dtype != bool:
        raise ValueError(f"scores and is_moving must be (N,) float and (N,) bool, got {s.shape} and {y.shape} {y.dtype}")
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or not np.all(np.isfinite(s)):
        raise ValueError("thresholds must be a non-empty 1-D array and all values finite")
    predicted = s[None, :] >= t[:, None]
    true_pos = (predicted & y[None, :]).sum(axis=1).astype(np.int64)
    return true_pos, predicted.sum(axis=1).astype(np.int64), int(y.sum())


def pr_from_counts(*, true_pos: np.ndarray, num_pred: np.ndarray, num_pos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (T,) from ``pr_counts``; precision is 1 where nothing is predicted
    moving, F1 is 0 where precision + recall is 0; ``num_pos`` must be > 0."""
    if num_pos <= 0:
        raise ValueError("is_moving has no moving point: recall is undefined")
    tp = np.asarray(true_pos, dtype=np.float64)
    npred = np.asarray(num_pred, dtype=np.float64)
    precision = np.where(npred > 0, tp / np.maximum(npred, 1.0), 1.0)
    recall = tp / num_pos
    denom = precision + recall
    f1 = np.where(denom > 0, 2.0 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)
    return precision, recall, f1


def pr_curve(*, scores: np.ndarray, is_moving: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 (each (T,)) of ``scores >= threshold`` against ``is_moving`` (N,) bool
    (see ``pr_counts`` / ``pr_from_counts``); unlabeled points are removed by the caller."""
    true_pos, num_pred, num_pos = pr_counts(scores=scores, is_moving=is_moving, thresholds=thresholds)
    return pr_from_counts(true_pos=true_pos, num_pred=num_pred, num_pos=num_pos)


def best_f1(*, f1: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """``(max F1, its threshold)``; the first (lowest-index) threshold wins ties."""
    values = np.asarray(f1, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    if values.ndim != 1 or values.shape != t.shape or values.size == 0:
        raise ValueError(f"f1 and thresholds must be equal non-empty (T,) arrays, got {values.shape} and {t.shape}")
    i = int(np.argmax(values))
    return float(values[i]), float(t[i])
