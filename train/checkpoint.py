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

Writes go to ``<path>.tmp``, are fsynced and renamed over ``path``, so a crash leaves the previous
checkpoint intact. No wall-clock time is stored.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

CHECKPOINT_FORMAT = "dynamo-depth-checkpoint"
CHECKPOINT_VERSION = 2
"""2: the model holds the original's seven modules (``depth_enc.*`` ... ``motion_mask.*``); 1 had ``depth.*``."""
REQUIRED_KEYS = ("format", "version", "step", "phase", "model", "optimizer", "scheduler", "loader", "rng", "config")


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


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (``*.tmp``, fsync, rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(checkpoint.to_dict(), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint (``weights_only=True``, CPU tensors); ``CheckpointError`` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"checkpoint {path}: cannot read it: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a {CHECKPOINT_FORMAT} file")
    if raw.get("version") != CHECKPOINT_VERSION:
        hint = " (written by an earlier model layout; it cannot be resumed)" if raw.get("version") == 1 else ""
        raise CheckpointError(f"checkpoint {path}: version {raw.get('version')!r}, expected {CHECKPOINT_VERSION}{hint}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing keys {missing}")
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
