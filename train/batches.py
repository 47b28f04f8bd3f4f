"""One training step's input: the loader's batches, resized and turned into what the networks and losses read.

``batch_stream`` yields (batch, loader state) pairs epoch after epoch (resumable from a loader state) and
rebuilds the input error a DataLoader worker raised (``unwrap_worker_error``), so a bad sample reads the
same with or without workers; ``prepare_batch`` turns a loader batch into a ``StepBatch``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from dynamo_depth.config import RunConfig
from dynamo_depth.objective.inputs import LossBatch, make_loss_batch

if TYPE_CHECKING:
    from train.runtime import Runtime


@dataclass(frozen=True)
class StepBatch:
    """One step's input: the augmented triplet the networks see and what the losses read.

    images_aug: (B, 3 frames [t-1, t, t+1], 3, H, W) in [0, 1]; losses: ``LossBatch`` (un-augmented frames,
    target pyramid, K / inv_K per scale, ts per source frame).
    """

    images_aug: torch.Tensor
    losses: LossBatch


def scale_intrinsics(K: torch.Tensor, *, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    """K (B, 3, 3) of images resized from (H, W) to (H', W'): row 0 * W'/W, row 1 * H'/H (no half-pixel shift)."""
    factors = torch.tensor([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0], 1.0], dtype=K.dtype, device=K.device)
    return K * factors[:, None]


def prepare_batch(batch: Mapping[str, Any], *, height: int, width: int, scales: tuple[int, ...],
                  device: torch.device) -> StepBatch:
    """The loader's batch -> ``StepBatch`` at (height, width).

    Images stored at another size are resized (bilinear, antialiased) and K scaled to match. The losses'
    intrinsics pyramid follows the original: K normalised by the image size, rows 0 / 1 times W // 2^s /
    H // 2^s, inverse by float32 pseudo-inverse. ``ts`` comes from the loader (1 unless nuScenes).
    """
    images, augmented = batch["images"].to(device), batch["images_aug"].to(device)
    K = batch["K"][:, 0, :3, :3].to(dtype=torch.float32)
    stored = tuple(images.shape[-2:])
    if stored != (height, width):
        def resize(x: torch.Tensor) -> torch.Tensor:
            flat = F.interpolate(x.flatten(0, 1), size=(height, width), mode="bilinear", align_corners=False,
                                 antialias=True)
            return flat.clamp(0.0, 1.0).unflatten(0, x.shape[:2])
        images, augmented = resize(images), resize(augmented)
        K = scale_intrinsics(K, from_hw=stored, to_hw=(height, width))
    ts = batch["ts"].to(device=device, dtype=torch.float32) if "ts" in batch else torch.ones(images.shape[0], 2,
                                                                                              device=device)
    color = {-1: images[:, 0], 0: images[:, 1], 1: images[:, 2]}
    losses = make_loss_batch(color=color, K=K.numpy(), ts={-1: ts[:, 0], 1: ts[:, 1]}, scales=scales,
                             normalised=False)
    return StepBatch(images_aug=augmented, losses=losses)


def batch_stream(config: RunConfig, runtime: Runtime, *, start: Mapping[str, int] | None = None,
                 ) -> Iterator[tuple[Mapping[str, Any], dict[str, int]]]:
    """Endless (batch, loader state after it) pairs, data epoch after data epoch, from ``start``."""
    from dynamo_depth.data import make_loader

    d = config.data
    state, epoch = (dict(start), int(start["epoch"])) if start else (None, 0)
    while True:
        loader = make_loader(d.url, batch_size=d.batch_size, num_workers=d.num_workers, rank=runtime.rank,
                             world_size=runtime.world_size, seed=config.train.seed, epoch=epoch, augment=d.augment,
                             scales=1, resume_from=state, shuffle_buffer=d.shuffle_buffer, cache_dir=d.cache_dir,
                             include_edges=d.include_edges)
        if state is None and len(loader) == 0:
            raise ValueError(f"data.url {d.url!r}: no samples for rank {runtime.rank} of {runtime.world_size} "
                             f"in epoch {epoch} (fewer samples than ranks?)")
        batches = iter(loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as exc:  # a DataLoader worker's error arrives wrapped in its traceback text
                original = unwrap_worker_error(exc)
                if original is None:
                    raise
                raise original from exc
            if runtime.rank == 0:
                _say_once_without_depth(batch)
            yield batch, loader.state().to_dict()
        epoch, state = epoch + 1, None


_TOLD: set[str] = set()


def _say_once_without_depth(batch: Mapping[str, Any]) -> None:
    """One line on stderr the first time a batch holds a sample without LiDAR depth (schema v2, builders.video):
    the losses need none; the depth metrics (``eval.depth``) cannot be computed for such shards."""
    if "no-depth" not in _TOLD and "has_depth" in batch and not bool(batch["has_depth"].all()):
        _TOLD.add("no-depth")
        print("train: note: samples without LiDAR depth (e.g. builders.video shards): training needs none, but no "
              "depth metrics can be computed for them (eval.depth refuses such shards)", file=sys.stderr)


_WORKER_HEADER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def unwrap_worker_error(exc: BaseException) -> BaseException | None:
    """The input error a DataLoader worker raised, rebuilt from ``exc`` (torch re-raises it with the worker's
    whole traceback as message, or as a RuntimeError when the type needs other arguments); None if ``exc``
    is not such a wrapper or the original was no ValueError / OSError (those stay as they are: bugs).

    The result has the original's type when it takes one message argument (else ValueError / OSError) and
    the original's message only (one line for this project's errors).
    """
    text = str(exc)
    header = _WORKER_HEADER.match(text)
    if header is None:
        return None
    name = header.group(1)
    lines = text.rstrip().splitlines()
    line = re.compile(rf"^(?:([\w.]+)\.)?{re.escape(name)}(?:: (.*))?$")
    for index in range(len(lines) - 1, 0, -1):
        found = line.match(lines[index])
        if found:
            module, message = found.group(1) or "builtins", "\n".join([found.group(2) or "", *lines[index + 1:]])
            break
    else:
        return None
    cls = getattr(sys.modules.get(module), name, None)
    if not isinstance(cls, type):
        return None
    for base in (ValueError, OSError):
        if issubclass(cls, base):
            try:
                return cls(message)
            except Exception:  # noqa: BLE001 - its constructor needs other arguments
                return base(message)
    return None
