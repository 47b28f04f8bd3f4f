"""Byte streams under the shard loader: retried and resumed reads, S3 ranged GETs, chunking, hashing.

* ``RetryPolicy`` / ``is_transient`` / ``RetryingReader``: transient read errors (connection
  reset/refused, timeouts, HTTP 5xx) are retried with exponential backoff, resuming at the byte offset.
* ``_s3_open_at``: a ``GET`` with ``Range`` through boto3 (one client per process and endpoint).
* ``_HashingReader`` (counts, hashes, tees into the cache) and ``_ChunkedReader`` (1 MiB reads for the
  tar parser). Used by ``dynamo_depth.data.sources.ShardStore``; ``RetryPolicy`` and ``RetryingReader``
  are re-exported there.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from dynamo_depth.data.errors import ShardIntegrityError

_CHUNK = 1 << 20


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
