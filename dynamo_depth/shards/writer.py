"""Byte-reproducible WebDataset tar shards: writer, shard records, per-sample byte spans.

Tar layout written here (POSIX ustar, 512-byte blocks)::

    for each sample (in write order), for each member (sorted by member name):
        header block: name "{key}.{member}", size, mtime 0, uid/gid 0, uname/gname "", mode 0o444
        data, zero-padded to a multiple of 512 bytes
    end of archive: two zero blocks (1024 bytes)

Nothing else goes into the bytes (no clock, user, host or pid), so identical input gives
identical shards. A shard is written to ``<name>.tmp`` (a local temporary file for remote
outputs), fsynced, and renamed (uploaded) to ``<name>``; only then is ``on_shard`` called.

A sample's ``SampleSpan`` gives the byte offset of its first header and the length up to the end
of its last member's padding: ``shard[offset:offset + length]`` is a tar fragment holding exactly
that sample's members. The writer also records the sha256 of those span bytes (manifest version 2),
so a reader can check one sample before using it; spans loaded from a version-1 manifest have none. Key rule (WebDataset's): the key is the member name up to the first dot
of its last path component; the rest is the member name. Member names are never used as paths.

The streaming reader (``iter_shard``, ``read_sample``, ``span_sha256``...) is in ``dynamo_depth.shards.reader``;
its public names are re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from dynamo_depth.shards import storage
from dynamo_depth.shards.reader import (
    BLOCK,
    _padded,
    count_samples,
    iter_shard,
    parse_sample_bytes,
    read_sample,
    sha256_of,
    span_sha256,
    split_member_name,
)

__all__ = [
    "BLOCK", "SampleSpan", "ShardRecord", "ShardWriter", "check_shard_name", "count_samples", "iter_shard",
    "parse_sample_bytes", "read_sample", "sha256_of", "shard_name", "span_sha256", "split_member_name",
    "write_shard",
]

_END_OF_ARCHIVE = bytes(2 * BLOCK)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def shard_name(prefix: str, index: int) -> str:
    """``{prefix}-{index:06d}.tar``, e.g. ``kitti-train-000003.tar``."""
    return f"{prefix}-{index:06d}.tar"


def check_shard_name(name: Any) -> str:
    """Return ``name`` if it is a plain file name; raise ``ValueError`` if it could escape its folder."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"shard name {name!r} must be a non-empty string")
    if "/" in name or "\\" in name or ".." in name or os.path.isabs(name) or ":" in name:
        raise ValueError(f"shard name {name!r} must be a plain file name (no '/', '\\', '..', ':' or absolute path)")
    return name


@dataclass(frozen=True)
class SampleSpan:
    """Where one sample lies in its shard: bytes ``[offset, offset + length)``, and the sha256 hex of
    those bytes (None for spans of a version-1 manifest, which recorded no per-sample digest).
    ``edge``: the sample is an edge sample (``meta.json`` ``extra["edge"]``, split-file builds); written
    as ``"edge": true`` only when set, so manifests without edge samples are unchanged."""

    key: str
    offset: int
    length: int
    sha256: str | None = None
    edge: bool = False

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"key": self.key, "offset": self.offset, "length": self.length}
        if self.sha256 is not None:
            obj["sha256"] = self.sha256
        if self.edge:
            obj["edge"] = True
        return obj

    @classmethod
    def from_json(cls, obj: Any) -> SampleSpan:
        optional = {"sha256", "edge"} & set(obj) if isinstance(obj, Mapping) else set()
        _check_fields(obj, {"key", "offset", "length"} | optional, "sample span")
        key, offset, length, sha = obj["key"], obj["offset"], obj["length"], obj.get("sha256")
        if not isinstance(key, str) or not key:
            raise ValueError(f"sample span key {key!r} must be a non-empty string")
        for field, value in (("offset", offset), ("length", length)):
            if not _is_int(value) or value < 0 or value % BLOCK:
                raise ValueError(f"sample {key!r}: {field} {value!r} must be a non-negative multiple of {BLOCK}")
        if length == 0:
            raise ValueError(f"sample {key!r}: length must be positive")
        if "sha256" in obj and (not isinstance(sha, str) or not _SHA256_RE.match(sha)):
            raise ValueError(f"sample {key!r}: sha256 {sha!r} must be 64 lowercase hex digits")
        if "edge" in obj and obj["edge"] is not True:
            raise ValueError(f"sample {key!r}: edge {obj['edge']!r} must be true (or absent)")
        return cls(key=key, offset=offset, length=length, sha256=sha, edge="edge" in obj)


