"""Builder registry: name -> ``BuilderSpec`` (imported lazily so heavy deps load only when used)."""

from __future__ import annotations

import importlib

from builders.spec import BuilderSpec

_BUILDERS: dict[str, str] = {
    "kitti": "builders.kitti",
    "nuscenes": "builders.nuscenes",
    "waymo": "builders.waymo",
    "video": "builders.video",
}


def available_builders() -> list[str]:
    return sorted(_BUILDERS)


def get_builder(name: str) -> BuilderSpec:
    """The ``SPEC`` of builder ``name``; ``ValueError`` listing the allowed names otherwise."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown builder {name!r}; allowed: {available_builders()}")
    return importlib.import_module(_BUILDERS[name]).SPEC
