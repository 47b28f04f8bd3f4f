"""The pack step of a build and its staging area: staged units streamed into the final shards.

* ``STAGING`` / ``staging_name``: where units are staged (``OUT/_staging/<unit>-000000.tar`` + sidecar).
* ``_pack``: stream the staged units, in order, into ``{dataset}-{split}-{index:06d}.tar``, resumable
  through ``_staging/pack.json`` (``_load_pack_state``).
* ``_layout_matches``, ``_remove_stale_shards``, ``_remove_staging``: shard layout check and clean-up.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dynamo_depth import storage
from dynamo_depth.manifest import UnitRecord
from dynamo_depth.schema import is_edge_meta_json
from dynamo_depth.shards import ShardRecord, ShardWriter, iter_shard

if TYPE_CHECKING:
    from builders.runner import BuilderSpec

STAGING = "_staging"
PACK_STATE = "pack.json"


def staging_name(unit_name: str) -> str:
    """File-name-safe form of a unit name (``drive/image_02`` -> ``drive-image_02``)."""
    return re.sub(r"[^A-Za-z0-9_\-]", "-", unit_name)


def _pack(spec: BuilderSpec, records: list[UnitRecord], out_url: str, *, split: str, digest: str,
          max_count: int, max_bytes: int) -> list[ShardRecord]:
    """Stream staged units, in order, into the final shards; resumable through ``pack.json``."""
    staging = storage.join(out_url, STAGING)
    state_url = storage.join(staging, PACK_STATE)
    plan = {"digest": digest, "units": [r.name for r in records], "max_count": max_count, "max_bytes": max_bytes}
    done = _load_pack_state(state_url, plan, out_url)
    skip = sum(r.count for r in done)

    def commit(record: ShardRecord) -> None:
        done.append(record)
        state = {"plan": plan, "shards": [r.to_json() for r in done]}
        storage.write_bytes_atomic(state_url, json.dumps(state, sort_keys=True).encode())

    prefix = f"{spec.dataset}-{split}"
    with ShardWriter(out_url, prefix=prefix, start_index=len(done), max_count=max_count,
                     max_bytes=max_bytes, on_shard=commit) as writer:
        for record in records:
            if skip >= record.samples:
                skip -= record.samples
                continue
            if record.samples == 0:
                continue
            part = storage.join(staging, f"{staging_name(record.name)}-000000.tar")
            for key, members in iter_shard(part):
                if skip:
                    skip -= 1
                    continue
                writer.write(key, members, edge=is_edge_meta_json(members.get("meta.json", b"{}"), key=key))
    return list(done)


def _load_pack_state(state_url: str, plan: Mapping[str, Any], out_url: str) -> list[ShardRecord]:
    if not storage.exists(state_url):
        return []
    try:
        state = json.loads(storage.read_bytes(state_url))
        if state["plan"] != plan:
            return []
        records = [ShardRecord.from_json(s) for s in state["shards"]]
    except (ValueError, KeyError):
        return []
    if any(span.sha256 is None for r in records for span in r.samples):
        return []  # packed before per-sample digests (manifest version 1): repack, never mix versions
    for r in records:  # every committed shard must still be there, whole
        url = storage.join(out_url, r.name)
        if not storage.exists(url) or storage.size(url) != r.bytes:
            return []
    return records


def _remove_staging(out_url: str) -> None:
    staging = storage.join(out_url, STAGING)
    for name in storage.listdir(staging):
        storage.remove(storage.join(staging, name))
    if storage.is_local(staging) and os.path.isdir(staging):
        os.rmdir(staging)


def _layout_matches(shards: tuple[ShardRecord, ...], max_count: int, max_bytes: int) -> bool:
    """Whether packing with ``max_count`` / ``max_bytes`` gives exactly this shard layout.

    The pack is greedy: a shard is closed when the next sample would pass either limit.
    """
    end_of_archive = 1024
    for shard, following in zip(shards, (*shards[1:], None), strict=True):
        if shard.count > max_count or (shard.count > 1 and shard.bytes > max_bytes):
            return False
        if following is not None and shard.count < max_count and \
                shard.bytes + following.samples[0].length <= max_bytes:
            return False  # the next sample would have fitted here
    return all(s.bytes - sum(x.length for x in s.samples) == end_of_archive for s in shards)


def _remove_stale_shards(out_url: str, dataset: str, split: str, keep: set[str]) -> None:
    """Remove final shards of an earlier, larger build of this dataset/split (never other files)."""
    pattern = re.compile(rf"^{re.escape(dataset)}-{re.escape(split)}-\d{{6}}\.tar$")
    for name in storage.listdir(out_url):
        if pattern.match(name) and name not in keep:
            storage.remove(storage.join(out_url, name))
