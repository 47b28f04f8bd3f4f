"""Training entry point (nanoGPT style): ``torchrun --nproc_per_node N train/main.py --config C [--set k=v ...]``.

Also runs as one plain process (``python train/main.py ...``) when ``WORLD_SIZE`` is unset. Reads
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment; uses NCCL on GPU and gloo on CPU.

``train.run_dir`` is a local folder or an object-store URL (``s3://bucket/run``, any fsspec URL). Rank 0
alone writes there: the resolved ``config.yaml``, ``metrics.jsonl`` (one JSON line per logged step),
checkpoints (``checkpoints/step-NNNNNN.pt`` + the ``checkpoints/last.json`` pointer, see
``train.checkpoint``) and TensorBoard logs (``tb/``: every loss term, learning rate, speed; images: input
frame, disparity, motion mask). For a URL run_dir, TensorBoard writes into a local temporary folder that is
uploaded to ``run_dir/tb/`` at each checkpoint and at the end. A multi-process run first checks that every
rank sees the same run_dir (rank 0 writes a token with a random nonce, every rank reads it back): a local
folder that is not shared between the nodes is refused with exit status 2.

Options:
  --config FILE         YAML preset (configs/*.yaml)
  --set KEY=VALUE ...   dotted overrides (``optim.lr=2e-4 data.url=s3://bucket/shards``)
  --max-steps N         stop after global step N (absolute; a resumed run counts the steps before it)
  --resume [auto]       continue exactly from run_dir's last checkpoint (``checkpoints/last.json``; every
                        rank prints the file and step); ``auto``: resume if there is one, else start at step 0
                        (for ``torchrun --max-restarts`` and schedulers that rerun the same command);
                        --resume-from FILE: another checkpoint file or pointer
  --fresh               start at step 0 in a run_dir holding a checkpoint: its files move to
                        ``run_dir/superseded-N/`` first, nothing is deleted (``train.run_folder``). Without
                        --resume / --fresh a run_dir holding a checkpoint is refused (exit 2)
  --stop-deadline S     after SIGTERM / SIGINT, at most S seconds to finish the step and checkpoint
  --init-from D         initial weights: a trainer checkpoint or an original module folder (fine-tuning)
  --init-weights F      ImageNet weights of the depth encoder (torchvision resnet18 or Lite-Mono's file)
  --init-resnet-weights F  torchvision resnet18 weights for the pose / motion encoders (litemono runs)
  --digest-dir DIR      every rank writes ``DIR/params_rank{r}.sha256`` of its final parameters (tests)

SIGTERM / SIGINT (``train.stopping``): every rank finishes the current step, the ranks agree on it, the
checkpoint of that step is written and the run exits 75; a second signal stops at once.

Exit status: 0 done (also: a resumed checkpoint already at the target step; nothing is written), 2 bad
configuration or input (one line naming it: a corrupt sample, a refused S3 credential, a run_dir not shared by
every node, a run_dir holding a checkpoint without --resume / --fresh), 3 non-finite loss (the last good
checkpoint is kept), 75 stopped by SIGTERM / SIGINT after writing the checkpoint of the step reached, 76 stopped
by a signal but the checkpoint was not written within --stop-deadline (the previous one stays the last).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script by torchrun: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from dynamo_depth.config import RunConfig, config_differences, config_from_dict, dump_config, load_config  # noqa: E402
from dynamo_depth.shards import storage  # noqa: E402
from dynamo_depth.shards.storage import StorageAuthError  # noqa: E402
from train.checkpoint import (  # noqa: E402
    Checkpoint,
    CheckpointError,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    pointer_url,
)
from train.cpu_memory import reuse_freed_memory  # noqa: E402
from train.loop import (  # noqa: E402
    InitSources,
    NonFiniteLossError,
    Runtime,
    deterministic_mode,
    run_training,
)
from train.phases import total_steps  # noqa: E402
from train.process_group import check_shared_run_dir, runtime_from_env, start_process_group  # noqa: E402
from train.rank_zero_log import RankZeroLogger  # noqa: E402
from train.run_folder import RESUME_MODES, guard_run_dir, resume_mode  # noqa: E402
from train.stopping import EXIT_STOP_DEADLINE, EXIT_STOPPED, StopSignals  # noqa: E402

RESUMABLE_CHANGES = frozenset({
    "data.url", "data.num_workers", "data.cache_dir", "train.run_dir", "train.log_every", "train.image_every",
    "train.checkpoint_every", "train.progress", "train.keep_checkpoints", "train.keep_phase_checkpoints",
})
"""Config keys that may differ between a checkpoint and the run resuming it (they do not change the math)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train/main.py", description="Dynamo-Depth DDP trainer")
    parser.add_argument("--config", required=True, help="YAML preset, e.g. configs/kitti.yaml")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this global step")
    add_restart_options(parser)
    parser.add_argument("--resume-from", default=None,
                        help="continue from this checkpoint file (or last.json pointer; local path or URL)")
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


