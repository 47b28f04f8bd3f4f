"""The trainer: schedule as data, batch preparation, 2-process DDP over all phases, exact resume, NaN stop.

Shards come from a real synthetic KITTI world (``dynamo_depth.synth`` + ``builders.kitti``): 8 triplets
of 640x192 images, trained at 64x64 (``--set`` overrides), batch 2, 1 thread per process.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynamo_depth.config import load_config
from train import main as train_main
from train.checkpoint import CheckpointError, load_checkpoint, model_digest
from train.loop import (
    InitSources,
    NonFiniteLossError,
    Runtime,
    build_model,
    make_optimizer,
    prepare_batch,
    select_trainable,
    train_step,
)
from train.phases import learning_rate, phase_windows, total_steps, window_at

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
TINY = ["data.height=64", "data.width=64", "data.batch_size=2", "data.num_workers=0", "train.threads=1",
        "train.progress=false", "train.checkpoint_every=0", "train.image_every=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 samples (1 drive x 2 cameras x 4 triplets) built from a synthetic KITTI raw drive."""
    from builders.kitti import main as build_kitti
    from dynamo_depth.synth.kitti import write_kitti

    root = tmp_path_factory.mktemp("world")
    write_kitti(root / "raw", sequences=1, frames=6, seed=0)
    assert build_kitti([str(root / "raw"), str(root / "shards"), "--workers", "0"]) == 0
    return root / "shards"


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- schedule
def test_paper_schedule_windows_and_learning_rates() -> None:
    config = load_config(REPO / "configs" / "kitti.yaml")
    windows = phase_windows(config)
    assert [(w.name, w.start, w.steps, w.lr_scale) for w in windows] == [
        ("disp_init", 0, 8000, 1.0), ("motion_init", 8000, 8000, 1.0), ("mask_init", 16000, 40000, 1.0),
        ("fine_tune", 56000, 160000, 0.5)]
    assert total_steps(config) == 216000
    fine = window_at(config, 56000)
    assert fine.name == "fine_tune" and fine.progress(56000) == 0.0 and fine.progress(136000) == 0.5
    lr = [learning_rate(optim=config.optim, window=fine, step=s, iterations_per_epoch=8000)
          for s in (56000, 56000 + 79999, 56000 + 80000, 215999)]
    assert lr == [5e-5, 5e-5, 2.5e-5, 2.5e-5]
    with pytest.raises(ValueError, match="outside the schedule of 216000 steps"):
        window_at(config, 216000)


def test_step_lr_scheduler_follows_the_schedule() -> None:
    config = load_config(DEMO, overrides=["schedule.iterations_per_epoch=2", "optim.decay_every_epochs=1",
                                          "schedule.fine_tune.epochs=3"])
    window = window_at(config, total_steps(config) - 1)
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer, scheduler = make_optimizer(config, params, window)
    seen = []
    for step in range(window.start, window.end):
        seen.append(optimizer.param_groups[0]["lr"])
        assert seen[-1] == pytest.approx(learning_rate(optim=config.optim, window=window, step=step,
                                                       iterations_per_epoch=2), rel=1e-12)
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([5e-5, 5e-5, 2.5e-5, 2.5e-5, 1.25e-5, 1.25e-5])
    skipped = load_config(DEMO, overrides=["schedule.motion_init.epochs=0"])
    assert [w.name for w in phase_windows(skipped)] == ["disp_init", "mask_init", "fine_tune"]


def test_prepare_batch_resizes_images_and_scales_intrinsics() -> None:
    K4 = torch.eye(4)
    K4[:3, :3] = torch.tensor([[320.0, 0.0, 319.5], [0.0, 300.0, 95.5], [0.0, 0.0, 1.0]])
    images = torch.full((1, 3, 3, 192, 640), 0.25)
    ts = torch.tensor([[0.5, 0.25]])
    batch = prepare_batch({"images": images, "images_aug": images * 2, "K": K4[None, None], "ts": ts}, height=64,
                          width=192, scales=(0, 1, 2, 3), device=torch.device("cpu"))
    assert batch.images_aug.shape == (1, 3, 3, 64, 192) and batch.losses.color[0].shape == (1, 3, 64, 192)
    assert torch.allclose(batch.losses.color[-1], torch.tensor(0.25))
    assert torch.allclose(batch.images_aug, torch.tensor(0.5))
    expected = torch.tensor([[320.0 * 0.3, 0.0, 319.5 * 0.3], [0.0, 100.0, 95.5 / 3], [0.0, 0.0, 1.0]])
    assert torch.allclose(batch.losses.K[0][0, :3, :3], expected)
    assert torch.allclose(batch.losses.K[2][0, :3, :3], expected * torch.tensor([[0.25], [0.25], [1.0]]))
    assert torch.allclose(batch.losses.inv_K[1][0] @ batch.losses.K[1][0], torch.eye(4), atol=1e-6)
    assert batch.losses.target_pyramid[3].shape == (1, 3, 8, 24)
    assert float(batch.losses.ts[-1][0]) == 0.5 and float(batch.losses.ts[1][0]) == 0.25
    same = prepare_batch({"images": images, "images_aug": images, "K": K4[None, None]}, height=192, width=640,
                         scales=(0,), device=torch.device("cpu"))
    assert torch.equal(same.losses.color[1], images[:, 2]) and torch.allclose(same.losses.K[0][0], K4, atol=1e-5)
    assert float(same.losses.ts[1][0]) == 1.0  # no ts from the loader: evenly spaced frames


