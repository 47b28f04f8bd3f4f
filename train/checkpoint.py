"""Atomic, resumable training checkpoints (``torch.save`` of plain tensors and numbers only).

A checkpoint file is a dict (read back with ``torch.load(..., weights_only=True)``: nothing is unpickled
beyond tensors and builtin containers):

=============  ==============================================================================
key            content
=============  ==============================================================================
format         ``"dynamo-depth-checkpoint"``; version: ``CHECKPOINT_VERSION``
step           optimiser steps done (the next step to run is ``step``)
phase          the phase the optimizer / scheduler states belong to (that of step ``step - 1``)
model          ``DynamoDepthModel.state_dict()`` (the original's modules ``depth_enc.*`` ... ``motion_mask.*``)
optimizer      Adam ``state_dict()`` of that phase; scheduler: its ``StepLR.state_dict()``
loader         ``LoaderState.to_dict()`` of the streaming loader (same on every rank)
rng            per-rank RNG states, each a tensor with a leading world-size axis (``capture_rng``)
config         the resolved ``RunConfig`` as a nested dict (``dynamo_depth.config.config_to_dict``)
=============  ==============================================================================

Layout in ``run_dir`` (a local folder or any fsspec URL such as ``s3://bucket/run``; see
``dynamo_depth.shards.storage``)::

    checkpoints/step-000010.pt   one file per checkpoint (the newest ``train.keep_checkpoints`` are kept)
    checkpoints/last.json        the pointer: {"format": POINTER_FORMAT, "checkpoint": "step-000010.pt", "step": 10}

``commit_checkpoint`` writes the step file first (atomically: tmp + fsync + rename locally, one PUT on an
object store) and only then replaces the pointer, so a crash between the two leaves the pointer on the
previous, complete checkpoint; ``latest_checkpoint`` follows the pointer (or an older run's
``checkpoints/last.pt``). No wall-clock time is stored.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dynamo_depth.shards import storage

CHECKPOINT_FORMAT = "dynamo-depth-checkpoint"
CHECKPOINT_VERSION = 2
"""2: the model holds the original's seven modules (``depth_enc.*`` ... ``motion_mask.*``); 1 had ``depth.*``."""
REQUIRED_KEYS = ("format", "version", "step", "phase", "model", "optimizer", "scheduler", "loader", "rng", "config")
CHECKPOINT_DIR = "checkpoints"
POINTER_NAME = "last.json"
POINTER_FORMAT = "dynamo-depth-checkpoint-pointer"
LEGACY_LAST = "last.pt"
"""An earlier layout's single checkpoint file (``checkpoints/last.pt``): still resumed when no pointer exists."""
KEEP_CHECKPOINTS = 2
"""Step files kept in ``run_dir/checkpoints`` by default (``train.keep_checkpoints``: the pointed one and the
one before it)."""
_STEP_FILE = re.compile(r"^step-(\d{6,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not in this trainer's format (message names the file)."""


@dataclass(frozen=True)
class Checkpoint:
    """The content of a checkpoint file (see the module docstring)."""

    step: int
    phase: str
    model: Mapping[str, torch.Tensor]
    optimizer: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    loader: Mapping[str, int]
    rng: Mapping[str, torch.Tensor]
    config: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": self.step, "phase": self.phase,
            "model": dict(self.model), "optimizer": dict(self.optimizer), "scheduler": dict(self.scheduler),
            "loader": dict(self.loader), "rng": dict(self.rng), "config": dict(self.config),
        }


def checkpoint_dir(run_dir: str) -> str:
    """``run_dir/checkpoints`` (a path or URL like ``run_dir``)."""
    return storage.join(str(run_dir), CHECKPOINT_DIR)


def pointer_url(run_dir: str) -> str:
    """``run_dir/checkpoints/last.json``."""
    return storage.join(checkpoint_dir(run_dir), POINTER_NAME)


def step_file_name(step: int) -> str:
    """``step-000010.pt`` (six digits or more, so names sort by step)."""
    return f"step-{int(step):06d}.pt"


def save_checkpoint(checkpoint: Checkpoint, url: str | os.PathLike[str]) -> str:
    """Write ``checkpoint`` to ``url`` atomically (local: tmp + fsync + rename; object store: one PUT)."""
    url = os.fspath(url)
    storage.write_atomic(url, lambda handle: torch.save(checkpoint.to_dict(), handle))
    return url


def write_pointer(run_dir: str, *, name: str, step: int) -> None:
    """Point ``run_dir/checkpoints/last.json`` at step file ``name`` (one small atomic write)."""
    text = json.dumps({"format": POINTER_FORMAT, "checkpoint": name, "step": int(step)}, sort_keys=True)
    storage.write_bytes_atomic(pointer_url(run_dir), (text + "\n").encode())


def read_pointer(url: str) -> tuple[str, int]:
    """(URL of the checkpoint file, its step) named by the pointer file at ``url``; CheckpointError if unreadable."""
    try:
        raw = json.loads(storage.read_bytes(url))
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint pointer {url}: no such file") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint pointer {url}: not JSON: {exc}") from exc
    name = raw.get("checkpoint") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or raw.get("format") != POINTER_FORMAT or not isinstance(name, str) \
            or not _STEP_FILE.match(name) or not isinstance(raw.get("step"), int):
        raise CheckpointError(f"checkpoint pointer {url}: not a {POINTER_FORMAT} file")
    return storage.join(storage.dirname(url), name), int(raw["step"])


