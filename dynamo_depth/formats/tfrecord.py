"""TFRecord framing with masked CRC32C, read and write, without TensorFlow.

A TFRecord file is a sequence of records, each framed as (little endian)::

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

``masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xA282EAD8`` (mod 2**32), with ``crc`` the
CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF).

``crc32c`` uses the C implementation of ``google-crc32c`` (pinned in requirements.txt; ~5 GB/s with
SSE4.2) when it is importable with its C extension. Without it the CRC is computed in numpy (~140
MB/s): the data is cut into many equal chunks whose CRCs run in parallel (slicing-by-4 per step
across all chunks), then the chunk CRCs are merged in a binary tree with the GF(2)-linear "append n
zero bytes" operator. Both give the same values (a test checks them against a bit-at-a-time CRC).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_SMALL = 1 << 14  # below this many bytes the plain table loop is faster than the numpy path
_CHUNK_WORDS = 32  # 4-byte words per parallel chunk


class TFRecordError(ValueError):
    """A TFRecord file is corrupt or truncated; names the file and the byte offset of the record."""

    def __init__(self, path: str | os.PathLike, offset: int, reason: str) -> None:
        super().__init__(f"TFRecord {os.fspath(path)!r}, record at byte offset {offset}: {reason}")
        self.path, self.offset, self.reason = os.fspath(path), offset, reason


def _make_tables() -> np.ndarray:
    """(4, 256) uint32 slicing-by-4 tables; row 0 is the classic byte-at-a-time table."""
    table = np.zeros((4, 256), dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLY if crc & 1 else 0)
        table[0, byte] = crc
    for k in range(1, 4):
        table[k] = table[0][table[k - 1] & 0xFF] ^ (table[k - 1] >> 8)
    return table


_TABLES = _make_tables()
_T0_LIST = [int(v) for v in _TABLES[0]]


def _raw_crc_small(data: bytes | memoryview, crc: int = 0) -> int:
    """Un-inverted CRC register after feeding ``data`` from state ``crc`` (pure python)."""
    table = _T0_LIST
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _gf2_apply(columns: tuple[int, ...], value: int) -> int:
    """Apply a 32x32 GF(2) matrix given as the images of the 32 unit vectors."""
    out, bit = 0, 0
    while value:
        if value & 1:
            out ^= columns[bit]
        value >>= 1
        bit += 1
    return out


@lru_cache(maxsize=64)
def _zeros_operator(log2_bytes: int) -> tuple[int, ...]:
    """Matrix of "append 2**log2_bytes zero bytes" acting on the CRC register (init 0 semantics)."""
    if log2_bytes == 0:
        return tuple(_raw_crc_small(b"\x00", 1 << bit) for bit in range(32))
    half = _zeros_operator(log2_bytes - 1)
    return tuple(_gf2_apply(half, col) for col in half)


def _shift(value: int, n_bytes: int) -> int:
    """CRC register after appending ``n_bytes`` zero bytes to a message whose register is ``value``."""
    level = 0
    while n_bytes:
        if n_bytes & 1:
            value = _gf2_apply(_zeros_operator(level), value)
        n_bytes >>= 1
        level += 1
    return value


@lru_cache(maxsize=64)
def _operator_tables(log2_bytes: int) -> np.ndarray:
    """(4, 256) uint32 lookup tables applying ``_zeros_operator(log2_bytes)`` one byte at a time."""
    columns = np.array(_zeros_operator(log2_bytes), dtype=np.uint32)
    values = np.arange(256, dtype=np.uint32)
    tables = np.zeros((4, 256), dtype=np.uint32)
    for k in range(4):
        for bit in range(8):
            tables[k] ^= np.where((values >> bit) & 1, columns[8 * k + bit], 0).astype(np.uint32)
    return tables


def _apply_tables(tables: np.ndarray, values: np.ndarray) -> np.ndarray:
    return (tables[0][values & 0xFF] ^ tables[1][(values >> 8) & 0xFF]
            ^ tables[2][(values >> 16) & 0xFF] ^ tables[3][values >> 24])


def _raw_crc_numpy(data: bytes | memoryview) -> int:
    """Register of CRC-32C with init 0 and no final xor, chunk-parallel in numpy."""
    chunk_bytes = 4 * _CHUNK_WORDS
    n_chunks = 1 << max(0, int(np.ceil(np.log2(max(1, -(-len(data) // chunk_bytes))))))
    pad = n_chunks * chunk_bytes - len(data)
    # Leading zero bytes leave an init-0 CRC register unchanged, so pad at the front.
    buffer = np.zeros(n_chunks * chunk_bytes, dtype=np.uint8)
    buffer[pad:] = np.frombuffer(data, dtype=np.uint8)
    words = np.ascontiguousarray(buffer.view("<u4").reshape(n_chunks, _CHUNK_WORDS).T)
    t0, t1, t2, t3 = _TABLES[0], _TABLES[1], _TABLES[2], _TABLES[3]
    state = np.zeros(n_chunks, dtype=np.uint32)
    for row in words:
        state ^= row
        state = t3[state & 0xFF] ^ t2[(state >> 8) & 0xFF] ^ t1[(state >> 16) & 0xFF] ^ t0[state >> 24]
    level = int(np.log2(chunk_bytes))
    while state.size > 1:
        state = _apply_tables(_operator_tables(level), state[0::2]) ^ state[1::2]
        level += 1
    return int(state[0])


def _c_crc32c() -> Callable[[bytes | bytearray | memoryview], int] | None:
    """``google_crc32c.value`` when the package and its C extension are installed, else None."""
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c.value if google_crc32c.implementation == "c" else None


_C_CRC32C = _c_crc32c()


def crc32c_numpy(data: bytes | bytearray | memoryview) -> int:
    """``crc32c`` computed without the C package (pure python below 16 KiB, chunk-parallel numpy above)."""
    view = memoryview(data).cast("B")
    raw = _raw_crc_small(view) if len(view) < _SMALL else _raw_crc_numpy(view)
    return raw ^ _shift(0xFFFFFFFF, len(view)) ^ 0xFFFFFFFF


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data`` as an unsigned 32-bit int; crc32c(b"123456789") == 0xE3069283."""
    if _C_CRC32C is not None:
        return _C_CRC32C(data if isinstance(data, bytes) else bytes(data))
    return crc32c_numpy(data)


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """The TFRecord checksum: the CRC rotated right by 15 bits plus 0xA282EAD8 (mod 2**32)."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _read_exact(handle, size: int, path: Path, offset: int, what: str) -> bytes:
    chunk = handle.read(size)
    if len(chunk) != size:
        raise TFRecordError(path, offset, f"truncated {what}: expected {size} bytes, file has {len(chunk)}")
    return chunk


def iter_records(path: str | os.PathLike, *, verify: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, payload)`` for each record of a TFRecord file, in file order.

    ``offset`` is the byte offset of the record's length header. With ``verify`` both masked CRCs are
    checked; a bad CRC or a truncated record raises ``TFRecordError`` naming file and offset. A length
    header larger than the rest of the file (truncated file, or a corrupt length read with
    ``verify=False``) is reported before anything is allocated for it.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        status = os.fstat(handle.fileno())
        file_size = status.st_size if stat.S_ISREG(status.st_mode) else None  # None: a pipe, size unknown
        offset = 0
        while True:
            header = handle.read(12)
            if not header:
                return
            if len(header) != 12:
                raise TFRecordError(path, offset, f"truncated header: {len(header)} of 12 bytes")
            (length,) = struct.unpack("<Q", header[:8])
            if verify and struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                raise TFRecordError(path, offset, "length CRC32C mismatch (corrupt header)")
            if file_size is not None and length > file_size - (offset + 12):
                raise TFRecordError(path, offset, f"truncated payload: the length header says {length} bytes, only "
                                    f"{file_size - (offset + 12)} are left in the file (truncated file or corrupt length)")
            payload = _read_exact(handle, length, path, offset, "payload")
            footer = _read_exact(handle, 4, path, offset, "payload CRC")
            if verify and struct.unpack("<I", footer)[0] != masked_crc32c(payload):
                raise TFRecordError(path, offset, "payload CRC32C mismatch (corrupt data)")
            yield offset, payload
            offset += 16 + length


def frame_record(payload: bytes) -> bytes:
    """One record's bytes: header, payload, payload CRC."""
    length = struct.pack("<Q", len(payload))
    return b"".join((length, struct.pack("<I", masked_crc32c(length)), payload,
                     struct.pack("<I", masked_crc32c(payload))))


def write_records(path: str | os.PathLike, payloads: Iterable[bytes]) -> int:
    """Write ``payloads`` as a TFRecord file (atomically: ``.tmp`` then rename); returns the byte count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    total = 0
    with open(tmp, "wb") as handle:
        for payload in payloads:
            record = frame_record(bytes(payload))
            handle.write(record)
            total += len(record)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return total
