"""Large synthetic manifests, written fast as canonical text (no shards behind them).

``manifest_text(n)`` is exactly ``canonical_json`` of the manifest it describes (tested), built with
string formatting instead of dataclasses so that 2M samples take seconds. Keys look like Waymo's
(``segment-..._with_camera_labels_<CAMERA>_<frame>``, ~70 characters), spans ~1 MB, 200 samples per
shard, a per-sample sha256 (manifest version 2), every ``edge_every``-th sample an edge sample.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CAMERAS = ("FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT")
BLOCK = 512


def synthetic_key(i: int) -> str:
    segment, camera, frame = i // 1000, CAMERAS[(i // 200) % 5], i % 200
    return f"segment-{segment:020d}_{segment % 9000:04d}_000_with_camera_labels_{camera}_{frame:06d}"


def _shard_lines(first: int, count: int, *, index: int, edge_every: int | None) -> list[str]:
    lines, offset = [], 0
    keys = [synthetic_key(first + j) for j in range(count)]
    samples = []
    for j, key in enumerate(keys):
        length = BLOCK * (2000 + (first + j) % 97)
        edge = '     "edge": true,\n' if edge_every and (first + j) % edge_every == 0 else ""
        samples.append(f'    {{\n{edge}     "key": "{key}",\n     "length": {length},\n     "offset": {offset},\n'
                       f'     "sha256": "{hashlib.sha256(key.encode()).hexdigest()}"\n    }}')
        offset += length
    shard_sha = hashlib.sha256(f"shard {index}".encode()).hexdigest()
    lines.append(f'  {{\n   "bytes": {offset + 2 * BLOCK},\n   "count": {count},\n   "first_key": "{keys[0]}",\n'
                 f'   "last_key": "{keys[-1]}",\n   "name": "waymo-train-{index:06d}.tar",\n   "samples": [\n'
                 + ",\n".join(samples) + f'\n   ],\n   "sha256": "{shard_sha}"\n  }}')
    return lines


def manifest_text(n: int, *, per_shard: int = 200, edge_every: int | None = None) -> str:
    """Canonical JSON of a version-2 Waymo-like manifest of ``n`` samples (``per_shard`` per shard)."""
    shards = []
    for index, first in enumerate(range(0, n, per_shard)):
        shards += _shard_lines(first, min(per_shard, n - first), index=index, edge_every=edge_every)
    return ('{\n "builder": "bench",\n "builder_version": "0",\n "dataset": "waymo",\n "failed": [],\n'
            ' "manifest_version": 2,\n "options": {},\n "schema_version": 1,\n "shards": [\n'
            + ",\n".join(shards) + '\n ],\n "split": "train",\n "units": []\n}\n')


def write_manifest(folder: Path, n: int, **kw: int | None) -> Path:
    """``folder/manifest.json`` of ``manifest_text(n, **kw)``; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    path.write_text(manifest_text(n, **kw), encoding="ascii")  # type: ignore[arg-type]
    return path