def add_restart_options(parser: argparse.ArgumentParser) -> None:
    """--resume [auto], --fresh and --stop-deadline (see ``train.run_folder`` and ``train.stopping``)."""
    parser.epilog = (f"exit status: 0 done; 2 bad configuration or input (also: run_dir holds a checkpoint and "
                     f"neither --resume nor --fresh was given); 3 non-finite loss; {EXIT_STOPPED} stopped by "
                     f"SIGTERM / SIGINT after writing the checkpoint of the step reached; {EXIT_STOP_DEADLINE} "
                     f"stopped by a signal, checkpoint not written within --stop-deadline")
    parser.add_argument("--resume", nargs="?", const="required", default=None, choices=RESUME_MODES,
                        help="continue from run_dir's last checkpoint (checkpoints/last.json); '--resume auto': "
                             "continue if there is one, else start at step 0 (for torchrun --max-restarts and "
                             "schedulers that rerun the same command)")
    parser.add_argument("--fresh", action="store_true",
                        help="start at step 0 in a run_dir that holds a checkpoint: its files move to "
                             "run_dir/superseded-N/ first (nothing is deleted; under a torchrun restart it acts "
                             "as --resume auto)")
    parser.add_argument("--stop-deadline", type=float, default=None, metavar="SECONDS",
                        help="after SIGTERM / SIGINT, at most this long to finish the step and write the "
                             f"checkpoint; past it the process exits with status {EXIT_STOP_DEADLINE} and the "
                             "previous checkpoint stays the last (default: no bound)")


def check_restart_options(parser_args: argparse.Namespace) -> None:
    """ValueError for --fresh together with --resume / --resume-from, or a deadline <= 0."""
    if parser_args.fresh and (parser_args.resume or parser_args.resume_from):
        raise ValueError("--fresh starts again from step 0; it cannot be combined with --resume / --resume-from")
    if parser_args.stop_deadline is not None and not parser_args.stop_deadline > 0:
        raise ValueError(f"--stop-deadline {parser_args.stop_deadline}: must be > 0 seconds")


def resume_checkpoint(args: argparse.Namespace, config: RunConfig,
                      runtime: Runtime | None = None) -> tuple[Checkpoint, str] | None:
    """(checkpoint, its URL) to resume, None without --resume; ValueError if its config differs in the math.

    Rank 0 resolves ``run_dir/checkpoints/last.json`` and broadcasts the file's URL, so every rank loads the
    same file even if a pointer changed meanwhile; every rank prints which file and step it resumes from.
    """
    mode = resume_mode(args)
    if mode is None and args.resume_from is None:
        return None
    runtime = runtime if runtime is not None else Runtime()
    path = args.resume_from
    if path is None:
        found = latest_checkpoint(config.train.run_dir) if runtime.is_main else None
        box = [found[0] if found else None]
        if runtime.distributed:
            dist.broadcast_object_list(box, src=0)
        if box[0] is None and mode == "auto":
            if runtime.is_main:
                print(f"train: --resume auto: no checkpoint in {checkpoint_dir(config.train.run_dir)}; "
                      f"starting at step 0", flush=True)
            return None
        if box[0] is None:
            raise CheckpointError(f"checkpoint {pointer_url(config.train.run_dir)}: no such file (nothing to resume "
                                  f"in train.run_dir {config.train.run_dir!r})")
        path = box[0]
    checkpoint = load_checkpoint(path)
    if runtime.distributed:
        dist.barrier()  # every rank has read the file: rank 0 may now prune old checkpoints (keep_checkpoints)
    saved = config_from_dict(checkpoint.config, source=f"checkpoint {path} config")
    changed = [k for k in config_differences(saved, config) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"checkpoint {path}: the config differs in {changed}; resume with the same values "
                         f"(only {sorted(RESUMABLE_CHANGES)} may change)")
    print(f"train: rank {runtime.rank}: resuming from {path} at step {checkpoint.step}", flush=True)
    return checkpoint, str(path)


