"""The compact sample index: every shard's and sample's facts as a few numpy arrays in one file.

One index replaces the tuples of Python strings the loader used to hold (keys, spans, digests:
~800 bytes and ~5 objects per sample, pickled into every DataLoader worker). Per sample it holds the
key (one UTF-8 blob + offsets), span offset and length, the span sha256 as 32 raw bytes and the edge
flag; per shard its name, size, sha256, first sample and flags (~110 bytes per sample in all).

File format (``FORMAT``; little-endian, deterministic bytes for the same input)::

    MAGIC (8 bytes) | header length (uint64) | header (canonical JSON, ASCII) | zero pad to 64
    | each array of ARRAYS in that order, zero padded to 64 bytes

The header names the format, the sha256 of the manifest bytes it was derived from (None for a
scanned folder), every array's dtype / shape / offset, and the sha256 of everything after it (the
body). A process opens the file once (``open_index_file``): the per-shard arrays and the edge flags are
read whole (S and N bytes), the per-sample columns (keys, spans, digests) stay in the file and are read
row by row (``FileArray``, ``os.pread``), so a process holds only the rows it uses and the file's pages
stay in the node's page cache, shared.

A ``SampleIndex`` backed by a file pickles as its path and body sha256 (tens of bytes, whatever the
number of samples); unpickled in a DataLoader worker, it opens the same file again.
``ShardEntry`` objects built from an index (``SampleIndex.entry``) hold lazy sequence views
(``IndexColumn``) of its arrays instead of tuples.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynamo_depth.shards.manifest import Manifest

__all__ = ["ARRAYS", "FORMAT", "MAGIC", "IndexColumn", "SampleIndex", "ShardEntry", "encode_index", "index_arrays",
           "FileArray", "manifest_arrays", "open_index_file", "write_index_file"]

@dataclass(frozen=True)
class ShardEntry:
    """One shard as the loader sees it: file name, size in bytes, sha256 hex (None: unchecked), keys in order,
    each sample's byte span ``(offset, length)`` from the manifest (None for a scanned folder) and each
    sample's span sha256 (None: a version-1 manifest or a scanned folder, no per-sample digests), and each
    sample's edge flag (manifest ``"edge": true``, or ``meta.json`` of a scanned folder; None: no edge sample)."""

    name: str
    bytes: int
    sha256: str | None
    keys: Sequence[str]
    spans: Sequence[tuple[int, int]] | None = None
    digests: Sequence[str] | None = None
    edges: Sequence[bool] | None = None


FORMAT = 1
MAGIC = b"DDIDX\x00\x00\x01"
_ALIGN = 64
HAS_SHA256, HAS_SPANS, HAS_DIGESTS = 1, 2, 4  # bits of ``shard_flags``

# name -> (dtype, trailing shape); the leading length is the shard / sample count (+1 for offsets)
ARRAYS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("shard_start", "<i8", ()),         # (S + 1,) first sample of each shard, then N
    ("shard_bytes", "<i8", ()),         # (S,) shard size in bytes
    ("shard_flags", "|u1", ()),         # (S,) HAS_SHA256 | HAS_SPANS | HAS_DIGESTS
    ("shard_sha256", "|u1", (32,)),     # (S, 32) raw digest (zeros where absent)
    ("shard_name_offsets", "<i8", ()),  # (S + 1,) into shard_name_blob
    ("shard_name_blob", "|u1", ()),     # UTF-8 shard file names, concatenated
    ("key_offsets", "<i8", ()),         # (N + 1,) into key_blob
    ("key_blob", "|u1", ()),            # UTF-8 sample keys, concatenated
    ("span_offset", "<i8", ()),         # (N,) byte offset of each sample's span (0 without spans)
    ("span_length", "<i8", ()),         # (N,) byte length of each span (0 without spans)
    ("sample_sha256", "|u1", (32,)),    # (N, 32) span digest, or (0, 32) when no shard has digests
    ("edge", "|u1", ()),                # (N,) edge flag, or (0,) when no sample is an edge sample
)


def _blob(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = list(map(str.encode, strings))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8)


def _digest_array(hexes: Sequence[str]) -> np.ndarray:
    return np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8).reshape(len(hexes), 32)


