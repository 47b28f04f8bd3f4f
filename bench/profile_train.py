"""Benchmark: where a training step's time goes (forward / losses / backward / optimizer, top operators).

    PYTHONPATH=. .venv/bin/python bench/profile_train.py [--batch 3] [--height 192] [--width 640] [--threads 2]
        [--networks resnet18 litemono] [--phases disp_init fine_tune] [--steps 3] [--amp off bf16]
        [--baseline-code DIR] [--repeat N] [--top]

One process per row so each peak RSS (VmHWM, read after the timed steps, before the profiled one) is its own. Each runs the trainer's own pieces
(``DynamoDepthModel`` in train mode, ``make_loss_batch``, ``compute_losses``, Adam over the phase's
trainable parameters) on random images, two warm-up steps, then ``--steps`` timed steps (median per part)
and one step under ``torch.profiler`` (top operators by self CPU time). CPU. No data loading (the
loader's share is measured by ``bench/train.py``). ``--repeat N`` runs every row N times, interleaved
(baseline, ours, baseline, ours, ...: slow spells of a shared machine hit both), and reports the run with
the median s/step, every run's s/step and the highest peak RSS.

Rows:
- ``ours``: the trainer's settings: fused Adam, every network channels_last (``train.channels_last``), freed
  memory kept in the process (``train.cpu_memory``), each scale's loss backpropagated as soon as it is computed
  (``compute_losses(backward=True)``: "losses" then includes the losses' own backward, "backward" is the
  networks'), the gradients freed right after the optimizer step; fp32, or bf16 autocast over the forward with
  ``--amp bf16`` (``train.amp=bf16``).
- ``original's work`` (with ``--baseline-code DIR``, e.g. a ``git worktree`` of the commit before the speed
  work): that code, imported from DIR, channels-first, gradients freed just before the backward, and the depth network also run on frames -1 and +1 with gradients on and its outputs kept until
  the step ends, as the original does; in disp_init also the identity errors (photometric errors of the
  un-warped sources, no gradient) of every scale after the first: the original computes them inside its
  per-scale loss loop (its automask noise is drawn there, once per scale, with their shape: fixture
  README), the code in DIR once per step. This is the original's computation on this machine (the same
  networks, warps and losses, proven equal on the parity fixtures), timed in the same run as ``ours``.

Both rows build the model with the training presets' stochastic depth (Lite-Mono: rate 0.4, as the original
hard-codes it) and seed torch's RNG with the step's index before each step, so a step drops the same samples of
frame 0's depth pass in both rows (the depth network draws before anything else in a step).
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


ORIGINAL_SECONDS = {("resnet18", "fine_tune"): 4.00, ("resnet18", "disp_init"): 2.55, ("litemono", "fine_tune"): 4.44}
"""The original's step times recorded in issue #18 (batch 3, 192x640, 2 threads, fp32; another CPU: see RESULTS)."""


def one_step(model, optimizer, images, K, *, phase: str, scales, amp: str, original_work: bool) -> dict[str, float]:
    import torch

    from dynamo_depth.objective.inputs import LossSettings, SeededDraws, make_loss_batch
    from dynamo_depth.objective.losses import compute_losses

    batch = make_loss_batch(color={-1: images[:, 0], 0: images[:, 1], 1: images[:, 2]}, K=K, scales=scales,
                            normalised=False)
    marks = [time.perf_counter()]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        outputs = model(images, phase=phase)
        # the original's depth network on the neighbours: gradients on, results kept, never used
        unused = [model.predict_disparity(images[:, f]) for f in (0, 2)] if original_work else []
    if amp == "bf16":
        from train.loop import float_outputs

        outputs = float_outputs(outputs)
    marks.append(time.perf_counter())
    settings, draws = LossSettings(scales=scales), SeededDraws(seed=0)
    if original_work:
        result = compute_losses(batch, outputs, phase=phase, ramp_factor=1.0, settings=settings, draws=draws)
        if phase == "disp_init":  # the original's identity errors once per scale (that code computes them once)
            from dynamo_depth.objective.losses import _identity_errors

            with torch.no_grad():
                unused.extend(_identity_errors(batch, settings) for _ in scales[1:])
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        result.total.backward()
    else:  # as train.loop.train_step: each scale's loss backpropagated as it is computed, then the networks
        cut = outputs.cut()
        compute_losses(batch, cut, phase=phase, ramp_factor=1.0, settings=settings, draws=draws, backward=True)
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        outputs.backward(cut)
        del cut
    marks.append(time.perf_counter())
    optimizer.step()
    if not original_work:
        optimizer.zero_grad(set_to_none=True)  # as train.loop.train_step
    marks.append(time.perf_counter())
    del torch, unused
    return {part: marks[i + 1] - marks[i] for i, part in enumerate(PARTS)}


