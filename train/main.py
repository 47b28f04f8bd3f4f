"""Training entry point (nanoGPT style): ``torchrun --nproc_per_node N train/main.py --config C [--set k=v ...]``.

Also runs as one plain process (``python train/main.py ...``) when ``WORLD_SIZE`` is unset. Reads
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment; uses NCCL on GPU and gloo on CPU.
Rank 0 alone writes the resolved ``config.yaml``, TensorBoard logs (``run_dir/tb``: every loss term,
learning rate, speed; images: input frame, disparity, motion mask), the progress bar and
checkpoints (``run_dir/checkpoints/last.pt``).

Options:
  --config FILE         YAML preset (configs/*.yaml)
  --set KEY=VALUE ...   dotted overrides (``optim.lr=2e-4 data.url=s3://bucket/shards``)
  --max-steps N         stop after global step N (absolute; a resumed run counts the steps before it)
  --resume              continue from ``run_dir/checkpoints/last.pt`` exactly (--resume-from FILE: another file)
  --init-from D         initial weights: a trainer checkpoint or an original module folder (fine-tuning)
  --init-weights F      ImageNet weights of the depth encoder (torchvision resnet18 or Lite-Mono's file)
  --init-resnet-weights F  torchvision resnet18 weights for the pose / motion encoders (litemono runs)
  --digest-dir DIR      every rank writes ``DIR/params_rank{r}.sha256`` of its final parameters (tests)

Exit status: 0 done, 2 bad configuration or input, 3 non-finite loss (the last good checkpoint is kept).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script by torchrun: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from dynamo_depth.config import RunConfig, config_differences, config_from_dict, load_config, save_config  # noqa: E402
from train.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from train.loop import (  # noqa: E402
    LAST_CHECKPOINT,
    InitSources,
    NonFiniteLossError,
    Runtime,
    deterministic_mode,
    run_training,
)
from train.phases import total_steps  # noqa: E402

RESUMABLE_CHANGES = frozenset({
    "data.url", "data.num_workers", "data.cache_dir", "train.run_dir", "train.log_every", "train.image_every",
    "train.checkpoint_every", "train.progress",
})
"""Config keys that may differ between a checkpoint and the run resuming it (they do not change the math)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train/main.py", description="Dynamo-Depth DDP trainer")
    parser.add_argument("--config", required=True, help="YAML preset, e.g. configs/kitti.yaml")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this global step")
    parser.add_argument("--resume", action="store_true", help="continue from run_dir/checkpoints/last.pt")
    parser.add_argument("--resume-from", default=None, help="continue from this checkpoint file")
    parser.add_argument("--init-from", default=None, metavar="DIR_OR_CKPT",
                        help="start from these weights: a trainer checkpoint or an original Dynamo-Depth module "
                             "folder (fine-tune from released models); ignored with --resume")
    parser.add_argument("--init-weights", default=None, metavar="FILE",
                        help="ImageNet weights of the depth encoder: torchvision's resnet18 file (also loaded into "
                             "the pose and motion encoders) or Lite-Mono's encoder file; ignored with --resume")
    parser.add_argument("--init-resnet-weights", default=None, metavar="FILE",
                        help="torchvision's resnet18 file for the pose and motion encoders of a litemono run")
    parser.add_argument("--digest-dir", default=None, help="write each rank's parameter sha256 here")
    return parser.parse_args(argv)


