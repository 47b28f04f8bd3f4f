"""Where shard bytes come from: the shard index, local / S3 / fsspec streams, retries, hashing, cache.

* ``load_index(url)``: the shards of a dataset from ``.../manifest.json`` or a shard folder
  (its ``manifest.json``, or, without one, a scan of its ``*.tar`` files).
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
  credential variables); other fsspec URLs through ``dynamo_depth.storage``.
* ``ShardCache`` (``dynamo_depth.data.cache``): optional local copies of the remote shards read here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Collection, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dynamo_depth import manifest as manifest_mod
from dynamo_depth import shards as shards_mod
from dynamo_depth import storage
from dynamo_depth.data.cache import ShardCache
from dynamo_depth.schema import is_edge_meta_json

__all__ = ["RetryPolicy", "SampleIntegrityError", "ShardEntry", "ShardIntegrityError", "ShardStore", "load_index",
           "sample_from_span"]

_CHUNK = 1 << 20
_LOG = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the loader sees it: file name, size in bytes, sha256 hex (None: unchecked), keys in order,
    each sample's byte span ``(offset, length)`` from the manifest (None for a scanned folder) and each
    sample's span sha256 (None: a version-1 manifest or a scanned folder, no per-sample digests), and each
    sample's edge flag (manifest ``"edge": true``, or ``meta.json`` of a scanned folder; None: no edge sample)."""

    name: str
    bytes: int
    sha256: str | None
    keys: tuple[str, ...]
    spans: tuple[tuple[int, int], ...] | None = None
    digests: tuple[str, ...] | None = None
    edges: tuple[bool, ...] | None = None


def load_index(url: str) -> tuple[str, tuple[ShardEntry, ...]]:
    """(base URL of the shards, shard entries) for a manifest URL or a shard folder (local or remote)."""
    url = os.fspath(url).rstrip("/")
    if url.endswith(".json") or storage.exists(storage.join(url, manifest_mod.MANIFEST_NAME)):
        manifest_url = manifest_mod.find_manifest(url)
        manifest = manifest_mod.load_manifest(manifest_url)
        entries = tuple(ShardEntry(s.name, s.bytes, s.sha256, tuple(sp.key for sp in s.samples),
                                   tuple((sp.offset, sp.length) for sp in s.samples), _digests(s),
                                   tuple(sp.edge for sp in s.samples) if any(sp.edge for sp in s.samples) else None)
                        for s in manifest.shards)
        base = storage.dirname(manifest_url)
    else:
        base, entries = url, _scan_folder(url)
    if not entries:
        raise ValueError(f"dataset {url}: no shards found")
    keys = [k for e in entries for k in e.keys]
    if len(set(keys)) != len(keys):
        repeated = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"dataset {url}: sample keys appear more than once: {repeated}")
    return base, entries


def _digests(record: shards_mod.ShardRecord) -> tuple[str, ...] | None:
    """The per-sample sha256 of a manifest shard record, or None when it has none (version 1)."""
    digests = tuple(span.sha256 for span in record.samples)
    return None if any(d is None for d in digests) else digests  # type: ignore[return-value]


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


