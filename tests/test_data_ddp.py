"""Two real ``torch.distributed`` processes (gloo) read one epoch: no duplicate, only the documented drop."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dynamo_depth.data import make_loader
from tests.test_data_local import write_dataset

WORLD_SIZE = 2


def _rank_main(rank: int, folder: str, init_file: str, out_dir: str) -> None:
    """One DDP rank: iterate an epoch with 1 worker, all-reduce per step, all-gather the keys."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank))  # as torchrun sets them
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo listens on loopback only
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        loader = make_loader(folder, batch_size=2, num_workers=1, rank=dist.get_rank(),
                             world_size=dist.get_world_size(), seed=11, epoch=2)
        keys, steps = [], 0
        for batch in loader:
            total = torch.tensor([batch["images"].shape[0]], dtype=torch.int64)
            dist.all_reduce(total)  # a collective per step: unequal step counts would hang here
            keys += batch["keys"]
            steps += 1
        gathered: list = [None] * WORLD_SIZE
        dist.all_gather_object(gathered, {"keys": keys, "steps": steps, "dropped": loader.plan.dropped_keys})
        if rank == 0:
            Path(out_dir, "result.json").write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_read_every_sample_once(tmp_path: Path) -> None:
    samples = write_dataset(tmp_path / "shards", n=17, per_shard=4)
    # spawn, not fork: forking the pytest process (which may hold threads of earlier tests' servers)
    # can deadlock the children; a deadline turns any hang into a failure instead of a stuck suite
    context = mp.start_processes(_rank_main, args=(str(tmp_path / "shards"), str(tmp_path / "init"), str(tmp_path)),
                                 nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError("the two gloo ranks did not finish within 180 s (hang)")
    ranks = json.loads((tmp_path / "result.json").read_text())
    assert [r["steps"] for r in ranks] == [4, 4]  # 17 // 2 = 8 samples per rank, batches of 2
    everyone = ranks[0]["keys"] + ranks[1]["keys"]
    assert len(everyone) == len(set(everyone)) == 16
    assert ranks[0]["dropped"] == ranks[1]["dropped"] and len(ranks[0]["dropped"]) == 1
    assert set(everyone) | set(ranks[0]["dropped"]) == set(samples)