def runtime_from_env(env: Any = os.environ) -> Runtime:
    """Runtime from RANK / WORLD_SIZE / LOCAL_RANK (defaults 0 / 1 / 0); ValueError on bad values."""
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = env.get(name, str(default))
        if not text.isdigit():
            raise ValueError(f"environment variable {name}={text!r} must be a non-negative integer")
        values[name] = int(text)
    if values["WORLD_SIZE"] < 1 or values["RANK"] >= values["WORLD_SIZE"]:
        raise ValueError(f"RANK={values['RANK']} must be < WORLD_SIZE={values['WORLD_SIZE']} (>= 1)")
    device = torch.device(f"cuda:{values['LOCAL_RANK']}") if torch.cuda.is_available() else torch.device("cpu")
    return Runtime(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"], device=device)


def start_process_group(runtime: Runtime) -> None:
    """``init_process_group`` (env://) with NCCL on GPU, gloo on CPU; nothing for one process."""
    if not runtime.distributed:
        return
    if runtime.device.type == "cuda":
        torch.cuda.set_device(runtime.device)
    dist.init_process_group(backend="nccl" if runtime.device.type == "cuda" else "gloo",
                            rank=runtime.rank, world_size=runtime.world_size)


def resume_checkpoint(args: argparse.Namespace, config: RunConfig) -> Checkpoint | None:
    """The checkpoint to resume (None without --resume); ValueError if its config differs in the math."""
    if not args.resume and args.resume_from is None:
        return None
    path = args.resume_from or str(Path(config.train.run_dir) / LAST_CHECKPOINT)
    checkpoint = load_checkpoint(path)
    saved = config_from_dict(checkpoint.config, source=f"checkpoint {path} config")
    changed = [k for k in config_differences(saved, config) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"checkpoint {path}: the config differs in {changed}; resume with the same values "
                         f"(only {sorted(RESUMABLE_CHANGES)} may change)")
    return checkpoint


class RankZeroLogger:
    """TensorBoard scalars/images and a tqdm bar; built on rank 0 only."""

    def __init__(self, *, config: RunConfig, start: int, stop: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.config = config
        self.writer = SummaryWriter(log_dir=str(Path(config.train.run_dir) / "tb"))
        self.bar = tqdm(total=stop, initial=start, unit="step", disable=not config.train.progress, dynamic_ncols=True)

    def log_step(self, *, step: int, phase: str, result: Any, batch: Any, data_seconds: float,
                 step_seconds: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(phase=phase, loss=f"{result.terms['total']:.4f}")
        if self.config.train.log_every and step % self.config.train.log_every == 0:
            for name, value in result.terms.items():
                self.writer.add_scalar(f"loss/{name}", value, step)
            self.writer.add_scalar("optim/lr", result.lr, step)
            self.writer.add_scalar("optim/grad_norm", result.grad_norm, step)
            self.writer.add_scalar("speed/step_seconds", step_seconds, step)
            self.writer.add_scalar("speed/data_fraction", data_seconds / max(step_seconds, 1e-9), step)
        if batch is not None and result.outputs is not None:
            self._images(step, batch, result.outputs)

    def _images(self, step: int, batch: Any, outputs: Any) -> None:
        self.writer.add_image("input/cur", batch.losses.color[0][0].float().cpu(), step)
        disparity = outputs.disp[0][0].float().cpu()
        self.writer.add_image("output/disparity", disparity / disparity.max().clamp(min=1e-6), step)
        if 0 in outputs.motion_logits:
            self.writer.add_image("output/motion_mask", outputs.motion_mask(0)[0].float().cpu(), step)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()


def configure_torch(config: RunConfig) -> None:
    """CPU threads per process (``train.threads``, 0 keeps torch's choice)."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)


def _write_digest(directory: str, runtime: Runtime, digest: str) -> None:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"params_rank{runtime.rank}.sha256").write_text(digest + "\n", encoding="utf-8")


def train(args: argparse.Namespace, runtime: Runtime) -> int:
    """Load the config, train, write outputs; returns the exit status."""
    config = load_config(args.config, overrides=args.overrides)
    if not config.data.url:
        raise ValueError(f"{args.config}: data.url is empty; pass --set data.url=SHARDS")
    configure_torch(config)
    resume = resume_checkpoint(args, config)
    stop = min(total_steps(config), args.max_steps if args.max_steps is not None else total_steps(config))
    logger = None
    if runtime.is_main:
        save_config(config, Path(config.train.run_dir) / "config.yaml")
        logger = RankZeroLogger(config=config, start=resume.step if resume else 0, stop=stop)
    try:
        with deterministic_mode(config.train.deterministic):
            summary = run_training(config=config, runtime=runtime, max_steps=args.max_steps, resume=resume,
                                   logger=logger, init=InitSources(imagenet=args.init_weights,
                                                                   imagenet_resnet=args.init_resnet_weights,
                                                                   checkpoint=args.init_from))
    finally:
        if logger is not None:
            logger.close()
    if args.digest_dir:
        _write_digest(args.digest_dir, runtime, summary.parameter_digest)
    if runtime.is_main:
        print(f"done: step {summary.step}, checkpoint {summary.checkpoint}, "
              f"loss {summary.last_terms.get('total', float('nan')):.5f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runtime = runtime_from_env()
        start_process_group(runtime)
    except ValueError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    try:
        return train(args, runtime)
    except NonFiniteLossError as exc:
        print(f"train: stopped: {exc}. {_last_good(args)}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _last_good(args: argparse.Namespace) -> str:
    """Where the last good checkpoint is (the failed step wrote nothing)."""
    path = Path(load_config(args.config, overrides=args.overrides).train.run_dir) / LAST_CHECKPOINT
    if not path.is_file():
        return f"No checkpoint had been written yet ({path} does not exist)."
    return f"The last good checkpoint is kept: {path} (step {load_checkpoint(path).step})."


if __name__ == "__main__":
    sys.exit(main())
