"""Where shard bytes come from: the shard index, local / S3 / fsspec streams, retries, hashing, cache.

* ``open_index(url)`` / ``load_index(url)``: the shards of a dataset from ``.../manifest.json`` or a
  shard folder (its ``manifest.json``, or, without one, a scan of its ``*.tar`` files), as a file-backed
  ``SampleIndex`` (``dynamo_depth.shards.index``, resolved by ``index_store``) / its ``ShardEntry`` views.
* ``ShardStore.samples(entry, wanted=)``: stream one shard front to back, yielding ``(key, members)``.
  With per-sample digests (manifest version 2) each sample's span bytes are hashed and checked
  BEFORE the sample is parsed and yielded (``SampleIntegrityError`` naming key, shard and byte
  offset); only the ``wanted`` samples are parsed and checked, so a bad sample outside them does
  not stop the others. Without them (version 1, scanned folders) every sample is parsed and the
  shard's size and sha256 are checked at its end (``ShardIntegrityError`` naming the shard).
* ``sample_from_span``: one sample from its span bytes (ranged reads), checked the same way.
* Transient read errors (connection reset/refused,
  timeouts, HTTP 5xx) are retried with exponential backoff and the read resumes at its byte offset
  (HTTP Range). S3 goes through boto3 ``get_object`` (``AWS_ENDPOINT_URL[_S3]`` and the usual
  credential variables); other fsspec URLs through ``dynamo_depth.shards.storage``.
* ``ShardCache`` (``dynamo_depth.data.cache``): optional local copies of the remote shards read here.

This module holds the index (``load_index``) and ``ShardStore``; ``ShardEntry`` is in
``dynamo_depth.shards.index``, the integrity errors in ``dynamo_depth.data.errors``, the checks in
``dynamo_depth.data.integrity``, the retrying / S3 / hashing streams in ``dynamo_depth.data.reader``.
"""


from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO, Any

from dynamo_depth.data.cache import ShardCache
from dynamo_depth.data.errors import SampleIntegrityError, ShardIntegrityError
from dynamo_depth.data.integrity import _checked_samples, _span_samples, sample_from_span
from dynamo_depth.data.reader import (
    RetryingReader,
    RetryPolicy,
    _ChunkedReader,
    _HashingReader,
    _s3_open_at,
)
from dynamo_depth.shards import index_store, storage
from dynamo_depth.shards.index import SampleIndex, ShardEntry
from dynamo_depth.shards.reader import iter_shard
from dynamo_depth.shards.records import check_shard_name
from dynamo_depth.shards.schema import is_edge_meta_json

__all__ = ["RetryPolicy", "SampleIntegrityError", "ShardEntry", "ShardIntegrityError", "ShardStore", "load_index",
           "open_index", "sample_from_span"]

_LOG = logging.getLogger(__name__)


def load_index(url: str) -> tuple[str, tuple[ShardEntry, ...]]:
    """(base URL of the shards, shard entries) for a manifest URL or a shard folder (local or remote).

    The entries' keys / spans / digests / edges are views of the file-backed ``SampleIndex`` of
    ``open_index`` (``dynamo_depth.shards.index_store``), not tuples."""
    base, index = open_index(url)
    return base, index.entries()


def open_index(url: str) -> tuple[str, SampleIndex]:
    """(base URL of the shards, file-backed ``SampleIndex``) for a manifest URL or a shard folder:
    the manifest's sidecar, the node's index cache, or a parse of the manifest (``index_store``); a
    folder without a manifest is scanned (its ``*.tar`` files read, no hash to check)."""
    return index_store.open_index(url, scan=_scan_folder)


def _scan_folder(url: str) -> tuple[ShardEntry, ...]:
    """Entries of the ``*.tar`` files of a folder without a manifest (sizes and keys read, no hash to check)."""
    if storage.is_local(url) and not os.path.isdir(storage._local_path(url)):
        raise ValueError(f"dataset {url}: neither a manifest (.json) nor a folder")
    names = sorted(n for n in storage.listdir(url) if n.endswith(".tar"))
    entries = []
    for name in names:
        shard_url = storage.join(url, name)
        samples = [(key, is_edge_meta_json(members.get("meta.json", b"{}"), key=key))
                   for key, members in iter_shard(shard_url)]
        edges = tuple(edge for _, edge in samples)
        entries.append(ShardEntry(name, storage.size(shard_url), None, tuple(key for key, _ in samples),
                                  edges=edges if any(edges) else None))
    return tuple(entries)


