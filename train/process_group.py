"""Joining the torchrun world: this process's ``Runtime`` from RANK / WORLD_SIZE / LOCAL_RANK, the process
group (NCCL on GPU, gloo on CPU; a per-attempt store prefix on a torchrun restart), and the collective check
that every rank sees the same ``train.run_dir``. Used by ``train.main``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from dynamo_depth.shards import storage
from train.run_folder import restart_count
from train.runtime import Runtime


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
                            rank=runtime.rank, world_size=runtime.world_size, store=restart_store(runtime))


def restart_store(runtime: Runtime, env: Any = os.environ) -> Any:
    """On a torchrun restart (``TORCHELASTIC_RESTART_COUNT`` > 0) with the agent's store: that store under a
    prefix of this attempt; else None (``init_process_group``'s env:// default).

    torchrun's static rendezvous (``--master_addr`` / ``--master_port``) keeps one agent store for every attempt,
    so restarted gloo / NCCL workers would read the dead workers' addresses left by the first attempt and
    hang in ``init_process_group`` (torch 2.13); the c10d rendezvous makes a new store per attempt (the prefix
    is then harmless).
    """
    attempt = restart_count(env)
    if attempt == 0 or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    client = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), runtime.world_size, is_master=False,
                           timeout=timedelta(minutes=30))
    return dist.PrefixStore(f"dynamo-depth/attempt-{attempt}", client)


RUN_DIR_TOKEN = ".run_dir_token.json"
"""Written by rank 0 at start and read back by every rank: is run_dir the same storage on every node?"""


def check_shared_run_dir(run_dir: str, runtime: Runtime) -> None:
    """Collective (every rank calls it): ValueError on every rank unless all ranks see rank 0's token in run_dir.

    Rank 0 writes ``run_dir/.run_dir_token.json`` holding a random nonce, broadcasts the nonce (after the
    write), every rank reads the file back and all ranks exchange what they saw; rank 0 then deletes it.
    Nothing to check for one process.
    """
    if not runtime.distributed:
        return
    url = storage.join(run_dir, RUN_DIR_TOKEN)
    host = socket.gethostname()
    nonce, failure = None, None
    if runtime.is_main:
        try:
            nonce = secrets.token_hex(16)
            storage.write_bytes_atomic(url, json.dumps({"nonce": nonce, "host": host}).encode())
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the others know
            nonce, failure = None, exc
    box = [nonce]
    dist.broadcast_object_list(box, src=0)
    nonce = box[0]
    seen = "rank 0 could not write it"
    if nonce is not None:
        try:
            token = json.loads(storage.read_bytes(url))
            seen = "ok" if token.get("nonce") == nonce else f"another token (from host {token.get('host')!r})"
        except FileNotFoundError:
            seen = "no such file"
        except Exception as exc:  # noqa: BLE001 - reported on every rank below
            seen = f"{type(exc).__name__}: {exc}"
    views: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(views, (host, seen))
    if runtime.is_main and nonce is not None:
        storage.remove(url)
    if failure is not None:
        raise failure
    bad = [f"rank {r} on {h}: {v}" for r, (h, v) in enumerate(views) if v != "ok"]
    if bad:
        raise ValueError(f"train.run_dir {run_dir!r} is not the same storage on every node: rank 0 wrote {url} and "
                         f"{'; '.join(bad)}. On a multi-node run, run_dir must be shared storage (a folder every "
                         f"node mounts at the same path) or an object-store URL such as s3://bucket/run")
