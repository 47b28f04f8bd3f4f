"""``python -m eval.motion_segmentation``: motion-mask precision / recall / F1 as the original Dynamo-Depth.

Usage::

    python -m eval.motion_segmentation --data SHARDS (--checkpoint CKPT | --predictions FILE.npz)
                                       [--scoring original|points] [--counts float32|int64]
                                       [--thresholds 150] [--dataset D] [--out DIR] [--max-samples N]

Predictions file: ``np.savez(path, **{sample_key: motion})``, one (H', W') array per sample: the MotMask
decoder's sigmoid at scale 0 of the target frame, at the training size. ``--checkpoint`` runs the whole model
on the stored (prev, cur, next) frames (the original's ``frame_ids [0, -1, 1]``, its ``rgb/downsample`` JPEGs).

Default: the original's ``eval/motion_segmentation.py`` (``../shared/reference/eval_protocol.md`` section 6).
Edge samples (a neighbour missing, ``meta.json`` ``extra["edge"]``) are left out, as the original prunes them.
Each map is upsampled bilinearly (``align_corners=False``, float32) to the original size and EVERY pixel of the
ground-truth mask is scored: Waymo the stored full-resolution mask (``motion_mask.npy.zst``: the filled
contours of the panoptic objects), nuScenes the per-point labels splatted into a 5x-downsampled grid resized
NEAREST (``motion_metrics.nuscenes_grid_mask``). 150 thresholds ``linspace(-eps, 1 - eps)`` float32, strict
``>``, counts pooled over images in float32, precision / recall with ``+ 1e-10``; the reported F1 is the best
over the thresholds. Samples without labels are skipped (the original's frames are ``test_mask_files.txt``).

Options that leave the original protocol (the printed table then says "MODIFIED protocol"):
``--scoring points`` scores each labelled LiDAR point (depth protocol's valid points, truncated pixel) instead
of mask pixels; ``--counts int64`` pools the counts exactly (the original's float32 sums round above 2^24
pixels); ``--thresholds N`` uses N thresholds of the same form.

Outputs in ``--out``: ``metrics.json``, ``metrics.md``, ``pr_record.npz`` (precision, recall, f1, thrds as the
original's ``pr_record_<ckpt>.npz``), ``pr_curve.png``. Exit 0, or 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynamo_depth.evaluation import depth as de
from dynamo_depth.evaluation import metrics as m
from dynamo_depth.evaluation import motion as mm
from dynamo_depth.shards.schema import edge_neighbours
from eval import PredictionFile, fmt, iter_samples, write_report
from eval.figures import plot_pr_curve

SCORINGS = ("original", "points")
MASK_DATASETS = ("waymo", "nuscenes")


@dataclass(frozen=True)
class MotionProtocol:
    """Where a user may leave the original protocol; the defaults are the original's."""

    scoring: str = "original"
    counts: str = "float32"
    num_thresholds: int = mm.ORIGINAL_NUM_THRESHOLDS

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring {self.scoring!r}; allowed: {SCORINGS}")
        if self.counts not in mm.COUNT_DTYPES:
            raise ValueError(f"counts {self.counts!r}; allowed: {mm.COUNT_DTYPES}")
        if self.num_thresholds < 2:
            raise ValueError(f"--thresholds must be >= 2, got {self.num_thresholds}")

    @property
    def is_original(self) -> bool:
        return self == MotionProtocol()

    def describe(self) -> str:
        if self.is_original:
            return "original Dynamo-Depth protocol (eval/motion_segmentation.py @ 227a5d9)"
        changes = []
        if self.scoring != "original":
            changes.append("labelled LiDAR points scored instead of mask pixels")
        if self.counts != "float32":
            changes.append("counts pooled exactly (int64)")
        if self.num_thresholds != mm.ORIGINAL_NUM_THRESHOLDS:
            changes.append(f"{self.num_thresholds} thresholds")
        return "MODIFIED protocol: " + ", ".join(changes)


