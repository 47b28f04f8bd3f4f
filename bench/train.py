"""Benchmark: does training work (loss and depth error fall) and how fast is a step on this CPU.

    PYTHONPATH=. .venv/bin/python -m bench.train [--steps 200] [--frames 24] [--threads 2]

(``python bench/train.py`` works too: the script's own folder is taken off ``sys.path`` so that this
file does not hide the ``train`` package.)

1. Synthesise a KITTI-format world (``dynamo_depth.synth``), build shards (``builders.kitti``).
2. Quality: train the disp_init phase (depth + pose, the paper's Adam 1e-4) for ``--steps`` steps at a
   small resolution, and compare the untrained and the trained network on the shards (augmentation
   off): the photometric loss of the disp_init objective and the depth AbsRel against the shards'
   LiDAR with per-image median scaling (``dynamo_depth.depth_eval.evaluate_image``, KITTI protocol).
3. Speed: a few fine_tune steps (all four networks learn) at the paper's batch (12) and KITTI size
   640x192 through the streaming loader (2 workers): steps/s, images/s and the share of each step
   spent waiting for data. The first step is a warm-up and is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/ first on sys.path would shadow the train package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dynamo_depth import depth_eval as metrics  # noqa: E402
from dynamo_depth.config import RunConfig, load_config  # noqa: E402
from dynamo_depth.data import make_dataset  # noqa: E402
from dynamo_depth.loss_inputs import LossSettings, SeededDraws  # noqa: E402
from dynamo_depth.losses import compute_losses  # noqa: E402
from train.loop import Runtime, prepare_batch, run_training  # noqa: E402
from train.phases import phase_windows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


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


def evaluate(config: RunConfig, model: torch.nn.Module | None) -> dict[str, float]:
    """Mean scale-0 photometric loss (disp_init objective) and mean AbsRel over every shard sample (no augmentation)."""
    from train.loop import build_model

    net = model if model is not None else build_model(config, Runtime())
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
                              device=torch.device("cpu"))
        with torch.no_grad():
            outputs = net(batch.images_aug, phase="disp_init")
            losses = compute_losses(batch.losses, outputs, phase="disp_init", ramp_factor=0.0, settings=settings,
                                    draws=SeededDraws(seed=0))
        photometric.append(float(losses.per_scale[0]["photometric"]))
        result = metrics.evaluate_image(points_uvz=sample["depth_points"], prediction=outputs.disp[0][0, 0].double().numpy(),
                                        original_hw=sample["original_size"], dataset="kitti", key=sample["__key__"])
        abs_rel.append(result.metrics.abs_rel)
    return {"photometric": float(np.mean(photometric)), "abs_rel": float(np.mean(abs_rel)), "images": len(abs_rel)}


PRESETS = {"resnet18": "kitti_resnet18.yaml", "litemono": "kitti.yaml"}


def quality_run(shards: Path, run_dir: Path, *, steps: int, height: int, width: int, batch: int,
                network: str) -> dict[str, Any]:
    config = load_config(REPO / "configs" / PRESETS[network], overrides=[
        f"data.url={shards}", f"train.run_dir={run_dir}", f"data.height={height}", f"data.width={width}",
        f"data.batch_size={batch}", "data.num_workers=1", f"schedule.iterations_per_epoch={steps}",
        "train.checkpoint_every=0", "train.progress=false"])
    before = evaluate(config, None)
    recorder = StepRecorder()
    run_training(config=config, runtime=Runtime(), max_steps=steps, logger=recorder)
    from train.checkpoint import load_checkpoint
    from train.loop import build_model

    model = build_model(config, Runtime())
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.json").model)
    after = evaluate(config, model)
    first = statistics.mean(r["photometric"] for r in recorder.rows[:10])
    last = statistics.mean(r["photometric"] for r in recorder.rows[-10:])
    return {"before": before, "after": after, "train_photometric_first10": first, "train_photometric_last10": last,
            "seconds_per_step": statistics.mean(r["step_s"] for r in recorder.rows[1:])}


def speed_run(shards: Path, run_dir: Path, *, steps: int, batch: int, workers: int, network: str) -> dict[str, float]:
    config = load_config(REPO / "configs" / PRESETS[network], overrides=[
        f"data.url={shards}", f"train.run_dir={run_dir}", f"data.batch_size={batch}", f"data.num_workers={workers}",
        "schedule.disp_init.epochs=0", "schedule.motion_init.epochs=0", "schedule.mask_init.epochs=0",
        f"schedule.iterations_per_epoch={steps + 1}", "train.checkpoint_every=0", "train.progress=false"])
    assert [w.name for w in phase_windows(config)] == ["fine_tune"]
    recorder = StepRecorder()
    run_training(config=config, runtime=Runtime(), max_steps=steps + 1, logger=recorder)
    timed = recorder.rows[1:]
    total = sum(r["step_s"] for r in timed)
    return {"steps_per_s": len(timed) / total, "images_per_s": len(timed) * batch / total,
            "data_share": sum(r["data_s"] for r in timed) / total, "seconds_per_step": total / len(timed),
            "median_seconds_per_step": statistics.median(r["step_s"] for r in timed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="disp_init steps of the quality run")
    parser.add_argument("--frames", type=int, default=24, help="frames of the synthetic drive")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--batch", type=int, default=4, help="batch of the quality run")
    parser.add_argument("--speed-steps", type=int, default=3, help="timed steps at the paper's batch and size")
    parser.add_argument("--speed-batch", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth-network", choices=sorted(PRESETS), default="resnet18",
                        help="configs/kitti_resnet18.yaml or configs/kitti.yaml (litemono)")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed part")
    parser.add_argument("--no-quality", action="store_true",
                        help="skip the quality part (the peak RSS then is the speed run's alone)")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(args.out or tmp)
        shards = make_shards(root, frames=args.frames)
        if not args.no_quality:
            report_quality(args, shards, root)
        if args.no_speed:
            return
        speed = speed_run(shards, root / "speed", steps=args.speed_steps, batch=args.speed_batch, workers=2,
                          network=args.depth_network)
        print(f"speed ({args.depth_network}): fine_tune (all 4 networks), batch {args.speed_batch}, 192x640, "
              f"{args.threads} threads, 2 loader workers: {speed['seconds_per_step']:.2f} s/step (median "
              f"{speed['median_seconds_per_step']:.2f}), {speed['images_per_s']:.2f} images/s, data loader share "
              f"{100 * speed['data_share']:.1f}%, peak RSS of this process {peak_rss_gib():.2f} GiB")


def peak_rss_gib() -> float:
    """This process's peak resident set size (VmHWM) in GiB (the loader workers are separate processes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def report_quality(args: argparse.Namespace, shards: Path, root: Path) -> None:
    quality = quality_run(shards, root / "quality", steps=args.steps, height=args.height, width=args.width,
                          batch=args.batch, network=args.depth_network)
    print(f"quality ({args.depth_network}): disp_init, {args.steps} steps, batch {args.batch}, {args.height}x{args.width}, "
          f"{quality['before']['images']} images, {quality['seconds_per_step']:.2f} s/step")
    print(f"  photometric loss (eval, all images): untrained {quality['before']['photometric']:.4f} -> "
          f"trained {quality['after']['photometric']:.4f}")
    print(f"  photometric loss (training batches, mean of first/last 10 steps): "
          f"{quality['train_photometric_first10']:.4f} -> {quality['train_photometric_last10']:.4f}")
    print(f"  AbsRel (median scaled, LiDAR, KITTI protocol): untrained {quality['before']['abs_rel']:.4f} -> "
          f"trained {quality['after']['abs_rel']:.4f}")


if __name__ == "__main__":
    main()
