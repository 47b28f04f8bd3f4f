"""Integrity of the shard bytes the loader reads: the checks (the errors are in ``dynamo_depth.data.errors``).

* ``sample_from_span``: one sample from its span bytes, checked (length, sha256, exactly its members).
* ``_span_samples`` / ``_checked_samples``: check a shard streamed front to back (per sample with
  per-sample digests; else the whole shard at its end).

``dynamo_depth.data.sources`` uses them with ``ShardEntry`` (``dynamo_depth.shards.index``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Generator, Iterator

from dynamo_depth.data.errors import SampleIntegrityError, ShardIntegrityError
from dynamo_depth.data.reader import _HashingReader
from dynamo_depth.shards import reader as shards_mod
from dynamo_depth.shards.index import ShardEntry

_LOG = logging.getLogger("dynamo_depth.data.sources")  # the loader's logger, as before the split into modules


def sample_from_span(entry: ShardEntry, ordinal: int, data: bytes | memoryview, *, base_url: str) -> dict[str, bytes]:
    """Members of sample ``ordinal`` of ``entry`` from its span bytes, once they are checked against the
    manifest: the span's length, its sha256 (when the manifest has per-sample digests), and that it
    holds exactly that key's tar members. ``SampleIntegrityError`` names the key, shard and offset."""
    if entry.spans is None:
        raise ValueError(f"shard {entry.name} (in {base_url}): no sample spans in its index (a scanned folder)")
    offset, length = entry.spans[ordinal]
    key = entry.keys[ordinal]

    def fail(reason: str) -> SampleIntegrityError:
        return SampleIntegrityError(f"sample {key!r} (#{ordinal}) of shard {entry.name} (in {base_url}) at byte offset "
                                    f"{offset} ({length} bytes): {reason}", key=key, shard=entry.name, offset=offset)

    if len(data) != length:
        raise fail(f"the shard ends at byte {offset + len(data)}, inside the sample: the shard was truncated")
    if entry.digests is not None:
        got = shards_mod.span_sha256(data)
        if got != entry.digests[ordinal]:
            raise fail(f"sha256 {got} differs from the manifest's {entry.digests[ordinal]}: "
                       "the sample was altered or corrupted")
    try:
        return shards_mod.parse_sample_bytes(data, key=key, source=f"{base_url}/{entry.name}")
    except ValueError as exc:
        raise fail(f"its bytes differ from the manifest's span: {exc}") from exc


def _span_samples(reader: _HashingReader, entry: ShardEntry, base_url: str, *, wanted: Collection[int] | None,
                  whole: bool) -> Generator[tuple[str, dict[str, bytes]], None, bool]:
    """Samples of a shard with per-sample digests, each checked before it is parsed and yielded.

    Reads span by span (gaps between spans are read past). ``whole``: read to the end and check the
    shard's size and sha256 too, raising when ``wanted`` is None, else logging; returns whether the
    whole shard matched (False when not ``whole``).
    """
    spans = entry.spans or ()
    last = len(spans) - 1 if whole or wanted is None else max(wanted, default=-1)
    for ordinal in range(last + 1):
        offset, length = spans[ordinal]
        if offset > reader.count:
            reader.read_exact(offset - reader.count)  # bytes between spans (none in shards ShardWriter writes)
        data = reader.read_exact(length) if reader.count == offset else b""  # else: the shard ended before
        if wanted is None or ordinal in wanted:  # a sample cut short elsewhere: the whole-shard check reports it
            yield entry.keys[ordinal], sample_from_span(entry, ordinal, data, base_url=base_url)
    if not whole:
        return False
    reader.drain()
    where = f"shard {entry.name} (in {base_url})"
    problem = None
    if reader.count != entry.bytes:
        problem = f"{where}: {reader.count} bytes, the manifest says {entry.bytes}"
    elif entry.sha256 is not None and reader.digest.hexdigest() != entry.sha256:
        problem = (f"{where}: sha256 {reader.digest.hexdigest()} differs from the manifest's {entry.sha256}: "
                   "the shard was altered or corrupted")
    if problem is None:
        return True
    if wanted is None:
        raise ShardIntegrityError(problem)
    _LOG.warning("%s outside the samples read here (those were checked); not cached", problem)
    return False


def _checked_samples(reader: _HashingReader, entry: ShardEntry, base_url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    where = f"shard {entry.name} (in {base_url})"
    ordinal = 0
    try:
        for key, members in shards_mod.iter_shard(reader):  # type: ignore[arg-type]
            if ordinal >= len(entry.keys) or key != entry.keys[ordinal]:
                expected = entry.keys[ordinal] if ordinal < len(entry.keys) else "<end of shard>"
                raise ShardIntegrityError(f"{where}: sample #{ordinal} is {key!r}, the manifest says {expected!r}")
            ordinal += 1
            yield key, members
        reader.drain()
    except ShardIntegrityError:
        raise
    except ValueError as exc:
        raise ShardIntegrityError(f"{where}: unreadable tar ({exc}); the shard differs from its manifest entry") from exc
    if ordinal != len(entry.keys):
        raise ShardIntegrityError(f"{where}: {ordinal} samples, the manifest says {len(entry.keys)}")
    if reader.count != entry.bytes:
        raise ShardIntegrityError(f"{where}: {reader.count} bytes, the manifest says {entry.bytes}")
    if entry.sha256 is not None and reader.digest.hexdigest() != entry.sha256:
        raise ShardIntegrityError(f"{where}: sha256 {reader.digest.hexdigest()} differs from the manifest's "
                                  f"{entry.sha256}: the shard was altered or corrupted")
