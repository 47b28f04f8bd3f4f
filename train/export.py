"""``python -m train.export CKPT OUT_DIR``: write a checkpoint as an original Dynamo-Depth module folder.

``CKPT`` is a trainer checkpoint (``run_dir/checkpoints/step-NNNNNN.pt``, the file ``checkpoints/last.json``
names) or an original folder. ``OUT_DIR`` receives the
seven files the original code loads (``depth_enc.pth``, ``depth_dec.pth``, ``pose_enc.pth``, ``pose_dec.pth``,
``motion_enc.pth``, ``motion_dec.pth``, ``motion_mask.pth``) as the original's ``Model.save`` writes them: the
original's keys, dtypes and shapes in its order, the ints ``height`` / ``width`` appended to every ``*enc*`` file. Exit 2 on bad input, naming the file and the reason.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="trainer checkpoint file or original module folder")
    parser.add_argument("out_dir", help="folder to write the seven .pth files to (created)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dynamo_depth.models.loading import load_for_inference
    from dynamo_depth.models.original import export_folder

    try:
        loaded = load_for_inference(args.checkpoint, need_motion=True)
        out = export_folder(loaded.model, args.out_dir, height=loaded.height, width=loaded.width)
    except ValueError as err:
        print(f"export: error: {err}", file=sys.stderr)
        return 2
    print(f"export: {args.checkpoint} -> {out} ({loaded.height}x{loaded.width}, {loaded.model.depth_network})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
