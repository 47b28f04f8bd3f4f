"""``manifest.json``: the record of one dataset/split build, beside its shards.

Layout (docs/ARCHITECTURE.md)::

    {"manifest_version": 2, "schema_version": 2, "dataset": "kitti", "split": "train",
     "builder": "builders.kitti", "builder_version": "1.0.0", "options": {...},
     "shards": [ShardRecord.to_json(), ...],
     "units": [{"name": ..., "samples": 8, "skipped": 2, "notes": []}],
     "failed": [{"unit": ..., "error": "file ...: reason"}]}

Versions: 2 (what ``ShardWriter`` builds write) adds ``"sha256"`` of the span bytes to every
``samples[i]`` entry, so a reader checks each sample before using it; 1 (older builds, e.g. reference
manifests committed before) has no per-sample digest and still loads: its readers check whole shards.
A manifest is one or the other: every sample has a digest (2) or none has (1).

Saved canonically (sorted keys, ``indent=1``, ASCII, trailing newline) and atomically, so identical
builds give identical bytes. Loading is strict: unknown or missing fields, unsafe shard names
(absolute, ``/``, ``\\``, ``..``) and inconsistent shard records raise ``ValueError`` naming the
manifest.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from dynamo_depth.shards import storage
from dynamo_depth.shards.records import ShardRecord
from dynamo_depth.shards.schema import READABLE_VERSIONS, SCHEMA_VERSION

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "MANIFEST_VERSIONS",
    "FailedUnit",
    "Manifest",
    "UnitRecord",
    "canonical_json",
    "find_manifest",
    "load_manifest",
    "parse_manifest",
    "read_manifest_bytes",
    "save_manifest",
]

MANIFEST_VERSION = 2  # what builds write
MANIFEST_VERSIONS = (1, 2)  # what this reader loads
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class UnitRecord:
    """One finished build unit (a sequence/camera): samples written, frames skipped, notes (gaps...)."""

    name: str
    samples: int
    skipped: int = 0
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "samples": self.samples, "skipped": self.skipped, "notes": list(self.notes)}

    @classmethod
    def from_json(cls, obj: Any) -> UnitRecord:
        _check_fields(obj, {"name", "samples", "skipped", "notes"}, "unit")
        name, notes = obj["name"], obj["notes"]
        if not isinstance(name, str) or not name:
            raise ValueError(f"unit name {name!r} must be a non-empty string")
        for key in ("samples", "skipped"):
            if not _is_count(obj[key]):
                raise ValueError(f"unit {name!r}: {key} {obj[key]!r} must be a non-negative integer")
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ValueError(f"unit {name!r}: notes must be a list of strings")
        return cls(name=name, samples=obj["samples"], skipped=obj["skipped"], notes=tuple(notes))


@dataclass(frozen=True)
class FailedUnit:
    """A unit that could not be built and why (the error names the file and the reason)."""

    unit: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "error": self.error}

    @classmethod
    def from_json(cls, obj: Any) -> FailedUnit:
        _check_fields(obj, {"unit", "error"}, "failed unit")
        if not isinstance(obj["unit"], str) or not isinstance(obj["error"], str):
            raise ValueError(f"failed unit {obj['unit']!r}: unit and error must be strings")
        return cls(unit=obj["unit"], error=obj["error"])


@dataclass(frozen=True)
class Manifest:
    """Everything a reader or ``verify`` needs to know about one dataset/split build."""

    dataset: str
    split: str
    builder: str
    builder_version: str
    options: Mapping[str, Any] = field(default_factory=dict)
    shards: tuple[ShardRecord, ...] = ()
    units: tuple[UnitRecord, ...] = ()
    failed: tuple[FailedUnit, ...] = ()
    schema_version: int = SCHEMA_VERSION  # the schema version of its samples
    manifest_version: int | None = None  # None: 2 when the samples carry sha256 digests, 1 when none does

    def __post_init__(self) -> None:
        # Options are stored as plain JSON (tuples become lists) so a loaded manifest equals the saved one.
        object.__setattr__(self, "options", _plain(self.options))
        object.__setattr__(self, "shards", tuple(self.shards))
        object.__setattr__(self, "units", tuple(self.units))
        object.__setattr__(self, "failed", tuple(self.failed))
        object.__setattr__(self, "manifest_version", _version_of(self.shards, self.manifest_version))

    @property
    def num_samples(self) -> int:
        return sum(s.count for s in self.shards)

    def shard(self, name: str) -> ShardRecord:
        """The record of shard ``name``; ``KeyError`` if absent."""
        for record in self.shards:
            if record.name == name:
                return record
        raise KeyError(name)

    def with_shards(self, shards: tuple[ShardRecord, ...]) -> Manifest:
        """A copy with ``shards`` (its version follows their per-sample digests)."""
        return replace(self, shards=tuple(shards), manifest_version=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest_version": self.manifest_version, "schema_version": self.schema_version,
            "dataset": self.dataset, "split": self.split,
            "builder": self.builder, "builder_version": self.builder_version,
            "options": _plain(self.options),
            "shards": [s.to_json() for s in self.shards],
            "units": [u.to_json() for u in self.units],
            "failed": [f.to_json() for f in self.failed],
        }

    @classmethod
    def from_json(cls, obj: Any) -> Manifest:
        """Parse and check a manifest object (``ValueError`` on any problem)."""
        fields = {"manifest_version", "schema_version", "dataset", "split", "builder", "builder_version",
                  "options", "shards", "units", "failed"}
        _check_fields(obj, fields, "manifest")
        if obj["manifest_version"] not in MANIFEST_VERSIONS or isinstance(obj["manifest_version"], bool):
            raise ValueError(f"manifest_version {obj['manifest_version']!r}; this reader knows "
                             f"{' and '.join(map(str, MANIFEST_VERSIONS))}")
        if obj["schema_version"] not in READABLE_VERSIONS or isinstance(obj["schema_version"], bool):
            raise ValueError(f"schema_version {obj['schema_version']!r}; this reader knows {READABLE_VERSIONS}")
        for key in ("dataset", "split", "builder", "builder_version"):
            if not isinstance(obj[key], str):
                raise ValueError(f"{key} {obj[key]!r} must be a string")
        if not isinstance(obj["options"], dict):
            raise ValueError("options must be a JSON object")
        for key in ("shards", "units", "failed"):
            if not isinstance(obj[key], list):
                raise ValueError(f"{key} must be a list")
        shards = tuple(ShardRecord.from_json(s) for s in obj["shards"])
        names = [s.name for s in shards]
        if len(set(names)) != len(names):
            raise ValueError(f"shard names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
        return cls(
            manifest_version=obj["manifest_version"], schema_version=obj["schema_version"],
            dataset=obj["dataset"], split=obj["split"],
            builder=obj["builder"], builder_version=obj["builder_version"], options=dict(obj["options"]),
            shards=shards, units=tuple(UnitRecord.from_json(u) for u in obj["units"]),
            failed=tuple(FailedUnit.from_json(f) for f in obj["failed"]),
        )


def _version_of(shards: tuple[ShardRecord, ...], declared: int | None) -> int:
    """The manifest version these shard records make: 2 if every sample has a sha256, 1 if none has;
    ``ValueError`` if they mix, or if ``declared`` (when given) disagrees."""
    spans = [span for shard in shards for span in shard.samples]
    with_digest = [span for span in spans if span.sha256 is not None]
    if with_digest and len(with_digest) != len(spans):
        bare = next(span for shard in shards for span in shard.samples if span.sha256 is None)
        raise ValueError(f"samples mix manifest versions: {len(with_digest)} of {len(spans)} have a sha256, "
                         f"sample {bare.key!r} has none")
    derived = 2 if with_digest or not spans else 1
    if declared is None:
        return derived
    if declared not in MANIFEST_VERSIONS:
        raise ValueError(f"manifest_version {declared!r}; this reader knows {' and '.join(map(str, MANIFEST_VERSIONS))}")
    if spans and declared != derived:
        need = "every sample needs a sha256" if declared == 2 else "samples must not have a sha256"
        raise ValueError(f"manifest_version {declared}: {need} (sample {spans[0].key!r})")
    return declared


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_fields(obj: Any, fields: set[str], what: str) -> None:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(obj).__name__}")
    missing, unknown = sorted(fields - set(obj)), sorted(set(obj) - fields)
    if missing:
        raise ValueError(f"{what}: missing fields {missing}")
    if unknown:
        raise ValueError(f"{what}: unknown fields {unknown}")


def _plain(obj: Any) -> Any:
    """Options as plain JSON (tuples become lists, mappings get string keys)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building or parsing a manifest makes millions of containers,
    and the collections they trigger grow with all live objects (400k samples: 8 s -> 5 s to parse)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def canonical_json(manifest: Manifest) -> bytes:
    """The canonical bytes of ``manifest``: sorted keys, indent 1, ASCII, trailing newline."""
    with _gc_paused():
        text = json.dumps(manifest.to_json(), sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False)
    return (text + "\n").encode("ascii")