def index_arrays(entries: Sequence[ShardEntry]) -> dict[str, np.ndarray]:
    """The index arrays (``ARRAYS``) of ``entries``: what ``SampleIndex`` holds, in memory."""
    counts = np.array([len(e.keys) for e in entries], dtype=np.int64)
    start = np.zeros(len(entries) + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    flags = np.array([(HAS_SHA256 if e.sha256 else 0) | (HAS_SPANS if e.spans is not None else 0)
                      | (HAS_DIGESTS if e.digests is not None and e.spans is not None else 0) for e in entries],
                     dtype=np.uint8)
    shard_sha = _digest_array([e.sha256 or "00" * 32 for e in entries])
    name_offsets, name_blob = _blob([e.name for e in entries])
    key_offsets, key_blob = _blob([k for e in entries for k in e.keys])
    spans = [span for e in entries for span in (e.spans if e.spans is not None else ((0, 0),) * len(e.keys))]
    span_array = np.array(spans, dtype=np.int64).reshape(len(spans), 2)
    if any(e.digests is not None for e in entries):
        digests = _digest_array([d for e in entries for d in (e.digests or ("00" * 32,) * len(e.keys))])
    else:
        digests = np.zeros((0, 32), dtype=np.uint8)
    if any(e.edges is not None and any(e.edges) for e in entries):
        edge = np.array([bool(x) for e in entries for x in (e.edges or (False,) * len(e.keys))], dtype=np.uint8)
    else:
        edge = np.zeros(0, dtype=np.uint8)
    return {"shard_start": start, "shard_bytes": np.array([e.bytes for e in entries], dtype=np.int64),
            "shard_flags": flags, "shard_sha256": shard_sha, "shard_name_offsets": name_offsets,
            "shard_name_blob": name_blob, "key_offsets": key_offsets, "key_blob": key_blob,
            "span_offset": np.ascontiguousarray(span_array[:, 0]), "span_length": np.ascontiguousarray(span_array[:, 1]),
            "sample_sha256": digests, "edge": edge}


def manifest_arrays(manifest: Manifest) -> dict[str, np.ndarray]:
    """The index arrays of a (checked) manifest: every shard has a sha256 and spans; digests when version 2."""
    spans = [span for record in manifest.shards for span in record.samples]
    entries = [ShardEntry(r.name, r.bytes, r.sha256, ()) for r in manifest.shards]
    arrays = index_arrays(entries)
    counts = np.array([r.count for r in manifest.shards], dtype=np.int64)
    np.cumsum(counts, out=arrays["shard_start"][1:])
    digests = manifest.manifest_version >= 2 and bool(spans)
    arrays["shard_flags"][:] = HAS_SHA256 | HAS_SPANS | (HAS_DIGESTS if digests else 0)
    arrays["key_offsets"], arrays["key_blob"] = _blob([span.key for span in spans])
    arrays["span_offset"] = np.fromiter((span.offset for span in spans), dtype=np.int64, count=len(spans))
    arrays["span_length"] = np.fromiter((span.length for span in spans), dtype=np.int64, count=len(spans))
    if digests:
        arrays["sample_sha256"] = _digest_array([span.sha256 for span in spans])  # type: ignore[misc]
    if any(span.edge for span in spans):
        arrays["edge"] = np.fromiter((span.edge for span in spans), dtype=np.uint8, count=len(spans))
    return arrays


def _pad(n: int) -> int:
    return -n % _ALIGN


def encode_index(arrays: dict[str, np.ndarray], *, manifest_sha256: str | None) -> bytes:
    """The index file's bytes (deterministic: the same arrays and manifest digest give the same bytes)."""
    body, layout = bytearray(), []
    for name, dtype, tail in ARRAYS:
        array = np.ascontiguousarray(arrays[name], dtype=np.dtype(dtype))
        if array.shape[1:] != tail:
            raise ValueError(f"index array {name}: shape {array.shape}, expected (n, {', '.join(map(str, tail))})")
        layout.append([name, dtype, list(array.shape), len(body)])
        body += array.tobytes()
        body += b"\0" * _pad(len(body))
    header = {"format": FORMAT, "manifest_sha256": manifest_sha256, "arrays": layout,
              "body_sha256": hashlib.sha256(body).hexdigest()}
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    head = MAGIC + len(text).to_bytes(8, "little") + text
    return head + b"\0" * _pad(len(head)) + bytes(body)


def _parse_header(buffer: Any, source: str) -> tuple[dict[str, Any], int]:
    """(header, body start) of an index file's bytes; ``ValueError`` naming ``source`` if it is not one."""
    if len(buffer) < 16 or bytes(buffer[:8]) != MAGIC:
        raise ValueError(f"index {source}: not a sample index of format {FORMAT} (bad magic)")
    size = int.from_bytes(bytes(buffer[8:16]), "little")
    if 16 + size > len(buffer):
        raise ValueError(f"index {source}: truncated header")
    try:
        header = json.loads(bytes(buffer[16:16 + size]).decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"index {source}: unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"index {source}: format {header.get('format') if isinstance(header, dict) else None!r}, "
                         f"this reader knows {FORMAT}")
    return header, 16 + size + _pad(16 + size)


PER_SAMPLE = ("key_offsets", "key_blob", "span_offset", "span_length", "sample_sha256")  # read on demand


class FileArray:
    """A read-only array stored in a file, read element by element (``os.pread``) when indexed.

    Indexing with an integer gives the element (a row for 2-D arrays), with a ``start:stop`` slice a
    numpy array; nothing is mapped, so a process holds only what it asked for (a mapping would fault
    in 64 KB around every touched page: nearly the whole file for a worker's samples)."""

    def __init__(self, fd: int, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.fd, self.offset, self.dtype, self.shape = fd, offset, dtype, shape
        self.row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, stop: int) -> np.ndarray:
        data = os.pread(self.fd, (stop - start) * self.row, self.offset + start * self.row)
        if len(data) != (stop - start) * self.row:
            raise ValueError(f"index file (fd {self.fd}): truncated at row {start}")
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(self.shape[0])
            if step != 1:
                raise ValueError("FileArray slices take no step")
            return self._read(start, max(start, stop))
        j = int(i) + self.shape[0] if int(i) < 0 else int(i)
        if not 0 <= j < self.shape[0]:
            raise IndexError(f"row {i} out of range for {self.shape[0]} rows")
        return self._read(j, j + 1)[0]


def _arrays_of(fd: int, header: dict[str, Any], body: int, source: str) -> dict[str, Any]:
    """The arrays of the open index file ``fd``: the per-sample ones as ``FileArray``, the others (per
    shard, and the (N,) edge flags the plan needs whole) read into memory."""
    out: dict[str, Any] = {}
    expected = {name: (dtype, tail) for name, dtype, tail in ARRAYS}
    for name, dtype, shape, offset in header["arrays"]:
        if name not in expected or expected[name] != (dtype, tuple(shape[1:])):
            raise ValueError(f"index {source}: unexpected array {name} {dtype} {shape}")
        if name in PER_SAMPLE:
            out[name] = FileArray(fd, body + offset, np.dtype(dtype), tuple(shape))
            continue
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        chunk = os.pread(fd, nbytes, body + offset)
        if len(chunk) != nbytes:
            raise ValueError(f"index {source}: truncated (array {name})")
        out[name] = np.frombuffer(chunk, dtype=np.dtype(dtype)).reshape(shape)
    if set(out) != set(expected):
        raise ValueError(f"index {source}: missing arrays {sorted(set(expected) - set(out))}")
    return out


@dataclass(frozen=True, eq=False)
class SampleIndex:
    """The index arrays (``ARRAYS``) and, when read from a file, its path and body sha256."""

    arrays: dict[str, np.ndarray]
    path: str | None = None
    body_sha256: str | None = None
    manifest_sha256: str | None = None

    @classmethod
    def from_entries(cls, entries: Sequence[ShardEntry]) -> SampleIndex:
        """An in-memory index of ``entries`` (not file-backed: it pickles with its arrays)."""
        return cls(index_arrays(entries))

    def __reduce__(self) -> tuple[Any, ...]:
        if self.path is None:
            return (SampleIndex, (self.arrays, None, None, self.manifest_sha256))
        return (open_index_file, (self.path, self.body_sha256))

    @property
    def num_shards(self) -> int:
        return int(self.arrays["shard_bytes"].shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.arrays["shard_start"][-1])

    def shard_name(self, shard: int) -> str:
        offsets = self.arrays["shard_name_offsets"]
        return self.arrays["shard_name_blob"][offsets[shard]:offsets[shard + 1]].tobytes().decode("utf-8")

    def key(self, sample: int) -> str:
        """Key of global sample ``sample`` (manifest order)."""
        lo, hi = self.arrays["key_offsets"][sample:sample + 2].tolist()
        return self.arrays["key_blob"][lo:hi].tobytes().decode("utf-8")

    def keep_mask(self, *, include_edges: bool) -> np.ndarray | None:
        """(N,) bool: samples not flagged as edge samples; None when every sample is kept."""
        edge = self.arrays["edge"]
        return None if include_edges or edge.shape[0] == 0 else edge == 0

    def entry(self, shard: int) -> ShardEntry:
        """``ShardEntry`` of shard ``shard`` whose keys / spans / digests / edges are views of the arrays."""
        a = self.arrays
        lo, hi, flags = int(a["shard_start"][shard]), int(a["shard_start"][shard + 1]), int(a["shard_flags"][shard])
        has_edges = a["edge"].shape[0] > 0 and bool(a["edge"][lo:hi].any())
        return ShardEntry(
            self.shard_name(shard), int(a["shard_bytes"][shard]),
            a["shard_sha256"][shard].tobytes().hex() if flags & HAS_SHA256 else None,
            IndexColumn(self, "key", lo, hi),
            IndexColumn(self, "span", lo, hi) if flags & HAS_SPANS else None,
            IndexColumn(self, "digest", lo, hi) if flags & HAS_DIGESTS else None,
            IndexColumn(self, "edge", lo, hi) if has_edges else None)

    def entries(self) -> tuple[ShardEntry, ...]:
        return tuple(self.entry(s) for s in range(self.num_shards))


class IndexColumn(Sequence):  # type: ignore[type-arg]
    """One shard's keys, spans ``(offset, length)``, digests (hex) or edge flags, read from a ``SampleIndex``."""

    __slots__ = ("source", "kind", "lo", "hi")

    def __init__(self, index: SampleIndex, kind: str, lo: int, hi: int) -> None:
        if kind not in ("key", "span", "digest", "edge"):
            raise ValueError(f"column kind {kind!r}; allowed: 'key', 'span', 'digest', 'edge'")
        self.source, self.kind, self.lo, self.hi = index, kind, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def _item(self, i: int) -> Any:
        a, g = self.source.arrays, self.lo + i
        if self.kind == "key":
            return self.source.key(g)
        if self.kind == "span":
            return int(a["span_offset"][g]), int(a["span_length"][g])
        if self.kind == "digest":
            return a["sample_sha256"][g].tobytes().hex()
        return bool(a["edge"][g])

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return tuple(self._item(j) for j in range(*i.indices(len(self))))
        j = int(i) + len(self) if int(i) < 0 else int(i)
        if not 0 <= j < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        return self._item(j)

    def __iter__(self) -> Iterator[Any]:
        return (self._item(j) for j in range(len(self)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"IndexColumn({self.kind}, samples [{self.lo}, {self.hi}))"


_OPEN: dict[str, tuple[tuple[int, int, int], SampleIndex]] = {}  # path -> (file identity, index) opened here


def open_index_file(path: str | os.PathLike[str], body_sha256: str | None = None, *,
                    check_body: bool = False) -> SampleIndex:
    """Open the index file ``path`` read-only (once per process, path and file).

    ``body_sha256``: the digest its header must name (a replaced file is refused); ``check_body``:
    also hash the body and compare (done once by the process that resolves the index)."""
    key = os.fspath(path)
    stat = os.stat(key)
    identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    known = _OPEN.get(key)
    if known is not None and known[0] == identity:
        index = known[1]
    else:
        fd = os.open(key, os.O_RDONLY)  # kept open for the process: its FileArrays read through it
        try:
            head = os.pread(fd, 1 << 20, 0)
            header, body = _parse_header(head, key)
            index = SampleIndex(_arrays_of(fd, header, body, key), key, header["body_sha256"],
                                header["manifest_sha256"])
            if check_body and _file_sha256(key, body) != header["body_sha256"]:
                raise ValueError(f"index {key}: body sha256 differs from its header: the file was altered")
        except BaseException:
            os.close(fd)
            raise
        _OPEN[key] = (identity, index)
    if body_sha256 is not None and index.body_sha256 != body_sha256:
        raise ValueError(f"index {key}: body sha256 {index.body_sha256}, expected {body_sha256} (the file was replaced)")
    return index


def _file_sha256(path: str, offset: int) -> str:
    """sha256 of the file's bytes from ``offset``, read in 1 MiB pieces (through the page cache, so the
    hash maps none of the file's pages into this process)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_index_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary beside it, fsynced, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