def test_ramp_rises_over_the_first_third_of_an_epoch_of_each_phase() -> None:
    from train.phases import PhaseWindow, ramp_factor

    window = PhaseWindow(name="mask_init", start=100, steps=50, lr_scale=1.0)
    assert ramp_factor(window, 100, iterations_per_epoch=30) == 0.0
    assert ramp_factor(window, 105, iterations_per_epoch=30) == 0.5
    assert ramp_factor(window, 110, iterations_per_epoch=30) == ramp_factor(window, 149, iterations_per_epoch=30) == 1.0


# ----------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    return env


def test_two_process_ddp_runs_every_phase_with_identical_parameters(shards: Path, tmp_path: Path) -> None:
    run_dir, digests = tmp_path / "run", tmp_path / "digests"
    command = [sys.executable, "-m", "train.loopback_torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(REPO / "train" / "main.py"), "--config", str(DEMO),
               "--set", f"data.url={shards}", f"train.run_dir={run_dir}", "schedule.iterations_per_epoch=2",
               *TINY, "--digest-dir", str(digests)]
    proc = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "done: step 8" in proc.stdout
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.json")
    assert (checkpoint.step, checkpoint.phase) == (8, "fine_tune")
    assert checkpoint.loader == {"epoch": 3, "consumed": 4, "seed": 0, "world_size": 2}  # 2 batches a data epoch
    assert checkpoint.rng["torch"].shape[0] == 2
    assert not torch.equal(checkpoint.rng["torch"][0], checkpoint.rng["torch"][1])  # seeded by rank
    config = load_config(run_dir / "config.yaml")
    assert config.data.url == str(shards) and config.schedule.iterations_per_epoch == 2
    model = build_model(config, Runtime())
    initial = model.state_dict()
    # parameters are identical on both ranks (BatchNorm buffers are rank-local until the next DDP forward)
    saved_parameters = {name: checkpoint.model[name] for name, _ in model.named_parameters()}
    rank_digests = [(digests / f"params_rank{r}.sha256").read_text().strip() for r in (0, 1)]
    assert rank_digests[0] == rank_digests[1] == model_digest(saved_parameters)
    for prefix in ("depth_enc.", "depth_dec.", "pose_enc.", "pose_dec.", "motion_enc.", "motion_dec.", "motion_mask."):
        changed = [n for n in initial if n.startswith(prefix) and initial[n].is_floating_point()
                   and not torch.equal(initial[n], checkpoint.model[n])]
        assert changed, f"{prefix} never trained"
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.json", "step-000008.pt"]
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 8  # log_every=1
    _check_eval_hook(run_dir, shards, model, checkpoint)  # the run folder: its last.json names the file


LITEMONO = ["model.depth_network=litemono", "model.scales=[0,1,2]", "model.drop_path_rate=0.4"]


def _torchrun(shards: Path, run_dir: Path, digests: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "train.loopback_torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(REPO / "train" / "main.py"), "--config", str(DEMO),
               "--set", f"data.url={shards}", f"train.run_dir={run_dir}", "schedule.iterations_per_epoch=2",
               *TINY, *LITEMONO, "train.deterministic=true", "--digest-dir", str(digests), *extra]
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def test_litemono_two_processes_every_phase_and_exact_resume(shards: Path, tmp_path: Path) -> None:
    """Lite-Mono (stochastic depth 0.4) through all four phases on 2 ranks; a run stopped after step 4 and
    resumed ends with the parameters of an uninterrupted run, bitwise."""
    whole = _torchrun(shards, tmp_path / "whole", tmp_path / "d_whole")
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    assert "done: step 8" in whole.stdout
    first = _torchrun(shards, tmp_path / "split", tmp_path / "d_first", "--max-steps", "4")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = _torchrun(shards, tmp_path / "split", tmp_path / "d_split", "--resume")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    digests = [(tmp_path / d / f"params_rank{r}.sha256").read_text() for d in ("d_whole", "d_split") for r in (0, 1)]
    assert len(set(digests)) == 1
    saved = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.json")
    assert saved.step == 8 and any(k.startswith("depth_enc.stages.") for k in saved.model)


