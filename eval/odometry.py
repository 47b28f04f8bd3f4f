"""``python -m eval.odometry``: SfMLearner-style 5-frame ATE of predicted ego-motion.

Usage::

    python -m eval.odometry --data SHARDS --predictions FILE.npz [--snippet 5] [--convention rmse|sfmlearner]
                            [--out DIR] [--max-samples N]

Predictions file: ``np.savez(path, **{sample_key: pose})``, one (4, 4) float array per sample: the
pose of frame t+1 in camera t (``camera_t_from_camera_t+1``, OpenCV axes, translation up to scale).
Samples are grouped by (sequence, camera) and ordered by target frame index; runs of consecutive
target frames t0..tk give ground truth world_from_camera for frames t0..tk+1 (each sample's
``poses.npy`` t and, for the last, t+1) and k+1 relative predictions. A run shorter than the snippet is
reported as skipped. ATE per window is in ``dynamo_depth.odometry_metrics.ate_snippets``; mean and std are
over all windows of all runs.

Outputs in ``--out``: ``metrics.json``, ``metrics.md``. Exit 0, or 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dynamo_depth import odometry_metrics
from eval import PredictionFile, fmt, iter_samples, write_report


def _runs(entries: list[tuple[int, np.ndarray, np.ndarray, str]]) -> list[list[tuple[int, np.ndarray, np.ndarray, str]]]:
    """Split (frame, poses, prediction, key) entries sorted by frame into runs of consecutive frames."""
    runs: list[list[Any]] = []
    for entry in sorted(entries, key=lambda e: e[0]):
        if runs and entry[0] == runs[-1][-1][0] + 1:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    return runs


def evaluate_odometry(
    *, data_url: str, predict: Callable[[Any], np.ndarray], snippet: int = 5, convention: str = "rmse",
    max_samples: int | None = None,
) -> dict[str, Any]:
    """ATE report over all runs of consecutive frames in ``data_url``."""
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for sample in iter_samples(data_url, max_samples=max_samples):
        if sample.poses is None:
            raise ValueError(f"--data {data_url!r}: sample {sample.key!r} has no poses (schema v2, e.g. built by "
                             "builders.video from a camera alone): eval.odometry needs ground-truth poses")
        relative = predict(sample)
        groups[(sample.meta.sequence, sample.meta.camera)].append(
            (sample.meta.frame_indices[1], sample.poses, relative, sample.key))
    errors: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    for (sequence, camera), entries in sorted(groups.items()):
        for run in _runs(entries):
            if len(run) + 1 < snippet:
                skipped.append({"key": run[0][3], "reason": f"run of {len(run) + 1} frames in {sequence}/{camera} "
                                                            f"is shorter than the {snippet}-frame snippet"})
                continue
            gt = np.stack([e[1][1] for e in run] + [run[-1][1][2]])
            rel = np.stack([e[2] for e in run])
            try:
                errors.append(odometry_metrics.ate_snippets(gt_poses=gt, pred_relative=rel, snippet=snippet, convention=convention))  # type: ignore[arg-type]
            except ValueError as exc:
                raise ValueError(f"run starting at {run[0][3]!r}: {exc}") from exc
    if not errors:
        raise ValueError(f"--data {data_url!r}: no run of {snippet} consecutive frames to evaluate")
    all_errors = np.concatenate(errors)
    return {
        "command": "eval.odometry", "data": data_url, "snippet": snippet, "convention": convention,
        "num_runs": len(errors), "num_snippets": int(all_errors.size), "skipped": skipped,
        "ate_mean": float(all_errors.mean()), "ate_std": float(all_errors.std()),
    }


def odometry_markdown(report: dict[str, Any]) -> str:
    return "\n".join([
        "# Odometry", "",
        f"{report['num_snippets']} {report['snippet']}-frame snippets in {report['num_runs']} runs "
        f"(ATE convention {report['convention']}), skipped {len(report['skipped'])}.", "",
        "| ATE mean (m) | ATE std (m) |", "|---|---|",
        f"| {fmt(report['ate_mean'])} | {fmt(report['ate_std'])} |",
    ]) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.odometry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="shard .tar, folder/prefix of shards, or manifest.json")
    parser.add_argument("--predictions", help=".npz of per-sample (4, 4) camera_t_from_camera_t+1")
    parser.add_argument("--checkpoint", help="trainer checkpoint or original module folder (all seven modules)")
    parser.add_argument("--snippet", type=int, default=5, help="frames per snippet")
    parser.add_argument("--convention", choices=("rmse", "sfmlearner"), default="rmse",
                        help="rmse: sqrt(mean |e|^2); sfmlearner: sqrt(sum |e|^2) / frames")
    parser.add_argument("--out", help="folder for metrics.json and metrics.md")
    parser.add_argument("--max-samples", type=int, help="read at most N samples")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.predictions is None):
        parser.error("give exactly one of --checkpoint and --predictions")
    try:
        with contextlib.ExitStack() as stack:
            if args.predictions is not None:
                preds = stack.enter_context(PredictionFile(args.predictions))
                predict = lambda sample: preds.get(sample.key, ndim=2, shape=(4, 4))  # noqa: E731
            else:
                from eval.predictors import odometry_predictor
                predict = odometry_predictor(args.checkpoint)
            report = evaluate_odometry(data_url=args.data, predict=predict, snippet=args.snippet,
                                       convention=args.convention, max_samples=args.max_samples)
    except ValueError as exc:
        print(f"eval.odometry: error: {exc}", file=sys.stderr)
        return 2
    markdown = odometry_markdown(report)
    print(markdown)
    if args.out:
        write_report(out_dir=args.out, report=report, markdown=markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