def latest_checkpoint(run_dir: str) -> tuple[str, int | None] | None:
    """(checkpoint URL, step or None if unknown) of ``run_dir``'s last committed checkpoint; None if it has none.

    Follows ``checkpoints/last.json``; without one, an earlier layout's ``checkpoints/last.pt``.
    """
    pointer = pointer_url(run_dir)
    if storage.exists(pointer):
        return read_pointer(pointer)
    legacy = storage.join(checkpoint_dir(run_dir), LEGACY_LAST)
    return (legacy, None) if storage.exists(legacy) else None


def commit_checkpoint(checkpoint: Checkpoint, run_dir: str, *, keep: int = KEEP_CHECKPOINTS,
                      protected_steps: Collection[int] = ()) -> str:
    """Write ``checkpoints/step-N.pt``, then the pointer to it, then ``prune_checkpoints``; returns its URL."""
    name = step_file_name(checkpoint.step)
    url = save_checkpoint(checkpoint, storage.join(checkpoint_dir(run_dir), name))
    write_pointer(run_dir, name=name, step=checkpoint.step)
    prune_checkpoints(run_dir, keep=keep, protected_steps=protected_steps)
    return url


def prune_checkpoints(run_dir: str, *, keep: int, protected_steps: Collection[int] = ()) -> list[str]:
    """Delete the step files older than the last ``keep`` ones (0 keeps all); returns the names deleted.

    The file ``last.json`` names counts as one of the ``keep`` and is never deleted, nor is any file of a
    step in ``protected_steps`` (phase-end checkpoints, ``train.keep_phase_checkpoints``; not counted), nor a
    file of a later step than the pointer's. Rank 0 calls it after a commit; a resumed run's ranks have all
    read their checkpoint before (``train.main.resume_checkpoint`` ends with a barrier), so no rank is
    still reading a file deleted here.
    """
    if keep < 0:
        raise ValueError(f"keep={keep}: must be >= 0 (0 keeps every checkpoint)")
    if keep == 0:
        return []
    pointed, pointed_step = read_pointer(pointer_url(run_dir))
    protected = {int(step) for step in protected_steps}
    older = sorted((int(m.group(1)), n) for n in storage.listdir(checkpoint_dir(run_dir))
                   if (m := _STEP_FILE.match(n)) and int(m.group(1)) < pointed_step
                   and n != storage.basename(pointed) and int(m.group(1)) not in protected)
    stale = [n for _, n in older[:max(0, len(older) - (keep - 1))]]
    for name in stale:
        storage.remove(storage.join(checkpoint_dir(run_dir), name))
    return stale


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint file or follow a ``last.json`` pointer (local path or URL; ``weights_only=True``, CPU
    tensors); ``CheckpointError`` naming the file otherwise."""
    url = os.fspath(path)
    if url.endswith(".json"):
        url, _ = read_pointer(url)
    if storage.is_local(url) and not os.path.isfile(storage._local_path(url)):
        raise CheckpointError(f"checkpoint {url}: no such file")
    try:
        source = storage._local_path(url) if storage.is_local(url) else io.BytesIO(storage.read_bytes(url))
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {url}: no such file") from exc
    try:
        raw = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"checkpoint {url}: cannot read it: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {url}: not a {CHECKPOINT_FORMAT} file")
    if raw.get("version") != CHECKPOINT_VERSION:
        hint = " (written by an earlier model layout; it cannot be resumed)" if raw.get("version") == 1 else ""
        raise CheckpointError(f"checkpoint {url}: version {raw.get('version')!r}, expected {CHECKPOINT_VERSION}{hint}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise CheckpointError(f"checkpoint {url}: missing keys {missing}")
    return Checkpoint(**{k: raw[k] for k in REQUIRED_KEYS if k not in ("format", "version")})


# ----------------------------------------------------------------------------- RNG states
def _local_rng() -> dict[str, torch.Tensor]:
    """This process's torch / numpy / python RNG states as fixed-size tensors."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_extra": torch.tensor([float(np_pos), float(np_has_gauss), float(np_gauss)], dtype=torch.float64),
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python_extra": torch.tensor([float(py_version), float(py_gauss is not None), py_gauss or 0.0],
                                     dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def capture_rng(*, world_size: int) -> dict[str, torch.Tensor]:
    """Every rank's RNG states stacked (world_size, ...) (a collective call under DDP: all ranks call it)."""
    local = _local_rng()
    if world_size == 1:
        return {name: value[None] for name, value in local.items()}
    gathered = {}
    for name, value in local.items():
        parts = [torch.empty_like(value) for _ in range(world_size)]
        dist.all_gather(parts, value.contiguous())
        gathered[name] = torch.stack(parts)
    return gathered


def restore_rng(rng: Mapping[str, torch.Tensor], *, rank: int, world_size: int, source: str = "checkpoint") -> None:
    """Set this process's RNGs to rank ``rank``'s entry of ``rng`` (from ``capture_rng``)."""
    saved = int(rng["torch"].shape[0])
    if saved != world_size:
        raise CheckpointError(f"{source}: saved by {saved} ranks, resumed with {world_size}; use the same world size")
    torch.set_rng_state(rng["torch"][rank].clone())
    extra = rng["numpy_extra"][rank].tolist()
    keys = rng["numpy_keys"][rank].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(extra[0]), int(extra[1]), float(extra[2])))
    version, has_gauss, gauss = rng["python_extra"][rank].tolist()
    internal = tuple(int(v) for v in rng["python_internal"][rank].tolist())
    random.setstate((int(version), internal, gauss if has_gauss else None))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"][rank].clone())


def model_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex of a state dict's names, dtypes, shapes and bytes (in key order)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in state.items():
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
