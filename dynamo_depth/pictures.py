"""Pictures of predictions, shared by ``predict`` (images) and ``predict_video`` (videos): the depth
colour map and the motion-mask overlay.
"""

from __future__ import annotations

import numpy as np

__all__ = ["OVERLAY_ALPHA", "colour_depth", "motion_overlay"]

OVERLAY_ALPHA = 0.6
"""Opacity of the red motion overlay at motion probability 1."""


def colour_depth(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth in metres -> (H, W, 3) uint8 picture of the inverse depth (magma colour map)."""
    import matplotlib

    inverse = 1.0 / np.maximum(depth, 1e-6)
    low, high = np.percentile(inverse, 1), np.percentile(inverse, 99)
    scaled = np.clip((inverse - low) / max(high - low, 1e-12), 0.0, 1.0)
    return (matplotlib.colormaps["magma"](scaled)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def motion_overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 frame with its (h, w) motion probability laid over it in red (upsampled bilinear)."""
    import cv2

    m = cv2.resize(mask.astype(np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    m = np.clip(m, 0.0, 1.0)[..., None] * OVERLAY_ALPHA
    red = np.array([255.0, 0.0, 0.0], dtype=np.float32)
    return (rgb.astype(np.float32) * (1.0 - m) + red * m + 0.5).astype(np.uint8)
