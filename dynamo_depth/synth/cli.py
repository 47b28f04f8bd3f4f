"""``python -m dynamo_depth synth {kitti,waymo,nuscenes} OUT [--sequences N] [--frames N] [--seed S] [--small]``.

Each writer is imported lazily from a small registry; all take ``(out_dir, *, sequences, frames, seed)``
and return a small JSON-able summary, printed on success. ``--small`` passes the reduced-size options of
``SMALL_OPTIONS`` to writers that have them (Waymo: the sizes of ``manifests/waymo-synth.json``); the
other writers are already small and ignore it with a note.
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

# dataset -> (module, options class, keyword arguments): the writer's ``options=`` under ``--small``
SMALL_OPTIONS: dict[str, tuple[str, str, dict[str, object]]] = {
    "waymo": ("dynamo_depth.synth.waymo", "WaymoSynthOptions",
              {"top_width": 400, "short_range_hw": (60, 180), "image_hw": (320, 480)}),
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
    parser.add_argument("--small", action="store_true",
                        help="reduced sizes where the writer supports them (waymo: 400-wide top range image, "
                             "60x180 short range, 320x480 camera, as manifests/waymo-synth.json); "
                             "kitti and nuscenes ignore it")
    return parser


def small_options(dataset: str) -> tuple[dict[str, object], str | None]:
    """(extra writer keyword arguments, note or None) for ``--small`` on ``dataset``."""
    if dataset not in SMALL_OPTIONS:
        return {}, f"synth {dataset}: --small has no effect (this writer has no reduced-size option)"
    module_name, class_name, kwargs = SMALL_OPTIONS[dataset]
    options_class = getattr(importlib.import_module(module_name), class_name)
    return {"options": options_class(**kwargs)}, None


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns 0 on success, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    if args.sequences < 1 or args.frames < 1:
        print(f"synth {args.dataset}: --sequences and --frames must be >= 1")
        return 2
    writer = load_writer(args.dataset)
    print(f"synth {args.dataset}: writing {args.sequences} sequence(s) x {args.frames} frame(s), "
          f"seed {args.seed} -> {args.out}", flush=True)
    options: dict[str, object] = {"progress": True} if "progress" in inspect.signature(writer).parameters else {}
    if args.small:
        extra, note = small_options(args.dataset)
        if note is not None:
            print(note, flush=True)
        options.update(extra)
    summary = writer(args.out, sequences=args.sequences, frames=args.frames, seed=args.seed, **options)
    print(json.dumps(summary, sort_keys=True, default=str))
    return 0
