"""``python -m eval.depth``: the paper's depth metrics, a Markdown table and figures.

Usage::

    python -m eval.depth --data SHARDS (--predictions FILE.npz | --checkpoint CKPT)
                         [--dataset waymo|nuscenes|kitti] [--kind disparity|depth] [--out DIR] [--max-samples N]

Predictions file: ``np.savez(path, **{sample_key: disparity})`` with one (H', W') float32 array per
sample, the network's disparity of the target frame ``cur.jpg`` at the training resolution (any
positive scale: depth = 1 / disparity up to the median scale; with ``--kind depth`` the arrays are
depths instead). Protocol (``dynamo_depth.metrics``): bilinear upsampling to the original size,
nearest pixel of each LiDAR point, gt in (1e-3, cap] with cap 75 m (Waymo, nuScenes) or 80 m plus
the Garg crop (KITTI), per-image median scaling, clamp. The dataset defaults to ``meta.json``'s.

Outputs in ``--out``: ``metrics.json``, ``metrics.md``, ``error_by_distance.png``, ``qualitative.png``.
Exit status 0 on success, 2 on bad input (message on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dynamo_depth import metrics as m
from eval import PredictionFile, fmt, iter_samples, rgb_from_jpeg, write_report
from eval.figures import QualitativeRow, plot_error_by_distance, plot_qualitative

Predictor = Callable[[Any], np.ndarray]
"""``TripletSample`` -> (H', W') map of the target frame (disparity or depth, see ``kind``)."""


def load_depth_predictor(ckpt_path: str) -> Predictor:
    """Scale-0 sigmoid disparity of a trainer checkpoint or an original module folder (``eval.predictors``)."""
    from eval.predictors import depth_predictor

    return depth_predictor(ckpt_path)


def disparity_from_network(*, network: Any, image_rgb: np.ndarray) -> np.ndarray:
    """Scale-0 sigmoid disparity (H, W) of a ``DynamoDepthModel`` for one (H, W, 3) uint8 RGB image."""
    import torch

    image = torch.from_numpy(np.ascontiguousarray(image_rgb)).permute(2, 0, 1)[None].float() / 255.0
    network.eval()
    with torch.no_grad():
        disparity = network.predict_disparity(image)[0]
    return disparity[0, 0].double().numpy()


def _point_errors(sample: Any, prediction: np.ndarray, result: m.ImageResult, dataset: str, kind: str) -> QualitativeRow:
    """Per-point AbsRel of one evaluated image, for the qualitative figure."""
    protocol = m.DATASET_PROTOCOL[dataset]
    hw = tuple(sample.meta.original_size)
    pts = sample.depth.astype(np.float64)
    valid = m.valid_point_mask(points_uvz=pts, original_hw=hw, protocol=protocol)
    rows, cols = m.nearest_pixel(u=pts[valid, 0], v=pts[valid, 1])
    sampled = m.upsample_map(prediction=prediction, original_hw=hw)[rows, cols]
    depth = 1.0 / sampled if kind == "disparity" else sampled
    scaled = np.clip(depth * result.median_ratio, protocol.min_depth, protocol.max_depth)
    gt = pts[valid, 2]
    image = rgb_from_jpeg(sample.images[1])
    uv = pts[valid, :2] * np.array([image.shape[1] / hw[1], image.shape[0] / hw[0]])
    pred_depth = (1.0 / prediction if kind == "disparity" else prediction) * result.median_ratio
    return QualitativeRow(key=sample.key, image=image, depth=pred_depth, points_uv=uv, abs_rel=np.abs(gt - scaled) / gt)


def evaluate_depth(
    *, data_url: str, predict: Predictor, dataset: str | None = None, kind: str = "disparity",
    max_samples: int | None = None, num_qualitative: int = 3,
) -> tuple[dict[str, Any], list[QualitativeRow]]:
    """Evaluate every sample of ``data_url``; returns the JSON report and up to ``num_qualitative`` rows."""
    results: list[m.ImageResult] = []
    skipped: list[dict[str, str]] = []
    rows: list[QualitativeRow] = []
    chosen = dataset
    for sample in iter_samples(data_url, max_samples=max_samples):
        if chosen is None:
            chosen = sample.meta.dataset
        elif dataset is None and sample.meta.dataset != chosen:
            raise ValueError(f"sample {sample.key!r}: dataset {sample.meta.dataset!r} differs from {chosen!r}; "
                             "evaluate one dataset at a time or pass --dataset")
        prediction = predict(sample)
        try:
            result = m.evaluate_image(points_uvz=sample.depth, prediction=prediction, original_hw=sample.meta.original_size,
                                      dataset=chosen, labels=sample.motion, kind=kind, key=sample.key)  # type: ignore[arg-type]
        except m.NoValidPointsError as exc:
            skipped.append({"key": sample.key, "reason": str(exc)})
            continue
        results.append(result)
        if len(rows) < num_qualitative:
            rows.append(_point_errors(sample, prediction, result, chosen, kind))
    if not results:
        raise ValueError(f"--data {data_url!r}: no sample could be evaluated (skipped: {len(skipped)})")
    protocol = m.DATASET_PROTOCOL[chosen]  # type: ignore[index]
    report = {
        "command": "eval.depth", "data": data_url, "dataset": chosen, "prediction_kind": kind,
        "protocol": {"min_depth": protocol.min_depth, "max_depth": protocol.max_depth, "garg_crop": protocol.garg_crop,
                     "median_scaling": "per image"},
        "skipped": skipped, **m.aggregate(results),
    }
    return report, rows


def _metric_row(label: str, values: dict[str, Any], points: Any) -> str:
    return "| " + " | ".join([label, fmt(points)] + [fmt(values.get(n), 3) for n in m.METRIC_NAMES]) + " |"


def depth_markdown(report: dict[str, Any]) -> str:
    """Markdown tables: overall (mean over images), per motion class and per distance bin (pooled)."""
    head = "| | points | AbsRel | SqRel | RMSE | RMSElog | d<1.25 | d<1.25^2 | d<1.25^3 |\n|---|---|---|---|---|---|---|---|---|"
    lines = [f"# Depth evaluation: {report['dataset']}", "",
             f"{report['num_images']} images, {report['num_points']} LiDAR points, skipped {len(report['skipped'])}; "
             f"cap {report['protocol']['max_depth']} m, Garg crop {report['protocol']['garg_crop']}, per-image median scaling "
             f"(ratio {report['median_ratio']['mean']:.3f} +- {report['median_ratio']['std']:.3f}).", "", head,
             _metric_row("all (mean over images)", report["overall"], report["num_points"])]
    for name, values in report["per_class"].items():
        lines.append(_metric_row(f"{name} (pooled)", values, values["num_points"]))
    lines += ["", "## By ground-truth distance (pooled over points)", "", head]
    for b in report["by_distance"]:
        lines.append(_metric_row(f"{b['lo']:.0f}-{b['hi']:.0f} m", b, b["num_points"]))
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.depth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="shard .tar, folder/prefix of shards, or manifest.json")
    parser.add_argument("--checkpoint", help="trainer checkpoint or original Dynamo-Depth module folder")
    parser.add_argument("--predictions", help=".npz of per-sample maps named by sample key")
    parser.add_argument("--dataset", choices=sorted(m.DATASET_PROTOCOL), help="protocol; default: meta.json's dataset")
    parser.add_argument("--kind", choices=("disparity", "depth"), default="disparity", help="what the maps hold")
    parser.add_argument("--out", help="folder for metrics.json, metrics.md and figures")
    parser.add_argument("--max-samples", type=int, help="evaluate at most N samples")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.predictions is None):
        parser.error("give exactly one of --checkpoint and --predictions")
    try:
        if args.predictions is not None:
            with PredictionFile(args.predictions) as preds:
                report, rows = evaluate_depth(
                    data_url=args.data, predict=lambda s: preds.get(s.key, ndim=2), dataset=args.dataset,
                    kind=args.kind, max_samples=args.max_samples)
        else:
            report, rows = evaluate_depth(data_url=args.data, predict=load_depth_predictor(args.checkpoint),
                                          dataset=args.dataset, kind=args.kind, max_samples=args.max_samples)
    except (ValueError, NotImplementedError) as exc:
        print(f"eval.depth: error: {exc}", file=sys.stderr)
        return 2
    markdown = depth_markdown(report)
    print(markdown)
    if args.out:
        write_report(out_dir=args.out, report=report, markdown=markdown)
        plot_error_by_distance(by_distance=report["by_distance"], path=os.path.join(args.out, "error_by_distance.png"))
        plot_qualitative(rows=rows, path=os.path.join(args.out, "qualitative.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
