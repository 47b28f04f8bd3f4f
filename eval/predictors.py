"""Predictions computed from a checkpoint (trainer file or original module folder), per shard sample.

Each builder returns a callable ``TripletSample -> array`` for the evaluation commands' ``--checkpoint``:
- depth: scale-0 sigmoid disparity (H, W) of the target frame;
- motion: scale-0 motion probability (H, W) of the target frame (the motion mask);
- odometry: (4, 4) camera_t_from_camera_t+1 as the original's ``eval/odometry.py`` makes it:
  ``transformation_from_parameters(axisangle[+1], translation[+1])`` (not inverted), float32.
The shard's stored frames are resized to the network's size (bicubic, antialiased) when they differ.
Depth feeds the network what the original's evaluation feeds it: a sample's raw PNG (``orig.png``, KITTI
test-split builds) resized with PIL bicubic (torchvision ``Resize`` on a PIL image), else ``cur.jpg``
(Waymo / nuScenes: the original's ``rgb/downsample`` JPEG at the training size).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from eval import rgb_from_jpeg

Predictor = Callable[[Any], np.ndarray]


def _frames(sample: Any, size: tuple[int, int]):
    import torch
    import torch.nn.functional as F

    images = np.stack([rgb_from_jpeg(data) for data in sample.images]).astype(np.float32) / np.float32(255.0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
    return x  # (3 frames, 3, H, W)


def _target_input(sample: Any, size: tuple[int, int]):
    """(1, 3, H, W) float32 network input of the target frame, as the original's evaluation makes it."""
    if sample.original_image is None:
        return _frames(sample, size)[1:2]
    import io

    import torch
    from PIL import Image

    with Image.open(io.BytesIO(sample.original_image)) as image:
        resized = image.convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
    rgb = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous()


def _load(checkpoint: str, *, need_motion: bool):
    from dynamo_depth.models.loading import load_for_inference

    try:
        return load_for_inference(checkpoint, need_motion=need_motion)
    except ValueError as err:
        raise ValueError(f"--checkpoint: {err}") from err


def depth_predictor(checkpoint: str) -> Predictor:
    import torch

    loaded = _load(checkpoint, need_motion=False)
    size = (loaded.height, loaded.width)

    def predict(sample: Any) -> np.ndarray:
        with torch.no_grad():
            disp = loaded.model.predict_disparity(_target_input(sample, size))[0]
        return disp[0, 0].double().numpy()

    return predict


def _triplet_outputs(loaded, sample: Any):
    import torch

    with torch.no_grad():
        return loaded.model(_frames(sample, (loaded.height, loaded.width))[None], phase="fine_tune")


def motion_predictor(checkpoint: str) -> Predictor:
    loaded = _load(checkpoint, need_motion=True)
    return lambda sample: _triplet_outputs(loaded, sample).motion_mask(0)[0, 0].double().numpy()


def odometry_predictor(checkpoint: str) -> Predictor:
    from dynamo_depth.models.pose import transformation_from_parameters

    loaded = _load(checkpoint, need_motion=True)

    def predict(sample: Any) -> np.ndarray:
        outputs = _triplet_outputs(loaded, sample)
        pose = transformation_from_parameters(outputs.axisangle[1], outputs.translation[1], invert=False)
        return pose[0].double().numpy()

    return predict
