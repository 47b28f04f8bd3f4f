"""Depth evaluation metrics (paper protocol). Motion segmentation PR/F1 is in ``motion_metrics``,
snippet ATE in ``odometry_metrics``.

Depth protocol (monodepth2 / Dynamo-Depth):

* ground truth: LiDAR points ``[u, v, z]`` at the ORIGINAL image resolution (u column, v row in
  pixels, z camera z-depth in metres); a point is valid when ``min_depth < z <= max_depth`` and, for
  KITTI, when its pixel lies in the Garg crop.
* prediction: a disparity (or depth) map at the training resolution, upsampled bilinearly
  (``align_corners=False``) to the original size and read at the point's nearest pixel
  ``(row, col) = (floor(v + 0.5), floor(u + 0.5))``; points whose pixel falls outside the image
  are dropped.
* per-image median scaling ``ratio = median(gt) / median(pred)``, then ``pred`` is clamped to
  ``[min_depth, max_depth]``.
* overall metrics are the mean over images of per-image metrics; per motion class and per distance
  bin they are pooled over points (sums of errors divided by the point count).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import pairwise
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
MOTION_CLASSES = MappingProxyType({"background": (0,), "moving": (1,), "static_movable": (2,), "static": (0, 2)})
"""Class name -> motion labels pooled into it (3 = unlabeled is never evaluated)."""
GARG_CROP_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
"""(top, bottom, left, right) of the Garg crop as fractions of the original height / width."""


class NoValidPointsError(ValueError):
    """An image has no LiDAR point left after the protocol's range, crop and image-bounds filters."""


@dataclass(frozen=True)
class DepthProtocol:
    """Evaluation protocol of one dataset: valid gt in (min_depth, max_depth] metres, optional Garg crop."""

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


def median_scale(*, gt: np.ndarray, pred: np.ndarray) -> float:
    """Per-image scale ``median(gt) / median(pred)`` over (N,) positive depths."""
    g, p = _check_pair(gt, pred, allow_empty=False)
    return float(np.median(g) / np.median(p))


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


