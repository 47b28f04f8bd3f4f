"""Training state in object storage and on many nodes (issue #19): the checkpoint pointer protocol, a run_dir
on S3, the shared-run_dir check, and clean error paths (finished run, corrupt sample with workers, refused
S3 credentials). The two-node test runs two torchrun agents on loopback against a SeaweedFS S3 server.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from dynamo_depth.config import config_to_dict, load_config
from dynamo_depth.shards import storage
from tests import s3server
from tests.test_train import DEMO, REPO, TINY, shards  # noqa: F401 - shards is a fixture
from train import main as train_main
from train.batches import unwrap_worker_error
from train.checkpoint import (
    Checkpoint,
    commit_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    pointer_url,
)
from train.loop import Runtime

s3_server, s3_env = s3server.s3_server, s3server.s3_env


def _checkpoint(step: int, config=None) -> Checkpoint:
    """A small but loadable checkpoint (a one-tensor 'model') at ``step`` with the demo config."""
    config = config or load_config(DEMO)
    return Checkpoint(step=step, phase="disp_init", model={"w": torch.full((3,), float(step))}, optimizer={},
                      scheduler={}, loader={"epoch": 0, "consumed": 0, "seed": 0, "world_size": 1},
                      rng={"torch": torch.get_rng_state()[None]}, config=config_to_dict(config))


def _listing(run_dir: str) -> dict[str, bytes]:
    """Every file under run_dir (local folder or S3 prefix) -> its bytes."""
    if storage.is_local(run_dir):
        root = Path(run_dir)
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    fs, path = storage._remote(run_dir)
    fs.invalidate_cache()
    return {name[len(path) + 1:]: fs.cat_file(name) for name in sorted(fs.find(path))}


# ----------------------------------------------------------------------------- the pointer protocol
@pytest.mark.parametrize("where", ["local", "s3"])
def test_pointer_protocol_a_crash_before_the_pointer_resumes_the_previous_checkpoint(
        where: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import train.checkpoint as ckpt

    run_dir = str(tmp_path / "run") if where == "local" else request.getfixturevalue("s3_bucket") + "/runs/a"
    for step in (1, 2, 3):
        assert commit_checkpoint(_checkpoint(step), run_dir) == storage.join(run_dir, f"checkpoints/step-{step:06d}.pt")
    assert latest_checkpoint(run_dir) == (storage.join(run_dir, "checkpoints/step-000003.pt"), 3)
    assert storage.listdir(storage.join(run_dir, "checkpoints")) == ["last.json", "step-000002.pt", "step-000003.pt"]

    def crash(*args, **kwargs):  # the process dies after the step file is written, before the pointer
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(ckpt, "write_pointer", crash)
        commit_checkpoint(_checkpoint(4), run_dir)
    assert storage.exists(storage.join(run_dir, "checkpoints/step-000004.pt"))  # written, never pointed at
    assert latest_checkpoint(run_dir) == (storage.join(run_dir, "checkpoints/step-000003.pt"), 3)
    args = Namespace(resume=True, resume_from=None)
    resumed, url = train_main.resume_checkpoint(args, load_config(DEMO, overrides=[f"train.run_dir={run_dir}"]))
    assert resumed.step == 3 and torch.equal(resumed.model["w"], torch.full((3,), 3.0))
    assert capsys.readouterr().out == f"train: rank 0: resuming from {url} at step 3\n"
    assert load_checkpoint(pointer_url(run_dir)).step == 3  # a pointer file loads what it names
    # the next commit at step 4 replaces the orphan and prunes to two step files
    commit_checkpoint(_checkpoint(4), run_dir)
    assert storage.listdir(storage.join(run_dir, "checkpoints")) == ["last.json", "step-000003.pt", "step-000004.pt"]
    assert json.loads(storage.read_bytes(pointer_url(run_dir)))["checkpoint"] == "step-000004.pt"


def test_an_earlier_runs_last_pt_is_still_resumed(tmp_path: Path) -> None:
    from train.checkpoint import save_checkpoint

    save_checkpoint(_checkpoint(5), tmp_path / "checkpoints" / "last.pt")
    assert latest_checkpoint(str(tmp_path)) == (str(tmp_path / "checkpoints" / "last.pt"), None)
    assert latest_checkpoint(str(tmp_path / "none")) is None


# ----------------------------------------------------------------------------- finished runs, errors
def _snapshot(folder: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"") for p in folder.rglob("*")}


def test_resuming_a_finished_run_says_so_and_writes_nothing(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    config = load_config(DEMO, overrides=["schedule.iterations_per_epoch=4"])  # 16 steps
    commit_checkpoint(_checkpoint(10, config), str(run_dir))
    before = _snapshot(run_dir)
    base = ["--config", str(DEMO), "--set", f"data.url={tmp_path / 'no-shards'}", f"train.run_dir={run_dir}"]
    assert train_main.main([*base, "--resume", "--max-steps", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    step_file = run_dir / "checkpoints" / "step-000010.pt"
    assert out == [f"train: rank 0: resuming from {step_file} at step 10",
                   f"train: checkpoint {step_file} is at step 10; --max-steps 8 is already done, nothing to do"]
    assert _snapshot(run_dir) == before
    commit_checkpoint(_checkpoint(16, config), str(run_dir))
    before = _snapshot(run_dir)
    assert train_main.main([*base, "--resume"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        "is at step 16; the schedule (16 steps) is already done, nothing to do")
    assert _snapshot(run_dir) == before


def _corrupt_copy(source: Path, target: Path) -> Path:
    """The shards without their manifest, the first sample's depth.npy.zst replaced by garbage."""
    target.mkdir(parents=True)
    for shard in sorted(source.glob("*.tar")):
        with tarfile.open(shard) as tin, tarfile.open(target / shard.name, "w", format=tarfile.USTAR_FORMAT) as tout:
            spoiled = False
            for member in tin.getmembers():
                data = tin.extractfile(member).read()
                if not spoiled and member.name.endswith("depth.npy.zst"):
                    data, spoiled = b"garbage" * 10, True
                info = tarfile.TarInfo(member.name)
                info.size, info.mtime = len(data), 0
                tout.addfile(info, io.BytesIO(data))
    return target


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_sample_is_one_line_and_exit_2_with_or_without_workers(
        workers: int, shards: Path, tmp_path: Path, capsys) -> None:  # noqa: F811 - the fixture
    bad = _corrupt_copy(shards, tmp_path / "bad")
    code = train_main.main(["--config", str(DEMO), "--set", f"data.url={bad}", f"train.run_dir={tmp_path / 'run'}",
                            *TINY, f"data.num_workers={workers}", "--max-steps", "4"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.fullmatch(r"train: error: sample '\S+_\d{6}', member 'depth.npy.zst': cannot parse: ZstdError: .*\n",
                        err), err


def test_unwrap_worker_error_rebuilds_the_original() -> None:
    from torch._utils import ExceptionWrapper

    from dynamo_depth.data.sources import ShardIntegrityError
    from dynamo_depth.shards.schema import SampleError

    def wrapped(exc: BaseException) -> BaseException:
        try:
            raise exc
        except BaseException:  # noqa: BLE001 - what a DataLoader worker does
            wrapper = ExceptionWrapper(where="in DataLoader worker process 1")
        try:
            wrapper.reraise()
        except BaseException as raised:  # noqa: BLE001
            return raised
        raise AssertionError("reraise() returned")

    sample = wrapped(SampleError("k_000001", "depth.npy.zst", "cannot parse: bad"))
    assert type(sample) is RuntimeError  # SampleError needs three arguments
    original = unwrap_worker_error(sample)
    assert type(original) is ValueError and str(original) == "sample 'k_000001', member 'depth.npy.zst': cannot parse: bad"
    integrity = unwrap_worker_error(wrapped(ShardIntegrityError("shard a.tar: sha256 differs")))
    assert type(integrity) is ShardIntegrityError and str(integrity) == "shard a.tar: sha256 differs"
    auth = unwrap_worker_error(wrapped(storage.StorageAuthError("s3://b/x: refused")))
    assert type(auth) is storage.StorageAuthError and str(auth) == "s3://b/x: refused"
    assert unwrap_worker_error(wrapped(KeyError("bug"))) is None and unwrap_worker_error(ValueError("x")) is None


def test_a_wrong_s3_secret_names_the_url_and_the_variables(shards: Path, s3_env, tmp_path: Path,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    base = ["--config", str(DEMO), "--set", *TINY, "--max-steps", "1"]
    assert train_main.main([*base, "--set", "data.url=s3://shards/kitti", f"train.run_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train: error: s3://shards/kitti/manifest.json: the object store "
                                                   "refused the credentials (Forbidden)"), err
    assert "AWS_ACCESS_KEY_ID" in err and "AWS_SECRET_ACCESS_KEY" in err and f"AWS_ENDPOINT_URL (now {s3_env.endpoint})" in err
    assert train_main.main([*base, "--set", f"data.url={shards}", "train.run_dir=s3://shards/runs/denied"]) == 2
    err = capsys.readouterr().err
    # the first access to the run folder: the check for an earlier run's checkpoint (train.run_folder)
    assert err.count("\n") == 1 and "s3://shards/runs/denied/checkpoints/last.json: the object store refused the " \
        "credentials (" in err and "AWS_SECRET_ACCESS_KEY" in err, err


# ----------------------------------------------------------------------------- the shared run_dir check
def _rank_check(rank: int, store: str, run_dirs: list[str], results) -> None:  # noqa: ANN001 - a Queue
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        for run_dir in run_dirs:
            try:
                train_main.check_shared_run_dir(run_dir.format(rank=rank), Runtime(rank=rank, world_size=2))
                results.put((rank, run_dir, "ok"))
            except ValueError as exc:
                results.put((rank, run_dir, str(exc)))
    finally:
        dist.destroy_process_group()


def test_a_run_dir_not_shared_by_every_rank_is_refused_on_every_rank(tmp_path: Path) -> None:
    """Two ranks with a folder each (as two nodes with a local run_dir): both refuse; one shared folder passes."""
    separate, shared = str(tmp_path / "node{rank}" / "run"), str(tmp_path / "shared")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_rank_check, args=(r, str(tmp_path / "store"), [separate, shared], results))
             for r in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=120)
    seen = {(rank, run_dir): text for rank, run_dir, text in (results.get(timeout=5) for _ in range(4))}
    assert [p.exitcode for p in ranks] == [0, 0]
    for rank in (0, 1):
        refusal = seen[(rank, separate)]
        assert refusal.startswith(f"train.run_dir '{tmp_path / f'node{rank}' / 'run'}' is not the same storage on "
                                  f"every node: rank 0 wrote ") and "rank 1 on " in refusal and "no such file" in refusal
        assert "run_dir must be shared storage" in refusal and "s3://" in refusal and "rank 0 on" not in refusal
        assert seen[(rank, shared)] == "ok"
    assert not list(Path(shared).iterdir())  # the token is removed


# ----------------------------------------------------------------------------- two nodes on loopback
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _listeners(pids: set[int]) -> list[str]:
    """Local addresses (``ip:port``) of the TCP listening sockets these processes own (``ss -ltnpH``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines()
            if any(int(pid) in pids for pid in re.findall(r"pid=(\d+)", line))]


def _kill_tree(pid: int) -> None:
    for member in _tree(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


class TwoNodes:
    """Two torchrun agents (``--nnodes 2 --nproc_per_node 1``, c10d rendezvous on 127.0.0.1), one folder each."""

    def __init__(self, root: Path, env: dict[str, str], shards: Path) -> None:  # noqa: F811
        self.root, self.env, self.shards = root, env, shards
        self.agents: dict[str, subprocess.Popen] = {}

    def start(self, name: str, run_dir: str, *extra: str, script: str = "train/main.py") -> None:
        port = _free_port()
        for node in ("a", "b"):
            cwd = self.root / f"node_{node}"
            cwd.mkdir(parents=True, exist_ok=True)
            command = [
                sys.executable, "-m", "train.loopback_torchrun", "--nnodes", "2", "--nproc_per_node", "1",
                "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_conf",
                f"is_host={int(node == 'a')}", "--local_addr", "127.0.0.1", "--max_restarts", "0",
                str(REPO / script), "--config", str(DEMO), "--set", f"data.url={self.shards}",
                f"train.run_dir={run_dir}", "schedule.iterations_per_epoch=2", *TINY, "train.deterministic=true",
                "train.checkpoint_every=3", "--digest-dir", str(cwd / f"digests_{name}"), "--max-steps", "5", *extra]
            log = open(cwd / f"{name}.log", "wb")  # noqa: SIM115 - closed right after the child has it
            self.agents[f"{name}_{node}"] = subprocess.Popen(command, cwd=cwd, env=self.env, stdout=log,
                                                             stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            if node == "a":  # agent a hosts the rendezvous store: let it bind first
                time.sleep(1.0)

    def wait(self, name: str, timeout: float = 240) -> dict[str, int]:
        return {node: self.agents[f"{name}_{node}"].wait(timeout=timeout) for node in ("a", "b")}

    def log(self, name: str, node: str) -> str:
        return (self.root / f"node_{node}" / f"{name}.log").read_text(errors="replace")

    def digests(self, name: str) -> set[str]:
        files = sorted(self.root.glob(f"node_*/digests_{name}/params_rank*.sha256"))
        assert [f.name for f in files] == ["params_rank0.sha256", "params_rank1.sha256"], files
        return {f.read_text().strip() for f in files}

    def kill_all(self) -> None:
        for agent in self.agents.values():
            if agent.poll() is None:
                _kill_tree(agent.pid)
                agent.wait(timeout=30)


def test_two_nodes_on_s3_killed_after_a_checkpoint_resume_bitwise(shards: Path, s3_env, tmp_path: Path) -> None:  # noqa: F811
    """Two agents, run_dir on SeaweedFS: node b is SIGKILLed right after the step-3 checkpoint, both restart with
    --resume and reach step 5 with the parameters of an uninterrupted two-node run, bitwise; every listening
    socket of the agents and workers is on 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT", "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    env.update(s3_env.env, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME="lo", PAUSE_UNTIL_FILE=str(tmp_path / "release"))
    run_dir = f"s3://{s3server.BUCKET}/{uuid.uuid4().hex}/run"
    nodes = TwoNodes(tmp_path, env, shards)
    client, bucket, prefix = s3_env.client(), s3server.BUCKET, run_dir.split("/", 3)[3]
    try:
        # the uninterrupted reference, in a local folder both "nodes" share (one machine)
        nodes.start("whole", str(tmp_path / "whole"), "--set", "train.checkpoint_every=0")
        assert nodes.wait("whole") == {"a": 0, "b": 0}, nodes.log("whole", "a")[-3000:] + nodes.log("whole", "b")[-3000:]
        reference = nodes.digests("whole")
        assert len(reference) == 1

        # interrupted: rank 0 holds after the step-3 checkpoint until node b is dead
        nodes.start("first", run_dir, script="tests/train_paused.py")
        deadline = time.monotonic() + 240
        while not (tmp_path / "release.held").exists():
            assert time.monotonic() < deadline and all(nodes.agents[f"first_{n}"].poll() is None for n in "ab"), \
                nodes.log("first", "a")[-3000:] + nodes.log("first", "b")[-3000:]
            time.sleep(0.1)
        pointer = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/checkpoints/last.json")["Body"].read())
        assert pointer == {"checkpoint": "step-000003.pt", "format": "dynamo-depth-checkpoint-pointer", "step": 3}
        ours = {pid for n in "ab" for pid in _tree(nodes.agents[f"first_{n}"].pid)}
        listening = _listeners(ours)
        assert len(listening) >= 4 and all(address.startswith("127.0.0.1:") for address in listening), listening
        _kill_tree(nodes.agents["first_b"].pid)  # kill -9 node b: its agent and its worker
        (tmp_path / "release").touch()
        assert nodes.agents["first_a"].wait(timeout=120) != 0  # node a's worker loses its peer and fails
        assert "done:" not in nodes.log("first", "a")

        nodes.start("again", run_dir, "--resume")
        assert nodes.wait("again") == {"a": 0, "b": 0}, nodes.log("again", "a")[-3000:] + nodes.log("again", "b")[-3000:]
        step_file = f"{run_dir}/checkpoints/step-000003.pt"
        resumed = [line for node in ("a", "b") for line in nodes.log("again", node).splitlines() if "resuming" in line]
        assert sorted(resumed) == [f"train: rank {r}: resuming from {step_file} at step 3" for r in (0, 1)]
        assert nodes.digests("again") == reference
        files = _listing(run_dir)
        assert {"config.yaml", "metrics.jsonl", "checkpoints/last.json", "checkpoints/step-000003.pt",
                "checkpoints/step-000005.pt"} <= set(files) and ".run_dir_token.json" not in files
        assert len([f for f in files if f.startswith("tb/events.out.tfevents.")]) == 2  # one per run's rank 0
        assert [json.loads(line)["step"] for line in files["metrics.jsonl"].decode().splitlines()] == [1, 2, 3, 4, 5]
        assert load_checkpoint(f"{run_dir}/checkpoints/last.json").step == 5
        assert not any((tmp_path / f"node_{n}" / "s3:").exists() for n in "ab")  # nothing written under a cwd
    finally:
        nodes.kill_all()
        shutil.rmtree(tmp_path / "whole", ignore_errors=True)
        fs, path = storage._remote(run_dir)
        fs.rm(path, recursive=True)  # ~1 GB of checkpoints the session's server need not keep
