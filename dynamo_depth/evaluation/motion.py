"""Motion segmentation metrics as the original Dynamo-Depth computes them (``eval/motion_segmentation.py``).

Facts (``../shared/reference/eval_protocol.md`` section 6):
- thresholds: ``torch.linspace(-eps, 1 - eps, 150)`` in float32, ``eps = 1 / 149`` (``original_thresholds``);
  a pixel is predicted moving when ``score > t`` (strict);
- ground truth per pixel: 1 moving is positive, 0 background and 2 static movable are negative, 3 unlabeled is
  ignored; per image and threshold ``g = #moving``, ``predicted = #(score > t and valid)``,
  ``tp = #(moving and score > t)``, ``fp = predicted - tp``, ``fn = g - tp`` (``image_counts``);
- the counts are summed over all images in float32 (``PooledCounts``, ``dtype="float32"``: the original's
  ``torch.zeros`` accumulators; ``"int64"`` sums exactly, a deliberate option);
- ``precision = tp / (tp + fp + 1e-10)``, ``recall = tp / (tp + fn + 1e-10)``, ``f1 = 2PR / (P + R + 1e-10)``, all
  float32 (``precision_recall_f1``): precision is 0 at a threshold with no predicted pixel; the reported F1 is the
  first maximum over the thresholds (``best_f1``).
nuScenes ground truth is the original's cell grid (``nuscenes_grid_mask``). Nothing here uses BLAS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MOVING, UNLABELED = 1, 3
ORIGINAL_NUM_THRESHOLDS = 150
NUSCENES_CELL = 5
"""The original splats nuScenes labels into a (H // 5, W // 5) grid."""
COUNT_DTYPES = ("float32", "int64")


def original_thresholds(num: int = ORIGINAL_NUM_THRESHOLDS) -> np.ndarray:
    """(num,) float32 ``torch.linspace(-eps, 1 - eps, num)``, ``eps = 1 / (num - 1)``: (k - 1) / (num - 1)."""
    import torch

    if num < 2:
        raise ValueError(f"number of thresholds must be >= 2, got {num}")
    eps = 1 / (num - 1)
    return torch.linspace(0 - eps, 1 - eps, num).numpy()


def _count_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(T,) int64 ``#(values > t)`` per threshold (float32 comparisons)."""
    ordered = np.sort(values.astype(np.float32, copy=False), kind="stable")
    return (ordered.size - np.searchsorted(ordered, thresholds, side="right")).astype(np.int64)


def image_counts(*, scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, fn), each (T,) int64, of one image: ``scores`` float32 and ``labels`` uint8 of equal shape
    (full-resolution pixels, or LiDAR points), ``thresholds`` (T,) float32."""
    s = np.asarray(scores, dtype=np.float32)
    y = np.asarray(labels)
    t = np.asarray(thresholds, dtype=np.float32)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have the same shape")
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
        raise ValueError("thresholds must be a non-empty 1-D array of finite values")
    if not np.all(np.isfinite(s)):
        raise ValueError("motion scores must be finite")
    moving = y == MOVING
    predicted = _count_above(s[y != UNLABELED], t)
    tp = _count_above(s[moving], t)
    return tp, predicted - tp, int(moving.sum()) - tp


@dataclass
class PooledCounts:
    """tp / fp / fn per threshold summed over images, in the original's float32 (or exactly in int64)."""

    num_thresholds: int
    dtype: str = "float32"
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if self.dtype not in COUNT_DTYPES:
            raise ValueError(f"count dtype {self.dtype!r}; allowed: {COUNT_DTYPES}")
        for name in ("tp", "fp", "fn"):
            setattr(self, name, np.zeros(self.num_thresholds, dtype=self.dtype))

    def add(self, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> None:
        """Add one image's counts (the original's ``record[k] += count``: rounded to float32 per image)."""
        for name, value in (("tp", tp), ("fp", fp), ("fn", fn)):
            total = getattr(self, name)
            setattr(self, name, total + np.asarray(value).astype(self.dtype))


def precision_recall_f1(counts: PooledCounts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 (T,) each: ``tp / (tp + fp + 1e-10)``, ``tp / (tp + fn + 1e-10)``, ``2PR / (P + R + 1e-10)``."""
    tp, fp, fn = (np.asarray(c, dtype=np.float32) for c in (counts.tp, counts.fp, counts.fn))
    tiny = np.float32(1e-10)
    precision = tp / (tp + fp + tiny)
    recall = tp / (tp + fn + tiny)
    f1 = np.float32(2) * (precision * recall) / (precision + recall + tiny)
    return precision, recall, f1


def best_f1(*, f1: np.ndarray, thresholds: np.ndarray) -> tuple[float, float, int]:
    """``(max F1, its threshold, its index)``; the first (lowest-index) threshold wins ties (``np.argmax``)."""
    values = np.asarray(f1)
    if values.ndim != 1 or values.shape != np.shape(thresholds) or values.size == 0:
        raise ValueError(f"f1 and thresholds must be equal non-empty (T,) arrays, got {values.shape} and "
                         f"{np.shape(thresholds)}")
    i = int(np.argmax(values))
    return float(values[i]), float(thresholds[i]), i


def nuscenes_grid_mask(*, points_uvz: np.ndarray, labels: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 nuScenes motion mask as the original's ``nuScenesDataset.get_mask`` makes it.

    Each point's label is written at cell ``(trunc(v / 5), trunc(u / 5))`` (clamped into the grid) of a
    ``(H // 5, W // 5)`` grid filled with 3; where several points share a cell the last one wins (torch leaves
    it undefined; on CPU it is the last); the grid is resized NEAREST (``torch.nn.functional.interpolate``, as
    torchvision's ``Resize(NEAREST)``) to (H, W). ``points_uvz`` (N, 3) [u, v, z] in original pixels; the
    division is float32 (the stored depth; the original divides its float64 ``depth.npy``).
    """
    import torch
    import torch.nn.functional as F

    pts = np.asarray(points_uvz, dtype=np.float32)
    values = np.asarray(labels, dtype=np.uint8)
    if pts.ndim != 2 or pts.shape[1] != 3 or values.shape != (pts.shape[0],):
        raise ValueError(f"points (N, 3) and labels (N,) expected, got {pts.shape} and {values.shape}")
    height, width = int(original_hw[0]), int(original_hw[1])
    grid_h, grid_w = height // NUSCENES_CELL, width // NUSCENES_CELL
    rows = np.clip(np.trunc(pts[:, 1] / np.float32(NUSCENES_CELL)).astype(np.int64), 0, grid_h - 1)
    cols = np.clip(np.trunc(pts[:, 0] / np.float32(NUSCENES_CELL)).astype(np.int64), 0, grid_w - 1)
    grid = np.full(grid_h * grid_w, UNLABELED, dtype=np.uint8)
    cell = rows * grid_w + cols
    _, last_reversed = np.unique(cell[::-1], return_index=True)
    last = cell.size - 1 - last_reversed  # the last point of each occupied cell
    grid[cell[last]] = values[last]
    full = F.interpolate(torch.from_numpy(grid.reshape(grid_h, grid_w).astype(np.float32))[None, None],
                         size=(height, width), mode="nearest")
    return full[0, 0].numpy().astype(np.uint8)