def upsample(prediction: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) float32: bilinear (``align_corners=False``) float32 upsampling, the original's ``utils.interp``."""
    return de.depth_map(prediction=prediction, original_hw=hw, kind="depth")


def ground_truth(sample: Any, dataset: str) -> np.ndarray | None:
    """(H, W) uint8 mask the original scores for ``sample`` (None: no labels, the sample is skipped)."""
    hw = tuple(sample.meta.original_size)
    if dataset == "waymo":
        return sample.motion_mask
    if dataset == "nuscenes" and sample.motion is not None:
        return mm.nuscenes_grid_mask(points_uvz=sample.depth, labels=sample.motion, original_hw=hw)
    return None


def scored(sample: Any, motion_map: np.ndarray, dataset: str, scoring: str) -> tuple[np.ndarray, np.ndarray] | str:
    """(scores, labels) to count for one sample, or the reason it is skipped."""
    hw = tuple(sample.meta.original_size)
    if scoring == "points":
        if sample.motion is None:
            return "no motion labels"
        pts = sample.depth.astype(np.float64)
        keep = de.valid_points(points_uvz=pts, original_hw=hw, protocol=m.DATASET_PROTOCOL[dataset])
        rows, cols = de.point_pixels(points_uvz=pts[keep], pixel="truncate")
        return upsample(motion_map, hw)[rows, cols], sample.motion[keep]
    if dataset not in MASK_DATASETS:
        raise ValueError(f"the original evaluates motion segmentation on {MASK_DATASETS} only, not {dataset!r} "
                         f"(--scoring points scores labelled LiDAR points of any dataset)")
    mask = ground_truth(sample, dataset)
    if mask is None:
        member = "motion_mask.npy.zst" if dataset == "waymo" else "motion.npy.zst"
        return f"no motion mask ({member}; Waymo: builder >= 1.4.0)"
    return upsample(motion_map, hw), mask


