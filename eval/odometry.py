"""``python -m eval.odometry``: 5-frame ATE of predicted ego-motion as the original Dynamo-Depth.

Usage::

    python -m eval.odometry --data SHARDS (--checkpoint CKPT | --predictions FILE.npz)
                            [--gt original|camera] [--axes zxy|none] [--ate sfmlearner|rmse]
                            [--max-sequences 100] [--out DIR] [--max-samples N]

Predictions file: ``np.savez(path, **{sample_key: pose})``, one (4, 4) array per sample: the pose of frame
t+1 in camera t (``camera_t_from_camera_t+1``, OpenCV axes, network scale). ``--checkpoint`` computes the
original's ``transformation_from_parameters(axisangle[+1], translation[+1])`` (float32; the pose network saw
frame +1 and frame 0, target last) on the stored frames.

Default: the original's ``eval/odometry.py`` (``../shared/reference/eval_protocol.md`` section 7). Sequences
(sequence, camera) sorted by name, only the first 100; per sequence its non-edge samples sorted by frame (the
shards must hold every frame of the sequence, as the original reads every image of the folder); runs of
consecutive targets t_1..t_N give N + 1 ground-truth poses (frames t_1..t_N + 1: the original skips the first
line of ``odometry.txt``). Ground truth as the original's: the VEHICLE (Waymo) / ego (nuScenes) pose
``world_from_camera @ inv(ego_from_camera)``, local poses ``inv(inv(G[i-1]) G[i])``; windows i = 0..N-1 of four
poses (the last, three: one 4-frame window); predicted positions re-ordered to (z, x, y); ATE
``sqrt(sum |e|^2) / K`` (SfMLearner); all windows pooled (mean, std, min, median, max; speed too).

The original's defects, and the options that correct them (the printed table then says "MODIFIED protocol"):
its ground truth is not the camera's pose and runs backwards, and the (z, x, y) re-ordering does not map
camera axes to vehicle axes, so the scale comes out negative and the exact camera motion does not score 0:
``--gt camera`` uses the camera poses in the prediction's direction (``inv(G[i-1]) G[i]``), ``--axes none``
keeps the prediction's axes; its ATE is not an RMSE: ``--ate rmse``. The corrected protocol is all three.
``--max-sequences 0`` evaluates every sequence.

Outputs in ``--out``: ``metrics.json``, ``metrics.md``, ``record.npy`` (windows x [ATE, speed], as the
original's ``record_<ckpt>-5.npy``). Exit 0, or 2 on bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynamo_depth.evaluation import odometry as om
from dynamo_depth.geometry import compose, invert_se3
from dynamo_depth.shards.schema import edge_neighbours
from eval import PredictionFile, fmt, iter_samples, write_report

GT_CHOICES = ("original", "camera")
AXES_CHOICES = ("zxy", "none")
STOP_SEGMENT = 100


@dataclass(frozen=True)
class OdometryProtocol:
    """Where a user may leave the original protocol; the defaults are the original's."""

    gt: str = "original"
    axes: str = "zxy"
    ate: str = "sfmlearner"
    max_sequences: int = STOP_SEGMENT

    def __post_init__(self) -> None:
        for name, value, allowed in (("gt", self.gt, GT_CHOICES), ("axes", self.axes, AXES_CHOICES),
                                     ("ate", self.ate, om.ATE_FORMS)):
            if value not in allowed:
                raise ValueError(f"--{name} {value!r}; allowed: {allowed}")
        if self.max_sequences < 0:
            raise ValueError(f"--max-sequences must be >= 0 (0: all), got {self.max_sequences}")

    @property
    def is_original(self) -> bool:
        return self == OdometryProtocol()

    def describe(self) -> str:
        if self.is_original:
            return "original Dynamo-Depth protocol (eval/odometry.py @ 227a5d9)"
        changes = []
        if self.gt != "original":
            changes.append("camera ground-truth poses in the prediction's direction")
        if self.axes != "zxy":
            changes.append("prediction axes kept")
        if self.ate != "sfmlearner":
            changes.append("ATE as an RMSE")
        if self.max_sequences != STOP_SEGMENT:
            changes.append(f"{self.max_sequences or 'all'} sequences")
        return "MODIFIED protocol: " + ", ".join(changes)


