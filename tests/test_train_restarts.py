"""Restarts (issue #30): a filled run folder is never restarted silently, ``--resume auto``, ``--fresh``,
SIGTERM / SIGINT handling (``train.stopping``).

In-process runs use ``tests.test_train._run`` (8 synthetic KITTI samples at 64x64, batch 3, one step per epoch).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from dynamo_depth.shards import storage
from tests import s3server
from tests.test_train import _run, shards  # noqa: F401 - shards is a fixture
from train.checkpoint import load_checkpoint, model_digest
from train.loop import Runtime
from train.run_folder import move_outputs_aside, resume_mode
from train.stopping import EXIT_STOP_DEADLINE, StopSignals

s3_server, s3_env = s3server.s3_server, s3server.s3_env


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_mode_from_the_options() -> None:
    def mode(env: dict[str, str] | None = None, **options: object) -> str | None:
        values = {"resume": None, "fresh": False, **options}
        return resume_mode(Namespace(**values), env or {})

    assert mode() is None and mode(resume="required") == "required" and mode(resume=True) == "required"
    assert mode(resume="auto") == "auto" and mode(fresh=True) is None
    assert mode({"TORCHELASTIC_RESTART_COUNT": "0"}, fresh=True) is None
    assert mode({"TORCHELASTIC_RESTART_COUNT": "1"}, fresh=True) == "auto"  # a restart keeps this job's progress


def test_a_filled_run_folder_is_refused_and_resume_auto_continues(shards: Path, tmp_path: Path,  # noqa: F811
                                                                   one_thread: None, capsys) -> None:
    run = tmp_path / "run"
    assert _run(shards, run, "--resume", "auto", "--max-steps", "1") == 0  # empty folder: starts at step 0
    out = capsys.readouterr().out
    assert f"train: --resume auto: no checkpoint in {run / 'checkpoints'}; starting at step 0\n" in out
    assert "resuming" not in out
    before = _files(run)
    # the usual mistake after a crash: the same command, longer, without --resume
    assert _run(shards, run, "--max-steps", "2") == 2
    step_file = run / "checkpoints" / "step-000001.pt"
    assert capsys.readouterr().err == (
        f"train: error: train.run_dir {run} already holds a checkpoint: {step_file} (step 1); nothing was started, "
        f"so that run is kept. To continue it, pass --resume (or --resume auto); to start again from step 0, choose "
        f"a new train.run_dir or pass --fresh (moves the earlier run's files to {run / 'superseded-N'}/, deletes "
        f"nothing)\n")
    assert _files(run) == before  # nothing written, nothing moved
    assert _run(shards, run, "--resume", "auto", "--max-steps", "2") == 0  # filled folder: resumes
    assert f"train: rank 0: resuming from {step_file} at step 1\n" in capsys.readouterr().out
    assert _run(shards, tmp_path / "straight", "--max-steps", "2") == 0
    resumed = load_checkpoint(run / "checkpoints" / "last.json")
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.json")
    assert resumed.step == straight.step == 2 and model_digest(resumed.model) == model_digest(straight.model)
    assert _run(shards, run, "--fresh", "--resume") == 2
    assert "--fresh starts again from step 0; it cannot be combined with --resume" in capsys.readouterr().err


def test_fresh_moves_the_earlier_run_aside_and_starts_at_step_0(shards: Path, tmp_path: Path,  # noqa: F811
                                                                 one_thread: None, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    assert _run(shards, run, "--max-steps", "2") == 0
    first = _files(run)
    assert {"config.yaml", "metrics.jsonl", "checkpoints/last.json", "checkpoints/step-000002.pt"} <= set(first)
    assert _run(shards, run, "--fresh", "--max-steps", "1") == 0
    assert f"to {run / 'superseded-1'}/; starting at step 0" in capsys.readouterr().out
    moved = _files(run / "superseded-1")
    assert moved == first  # every file of the earlier run, byte for byte (tb/ included)
    fresh = load_checkpoint(run / "checkpoints" / "last.json")
    assert fresh.step == 1 and sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.json",
                                                                                           "step-000001.pt"]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    # under a torchrun restart --fresh acts as --resume auto: this job's own step-1 checkpoint is continued
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert _run(shards, run, "--fresh", "--max-steps", "2") == 0
    assert f"resuming from {run / 'checkpoints' / 'step-000001.pt'} at step 1" in capsys.readouterr().out
    assert not (run / "superseded-2").exists()
    final = load_checkpoint(run / "checkpoints" / "last.json")
    earlier = load_checkpoint(run / "superseded-1" / "checkpoints" / "step-000002.pt")
    assert final.step == 2 and model_digest(final.model) == model_digest(earlier.model)  # same seed, same math


def test_fresh_moves_an_object_store_run_aside(s3_env) -> None:
    """``--fresh``'s move on the S3 test server (SeaweedFS): every object, under the first free superseded-N/."""
    import uuid

    from tests.test_train_storage import _checkpoint, _listing
    from train.checkpoint import commit_checkpoint

    run_dir = f"s3://{s3server.BUCKET}/{uuid.uuid4().hex}/run"
    for step in (1, 2):
        commit_checkpoint(_checkpoint(step), run_dir)
    for name, data in (("config.yaml", b"a: 1\n"), ("metrics.jsonl", b"{}\n"), ("tb/events.out.tfevents.1", b"tb")):
        storage.write_bytes_atomic(storage.join(run_dir, name), data)
    storage.write_bytes_atomic(storage.join(run_dir, "notes.txt"), b"mine")  # not the trainer's: stays
    before = _listing(run_dir)
    assert move_outputs_aside(run_dir) == f"{run_dir}/superseded-1"
    after = _listing(run_dir)
    assert after == {"notes.txt": b"mine", **{f"superseded-1/{k}": v for k, v in before.items() if k != "notes.txt"}}
    commit_checkpoint(_checkpoint(1), run_dir)
    assert move_outputs_aside(run_dir) == f"{run_dir}/superseded-2"  # the next free number
    assert set(_listing(run_dir)) == set(after) | {"superseded-2/checkpoints/last.json",
                                                   "superseded-2/checkpoints/step-000001.pt"}
    fs, path = storage._remote(run_dir)
    fs.rm(path, recursive=True)


