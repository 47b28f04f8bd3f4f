"""Reading the shards that ``dynamo_depth.shards.writer`` writes: tar streams, sample spans, digests.

* ``iter_shard``: stream ``(key, {member: bytes})`` from one tar, every read checked; ``count_samples``.
* ``parse_sample_bytes`` / ``read_sample``: one sample from its span bytes (a ranged read), checked
  against the span's sha256 when it has one (manifest version 2).
* ``span_sha256`` (the per-sample digest), ``sha256_of`` (a whole file's size and sha256).
* ``split_member_name``: WebDataset's key / member rule, shared with the writer.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from collections.abc import Iterator
from typing import IO

from dynamo_depth.shards import storage
from dynamo_depth.shards.records import BLOCK, SampleSpan

__all__ = [
    "count_samples", "iter_shard", "parse_sample_bytes", "read_sample", "sha256_of", "span_sha256",
    "split_member_name",
]

_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]+)$")


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def split_member_name(name: str) -> tuple[str, str]:
    """(key, member) of a tar member name by WebDataset's rule; ``ValueError`` if it has no dot."""
    match = _MEMBER_RE.match(name)
    if not match:
        raise ValueError(f"tar member {name!r} has no '.': cannot split it into key and member")
    return match.group(1), match.group(2)


def _read_exact(f: IO[bytes], size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _iter_members(f: IO[bytes], source: str, *, require_end: bool) -> Iterator[tuple[str, bytes]]:
    """(member name, data) of each regular file in a tar stream, checking every read."""
    pos = 0
    while True:
        block = _read_exact(f, BLOCK)
        if not block and not require_end:
            return
        if len(block) < BLOCK:
            raise ValueError(f"shard {source}: truncated at byte {pos + len(block)} (no end-of-archive marker)")
        if block == bytes(BLOCK):
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise ValueError(f"shard {source}: bad tar header at byte {pos}: {exc}") from None
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise ValueError(f"shard {source}: member {info.name!r} at byte {pos} is not a regular file "
                             f"(tar type {info.type!r}); shards hold regular files only")
        data = _read_exact(f, info.size)
        padding = _read_exact(f, _padded(info.size) - info.size)
        if len(data) + len(padding) < _padded(info.size):
            raise ValueError(f"shard {source}: truncated inside member {info.name!r} (header at byte {pos})")
        pos += BLOCK + _padded(info.size)
        yield info.name, data


def _group_samples(members: Iterator[tuple[str, bytes]], source: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    seen: set[str] = set()
    key: str | None = None
    sample: dict[str, bytes] = {}
    for name, data in members:
        try:
            member_key, member = split_member_name(name)
        except ValueError as exc:
            raise ValueError(f"shard {source}: {exc}") from None
        if member_key != key:
            if key is not None:
                yield key, sample
            if member_key in seen:
                raise ValueError(f"shard {source}: key {member_key!r} appears in two separate runs of members")
            seen.add(member_key)
            key, sample = member_key, {}
        if member in sample:
            raise ValueError(f"shard {source}: key {key!r} has member {member!r} twice")
        sample[member] = data
    if key is not None:
        yield key, sample


def iter_shard(url_or_fileobj: str | os.PathLike[str] | IO[bytes]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream ``(key, {member: bytes})`` from one tar (local path, fsspec URL or binary file object).

    Memory holds one member at a time plus the current sample. A truncated or corrupt tar raises
    ``ValueError`` naming the shard.
    """
    if isinstance(url_or_fileobj, (str, os.PathLike)):
        url = os.fspath(url_or_fileobj)
        with storage.open_read(url) as f:
            yield from _group_samples(_iter_members(f, url, require_end=True), url)
    else:
        source = str(getattr(url_or_fileobj, "name", "<stream>"))
        yield from _group_samples(_iter_members(url_or_fileobj, source, require_end=True), source)


def count_samples(url: str) -> int:
    """Number of samples in the shard at ``url`` (reads it through; ``ValueError`` if corrupt)."""
    return sum(1 for _ in iter_shard(url))


def parse_sample_bytes(data: bytes, *, key: str, source: str = "<bytes>") -> dict[str, bytes]:
    """Members of one sample from its span bytes ``shard[offset:offset + length]``."""
    samples = list(_group_samples(_iter_members(io.BytesIO(data), source, require_end=False), source))
    if len(samples) != 1 or samples[0][0] != key:
        found = [k for k, _ in samples]
        raise ValueError(f"shard {source}: span of {key!r} holds samples {found}, expected exactly [{key!r}]")
    return samples[0][1]


def read_sample(shard_url: str, span: SampleSpan) -> dict[str, bytes]:
    """Range-read one sample's members from ``shard_url`` using its ``SampleSpan``; when the span has a
    sha256 (manifest version 2) the bytes are checked first (``ValueError`` naming shard, key, offset)."""
    data = storage.read_range(shard_url, offset=span.offset, length=span.length)
    if span.sha256 is not None and (got := span_sha256(data)) != span.sha256:
        raise ValueError(f"shard {shard_url}: sample {span.key!r} at byte offset {span.offset} ({span.length} bytes): "
                         f"sha256 {got} differs from the manifest's {span.sha256}: the sample was altered or corrupted")
    return parse_sample_bytes(data, key=span.key, source=shard_url)


def span_sha256(data: bytes | bytearray | memoryview) -> str:
    """The per-sample digest recorded in ``SampleSpan.sha256``: sha256 hex of the span's bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_of(url: str, *, chunk: int = 1 << 20) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of the file at ``url``, streamed ``chunk`` bytes at a time."""
    digest, size = hashlib.sha256(), 0
    with storage.open_read(url) as f:
        while True:
            data = f.read(chunk)
            if not data:
                break
            digest.update(data)
            size += len(data)
    return size, digest.hexdigest()
