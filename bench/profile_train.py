"""Benchmark: where a training step's time goes (forward / losses / backward / optimizer, top operators).

    PYTHONPATH=. .venv/bin/python bench/profile_train.py [--batch 3] [--height 192] [--width 640] [--threads 2]
        [--networks resnet18 litemono] [--phases disp_init fine_tune] [--steps 3]

One process per (depth network, phase) so each peak RSS (VmHWM) is its own. Each runs the trainer's own
pieces (``DynamoDepthModel`` in train mode, ``make_loss_batch``, ``compute_losses``, Adam over the phase's
trainable parameters) on random images, two warm-up steps, then ``--steps`` timed steps (median per part)
and one step under ``torch.profiler`` (top operators by self CPU time). fp32, CPU. No data loading (the
loader's share is measured by ``bench/train.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

SCALES = {"resnet18": (0, 1, 2, 3), "litemono": (0, 1, 2)}
PARTS = ("forward", "losses", "backward", "optimizer")


def one_step(model, optimizer, images, K, *, phase: str, scales) -> dict[str, float]:
    import torch

    from dynamo_depth.loss_inputs import LossSettings, SeededDraws, make_loss_batch
    from dynamo_depth.losses import compute_losses

    batch = make_loss_batch(color={-1: images[:, 0], 0: images[:, 1], 1: images[:, 2]}, K=K, scales=scales,
                            normalised=False)
    marks = [time.perf_counter()]
    outputs = model(images, phase=phase)
    marks.append(time.perf_counter())
    result = compute_losses(batch, outputs, phase=phase, ramp_factor=1.0, settings=LossSettings(scales=scales),
                            draws=SeededDraws(seed=0))
    marks.append(time.perf_counter())
    optimizer.zero_grad(set_to_none=True)
    result.total.backward()
    marks.append(time.perf_counter())
    optimizer.step()
    marks.append(time.perf_counter())
    del torch
    return {part: marks[i + 1] - marks[i] for i, part in enumerate(PARTS)}


def measure(network: str, phase: str, *, batch: int, height: int, width: int, threads: int, steps: int) -> dict:
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from dynamo_depth.models import DynamoDepthModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    scales = SCALES[network]
    model = DynamoDepthModel(depth_network=network, scales=scales, drop_path_rate=0.0)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    params = model.trainable_parameters(phase=phase)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=1e-4)
    images = torch.rand(batch, 3, 3, height, width)
    K = np.tile(np.array([[[0.58 * width, 0, 0.5 * width], [0, 1.92 * height, 0.5 * height], [0, 0, 1]]],
                         dtype=np.float32), (batch, 1, 1))
    for _ in range(2):
        one_step(model, optimizer, images, K, phase=phase, scales=scales)
    rows = [one_step(model, optimizer, images, K, phase=phase, scales=scales) for _ in range(steps)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_step(model, optimizer, images, K, phase=phase, scales=scales)
    top = [(e.key, e.self_cpu_time_total / 1e6) for e in
           sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]]
    median = {part: statistics.median(r[part] for r in rows) for part in PARTS}
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return {"network": network, "phase": phase, "median": median, "total": statistics.median(sum(r.values()) for r in rows),
            "peak_rss_gib": hwm / 2**20, "top": top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--networks", nargs="+", default=["resnet18", "litemono"], choices=sorted(SCALES))
    parser.add_argument("--phases", nargs="+", default=["disp_init", "fine_tune"])
    parser.add_argument("--child", nargs=2, metavar=("NETWORK", "PHASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.child[0], args.child[1], batch=args.batch, height=args.height, width=args.width,
                         threads=args.threads, steps=args.steps)
        print(json.dumps(result))
        return
    for network in args.networks:
        for phase in args.phases:
            command = [sys.executable, __file__, "--child", network, phase, "--batch", str(args.batch), "--height",
                       str(args.height), "--width", str(args.width), "--threads", str(args.threads),
                       "--steps", str(args.steps)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            parts = ", ".join(f"{k} {v:.2f}" for k, v in r["median"].items())
            print(f"{network} {phase}: {r['total']:.2f} s/step ({parts}); peak RSS {r['peak_rss_gib']:.2f} GiB")
            print("  top self-CPU operators: " + ", ".join(f"{k} {v:.2f}s" for k, v in r["top"]))


if __name__ == "__main__":
    main()
