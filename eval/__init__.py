"""Evaluation command lines: ``python -m eval.depth``, ``eval.motion_segmentation``, ``eval.odometry``.

Shared helpers of the three CLIs live here: reading built shards in order, reading prediction
files, writing the report. Metrics themselves are in ``dynamo_depth.evaluation.metrics``.

Data (``--data``): a manifest (any ``*.json``, e.g. ``manifests/kitti-synth.json`` or
``.../manifest.json``), a folder / object-store prefix, or one shard file ``*.tar``. With a manifest
(given, or the folder's ``manifest.json``) exactly its shards are read, in manifest order, and each
one's size, keys and sha256 are checked while streaming: with per-sample digests (manifest version 2)
each sample is checked before it is decoded, and an altered one is an error naming its key, shard
and byte offset; at a shard's end (and with version 1 only there) an altered shard is an error naming it;
other ``*.tar`` files in the folder (stale shards, other splits) are ignored. A folder without a
manifest still works (all ``*.tar``, sorted by name, unchecked) with a warning; a single ``*.tar``
is checked against the ``manifest.json`` beside it when that lists it. Local paths and ``s3://``
URLs both work (``dynamo_depth.shards.storage``). Evaluation reads every sample once, sequentially (no
shuffling, no rank split, no cache): it does not go through the training loader.

Predictions (``--predictions FILE.npz``): an uncompressed or compressed ``.npz`` written with
``np.savez(path, **{sample_key: array})``: one array per sample, named by the sample key
(``{sequence}_{camera}_{frame:06d}``). Each CLI documents what its arrays hold.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EvalShards", "PredictionFile", "iter_samples", "list_shards", "resolve_shards", "rgb_from_jpeg",
           "write_report"]


@dataclass(frozen=True)
class EvalShards:
    """The shards ``--data`` names: ``names`` in reading order inside ``base_url``; ``entries`` are their
    manifest entries (size, sha256, keys: checked while streaming), or None when no manifest covers them."""

    base_url: str
    names: tuple[str, ...]
    entries: tuple[Any, ...] | None

    def urls(self) -> list[str]:
        from dynamo_depth.shards import storage

        return [storage.join(self.base_url, name) for name in self.names]


def resolve_shards(data_url: str) -> EvalShards:
    """What ``--data`` names (see module doc). A manifest fixes the shards and their order; a folder
    without one gives all its ``*.tar`` in name order, unchecked, with a warning."""
    from dynamo_depth.shards import manifest as manifest_mod
    from dynamo_depth.shards import storage

    url = os.fspath(data_url).rstrip("/")
    if url.endswith(".json"):
        return _from_manifest(url, url)
    if url.endswith(".tar"):
        return _single_shard(url)
    if storage.exists(storage.join(url, manifest_mod.MANIFEST_NAME)):
        return _from_manifest(url, storage.join(url, manifest_mod.MANIFEST_NAME))
    names = tuple(n for n in storage.listdir(url) if n.endswith(".tar"))
    if not names:
        raise ValueError(f"--data {url!r}: no *.tar shard found in {url!r} (and no {manifest_mod.MANIFEST_NAME})")
    warnings.warn(f"--data {url!r}: no {manifest_mod.MANIFEST_NAME}; evaluating all {len(names)} *.tar shards "
                  "in name order WITHOUT hash checks (stale or foreign shards would be read too)", stacklevel=3)
    return EvalShards(base_url=url, names=names, entries=None)


def _from_manifest(data_url: str, manifest_url: str) -> EvalShards:
    from dynamo_depth.data.sources import load_index
    from dynamo_depth.shards import storage

    if not storage.exists(manifest_url):
        raise ValueError(f"--data {data_url!r}: manifest {manifest_url!r} does not exist")
    base, entries = load_index(manifest_url)
    return EvalShards(base_url=base, names=tuple(e.name for e in entries), entries=entries)


def _single_shard(url: str) -> EvalShards:
    """One ``*.tar``: checked against the ``manifest.json`` beside it when that lists it."""
    from dynamo_depth.shards import manifest as manifest_mod
    from dynamo_depth.shards import storage

    if not storage.exists(url):
        raise ValueError(f"--data {url!r}: shard does not exist")
    base, name = storage.dirname(url), storage.basename(url)
    manifest_url = storage.join(base, manifest_mod.MANIFEST_NAME)
    if storage.exists(manifest_url):
        listed = [e for e in _from_manifest(url, manifest_url).entries or () if e.name == name]
        if listed:
            return EvalShards(base_url=base, names=(name,), entries=tuple(listed))
        warnings.warn(f"--data {url!r}: shard not listed in {manifest_url!r}; read WITHOUT hash check", stacklevel=4)
    else:
        warnings.warn(f"--data {url!r}: no {manifest_mod.MANIFEST_NAME} beside it; read WITHOUT hash check",
                      stacklevel=4)
    return EvalShards(base_url=base, names=(name,), entries=None)


def list_shards(data_url: str) -> list[str]:
    """URLs of the shards named by ``data_url`` in reading order (manifest order, else sorted names)."""
    return resolve_shards(data_url).urls()


def iter_samples(data_url: str, *, max_samples: int | None = None) -> Iterator[Any]:
    """Decoded ``TripletSample``s of the shards of ``data_url`` in order (at most ``max_samples``).

    Shards listed in a manifest are streamed through ``ShardStore``: with per-sample digests each
    sample's bytes are checked before it is decoded (``SampleIntegrityError``, a ``ValueError``, naming
    key, shard and byte offset); size, sample keys and sha256 of the shard are checked when its end is
    reached (``ShardIntegrityError`` naming the shard). A shard cut short by ``max_samples`` is not
    hashed whole, but every sample yielded was checked (version 2).
    """
    from dynamo_depth.shards.schema import decode

    if max_samples is not None and max_samples < 1:
        raise ValueError(f"--max-samples must be >= 1, got {max_samples}")
    count = 0
    shards = resolve_shards(data_url)
    for url, stream in _shard_streams(shards):
        with contextlib.closing(stream):
            try:
                for key, members in stream:
                    yield decode(members, key=key)
                    count += 1
                    if max_samples is not None and count >= max_samples:
                        return
            except FileNotFoundError as exc:
                raise ValueError(f"--data {data_url!r}: shard {url!r} is missing ({exc})") from exc


def _shard_streams(shards: EvalShards) -> Iterator[tuple[str, Iterator[tuple[str, dict[str, bytes]]]]]:
    """(URL, ``(key, members)`` stream) per shard: verified against its manifest entry when there is one."""
    from dynamo_depth.shards.reader import iter_shard

    if shards.entries is None:
        for url in shards.urls():
            yield url, iter_shard(url)
        return
    from dynamo_depth.data.sources import ShardStore

    store = ShardStore(shards.base_url)
    for url, entry in zip(shards.urls(), shards.entries, strict=True):
        yield url, store.samples(entry)


class PredictionFile:
    """Read-only view of a predictions ``.npz`` (arrays named by sample key; never unpickles)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._npz = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"predictions {self.path!r}: cannot read as .npz: {exc}") from exc
        if not hasattr(self._npz, "files"):
            raise ValueError(f"predictions {self.path!r}: a .npz archive (arrays named by sample key) is required")
        self.keys = frozenset(self._npz.files)

    def get(self, key: str, *, ndim: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The array of sample ``key`` as float64; ``ValueError`` naming file and key if missing or malformed."""
        if key not in self.keys:
            raise ValueError(f"predictions {self.path!r}: no array for sample key {key!r}")
        try:
            arr = np.asarray(self._npz[key], dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"predictions {self.path!r}, key {key!r}: not a numeric array: {exc}") from exc
        if arr.ndim != ndim or (shape is not None and arr.shape != shape):
            want = shape if shape is not None else f"{ndim}-D"
            raise ValueError(f"predictions {self.path!r}, key {key!r}: shape {arr.shape}, expected {want}")
        return arr

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> PredictionFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def rgb_from_jpeg(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB of JPEG bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def write_report(*, out_dir: str | os.PathLike[str], report: Mapping[str, Any], markdown: str) -> None:
    """Write ``metrics.json`` (canonical: sorted keys, indent 2, no NaN) and ``metrics.md`` into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    text = json.dumps(report, sort_keys=True, indent=2, allow_nan=False) + "\n"
    for name, body in (("metrics.json", text), ("metrics.md", markdown)):
        path = os.path.join(out_dir, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(path + ".tmp", path)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: ``-`` for None, fixed decimals for floats."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
