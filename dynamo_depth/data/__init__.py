"""Streaming loader: ``make_dataset()`` (samples) and ``make_loader()`` (batches), local disk or S3.

Order and split (details in ``dynamo_depth.data.plan``): the epoch's global sample order is a seeded
shard permutation of (seed, epoch) followed by a seeded shuffle inside consecutive windows of
``shuffle_buffer`` samples (edge samples of split-file builds are left out first, unless
``include_edges``). Every rank gets ``N // world_size`` consecutive samples of that order;
the REMAINDER IS DROPPED (the last ``N % world_size`` samples of the global order; listed by
``loader.plan.dropped_keys``, different each epoch). DataLoader workers take the rank stream's
batches round-robin, so batches come out in the same order for any ``num_workers`` and a
``state()`` (epoch, samples consumed) resumes exactly at the next batch, with any worker count.

Reading and integrity (rule 5 of ``plan``): every shard a rank reads is OWNED by one of its DataLoader
workers, the worker of the block holding the shard's first sample in the rank stream (from the
resume position). The owner streams the shard front to back; the other workers read only their own
samples, by ranged reads of the manifest's sample spans (touching spans of one shard merged into one
read). So each rank reads about ``1 + (num_workers - 1) / num_workers`` times its bytes (it was
``num_workers`` times). Integrity, manifest version 2 (per-sample sha256): every worker hashes each
sample it yields, from the bytes it read, and checks it against the manifest BEFORE parsing it; a
mismatch raises ``SampleIntegrityError`` (a ``ShardIntegrityError``, a ``ValueError``) naming the
sample key, the shard and the byte offset, so no tensor of a bad sample is ever produced. Samples
this rank does not read are not checked: a bad sample outside the plan stops nobody (``verify``
reports it). An owner stops reading after its last sample, except while copying a remote shard into
the cache: then it reads to the end and keeps the copy only if the shard's sha256 matches.
Version 1 (no per-sample digests): each span must parse as exactly its manifest key, and the owner
checks size, keys and sha256 at the shard's end (``ShardIntegrityError`` names the shard), so a
corrupted sample may be yielded before its shard's end is reached. Folders without a manifest (no
spans, no hash) are streamed whole by every worker, unchecked. Transient errors are retried, resuming
at the byte offset. With ``cache_dir`` (remote data) owners keep verified copies (LRU,
``cache_bytes``) and the other workers range-read from a copy once it exists. Nothing read is ever
unpickled.

Index (``dynamo_depth.shards.index``): the manifest's samples as a few numpy arrays in one file, read
row by row where per sample (the manifest's sidecar ``manifest.index``, else a node-local cache keyed by the manifest's
sha256, written by the first process of the node that parses the manifest). The dataset pickled into each
DataLoader worker holds the index file's path and the plan's parameters only (a few KB whatever the
number of samples); each worker opens the same file and derives its own blocks.

Decoding (``make_loader``): ``decode.decode_batch`` decodes, augments and collates a batch in one
pass per image (uint8 mirror, table lookups, writes straight into the batch arrays); its batches
equal the per-sample stages ``decode_samples`` -> ``augment_samples`` -> ``batch_samples`` that
``make_dataset(decode=True)`` yields.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from dynamo_depth.data.augment import AugmentParams, augment_params, color_jitter, flip_sample
from dynamo_depth.data.cache import ShardCache
from dynamo_depth.data.collate import collate_batch, scaled_intrinsics
from dynamo_depth.data.pipeline import (
    StreamingDataset,
    augment_samples,
    decode_batches,
    decode_samples,
    read_samples,
)
from dynamo_depth.data.plan import EpochPlan, make_plan
from dynamo_depth.data.sources import RetryPolicy, SampleIntegrityError, ShardIntegrityError, ShardStore, open_index

__all__ = [
    "AugmentParams", "EpochPlan", "LoaderState", "RetryPolicy", "SampleIntegrityError", "ShardCache",
    "ShardIntegrityError",
    "StreamingDataset", "StreamingLoader", "augment_params", "collate_batch", "color_jitter", "flip_sample",
    "make_dataset", "make_loader", "read_samples", "scaled_intrinsics",
]

DEFAULT_SHUFFLE_BUFFER = 256
DEFAULT_CACHE_BYTES = 8 * 2**30
DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class LoaderState:
    """A resumable position: ``consumed`` samples of ``epoch`` already yielded by this rank.

    ``seed`` and ``world_size`` must match on resume (they define the order); the batch size and
    the number of workers may change.
    """

    epoch: int
    consumed: int
    seed: int
    world_size: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> LoaderState:
        fields = {"epoch", "consumed", "seed", "world_size"}
        if set(obj) != fields or not all(isinstance(obj[f], int) and obj[f] >= 0 for f in fields):
            raise ValueError(f"loader state {dict(obj)!r} must hold non-negative integers {sorted(fields)}")
        return cls(**{f: int(obj[f]) for f in fields})


def _resume_position(resume_from: LoaderState | Mapping[str, Any] | None, plan: EpochPlan) -> int:
    if resume_from is None:
        return 0
    state = resume_from if isinstance(resume_from, LoaderState) else LoaderState.from_dict(resume_from)
    for name in ("epoch", "seed", "world_size"):
        if getattr(state, name) != getattr(plan, name):
            raise ValueError(f"resume_from has {name}={getattr(state, name)} but the loader has "
                             f"{name}={getattr(plan, name)}; a state resumes only the same order")
    if state.consumed > plan.rank_length:
        raise ValueError(f"resume_from consumed {state.consumed} samples, the rank stream has {plan.rank_length}")
    return state.consumed


def _build(url: str, *, rank: int, world_size: int, seed: int, epoch: int, shuffle: bool, shuffle_buffer: int,
           cache_dir: str | os.PathLike[str] | None, cache_bytes: int, retry: RetryPolicy, include_edges: bool,
           ) -> tuple[EpochPlan, ShardStore]:
    base, index = open_index(url)  # file-backed: pickled into DataLoader workers as its path
    plan = make_plan(index, rank=rank, world_size=world_size, seed=seed, epoch=epoch, shuffle=shuffle,
                     shuffle_buffer=shuffle_buffer, include_edges=include_edges)
    cache = ShardCache(cache_dir, max_bytes=cache_bytes) if cache_dir is not None else None
    return plan, ShardStore(base, retry=retry, cache=cache)


def make_dataset(url: str, *, rank: int = 0, world_size: int = 1, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True, decode: bool = True, augment: bool = False,
                 resume_from: LoaderState | Mapping[str, Any] | None = None,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, block: int = 1,
                 cache_dir: str | os.PathLike[str] | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 retry: RetryPolicy = DEFAULT_RETRY, include_edges: bool = False) -> StreamingDataset:
    """An IterableDataset of this rank's samples for one epoch (each a dict with ``__key__``).

    Args:
        url: ``.../manifest.json`` or a shard folder; a local path or ``s3://bucket/prefix`` (any fsspec URL).
        decode: False yields raw members (name -> bytes); True yields numpy samples (see
            ``pipeline.decode_sample``), with ``images_aug`` and the augmentations when ``augment``.
        resume_from: a ``LoaderState`` (or its dict) to continue after ``consumed`` samples.
        block: samples per DataLoader-worker block; use ``DataLoader(ds, batch_size=None)``
            to keep the order independent of ``num_workers``.
        include_edges: keep edge samples (``meta.json`` ``extra["edge"]``, flagged per sample in the
            manifest by split-file builds); by default they are left out, before the rank cut.
    """
    plan, store = _build(url, rank=rank, world_size=world_size, seed=seed, epoch=epoch, shuffle=shuffle,
                         shuffle_buffer=shuffle_buffer, cache_dir=cache_dir, cache_bytes=cache_bytes, retry=retry,
                         include_edges=include_edges)
    stages: list[Any] = []
    if decode:
        stages = [decode_samples, partial(augment_samples, seed=seed, epoch=epoch, enabled=augment)]
    return StreamingDataset(plan=plan, store=store, start=_resume_position(resume_from, plan), block=block,
                            stages=stages)


def _identity(batch: Any) -> Any:
    return batch


class StreamingLoader:
    """A thin wrapper of a torch ``DataLoader`` of batches that knows its position (``state()``)."""

    def __init__(self, dataset: StreamingDataset, loader: DataLoader, *, batch_size: int) -> None:
        self.dataset, self.dataloader, self.batch_size = dataset, loader, batch_size
        self.consumed = dataset.start

    @property
    def plan(self) -> EpochPlan:
        return self.dataset.plan

    def __len__(self) -> int:
        """Batches one pass yields (the same on every rank)."""
        return math.ceil((self.plan.rank_length - self.dataset.start) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.consumed = self.dataset.start
        for batch in self.dataloader:
            self.consumed += len(batch["keys"])
            yield batch

    def state(self) -> LoaderState:
        """Where to resume: samples of this epoch this rank has handed out so far."""
        return LoaderState(epoch=self.plan.epoch, consumed=self.consumed, seed=self.plan.seed,
                           world_size=self.plan.world_size)


def _use_environment(environment: dict[str, str], worker_id: int) -> None:
    """DataLoader worker start: take the environment the loader was made in (as a fork would)."""
    os.environ.clear()
    os.environ.update(environment)


def make_loader(url: str, *, batch_size: int, num_workers: int, rank: int = 0, world_size: int = 1,
                seed: int = 0, epoch: int = 0, augment: bool = False, scales: int = 4,
                resume_from: LoaderState | Mapping[str, Any] | None = None, shuffle: bool = True,
                shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, cache_dir: str | os.PathLike[str] | None = None,
                cache_bytes: int = DEFAULT_CACHE_BYTES, retry: RetryPolicy = DEFAULT_RETRY,
                prefetch_factor: int | None = None, pin_memory: bool = False,
                include_edges: bool = False) -> StreamingLoader:
    """Batches of this rank's stream for one epoch (see ``collate.collate_batch`` for the keys).

    Every rank yields ``ceil((N // world_size) / batch_size)`` batches; only the last may be short.
    ``N`` counts edge samples only with ``include_edges`` (see ``make_dataset``).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r} must be a positive integer")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers {num_workers!r} must be a non-negative integer")
    if not isinstance(scales, int) or scales < 1:
        raise ValueError(f"scales {scales!r} must be a positive integer")
    dataset = make_dataset(url, rank=rank, world_size=world_size, seed=seed, epoch=epoch, shuffle=shuffle,
                           decode=False, resume_from=resume_from, shuffle_buffer=shuffle_buffer,
                           block=batch_size, cache_dir=cache_dir, cache_bytes=cache_bytes, retry=retry,
                           include_edges=include_edges)
    dataset.append(partial(decode_batches, batch_size=batch_size, scales=scales, seed=seed, epoch=epoch,
                           augment=augment))
    extra: dict[str, Any] = {"prefetch_factor": prefetch_factor} if num_workers > 0 and prefetch_factor else {}
    if num_workers > 0:
        # workers fork from a clean forkserver, never from the caller: forking a process that runs
        # other threads (S3 clients, servers, TensorBoard writers) can deadlock the child
        multiprocessing.set_forkserver_preload(["torch", "numpy", "cv2", "dynamo_depth.data"])
        extra["multiprocessing_context"] = "forkserver"
        # the forkserver keeps the environment of its start: hand workers the caller's (AWS_*...)
        extra["worker_init_fn"] = partial(_use_environment, dict(os.environ))
    # The DataLoader draws a base seed at every iter() from its generator; a private one keeps the global
    # torch RNG (stochastic depth, resumed from checkpoints) untouched. Nothing here uses worker seeds.
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity,
                        pin_memory=pin_memory, generator=torch.Generator().manual_seed(0), **extra)
    return StreamingLoader(dataset, loader, batch_size=batch_size)
