"""Reading raw camera images for the builders: one decoder, clear errors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
