"""Checkpoint retention (issue #30): ``train.keep_checkpoints`` K keeps the last K step files, never the one
``last.json`` names, never a phase-end checkpoint kept apart; on local disk and on the S3 test server
(SeaweedFS, ``tests/s3server.py``), and in a training run."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from dynamo_depth.shards import storage
from tests import s3server
from tests.test_train import _run, shards  # noqa: F401 - shards is a fixture
from tests.test_train_restarts import one_thread  # noqa: F401 - a fixture
from tests.test_train_storage import _checkpoint
from train.checkpoint import commit_checkpoint, latest_checkpoint, load_checkpoint, prune_checkpoints, write_pointer

s3_server, s3_env = s3server.s3_server, s3server.s3_env


def _steps(run_dir: str) -> list[str]:
    return storage.listdir(storage.join(run_dir, "checkpoints"))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_keep_two_and_the_phase_ends(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if where == "local":
        run_dir = str(tmp_path / "run")
    else:
        request.getfixturevalue("s3_env")
        run_dir = f"s3://{s3server.BUCKET}/{uuid.uuid4().hex}/run"
    seen = []
    for step in range(1, 7):
        commit_checkpoint(_checkpoint(step), run_dir, keep=2, protected_steps={3})
        seen.append(_steps(run_dir))
    assert seen == [
        ["last.json", "step-000001.pt"],
        ["last.json", "step-000001.pt", "step-000002.pt"],
        ["last.json", "step-000002.pt", "step-000003.pt"],  # 3 is a phase end: kept apart, not counted
        ["last.json", "step-000002.pt", "step-000003.pt", "step-000004.pt"],
        ["last.json", "step-000003.pt", "step-000004.pt", "step-000005.pt"],
        ["last.json", "step-000003.pt", "step-000005.pt", "step-000006.pt"],
    ]
    assert latest_checkpoint(run_dir) == (storage.join(run_dir, "checkpoints/step-000006.pt"), 6)
    assert load_checkpoint(storage.join(run_dir, "checkpoints/step-000003.pt")).step == 3  # intact
    # the file last.json names is never deleted, nor a later one
    write_pointer(run_dir, name="step-000005.pt", step=5)  # e.g. a run resumed from an earlier checkpoint
    assert prune_checkpoints(run_dir, keep=1) == ["step-000003.pt"]
    assert _steps(run_dir) == ["last.json", "step-000005.pt", "step-000006.pt"]  # 6 is later than the pointer
    assert prune_checkpoints(run_dir, keep=0) == []
    with pytest.raises(ValueError, match="keep=-1: must be >= 0"):
        prune_checkpoints(run_dir, keep=-1)
    if where == "s3":
        fs, path = storage._remote(run_dir)
        fs.rm(path, recursive=True)


def test_keep_zero_keeps_every_checkpoint(tmp_path: Path) -> None:
    for step in range(1, 5):
        commit_checkpoint(_checkpoint(step), str(tmp_path), keep=0)
    assert _steps(str(tmp_path)) == ["last.json"] + [f"step-{s:06d}.pt" for s in range(1, 5)]


def test_a_run_keeps_two_checkpoints_and_its_phase_ends(shards: Path, tmp_path: Path,  # noqa: F811
                                                        one_thread: None) -> None:  # noqa: F811
    """Phases disp_init (steps 0-2) and motion_init (step 3), a checkpoint every step, K = 2."""
    run = tmp_path / "run"
    assert _run(shards, run, "train.checkpoint_every=1", "train.keep_checkpoints=2", "--max-steps", "2") == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.json", "step-000001.pt",
                                                                       "step-000002.pt"]
    # resumed with other retention settings (they do not change the math); no periodic checkpoints: the
    # phase end (step 3) is written because of keep_phase_checkpoints, step 4 as the run's end
    assert _run(shards, run, "train.checkpoint_every=0", "train.keep_checkpoints=1",
                "train.keep_phase_checkpoints=true", "--resume") == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.json", "step-000003.pt",
                                                                       "step-000004.pt"]
    assert load_checkpoint(run / "checkpoints" / "step-000003.pt").phase == "disp_init"  # its phase's end
