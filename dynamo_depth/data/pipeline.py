"""WebDataset stages of the loader: small generator functions, each usable (and tested) alone.

    read_samples(wanted, plan=, store=)   raw members, in the plan's order (streams shards, verifies them)
    decode_samples(raw)                   -> numpy sample dicts (schema.decode + JPEG decode, never unpickles)
    augment_samples(decoded, ...)         -> flip / colour jitter (or images_aug = images)
    batch_samples(decoded, ...)           -> collated torch batches

``StreamingDataset`` chains them with ``webdataset.DataPipeline``; the first stage asks
``torch.utils.data.get_worker_info()`` which blocks of the rank stream this worker yields.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import webdataset as wds
from torch.utils.data import get_worker_info

from dynamo_depth import schema
from dynamo_depth.data.augment import augment_sample
from dynamo_depth.data.collate import collate_batch
from dynamo_depth.data.plan import EpochPlan, WantedSample
from dynamo_depth.data.sources import ShardStore

__all__ = ["StreamingDataset", "augment_samples", "batch_samples", "decode_jpeg", "decode_samples", "read_samples"]


def _stream_wanted(wanted: Sequence[WantedSample], plan: EpochPlan,
                   store: ShardStore) -> Iterator[tuple[tuple[int, int], dict[str, bytes]]]:
    """``((shard, ordinal), members)`` of the wanted samples, shards read whole in plan order."""
    by_shard: dict[int, set[int]] = {}
    for w in wanted:
        by_shard.setdefault(w.shard, set()).add(w.ordinal)
    for shard in sorted(by_shard):  # shards are stored in read (source) order
        entry = plan.shards[shard]
        for ordinal, (key, members) in enumerate(store.samples(entry)):
            if ordinal in by_shard[shard]:
                yield (shard, ordinal), {"__key__": key, "__shard__": entry.name, **members}


def read_samples(wanted: Sequence[WantedSample], *, plan: EpochPlan, store: ShardStore) -> Iterator[dict[str, Any]]:
    """Yield the raw samples ``wanted`` (member name -> bytes, plus ``__key__``, ``__shard__``) in that order.

    Shards are streamed front to back; samples read ahead of their turn wait in a buffer (at most one
    shuffle window). Each shard is read to its end and verified before the next one is opened.
    """
    stream = _stream_wanted(wanted, plan, store)
    buffer: dict[tuple[int, int], dict[str, Any]] = {}
    for w in wanted:
        while (w.shard, w.ordinal) not in buffer:
            try:
                ident, raw = next(stream)
            except StopIteration:
                raise ValueError(f"shard {plan.shards[w.shard].name}: sample #{w.ordinal} "
                                 f"({plan.key_of_source(w.source)!r}) was never read") from None
            buffer[ident] = raw
        yield buffer.pop((w.shard, w.ordinal))
    for _ in stream:  # finish (and verify) the shard in progress
        pass


def decode_jpeg(data: bytes, *, key: str, member: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from JPEG bytes (simplejpeg when installed, else PIL); ``SampleError`` if not JPEG."""
    try:
        import simplejpeg

        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ImportError:
        pass
    except ValueError as exc:
        raise schema.SampleError(key, member, f"cannot decode JPEG: {exc}") from exc
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise schema.SampleError(key, member, f"not a JPEG image ({image.format})")
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise schema.SampleError(key, member, f"cannot decode JPEG: {exc}") from exc


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw members -> dict with ``images`` (3, 3, H, W) float32 in [0, 1], ``K`` (3, 3), ``poses`` (3, 4, 4),
    ``timestamps_us`` (3,) int64, ``depth_points`` (N, 3) float32, ``motion`` (N,) uint8 or None,
    ``original_size`` (H, W), ``meta`` (``SampleMeta``), ``flipped`` False, ``__key__``, ``__shard__``."""
    key = raw["__key__"]
    sample = schema.decode({k: v for k, v in raw.items() if not k.startswith("__")}, key=key)
    frames = [decode_jpeg(data, key=key, member=name) for name, data in zip(schema.IMAGE_MEMBERS, sample.images, strict=True)]
    if len({f.shape for f in frames}) != 1:
        raise schema.SampleError(key, "next.jpg", f"frames differ in size: {[f.shape for f in frames]}")
    images = np.stack(frames).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return {
        "__key__": key, "__shard__": raw.get("__shard__"), "images": images, "K": sample.K, "poses": sample.poses,
        "timestamps_us": np.asarray(sample.meta.timestamps_us, dtype=np.int64), "depth_points": sample.depth,
        "motion": sample.motion, "original_size": tuple(sample.meta.original_size), "meta": sample.meta,
        "flipped": False,
    }


def decode_samples(raws: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for raw in raws:
        yield decode_sample(raw)


def augment_samples(samples: Iterable[dict[str, Any]], *, seed: int, epoch: int,
                    enabled: bool) -> Iterator[dict[str, Any]]:
    """Flip / jitter each sample by its (seed, epoch, key) draw; with ``enabled=False`` only ``images_aug = images``."""
    for sample in samples:
        if enabled:
            yield augment_sample(sample, seed=seed, epoch=epoch)
        else:
            yield {**sample, "images_aug": sample["images"]}


def batch_samples(samples: Iterable[dict[str, Any]], *, batch_size: int, scales: int) -> Iterator[dict[str, Any]]:
    """Collate consecutive groups of ``batch_size`` samples (the last group may be smaller)."""
    group: list[dict[str, Any]] = []
    for sample in samples:
        group.append(sample)
        if len(group) == batch_size:
            yield collate_batch(group, scales=scales)
            group = []
    if group:
        yield collate_batch(group, scales=scales)


class StreamingDataset(wds.DataPipeline):
    """The IterableDataset returned by ``make_dataset`` / used by ``make_loader``.

    Attributes:
        plan: this rank's ``EpochPlan``; start: the resume position in the rank stream;
        block: samples per worker block (1 for samples, the batch size for batches).
    """

    def __init__(self, *, plan: EpochPlan, store: ShardStore, start: int, block: int, stages: list[Any]) -> None:
        self.plan, self.store, self.start, self.block = plan, store, start, block
        super().__init__(self._source, *stages)

    def _source(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        wanted = self.plan.wanted(start=self.start, block=self.block, worker=worker, num_workers=num_workers)
        return read_samples(wanted, plan=self.plan, store=self.store)

    def __len__(self) -> int:
        """Samples this rank still yields (from the resume position)."""
        return self.plan.rank_length - self.start
