"""The loader's epoch plan and index as they were before the compact index (#27), kept as a reference.

``reference_entries(manifest)`` builds the shard entries the old ``load_index`` built (tuples of keys,
spans, digests, edge flags per shard); ``make_plan`` / ``EpochPlan`` below are the old plan, verbatim
but for the names, so tests can require the new plan to give the same keys in the same order and
``bench/scale_loader.py`` can measure the old path in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamo_depth.data.plan import WantedSample, shard_permutation, window_permutation, worker_positions
from dynamo_depth.data.sources import ShardEntry
from dynamo_depth.shards.manifest import Manifest


def reference_entries(manifest: Manifest) -> tuple[ShardEntry, ...]:
    """The old ``load_index`` entries of a manifest (tuples throughout)."""
    def digests(record):  # type: ignore[no-untyped-def]
        found = tuple(span.sha256 for span in record.samples)
        return None if any(d is None for d in found) else found

    return tuple(ShardEntry(s.name, s.bytes, s.sha256, tuple(sp.key for sp in s.samples),
                            tuple((sp.offset, sp.length) for sp in s.samples), digests(s),
                            tuple(sp.edge for sp in s.samples) if any(sp.edge for sp in s.samples) else None)
                 for s in manifest.shards)


@dataclass(frozen=True, eq=False)
class EpochPlan:  # the old plan
    """Sample order of one epoch for one rank (see the module docstring for the rules).

    Attributes:
        shards: the shard entries in read order (already permuted).
        shard_of_source, ordinal_of_source: (N,) shard index (into ``shards``) and ordinal per source index.
        source_of_position: (N,) global position -> source index.
        rank, world_size, seed, epoch, rank_length: the rank's stream is global positions
            ``[rank * rank_length, (rank + 1) * rank_length)``.
    """

    shards: tuple[ShardEntry, ...]
    shard_of_source: np.ndarray
    ordinal_of_source: np.ndarray
    source_of_position: np.ndarray
    rank: int
    world_size: int
    seed: int
    epoch: int
    rank_length: int

    @property
    def num_samples(self) -> int:
        return int(self.source_of_position.shape[0])

    def key_of_source(self, source: int) -> str:
        shard = self.shards[int(self.shard_of_source[source])]
        return shard.keys[int(self.ordinal_of_source[source])]

    def global_keys(self) -> list[str]:
        """All keys in global order (all ranks, then the dropped remainder)."""
        return [self.key_of_source(int(s)) for s in self.source_of_position]

    def rank_keys(self, rank: int | None = None) -> list[str]:
        """Keys of ``rank``'s stream (default: this plan's rank), in yield order."""
        r = self.rank if rank is None else rank
        first = r * self.rank_length
        return [self.key_of_source(int(s)) for s in self.source_of_position[first:first + self.rank_length]]

    @property
    def dropped_keys(self) -> list[str]:
        """Keys no rank yields this epoch (the last ``N % world_size`` positions of the global order)."""
        tail = self.source_of_position[self.world_size * self.rank_length:]
        return [self.key_of_source(int(s)) for s in tail]

    def wanted(self, *, start: int, block: int, worker: int, num_workers: int) -> list[WantedSample]:
        """The samples ``worker`` yields, in yield order, for a stream resumed at position ``start``."""
        first = self.rank * self.rank_length
        positions = worker_positions(self.rank_length, start=start, block=block, worker=worker,
                                     num_workers=num_workers)
        out = []
        for p in positions:
            source = int(self.source_of_position[first + p])
            out.append(WantedSample(source, int(self.shard_of_source[source]), int(self.ordinal_of_source[source])))
        return out


    def owned_shards(self, *, start: int, block: int, worker: int, num_workers: int) -> frozenset[int]:
        """Shard indices (into ``shards``) owned by ``worker`` (rule 5), for a stream resumed at ``start``."""
        worker_positions(0, start=0, block=block, worker=worker, num_workers=num_workers)  # checks the split
        first = self.rank * self.rank_length
        sources = self.source_of_position[first + start:first + self.rank_length]
        shards, first_index = np.unique(self.shard_of_source[sources], return_index=True)
        owners = (first_index // block) % num_workers
        return frozenset(int(s) for s in shards[owners == worker])


def _kept_ordinals(entry: ShardEntry, include_edges: bool) -> np.ndarray:
    """Ordinals of ``entry``'s samples in the plan (rule 0): all, or those not flagged as edge samples."""
    if include_edges or entry.edges is None:
        return np.arange(len(entry.keys), dtype=np.int64)
    return np.flatnonzero(~np.asarray(entry.edges, dtype=bool)).astype(np.int64)


def make_plan(entries: tuple[ShardEntry, ...], *, rank: int, world_size: int, seed: int, epoch: int,
              shuffle: bool, shuffle_buffer: int, include_edges: bool = False) -> EpochPlan:
    """Build the ``EpochPlan`` of ``rank`` (``ValueError`` on bad ranks or fewer samples than ranks).

    Edge samples (``ShardEntry.edges``) are left out unless ``include_edges`` (rule 0)."""
    for name, value in (("rank", rank), ("world_size", world_size), ("seed", seed), ("epoch", epoch)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} {value!r} must be a non-negative integer")
    if world_size < 1 or rank >= world_size:
        raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
    order = shard_permutation(len(entries), seed=seed, epoch=epoch) if shuffle else np.arange(len(entries))
    shards = tuple(entries[int(i)] for i in order)
    kept = [_kept_ordinals(s, include_edges) for s in shards]
    counts = np.array([len(k) for k in kept], dtype=np.int64)
    total = int(counts.sum())
    if total < world_size:
        edges = "" if include_edges else " (edge samples left out: include_edges=True keeps them)"
        raise ValueError(f"{total} samples{edges} cannot give every one of {world_size} ranks a sample")
    shard_of_source = np.repeat(np.arange(len(shards), dtype=np.int64), counts)
    ordinal_of_source = np.concatenate([np.zeros(0, np.int64), *kept])
    if shuffle:
        positions = window_permutation(total, window=shuffle_buffer, seed=seed, epoch=epoch)
    else:
        positions = np.arange(total, dtype=np.int64)
    return EpochPlan(shards=shards, shard_of_source=shard_of_source, ordinal_of_source=ordinal_of_source,
                     source_of_position=positions, rank=rank, world_size=world_size, seed=seed, epoch=epoch,
                     rank_length=total // world_size)