def gt_pose(sample: Any, index: int, protocol: OdometryProtocol) -> np.ndarray:
    """world_from_vehicle (``original``: the original's odometry.txt) or world_from_camera of frame ``index``."""
    world_from_camera = sample.poses[index]
    if protocol.gt == "camera":
        return world_from_camera
    return compose(world_from_camera, invert_se3(np.asarray(sample.meta.ego_from_camera, dtype=np.float64)))


def _runs(entries: list[tuple[int, Any, np.ndarray]]) -> list[list[tuple[int, Any, np.ndarray]]]:
    """Split (frame, sample, prediction) entries sorted by frame into runs of consecutive frames."""
    runs: list[list[Any]] = []
    for entry in sorted(entries, key=lambda e: e[0]):
        if runs and entry[0] == runs[-1][-1][0] + 1:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    return runs


def _collect(data_url: str, predict: Callable[[Any], np.ndarray], max_samples: int | None,
             ) -> tuple[dict[tuple[str, str], list[Any]], int]:
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    edges = 0
    for sample in iter_samples(data_url, max_samples=max_samples):
        if sample.poses is None:
            raise ValueError(f"--data {data_url!r}: sample {sample.key!r} has no poses (schema v2, e.g. built by "
                             "builders.video from a camera alone): eval.odometry needs ground-truth poses")
        if edge_neighbours(sample.meta):
            edges += 1  # the original's targets are every frame but the first and the last
            continue
        groups[(sample.meta.sequence, sample.meta.camera)].append((sample.meta.frame_indices[1], sample,
                                                                   predict(sample)))
    return groups, edges


def evaluate_odometry(*, data_url: str, predict: Callable[[Any], np.ndarray],
                      protocol: OdometryProtocol = OdometryProtocol(), max_samples: int | None = None,
                      ) -> tuple[dict[str, Any], np.ndarray]:
    """The JSON report and the (windows, 2) [ATE, speed] record over the sequences of ``data_url``."""
    groups, edges = _collect(data_url, predict, max_samples)
    names = sorted(groups)
    chosen = names[:protocol.max_sequences] if protocol.max_sequences else names
    ates, speeds, per_sequence, notes = [], [], [], []
    for sequence, camera in chosen:
        runs = _runs(groups[(sequence, camera)])
        if len(runs) > 1:
            notes.append(f"{sequence}/{camera}: {len(runs)} runs of consecutive frames (the original reads every frame)")
        seq_ates, seq_speeds = [], []
        for run in runs:
            gt = np.stack([gt_pose(s, 1, protocol) for _, s, _ in run] + [gt_pose(run[-1][1], 2, protocol)])
            try:
                local = om.local_gt_poses(gt, direction="inverted" if protocol.gt == "original" else "forward")
                a, v = om.sequence_windows(pred_poses=np.stack([p for _, _, p in run]), gt_local=local,
                                           reorder_zxy=protocol.axes == "zxy", form=protocol.ate)
            except ValueError as exc:
                raise ValueError(f"run starting at {run[0][1].key!r}: {exc}") from exc
            seq_ates.append(a)
            seq_speeds.append(v)
        a, v = np.concatenate(seq_ates), np.concatenate(seq_speeds)
        ates.append(a)
        speeds.append(v)
        per_sequence.append({"sequence": sequence, "camera": camera, "num_windows": int(a.size),
                             "ate_mean": float(a.mean()) if a.size else None,
                             "ate_std": float(a.std()) if a.size else None})
    record = np.stack([np.concatenate(ates), np.concatenate(speeds)], axis=1) if ates else np.zeros((0, 2))
    if record.shape[0] == 0:
        raise ValueError(f"--data {data_url!r}: no window of 4 consecutive non-edge targets to evaluate")
    report = {
        "command": "eval.odometry", "data": data_url,
        "protocol": {"name": "original" if protocol.is_original else "modified", "description": protocol.describe(),
                     "gt": protocol.gt, "axes": protocol.axes, "ate": protocol.ate,
                     "max_sequences": protocol.max_sequences},
        "num_sequences": len(chosen), "num_sequences_in_data": len(names), "num_windows": int(record.shape[0]),
        "edge_samples_left_out": edges, "notes": notes, "per_sequence": per_sequence,
        "ate": om.summary(record[:, 0]), "speed": om.summary(record[:, 1]),
    }
    return report, record


