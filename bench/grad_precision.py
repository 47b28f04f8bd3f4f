"""Benchmark: how far one batch's float32 gradients are from float64, per memory layout (CPU or one GPU).

    PYTHONPATH=. .venv/bin/python -m bench.grad_precision --shards SHARDS [--depth-network litemono]
    PYTHONPATH=. .venv/bin/python -m bench.train --no-speed --grad-precision ...   # after the quality runs

One disp_init step of the trainer's path (forward, ``compute_losses(backward=True)`` into the cut outputs,
``ModelOutputs.backward``) on the first ``batch`` shard samples (no augmentation), from the same initial
weights (``train.seed``) and the same automasking noise, in float64 channels-first (the reference), float64
channels_last, float32 channels-first and float32 channels_last. Per trainable parameter, the relative
error ||g - g_ref|| / ||g_ref|| (parameters with a zero reference gradient are left out); the table gives
the median, 90th percentile and maximum over all parameters, over the BatchNorm parameters and over the
others, and the parameter with the largest error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

import train.loop as loop
from dynamo_depth.config import load_config
from dynamo_depth.data import make_dataset
from dynamo_depth.objective.inputs import LossBatch, SeededDraws
from dynamo_depth.objective.losses import compute_losses
from train.batches import StepBatch, prepare_batch
from train.loop import Runtime

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"resnet18": "kitti_resnet18.yaml", "litemono": "kitti.yaml"}
VARIANTS = (("float64", "channels_first"), ("float64", "channels_last"), ("float32", "channels_first"),
            ("float32", "channels_last"))
"""(dtype, layout) rows; the first is the reference."""
PHASE = "disp_init"
CPU = Runtime()


def first_batch(shards: Path, *, batch: int, height: int, width: int, scales: tuple[int, ...],
                device: torch.device) -> StepBatch:
    """The first ``batch`` samples of the shards (shard order, no augmentation) as one float32 ``StepBatch``."""
    images, Ks = [], []
    for sample in make_dataset(str(shards), shuffle=False, augment=False):
        K4 = torch.eye(4)
        K4[:3, :3] = torch.from_numpy(sample["K"]).float()
        images.append(torch.from_numpy(sample["images"]))
        Ks.append(K4[None])
        if len(images) == batch:
            break
    if len(images) < batch:
        raise ValueError(f"{shards}: {len(images)} samples, the batch needs {batch}")
    stacked = torch.stack(images)
    return prepare_batch({"images": stacked, "images_aug": stacked, "K": torch.stack(Ks)}, height=height,
                         width=width, scales=scales, device=device)


def cast_batch(batch: StepBatch, dtype: torch.dtype) -> StepBatch:
    """Every tensor of ``batch`` in ``dtype``."""
    losses = LossBatch(**{f.name: {k: v.to(dtype) for k, v in getattr(batch.losses, f.name).items()}
                          for f in fields(batch.losses)})
    return StepBatch(images_aug=batch.images_aug.to(dtype), losses=losses)


def step_gradients(config, runtime: Runtime, batch: StepBatch, *, dtype: torch.dtype,
                   channels_last: bool) -> tuple[dict[str, torch.Tensor], set[str]]:
    """One disp_init step's gradients {parameter name: float64 copy} and the BatchNorm parameters' names."""
    model = loop.build_model(config, runtime).to(dtype)  # train.seed: the same initial weights every call
    if channels_last:
        model.use_channels_last()
    model.train()
    params = loop.select_trainable(model, phase=PHASE)
    torch.manual_seed(config.train.seed)  # stochastic depth (Lite-Mono): the same dropped samples every call
    data = cast_batch(batch, dtype)
    outputs = model(data.images_aug, phase=PHASE)
    cut = outputs.cut()
    compute_losses(data.losses, cut, phase=PHASE, ramp_factor=0.0, weights=loop.loss_weights(config),
                   settings=loop.loss_settings(config), draws=SeededDraws(seed=0), backward=True)
    outputs.backward(cut)
    chosen = {id(p) for p in params}
    grads = {name: p.grad.detach().double().cpu().clone() for name, p in model.named_parameters()
             if id(p) in chosen and p.grad is not None}
    norms = {f"{m}.{n}" if m else n for m, module in model.named_modules()
             if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for n, _ in module.named_parameters(
                 recurse=False)}
    return grads, norms


def relative_errors(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """||g - g_ref|| / ||g_ref|| per parameter with a non-zero reference gradient."""
    out = {}
    for name, ref in reference.items():
        norm = float(ref.norm())
        if norm > 0.0:
            out[name] = float((grads[name] - ref).norm()) / norm
    return out


def _summary(errors: Sequence[float]) -> str:
    if not errors:
        return "- | - | -"
    values = np.asarray(errors)
    return f"{np.median(values):.2e} | {np.percentile(values, 90):.2e} | {values.max():.2e}"


def grad_precision_table(rows: dict[tuple[str, str], dict[str, float]], norms: set[str]) -> str:
    """Markdown, one row per (dtype, layout): median / p90 / max relative error, all / BatchNorm / other."""
    lines = ["| dtype | layout | params | all: median | p90 | max | BatchNorm: median | p90 | max "
             "| other: median | p90 | max | largest |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (dtype, layout), errors in rows.items():
        worst = max(errors, key=errors.__getitem__)
        lines.append(f"| {dtype} | {layout} | {len(errors)} | {_summary(list(errors.values()))} "
                     f"| {_summary([v for k, v in errors.items() if k in norms])} "
                     f"| {_summary([v for k, v in errors.items() if k not in norms])} | `{worst}` |")
    return "\n".join(lines)


def report_grad_precision(*, shards: Path, network: str, height: int, width: int, batch: int,
                          runtime: Runtime = CPU, seed: int = 0) -> dict[tuple[str, str], dict[str, float]]:
    """Print the table (see the module docstring); returns {(dtype, layout): {parameter: relative error}}."""
    config = load_config(REPO / "configs" / PRESETS[network], overrides=[
        f"data.url={shards}", f"data.height={height}", f"data.width={width}", f"data.batch_size={batch}",
        f"train.seed={seed}", "train.channels_last=false"])  # build_model channels-first; step_gradients converts
    data = first_batch(shards, batch=batch, height=height, width=width, scales=config.model.scales,
                       device=runtime.device)
    grads, norms = {}, set()
    for dtype, layout in VARIANTS:
        grads[(dtype, layout)], norms = step_gradients(config, runtime, data, dtype=getattr(torch, dtype),
                                                       channels_last=layout == "channels_last")
    reference = grads[VARIANTS[0]]
    rows = {key: relative_errors(g, reference) for key, g in grads.items() if key != VARIANTS[0]}
    print(f"\ngradient precision ({network}, {runtime.device.type}): one {PHASE} step, batch {batch}, "
          f"{height}x{width}, seed {seed}; relative error ||g - g64|| / ||g64|| per parameter against float64 "
          f"channels-first\n")
    print(grad_precision_table(rows, norms), flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="KITTI-format shards (e.g. bench.train --out's shards/)")
    parser.add_argument("--depth-network", choices=sorted(PRESETS), default="resnet18")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="train.seed of the initial weights")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    report_grad_precision(shards=Path(args.shards), network=args.depth_network, height=args.height,
                          width=args.width, batch=args.batch, seed=args.seed)


if __name__ == "__main__":
    main()
