"""``python -m eval.depth``: the paper's depth metrics, a Markdown table and figures.

Usage::

    python -m eval.depth --data SHARDS (--predictions FILE.npz | --checkpoint CKPT)
                         [--dataset waymo|nuscenes|kitti] [--kind sigmoid|disparity|depth]
                         [--pixel truncate|nearest] [--class-rmse image-weighted|pooled]
                         [--out DIR] [--max-samples N]

By default the numbers are those of the original Dynamo-Depth ``eval/depth.py`` (the paper's), step by
step as ``dynamo_depth.evaluation.depth`` documents: ``disp_to_depth(sigmoid, 0.1, 100)`` upsampled
bilinearly to the original size then inverted; LiDAR gt in ``(1e-3, cap)`` m (cap 80 m + Garg crop for
KITTI, 75 m for Waymo / nuScenes); the pixel of a point by truncation; per-image median scaling with the
lower middle value; clamp; overall = mean over images; per motion class = point-count-weighted mean of
per-image metrics. ``--pixel nearest`` and ``--class-rmse pooled`` leave the original protocol; the
printed table says which protocol produced it. The dataset defaults to ``meta.json``'s.

Predictions file: ``np.savez(path, **{sample_key: map})`` with one (H', W') array per sample at the
training resolution: with ``--kind sigmoid`` (default) the depth network's sigmoid output
``('disp', 0, 0)``; ``disparity``: an already scaled disparity (depth = 1 / disparity up to the median
scale); ``depth``: depth maps. ``--checkpoint`` always evaluates the network's sigmoid output and feeds it
the original's input: for KITTI the sample's raw PNG (``orig.png``, test-split builds) resized bicubic,
for Waymo / nuScenes the stored ``cur.jpg`` (the original's ``rgb/downsample`` JPEG).

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

from dynamo_depth.evaluation import depth as de
from dynamo_depth.evaluation import metrics as m
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


def _point_errors(sample: Any, prediction: np.ndarray, result: de.ImageResult, dataset: str, kind: str,
                  protocol: de.EvalProtocol) -> QualitativeRow:
    """Per-point AbsRel of one evaluated image, for the qualitative figure."""
    limits = m.DATASET_PROTOCOL[dataset]
    hw = tuple(sample.meta.original_size)
    pts = sample.depth.astype(np.float32)
    valid = de.valid_points(points_uvz=pts, original_hw=hw, protocol=limits, pixel=protocol.pixel)
    rows, cols = de.point_pixels(points_uvz=pts[valid], pixel=protocol.pixel)
    full = de.depth_map(prediction=prediction, original_hw=hw, kind=kind)
    scaled = np.clip(full[rows, cols].astype(np.float64) * result.median_ratio, limits.min_depth, limits.max_depth)
    gt = pts[valid, 2].astype(np.float64)
    image = rgb_from_jpeg(sample.images[1])
    uv = pts[valid, :2].astype(np.float64) * np.array([image.shape[1] / hw[1], image.shape[0] / hw[0]])
    pred_depth = de.depth_map(prediction=prediction, original_hw=image.shape[:2], kind=kind) * result.median_ratio
    return QualitativeRow(key=sample.key, image=image, depth=pred_depth, points_uv=uv, abs_rel=np.abs(gt - scaled) / gt)


def evaluate_depth(
    *, data_url: str, predict: Predictor, dataset: str | None = None, kind: str = "sigmoid",
    protocol: de.EvalProtocol = de.ORIGINAL, max_samples: int | None = None, num_qualitative: int = 3,
) -> tuple[dict[str, Any], list[QualitativeRow]]:
    """Evaluate every sample of ``data_url``; returns the JSON report and up to ``num_qualitative`` rows."""
    if kind not in de.KINDS:
        raise ValueError(f"--kind {kind!r}; allowed: {de.KINDS}")
    results: list[de.ImageResult] = []
    skipped: list[dict[str, str]] = []
    rows: list[QualitativeRow] = []
    chosen = dataset
    for sample in iter_samples(data_url, max_samples=max_samples):
        if chosen is None:
            chosen = sample.meta.dataset
        elif dataset is None and sample.meta.dataset != chosen:
            raise ValueError(f"sample {sample.key!r}: dataset {sample.meta.dataset!r} differs from {chosen!r}; "
                             "evaluate one dataset at a time or pass --dataset")
        if sample.depth is None:
            raise ValueError(f"--data {data_url!r}: sample {sample.key!r} has no LiDAR depth (schema v2, e.g. built "
                             "by builders.video from a camera alone): eval.depth needs ground-truth depth; use "
                             "`python -m dynamo_depth predict` to look at such footage")
        prediction = predict(sample)
        try:
            result = de.evaluate_image(points_uvz=sample.depth, prediction=prediction,
                                       original_hw=sample.meta.original_size, dataset=chosen, labels=sample.motion,
                                       kind=kind, key=sample.key, protocol=protocol)
        except m.NoValidPointsError as exc:
            skipped.append({"key": sample.key, "reason": str(exc)})
            continue
        results.append(result)
        if len(rows) < num_qualitative:
            rows.append(_point_errors(sample, prediction, result, chosen, kind, protocol))
    if not results:
        raise ValueError(f"--data {data_url!r}: no sample could be evaluated (skipped: {len(skipped)})")
    limits = m.DATASET_PROTOCOL[chosen]  # type: ignore[index]
    report = {
        "command": "eval.depth", "data": data_url, "dataset": chosen, "prediction_kind": kind,
        "protocol": {"name": "original" if protocol.is_original else "modified", "description": protocol.describe(),
                     "pixel": protocol.pixel, "class_rmse": protocol.class_rmse, "min_depth": limits.min_depth,
                     "max_depth": limits.max_depth, "garg_crop": limits.garg_crop, "median": "per image, lower middle",
                     "disp_to_depth": [de.DISP_MIN_DEPTH, de.DISP_MAX_DEPTH] if kind == "sigmoid" else None},
        "skipped": skipped, **de.aggregate(results, protocol=protocol),
    }
    return report, rows


def _metric_row(label: str, values: dict[str, Any], points: Any) -> str:
    return "| " + " | ".join([label, fmt(points)] + [fmt(values.get(n), 3) for n in m.METRIC_NAMES]) + " |"


def depth_markdown(report: dict[str, Any]) -> str:
    """Markdown tables: overall (mean over images), per motion class and per distance bin (pooled)."""
    proto = report["protocol"]
    head = "| | points | AbsRel | SqRel | RMSE | RMSElog | d<1.25 | d<1.25^2 | d<1.25^3 |\n|---|---|---|---|---|---|---|---|---|"
    class_how = "point-weighted mean over images" if proto["class_rmse"] == "image-weighted" else "pooled"
    lines = [f"# Depth evaluation: {report['dataset']}", "", f"Protocol: {proto['description']}.", "",
             f"{report['num_images']} images, {report['num_points']} LiDAR points, skipped {len(report['skipped'])}; "
             f"gt in ({proto['min_depth']}, {proto['max_depth']}) m, Garg crop {proto['garg_crop']}, pixel "
             f"{proto['pixel']}, prediction {report['prediction_kind']}, per-image median scaling "
             f"(ratio {report['median_ratio']['mean']:.3f} +- {report['median_ratio']['std']:.3f}).", "", head,
             _metric_row("all (mean over images)", report["overall"], report["num_points"])]
    for name, values in report["per_class"].items():
        lines.append(_metric_row(f"{name} ({class_how})", values, values["num_points"]))
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
    parser.add_argument("--kind", choices=de.KINDS, default=None,
                        help="what the --predictions maps hold (default sigmoid: the network's output)")
    parser.add_argument("--pixel", choices=de.PIXEL_MODES, default="truncate",
                        help="pixel of a LiDAR point (default truncate: the original)")
    parser.add_argument("--class-rmse", choices=de.CLASS_RMSE_MODES, default="image-weighted",
                        help="per-class metrics (default image-weighted: the original)")
    parser.add_argument("--out", help="folder for metrics.json, metrics.md and figures")
    parser.add_argument("--max-samples", type=int, help="evaluate at most N samples")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.predictions is None):
        parser.error("give exactly one of --checkpoint and --predictions")
    if args.checkpoint is not None and args.kind not in (None, "sigmoid"):
        parser.error("--checkpoint evaluates the network's sigmoid output: --kind must be sigmoid or left out")
    common = {"data_url": args.data, "dataset": args.dataset, "kind": args.kind or "sigmoid",
              "max_samples": args.max_samples}
    try:
        common["protocol"] = de.EvalProtocol(pixel=args.pixel, class_rmse=args.class_rmse)
        if args.predictions is not None:
            with PredictionFile(args.predictions) as preds:
                report, rows = evaluate_depth(predict=lambda s: preds.get(s.key, ndim=2), **common)
        else:
            report, rows = evaluate_depth(predict=load_depth_predictor(args.checkpoint), **common)
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