def odometry_markdown(report: dict[str, Any]) -> str:
    rows = [f"| {name} | {fmt(report[name]['mean'])} | {fmt(report[name]['std'])} | {fmt(report[name]['min'])} | "
            f"{fmt(report[name]['median'])} | {fmt(report[name]['max'])} |" for name in ("ate", "speed")]
    return "\n".join([
        "# Odometry", "", f"Protocol: {report['protocol']['description']}.", "",
        f"{report['num_windows']} windows in {report['num_sequences']} sequences "
        f"(of {report['num_sequences_in_data']}); {report['edge_samples_left_out']} edge samples left out.", "",
        "| (m) | mean | std | min | median | max |", "|---|---|---|---|---|---|", *rows,
    ] + [f"\nNote: {n}" for n in report["notes"]]) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.odometry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="shard .tar, folder/prefix of shards, or manifest.json")
    parser.add_argument("--predictions", help=".npz of per-sample (4, 4) camera_t_from_camera_t+1")
    parser.add_argument("--checkpoint", help="trainer checkpoint or original module folder (all seven modules)")
    parser.add_argument("--gt", choices=GT_CHOICES, default="original",
                        help="original: vehicle / ego poses, local poses inverted; camera: camera poses, forward")
    parser.add_argument("--axes", choices=AXES_CHOICES, default="zxy",
                        help="zxy: re-order predicted positions to (z, x, y) as the original; none: keep")
    parser.add_argument("--ate", choices=om.ATE_FORMS, default="sfmlearner",
                        help="sfmlearner: sqrt(sum |e|^2) / K (the original); rmse: sqrt(mean |e|^2)")
    parser.add_argument("--max-sequences", type=int, default=STOP_SEGMENT,
                        help="evaluate the first N sequences by name (the original: 100; 0: all)")
    parser.add_argument("--out", help="folder for metrics.json, metrics.md and record.npy")
    parser.add_argument("--max-samples", type=int, help="read at most N samples")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.predictions is None):
        parser.error("give exactly one of --checkpoint and --predictions")
    try:
        protocol = OdometryProtocol(gt=args.gt, axes=args.axes, ate=args.ate, max_sequences=args.max_sequences)
        with contextlib.ExitStack() as stack:
            if args.predictions is not None:
                preds = stack.enter_context(PredictionFile(args.predictions))
                predict = lambda sample: preds.get(sample.key, ndim=2, shape=(4, 4))  # noqa: E731
            else:
                from eval.predictors import odometry_predictor
                predict = odometry_predictor(args.checkpoint)
            report, record = evaluate_odometry(data_url=args.data, predict=predict, protocol=protocol,
                                               max_samples=args.max_samples)
    except ValueError as exc:
        print(f"eval.odometry: error: {exc}", file=sys.stderr)
        return 2
    markdown = odometry_markdown(report)
    print(markdown)
    if args.out:
        write_report(out_dir=args.out, report=report, markdown=markdown)
        np.save(os.path.join(args.out, "record.npy"), record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