def evaluate_motion(
    *, data_url: str, predict: Callable[[Any], np.ndarray], protocol: MotionProtocol = MotionProtocol(),
    dataset: str | None = None, max_samples: int | None = None,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Pooled PR curve over ``data_url``; the JSON report and (thresholds, precision, recall, f1)."""
    thresholds = mm.original_thresholds(protocol.num_thresholds)
    counts = mm.PooledCounts(num_thresholds=thresholds.size, dtype=protocol.counts)
    num_images = num_scored = num_moving = 0
    skipped: list[dict[str, str]] = []
    chosen = dataset
    for sample in iter_samples(data_url, max_samples=max_samples):
        if edge_neighbours(sample.meta):
            skipped.append({"key": sample.key, "reason": "edge frame (a neighbour is missing): the original prunes it"})
            continue
        chosen = dataset or sample.meta.dataset
        motion_map = predict(sample)
        if not np.all(np.isfinite(motion_map)):
            raise ValueError(f"sample {sample.key!r}: non-finite motion scores")
        item = scored(sample, motion_map, chosen, protocol.scoring)
        if isinstance(item, str):
            skipped.append({"key": sample.key, "reason": item})
            continue
        scores, labels = item
        counts.add(*mm.image_counts(scores=scores, labels=labels, thresholds=thresholds))
        num_images += 1
        num_scored += int(np.sum(labels != mm.UNLABELED))
        num_moving += int(np.sum(labels == mm.MOVING))
    if num_images == 0:
        raise ValueError(f"--data {data_url!r}: no labelled, non-edge sample to evaluate ({len(skipped)} skipped)")
    precision, recall, f1 = mm.precision_recall_f1(counts)
    best, at, index = mm.best_f1(f1=f1, thresholds=thresholds)
    report = {
        "command": "eval.motion_segmentation", "data": data_url, "dataset": chosen,
        "protocol": {"name": "original" if protocol.is_original else "modified", "description": protocol.describe(),
                     "scoring": protocol.scoring, "counts": protocol.counts, "num_thresholds": int(thresholds.size)},
        "num_images": num_images, "num_scored": num_scored, "num_moving": num_moving, "skipped": skipped,
        "best_f1": best, "best_threshold": at,
        "at_best": {"precision": float(precision[index]), "recall": float(recall[index])},
        "curve": {"thresholds": thresholds.tolist(), "precision": precision.tolist(), "recall": recall.tolist(),
                  "f1": f1.tolist(), "tp": counts.tp.tolist(), "fp": counts.fp.tolist(), "fn": counts.fn.tolist()},
    }
    return report, (thresholds, precision, recall, f1)


def motion_markdown(report: dict[str, Any]) -> str:
    what = "pixels" if report["protocol"]["scoring"] == "original" else "LiDAR points"
    best = report["at_best"]
    return "\n".join([
        f"# Motion segmentation: {report['dataset']}", "", f"Protocol: {report['protocol']['description']}.", "",
        f"{report['num_images']} images, {report['num_scored']} labelled {what} ({report['num_moving']} moving), "
        f"skipped {len(report['skipped'])}; {report['protocol']['num_thresholds']} thresholds.", "",
        "| | threshold | precision | recall | F1 |", "|---|---|---|---|---|",
        f"| best F1 | {fmt(report['best_threshold'], 4)} | {fmt(best['precision'])} | {fmt(best['recall'])} | "
        f"{fmt(report['best_f1'])} |",
    ]) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.motion_segmentation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="shard .tar, folder/prefix of shards, or manifest.json")
    parser.add_argument("--predictions", help=".npz of per-sample motion probabilities (training size)")
    parser.add_argument("--checkpoint", help="trainer checkpoint or original module folder (all seven modules)")
    parser.add_argument("--dataset", choices=sorted(m.DATASET_PROTOCOL), help="protocol; default: meta.json's")
    parser.add_argument("--scoring", choices=SCORINGS, default="original",
                        help="original: every pixel of the dataset's mask; points: labelled LiDAR points")
    parser.add_argument("--counts", choices=mm.COUNT_DTYPES, default="float32",
                        help="float32: the original's pooled sums; int64: exact")
    parser.add_argument("--thresholds", type=int, default=mm.ORIGINAL_NUM_THRESHOLDS,
                        help="number of thresholds linspace(-eps, 1 - eps), eps = 1 / (N - 1) (original: 150)")
    parser.add_argument("--out", help="folder for metrics.json, metrics.md, pr_record.npz and pr_curve.png")
    parser.add_argument("--max-samples", type=int, help="evaluate at most N samples")
    return parser


def _write_outputs(out: str, report: dict[str, Any], markdown: str, curve: tuple[np.ndarray, ...]) -> None:
    thresholds, precision, recall, f1 = curve
    write_report(out_dir=out, report=report, markdown=markdown)
    np.savez(os.path.join(out, "pr_record.npz"), precision=precision, recall=recall, f1=f1,
             thrds=thresholds.reshape(1, -1, 1, 1))
    plot_pr_curve(precision=precision.astype(np.float64), recall=recall.astype(np.float64),
                  best=(report["best_f1"], report["best_threshold"]), path=os.path.join(out, "pr_curve.png"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.predictions is None):
        parser.error("give exactly one of --checkpoint and --predictions")
    try:
        protocol = MotionProtocol(scoring=args.scoring, counts=args.counts, num_thresholds=args.thresholds)
        with contextlib.ExitStack() as stack:
            if args.predictions is not None:
                preds = stack.enter_context(PredictionFile(args.predictions))
                predict = lambda sample: preds.get(sample.key, ndim=2)  # noqa: E731
            else:
                from eval.predictors import motion_predictor
                predict = motion_predictor(args.checkpoint)
            report, curve = evaluate_motion(data_url=args.data, predict=predict, protocol=protocol,
                                            dataset=args.dataset, max_samples=args.max_samples)
    except ValueError as exc:
        print(f"eval.motion_segmentation: error: {exc}", file=sys.stderr)
        return 2
    markdown = motion_markdown(report)
    print(markdown)
    if args.out:
        _write_outputs(args.out, report, markdown, curve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