def find_manifest(url: str) -> str:
    """URL of the manifest for ``url``: ``url`` itself if it names a ``.json`` file, else ``url/manifest.json``."""
    url = str(url)
    if url.rstrip("/").endswith(".json"):
        return url.rstrip("/")
    return storage.join(url, MANIFEST_NAME)


def load_manifest(url: str) -> Manifest:
    """Load and check the manifest at ``url`` (a folder or a ``.../manifest.json``, local or remote)."""
    path = find_manifest(url)
    return parse_manifest(read_manifest_bytes(path), path)


def read_manifest_bytes(path: str) -> bytes:
    """The bytes of the manifest file at ``path`` (``FileNotFoundError`` naming it when absent)."""
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest {path}: not found") from None


def parse_manifest(raw: bytes, path: str) -> Manifest:
    """Parse and check manifest bytes read from ``path`` (``ValueError`` naming ``path`` on any problem)."""
    with _gc_paused():
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"manifest {path}: not valid UTF-8 JSON: {exc}") from None
        try:
            return Manifest.from_json(obj)
        except ValueError as exc:
            raise ValueError(f"manifest {path}: {exc}") from None


def save_manifest(manifest: Manifest, url: str) -> str:
    """Write ``manifest`` canonically and atomically to ``url`` (folder or ``.json``); return its URL."""
    path = find_manifest(url)
    storage.write_bytes_atomic(path, canonical_json(manifest))
    return path
