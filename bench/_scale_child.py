"""One measurement of ``bench/scale_loader.py`` in a fresh interpreter: ``python bench/_scale_child.py MODE JSON``.

Run with ``PYTHONPATH`` at the tree under test (this checkout, or the baseline commit exported by the
driver), so it only uses what both trees have: ``make_dataset``, ``make_loader``, ``verify_shards``,
``load_manifest`` / ``save_manifest``. Prints one JSON object. Memory figures come from
``/proc/self/status``: ``VmHWM`` (peak resident set), ``VmRSS`` before the measured work (after the
imports), ``RssAnon`` (private) and ``RssFile`` (file pages, e.g. a mapped index: shared by the
processes of a node that map the same file) after it.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any


def status() -> dict[str, float]:
    """MiB figures of /proc/self/status (VmHWM, VmRSS, RssAnon, RssFile)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[name] = int(value.split()[0]) / 1024
    return out


def startup(args: dict[str, Any]) -> dict[str, Any]:
    """make_dataset on rank 0 of ``world_size``, then what a DataLoader worker of make_loader receives."""
    from dynamo_depth.data import make_dataset, make_loader

    before = status()
    start = time.perf_counter()
    dataset = make_dataset(args["url"], rank=0, world_size=args["world_size"], decode=False, block=args["block"])
    seconds = time.perf_counter() - start
    after = status()
    loader = make_loader(args["url"], batch_size=args["block"], num_workers=2, rank=0,
                         world_size=args["world_size"]).dataloader
    payload = pickle.dumps((loader.dataset, loader.collate_fn, loader.worker_init_fn))
    Path(args["payload"]).write_bytes(payload)
    return {"seconds": seconds, "rss_before_mib": before["VmRSS"], "peak_mib": after["VmHWM"],
            "peak_delta_mib": after["VmHWM"] - before["VmRSS"], "rank_length": len(dataset),
            "payload_bytes": len(payload)}


def worker(args: dict[str, Any]) -> dict[str, Any]:
    """What a DataLoader worker does before its first read: the forkserver's imports, unpickle the
    payload, plan its blocks and owned shards, and look up every wanted sample's key, span and digest."""
    import cv2  # noqa: F401 - the forkserver preloads these
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import dynamo_depth.data  # noqa: F401

    before = status()
    start = time.perf_counter()
    dataset, _, _ = pickle.loads(Path(args["payload"]).read_bytes())
    plan = dataset.plan
    split = {"start": 0, "block": args["block"], "worker": 0, "num_workers": args["workers"]}
    wanted = plan.wanted(**split)
    owned = plan.owned_shards(**split)
    planned = time.perf_counter()
    for w in wanted:
        entry = plan.shards[w.shard]
        entry.keys[w.ordinal], entry.spans[w.ordinal]
        if entry.digests is not None:
            entry.digests[w.ordinal]
    seconds = time.perf_counter() - start
    after = status()
    return {"seconds": seconds, "plan_seconds": planned - start, "lookup_us": 1e6 * (start + seconds - planned) / len(wanted),
            "rss_before_mib": before["VmRSS"], "peak_delta_mib": after["VmHWM"] - before["VmRSS"],
            "anon_delta_mib": after["RssAnon"] - before["RssAnon"], "file_mib": after["RssFile"] - before["RssFile"],
            "wanted": len(wanted), "owned": len(owned)}


def write(args: dict[str, Any]) -> dict[str, Any]:
    """save_manifest of a loaded manifest (canonical JSON, atomic write)."""
    from dynamo_depth.shards.manifest import load_manifest, save_manifest

    manifest = load_manifest(args["url"])
    start = time.perf_counter()
    path = save_manifest(manifest, args["out"])
    return {"seconds": time.perf_counter() - start, "bytes": Path(path).stat().st_size}


def sidecar(args: dict[str, Any]) -> dict[str, Any]:
    from dynamo_depth.shards import index_cli

    start = time.perf_counter()
    if index_cli.main([args["url"]]) != 0:
        raise SystemExit("index failed")
    return {"seconds": time.perf_counter() - start}


def verify(args: dict[str, Any]) -> dict[str, Any]:
    from dynamo_depth.shards.verify import verify_shards

    before = status()
    seconds = []
    for _ in range(2):  # the first call also pays verify's lazy imports
        start = time.perf_counter()
        problems = verify_shards(args["url"])
        seconds.append(time.perf_counter() - start)
    return {"seconds_first": seconds[0], "seconds": seconds[1], "problems": len(problems),
            "peak_delta_mib": status()["VmHWM"] - before["VmRSS"]}


def _worker_status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "RssAnon", "RssFile"):
            out[name] = int(value.split()[0]) / 1024
    return out


def steady(args: dict[str, Any]) -> dict[str, Any]:
    """Samples/s of make_loader epochs on real shards with DataLoader workers; the workers' peak RSS."""
    from dynamo_depth.data import make_loader

    rates, peaks = [], {}
    for _ in range(args["passes"]):
        loader = make_loader(args["url"], batch_size=args["block"], num_workers=args["workers"], augment=True)
        start, count = time.perf_counter(), 0
        iterator = iter(loader.dataloader)
        for batch in iterator:
            count += len(batch["keys"])
            for process in getattr(iterator, "_workers", []):
                try:
                    found = _worker_status(process.pid)
                except FileNotFoundError:
                    continue
                if "VmHWM" in found:  # not an exited worker
                    peaks[process.pid] = found
        rates.append(count / (time.perf_counter() - start))
    return {"samples_per_s": rates, "worker_peak_mib": sorted(p["VmHWM"] for p in peaks.values()),
            "worker_anon_mib": sorted(p["RssAnon"] for p in peaks.values())}


if __name__ == "__main__":
    mode, arguments = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps({"startup": startup, "worker": worker, "write": write, "sidecar": sidecar, "verify": verify,
                      "steady": steady}[mode](arguments)))
