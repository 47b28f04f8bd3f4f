"""Deterministic, valid ``TripletSample`` objects for tests (tiny real JPEGs made with PIL).

``from tests.samples import make_sample, SHARED`` works from every test module.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from dynamo_depth.shards.schema import MotionLabel, SampleMeta, TripletSample, make_key, matrix_tuple

SHARED = Path(__file__).resolve().parents[2] / "shared"
"""``/work/shared`` (outside the repo): real fixtures and reference outputs; tests skip if absent."""

SEQUENCE = "2011_09_26_drive_0009_sync"
CAMERA = "image_02"


def tiny_jpeg(seed: int, *, width: int = 16, height: int = 8) -> bytes:
    """A real baseline JPEG of a deterministic RGB gradient (same seed, same bytes)."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xs * 13 + seed * 7) % 256, (ys * 29 + seed * 11) % 256, (xs + ys + seed * 5) % 256], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_sample(i: int, *, n_points: int = 8, with_motion: bool = True, dataset: str = "kitti",
                split: str = "train", width: int = 16, height: int = 8) -> TripletSample:
    """Sample number ``i`` of a fake sequence: target frame ``i + 1`` with neighbours ``i`` and ``i + 2``.

    Images are ``height x width`` JPEGs; K is a pinhole for them; poses move 1 m per frame along
    camera z; ``depth`` holds ``n_points`` [u, v, z] rows (pixels of a 1242x375 original, metres);
    ``motion`` (if requested) cycles through the ``MotionLabel`` values.
    """
    rng = np.random.default_rng(1000 + i)
    frames = (i, i + 1, i + 2)
    K = np.array([[20.0, 0.0, width / 2], [0.0, 20.0, height / 2], [0.0, 0.0, 1.0]], dtype=np.float64)
    poses = np.stack([np.eye(4, dtype=np.float64) for _ in frames])
    poses[:, 2, 3] = np.asarray(frames, dtype=np.float64)
    depth = np.column_stack([
        rng.uniform(0, 1242, n_points), rng.uniform(0, 375, n_points), rng.uniform(1, 80, n_points),
    ]).astype(np.float32)
    motion = (np.arange(n_points) % len(MotionLabel)).astype(np.uint8) if with_motion else None
    original_K = matrix_tuple([[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]])
    meta = SampleMeta(
        dataset=dataset, split=split, sequence=SEQUENCE, camera=CAMERA,
        frame_indices=frames, timestamps_us=tuple(1_317_000_000_000_000 + 103_000 * f for f in frames),
        original_size=(375, 1242), original_K=original_K, ego_from_camera=matrix_tuple(np.eye(4)),
        builder="tests", builder_version="0", extra={"index": i},
    )
    return TripletSample(
        key=make_key(SEQUENCE, CAMERA, frames[1]),
        images=tuple(tiny_jpeg(3 * i + k, width=width, height=height) for k in range(3)),  # type: ignore[arg-type]
        K=K, poses=poses, depth=depth, meta=meta, motion=motion,
    )
