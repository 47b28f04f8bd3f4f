"""The loader's integrity errors: shard or sample bytes that differ from the manifest.

Raised by the byte streams (``dynamo_depth.data.reader``: a shard shorter than the manifest promises) and
by the checks (``dynamo_depth.data.integrity``); both are ``ValueError``s.
"""

from __future__ import annotations

__all__ = ["SampleIntegrityError", "ShardIntegrityError"]


class ShardIntegrityError(ValueError):
    """A shard's bytes differ from its manifest entry (size, sha256 or sample keys)."""


class SampleIntegrityError(ShardIntegrityError):
    """One sample's span bytes differ from the manifest (sha256, length, or not exactly that sample's tar
    members). ``key``, ``shard`` (file name) and ``offset`` (byte offset of the span) name it; the message
    holds all three (a DataLoader worker's error reaches the caller rebuilt from its message alone)."""

    def __init__(self, message: str, *, key: str | None = None, shard: str | None = None,
                 offset: int | None = None) -> None:
        super().__init__(message)
        self.key, self.shard, self.offset = key, shard, offset
