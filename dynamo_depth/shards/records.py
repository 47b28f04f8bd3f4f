"""The manifest's records of a shard set: shard names, ``ShardRecord`` (one committed shard) and
``SampleSpan`` (where one sample lies in its shard, and its sha256), with their JSON forms and checks.

``BLOCK`` is the tar block size: every span starts and ends on a block boundary. The writer
(``dynamo_depth.shards.writer``) produces these records, the reader (``dynamo_depth.shards.reader``) and
the manifest (``dynamo_depth.shards.manifest``) consume them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BLOCK", "SampleSpan", "ShardRecord", "check_shard_name", "shard_name"]

BLOCK = 512
"""Bytes per tar block: headers and padded member data are whole blocks."""
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