def _check_eval_hook(path: Path, shards: Path, model, checkpoint) -> None:
    """eval.depth's --checkpoint hook reads this format: its disparity is the trained depth network's."""
    from eval import iter_samples, rgb_from_jpeg
    from eval.depth import load_depth_predictor

    sample = next(iter_samples(str(shards), max_samples=1))
    disparity = load_depth_predictor(str(path))(sample)
    assert disparity.shape == (64, 64) and ((disparity > 0) & (disparity < 1)).all()
    model.load_state_dict(checkpoint.model)
    model.eval()
    image = torch.tensor(rgb_from_jpeg(sample.images[1]), dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
    image = torch.nn.functional.interpolate(image, size=(64, 64), mode="bicubic", align_corners=False,
                                            antialias=True).clamp(0, 1)
    with torch.no_grad():
        expected = model.predict_disparity(image)[0][0, 0].double().numpy()
    assert abs(disparity - expected).max() < 1e-6
    with pytest.raises(ValueError, match="no such file"):
        load_depth_predictor(str(path.with_name("missing.pt")))


# ----------------------------------------------------------------------------- resume and NaN
def _run(shards: Path, run_dir: Path, *extra: str) -> int:
    return train_main.main(["--config", str(DEMO), "--set", f"data.url={shards}", f"train.run_dir={run_dir}",
                            *TINY, "data.batch_size=3", "train.deterministic=true", "schedule.iterations_per_epoch=1",
                            "schedule.disp_init.epochs=3", "schedule.motion_init.epochs=1",
                            "schedule.mask_init.epochs=0", "schedule.fine_tune.epochs=0",
                            "optim.decay_every_epochs=1", *extra])


def test_resume_continues_bitwise_exactly(shards: Path, tmp_path: Path, one_thread: None) -> None:
    # 8 samples at batch 3 -> 3 batches per data epoch: step 3 starts data epoch 1; the lr halves every step.
    assert _run(shards, tmp_path / "straight", "--max-steps", "4") == 0
    assert _run(shards, tmp_path / "split", "--max-steps", "2") == 0
    half = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.json")
    assert (half.step, half.phase, half.loader["epoch"], half.loader["consumed"]) == (2, "disp_init", 0, 6)
    assert half.scheduler["last_epoch"] == 2
    assert _run(shards, tmp_path / "split", "--max-steps", "4", "--resume") == 0
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.json")
    resumed = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.json")
    assert (resumed.step, resumed.phase, resumed.loader) == (4, "motion_init", straight.loader)
    assert straight.loader == {"epoch": 1, "consumed": 3, "seed": 0, "world_size": 1}
    assert list(straight.model) == list(resumed.model)
    for name, value in straight.model.items():
        assert torch.equal(value, resumed.model[name]), name
    assert model_digest(straight.model) == model_digest(resumed.model) != model_digest(half.model)
    state_a, state_b = straight.optimizer["state"], resumed.optimizer["state"]
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k]["exp_avg"], state_b[k]["exp_avg"])
                                                    for k in state_a)
    # a resume whose config changes the math is refused, naming the keys
    assert _run(shards, tmp_path / "split", "--max-steps", "4", "--resume", "--set", "optim.lr=1") == 2


def test_resume_without_checkpoint_and_bad_checkpoint(shards: Path, tmp_path: Path, capsys) -> None:
    assert _run(shards, tmp_path / "empty", "--resume") == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something-else"}, bad)
    with pytest.raises(CheckpointError, match="not a dynamo-depth-checkpoint file"):
        load_checkpoint(bad)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shards: Path, tmp_path: Path, one_thread: None,
                                                            monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import train.loop as loop

    real = loop.compute_losses
    calls = []

    def poisoned(*args, **kwargs):  # fault injection: the third step's loss turns NaN
        losses = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            losses = dataclasses.replace(losses, total=losses.total * math.nan)
        return losses

    monkeypatch.setattr(loop, "compute_losses", poisoned)
    run_dir = tmp_path / "nan"
    assert _run(shards, run_dir, "train.checkpoint_every=1", "--max-steps", "4") == 3
    err = capsys.readouterr().err
    assert "step 2 (disp_init): loss is not finite" in err and "last good checkpoint is kept" in err and "(step 2)" in err
    kept = load_checkpoint(run_dir / "checkpoints" / "last.json")
    assert kept.step == 2 and sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "last.json", "step-000001.pt", "step-000002.pt"]  # no temporary file left