# ----------------------------------------------------------------------------- signals
def test_stop_signals_record_agree_and_restore(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with StopSignals(runtime=Runtime()) as stopper:
        assert not stopper.agree() and stopper.received is None
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at once, in this (main) thread
        assert stopper.received == "SIGTERM" and stopper.agree()
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is previous
    with pytest.raises(KeyboardInterrupt), StopSignals(runtime=Runtime()) as stopper:
        os.kill(os.getpid(), signal.SIGINT)
        assert stopper.received == "SIGINT"
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C stops at once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_stop_deadline_exits_with_its_status_when_the_checkpoint_is_late() -> None:
    codes: list[int] = []
    expired = threading.Event()

    def exit_process(code: int) -> None:  # stands in for os._exit
        codes.append(code)
        expired.set()

    with StopSignals(runtime=Runtime(), deadline_s=0.05, exit_process=exit_process):
        os.kill(os.getpid(), signal.SIGTERM)
        assert expired.wait(timeout=60)  # no checkpoint_written(): the deadline passes
    assert codes == [EXIT_STOP_DEADLINE]
    with StopSignals(runtime=Runtime(), deadline_s=0.05, exit_process=exit_process) as stopper:
        os.kill(os.getpid(), signal.SIGTERM)
        stopper.checkpoint_written()
        assert stopper._timer is not None
        stopper._timer.join(timeout=60)
    assert codes == [EXIT_STOP_DEADLINE]  # the written checkpoint cancelled it
    with pytest.raises(ValueError, match="must be > 0 seconds"):
        StopSignals(runtime=Runtime(), deadline_s=0)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
