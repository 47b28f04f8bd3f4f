"""Inflate a nuScenes dataroot's tables to many scenes, records only (no new sensor files).

``inflate_tables(dataroot, version, copies=N)`` appends N copies of every scene's records to the tables:
scene, sample, sample_data, ego_pose, sample_annotation and instance records with new tokens (every token
of a copied record that points at another copied record is remapped), scene names suffixed ``-copyNNNN``;
the copies' sample_data point at the original sensor files. Calibrations, logs, maps and the fixed tables
are shared; panoptic / lidarseg records are not copied (the devkit requires one label file per record), so
the copies have no motion labels. Used to measure what table size costs the builder (``bench/``) and to
pin that a scene task's payload does not grow with the number of other scenes (tests). Deterministic:
the new tokens are sha1 of (token, copy index).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["COPIED_TABLES", "inflate_tables"]

COPIED_TABLES = ("scene", "sample", "sample_data", "ego_pose", "sample_annotation", "instance")


def _copy_token(token: str, copy: int) -> str:
    return hashlib.sha1(f"{token}/copy{copy}".encode()).hexdigest()[:32]


def _remapped(value: Any, tokens: dict[str, str]) -> Any:
    if isinstance(value, str):
        return tokens.get(value, value)
    if isinstance(value, list):
        return [_remapped(v, tokens) for v in value]
    return value


def inflate_tables(dataroot: str | Path, version: str, *, copies: int) -> dict[str, int]:
    """Append ``copies`` copies of every scene's records to ``dataroot/version/*.json``; return record counts."""
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}")
    folder = Path(dataroot) / version
    tables = {name: json.loads((folder / f"{name}.json").read_text()) for name in COPIED_TABLES}
    originals = {name: list(records) for name, records in tables.items()}
    own = {r["token"] for records in originals.values() for r in records}
    for copy in range(1, copies + 1):
        tokens = {token: _copy_token(token, copy) for token in own}
        for name, records in originals.items():
            for record in records:
                clone = {key: _remapped(value, tokens) for key, value in record.items()}
                if name == "scene":
                    clone["name"] = f"{record['name']}-copy{copy:04d}"
                tables[name].append(clone)
    for name, records in tables.items():
        path = folder / f"{name}.json"
        if path.is_symlink():
            path.unlink()  # a linked copy of a dataroot: never write through to the original
        path.write_text(json.dumps(records, sort_keys=True, separators=(",", ":")) + "\n")
    return {name: len(records) for name, records in tables.items()}
