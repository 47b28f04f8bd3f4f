"""nuScenes-panoptic labels of the synthetic nuScenes writer (``dynamo_depth.synth.nuscenes``).

Format (nuScenes-panoptic): ``panoptic/<version>/<lidar sample_data token>_panoptic.npz`` holding ``data``,
uint16 per LiDAR point = category index (``category.json`` ``index``) * 1000 + instance id (0: none), and a
``panoptic.json`` table of ``{token, sample_data_token, filename}``. Ground points are ``flat.driveable_surface``
(instance 0), a point on world box b is its box's category with instance b + 1. The .npz is written with fixed
member timestamps (``np.savez_compressed`` stamps the current time), so the bytes are reproducible.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["GROUND_CATEGORY", "npz_bytes", "panoptic_values", "write_panoptic"]

GROUND_CATEGORY = "flat.driveable_surface"


def panoptic_values(surface: np.ndarray, categories: list[str], index: dict[str, int]) -> np.ndarray:
    """(M,) uint16 nuScenes-panoptic labels of points with surface ids (0 ground, b + 1 world box b)."""
    per_surface = [index[GROUND_CATEGORY] * 1000] + [index[c] * 1000 + b + 1 for b, c in enumerate(categories)]
    return np.asarray(per_surface, dtype=np.uint16)[np.asarray(surface, dtype=np.int64)]


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An ``np.load``-able .npz (deflated zip) with fixed member timestamps: byte-reproducible."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in sorted(arrays.items()):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def write_panoptic(root: Path, version: str, entries: list[dict], categories: list[dict]) -> list[dict]:
    """Write one label file per entry (``token``, ``surface`` ids, world box ``categories``); the table records."""
    index = {c["name"]: c["index"] for c in categories}
    records = []
    for entry in entries:
        filename = f"panoptic/{version}/{entry['token']}_panoptic.npz"
        path = Path(root) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(npz_bytes(data=panoptic_values(entry["surface"], entry["categories"], index)))
        records.append({"token": entry["token"], "sample_data_token": entry["token"], "filename": filename})
    return records
