"""How the loader's costs grow with the dataset: manifests of 10k to 2M samples, this tree vs a baseline commit.

    PYTHONPATH=. python -m bench.scale_loader [--sizes 10000,100000,400000,2000000]
        [--baseline-sizes 10000,100000,400000] [--baseline-commit e01a5e2] [--world-size 8] [--workers 8]
        [--verify-samples 10000] [--steady-samples 96] [--json FILE]

Every figure is taken in a fresh interpreter (``bench/_scale_child.py``), so imports and earlier runs
do not count; the baseline is the loader of ``--baseline-commit`` (before the compact index),
exported with ``git archive`` and run the same way in the same run. Per size (synthetic canonical
manifests, ``tests/synthetic_manifest.py``: Waymo-like keys, 200 samples per shard, no shards
behind them, so start-up is measured without reading a shard):

- ``write``: ``save_manifest`` of the loaded manifest (canonical JSON), and ``index`` (the sidecar);
- start-up of rank 0 of ``--world-size`` (``make_dataset``): seconds and peak-RSS growth over the
  process after its imports; ours three ways: ``cold`` (empty node cache, no sidecar: parse once),
  ``cache`` (the node cache holds the index: every later process on the node), ``sidecar``;
- ``payload``: bytes pickled into each DataLoader worker (its dataset, collate and init functions);
- a DataLoader worker's start (``worker``): the forkserver's imports, unpickling the payload,
  planning worker 0 of ``--workers`` (seconds), then looking up its samples' keys, spans and digests
  as its reads will (microseconds per sample); peak-RSS growth over both, private (anon) growth and file pages (RssFile: mapped file pages, shared by the
  node's processes; ours reads the index with ``pread`` and maps none).

Then ``verify`` of a real shard set of ``--verify-samples`` tiny samples, and the steady state:
samples/s of three ``make_loader`` epochs (the first starts the forkserver), ours and the baseline
interleaved three times, (``--workers 2``, augment on) over ``--steady-samples``
real 640x192 triplets (``bench/loader.py``'s data), and the peak RSS of its DataLoader workers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "bench" / "_scale_child.py"


def _child(mode: str, args: dict[str, Any], *, tree: Path, index_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "DYNAMO_DEPTH_INDEX_DIR": str(index_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(CHILD), mode, json.dumps(args)], env=env, cwd=tree,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {args} in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _export(commit: str, root: Path) -> Path:
    """The baseline tree: ``git archive`` of ``commit`` (its dynamo_depth, tests, bench) under ``root``."""
    tree = root / f"baseline-{commit}"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "dynamo_depth", "tests", "bench"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _size_rows(n: int, *, root: Path, baseline: Path | None, a: argparse.Namespace) -> dict[str, Any]:
    from tests.synthetic_manifest import write_manifest

    start = time.perf_counter()
    manifest = write_manifest(root / f"m{n}", n)
    row: dict[str, Any] = {"samples": n, "manifest_mb": manifest.stat().st_size / 1e6,
                           "generate_s": time.perf_counter() - start}
    common = {"url": str(manifest), "world_size": a.world_size, "block": a.block}
    cold, warm = root / f"idx-cold-{n}", root / f"idx-warm-{n}"
    if n <= a.write_max:
        row["write"] = _child("write", {"url": str(manifest), "out": str(root / f"w{n}" / "manifest.json")},
                              tree=REPO, index_dir=cold)
    runs = {"ours_cold": (REPO, cold), "ours_cache": (REPO, cold)}
    if baseline is not None:
        runs["baseline"] = (baseline, warm)
    for name, (tree, index_dir) in runs.items():
        payload = root / f"payload-{name}-{n}.pkl"
        row[name] = _child("startup", {**common, "payload": str(payload)}, tree=tree, index_dir=index_dir)
        row[name]["worker"] = _child("worker", {"payload": str(payload), "block": a.block, "workers": a.workers},
                                     tree=tree, index_dir=index_dir)
        payload.unlink()
    row["index"] = _child("sidecar", {"url": str(manifest)}, tree=REPO, index_dir=warm)
    payload = root / f"payload-sidecar-{n}.pkl"
    row["ours_sidecar"] = _child("startup", {**common, "payload": str(payload)}, tree=REPO, index_dir=root / "idx-side")
    payload.unlink()
    for path in manifest.parent.iterdir():
        path.unlink()
    return row


def _verify_row(root: Path, samples: int) -> dict[str, Any]:
    from dynamo_depth.shards import schema
    from dynamo_depth.shards.manifest import Manifest, save_manifest
    from dynamo_depth.shards.writer import ShardWriter
    from tests.samples import make_sample

    folder = root / "verify"
    with ShardWriter(str(folder), prefix="kitti-train", max_count=200) as writer:
        for i in range(samples):
            sample = make_sample(i)
            writer.write(sample.key, schema.encode(sample))
    save_manifest(Manifest(dataset="kitti", split="train", builder="bench", builder_version="0",
                           shards=tuple(writer.close())), str(folder))
    size = sum(p.stat().st_size for p in folder.glob("*.tar"))
    row = {"samples": samples, "shard_mb": size / 1e6,
           "plain": _child("verify", {"url": str(folder)}, tree=REPO, index_dir=root / "idx-v")}
    _child("sidecar", {"url": str(folder)}, tree=REPO, index_dir=root / "idx-v")
    row["with_sidecar"] = _child("verify", {"url": str(folder)}, tree=REPO, index_dir=root / "idx-v")
    return row


def _steady_row(root: Path, baseline: Path | None, a: argparse.Namespace) -> dict[str, Any]:
    from bench.loader import build

    shards, _ = build(root / "steady", samples=a.steady_samples, width=640, height=192)
    args = {"url": str(shards), "block": 8, "workers": 2, "passes": 3}
    trees = {"ours": REPO, **({"baseline": baseline} if baseline is not None else {})}
    row: dict[str, Any] = {name: [] for name in trees}
    for _ in range(3):  # interleaved: ours, baseline, ours, baseline, ...
        for name, tree in trees.items():
            row[name].append(_child("steady", args, tree=tree, index_dir=root / "idx-s"))
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], run: str, *keys: str, fmt: str = "{:.2f}") -> str:
        value: Any = row.get(run)
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return fmt.format(value) if value is not None else "-"

    head = ("| samples | manifest MB | save_manifest s | index s | start-up s: baseline / cold / cache / sidecar "
            "| start-up peak-RSS growth MiB: baseline / cold / cache / sidecar | worker payload bytes: baseline / ours "
            "| worker start s (unpickle + plan): baseline / ours | lookup µs per sample (key, span, digest): baseline / ours "
            "| worker peak-RSS growth MiB: baseline / ours (anon + file) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        runs = ("baseline", "ours_cold", "ours_cache", "ours_sidecar")
        lines.append(" | ".join([
            f"| {r['samples']:,}", f"{r['manifest_mb']:.1f}", cell(r, "write", "seconds"), cell(r, "index", "seconds"),
            " / ".join(cell(r, k, "seconds") for k in runs),
            " / ".join(cell(r, k, "peak_delta_mib", fmt="{:.0f}") for k in runs),
            f"{cell(r, 'baseline', 'payload_bytes', fmt='{:,}')} / {cell(r, 'ours_cache', 'payload_bytes', fmt='{:,}')}",
            f"{cell(r, 'baseline', 'worker', 'plan_seconds')} / {cell(r, 'ours_cache', 'worker', 'plan_seconds')}",
            f"{cell(r, 'baseline', 'worker', 'lookup_us', fmt='{:.1f}')} / "
            f"{cell(r, 'ours_cache', 'worker', 'lookup_us', fmt='{:.1f}')}",
            f"{cell(r, 'baseline', 'worker', 'peak_delta_mib', fmt='{:.0f}')} / "
            f"{cell(r, 'ours_cache', 'worker', 'peak_delta_mib', fmt='{:.0f}')} "
            f"({cell(r, 'ours_cache', 'worker', 'anon_delta_mib', fmt='{:.0f}')} + "
            f"{cell(r, 'ours_cache', 'worker', 'file_mib', fmt='{:.0f}')}) |"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    parser.add_argument("--sizes", type=sizes, default=[10_000, 100_000, 400_000, 2_000_000])
    parser.add_argument("--baseline-sizes", type=sizes, default=[10_000, 100_000, 400_000],
                        help="sizes the baseline runs at (2M: ~30 s and ~5 GB per process, left out by default)")
    parser.add_argument("--baseline-commit", default="e01a5e2", help="the tree before the compact index")
    parser.add_argument("--write-max", type=int, default=400_000, help="largest size for save_manifest")
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers per rank (worker start)")
    parser.add_argument("--block", type=int, default=8, help="batch size (samples per worker block)")
    parser.add_argument("--verify-samples", type=int, default=10_000)
    parser.add_argument("--steady-samples", type=int, default=96)
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    a = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; uptime: {os.popen('uptime').read().strip()}")
    with tempfile.TemporaryDirectory(prefix="scale-loader-") as tmp:
        root = Path(tmp)
        baseline_tree = _export(a.baseline_commit, root) if a.baseline_sizes or a.steady_samples else None
        rows = []
        for n in a.sizes:
            rows.append(_size_rows(n, root=root, baseline=baseline_tree if n in a.baseline_sizes else None, a=a))
            print(json.dumps(rows[-1]), flush=True)
        print(_table(rows))
        verify_row = _verify_row(root, a.verify_samples) if a.verify_samples else None
        print("verify:", json.dumps(verify_row))
        steady_row = _steady_row(root, baseline_tree, a) if a.steady_samples else None
        print("steady:", json.dumps(steady_row))
    print(f"# uptime after: {os.popen('uptime').read().strip()}")
    if a.json is not None:
        a.json.write_text(json.dumps({"sizes": rows, "verify": verify_row, "steady": steady_row}, indent=1))


if __name__ == "__main__":
    main()