def _scan_folder(url: str) -> tuple[ShardEntry, ...]:
    """Entries of the ``*.tar`` files of a folder without a manifest (sizes and keys read, no hash to check)."""
    if storage.is_local(url) and not os.path.isdir(storage._local_path(url)):
        raise ValueError(f"dataset {url}: neither a manifest (.json) nor a folder")
    names = sorted(n for n in storage.listdir(url) if n.endswith(".tar"))
    entries = []
    for name in names:
        shard_url = storage.join(url, name)
        samples = [(key, is_edge_meta_json(members.get("meta.json", b"{}"), key=key))
                   for key, members in shards_mod.iter_shard(shard_url)]
        edges = tuple(edge for _, edge in samples)
        entries.append(ShardEntry(name, storage.size(shard_url), None, tuple(key for key, _ in samples),
                                  edges=edges if any(edges) else None))
    return tuple(entries)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of transient read errors: delay ``min(max_delay_s, base_delay_s * 2**attempt)``.

    ``max_attempts`` counts consecutive failures without any byte of progress; a read that makes
    progress resets the count.
    """

    max_attempts: int = 10
    base_delay_s: float = 0.2
    max_delay_s: float = 10.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2.0**attempt)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection errors, timeouts, truncated bodies, HTTP 5xx / throttling."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import botocore.exceptions as bce
        import urllib3.exceptions as u3
    except ImportError:  # pragma: no cover - boto3 is optional for local reads
        return False
    if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError, bce.IncompleteReadError,
                        u3.ProtocolError, u3.ReadTimeoutError, u3.IncompleteRead)):
        return True
    if isinstance(exc, bce.ClientError):
        meta = exc.response.get("ResponseMetadata", {})
        code = exc.response.get("Error", {}).get("Code", "")
        return int(meta.get("HTTPStatusCode", 0)) >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling")
    return False


class RetryingReader:
    """A read-only byte stream of ``size`` bytes that reopens at its current offset after transient errors.

    ``open_at(offset)`` must return a binary stream positioned at ``offset``. A stream ending early
    (fewer than ``size`` bytes) counts as a transient error too.
    """

    def __init__(self, open_at: Callable[[int], IO[bytes]], *, size: int, name: str, retry: RetryPolicy,
                 sleep: Callable[[float], None] = time.sleep,
                 on_retry: Callable[[str, int, BaseException], None] | None = None) -> None:
        self._open_at, self.size, self.name, self.retry, self._sleep = open_at, size, name, retry, sleep
        self._on_retry = on_retry
        self.offset = 0
        self.reopen_offsets: list[int] = []  # where each retry resumed (for logs and tests)
        self._stream: IO[bytes] | None = None

    def read(self, n: int = -1) -> bytes:
        want = self.size - self.offset if n is None or n < 0 else min(n, self.size - self.offset)
        if want <= 0:
            return b""
        failures = 0
        while True:
            try:
                if self._stream is None:
                    self._stream = self._open_at(self.offset)
                data = self._stream.read(want)
                if not data:
                    raise ConnectionError(f"stream ended at byte {self.offset} of {self.size}")
                self.offset += len(data)
                return data
            except Exception as exc:  # noqa: BLE001 - classified right below
                if not is_transient(exc):
                    raise
                failures += 1
                self.close()
                if failures >= self.retry.max_attempts:
                    raise OSError(f"shard {self.name}: read failed at byte {self.offset} after "
                                  f"{failures} attempts: {type(exc).__name__}: {exc}") from exc
                self._sleep(self.retry.delay(failures - 1))
                self.reopen_offsets.append(self.offset)
                if self._on_retry is not None:
                    self._on_retry(self.name, self.offset, exc)

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
                pass
            self._stream = None


class _HashingReader:
    """Counts and (unless ``hashing`` is False) hashes every byte read; optionally copies them into ``tee``."""

    def __init__(self, raw: Any, tee: IO[bytes] | None, *, hashing: bool = True) -> None:
        self.raw, self.tee, self.hashing = raw, tee, hashing
        self.digest, self.count = hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if self.hashing:
            self.digest.update(data)
        self.count += len(data)
        if self.tee is not None:
            self.tee.write(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def read_exact(self, n: int) -> bytes:
        """``n`` bytes, or fewer only at the end of the stream."""
        chunks, left = [], n
        while left > 0:
            chunk = self.read(left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _ChunkedReader:
    """Serves the tar parser's small reads (512-byte headers) from ``_CHUNK``-sized reads of ``raw``."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.buffer, self.pos = raw, b"", 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            rest = self.buffer[self.pos:] + b"".join(iter(lambda: self.raw.read(_CHUNK), b""))
            self.buffer, self.pos = b"", 0
            return rest
        if self.pos + n > len(self.buffer):
            self.buffer, self.pos = self.buffer[self.pos:] + self.raw.read(max(n, _CHUNK)), 0
        out = self.buffer[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def close(self) -> None:
        self.raw.close()


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
        url = storage.join(self.base_url, shards_mod.check_shard_name(entry.name))
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


_S3_CLIENTS: dict[tuple[Any, ...], Any] = {}


def _s3_client() -> Any:
    """One boto3 S3 client per process and endpoint (clients are not fork-safe; workers make their own)."""
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    ident = (os.getpid(), endpoint, env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_DEFAULT_REGION"))
    if ident not in _S3_CLIENTS:
        import boto3
        from botocore.config import Config

        config = Config(connect_timeout=5, read_timeout=30, retries={"total_max_attempts": 2, "mode": "standard"})
        _S3_CLIENTS[ident] = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
    return _S3_CLIENTS[ident]


def _s3_open_at(url: str, offset: int, end: int | None = None) -> tuple[IO[bytes], int | None]:
    """(streaming body of ``GET url`` with ``Range: bytes=offset-[end-1]``, total object size from Content-Range)."""
    bucket, _, key = url.split("://", 1)[1].partition("/")
    import botocore.exceptions as bce

    try:
        last = "" if end is None else str(end - 1)
        response = _s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{last}")
    except bce.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            raise FileNotFoundError(f"shard {url}: not found on the server") from exc
        if code == "InvalidRange":
            raise ShardIntegrityError(f"shard {url}: shorter than byte {offset} the manifest promises") from exc
        raise
    content_range = str(response.get("ContentRange") or "")
    total = content_range.rpartition("/")[2]
    return response["Body"], int(total) if total.isdigit() else None
