"""Benchmark: does training work (loss and depth error fall) and how fast is a step, on CPU or one GPU.

    PYTHONPATH=. .venv/bin/python -m bench.train [--steps 200] [--frames 24] [--threads 2] [--device cpu]
    PYTHONPATH=. .venv/bin/python -m bench.train --no-quality --device cuda          # the five speed variants
    PYTHONPATH=. .venv/bin/python -m bench.train --no-speed --amp off bf16 --steps 300  # fp32 vs bf16 quality
    PYTHONPATH=. .venv/bin/python -m bench.train --no-speed --amp off --steps 300 \
        --layouts channels_last channels_first --seeds 0 1 --grad-precision         # memory layouts, two seeds

(``python bench/train.py`` works too: the script's own folder is taken off ``sys.path`` so that this
file does not hide the ``train`` package.)

1. Synthesise a KITTI-format world (``dynamo_depth.synth``), build shards (``builders.kitti``).
2. Quality: train the disp_init phase (depth + pose, the paper's Adam 1e-4) for ``--steps`` steps at a
   small resolution, once per (``--amp`` mode, ``--layouts`` entry, ``--seeds`` entry) on the same shards,
   and compare the untrained and the trained network on the shards (augmentation off, fp32, the run's
   layout): the photometric loss of the disp_init objective and the depth AbsRel against the shards' LiDAR
   with per-image median scaling (``dynamo_depth.evaluation.depth.evaluate_image``, KITTI protocol). With two
   layouts, a second table gives the relative difference between them per (amp, seed), and the spread
   between seeds per layout. ``--grad-precision``: one batch's float32 gradients per layout against a
   float64 reference (``bench.grad_precision``).
3. Speed: fine_tune steps (all four networks learn) at the paper's batch (12) and KITTI size 640x192
   through the streaming loader, once per ``--variants`` entry (fp32, bf16 autocast, channels_last,
   torch.compile, all three; ``default`` = the trainer's defaults): images/s, s/step (mean and median of
   the timed steps after the warm-up steps), the share of each step spent waiting for data and the peak
   memory. Both parts print Markdown tables for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/ first on sys.path would shadow the train package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402

import train.loop as loop  # noqa: E402
from bench.quality_tables import QualityKey, layout_table, quality_table  # noqa: E402
from dynamo_depth.config import AMP_MODES, RunConfig, load_config  # noqa: E402
from dynamo_depth.data import make_dataset  # noqa: E402
from dynamo_depth.evaluation import depth as metrics  # noqa: E402
from dynamo_depth.objective.inputs import LossSettings, SeededDraws  # noqa: E402
from dynamo_depth.objective.losses import compute_losses  # noqa: E402
from train.loop import Runtime, prepare_batch, run_training  # noqa: E402
from train.phases import phase_windows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"resnet18": "kitti_resnet18.yaml", "litemono": "kitti.yaml"}
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "fp32": ("train.amp=off", "train.channels_last=false", "train.compile=false"),
    "bf16": ("train.amp=bf16", "train.channels_last=false", "train.compile=false"),
    "channels_last": ("train.amp=off", "train.channels_last=true", "train.compile=false"),
    "compile": ("train.amp=off", "train.channels_last=false", "train.compile=true"),
    "all": ("train.amp=bf16", "train.channels_last=true", "train.compile=true"),
}
"""Speed variants -> config overrides (``default``: none, the trainer's own defaults for the device)."""
CPU = Runtime()
"""One process on the CPU: the runs' default runtime."""
GPU_VARIANTS = ("fp32", "bf16", "channels_last", "compile", "all")


def make_shards(root: Path, *, frames: int) -> Path:
    """A synthetic KITTI drive (2 cameras) of ``frames`` frames -> shards; returns the shard folder."""
    from builders.kitti import main as build_kitti
    from dynamo_depth.synth.kitti import write_kitti

    write_kitti(root / "raw", sequences=1, frames=frames, seed=0)
    if build_kitti([str(root / "raw"), str(root / "shards"), "--workers", "0", "--quiet"]) != 0:
        raise RuntimeError("building the benchmark shards failed")
    return root / "shards"


class StepRecorder:
    """A ``run_training`` logger that keeps every step's timings and losses."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def log_step(self, *, step: int, phase: str, result: Any, batch: Any, data_seconds: float,
                 step_seconds: float) -> None:
        self.rows.append({**result.terms, "step": step, "data_s": data_seconds, "step_s": step_seconds})
        if step % 50 == 0:
            print(f"  step {step} ({phase}): photometric {result.terms['photometric']:.4f}, "
                  f"{step_seconds:.2f} s/step", flush=True)


# ----------------------------------------------------------------------------- quality
def evaluate(config: RunConfig, model: torch.nn.Module | None, *, runtime: Runtime) -> dict[str, float]:
    """Mean scale-0 photometric loss (disp_init objective) and mean AbsRel over every shard sample (no augmentation)."""
    net = model if model is not None else loop.build_model(config, runtime)
    net.eval()
    settings = LossSettings(scales=config.model.scales, min_depth=config.loss.min_depth,
                            max_depth=config.loss.max_depth)
    photometric, abs_rel = [], []
    for sample in make_dataset(config.data.url, shuffle=False, augment=False):
        K4 = torch.eye(4)
        K4[:3, :3] = torch.from_numpy(sample["K"]).float()
        images = torch.from_numpy(sample["images"])[None]
        batch = prepare_batch({"images": images, "images_aug": images, "K": K4[None, None]},
                              height=config.data.height, width=config.data.width, scales=config.model.scales,
                              device=runtime.device)
        with torch.no_grad():
            outputs = net(batch.images_aug, phase="disp_init")
            losses = compute_losses(batch.losses, outputs, phase="disp_init", ramp_factor=0.0, settings=settings,
                                    draws=SeededDraws(seed=0))
        photometric.append(float(losses.per_scale[0]["photometric"]))
        disparity = outputs.disp[0][0, 0].double().cpu().numpy()
        result = metrics.evaluate_image(points_uvz=sample["depth_points"], prediction=disparity,
                                        original_hw=sample["original_size"], dataset="kitti", key=sample["__key__"])
        abs_rel.append(result.metrics.abs_rel)
    return {"photometric": float(np.mean(photometric)), "abs_rel": float(np.mean(abs_rel)), "images": len(abs_rel)}


LAYOUTS = {"channels_last": "train.channels_last=true", "channels_first": "train.channels_last=false"}
"""Memory layouts of the quality runs (``--layouts``) -> config override."""


def quality_run(shards: Path, run_dir: Path, *, steps: int, height: int, width: int, batch: int,
                network: str, amp: str | None = None, layout: str | None = None, seed: int | None = None,
                runtime: Runtime = CPU) -> dict[str, Any]:
    """Train disp_init for ``steps`` steps and evaluate before and after.

    ``train.amp=amp``, the ``LAYOUTS[layout]`` override and ``train.seed=seed`` unless None (the preset's).
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    overrides = [f"data.url={shards}", f"train.run_dir={run_dir}", f"data.height={height}", f"data.width={width}",
                 f"data.batch_size={batch}", "data.num_workers=1", f"schedule.iterations_per_epoch={steps}",
                 "train.checkpoint_every=0", "train.progress=false"]
    overrides += [f"train.amp={amp}"] if amp is not None else []
    overrides += [LAYOUTS[layout]] if layout is not None else []
    overrides += [f"train.seed={seed}"] if seed is not None else []
    config = load_config(REPO / "configs" / PRESETS[network], overrides=overrides)
    before = evaluate(config, None, runtime=runtime)
    recorder = StepRecorder()
    run_training(config=config, runtime=runtime, max_steps=steps, logger=recorder)
    from train.checkpoint import load_checkpoint

    model = loop.build_model(config, runtime)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.json").model)
    after = evaluate(config, model, runtime=runtime)
    first = statistics.mean(r["photometric"] for r in recorder.rows[:10])
    last = statistics.mean(r["photometric"] for r in recorder.rows[-10:])
    return {"before": before, "after": after, "train_photometric_first10": first, "train_photometric_last10": last,
            "seconds_per_step": statistics.mean(r["step_s"] for r in recorder.rows[1:])}


# ----------------------------------------------------------------------------- speed
def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak: CUDA's peak statistics, or this process's VmHWM (``/proc/self/clear_refs``).

    Returns whether the peak was reset (False: the CPU figure is the process's peak so far, cumulative).
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory_gib(device: torch.device) -> float:
    """GiB: ``torch.cuda.max_memory_allocated`` on CUDA, else this process's VmHWM (loader workers excluded)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gib()


def peak_rss_gib() -> float:
    """This process's peak resident set size (VmHWM) in GiB (the loader workers are separate processes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def speed_run(shards: Path, run_dir: Path, *, steps: int, batch: int, workers: int, network: str,
              warmup: int = 1, height: int = 192, width: int = 640, overrides: Sequence[str] = (),
              runtime: Runtime = CPU) -> dict[str, float]:
    """``warmup`` + ``steps`` fine_tune steps at (height, width); figures of the ``steps`` timed ones.

    Returns images_per_s, steps_per_s, seconds_per_step (mean), median_seconds_per_step, data_share (data
    wait / step time), warmup_seconds (all warm-up steps: compiling happens there), peak_gib and
    peak_reset (False: a CPU peak that includes everything this process did before).
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    config = load_config(REPO / "configs" / PRESETS[network], overrides=[
        f"data.url={shards}", f"train.run_dir={run_dir}", f"data.batch_size={batch}", f"data.num_workers={workers}",
        f"data.height={height}", f"data.width={width}",
        "schedule.disp_init.epochs=0", "schedule.motion_init.epochs=0", "schedule.mask_init.epochs=0",
        f"schedule.iterations_per_epoch={steps + warmup}", "train.checkpoint_every=0", "train.progress=false",
        *overrides])
    assert [w.name for w in phase_windows(config)] == ["fine_tune"]
    reset = reset_peak_memory(runtime.device)
    recorder = StepRecorder()
    run_training(config=config, runtime=runtime, max_steps=steps + warmup, logger=recorder)
    timed = recorder.rows[warmup:]
    total = sum(r["step_s"] for r in timed)
    return {"steps_per_s": len(timed) / total, "images_per_s": len(timed) * batch / total,
            "data_share": sum(r["data_s"] for r in timed) / total, "seconds_per_step": total / len(timed),
            "median_seconds_per_step": statistics.median(r["step_s"] for r in timed),
            "warmup_seconds": sum(r["step_s"] for r in recorder.rows[:warmup]),
            "peak_gib": peak_memory_gib(runtime.device), "peak_reset": reset}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (with the core count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    return f"{names[0] if names else platform.processor() or 'unknown CPU'} ({os.cpu_count()} cores)"


def speed_table(rows: dict[str, dict[str, float]], *, device: torch.device, warmups: dict[str, int]) -> str:
    """Markdown table, one row per variant."""
    memory = "peak allocated (CUDA)" if device.type == "cuda" else "peak RSS (VmHWM)"
    lines = [f"| variant | overrides | images/s | s/step mean | s/step median | data loader share "
             f"| warm-up s (steps) | {memory} |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        cumulative = "" if r["peak_reset"] else " (cumulative)"
        lines.append(f"| {name} | {' '.join(VARIANTS[name]) or '(trainer defaults)'} | {r['images_per_s']:.2f} "
                     f"| {r['seconds_per_step']:.3f} | {r['median_seconds_per_step']:.3f} "
                     f"| {100 * r['data_share']:.1f}% | {r['warmup_seconds']:.1f} ({warmups[name]}) "
                     f"| {r['peak_gib']:.2f} GiB{cumulative} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="disp_init steps of the quality run")
    parser.add_argument("--frames", type=int, default=24, help="frames of the synthetic drive")
    parser.add_argument("--shards", default=None, help="use these KITTI shards instead of synthesising a drive")
    parser.add_argument("--height", type=int, default=64, help="image height of the quality run")
    parser.add_argument("--width", type=int, default=192, help="image width of the quality run")
    parser.add_argument("--batch", type=int, default=4, help="batch of the quality run")
    parser.add_argument("--amp", nargs="+", choices=AMP_MODES, default=None,
                        help="quality runs, one per train.amp mode, back to back on the same shards "
                             "(default: one run with the preset's amp)")
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=None,
                        help="quality runs, one per memory layout (train.channels_last true / false) "
                             "(default: the preset's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="quality runs, one per train.seed (model init and data order; default: the preset's)")
    parser.add_argument("--grad-precision", action="store_true",
                        help="also compare one batch's float32 gradients per layout with a float64 reference")
    parser.add_argument("--speed-steps", type=int, default=3, help="timed steps per speed variant")
    parser.add_argument("--speed-batch", type=int, default=12)
    parser.add_argument("--speed-height", type=int, default=192)
    parser.add_argument("--speed-width", type=int, default=640)
    parser.add_argument("--speed-workers", type=int, default=2, help="loader workers of the speed runs")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per speed variant")
    parser.add_argument("--compile-warmup", type=int, default=3,
                        help="untimed first steps of the variants that compile (compiling happens there)")
    parser.add_argument("--compile-backend", choices=("inductor", "aot_eager", "eager"), default="inductor",
                        help="torch.compile backend of the compile variants (train.loop.COMPILE_BACKEND); eager "
                             "= dynamo's capture only, to check the wiring without inductor's compile time")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None,
                        help=f"speed variants (default: {' '.join(GPU_VARIANTS)} on cuda, default on cpu = "
                             "one run with the trainer's defaults)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (cuda = cuda:0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth-network", choices=sorted(PRESETS), default="resnet18",
                        help="configs/kitti_resnet18.yaml or configs/kitti.yaml (litemono)")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed part")
    parser.add_argument("--no-quality", action="store_true",
                        help="skip the quality part (the CPU peak RSS is reset per speed variant where Linux allows)")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device (allowed: cpu, cuda)")
    if args.variants is None:
        args.variants = list(GPU_VARIANTS) if args.device == "cuda" else ["default"]
    return args


def print_header(args: argparse.Namespace, argv: Sequence[str], device: torch.device) -> None:
    print(f"command: `PYTHONPATH=. .venv/bin/python -m bench.train {shlex.join(argv)}`")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; torch {torch.__version__}; device: {device_name(device)}; "
          f"{args.threads} threads; load average (1 min) before: {os.getloadavg()[0]:.2f}", flush=True)


def report_quality(args: argparse.Namespace, shards: Path, root: Path, runtime: Runtime) -> None:
    preset = load_config(REPO / "configs" / PRESETS[args.depth_network]).train
    preset_layout = "channels_last" if preset.channels_last else "channels_first"
    results: dict[QualityKey, dict[str, Any]] = {}
    for amp in args.amp or [None]:
        for layout in args.layouts or [None]:
            for seed in args.seeds or [None]:
                key = (amp or f"{preset.amp} (preset)", layout or f"{preset_layout} (preset)",
                       str(seed) if seed is not None else f"{preset.seed} (preset)")
                print(f"quality run: amp {key[0]}, {key[1]}, seed {key[2]}", flush=True)
                results[key] = quality_run(
                    shards, root / f"quality-{amp or 'preset'}-{layout or 'preset'}-{seed}", steps=args.steps,
                    height=args.height, width=args.width, batch=args.batch, network=args.depth_network, amp=amp,
                    layout=layout, seed=seed, runtime=runtime)
    images = next(iter(results.values()))["before"]["images"]
    print(f"\nquality ({args.depth_network}, {runtime.device.type}): disp_init, {args.steps} steps, batch "
          f"{args.batch}, {args.height}x{args.width}, {images} images; evaluation in fp32\n")
    print(quality_table(results), flush=True)
    if len(args.layouts or []) > 1 or len(args.seeds or []) > 1:
        print("\ntrained networks compared (relative = (row - baseline) / baseline)\n")
        print(layout_table(results), flush=True)


def report_speed(args: argparse.Namespace, shards: Path, root: Path, runtime: Runtime) -> None:
    rows, warmups = {}, {}
    for name in args.variants:
        compiles = "train.compile=true" in VARIANTS[name]
        warmups[name] = max(args.warmup, args.compile_warmup) if compiles else args.warmup
        print(f"speed variant {name}: {warmups[name]} warm-up + {args.speed_steps} timed steps", flush=True)
        rows[name] = speed_run(shards, root / f"speed-{name}", steps=args.speed_steps, batch=args.speed_batch,
                               workers=args.speed_workers, network=args.depth_network, warmup=warmups[name],
                               height=args.speed_height, width=args.speed_width, overrides=VARIANTS[name],
                               runtime=runtime)
    print(f"\nspeed ({args.depth_network}, {runtime.device.type}): fine_tune (all 4 networks), batch "
          f"{args.speed_batch}, {args.speed_height}x{args.speed_width}, {args.threads} threads, "
          f"{args.speed_workers} loader workers, compile backend {args.compile_backend}; s/step over the "
          f"{args.speed_steps} timed steps\n")
    print(speed_table(rows, device=runtime.device, warmups=warmups), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runtime = Runtime(device=torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu"))
    print_header(args, argv, runtime.device)
    backend, loop.COMPILE_BACKEND = loop.COMPILE_BACKEND, args.compile_backend
    try:
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            root = Path(args.out or tmp)
            shards = Path(args.shards) if args.shards else make_shards(root, frames=args.frames)
            if not args.no_quality:
                report_quality(args, shards, root, runtime)
            if args.grad_precision:
                from bench.grad_precision import report_grad_precision

                report_grad_precision(shards=shards, network=args.depth_network, height=args.height,
                                      width=args.width, batch=args.batch, runtime=runtime)
            if not args.no_speed:
                report_speed(args, shards, root, runtime)
    finally:
        loop.COMPILE_BACKEND = backend
    print(f"\nload average (1 min) after: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
