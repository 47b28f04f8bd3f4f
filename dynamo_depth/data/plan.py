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

from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np

from dynamo_depth.data.sources import ShardEntry
from dynamo_depth.shards.index import SampleIndex

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


def _window_slice(lo: int, hi: int, *, total: int, window: int, seed: int, epoch: int) -> np.ndarray:
    """Positions ``[lo, hi)`` of ``window_permutation(total, ...)``, drawing only the windows they touch."""
    if window < 1:
        raise ValueError(f"shuffle_buffer {window!r} must be a positive integer")
    out = np.empty(max(0, hi - lo), dtype=np.int64)
    for k in range(lo // window, -(-hi // window) if hi > lo else lo // window):
        start, stop = k * window, min((k + 1) * window, total)
        rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, _WINDOW_STREAM, k]))
        block = start + rng.permutation(stop - start)
        a, b = max(start, lo), min(stop, hi)
        out[a - lo:b - lo] = block[a - start:b - start]
    return out


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """Sample order of one epoch for one rank (see the module docstring for the rules).

    Only the index (a file-backed ``SampleIndex`` pickles as its path) and the order's parameters are
    stored, so the plan pickled into a DataLoader worker holds tens of bytes whatever the number of
    samples; the arrays below are derived on first use in each process. A worker derives only its
    rank's share: ``positions`` draws only the windows asked for, ``source_facts`` maps source indices
    to (shard, ordinal) by binary search over per-shard counts (the full arrays are built only if read).

    Attributes:
        index: the ``SampleIndex`` of the dataset (manifest order).
        rank, world_size, seed, epoch, rank_length: the rank's stream is global positions
            ``[rank * rank_length, (rank + 1) * rank_length)``.
        shuffle, shuffle_buffer, include_edges: the order's options (``make_plan``).
        num_samples: N, the samples in the plan (edge samples left out unless ``include_edges``).
        shards: the shard entries in read order (already permuted).
        shard_of_source, ordinal_of_source: (N,) int64 shard index (into ``shards``) and ordinal per source index.
        source_of_position: (N,) int64 global position -> source index.
    """

    index: SampleIndex
    rank: int
    world_size: int
    seed: int
    epoch: int
    rank_length: int
    shuffle: bool
    shuffle_buffer: int
    include_edges: bool
    num_samples: int

    def __getstate__(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # not the derived arrays

    @cached_property
    def shard_order(self) -> np.ndarray:
        """(S,) int64: manifest shard index of each entry of ``shards``."""
        count = self.index.num_shards
        return shard_permutation(count, seed=self.seed, epoch=self.epoch) if self.shuffle else np.arange(count)

    @cached_property
    def shards(self) -> tuple[ShardEntry, ...]:
        return tuple(self.index.entry(int(i)) for i in self.shard_order)

    @cached_property
    def _kept(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(first sample of each entry of ``shards``, (S + 1,) kept samples before each, and the (N + 1,)
        running count of kept samples in manifest order, None when every sample is kept)."""
        start = self.index.arrays["shard_start"]
        keep = self.index.keep_mask(include_edges=self.include_edges)
        running = None if keep is None else np.concatenate([np.zeros(1, np.int64), np.cumsum(keep, dtype=np.int64)])
        counts = np.diff(start if running is None else running[start])[self.shard_order]
        before = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=before[1:])
        return start[:-1][self.shard_order], before, running

    def source_facts(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index into ``shards``, ordinal in that shard) of each source index in ``sources``."""
        first, before, running = self._kept
        shard = np.searchsorted(before, sources, side="right") - 1
        kept = sources - before[shard]  # the how-manieth kept sample of its shard
        if running is None:
            return shard, kept
        sample = np.searchsorted(running, running[first[shard]] + kept + 1, side="left") - 1
        return shard, sample - first[shard]

    @cached_property
    def _all_facts(self) -> tuple[np.ndarray, np.ndarray]:
        return self.source_facts(np.arange(self.num_samples, dtype=np.int64))

    @property
    def shard_of_source(self) -> np.ndarray:
        return self._all_facts[0]

    @property
    def ordinal_of_source(self) -> np.ndarray:
        return self._all_facts[1]

    def positions(self, lo: int, hi: int) -> np.ndarray:
        """``source_of_position[lo:hi]``, computed for those positions only."""
        if not self.shuffle:
            return np.arange(lo, hi, dtype=np.int64)
        return _window_slice(lo, hi, total=self.num_samples, window=self.shuffle_buffer, seed=self.seed,
                             epoch=self.epoch)

    @cached_property
    def source_of_position(self) -> np.ndarray:
        return self.positions(0, self.num_samples)

    @cached_property
    def _rank_sources(self) -> np.ndarray:
        first = self.rank * self.rank_length
        return self.positions(first, first + self.rank_length)

    def key_of_source(self, source: int) -> str:
        shard, ordinal = self.source_facts(np.array([source], dtype=np.int64))
        return self.shards[int(shard[0])].keys[int(ordinal[0])]

    def _keys(self, sources: np.ndarray) -> list[str]:
        shards, ordinals = self.source_facts(sources)
        return [self.shards[h].keys[o] for h, o in zip(shards.tolist(), ordinals.tolist(), strict=True)]

    def global_keys(self) -> list[str]:
        """All keys in global order (all ranks, then the dropped remainder)."""
        return self._keys(self.source_of_position)

    def rank_keys(self, rank: int | None = None) -> list[str]:
        """Keys of ``rank``'s stream (default: this plan's rank), in yield order."""
        r = self.rank if rank is None else rank
        first = r * self.rank_length
        return self._keys(self._rank_sources if r == self.rank else self.positions(first, first + self.rank_length))

    @property
    def dropped_keys(self) -> list[str]:
        """Keys no rank yields this epoch (the last ``N % world_size`` positions of the global order)."""
        return self._keys(self.positions(self.world_size * self.rank_length, self.num_samples))

    def wanted(self, *, start: int, block: int, worker: int, num_workers: int) -> list[WantedSample]:
        """The samples ``worker`` yields, in yield order, for a stream resumed at position ``start``."""
        positions = worker_positions(self.rank_length, start=start, block=block, worker=worker,
                                     num_workers=num_workers)
        sources = self._rank_sources[np.asarray(positions, dtype=np.int64)]
        shards, ordinals = self.source_facts(sources)
        return [WantedSample(s, h, o) for s, h, o in zip(sources.tolist(), shards.tolist(), ordinals.tolist(),
                                                           strict=True)]

    def owned_shards(self, *, start: int, block: int, worker: int, num_workers: int) -> frozenset[int]:
        """Shard indices (into ``shards``) owned by ``worker`` (rule 5), for a stream resumed at ``start``."""
        worker_positions(0, start=0, block=block, worker=worker, num_workers=num_workers)  # checks the split
        shards, first_index = np.unique(self.source_facts(self._rank_sources[start:])[0], return_index=True)
        owners = (first_index // block) % num_workers
        return frozenset(int(s) for s in shards[owners == worker])


def make_plan(entries: tuple[ShardEntry, ...] | SampleIndex, *, rank: int, world_size: int, seed: int, epoch: int,
              shuffle: bool, shuffle_buffer: int, include_edges: bool = False) -> EpochPlan:
    """Build the ``EpochPlan`` of ``rank`` (``ValueError`` on bad ranks or fewer samples than ranks).

    ``entries``: the dataset's ``SampleIndex`` (what the loader passes), or shard entries (indexed in
    memory here). Edge samples (``ShardEntry.edges``) are left out unless ``include_edges`` (rule 0)."""
    for name, value in (("rank", rank), ("world_size", world_size), ("seed", seed), ("epoch", epoch)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} {value!r} must be a non-negative integer")
    if world_size < 1 or rank >= world_size:
        raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
    index = entries if isinstance(entries, SampleIndex) else SampleIndex.from_entries(entries)
    keep = index.keep_mask(include_edges=include_edges)
    total = index.num_samples if keep is None else int(keep.sum())
    if total < world_size:
        edges = "" if include_edges else " (edge samples left out: include_edges=True keeps them)"
        raise ValueError(f"{total} samples{edges} cannot give every one of {world_size} ranks a sample")
    if shuffle and shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer {shuffle_buffer!r} must be a positive integer")
    return EpochPlan(index=index, rank=int(rank), world_size=int(world_size), seed=int(seed), epoch=int(epoch),
                     rank_length=total // world_size, shuffle=bool(shuffle), shuffle_buffer=int(shuffle_buffer),
                     include_edges=bool(include_edges), num_samples=total)