def test_train_step_refuses_nan_before_touching_parameters(one_thread: None) -> None:
    torch.set_num_threads(1)
    config = load_config(DEMO, overrides=["data.height=64", "data.width=64"])
    model = build_model(config, Runtime())
    window = phase_windows(config)[0]
    params = select_trainable(model, phase=window.name)
    optimizer, scheduler = make_optimizer(config, params, window)
    images = torch.rand(1, 3, 3, 64, 64)
    images[0, 1, :, 10, 10] = math.nan
    K = torch.eye(4)
    K[:3, :3] = torch.tensor([[50.0, 0.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]])
    batch = prepare_batch({"images": images, "images_aug": images, "K": K[None, None]}, height=64, width=64,
                          scales=config.model.scales, device=torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteLossError, match="loss is not finite"):
        train_step(module=model, params=params, batch=batch,
                   optimizer=optimizer, scheduler=scheduler, window=window, step=0, config=config, runtime=Runtime())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert scheduler.last_epoch == 0


def test_trains_from_s3_shards(shards: Path, s3_bucket: str, tmp_path: Path, one_thread: None) -> None:
    """The same shards served by an S3 server (moto): one step reads them through the streaming loader."""
    import boto3

    client = boto3.client("s3")
    bucket = s3_bucket.removeprefix("s3://")
    for path in sorted(shards.iterdir()):
        client.put_object(Bucket=bucket, Key=f"kitti/{path.name}", Body=path.read_bytes())
    run_dir = tmp_path / "s3run"
    assert _run(shards, run_dir, "--set", f"data.url={s3_bucket}/kitti", "--max-steps", "1") == 0
    saved = load_checkpoint(run_dir / "checkpoints" / "last.json")
    assert saved.step == 1 and saved.loader == {"epoch": 0, "consumed": 3, "seed": 0, "world_size": 1}
    assert load_config(run_dir / "config.yaml").data.url == f"{s3_bucket}/kitti"


def test_init_from_an_original_folder(shards: Path, tmp_path: Path, one_thread: None) -> None:
    """--init-from starts a run from an original module folder: the model's initial weights are the folder's."""
    from dynamo_depth.models import DynamoDepthModel
    from dynamo_depth.models.original import export_folder

    torch.manual_seed(123)
    source = DynamoDepthModel()
    folder = export_folder(source, tmp_path / "released", height=64, width=64)
    config = load_config(DEMO, overrides=["data.height=64", "data.width=64"])
    model = build_model(config, Runtime(), init=InitSources(checkpoint=str(folder)))
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    run_dir = tmp_path / "finetune"
    assert _run(shards, run_dir, "--init-from", str(folder), "--max-steps", "1") == 0
    assert load_checkpoint(run_dir / "checkpoints" / "last.json").step == 1
    (folder / "pose_dec.pth").unlink()
    assert _run(shards, tmp_path / "bad", "--init-from", str(folder), "--max-steps", "1") == 2


def test_init_weights_from_an_imagenet_resnet_file(tmp_path: Path) -> None:
    """--init-weights with torchvision's ResNet-18 file initialises every encoder (conv1 repeated / n)."""
    from dynamo_depth.models.resnet import ResnetEncoder

    torch.manual_seed(7)
    imagenet = {k: torch.randn(v.shape) if v.is_floating_point() else v
                for k, v in ResnetEncoder().encoder.state_dict().items()}
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet, path)
    config = load_config(DEMO, overrides=["data.height=64", "data.width=64"])
    model = build_model(config, Runtime(), init=InitSources(imagenet=str(path)))
    assert torch.equal(model.depth_enc.encoder.layer4[1].conv2.weight, imagenet["layer4.1.conv2.weight"])
    assert torch.equal(model.pose_enc.encoder.layer1[0].bn1.running_var, imagenet["layer1.0.bn1.running_var"])
    assert torch.allclose(model.motion_enc.encoder.conv1.weight[:, 6:], imagenet["conv1.weight"] / 3)


def test_init_from_a_folder_of_the_other_depth_network_is_refused(tmp_path: Path) -> None:
    from dynamo_depth.models import DynamoDepthModel
    from dynamo_depth.models.original import export_folder
    from dynamo_depth.models.resnet import WeightLoadError

    folder = export_folder(DynamoDepthModel(depth_network="litemono", scales=(0, 1, 2)), tmp_path / "lite",
                           height=64, width=64)
    config = load_config(DEMO, overrides=["data.height=64", "data.width=64"])  # resnet18
    with pytest.raises(WeightLoadError, match=r"depth_enc.pth.*holds a litemono depth network, the model is resnet18"):
        build_model(config, Runtime(), init=InitSources(checkpoint=str(folder)))
