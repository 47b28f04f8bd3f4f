"""Edge samples (``meta.json`` ``extra["edge"]``, from split-file builds) are left out of training unless asked.

An edge sample repeats its target frame as a missing neighbour (the original's rule for evaluating the first
and last frames of a sequence); photometric losses against a copy of the target teach nothing, so training
skips them by default. ``drop_edge_samples`` is a stage over RAW samples (member name -> bytes, as the
shard readers yield them): it parses only ``meta.json``.

DDP note: a stage after the epoch plan changes per-rank sample counts when edge samples are dropped, which
breaks the equal-batches guarantee; the plan-level form is ``edge_keys`` -> exclude before the rank cut.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from dynamo_depth.schema import EDGE_KEY, SampleError

__all__ = ["drop_edge_samples", "is_edge_sample"]


def is_edge_sample(raw: dict[str, Any]) -> bool:
    """Whether a raw sample's ``meta.json`` flags a substituted neighbour; ``SampleError`` if unreadable."""
    key = str(raw.get("__key__", "?"))
    try:
        meta = json.loads(bytes(raw["meta.json"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise SampleError(key, "meta.json", f"cannot read the edge flag: {exc}") from exc
    return bool((meta.get("extra") or {}).get(EDGE_KEY))


def drop_edge_samples(raws: Iterable[dict[str, Any]], *, include_edges: bool = False) -> Iterator[dict[str, Any]]:
    """The samples of ``raws`` without edge samples (all of them with ``include_edges``)."""
    for raw in raws:
        if include_edges or not is_edge_sample(raw):
            yield raw
