"""``python -m dynamo_depth COMMAND ...``: the library's command line.

Each command lives in its own module exposing ``main(argv: list[str]) -> int``; this file is only
a registry, so ``--help`` of one command never imports another's heavy dependencies.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("dynamo_depth.shards.verify", "re-hash a shard set and compare it with a manifest"),
    "index": ("dynamo_depth.shards.index_cli", "write or check the manifest's sidecar index (the loader's fast start)"),
    "synth": ("dynamo_depth.synth.cli", "generate a small raw dataset (kitti, waymo, nuscenes)"),
    "show": ("dynamo_depth.show", "draw a sample: its three frames and LiDAR depth over the target"),
    "predict": ("dynamo_depth.predict", "depth (and motion) of your own images from a checkpoint"),
}


def _usage() -> str:
    lines = ["usage: python -m dynamo_depth COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}; allowed: {sorted(COMMANDS)}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
