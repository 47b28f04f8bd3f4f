"""Reading raw camera images for the builders: one decoder, clear errors naming the file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

try:
    from isal.isal_zlib import crc32  # ISA-L: ~40x zlib's CRC-32 speed
except ImportError:
    from zlib import crc32

END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}
"""What a complete file of each format ends with (JPEG: within its last 16 bytes)."""


def read_image_bgr(path: Path, *, kind: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR of a PNG or JPEG file; ValueError naming the file when missing or corrupt."""
    import cv2

    if kind not in END_MARKERS:
        raise ValueError(f"kind {kind!r}; allowed: {sorted(END_MARKERS)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read image ({exc.strerror})") from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    complete = data.endswith(END_MARKERS[kind]) if kind == "PNG" else END_MARKERS[kind] in data[-16:]
    if image is None or not complete:
        raise ValueError(f"{path}: corrupt or truncated {kind} ({len(data)} bytes)")
    return image


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks_intact(data: bytes) -> bool:
    """True when ``data`` is a PNG whose every chunk is complete and matches its CRC-32, ending at IEND.

    What libpng checks while decoding and some faster decoders (libspng as ``pyspng`` builds it) skip:
    run it before handing them a file, so that a damaged file is an error, never wrong pixels.
    """
    if not data.startswith(PNG_SIGNATURE):
        return False
    view, pos = memoryview(data), len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data) or crc32(view[pos + 4:end]) != struct.unpack_from(">I", data, end)[0]:
            return False
        if data[pos + 4:pos + 8] == b"IEND":
            return end + 4 == len(data)
        pos = end + 4
    return False
