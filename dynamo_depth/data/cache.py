"""Local copies of remote shards, shared by the DataLoader workers and ranks of one machine.

Copies are named by sha256 (``{sha256}.tar``) and evicted least recently used first once their
total, with the partial ``*.tmp`` copies being written, passes ``max_bytes``. ``lookup`` opens the
copy itself, so another worker's eviction cannot break a read.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import IO

__all__ = ["ShardCache"]

_LOG = logging.getLogger(__name__)


class ShardCache:
    """Local copies of remote shards as ``{sha256}.tar`` in ``directory`` (local disk of one machine);
    LRU by bytes, at most ``max_bytes`` counting the partial ``*.tmp`` copies still being written.

    Several workers and ranks share the directory: ``lookup`` opens the file itself, so a concurrent
    eviction (an unlink) cannot break a read that has begun; ``evict`` removes the ``*.tmp`` files
    of killed workers (owner pid gone, or untouched for ``stale_tmp_s`` seconds).
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int, stale_tmp_s: float = 3600.0) -> None:
        if int(max_bytes) < 0 or stale_tmp_s <= 0:
            raise ValueError(f"cache {directory}: max_bytes must be >= 0 and stale_tmp_s > 0, "
                             f"got {max_bytes} and {stale_tmp_s}")
        self.directory, self.max_bytes, self.stale_tmp_s = Path(directory), int(max_bytes), float(stale_tmp_s)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.tar"

    def lookup(self, sha256: str) -> IO[bytes] | None:
        """The cached shard opened for binary reads (its use time refreshed), or None if it is not cached.

        The caller closes the handle. Once open, the bytes stay readable even if another worker
        evicts the file (POSIX unlink semantics); an eviction before the open is a cache miss.
        """
        try:
            handle = open(self.path(sha256), "rb")  # noqa: SIM115 - returned to the caller
        except FileNotFoundError:
            return None
        try:
            os.utime(handle.fileno())
        except OSError:  # pragma: no cover - only the LRU order suffers (e.g. a read-only cache)
            pass
        return handle

    def temporary(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.tar.{os.getpid()}.tmp"

    def commit(self, tmp: Path, sha256: str) -> None:
        """Move a verified temporary copy into the cache, then evict the least recently used shards.

        If ``tmp`` vanished meanwhile (removed as stale by another worker) the shard is simply not cached.
        """
        try:
            os.replace(tmp, self.path(sha256))
        except FileNotFoundError:
            _LOG.warning("cache %s: temporary copy %s vanished before commit; shard not cached", self.directory, tmp)
            return
        self.evict(keep=self.path(sha256))

    def evict(self, *, keep: Path | None = None) -> None:
        """Remove stale ``*.tmp`` files, then least recently used shards until cache + live temporaries
        fit in ``max_bytes`` (``keep`` and temporaries being written are never removed)."""
        live_tmp_bytes = self._sweep_temporaries()
        files = []
        for path in self.directory.glob("*.tar"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # another worker evicted it
            files.append((stat.st_mtime_ns, stat.st_size, path))
        total = live_tmp_bytes + sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size

    def _sweep_temporaries(self) -> int:
        """Delete the ``*.tmp`` files of dead or long-silent writers; returns the bytes of the others."""
        live_bytes, now_ns = 0, time.time_ns()
        for path in self.directory.glob("*.tmp"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # committed or removed by its writer meanwhile
            idle_s = (now_ns - stat.st_mtime_ns) / 1e9
            if idle_s >= self.stale_tmp_s or not _writer_alive(path):
                path.unlink(missing_ok=True)
            else:
                live_bytes += stat.st_size
        return live_bytes


def _writer_alive(tmp: Path) -> bool:
    """False only when the pid in ``{sha256}.tar.{pid}.tmp`` names no running process on this machine."""
    pid_text = tmp.name[: -len(".tmp")].rpartition(".")[2]
    if not pid_text.isdigit() or int(pid_text) <= 0:
        return True  # not ours to judge: only the age rule applies
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: the process exists under another user
        return True
    return True
