"""Per-image depth evaluation with the ORIGINAL Dynamo-Depth protocol (``eval/depth.py`` @ 227a5d9).

Each step as the original's ``tools.DepthMetrics.forward`` does it (float32 where that changes results):

1. prediction -> depth (``kind``): ``sigmoid`` (the network's ``('disp', 0, 0)``, the default) is mapped
   by ``disp_to_depth(disp, 0.1, 100)``: ``scaled = 0.01 + 9.99 * disp`` (float32), upsampled bilinearly
   (``align_corners=False``, float32) to the ORIGINAL size, then inverted; ``disparity`` (an already
   scaled disparity) is upsampled then inverted; ``depth`` is upsampled as is.
2. valid LiDAR points (float32 coordinates, as the dataset classes cast them): ``min_depth < z < max_depth``
   (strict at the cap) and ``top <= v < bottom``, ``left <= u < right`` with the bounds
   ``int(fraction * size)`` (Garg crop for KITTI, the whole image otherwise).
3. pixel of a point: truncation ``(int(v), int(u))`` (``pixel="truncate"``, default) or the nearest pixel
   ``floor(x + 0.5)`` (``pixel="nearest"``, points whose nearest pixel is off the image are dropped).
4. per-image median scaling ``median(gt) / median(pred)`` with the LOWER middle value for even counts,
   float32, then the prediction is clamped to ``[min_depth, max_depth]`` (gt is not).
5. metrics (``compute_errors``): ratios compared in float32, sums in float64.
6. motion classes (``labels``, 3 = unlabeled never reported): per class metrics of the image's subset
   of the scaled prediction; ``aggregate`` averages them weighted by point count (``class_rmse=
   "image-weighted"``, the original) or pools the points (``"pooled"``). nuScenes labels are read as
   the original reads them: splatted on a 5x5-pixel cell grid (last point written wins) and looked up
   at the point's pixel (``nuscenes_cell_labels``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from types import MappingProxyType
from typing import Any

import numpy as np

from dynamo_depth.evaluation.metrics import (
    DATASET_PROTOCOL,
    GARG_CROP_FRACTIONS,
    METRIC_NAMES,
    DepthMetrics,
    DepthProtocol,
    ErrorSums,
    NoValidPointsError,
    distance_bin_edges,
    lower_median,
)

KINDS = ("sigmoid", "disparity", "depth")
PIXEL_MODES = ("truncate", "nearest")
CLASS_RMSE_MODES = ("image-weighted", "pooled")
MOTION_CLASSES = MappingProxyType({"background": 0, "moving": 1, "static_movable": 2})
"""Reported class -> motion label (the original's ``labels = {'bg': 0, 'static': 2, 'mot': 1}``)."""
DISP_MIN_DEPTH, DISP_MAX_DEPTH = 0.1, 100.0
"""``disp_to_depth`` range of the original (its training ``min_depth`` / ``max_depth``)."""
NUSCENES_CELL = 5
"""The original reads nuScenes labels from a (H/5, W/5) grid of per-point labels (``coord / 5``)."""


@dataclass(frozen=True)
class EvalProtocol:
    """Choices where users may leave the original protocol; the defaults are the original's."""

    pixel: str = "truncate"
    class_rmse: str = "image-weighted"

    def __post_init__(self) -> None:
        if self.pixel not in PIXEL_MODES:
            raise ValueError(f"pixel mode {self.pixel!r}; allowed: {PIXEL_MODES}")
        if self.class_rmse not in CLASS_RMSE_MODES:
            raise ValueError(f"class RMSE mode {self.class_rmse!r}; allowed: {CLASS_RMSE_MODES}")

    @property
    def is_original(self) -> bool:
        return self == EvalProtocol()

    def describe(self) -> str:
        """One line for the printed table: which protocol produced it."""
        if self.is_original:
            return "original Dynamo-Depth protocol (eval/depth.py @ 227a5d9)"
        changes = []
        if self.pixel != "truncate":
            changes.append("nearest pixel instead of truncation")
        if self.class_rmse != "image-weighted":
            changes.append("per-class metrics pooled over points")
        return "MODIFIED protocol: " + ", ".join(changes)


ORIGINAL = EvalProtocol()
"""The original's protocol (the default everywhere)."""


def crop_bounds(*, protocol: DepthProtocol, h: int, w: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``: ``int(fraction * size)``; the whole image without the Garg crop."""
    fractions = GARG_CROP_FRACTIONS if protocol.garg_crop else (0.0, 1.0, 0.0, 1.0)
    return int(fractions[0] * h), int(fractions[1] * h), int(fractions[2] * w), int(fractions[3] * w)


def point_pixels(*, points_uvz: np.ndarray, pixel: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) int64 of float32 points: truncation (the original) or the nearest pixel."""
    u = np.asarray(points_uvz[:, 0], dtype=np.float32)
    v = np.asarray(points_uvz[:, 1], dtype=np.float32)
    if pixel == "truncate":
        return np.trunc(v).astype(np.int64), np.trunc(u).astype(np.int64)
    if pixel == "nearest":
        return np.floor(v.astype(np.float64) + 0.5).astype(np.int64), np.floor(u.astype(np.float64) + 0.5).astype(np.int64)
    raise ValueError(f"pixel mode {pixel!r}; allowed: {PIXEL_MODES}")


def valid_points(*, points_uvz: np.ndarray, original_hw: tuple[int, int], protocol: DepthProtocol,
                 pixel: str = "truncate") -> np.ndarray:
    """(N,) bool: the original's test on float32 coordinates (crop bounds, ``min < z < max``).

    With ``pixel="nearest"`` the crop is tested on the nearest pixel instead (off-image points dropped).
    """
    h, w = int(original_hw[0]), int(original_hw[1])
    top, bottom, left, right = crop_bounds(protocol=protocol, h=h, w=w)
    pts = np.asarray(points_uvz, dtype=np.float32)
    z = pts[:, 2]
    valid = (z > np.float32(protocol.min_depth)) & (z < np.float32(protocol.max_depth))
    if pixel == "truncate":
        u, v = pts[:, 0], pts[:, 1]
    else:
        v, u = point_pixels(points_uvz=pts, pixel=pixel)
    return valid & (v >= top) & (v < bottom) & (u >= left) & (u < right)


def depth_map(*, prediction: np.ndarray, original_hw: tuple[int, int], kind: str) -> np.ndarray:
    """(H, W) float32 depth at the ORIGINAL size from a training-size map (step 1 of the module doc)."""
    import torch
    import torch.nn.functional as F

    if kind not in KINDS:
        raise ValueError(f"prediction kind {kind!r}; allowed: {KINDS}")
    x = torch.from_numpy(np.ascontiguousarray(prediction, dtype=np.float32))[None, None]
    if kind == "sigmoid":
        from dynamo_depth.models.depth import disp_to_depth

        x, _ = disp_to_depth(x, min_depth=DISP_MIN_DEPTH, max_depth=DISP_MAX_DEPTH)
    size = (int(original_hw[0]), int(original_hw[1]))
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if kind != "depth":
        x = 1 / x
    return x[0, 0].numpy()


def scale_and_clamp(*, gt: np.ndarray, pred: np.ndarray, protocol: DepthProtocol) -> tuple[np.ndarray, float]:
    """float32 ``clamp(pred * median(gt) / median(pred), min, max)`` and the ratio (lower medians)."""
    g, p = np.asarray(gt, dtype=np.float32), np.asarray(pred, dtype=np.float32)
    ratio = np.float32(lower_median(g) / lower_median(p))
    scaled = np.clip(p * ratio, np.float32(protocol.min_depth), np.float32(protocol.max_depth))
    return scaled, float(ratio)


def original_metrics(*, gt: np.ndarray, pred: np.ndarray) -> DepthMetrics:
    """``compute_errors`` of float32 ``gt``, ``pred`` (N > 0): ratios in float32, sums in float64."""
    g32, p32 = np.asarray(gt, dtype=np.float32), np.asarray(pred, dtype=np.float32)
    thresh = np.maximum(g32 / p32, p32 / g32)
    g, p = g32.astype(np.float64), p32.astype(np.float64)
    diff = g - p
    return DepthMetrics(
        abs_rel=float(np.mean(np.abs(diff) / g)), sq_rel=float(np.mean(diff**2 / g)),
        rmse=math.sqrt(float(np.mean(diff**2))), rmse_log=math.sqrt(float(np.mean((np.log(g) - np.log(p)) ** 2))),
        a1=float(np.mean(thresh < 1.25)), a2=float(np.mean(thresh < 1.25**2)), a3=float(np.mean(thresh < 1.25**3)),
    )


def nuscenes_cell_labels(*, points_uvz: np.ndarray, labels: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
    """Each point's label as the original reads it: every point's label written at cell
    ``(int(v / 5), int(u / 5))`` of a grid filled with 3 (later points overwrite earlier ones), the grid
    resized NEAREST to the image and read at the point's truncated pixel = the label of its cell."""
    pts = np.asarray(points_uvz, dtype=np.float32)
    rows = np.trunc(pts[:, 1] / np.float32(NUSCENES_CELL)).astype(np.int64)
    cols = np.trunc(pts[:, 0] / np.float32(NUSCENES_CELL)).astype(np.int64)
    width = int(original_hw[1]) // NUSCENES_CELL + 1
    cell = rows * width + cols
    last: dict[int, int] = {}
    for c, label in zip(cell.tolist(), np.asarray(labels).tolist(), strict=True):
        last[c] = label
    return np.array([last[c] for c in cell.tolist()], dtype=np.uint8)


@dataclass(frozen=True)
class ImageResult:
    """Depth evaluation of one image.

    Attributes:
        key: sample key (may be empty).
        metrics: per-image metrics after median scaling.
        median_ratio: the per-image scale applied to the prediction.
        num_points: valid LiDAR points evaluated.
        class_metrics: class name (``MOTION_CLASSES``) -> (metrics, point count) for classes present.
        class_sums: class name -> ``ErrorSums`` (for pooling); both empty without labels.
        distance_edges / distance_sums: pooled errors per gt distance bin ``(lo, hi]``.
    """

    key: str
    metrics: DepthMetrics
    median_ratio: float
    num_points: int
    class_metrics: Mapping[str, tuple[DepthMetrics, int]]
    class_sums: Mapping[str, ErrorSums]
    distance_edges: tuple[float, ...]
    distance_sums: tuple[ErrorSums, ...]


def _check_inputs(key: str, points_uvz: Any, prediction: Any, original_hw: Any, labels: Any) -> None:
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
            raise ValueError(f"sample {key!r}: motion labels must be (N,) = ({pts.shape[0]},) values in 0..3, "
                             f"got shape {lab.shape}")


def evaluate_image(
    *, points_uvz: np.ndarray, prediction: np.ndarray, original_hw: tuple[int, int], dataset: str,
    labels: np.ndarray | None = None, kind: str = "sigmoid", key: str = "",
    protocol: EvalProtocol = ORIGINAL, bin_step: float = 10.0,
) -> ImageResult:
    """Evaluate one predicted map against its image's LiDAR points (module doc).

    Args:
        points_uvz: (N, 3) [u, v, z]: pixels of the ORIGINAL image, z metres.
        prediction: (H', W') map of ``kind`` (``KINDS``), > 0.
        original_hw: (H, W) of the original image.
        dataset: key of ``DATASET_PROTOCOL``.
        labels: optional (N,) motion labels (0 background, 1 moving, 2 static movable, 3 unlabeled).
    Raises:
        ValueError on bad input; ``NoValidPointsError`` when no point survives the protocol.
    """
    if dataset not in DATASET_PROTOCOL:
        raise ValueError(f"sample {key!r}: unknown dataset {dataset!r}; allowed: {sorted(DATASET_PROTOCOL)}")
    if kind not in KINDS:
        raise ValueError(f"sample {key!r}: prediction kind {kind!r}; allowed: {KINDS}")
    _check_inputs(key, points_uvz, prediction, original_hw, labels)
    limits = DATASET_PROTOCOL[dataset]
    pts = np.asarray(points_uvz, dtype=np.float32)
    valid = valid_points(points_uvz=pts, original_hw=original_hw, protocol=limits, pixel=protocol.pixel)
    if not np.any(valid):
        raise NoValidPointsError(f"sample {key!r}: no LiDAR point inside the evaluated region and in "
                                 f"({limits.min_depth}, {limits.max_depth}) m")
    rows, cols = point_pixels(points_uvz=pts[valid], pixel=protocol.pixel)
    gt = pts[valid, 2]
    pred, ratio = scale_and_clamp(gt=gt, pred=depth_map(prediction=prediction, original_hw=original_hw, kind=kind)[rows, cols],
                                  protocol=limits)
    class_metrics: dict[str, tuple[DepthMetrics, int]] = {}
    class_sums: dict[str, ErrorSums] = {}
    if labels is not None:
        lab = np.asarray(labels, dtype=np.uint8)
        if dataset == "nuscenes":
            lab = nuscenes_cell_labels(points_uvz=pts, labels=lab, original_hw=original_hw)
        lab = lab[valid]
        for name, label in MOTION_CLASSES.items():
            sel = lab == label
            class_sums[name] = ErrorSums.from_arrays(gt=gt[sel], pred=pred[sel])
            if np.any(sel):
                class_metrics[name] = (original_metrics(gt=gt[sel], pred=pred[sel]), int(sel.sum()))
    edges = distance_bin_edges(max_depth=limits.max_depth, step=bin_step)
    bins = tuple(ErrorSums.from_arrays(gt=gt[(gt > lo) & (gt <= hi)], pred=pred[(gt > lo) & (gt <= hi)])
                 for lo, hi in pairwise(edges))
    return ImageResult(key=key, metrics=original_metrics(gt=gt, pred=pred), median_ratio=ratio,
                       num_points=int(gt.size), class_metrics=MappingProxyType(class_metrics),
                       class_sums=MappingProxyType(class_sums), distance_edges=edges, distance_sums=bins)


def _sums_dict(sums: ErrorSums) -> dict[str, Any]:
    metrics = sums.metrics()
    values = metrics.as_dict() if metrics is not None else dict.fromkeys(METRIC_NAMES)
    return {**values, "num_points": sums.count}


def _weighted_class(results: Sequence[ImageResult], name: str) -> dict[str, Any]:
    """``sum(metric_i * cnt_i) / sum(cnt_i)`` over the images where the class is present."""
    parts = [r.class_metrics[name] for r in results if name in r.class_metrics]
    total = sum(count for _, count in parts)
    if total == 0:
        return {**dict.fromkeys(METRIC_NAMES), "num_points": 0, "num_images": 0}
    values = {n: math.fsum(getattr(mt, n) * count for mt, count in parts) / total for n in METRIC_NAMES}
    return {**values, "num_points": total, "num_images": len(parts)}


def aggregate(results: Sequence[ImageResult], *, protocol: EvalProtocol = ORIGINAL) -> dict[str, Any]:
    """Dataset-level report (JSON-able; metrics of empty groups are ``None``).

    ``overall``: mean over images of per-image metrics. ``per_class`` (only when some image has labels):
    point-count-weighted mean of per-image class metrics (``image-weighted``) or pooled over points.
    ``by_distance``: pooled per distance bin. ``median_ratio``: mean and (population) std of the scales.
    """
    if not results:
        raise ValueError("aggregate: no image results (every sample was skipped or the data is empty)")
    edges = results[0].distance_edges
    if any(r.distance_edges != edges for r in results):
        raise ValueError("aggregate: image results use different distance bins (mixed datasets?)")
    overall = {name: math.fsum(getattr(r.metrics, name) for r in results) / len(results) for name in METRIC_NAMES}
    labelled = [r for r in results if r.class_sums]
    per_class: dict[str, Any] = {}
    for name in MOTION_CLASSES if labelled else ():
        if protocol.class_rmse == "pooled":
            per_class[name] = _sums_dict(sum((r.class_sums[name] for r in labelled), ErrorSums()))
        else:
            per_class[name] = _weighted_class(labelled, name)
    by_distance = [{"lo": lo, "hi": hi, **_sums_dict(sum((r.distance_sums[i] for r in results), ErrorSums()))}
                   for i, (lo, hi) in enumerate(pairwise(edges))]
    ratios = np.array([r.median_ratio for r in results])
    return {
        "num_images": len(results), "num_labelled_images": len(labelled),
        "num_points": int(sum(r.num_points for r in results)),
        "overall": overall, "per_class": per_class, "by_distance": by_distance,
        "median_ratio": {"mean": float(ratios.mean()), "std": float(ratios.std())},
    }