class ShardStore:
    """Opens the shards under ``base_url`` as verified streams (see the module docstring)."""

    def __init__(self, base_url: str, *, retry: RetryPolicy = RetryPolicy(), cache: ShardCache | None = None) -> None:
        self.base_url, self.retry, self.cache = base_url.rstrip("/"), retry, cache
        self.local = storage.is_local(base_url)
        self.retry_events: list[tuple[str, int, str]] = []  # (shard, resume offset, error) in this process

    def _note_retry(self, name: str, offset: int, exc: BaseException) -> None:
        self.retry_events.append((name, offset, f"{type(exc).__name__}: {exc}"))
        _LOG.warning("shard %s: transient read error (%s: %s); resuming at byte %d", name, type(exc).__name__, exc, offset)

    def open_at(self, entry: ShardEntry, offset: int, end: int | None = None) -> IO[bytes]:
        """A raw binary stream of shard ``entry`` from byte ``offset`` (to ``end`` on S3; no retries)."""
        url = storage.join(self.base_url, check_shard_name(entry.name))
        if self.local:
            f = open(storage._local_path(url), "rb")  # noqa: SIM115 - returned to the caller
            f.seek(offset)
            return f
        if url.startswith(("s3://", "s3a://")):
            body, total = _s3_open_at(url, offset, end)
            if total is not None and total != entry.bytes:
                body.close()
                raise ShardIntegrityError(f"shard {entry.name} (in {self.base_url}): {total} bytes on the server, "
                                          f"the manifest says {entry.bytes}")
            return body
        f = storage.open_read(url)
        f.seek(offset)
        return f

    def _open_cached(self, entry: ShardEntry) -> IO[bytes] | None:
        """The cache's open copy of remote shard ``entry``, or None (not cached, evicted, or no cache):
        None means read the remote shard instead."""
        if self.cache is None or self.local or not entry.sha256:
            return None
        return self.cache.lookup(entry.sha256)

    def read_range(self, entry: ShardEntry, *, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of shard ``entry``: from the cache when it holds the shard,
        else one ranged read, retried and resumed like whole-shard reads. Nothing is hashed here."""
        if offset < 0 or length <= 0 or offset + length > entry.bytes:
            raise ShardIntegrityError(f"shard {entry.name} (in {self.base_url}): span [{offset}, {offset + length}) "
                                      f"lies outside its {entry.bytes} bytes")
        cached = self._open_cached(entry)
        if cached is not None or self.local:
            with (cached if cached is not None else self.open_at(entry, 0)) as f:
                f.seek(offset)
                data = f.read(length)
        else:
            reader = RetryingReader(lambda off: self.open_at(entry, offset + off, offset + length), size=length,
                                    name=entry.name, retry=self.retry,
                                    on_retry=lambda name, off, exc: self._note_retry(name, offset + off, exc))
            try:
                data = b"".join(iter(lambda: reader.read(length), b""))
            finally:
                reader.close()
        if len(data) != length:
            raise ShardIntegrityError(f"shard {entry.name} (in {self.base_url}): ends before byte {offset + length} "
                                      f"(manifest size {entry.bytes})")
        return data

    def samples(self, entry: ShardEntry, *,
                wanted: Collection[int] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
        """Stream ``(key, members)`` of ``entry`` front to back: all its samples, or the ordinals ``wanted``.

        With per-sample digests every yielded sample is checked before it is parsed (``sample_from_span``);
        the others are read past, unchecked. With ``wanted=None`` the shard's size and sha256 are also
        checked at its end (``ShardIntegrityError``). With ``wanted`` the stream stops after the last
        wanted sample, unless the shard is being copied into the cache: then it is read to the end and
        the copy kept only if the whole shard matches (a difference is logged, not raised: every
        sample yielded was checked). Without per-sample digests every sample is parsed and the shard
        is checked at its end (size, keys, sha256) whatever ``wanted`` is.
        """
        cached = self._open_cached(entry)
        tmp = None
        if cached is not None:
            raw: Any = cached  # closed in finally
        elif self.local:
            raw = self.open_at(entry, 0)
        else:
            raw = _ChunkedReader(RetryingReader(lambda off: self.open_at(entry, off), size=entry.bytes,
                                                name=entry.name, retry=self.retry, on_retry=self._note_retry))
            use_cache = self.cache is not None and entry.sha256 and not self.local and entry.bytes <= self.cache.max_bytes
            tmp = self.cache.temporary(entry.sha256) if use_cache else None
        tee = open(tmp, "wb") if tmp is not None else None  # noqa: SIM115 - closed in finally
        per_sample = entry.digests is not None and entry.spans is not None
        whole = wanted is None or tee is not None or not per_sample
        try:
            reader = _HashingReader(raw, tee, hashing=whole)
            if per_sample:
                intact = yield from _span_samples(reader, entry, self.base_url, wanted=wanted, whole=whole)
            else:
                for ordinal, sample in enumerate(_checked_samples(reader, entry, self.base_url)):
                    if wanted is None or ordinal in wanted:
                        yield sample
                intact = True
            if tee is not None and intact:
                tee.close()
                self.cache.commit(tmp, entry.sha256)  # type: ignore[union-attr, arg-type]
                tmp = None
        finally:
            raw.close()
            if tee is not None and not tee.closed:
                tee.close()
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