def nearest_pixel(*, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest integer pixel ``(row, col) = (floor(v + 0.5), floor(u + 0.5))`` of (N,) points (int64)."""
    rows = np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)
    cols = np.floor(np.asarray(u, dtype=np.float64) + 0.5).astype(np.int64)
    return rows, cols


def in_garg_crop(*, u: np.ndarray, v: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N,) bool: whether points ``[u, v]`` (pixels of the ORIGINAL ``h x w`` image) fall in the crop.

    A point is tested at its nearest pixel (``nearest_pixel``), with the bounds of ``garg_crop_bounds``.
    """
    top, bottom, left, right = garg_crop_bounds(h=h, w=w)
    rows, cols = nearest_pixel(u=u, v=v)
    return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def distance_bin_edges(*, max_depth: float, step: float = 10.0) -> tuple[float, ...]:
    """Edges ``0, step, ..., >= max_depth`` metres; bin i holds gt in ``(edges[i], edges[i+1]]``."""
    n = int(math.ceil(max_depth / step))
    return tuple(float(step * i) for i in range(n + 1))


@dataclass(frozen=True)
class ImageResult:
    """Depth evaluation of one image.

    Attributes:
        key: sample key (may be empty).
        metrics: per-image metrics after median scaling.
        median_ratio: the per-image scale applied to the prediction.
        num_points: valid LiDAR points evaluated.
        class_sums: motion class name (``MOTION_CLASSES``) -> ``ErrorSums``; empty without labels.
        distance_edges: bin edges in metres (``distance_bin_edges``).
        distance_sums: one ``ErrorSums`` per distance bin (gt in ``(lo, hi]``).
    """

    key: str
    metrics: DepthMetrics
    median_ratio: float
    num_points: int
    class_sums: Mapping[str, ErrorSums]
    distance_edges: tuple[float, ...]
    distance_sums: tuple[ErrorSums, ...]


def upsample_map(*, prediction: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling (torch, ``align_corners=False``) of an (H', W') map to (H, W), float64."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(prediction, dtype=np.float64))[None, None]
    size = (int(original_hw[0]), int(original_hw[1]))
    if tuple(tensor.shape[-2:]) == size:
        return tensor[0, 0].numpy()
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _check_image_inputs(key: str, points_uvz: Any, prediction: Any, original_hw: Any, labels: Any) -> None:
    pts = np.asarray(points_uvz)
    if pts.ndim != 2 or pts.shape[1] != 3 or not np.all(np.isfinite(pts)):
        raise ValueError(f"sample {key!r}: depth points must be a finite (N, 3) [u, v, z] array, got shape {pts.shape}")
    pred = np.asarray(prediction)
    if pred.ndim != 2 or pred.size == 0 or not np.all(np.isfinite(pred)) or np.any(pred <= 0):
        raise ValueError(f"sample {key!r}: prediction must be a finite, positive 2-D (H, W) map, got shape {pred.shape}")
    if len(original_hw) != 2 or min(int(x) for x in original_hw) <= 0:
        raise ValueError(f"sample {key!r}: original_hw must be (H, W) > 0, got {original_hw}")
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != (pts.shape[0],) or (lab.size and (lab.min() < 0 or lab.max() > 3)):
            raise ValueError(f"sample {key!r}: motion labels must be (N,) = ({pts.shape[0]},) values in 0..3, got shape {lab.shape}")


def valid_point_mask(*, points_uvz: np.ndarray, original_hw: tuple[int, int], protocol: DepthProtocol) -> np.ndarray:
    """(N,) bool: nearest pixel inside the image, ``min_depth < z <= max_depth``, and the Garg crop if any."""
    h, w = int(original_hw[0]), int(original_hw[1])
    u, v, z = (np.asarray(points_uvz, dtype=np.float64)[:, i] for i in range(3))
    rows, cols = nearest_pixel(u=u, v=v)
    valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    valid &= (z > protocol.min_depth) & (z <= protocol.max_depth)
    if protocol.garg_crop:
        valid &= in_garg_crop(u=u, v=v, h=h, w=w)
    return valid


def evaluate_image(
    *,
    points_uvz: np.ndarray,
    prediction: np.ndarray,
    original_hw: tuple[int, int],
    dataset: str,
    labels: np.ndarray | None = None,
    kind: Literal["disparity", "depth"] = "disparity",
    key: str = "",
    bin_step: float = 10.0,
) -> ImageResult:
    """Evaluate one predicted map against the LiDAR points of its image (protocol in the module doc).

    Args:
        points_uvz: (N, 3) [u, v, z]: pixels of the ORIGINAL image, z metres.
        prediction: (H', W') disparity (depth = 1 / disparity, any scale) or depth map, > 0.
        original_hw: (H, W) of the original image.
        dataset: key of ``DATASET_PROTOCOL``.
        labels: optional (N,) motion labels (0 background, 1 moving, 2 static movable, 3 unlabeled).
        kind: whether ``prediction`` holds disparity or depth.
        bin_step: width in metres of the distance bins.
    Raises:
        ValueError on bad input; ``NoValidPointsError`` when no point survives the protocol.
    """
    if dataset not in DATASET_PROTOCOL:
        raise ValueError(f"sample {key!r}: unknown dataset {dataset!r}; allowed: {sorted(DATASET_PROTOCOL)}")
    if kind not in ("disparity", "depth"):
        raise ValueError(f"sample {key!r}: kind must be 'disparity' or 'depth', got {kind!r}")
    _check_image_inputs(key, points_uvz, prediction, original_hw, labels)
    protocol = DATASET_PROTOCOL[dataset]
    pts = np.asarray(points_uvz, dtype=np.float64)
    valid = valid_point_mask(points_uvz=pts, original_hw=original_hw, protocol=protocol)
    if not np.any(valid):
        raise NoValidPointsError(f"sample {key!r}: no LiDAR point inside the image and in ({protocol.min_depth}, {protocol.max_depth}] m")
    rows, cols = nearest_pixel(u=pts[valid, 0], v=pts[valid, 1])
    sampled = upsample_map(prediction=prediction, original_hw=original_hw)[rows, cols]
    gt = pts[valid, 2]
    pred, ratio = apply_median_scaling(
        gt=gt, pred=1.0 / sampled if kind == "disparity" else sampled,
        min_depth=protocol.min_depth, max_depth=protocol.max_depth,
    )
    class_sums: dict[str, ErrorSums] = {}
    if labels is not None:
        lab = np.asarray(labels)[valid]
        for name, members in MOTION_CLASSES.items():
            sel = np.isin(lab, members)
            class_sums[name] = ErrorSums.from_arrays(gt=gt[sel], pred=pred[sel])
    edges = distance_bin_edges(max_depth=protocol.max_depth, step=bin_step)
    bins = tuple(
        ErrorSums.from_arrays(gt=gt[(gt > lo) & (gt <= hi)], pred=pred[(gt > lo) & (gt <= hi)])
        for lo, hi in pairwise(edges)
    )
    return ImageResult(
        key=key, metrics=compute_depth_metrics(gt=gt, pred=pred), median_ratio=ratio, num_points=int(gt.size),
        class_sums=MappingProxyType(class_sums), distance_edges=edges, distance_sums=bins,
    )


def _metrics_dict(sums: ErrorSums) -> dict[str, Any]:
    metrics = sums.metrics()
    values = metrics.as_dict() if metrics is not None else dict.fromkeys(METRIC_NAMES)
    return {**values, "num_points": sums.count}


def aggregate(results: Sequence[ImageResult]) -> dict[str, Any]:
    """Dataset-level report (JSON-able; metrics of empty groups are ``None``).

    ``overall``: mean over images of per-image metrics. ``per_class``: pooled by point count over all
    images (only classes that appear in labelled images). ``by_distance``: pooled per distance bin.
    ``median_ratio``: mean and (population) std of the per-image scales.
    """
    if not results:
        raise ValueError("aggregate: no image results (every sample was skipped or the data is empty)")
    edges = results[0].distance_edges
    if any(r.distance_edges != edges for r in results):
        raise ValueError("aggregate: image results use different distance bins (mixed datasets?)")
    overall = {name: float(np.mean([getattr(r.metrics, name) for r in results])) for name in METRIC_NAMES}
    per_class: dict[str, Any] = {}
    for name in MOTION_CLASSES:
        parts = [r.class_sums[name] for r in results if name in r.class_sums]
        if parts:
            per_class[name] = _metrics_dict(sum(parts, ErrorSums()))
    by_distance = []
    for i, (lo, hi) in enumerate(pairwise(edges)):
        pooled = sum((r.distance_sums[i] for r in results), ErrorSums())
        by_distance.append({"lo": lo, "hi": hi, **_metrics_dict(pooled)})
    ratios = np.array([r.median_ratio for r in results])
    return {
        "num_images": len(results),
        "num_points": int(sum(r.num_points for r in results)),
        "overall": overall,
        "per_class": per_class,
        "by_distance": by_distance,
        "median_ratio": {"mean": float(ratios.mean()), "std": float(ratios.std())},
    }
