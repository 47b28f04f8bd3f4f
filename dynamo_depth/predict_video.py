"""``predict`` on a video: ``python -m dynamo_depth predict --checkpoint C VIDEO --out DIR [--motion]``.

Every kept frame (``--every K``: frames 0, K, 2K, ... in decode order; ``--max-frames N``: the first N of
those) is resized to the network's size with PIL's bicubic filter, as ``predict`` does for images, and its
depth (``disp_to_depth`` of the sigmoid disparity, upsampled bilinear to the frame's size) is drawn with
``pictures.colour_depth`` (magma, near = bright, each frame's own 1-99 % range).

Writes ``DIR/<name>_depth.mp4`` (H.264) at the video's frame rate divided by K (so the video lasts as long
as the source's kept span), and with ``--motion`` ``DIR/<name>_motion.mp4``: each frame with its motion
mask (the motion network on the kept frames t-1, t, t+1) laid over it in red, ``rgb (1 - 0.6 m) + 0.6 m
red``; the first and last kept frames, which lack a neighbour, are written without overlay.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dynamo_depth.pictures import colour_depth, motion_overlay
from dynamo_depth.video.frames import FrameRef, VideoWriter, iter_video, nominal_rate


def kept_frames(path: Path, *, every: int, max_frames: int | None) -> Iterator[FrameRef]:
    """Frames 0, K, 2K, ... of the video (decode order), at most ``max_frames`` of them."""
    count = 0
    for frame in iter_video(path):
        if frame.index % every:
            continue
        if max_frames is not None and count >= max_frames:
            return
        count += 1
        yield frame


def _network_input(rgb: np.ndarray, *, height: int, width: int) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(rgb)
    if (image.height, image.width) != (height, width):
        image = image.resize((width, height), Image.BICUBIC)
    return np.ascontiguousarray((np.asarray(image, dtype=np.float32) / np.float32(255.0)).transpose(2, 0, 1))


def _depth_pictures(loaded: Any, frames: list[np.ndarray], device: str) -> list[np.ndarray]:
    import torch
    import torch.nn.functional as F

    from dynamo_depth.models.depth import disp_to_depth

    x = torch.from_numpy(np.stack([_network_input(f, height=loaded.height, width=loaded.width) for f in frames]))
    with torch.no_grad():
        disparity = loaded.model.predict_disparity(x.to(device))[0].float().cpu()
    pictures = []
    for rgb, d in zip(frames, disparity, strict=True):
        up = F.interpolate(d[None], size=rgb.shape[:2], mode="bilinear", align_corners=False)
        _, depth = disp_to_depth(up, min_depth=loaded.min_depth, max_depth=loaded.max_depth)
        pictures.append(colour_depth(depth[0, 0].numpy()))
    return pictures


def _motion_mask(loaded: Any, triplet: list[np.ndarray], device: str) -> np.ndarray:
    import torch

    x = torch.from_numpy(np.stack([_network_input(f, height=loaded.height, width=loaded.width) for f in triplet]))
    with torch.no_grad():
        outputs = loaded.model(x[None].to(device), phase="fine_tune")
    return outputs.motion_mask(0)[0, 0].float().cpu().numpy()


def predict_video(*, loaded: Any, path: Path, out: Path, every: int, max_frames: int | None, motion: bool,
                  batch_size: int, device: str, progress: bool) -> int:
    """Write ``<name>_depth.mp4`` (and ``<name>_motion.mp4``); returns the number of frames written."""
    from tqdm import tqdm

    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    rate = nominal_rate(path) / every
    loaded.model.to(device).eval()
    depth_writer = VideoWriter(out / f"{path.stem}_depth.mp4", rate=rate)
    motion_writer = VideoWriter(out / f"{path.stem}_motion.mp4", rate=rate) if motion else None
    bar = tqdm(desc=f"predict {path.name}", unit="frame", disable=not progress,
               total=_expected_frames(path, every=every, max_frames=max_frames))
    chunk: list[np.ndarray] = []
    window: list[np.ndarray] = []
    written = 0
    try:
        for frame in kept_frames(path, every=every, max_frames=max_frames):
            rgb = frame.load()
            chunk.append(rgb)
            if len(chunk) == batch_size:
                written += _flush(loaded, chunk, depth_writer, device, bar)
            if motion_writer is not None:
                window = _motion_step(loaded, window, rgb, motion_writer, device)
        written += _flush(loaded, chunk, depth_writer, device, bar)
        if motion_writer is not None and window:
            motion_writer.write(window[-1])  # the last frame has no next neighbour
    finally:
        bar.close()
        depth_writer.close()
        if motion_writer is not None:
            motion_writer.close()
    if written == 0:
        raise ValueError(f"{path}: no frame decoded")
    return written


def _expected_frames(path: Path, *, every: int, max_frames: int | None) -> int | None:
    """The number of frames the progress bar expects (the container's frame count, when it states one)."""
    import av

    with av.open(str(path)) as container:
        stated = container.streams.video[0].frames if container.streams.video else 0
    kept = -(-stated // every) if stated else None
    return min(x for x in (kept, max_frames) if x is not None) if (kept or max_frames) else None


def _flush(loaded: Any, chunk: list[np.ndarray], writer: VideoWriter, device: str, bar: Any) -> int:
    if not chunk:
        return 0
    for picture in _depth_pictures(loaded, chunk, device):
        writer.write(picture)
    count = len(chunk)
    bar.update(count)
    chunk.clear()
    return count


def _motion_step(loaded: Any, window: list[np.ndarray], rgb: np.ndarray, writer: VideoWriter,
                 device: str) -> list[np.ndarray]:
    window = [*window[-2:], rgb]
    if len(window) == 1:
        return window
    if len(window) == 2:
        writer.write(window[0])  # the first frame has no previous neighbour
        return window
    writer.write(motion_overlay(window[1], _motion_mask(loaded, window, device)))
    return window

