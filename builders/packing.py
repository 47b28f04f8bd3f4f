"""The pack step of a build and its staging area: staged units -> final shards, in parallel tasks.

* ``STAGING`` / ``staging_name`` / ``staged_tar``: where units are staged (``OUT/_staging/<unit>-000000.tar``
  + sidecar ``<unit>.json``, which also lists the tar's sample spans: key, offset, length, sha256, edge).
* ``plan_shards``: the final shard layout from the sidecars alone (no sample is read): samples in unit
  order, a shard closed when the next sample would pass ``max_count`` samples or ``max_bytes`` bytes
  (``ShardWriter``'s greedy rule, so the layout and the bytes are those of streaming every sample through
  one ``ShardWriter``).
* ``pack_shard``: write one planned shard from byte ranges of the staged tars (each sample's sha256 is
  checked against its sidecar), atomically (``.tmp``, rename / upload). Shards are independent: the
  runner packs them in parallel tasks (process pool or Ray), each reading from and writing to storage (local or S3) itself,
  so the output never passes through the driver.
* ``_pack``: plan, skip the shards already committed in ``_staging/pack.json`` (a killed pack continues
  where it stopped), pack the others with the given task runner, record each committed shard.
* ``_layout_matches``, ``_remove_stale_shards``, ``_remove_staging``: shard layout check and clean-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dynamo_depth.shards import storage
from dynamo_depth.shards.manifest import UnitRecord
from dynamo_depth.shards.records import BLOCK, SampleSpan, ShardRecord, shard_name
from dynamo_depth.shards.writer import write_shard

if TYPE_CHECKING:
    from builders.spec import BuilderSpec

STAGING = "_staging"
PACK_STATE = "pack.json"
END_OF_ARCHIVE = 2 * BLOCK


def staging_name(unit_name: str) -> str:
    """File-name-safe form of a unit name (``drive/image_02`` -> ``drive-image_02``)."""
    return re.sub(r"[^A-Za-z0-9_\-]", "-", unit_name)


def staged_tar(out_url: str, unit_name: str) -> str:
    """URL of a unit's staging tar."""
    return storage.join(storage.join(out_url, STAGING), f"{staging_name(unit_name)}-000000.tar")


@dataclass(frozen=True)
class StagedUnit:
    """A committed unit: its record and the spans of its samples in its staging tar (in order)."""

    record: UnitRecord
    spans: tuple[SampleSpan, ...]


@dataclass(frozen=True)
class PlannedShard:
    """One final shard: its name and, in order, (staging tar URL, span of the sample in that tar)."""

    name: str
    pieces: tuple[tuple[str, SampleSpan], ...]

    @property
    def bytes(self) -> int:
        return sum(span.length for _, span in self.pieces) + END_OF_ARCHIVE

    def record(self, sha256: str) -> ShardRecord:
        """The manifest record of this shard once written (``sha256``: of the whole shard)."""
        spans, offset = [], 0
        for _, span in self.pieces:
            spans.append(SampleSpan(key=span.key, offset=offset, length=span.length, sha256=span.sha256,
                                    edge=span.edge))
            offset += span.length
        return ShardRecord(name=self.name, bytes=self.bytes, sha256=sha256, count=len(spans),
                           first_key=spans[0].key, last_key=spans[-1].key, samples=tuple(spans))


def plan_shards(units: Sequence[tuple[str, Sequence[SampleSpan]]], *, prefix: str, max_count: int,
                max_bytes: int) -> list[PlannedShard]:
    """The shards ``ShardWriter(prefix=prefix, max_count=..., max_bytes=...)`` writes for these samples.

    ``units``: (staging tar URL, its sample spans) in pack order. ``ValueError`` on a key seen twice.
    """
    shards: list[PlannedShard] = []
    current: list[tuple[str, SampleSpan]] = []
    size, keys = 0, set()
    for source, spans in units:
        for span in spans:
            if span.key in keys:
                raise ValueError(f"sample key {span.key!r} staged twice ({source})")
            keys.add(span.key)
            if current and (len(current) >= max_count or size + span.length + END_OF_ARCHIVE > max_bytes):
                shards.append(PlannedShard(name=shard_name(prefix, len(shards)), pieces=tuple(current)))
                current, size = [], 0
            current.append((source, span))
            size += span.length
    if current:
        shards.append(PlannedShard(name=shard_name(prefix, len(shards)), pieces=tuple(current)))
    return shards


def _runs(pieces: Sequence[tuple[str, SampleSpan]]) -> Iterator[tuple[str, list[SampleSpan]]]:
    """Consecutive pieces from the same staging tar, contiguous in it: one open (one ranged read) each."""
    run: list[SampleSpan] = []
    source = None
    for url, span in pieces:
        if run and (url != source or span.offset != run[-1].offset + run[-1].length):
            yield source, run  # type: ignore[misc]
            run = []
        source = url
        run.append(span)
    if run:
        yield source, run  # type: ignore[misc]


