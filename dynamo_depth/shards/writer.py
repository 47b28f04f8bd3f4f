"""Byte-reproducible WebDataset tar shards: the writer (``ShardWriter``, ``write_shard``).

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

The records it returns (``ShardRecord``, ``SampleSpan``, shard names) are in ``dynamo_depth.shards.records``;
the streaming reader (``iter_shard``, ``read_sample``, ``span_sha256``...) is in ``dynamo_depth.shards.reader``.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from dynamo_depth.shards import storage
from dynamo_depth.shards.reader import _padded
from dynamo_depth.shards.records import BLOCK, SampleSpan, ShardRecord, _is_int, check_shard_name, shard_name

__all__ = ["ShardWriter", "write_shard"]

_END_OF_ARCHIVE = bytes(2 * BLOCK)


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
        header = _ustar_header(f"{key}.{member}", len(data))
        if header is None:  # a long name: the ustar prefix / name split is tarfile's
            header = _tarfile_header(key, member, len(data))
        blocks.append(header + data + bytes(_padded(len(data)) - len(data)))
    return blocks


_USTAR_NAME_BYTES = 100
_USTAR_FIXED = (b"0000444\0" + b"0000000\0" * 2, b"00000000000\0" + b" " * 8 + b"0" + bytes(100) + b"ustar\x0000"
                + bytes(32 + 32 + 8 + 8 + 155 + 12))


def _ustar_header(name: str, size: int) -> bytes | None:
    """The 512-byte POSIX ustar header of a regular file ``name`` of ``size`` bytes, as tarfile writes it.

    Mode 0o444, uid / gid 0, mtime 0, empty uname / gname, no device fields: name (NUL-padded), octal
    fields zero-padded and NUL-terminated, the checksum (byte sum with its own field as spaces) as six
    octal digits, NUL and a space. ``None`` when the name needs the ustar prefix field (over 100 bytes)
    or the size does not fit 11 octal digits (8 GiB): ``_tarfile_header`` writes those.
    """
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return None  # tarfile names the error
    if len(encoded) > _USTAR_NAME_BYTES or size >= 8**11:
        return None
    header = bytearray(encoded + bytes(_USTAR_NAME_BYTES - len(encoded)) + _USTAR_FIXED[0]
                       + b"%011o\0" % size + _USTAR_FIXED[1])
    header[148:155] = b"%06o\0" % sum(header)  # the checksum field: 8 spaces while summed, byte 155 stays a space
    return bytes(header)


def _tarfile_header(key: str, member: str, size: int) -> bytes:
    info = tarfile.TarInfo(f"{key}.{member}")
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    try:
        return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
    except ValueError as exc:
        raise ValueError(f"sample {key!r}, member {member!r}: cannot write a ustar header: {exc}") from None


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
