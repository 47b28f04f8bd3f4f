"""A manifest's index arrays without building a dataclass per sample (the loader's cold start).

``manifest_index_arrays(raw, path)`` parses the JSON once and checks every shard record and sample
span column by column (numpy over all samples) for what ``Manifest.from_json`` checks: exact fields,
types, safe and unique shard names, sizes, sha256 digests (64 lowercase hex), spans on 512-byte
blocks, positive lengths, no overlaps, inside the shard, ``count`` / ``first_key`` / ``last_key``,
and one manifest version for every sample. Anything it does not accept goes to the strict parse
(``manifest.parse_manifest``), which raises the usual error naming the manifest (or, for a form it
accepts and this check is stricter about, gives the arrays), so errors and results are those of
``load_manifest``. ~3x faster than ``parse_manifest`` + arrays at 400k samples.
"""

from __future__ import annotations

import json
from itertools import repeat
from operator import contains, itemgetter, methodcaller
from typing import Any

import numpy as np

from dynamo_depth.shards.index import HAS_DIGESTS, HAS_SHA256, HAS_SPANS, _blob, manifest_arrays
from dynamo_depth.shards.manifest import Manifest, parse_manifest
from dynamo_depth.shards.reader import BLOCK
from dynamo_depth.shards.records import check_shard_name

__all__ = ["manifest_index_arrays"]

_RECORD_FIELDS = {"name", "bytes", "sha256", "count", "first_key", "last_key", "samples"}
_SPAN_FORMS = ({"key", "offset", "length", "sha256"}, {"key", "offset", "length", "sha256", "edge"},
               {"key", "offset", "length"}, {"key", "offset", "length", "edge"})
_FORMS = {frozenset(form) for form in _SPAN_FORMS}


class _Reject(Exception):
    """The fast check does not accept this manifest: the strict parse decides."""


def _ints(values: list[Any]) -> np.ndarray:
    if not set(map(type, values)) <= {int}:
        raise _Reject
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        raise _Reject from None


def _digests(values: list[Any]) -> np.ndarray:
    if not set(map(type, values)) <= {str} or set(map(len, values)) - {64}:
        raise _Reject
    joined = "".join(values)
    try:
        raw = bytes.fromhex(joined)
    except ValueError:
        raise _Reject from None
    if raw.hex() != joined:  # lowercase, no whitespace
        raise _Reject
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(values), 32)


def _records(obj: dict[str, Any]) -> list[dict[str, Any]]:
    records = obj["shards"]
    for record in records:
        if type(record) is not dict or record.keys() != _RECORD_FIELDS or type(record["samples"]) is not list:
            raise _Reject
        try:
            check_shard_name(record["name"])
        except ValueError:
            raise _Reject from None
    names = [r["name"] for r in records]
    if len(set(names)) != len(names):
        raise _Reject
    return records


def _span_columns(records: list[dict[str, Any]]) -> tuple[list[Any], ...]:
    spans = [span for record in records for span in record["samples"]]
    if not set(map(type, spans)) <= {dict} or not set(map(frozenset, spans)) <= _FORMS:
        raise _Reject
    keys = list(map(itemgetter("key"), spans))
    if not set(map(type, keys)) <= {str} or 0 in set(map(len, keys)):
        raise _Reject
    shas = list(map(methodcaller("get", "sha256"), spans))
    edges = list(map(contains, spans, repeat("edge")))
    if not all(span["edge"] is True for span, edge in zip(spans, edges, strict=True) if edge):
        raise _Reject
    return keys, list(map(itemgetter("offset"), spans)), list(map(itemgetter("length"), spans)), shas, edges


def _check_layout(records: list[dict[str, Any]], offsets: np.ndarray, lengths: np.ndarray,
                  keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    counts = _ints([r["count"] for r in records])
    sizes = _ints([r["bytes"] for r in records])
    listed = np.array([len(r["samples"]) for r in records], dtype=np.int64)
    if (counts != listed).any() or (counts < 1).any() or (sizes < 0).any():
        raise _Reject
    if (offsets < 0).any() or (offsets % BLOCK).any() or (lengths <= 0).any() or (lengths % BLOCK).any():
        raise _Reject
    start = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    ends = offsets + lengths
    first = np.zeros(len(offsets), dtype=bool)
    first[start[:-1]] = True
    if (offsets[1:] < ends[:-1])[~first[1:]].any() or (ends[start[1:] - 1] > sizes).any():
        raise _Reject
    if any(r["first_key"] != keys[a] or r["last_key"] != keys[b - 1]
           for r, a, b in zip(records, start[:-1].tolist(), start[1:].tolist(), strict=True)):
        raise _Reject
    return start, sizes


def _fast_arrays(obj: Any) -> dict[str, np.ndarray]:
    if type(obj) is not dict or type(obj.get("shards")) is not list:
        raise _Reject
    head = Manifest.from_json({**obj, "shards": []})  # every field but the shards, strictly
    records = _records(obj)
    keys, offsets, lengths, shas, edges = _span_columns(records)
    with_digest = len(shas) - shas.count(None)
    if with_digest not in (0, len(shas)) or (keys and head.manifest_version != (2 if with_digest else 1)):
        raise _Reject
    offset_array, length_array = _ints(offsets), _ints(lengths)
    start, sizes = _check_layout(records, offset_array, length_array, keys)
    name_offsets, name_blob = _blob([r["name"] for r in records])
    key_offsets, key_blob = _blob(keys)
    digests = bool(keys) and with_digest == len(keys)
    return {"shard_start": start, "shard_bytes": sizes,
            "shard_flags": np.full(len(records), HAS_SHA256 | HAS_SPANS | (HAS_DIGESTS if digests else 0), np.uint8),
            "shard_sha256": _digests([r["sha256"] for r in records]), "shard_name_offsets": name_offsets,
            "shard_name_blob": name_blob, "key_offsets": key_offsets, "key_blob": key_blob,
            "span_offset": offset_array, "span_length": length_array,
            "sample_sha256": _digests(shas) if digests else np.zeros((0, 32), np.uint8),
            "edge": np.array(edges, dtype=np.uint8) if any(edges) else np.zeros(0, np.uint8)}


def manifest_index_arrays(raw: bytes, path: str) -> dict[str, np.ndarray]:
    """The index arrays of the manifest bytes ``raw`` read from ``path``; errors as ``load_manifest``'s."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        obj = None
    if obj is not None:
        try:
            return _fast_arrays(obj)
        except (_Reject, ValueError):
            pass
    return manifest_arrays(parse_manifest(raw, path))
