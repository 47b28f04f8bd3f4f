"""Depth metrics, median scaling, Garg crop and the per-dataset caps of the paper's protocol.

The per-image evaluation (prediction -> depth, LiDAR point -> pixel, scaling, per-class aggregation)
of the original Dynamo-Depth ``eval/depth.py`` is in ``dynamo_depth.evaluation.depth``. Motion segmentation
PR/F1 is in ``motion_metrics``, snippet ATE in ``odometry_metrics``.

* a LiDAR point is valid when ``min_depth < z < max_depth`` (strict at the cap, as the original) and,
  for KITTI, when it lies in the Garg crop;
* per-image median scaling ``ratio = median(gt) / median(pred)`` where the median of an even count is
  the LOWER middle value (``torch.median``), then ``pred`` is clamped to ``[min_depth, max_depth]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

import numpy as np

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
GARG_CROP_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
"""(top, bottom, left, right) of the Garg crop as fractions of the original height / width."""


class NoValidPointsError(ValueError):
    """An image has no LiDAR point left after the protocol's range, crop and image-bounds filters."""


@dataclass(frozen=True)
class DepthProtocol:
    """Evaluation protocol of one dataset: valid gt in (min_depth, max_depth) metres, optional Garg crop."""

    min_depth: float
    max_depth: float
    garg_crop: bool


DATASET_PROTOCOL: Mapping[str, DepthProtocol] = MappingProxyType(
    {
        "waymo": DepthProtocol(min_depth=1e-3, max_depth=75.0, garg_crop=False),
        "nuscenes": DepthProtocol(min_depth=1e-3, max_depth=75.0, garg_crop=False),
        "kitti": DepthProtocol(min_depth=1e-3, max_depth=80.0, garg_crop=True),
    }
)


@dataclass(frozen=True)
class DepthMetrics:
    """The paper's depth metrics (depth in metres; a1..a3 are fractions in [0, 1])."""

    abs_rel: float
    sq_rel: float
    rmse: float
    rmse_log: float
    a1: float
    a2: float
    a3: float

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in METRIC_NAMES}


@dataclass(frozen=True)
class ErrorSums:
    """Sums of per-point errors, so metrics can be pooled by point count across images.

    ``abs_rel = sum|g-p|/g``, ``sq_rel = sum (g-p)^2/g``, ``sq = sum (g-p)^2``,
    ``sq_log = sum (log g - log p)^2``, ``a_k`` = number of points with ``max(g/p, p/g) < 1.25^k``.
    """

    count: int = 0
    abs_rel: float = 0.0
    sq_rel: float = 0.0
    sq: float = 0.0
    sq_log: float = 0.0
    a1: float = 0.0
    a2: float = 0.0
    a3: float = 0.0

    @classmethod
    def from_arrays(cls, *, gt: np.ndarray, pred: np.ndarray) -> ErrorSums:
        """Sums over points; ``gt``, ``pred`` (N,) positive depths in metres (N may be 0)."""
        g, p = _check_pair(gt, pred, allow_empty=True)
        ratio = np.maximum(g / p, p / g)
        diff = g - p
        return cls(
            count=int(g.size),
            abs_rel=float(np.sum(np.abs(diff) / g)),
            sq_rel=float(np.sum(diff**2 / g)),
            sq=float(np.sum(diff**2)),
            sq_log=float(np.sum((np.log(g) - np.log(p)) ** 2)),
            a1=float(np.sum(ratio < 1.25)),
            a2=float(np.sum(ratio < 1.25**2)),
            a3=float(np.sum(ratio < 1.25**3)),
        )

    def __add__(self, other: ErrorSums) -> ErrorSums:
        return ErrorSums(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def metrics(self) -> DepthMetrics | None:
        """Pooled metrics, or ``None`` when no point was summed."""
        if self.count == 0:
            return None
        n = self.count
        return DepthMetrics(
            abs_rel=self.abs_rel / n,
            sq_rel=self.sq_rel / n,
            rmse=math.sqrt(self.sq / n),
            rmse_log=math.sqrt(self.sq_log / n),
            a1=self.a1 / n,
            a2=self.a2 / n,
            a3=self.a3 / n,
        )


def _check_pair(gt: Any, pred: Any, *, allow_empty: bool) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(gt, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if g.ndim != 1 or g.shape != p.shape:
        raise ValueError(f"gt and pred must be 1-D arrays of equal length, got shapes {g.shape} and {p.shape}")
    if g.size == 0 and not allow_empty:
        raise ValueError("gt and pred are empty: no points to evaluate")
    for name, arr in (("gt", g), ("pred", p)):
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} depths must be finite and > 0")
    return g, p


def compute_depth_metrics(*, gt: np.ndarray, pred: np.ndarray) -> DepthMetrics:
    """Depth metrics of ``pred`` against ``gt``, both (N,) positive depths in metres, N > 0."""
    g, p = _check_pair(gt, pred, allow_empty=False)
    result = ErrorSums.from_arrays(gt=g, pred=p).metrics()
    if result is None:  # unreachable: N > 0 was checked
        raise ValueError("no points to evaluate")
    return result


def lower_median(values: np.ndarray) -> Any:
    """Median as ``torch.median`` returns it: the lower of the two middle values for an even count."""
    arr = np.asarray(values)
    if arr.size == 0:
        raise ValueError("median of an empty array")
    middle = (arr.size - 1) // 2
    return np.partition(arr.ravel(), middle)[middle]


def median_scale(*, gt: np.ndarray, pred: np.ndarray) -> float:
    """Per-image scale ``median(gt) / median(pred)`` over (N,) positive depths (lower medians)."""
    g, p = _check_pair(gt, pred, allow_empty=False)
    return float(lower_median(g) / lower_median(p))


def apply_median_scaling(*, gt: np.ndarray, pred: np.ndarray, min_depth: float, max_depth: float) -> tuple[np.ndarray, float]:
    """Scale ``pred`` (N,) by ``median_scale`` and clamp it to ``[min_depth, max_depth]`` metres.

    Returns the scaled float64 prediction and the ratio.
    """
    ratio = median_scale(gt=gt, pred=pred)
    scaled = np.clip(np.asarray(pred, dtype=np.float64) * ratio, min_depth, max_depth)
    return scaled, ratio


def garg_crop_bounds(*, h: int, w: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the Garg crop of an ``h x w`` ORIGINAL image.

    Each bound is ``int(fraction * size)`` (truncation); rows ``top <= row < bottom`` and columns
    ``left <= col < right`` are inside (top/left inclusive, bottom/right exclusive). KITTI 375x1242:
    rows 153..370 and columns 44..1196 inclusive.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got h={h}, w={w}")
    top, bottom, left, right = GARG_CROP_FRACTIONS
    return int(top * h), int(bottom * h), int(left * w), int(right * w)


def garg_crop_mask(*, h: int, w: int) -> np.ndarray:
    """(h, w) bool mask, True inside the Garg crop (bounds as in ``garg_crop_bounds``)."""
    top, bottom, left, right = garg_crop_bounds(h=h, w=w)
    mask = np.zeros((h, w), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def distance_bin_edges(*, max_depth: float, step: float = 10.0) -> tuple[float, ...]:
    """Edges ``0, step, ..., >= max_depth`` metres; bin i holds gt in ``(edges[i], edges[i+1]]``."""
    n = int(math.ceil(max_depth / step))
    return tuple(float(step * i) for i in range(n + 1))
