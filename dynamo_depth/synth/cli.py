"""``python -m dynamo_depth synth {kitti,waymo,nuscenes} OUT [--sequences N] [--frames N] [--seed S]``.

Each writer is imported lazily from a small registry; all take ``(out_dir, *, sequences, frames, seed)``
and return a small JSON-able summary, printed on success.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from collections.abc import Callable

WRITERS: dict[str, tuple[str, str]] = {
    "kitti": ("dynamo_depth.synth.kitti", "write_kitti"),
    "waymo": ("dynamo_depth.synth.waymo", "write_waymo"),
    "nuscenes": ("dynamo_depth.synth.nuscenes", "write_nuscenes"),
}


def load_writer(dataset: str) -> Callable[..., object]:
    """The writer function of ``dataset``; ValueError for an unknown name."""
    if dataset not in WRITERS:
        raise ValueError(f"unknown synthetic dataset {dataset!r}; allowed: {sorted(WRITERS)}")
    module_name, function_name = WRITERS[dataset]
    return getattr(importlib.import_module(module_name), function_name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dynamo_depth synth",
                                     description="generate a small raw dataset in its native format")
    parser.add_argument("dataset", choices=sorted(WRITERS))
    parser.add_argument("out", help="output folder (created if missing)")
    parser.add_argument("--sequences", type=int, default=1, help="number of drives/segments/scenes (default 1)")
    parser.add_argument("--frames", type=int, default=6, help="frames per sequence (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed; same seed, same bytes (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns 0 on success, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    if args.sequences < 1 or args.frames < 1:
        print(f"synth {args.dataset}: --sequences and --frames must be >= 1")
        return 2
    writer = load_writer(args.dataset)
    print(f"synth {args.dataset}: writing {args.sequences} sequence(s) x {args.frames} frame(s), "
          f"seed {args.seed} -> {args.out}", flush=True)
    options = {"progress": True} if "progress" in inspect.signature(writer).parameters else {}
    summary = writer(args.out, sequences=args.sequences, frames=args.frames, seed=args.seed, **options)
    print(json.dumps(summary, sort_keys=True, default=str))
    return 0