def measure(network: str, phase: str, *, batch: int, height: int, width: int, threads: int, steps: int,
            amp: str, original_work: bool) -> dict:
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from dynamo_depth.config import ModelConfig
    from dynamo_depth.models import DynamoDepthModel

    torch.set_num_threads(threads)
    if not original_work:  # as train.main.configure_torch on CPU
        from train.cpu_memory import reuse_freed_memory

        reuse_freed_memory()
    torch.manual_seed(0)
    scales = SCALES[network]
    # stochastic depth as in training (the original hard-codes 0.4; ResNet-18 has none)
    model = DynamoDepthModel(depth_network=network, scales=scales, drop_path_rate=ModelConfig().drop_path_rate)
    if not original_work:
        model.use_channels_last()
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    params = model.trainable_parameters(phase=phase)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=not original_work)  # as train.loop.make_optimizer
    images = torch.rand(batch, 3, 3, height, width)
    K = np.tile(np.array([[[0.58 * width, 0, 0.5 * width], [0, 1.92 * height, 0.5 * height], [0, 0, 1]]],
                         dtype=np.float32), (batch, 1, 1))
    def step(index: int) -> dict[str, float]:
        torch.manual_seed(index)  # step i drops the same samples in both rows (frame 0's depth pass draws first)
        return one_step(model, optimizer, images, K, phase=phase, scales=scales, amp=amp, original_work=original_work)

    for index in range(2):
        step(index)
    rows = [step(2 + i) for i in range(steps)]
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))  # before the profiled step: the profiler's own records do not count
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(2 + steps)
    top = [(e.key, e.self_cpu_time_total / 1e6) for e in
           sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]]
    median = {part: statistics.median(r[part] for r in rows) for part in PARTS}
    return {"network": network, "phase": phase, "amp": amp, "original_work": original_work, "median": median, "total": statistics.median(sum(r.values()) for r in rows),
            "peak_rss_gib": hwm / 2**20, "top": top}


def run_child(network: str, phase: str, args: argparse.Namespace, *, amp: str, code: str | None) -> dict:
    """One measurement in a fresh process (its own peak RSS); ``code``: import the repository from there."""
    command = [sys.executable, __file__, "--child", network, phase, "--batch", str(args.batch), "--height",
               str(args.height), "--width", str(args.width), "--threads", str(args.threads),
               "--steps", str(args.steps), "--amp", amp] + (["--child-code", code] if code else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def median_run(runs: list[dict]) -> dict:
    """The run with the median s/step (the lower middle for an even count), with every run's s/step in
    ``each`` and the highest peak RSS of them."""
    ordered = sorted(runs, key=lambda r: r["total"])
    return {**ordered[(len(ordered) - 1) // 2], "each": [r["total"] for r in runs],
            "peak_rss_gib": max(r["peak_rss_gib"] for r in runs)}


def table_row(r: dict, *, baseline: float | None) -> str:
    """A Markdown row: row, s/step, parts, peak RSS, ratio to the same-run baseline and to the recorded original."""
    name = "original's work" if r["original_work"] else f"ours, {'bf16' if r['amp'] == 'bf16' else 'fp32'}"
    parts = " | ".join(f"{r['median'][p]:.2f}" for p in PARTS)
    same_run = f"{r['total'] / baseline:.2f}x" if baseline else "-"
    recorded = ORIGINAL_SECONDS.get((r["network"], r["phase"]))
    vs_recorded = f"{r['total'] / recorded:.2f}x" if recorded else "-"
    each = " / ".join(f"{t:.2f}" for t in r.get("each", [r["total"]]))
    return (f"| {r['network']} | {r['phase']} | {name} | {r['total']:.2f} | {parts} | {r['peak_rss_gib']:.2f} GiB"
            f" | {same_run} | {vs_recorded} | {each} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--networks", nargs="+", default=["resnet18", "litemono"], choices=sorted(SCALES))
    parser.add_argument("--phases", nargs="+", default=["disp_init", "fine_tune"],
                        choices=["disp_init", "motion_init", "mask_init", "fine_tune"])
    parser.add_argument("--amp", nargs="+", default=["off"], choices=["off", "bf16"],
                        help="ours with fp32 (off) and/or bf16 autocast over the forward")
    parser.add_argument("--baseline-code", default=None,
                        help="a checkout of the code before the speed work: adds the original's-work row")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every row this many times, interleaved, and report the run with the median s/step")
    parser.add_argument("--top", action="store_true", help="print the top operators of each row")
    parser.add_argument("--child", nargs=2, metavar=("NETWORK", "PHASE"), help=argparse.SUPPRESS)
    parser.add_argument("--child-code", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child_code:
            sys.path.insert(0, str(Path(args.child_code).resolve()))
        result = measure(args.child[0], args.child[1], batch=args.batch, height=args.height, width=args.width,
                         threads=args.threads, steps=args.steps, amp=args.amp[0],
                         original_work=args.child_code is not None)
        print(json.dumps(result))
        return
    print(f"batch {args.batch}, {args.height}x{args.width}, {args.threads} threads, median of {args.steps} steps, "
          f"median of {args.repeat} interleaved run(s); "
          f"load average before: {Path('/proc/loadavg').read_text().split()[0]}")
    print("| network | phase | row | s/step | forward | losses | backward | optimizer | peak RSS | vs original's work"
          " (same run) | vs the recorded original | each run (s/step) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for network in args.networks:
        for phase in args.phases:
            rows = ([("off", args.baseline_code)] if args.baseline_code else []) + [(amp, None) for amp in args.amp]
            runs = [[run_child(network, phase, args, amp=amp, code=code) for amp, code in rows]
                    for _ in range(args.repeat)]  # interleaved: baseline, ours, baseline, ours, ...
            results = [median_run([r[i] for r in runs]) for i in range(len(rows))]
            baseline = results[0]["total"] if args.baseline_code else None
            for r in results:
                print(table_row(r, baseline=baseline), flush=True)
                if args.top:
                    print("  top self-CPU operators: " + ", ".join(f"{k} {v:.2f}s" for k, v in r["top"]))
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[0]}")


if __name__ == "__main__":
    main()
