"""WebDataset stages of the loader: small generator functions, each usable (and tested) alone.

    read_samples(wanted, plan=, store=, owned=)  raw members, in the plan's order (see its docstring)
    decode_samples(raw)                   -> numpy sample dicts (schema.decode + JPEG decode, never unpickles)
    augment_samples(decoded, ...)         -> flip / colour jitter (or images_aug = images)
    batch_samples(decoded, ...)           -> collated torch batches
    decode_batches(raw, ...)              -> the three above fused (``decode.decode_batch``; make_loader's path)

``StreamingDataset`` chains them with ``webdataset.DataPipeline``; the first stage asks
``torch.utils.data.get_worker_info()`` which blocks of the rank stream this worker yields and which
shards it owns (``EpochPlan.owned_shards``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import webdataset as wds
from torch.utils.data import get_worker_info

from dynamo_depth.data.augment import augment_sample
from dynamo_depth.data.collate import collate_batch
from dynamo_depth.data.decode import decode_batch, decode_jpeg, decode_sample
from dynamo_depth.data.plan import EpochPlan, WantedSample
from dynamo_depth.data.sources import ShardStore, sample_from_span

__all__ = ["StreamingDataset", "augment_samples", "batch_samples", "decode_batches", "decode_jpeg", "decode_sample",
           "decode_samples", "read_samples"]

READ_AHEAD = 16  # wanted samples looked at when gathering ranged reads (consecutive spans become one read)


def _stream_wanted(wanted: Sequence[WantedSample], plan: EpochPlan,
                   store: ShardStore) -> Iterator[tuple[tuple[int, int], dict[str, bytes]]]:
    """``((shard, ordinal), members)`` of the wanted samples, shards read whole in plan order."""
    by_shard: dict[int, set[int]] = {}
    for w in wanted:
        by_shard.setdefault(w.shard, set()).add(w.ordinal)
    for shard in sorted(by_shard):  # shards are stored in read (source) order
        entry = plan.shards[shard]
        ordinals = sorted(by_shard[shard])
        for ordinal, (key, members) in zip(ordinals, store.samples(entry, wanted=by_shard[shard]), strict=True):
            yield (shard, ordinal), {"__key__": key, "__shard__": entry.name, **members}


def _coalesce(ordinals: list[int], spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Sorted ordinals cut into runs whose spans touch end to start (each run is one ranged read)."""
    runs: list[list[int]] = []
    for ordinal in sorted(set(ordinals)):
        if runs and spans[runs[-1][-1]][0] + spans[runs[-1][-1]][1] == spans[ordinal][0]:
            runs[-1].append(ordinal)
        else:
            runs.append([ordinal])
    return runs


def _range_read(group: Sequence[WantedSample], plan: EpochPlan,
                store: ShardStore) -> dict[tuple[int, int], dict[str, Any]]:
    """The samples of ``group`` by ranged reads of their manifest spans, one read per run of touching spans."""
    by_shard: dict[int, list[int]] = {}
    for w in group:
        by_shard.setdefault(w.shard, []).append(w.ordinal)
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for shard, ordinals in by_shard.items():
        entry = plan.shards[shard]
        spans = entry.spans or ()
        for run in _coalesce(ordinals, spans):
            start = spans[run[0]][0]
            data = store.read_range(entry, offset=start, length=spans[run[-1]][0] + spans[run[-1]][1] - start)
            view = memoryview(data)
            for ordinal in run:
                offset, length = spans[ordinal]
                members = sample_from_span(entry, ordinal, view[offset - start:offset - start + length],
                                           base_url=store.base_url)
                out[(shard, ordinal)] = {"__key__": entry.keys[ordinal], "__shard__": entry.name, **members}
    return out


def read_samples(wanted: Sequence[WantedSample], *, plan: EpochPlan, store: ShardStore,
                 owned: Collection[int] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the raw samples ``wanted`` (member name -> bytes, plus ``__key__``, ``__shard__``) in that order.

    ``owned`` shards (default: every shard of ``wanted``) and shards without manifest spans are
    streamed front to back (``ShardStore.samples``); samples read ahead of their turn wait in a
    buffer (at most one shuffle window). The wanted samples of the other shards are range-read from
    their spans, up to ``READ_AHEAD`` wanted samples at a time, touching spans merged into one read.
    Either way, with per-sample digests (manifest version 2) each sample's bytes are checked before
    it is parsed (``SampleIntegrityError`` naming key, shard, byte offset) and samples not wanted
    are never checked; without them (version 1) each span must parse as exactly its manifest key and
    an owner checks its whole shard's sha256 once read to the end.
    """
    streamed = {w.shard for w in wanted} if owned is None else set(owned)
    streamed |= {w.shard for w in wanted if plan.shards[w.shard].spans is None}
    stream = _stream_wanted([w for w in wanted if w.shard in streamed], plan, store)
    buffer: dict[tuple[int, int], dict[str, Any]] = {}
    for i, w in enumerate(wanted):
        if w.shard not in streamed and (w.shard, w.ordinal) not in buffer:
            ahead = [v for v in wanted[i:i + READ_AHEAD] if v.shard not in streamed and (v.shard, v.ordinal) not in buffer]
            buffer.update(_range_read(ahead, plan, store))
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


def decode_batches(raws: Iterable[dict[str, Any]], *, batch_size: int, scales: int, seed: int, epoch: int,
                   augment: bool) -> Iterator[dict[str, Any]]:
    """Decode, augment and collate consecutive groups of ``batch_size`` raw samples (the last may be smaller)."""
    group: list[dict[str, Any]] = []
    for raw in raws:
        group.append(raw)
        if len(group) == batch_size:
            yield decode_batch(group, scales=scales, seed=seed, epoch=epoch, augment=augment)
            group = []
    if group:
        yield decode_batch(group, scales=scales, seed=seed, epoch=epoch, augment=augment)


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
        if info is not None:
            import cv2

            cv2.setNumThreads(1)  # parallelism comes from the DataLoader workers
        split = {"start": self.start, "block": self.block, "worker": worker, "num_workers": num_workers}
        return read_samples(self.plan.wanted(**split), plan=self.plan, store=self.store,
                            owned=self.plan.owned_shards(**split))

    def __len__(self) -> int:
        """Samples this rank still yields (from the resume position)."""
        return self.plan.rank_length - self.start