@dataclass(frozen=True)
class ShardRecord:
    """One committed shard: file name, size in bytes, sha256 hex, sample count, keys and spans."""

    name: str
    bytes: int
    sha256: str
    count: int
    first_key: str
    last_key: str
    samples: tuple[SampleSpan, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "bytes": self.bytes, "sha256": self.sha256, "count": self.count,
            "first_key": self.first_key, "last_key": self.last_key,
            "samples": [s.to_json() for s in self.samples],
        }

    @classmethod
    def from_json(cls, obj: Any) -> ShardRecord:
        """Parse and check one manifest entry; ``ValueError`` naming the shard on any inconsistency."""
        fields = {"name", "bytes", "sha256", "count", "first_key", "last_key", "samples"}
        _check_fields(obj, fields, "shard record")
        name = check_shard_name(obj["name"])
        try:
            return _record_from_json(name, obj)
        except ValueError as exc:
            raise ValueError(f"shard {name!r}: {exc}") from None


def _record_from_json(name: str, obj: Mapping[str, Any]) -> ShardRecord:
    size, sha, count = obj["bytes"], obj["sha256"], obj["count"]
    if not _is_int(size) or size < 0:
        raise ValueError(f"bytes {size!r} must be a non-negative integer")
    if not isinstance(sha, str) or not _SHA256_RE.match(sha):
        raise ValueError(f"sha256 {sha!r} must be 64 lowercase hex digits")
    if not isinstance(obj["samples"], list):
        raise ValueError("samples must be a list")
    spans = tuple(SampleSpan.from_json(s) for s in obj["samples"])
    if not _is_int(count) or count != len(spans) or count < 1:
        raise ValueError(f"count {count!r} must equal the number of samples listed ({len(spans)}) and be >= 1")
    if obj["first_key"] != spans[0].key or obj["last_key"] != spans[-1].key:
        raise ValueError(f"first_key/last_key {obj['first_key']!r}/{obj['last_key']!r} "
                         f"disagree with the samples list ({spans[0].key!r}/{spans[-1].key!r})")
    end = 0
    for span in spans:
        if span.offset < end:
            raise ValueError(f"sample {span.key!r} at offset {span.offset} overlaps the previous sample")
        end = span.offset + span.length
    if end > size:
        raise ValueError(f"samples run to byte {end}, past the shard size {size}")
    return ShardRecord(name=name, bytes=size, sha256=sha, count=count,
                       first_key=spans[0].key, last_key=spans[-1].key, samples=spans)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(obj: Any, fields: set[str], what: str) -> None:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(obj).__name__}")
    missing, unknown = sorted(fields - set(obj)), sorted(set(obj) - fields)
    if missing or unknown:
        raise ValueError(f"{what} {obj.get('name', obj.get('key', ''))!r}: missing fields {missing}, unknown fields {unknown}")


def _member_blocks(key: str, members: Mapping[str, bytes]) -> list[bytes]:
    """Header + padded data of each member, sorted by member name."""
    if not isinstance(key, str) or not key or "." in key or "/" in key or "\\" in key:
        raise ValueError(f"sample key {key!r} must be a non-empty string without '.', '/' or '\\'")
    if not members:
        raise ValueError(f"sample {key!r} has no members")
    blocks = []
    for member in sorted(members):
        data = members[member]
        if not isinstance(member, str) or not member or "/" in member or "\\" in member:
            raise ValueError(f"sample {key!r}: member name {member!r} must be a non-empty name without '/' or '\\'")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"sample {key!r}, member {member!r}: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        info = tarfile.TarInfo(f"{key}.{member}")
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        try:
            header = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
        except ValueError as exc:
            raise ValueError(f"sample {key!r}, member {member!r}: cannot write a ustar header: {exc}") from None
        blocks.append(header + data + bytes(_padded(len(data)) - len(data)))
    return blocks


class _OpenShard:
    """One shard being written: temporary file, running sha256, byte count and spans."""

    def __init__(self, final_url: str, name: str) -> None:
        self.final_url, self.name = final_url, name
        if storage.is_local(final_url):
            self.tmp_path = final_url + ".tmp"
            os.makedirs(os.path.dirname(os.path.abspath(self.tmp_path)), exist_ok=True)
            self.file: IO[bytes] = open(self.tmp_path, "wb")
        else:
            fd, self.tmp_path = tempfile.mkstemp(prefix=name + ".", suffix=".tmp")
            self.file = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0
        self.spans: list[SampleSpan] = []

    def append(self, key: str, blocks: list[bytes], *, edge: bool = False) -> None:
        start, digest = self.size, hashlib.sha256()
        for block in blocks:
            self._write(block)
            digest.update(block)  # = span_sha256 of the span's bytes, without joining them
        self.spans.append(SampleSpan(key=key, offset=start, length=self.size - start, sha256=digest.hexdigest(),
                                     edge=edge))

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.hash.update(data)
        self.size += len(data)

    def commit(self) -> ShardRecord:
        """End the archive, fsync, rename (or upload) to the final name; return its record."""
        self._write(_END_OF_ARCHIVE)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if storage.is_local(self.final_url):
            os.chmod(self.tmp_path, 0o644)
            os.replace(self.tmp_path, self.final_url)
            storage._fsync_dir(os.path.dirname(os.path.abspath(self.final_url)))
        else:
            try:
                storage.put_file(self.tmp_path, self.final_url)
            finally:
                os.unlink(self.tmp_path)
        return ShardRecord(name=self.name, bytes=self.size, sha256=self.hash.hexdigest(), count=len(self.spans),
                           first_key=self.spans[0].key, last_key=self.spans[-1].key, samples=tuple(self.spans))

    def abort(self) -> None:
        self.file.close()
        if os.path.exists(self.tmp_path):
            os.unlink(self.tmp_path)


