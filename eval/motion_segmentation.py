"""``python -m eval.motion_segmentation``: precision / recall / F1 of predicted motion masks at LiDAR points.

Usage::

    python -m eval.motion_segmentation --data SHARDS --predictions FILE.npz [--dataset D] [--thresholds T]
                                       [--out DIR] [--max-samples N]

Predictions file: ``np.savez(path, **{sample_key: motion})``, one (H', W') array per sample with the
probability in [0, 1] that the target frame's pixel moves independently, at the training size.
Each map is upsampled bilinearly (float32) to the original size and read at the truncated pixel of
every LiDAR point that passes the depth protocol (``dynamo_depth.depth_eval``: range cap, Garg crop for KITTI); ground truth is
``motion.npy.zst``: 1 moving is positive, 0 background and 2 static movable are negative,
3 unlabeled is ignored. Samples without motion labels are skipped. Counts are summed over all
images before precision / recall are formed (pooled over points).

Outputs in ``--out``: ``metrics.json``, ``metrics.md``, ``pr_curve.png``. Exit 0, or 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dynamo_depth import depth_eval as de
from dynamo_depth import metrics as m
from dynamo_depth import motion_metrics
from eval import PredictionFile, fmt, iter_samples, write_report
from eval.figures import plot_pr_curve

UNLABELED = 3
MOVING = 1


def _scores_and_truth(sample: Any, motion_map: np.ndarray, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, is_moving) at the sample's labelled, protocol-valid LiDAR points."""
    hw = tuple(sample.meta.original_size)
    pts = sample.depth.astype(np.float64)
    keep = de.valid_points(points_uvz=pts, original_hw=hw, protocol=m.DATASET_PROTOCOL[dataset])
    keep &= sample.motion != UNLABELED
    rows, cols = de.point_pixels(points_uvz=pts[keep], pixel="truncate")
    scores = de.depth_map(prediction=motion_map, original_hw=hw, kind="depth")[rows, cols].astype(np.float64)
    return scores, sample.motion[keep] == MOVING


def evaluate_motion(
    *, data_url: str, predict: Callable[[Any], np.ndarray], thresholds: np.ndarray, dataset: str | None = None,
    max_samples: int | None = None,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pooled PR curve over ``data_url``; returns the JSON report and (precision, recall, f1)."""
    true_pos = np.zeros(len(thresholds), dtype=np.int64)
    num_pred = np.zeros(len(thresholds), dtype=np.int64)
    num_pos = num_points = num_images = 0
    skipped: list[dict[str, str]] = []
    for sample in iter_samples(data_url, max_samples=max_samples):
        if sample.motion is None:
            skipped.append({"key": sample.key, "reason": "no motion labels"})
            continue
        motion_map = predict(sample)
        if not np.all(np.isfinite(motion_map)):
            raise ValueError(f"sample {sample.key!r}: non-finite motion scores")
        scores, is_moving = _scores_and_truth(sample, motion_map, dataset or sample.meta.dataset)
        tp, npred, npos = motion_metrics.pr_counts(scores=scores, is_moving=is_moving, thresholds=thresholds)
        true_pos, num_pred, num_pos = true_pos + tp, num_pred + npred, num_pos + npos
        num_points, num_images = num_points + scores.size, num_images + 1
    if num_pos == 0:
        raise ValueError(f"--data {data_url!r}: no moving LiDAR point in {num_images} labelled images; F1 is undefined")
    precision, recall, f1 = motion_metrics.pr_from_counts(true_pos=true_pos, num_pred=num_pred, num_pos=num_pos)
    best, at = motion_metrics.best_f1(f1=f1, thresholds=thresholds)
    half = int(np.argmin(np.abs(thresholds - 0.5)))
    report = {
        "command": "eval.motion_segmentation", "data": data_url, "num_images": num_images, "num_points": num_points,
        "num_moving_points": num_pos, "skipped": skipped, "best_f1": best, "best_threshold": at,
        "at_0.5": {"threshold": float(thresholds[half]), "precision": float(precision[half]),
                   "recall": float(recall[half]), "f1": float(f1[half])},
        "curve": {"thresholds": thresholds.tolist(), "precision": precision.tolist(), "recall": recall.tolist(),
                  "f1": f1.tolist()},
    }
    return report, (precision, recall, f1)


def motion_markdown(report: dict[str, Any]) -> str:
    half = report["at_0.5"]
    return "\n".join([
        "# Motion segmentation", "",
        f"{report['num_images']} images, {report['num_points']} labelled LiDAR points "
        f"({report['num_moving_points']} moving), skipped {len(report['skipped'])}.", "",
        "| | threshold | precision | recall | F1 |", "|---|---|---|---|---|",
        f"| best F1 | {fmt(report['best_threshold'], 2)} | - | - | {fmt(report['best_f1'])} |",
        f"| at 0.5 | {fmt(half['threshold'], 2)} | {fmt(half['precision'])} | {fmt(half['recall'])} | {fmt(half['f1'])} |",
    ]) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.motion_segmentation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="shard .tar, folder/prefix of shards, or manifest.json")
    parser.add_argument("--predictions", help=".npz of per-sample motion probabilities")
    parser.add_argument("--checkpoint", help="trainer checkpoint or original module folder (all seven modules)")
    parser.add_argument("--dataset", choices=sorted(m.DATASET_PROTOCOL), help="protocol; default: meta.json's")
    parser.add_argument("--thresholds", type=int, default=101, help="number of thresholds in [0, 1]")
    parser.add_argument("--out", help="folder for metrics.json, metrics.md and pr_curve.png")
    parser.add_argument("--max-samples", type=int, help="evaluate at most N samples")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.predictions is None):
        parser.error("give exactly one of --checkpoint and --predictions")
    try:
        if args.thresholds < 2:
            raise ValueError(f"--thresholds must be >= 2, got {args.thresholds}")
        thresholds = np.linspace(0.0, 1.0, args.thresholds)
        with contextlib.ExitStack() as stack:
            if args.predictions is not None:
                preds = stack.enter_context(PredictionFile(args.predictions))
                predict = lambda sample: preds.get(sample.key, ndim=2)  # noqa: E731
            else:
                from eval.predictors import motion_predictor
                predict = motion_predictor(args.checkpoint)
            report, (precision, recall, _) = evaluate_motion(
                data_url=args.data, predict=predict, thresholds=thresholds, dataset=args.dataset,
                max_samples=args.max_samples)
    except ValueError as exc:
        print(f"eval.motion_segmentation: error: {exc}", file=sys.stderr)
        return 2
    markdown = motion_markdown(report)
    print(markdown)
    if args.out:
        write_report(out_dir=args.out, report=report, markdown=markdown)
        plot_pr_curve(precision=precision, recall=recall, best=(report["best_f1"], report["best_threshold"]),
                      path=os.path.join(args.out, "pr_curve.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
