"""Where a process gets its ``SampleIndex``: the manifest's sidecar, the node's index cache, or a parse.

``open_index(url)`` reads the manifest's bytes once and hashes them (sha256: ~0.05 s for a 70 MB
manifest), then opens (``index.open_index_file``), in this order of preference:

1. the sidecar beside the manifest (``manifest.index`` for ``manifest.json``; written by
   every build (``save_indexed_manifest``, right before the manifest) and by ``python -m dynamo_depth
   index``; copied into the node cache first when remote) if its header
   names this manifest's sha256 (a stale sidecar is ignored);
2. the node's index cache, ``$DYNAMO_DEPTH_INDEX_DIR`` (default ``<tmp>/dynamo-depth-index-<uid>``):
   ``<manifest sha256>.f<FORMAT>.idx``;
3. else it parses and checks the manifest as ``load_manifest`` does (same errors; column by column,
   ``index_parse``), checks its keys are unique, and writes the index into the node cache (atomically, under a file lock, so the ranks of a
   node starting together parse it once).

Every index file is hashed once by the process that resolves it (its body sha256); DataLoader
workers open the same file by path (``SampleIndex`` pickles as its path and body digest). A folder
without a manifest is scanned as before and its index written into the cache under the sha256 of
its bytes. The cache keeps the ``CACHE_FILES`` most recently used index files.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dynamo_depth.shards import manifest as manifest_mod
from dynamo_depth.shards import storage
from dynamo_depth.shards.index import (
    FORMAT,
    SampleIndex,
    ShardEntry,
    encode_index,
    index_arrays,
    manifest_arrays,
    open_index_file,
    write_index_file,
)
from dynamo_depth.shards.index_parse import manifest_index_arrays

__all__ = ["CACHE_FILES", "index_dir", "open_index", "save_indexed_manifest", "sidecar_url", "sidecar_bytes"]

CACHE_FILES = 64
_LOG = logging.getLogger("dynamo_depth.data.sources")


def index_dir() -> Path:
    """The node's index cache folder (``$DYNAMO_DEPTH_INDEX_DIR`` or ``<tmp>/dynamo-depth-index-<uid>``)."""
    configured = os.environ.get("DYNAMO_DEPTH_INDEX_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"dynamo-depth-index-{os.getuid()}"


def sidecar_url(manifest_url: str) -> str:
    """URL of the sidecar index of a manifest: ``X.json`` -> ``X.index``."""
    stem = manifest_url[:-len(".json")] if manifest_url.endswith(".json") else manifest_url
    return stem + ".index"


def _duplicate_keys(index: SampleIndex) -> list[str]:
    keys = [index.key(i) for i in range(index.num_samples)]
    if len(set(keys)) == len(keys):
        return []
    seen: set[str] = set()
    return sorted({k for k in keys if k in seen or seen.add(k)})[:5]  # type: ignore[func-returns-value]


def checked_index(arrays: dict, *, manifest_sha256: str | None, source: str) -> bytes:
    """Index bytes of ``arrays`` after the loader's dataset checks (some shard, unique keys)."""
    index = SampleIndex(arrays)
    if index.num_shards == 0:
        raise ValueError(f"dataset {source}: no shards found")
    repeated = _duplicate_keys(index)
    if repeated:
        raise ValueError(f"dataset {source}: sample keys appear more than once: {repeated}")
    return encode_index(arrays, manifest_sha256=manifest_sha256)


def sidecar_bytes(manifest_url: str) -> bytes:
    """The sidecar index of the manifest at ``manifest_url`` (what ``python -m dynamo_depth index`` writes)."""
    raw = manifest_mod.read_manifest_bytes(manifest_url)
    return checked_index(manifest_index_arrays(raw, manifest_url), manifest_sha256=hashlib.sha256(raw).hexdigest(),
                         source=manifest_url)


def save_indexed_manifest(manifest: manifest_mod.Manifest, url: str) -> str:
    """Write the sidecar index of ``manifest``, then the manifest itself (canonically, atomically,
    last: a build's commit point); return the manifest's URL (``url``: folder or ``.json``).

    The sidecar is encoded from ``manifest`` and names the sha256 of its canonical bytes: the bytes
    ``python -m dynamo_depth index`` derives from the saved manifest (deterministic). A manifest the
    loader refuses (no shard, repeated keys) gets no sidecar, and loses a stale one: its error stays
    the loader's. Killed between the two writes, the folder holds a sidecar naming a manifest that is
    not there (ignored: the next build writes both again)."""
    path = manifest_mod.find_manifest(url)
    raw = manifest_mod.canonical_json(manifest)
    side = sidecar_url(path)
    try:
        data = checked_index(manifest_arrays(manifest), manifest_sha256=hashlib.sha256(raw).hexdigest(), source=path)
    except ValueError:
        if storage.exists(side):
            storage.remove(side)
    else:
        storage.write_bytes_atomic(side, data)
    storage.write_bytes_atomic(path, raw)
    return path


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _evict(folder: Path, keep: Path) -> None:
    files = []
    for path in folder.glob("*.idx"):
        try:
            files.append((path.stat().st_mtime_ns, path))
        except FileNotFoundError:
            continue
    for _, path in sorted(files)[:max(0, len(files) - CACHE_FILES)]:
        if path != keep:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".lock").unlink(missing_ok=True)