def write_shard(out_url: str, name: str, samples: Iterable[tuple[str, bytes, bool]]) -> ShardRecord:
    """Write ONE shard ``out_url/name`` from samples already in tar form: ``(key, span bytes, edge)``.

    ``span bytes`` is a sample's tar fragment as ``ShardWriter`` writes it (header + padded data of each
    member, sorted), e.g. ``shard[span.offset:span.offset + span.length]`` of another shard: the result is
    byte-identical to writing the same samples with ``ShardWriter``. Atomic like ``ShardWriter`` (``.tmp``,
    fsync, rename / upload); on an exception nothing is left under either name.
    """
    check_shard_name(name)
    shard = _OpenShard(storage.join(os.fspath(out_url), name), name)
    try:
        for key, data, edge in samples:
            if not data or len(data) % BLOCK:
                raise ValueError(f"sample {key!r}: {len(data)} bytes is not a tar fragment (multiple of {BLOCK})")
            shard.append(key, [data], edge=edge)
        if not shard.spans:
            raise ValueError(f"shard {name!r}: no samples")
        return shard.commit()
    except BaseException:
        shard.abort()
        raise


class ShardWriter:
    """Write samples into ``{prefix}-{index:06d}.tar`` shards under ``out_url`` (local folder or URL).

    A shard is committed (renamed / uploaded) when adding the next sample would pass ``max_count``
    samples or ``max_bytes`` bytes (a single sample larger than ``max_bytes`` gets a shard of its
    own), and on ``close()``. ``on_shard(record)`` runs right after each commit. Use as a context
    manager: on an exception the open shard's temporary file is removed and nothing is committed.
    """

    def __init__(self, out_url: str, *, prefix: str, start_index: int = 0, max_count: int = 1000,
                 max_bytes: int = 256 * 2**20, on_shard: Callable[[ShardRecord], Any] | None = None) -> None:
        check_shard_name(shard_name(prefix, 0))
        if not _is_int(start_index) or start_index < 0:
            raise ValueError(f"start_index {start_index!r} must be a non-negative integer")
        if not _is_int(max_count) or max_count < 1:
            raise ValueError(f"max_count {max_count!r} must be a positive integer")
        if not _is_int(max_bytes) or max_bytes < 1:
            raise ValueError(f"max_bytes {max_bytes!r} must be a positive integer")
        self.out_url, self.prefix = os.fspath(out_url), prefix
        self.max_count, self.max_bytes, self.on_shard = max_count, max_bytes, on_shard
        self._next_index = start_index
        self._current: _OpenShard | None = None
        self._records: list[ShardRecord] = []
        self._keys: set[str] = set()
        self._closed = False

    def write(self, key: str, members: Mapping[str, bytes], *, edge: bool = False) -> None:
        """Append one sample; members are written in sorted name order as ``{key}.{member}``.
        ``edge`` marks it an edge sample in the manifest (``SampleSpan.edge``)."""
        if self._closed:
            raise ValueError(f"ShardWriter for {self.out_url!r} is closed")
        blocks = _member_blocks(key, members)
        if key in self._keys:
            raise ValueError(f"sample key {key!r} written twice to {self.out_url!r}")
        self._keys.add(key)
        sample_size = sum(len(b) for b in blocks)
        current = self._current
        if current is not None and (
            len(current.spans) >= self.max_count
            or current.size + sample_size + len(_END_OF_ARCHIVE) > self.max_bytes
        ):
            self._commit()
        if self._current is None:
            name = shard_name(self.prefix, self._next_index)
            self._next_index += 1
            self._current = _OpenShard(storage.join(self.out_url, name), name)
        self._current.append(key, blocks, edge=edge)

    def _commit(self) -> None:
        assert self._current is not None  # internal invariant, not user input
        record = self._current.commit()
        self._current = None
        self._records.append(record)
        if self.on_shard is not None:
            self.on_shard(record)

    def close(self) -> list[ShardRecord]:
        """Commit the open shard (if any) and return the records of all shards written, in order."""
        if not self._closed:
            self._closed = True
            if self._current is not None:
                self._commit()
        return list(self._records)

    def abort(self) -> None:
        """Drop the open shard's temporary file without committing it."""
        self._closed = True
        if self._current is not None:
            self._current.abort()
            self._current = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
