"""What a start does with a run folder that already holds a checkpoint: resume it, refuse, or move it aside.

A run folder (``train.run_dir``) holding a checkpoint is never restarted from step 0 silently:

* ``--resume`` (``required``): continue from ``checkpoints/last.json``; no checkpoint is an error (exit 2).
* ``--resume auto``: continue when a checkpoint exists, else start at step 0. The way to run under
  ``torchrun --max-restarts N`` and schedulers that resubmit the same command.
* ``--fresh``: start at step 0; the earlier run's outputs (``TRAINER_OUTPUTS``) are first moved to
  ``run_dir/superseded-N/`` (the first free N), never deleted. Under a torchrun restart
  (``TORCHELASTIC_RESTART_COUNT`` > 0) the folder holds this job's own progress, so ``--fresh`` then acts
  as ``--resume auto``.
* none of these: a folder with a checkpoint is refused (``ValueError``, exit 2) with a message naming the
  checkpoint and the choices.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

import torch.distributed as dist

from dynamo_depth.shards import storage
from train.checkpoint import latest_checkpoint

RESUME_MODES = ("auto", "required")
"""``--resume MODE``: ``required`` (plain ``--resume``) or ``auto``."""
TRAINER_OUTPUTS = ("checkpoints", "tb", "metrics.jsonl", "config.yaml")
"""What a run writes into run_dir, and what ``--fresh`` moves aside."""
SUPERSEDED_PREFIX = "superseded-"


def resume_mode(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> str | None:
    """``"auto"``, ``"required"`` or None (start at step 0) from --resume / --fresh and torchrun's restart count.

    ``args.resume`` is None / False, True or ``"required"`` (plain ``--resume``), or ``"auto"``.
    """
    resume = getattr(args, "resume", None)
    if resume == "auto":
        return "auto"
    if resume:
        return "required"
    if getattr(args, "fresh", False) and restart_count(env) > 0:
        return "auto"
    return None


def restart_count(env: Mapping[str, str] = os.environ) -> int:
    """torchrun's ``TORCHELASTIC_RESTART_COUNT`` (0 outside torchrun or on the first attempt)."""
    text = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return int(text) if text.isdigit() else 0


def superseded_url(run_dir: str) -> str:
    """``run_dir/superseded-N`` for the first N >= 1 not yet used."""
    number = 1
    while storage.exists(storage.join(run_dir, f"{SUPERSEDED_PREFIX}{number}")):
        number += 1
    return storage.join(run_dir, f"{SUPERSEDED_PREFIX}{number}")


def move_outputs_aside(run_dir: str) -> str:
    """Move the earlier run's ``TRAINER_OUTPUTS`` into ``superseded_url(run_dir)``; returns that folder."""
    target = superseded_url(run_dir)
    for name in TRAINER_OUTPUTS:
        source = storage.join(run_dir, name)
        if storage.exists(source):
            storage.move(source, storage.join(target, name))
    return target


def refusal(run_dir: str, checkpoint: str, step: int | None) -> str:
    """The message of a start without --resume / --fresh into a folder holding ``checkpoint``."""
    at = f" (step {step})" if step is not None else ""
    return (f"train.run_dir {run_dir} already holds a checkpoint: {checkpoint}{at}; nothing was started, so that "
            f"run is kept. To continue it, pass --resume (or --resume auto); to start again from step 0, choose a "
            f"new train.run_dir or pass --fresh (moves the earlier run's files to "
            f"{storage.join(run_dir, SUPERSEDED_PREFIX + 'N')}/, deletes nothing)")


def guard_run_dir(args: argparse.Namespace, run_dir: str, *, rank: int = 0, distributed: bool = False) -> str | None:
    """Collective: refuse or clear a run folder a new run (no resume) would start in; returns what was done.

    Rank 0 looks for a checkpoint and, with ``--fresh``, moves the earlier outputs aside; every rank then
    gets the same outcome (a ValueError with ``refusal``'s message on every rank, or the note printed).
    Nothing to do (None) when resuming (``resume_mode``) or with ``--resume-from``.
    """
    if resume_mode(args) is not None or getattr(args, "resume_from", None) is not None:
        return None
    outcome: str | Exception | None = None
    if rank == 0:
        try:
            found = latest_checkpoint(run_dir)
            if found is not None and getattr(args, "fresh", False):
                outcome = (f"train: --fresh: moved the earlier run's files ({found[0]}) to "
                           f"{move_outputs_aside(run_dir)}/; starting at step 0")
            elif found is not None:
                outcome = ValueError(refusal(run_dir, *found))
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below (e.g. a refused credential)
            outcome = exc
    if distributed:
        box = [outcome]
        dist.broadcast_object_list(box, src=0)
        outcome = box[0]
    if isinstance(outcome, Exception):
        raise outcome
    if outcome is not None and rank == 0:
        print(outcome, flush=True)
    return outcome