def _usable(path: Path, manifest_sha256: str) -> SampleIndex | None:
    """The index file at ``path`` if it exists, is intact and was derived from that manifest, else None."""
    try:
        index = open_index_file(path, check_body=True)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        _LOG.warning("%s; ignored", exc)
        return None
    return index if index.manifest_sha256 == manifest_sha256 else None


def _from_sidecar(manifest_url: str, sha: str, cached: Path) -> SampleIndex | None:
    side = sidecar_url(manifest_url)
    if storage.is_local(side):
        path = Path(storage._local_path(side))
        return _usable(path, sha) if path.exists() else None
    if not storage.exists(side):
        return None
    write_index_file(cached, storage.read_bytes(side))
    index = _usable(cached, sha)
    if index is None:
        cached.unlink(missing_ok=True)  # a stale or foreign sidecar: parse the manifest instead
    return index


def _manifest_sha256(manifest_url: str) -> str:
    """sha256 hex of the manifest's bytes, read in 1 MiB pieces (never the whole file in memory)."""
    digest = hashlib.sha256()
    try:
        with storage.open_read(manifest_url) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest {manifest_url}: not found") from None
    return digest.hexdigest()


def _manifest_index(url: str, manifest_url: str) -> SampleIndex:
    sha = _manifest_sha256(manifest_url)
    cached = index_dir() / f"{sha}.f{FORMAT}.idx"
    with _locked(cached):
        index = _from_sidecar(manifest_url, sha, cached) or _usable(cached, sha)
        if index is None:
            raw = manifest_mod.read_manifest_bytes(manifest_url)
            if hashlib.sha256(raw).hexdigest() != sha:
                raise ValueError(f"manifest {manifest_url}: changed while it was being read; retry")
            arrays = manifest_index_arrays(raw, manifest_url)
            write_index_file(cached, checked_index(arrays, manifest_sha256=sha, source=url))
            index = open_index_file(cached, check_body=True)
    if index.path == str(cached):
        os.utime(cached)  # most recently used
        _evict(cached.parent, keep=cached)
    return index


def open_index(url: str, *, scan: Callable[[str], Sequence[ShardEntry]]) -> tuple[str, SampleIndex]:
    """(base URL of the shards, file-backed ``SampleIndex``) for a manifest URL or a shard folder.

    ``scan``: a callable ``url -> tuple[ShardEntry, ...]`` used for folders without a manifest."""
    url = os.fspath(url).rstrip("/")
    if url.endswith(".json") or storage.exists(storage.join(url, manifest_mod.MANIFEST_NAME)):
        manifest_url = manifest_mod.find_manifest(url)
        return storage.dirname(manifest_url), _manifest_index(url, manifest_url)
    data = checked_index(index_arrays(scan(url)), manifest_sha256=None, source=url)
    path = index_dir() / f"scan-{hashlib.sha256(data).hexdigest()}.f{FORMAT}.idx"
    with _locked(path):
        if not path.exists():
            write_index_file(path, data)
    os.utime(path)
    _evict(path.parent, keep=path)
    return url, open_index_file(path, check_body=True)