def configure_torch(config: RunConfig, runtime: Runtime) -> None:
    """CPU threads per process (``train.threads``, 0 keeps torch's choice); on CPU, freed memory stays in the
    process (``reuse_freed_memory``); warns (rank 0) when ``train.amp=bf16`` runs on a CPU without native
    bf16, where autocast is emulated and slower than fp32."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if runtime.device.type == "cpu":
        reuse_freed_memory()
    if runtime.device.type == "cpu" and config.train.amp == "bf16" and runtime.is_main and not native_cpu_bf16():
        print("train: warning: train.amp=bf16 on a CPU without AVX512-BF16 or AMX: bf16 is emulated and usually "
              "slower than fp32 (train.amp=auto keeps fp32 on CPU)", file=sys.stderr, flush=True)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as torch reports it; False if unknown."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def _write_digest(directory: str, runtime: Runtime, digest: str) -> None:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"params_rank{runtime.rank}.sha256").write_text(digest + "\n", encoding="utf-8")


def _target(args: argparse.Namespace, config: RunConfig) -> tuple[int, str]:
    """(the step this run stops at, how to say where it comes from)."""
    schedule = total_steps(config)
    if args.max_steps is not None and args.max_steps < schedule:
        return args.max_steps, f"--max-steps {args.max_steps}"
    return schedule, f"the schedule ({schedule} steps)"


def train(args: argparse.Namespace, runtime: Runtime) -> int:
    """Load the config, train, write outputs; returns the exit status."""
    config = load_config(args.config, overrides=args.overrides)
    if not config.data.url:
        raise ValueError(f"{args.config}: data.url is empty; pass --set data.url=SHARDS")
    configure_torch(config, runtime)
    check_shared_run_dir(config.train.run_dir, runtime)
    guard_run_dir(args, config.train.run_dir, rank=runtime.rank, distributed=runtime.distributed)
    resumed = resume_checkpoint(args, config, runtime)
    resume = resumed[0] if resumed else None
    stop, target = _target(args, config)
    if resume is not None and resume.step >= stop:
        if runtime.is_main:
            print(f"train: checkpoint {resumed[1]} is at step {resume.step}; {target} is already done, "
                  f"nothing to do", flush=True)
        return 0
    logger = None
    if runtime.is_main:
        storage.write_bytes_atomic(storage.join(config.train.run_dir, "config.yaml"), dump_config(config).encode())
        logger = RankZeroLogger(config=config, start=resume.step if resume else 0, stop=stop)
    try:
        with deterministic_mode(config.train.deterministic), \
                StopSignals(runtime=runtime, deadline_s=args.stop_deadline) as stopper:
            summary = run_training(config=config, runtime=runtime, max_steps=args.max_steps, resume=resume,
                                   logger=logger, init=InitSources(imagenet=args.init_weights,
                                                                   imagenet_resnet=args.init_resnet_weights,
                                                                   checkpoint=args.init_from), stopper=stopper)
    finally:
        if logger is not None:
            logger.close()
    if args.digest_dir:
        _write_digest(args.digest_dir, runtime, summary.parameter_digest)
    return _report_end(summary, runtime)


def _report_end(summary: Any, runtime: Runtime) -> int:
    """Print how the run ended (rank 0); 0 when done, ``EXIT_STOPPED`` when a signal stopped it."""
    if summary.stopped_by is not None:
        if runtime.is_main:
            print(f"train: stopped by {summary.stopped_by} at step {summary.step}: checkpoint {summary.checkpoint}; "
                  f"the same command with --resume auto continues from it (exit status {EXIT_STOPPED})", flush=True)
        return EXIT_STOPPED
    if runtime.is_main:
        print(f"done: step {summary.step}, checkpoint {summary.checkpoint}, "
              f"loss {summary.last_terms.get('total', float('nan')):.5f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_restart_options(args)
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
    except (ValueError, StorageAuthError) as exc:
        print(f"train: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        code = storage.auth_error_code(exc)  # e.g. a boto3 ClientError from the shard reader
        if code is None:
            raise
        print(f"train: error: {storage.auth_error_message(_urls(args), code)}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (a worker's traceback text never reaches the user)."""
    return " ".join(str(exc).split("\n")).strip() or type(exc).__name__


def _urls(args: argparse.Namespace) -> str:
    """The object-store URLs of this run (data.url, train.run_dir), for an auth error without a URL."""
    try:
        config = load_config(args.config, overrides=args.overrides)
    except ValueError:
        return "the object store"
    remote = [u for u in (config.data.url, config.train.run_dir) if u and not storage.is_local(u)]
    return " / ".join(remote) or config.data.url


def _last_good(args: argparse.Namespace) -> str:
    """Where the last good checkpoint is (the failed step wrote nothing)."""
    run_dir = load_config(args.config, overrides=args.overrides).train.run_dir
    found = latest_checkpoint(run_dir)
    if found is None:
        return f"No checkpoint had been written yet ({pointer_url(run_dir)} does not exist)."
    url, step = found
    if step is None:
        step = load_checkpoint(url).step
    return f"The last good checkpoint is kept: {url} (step {step})."


if __name__ == "__main__":
    sys.exit(main())
