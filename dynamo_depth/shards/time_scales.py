"""The complete flow's time scale ``ts`` of a triplet's source frames, from its timestamps (``meta.json``).

Torch-free: the loader's collate (``dynamo_depth.data.collate``) computes it for every batch and
``builders.video`` records it in ``meta.json`` ``extra.ts``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TIME_SCALED_DATASETS", "frame_time_scales"]

TIME_SCALED_DATASETS = ("nuscenes", "video")
"""Datasets whose frames are unevenly spaced: their complete flow is scaled by the frame gap."""


def frame_time_scales(timestamps_us: np.ndarray, *, dataset: str) -> np.ndarray:
    """(2,) float32 ``ts`` of the source frames (t-1, t+1) of a triplet: the factor on the complete flow.

    As the original: 1 for KITTI and Waymo (evenly spaced frames); for nuScenes the gap between the
    target and the source frame in whole milliseconds (rounded) divided by 100, so 0.5 for a 50 ms gap.
    Videos (``builders.video``, not in the original) use the nuScenes rule: their frames may be unevenly
    spaced (``--fps`` selection, dropped static frames, variable-frame-rate clips).
    Deliberate difference: the original keeps gaps as uint8 and wraps above 255 ms; this does not wrap.
    """
    if dataset not in TIME_SCALED_DATASETS:
        return np.ones(2, dtype=np.float32)
    t = np.asarray(timestamps_us, dtype=np.int64)
    if t.shape != (3,):
        raise ValueError(f"timestamps_us must be (3,), got {t.shape}")
    gaps_ms = np.rint(np.abs(np.array([t[1] - t[0], t[2] - t[1]], dtype=np.float64)) / 1000.0)
    return (gaps_ms / 100.0).astype(np.float32)