def _staged_samples(shard: PlannedShard) -> Iterator[tuple[str, bytes, bool]]:
    for url, spans in _runs(shard.pieces):
        with storage.open_read(url) as f:
            f.seek(spans[0].offset)
            for span in spans:
                data = f.read(span.length)
                if len(data) != span.length or hashlib.sha256(data).hexdigest() != span.sha256:
                    raise ValueError(f"{url}: sample {span.key!r} at byte {span.offset} differs from its sidecar "
                                     "(staging changed or truncated); remove the unit's sidecar to rebuild it")
                yield span.key, data, span.edge


def pack_shard(shard: PlannedShard, out_url: str) -> ShardRecord:
    """Write one planned shard under ``out_url`` from the staging tars; its manifest record."""
    record = write_shard(out_url, shard.name, _staged_samples(shard))
    planned = shard.record(record.sha256)
    if record != planned:  # internal invariant: the spans come from the same sidecars
        raise ValueError(f"{shard.name}: written record differs from the plan")
    return record


PackRunner = Callable[[Sequence[PlannedShard]], Iterable[ShardRecord]]


def pack_here(out_url: str) -> PackRunner:
    """Pack shards one after the other in this process."""
    return lambda shards: (pack_shard(shard, out_url) for shard in shards)


def _pack(spec: BuilderSpec, staged: Sequence[StagedUnit], out_url: str, *, split: str, digest: str,
          max_count: int, max_bytes: int, runner: PackRunner | None = None,
          on_shard: Callable[[ShardRecord], Any] | None = None) -> list[ShardRecord]:
    """Plan the shards, pack those ``pack.json`` does not hold (``runner``: in-process by default)."""
    state_url = storage.join(storage.join(out_url, STAGING), PACK_STATE)
    plan = {"digest": digest, "units": [s.record.name for s in staged], "max_count": max_count,
            "max_bytes": max_bytes}
    shards = plan_shards([(staged_tar(out_url, s.record.name), s.spans) for s in staged if s.record.samples],
                         prefix=f"{spec.dataset}-{split}", max_count=max_count, max_bytes=max_bytes)
    done = _load_pack_state(state_url, plan, out_url, shards)

    def commit(record: ShardRecord) -> None:
        done[record.name] = record
        entries = [{"name": r.name, "bytes": r.bytes, "sha256": r.sha256} for r in sorted(done.values(),
                                                                                         key=lambda r: r.name)]
        storage.write_bytes_atomic(state_url, json.dumps({"plan": plan, "shards": entries}, sort_keys=True).encode())
        if on_shard is not None:
            on_shard(record)

    todo = [shard for shard in shards if shard.name not in done]
    for record in (runner or pack_here(out_url))(todo):
        commit(record)
    return [done[shard.name] for shard in shards]


def _load_pack_state(state_url: str, plan: Mapping[str, Any], out_url: str,
                     shards: Sequence[PlannedShard]) -> dict[str, ShardRecord]:
    """Shards of ``pack.json`` for this plan that are still there, whole (name, size and planned bytes)."""
    if not storage.exists(state_url):
        return {}
    try:
        state = json.loads(storage.read_bytes(state_url))
        if state["plan"] != plan:
            return {}
        committed = {s["name"]: (s["bytes"], s["sha256"]) for s in state["shards"]}
    except (ValueError, KeyError, TypeError):
        return {}
    done = {}
    for shard in shards:
        size, sha256 = committed.get(shard.name, (None, None))
        if size != shard.bytes or not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256)):
            continue
        url = storage.join(out_url, shard.name)
        if storage.exists(url) and storage.size(url) == shard.bytes:
            done[shard.name] = shard.record(sha256)
    return done


def _remove_staging(out_url: str) -> None:
    staging = storage.join(out_url, STAGING)
    for name in storage.listdir(staging):
        storage.remove(storage.join(staging, name))
    if storage.is_local(staging) and os.path.isdir(staging):
        os.rmdir(staging)


def _layout_matches(shards: tuple[ShardRecord, ...], max_count: int, max_bytes: int) -> bool:
    """Whether packing with ``max_count`` / ``max_bytes`` gives exactly this shard layout.

    The pack is greedy: a shard is closed when the next sample would pass either limit.
    """
    end_of_archive = 1024
    for shard, following in zip(shards, (*shards[1:], None), strict=True):
        if shard.count > max_count or (shard.count > 1 and shard.bytes > max_bytes):
            return False
        if following is not None and shard.count < max_count and \
                shard.bytes + following.samples[0].length <= max_bytes:
            return False  # the next sample would have fitted here
    return all(s.bytes - sum(x.length for x in s.samples) == end_of_archive for s in shards)


def _remove_stale_shards(out_url: str, dataset: str, split: str, keep: set[str]) -> None:
    """Remove final shards of an earlier, larger build of this dataset/split (never other files)."""
    pattern = re.compile(rf"^{re.escape(dataset)}-{re.escape(split)}-\d{{6}}\.tar$")
    for name in storage.listdir(out_url):
        if pattern.match(name) and name not in keep:
            storage.remove(storage.join(out_url, name))
