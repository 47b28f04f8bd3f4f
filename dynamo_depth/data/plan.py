"""The epoch plan: which sample every rank and DataLoader worker yields, and in which order.

The plan is a pure function of the shard index (manifest), ``seed``, ``epoch``, ``world_size``,
``shuffle_buffer`` and ``include_edges``; it never depends on the number of DataLoader workers. Rules:

0. Samples: every sample of the index, except edge samples (manifest ``"edge": true``: split-file builds
   whose missing neighbour is the target itself) unless ``include_edges``. They are left out HERE,
   before the rank cut, so every rank still gets the same number of samples (a filter after the cut
   would give ranks unequal batch counts and hang DDP). The "source" indices below count kept samples.

1. Source order: the shards in a seeded permutation of (seed, epoch), each shard's samples in file
   order (with ``shuffle=False``: manifest order).
2. Global order: the source order cut into consecutive windows of ``shuffle_buffer`` samples, each
   window permuted by its own seeded generator (seed, epoch, window index). A sample therefore moves
   at most one window from its source position, so a reader streams shards front to back and holds
   at most one window of samples.
3. Rank streams: ``L = N // world_size`` samples each; rank ``r`` takes global positions
   ``[r * L, (r + 1) * L)``. The remainder ``N - world_size * L`` (the LAST positions of the global
   order) is dropped for this epoch and reported by ``EpochPlan.dropped_keys`` (a different set each
   epoch). Every rank has the same number of samples, hence the same number of batches.
4. Workers: a rank stream is cut into blocks of ``block`` samples (the batch size in ``make_loader``),
   starting at the resume position; worker ``w`` of ``n`` takes blocks ``w, w + n, w + 2n, ...``.
   PyTorch's DataLoader returns worker outputs round-robin, so the loader's output order equals the
   rank stream whatever ``num_workers`` is.
5. Shard owners: of the shards a rank reads from its resume position on, each is OWNED by the worker
   of the block holding that shard's first sample in the rank stream (``EpochPlan.owned_shards``).
   The owner streams the whole shard and checks it against the manifest; the other workers
   range-read only their own samples. With one worker, it owns every shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamo_depth.data.sources import ShardEntry

__all__ = ["EpochPlan", "WantedSample", "make_plan", "shard_permutation", "window_permutation", "worker_positions"]

_SHARD_STREAM = 0
_WINDOW_STREAM = 1


@dataclass(frozen=True)
class WantedSample:
    """One sample a worker must yield: its global source index, shard (index in the plan) and ordinal."""

    source: int
    shard: int
    ordinal: int


def shard_permutation(num_shards: int, *, seed: int, epoch: int) -> np.ndarray:
    """(num_shards,) int64: shard indices in the order read during ``epoch``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, _SHARD_STREAM]))
    return rng.permutation(num_shards).astype(np.int64)


def window_permutation(num_samples: int, *, window: int, seed: int, epoch: int) -> np.ndarray:
    """(num_samples,) int64 ``p -> source index``: each window of ``window`` samples permuted alone."""
    if window < 1:
        raise ValueError(f"shuffle_buffer {window!r} must be a positive integer")
    order = np.arange(num_samples, dtype=np.int64)
    for k, start in enumerate(range(0, num_samples, window)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, _WINDOW_STREAM, k]))
        stop = min(start + window, num_samples)
        order[start:stop] = start + rng.permutation(stop - start)
    return order


def worker_positions(length: int, *, start: int, block: int, worker: int, num_workers: int) -> list[int]:
    """Positions in a rank stream of ``length`` samples read by ``worker``: blocks round-robin from ``start``."""
    if block < 1 or num_workers < 1 or not 0 <= worker < num_workers:
        raise ValueError(f"bad worker split: block={block}, worker={worker}, num_workers={num_workers}")
    positions: list[int] = []
    for j, block_start in enumerate(range(start, length, block)):
        if j % num_workers == worker:
            positions.extend(range(block_start, min(block_start + block, length)))
    return positions


@dataclass(frozen=True, eq=False)
class EpochPlan:
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
