"""Trainer speed options (issue #18): channels_last on every device, train.compile, bench/train.py's speed variants.

Tiny sizes (64x192, batch 1, one thread) keep the file well under a minute on 2 cores. torch.compile runs with
``train.loop.COMPILE_BACKEND`` set to a counting eager backend: dynamo really captures the model's graphs,
but inductor's C++ code generation (about 2.5 minutes for one phase at this size on this CPU) is skipped.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import train.loop as loop
from dynamo_depth.config import RunConfig, load_config
from dynamo_depth.models import DynamoDepthModel
from tests.cpu_flags import cpu_flags
from train.checkpoint import load_checkpoint
from train.loop import Runtime, build_model, make_optimizer, prepare_batch, run_training, select_trainable, train_step
from train.phases import phase_windows

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"  # resnet18, 64x192
LITE = ["model.depth_network=litemono", "model.scales=[0, 1, 2]"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 samples (1 drive x 2 cameras x 4 triplets) of a synthetic KITTI drive."""
    from bench.train import make_shards

    return make_shards(tmp_path_factory.mktemp("world"), frames=6)


def _weights_4d(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in module.named_parameters() if p.dim() == 4}


def _first_step(config: RunConfig, *, phase: str) -> tuple[dict[str, float], float]:
    """Loss terms and gradient norm of one train step of ``phase`` on a fixed random batch (1 x 3 x 3 x 64 x 192)."""
    model = build_model(config, Runtime())
    window = next(w for w in phase_windows(config) if w.name == phase)
    params = select_trainable(model, phase=phase)
    optimizer, scheduler = make_optimizer(config, params, window)
    images = torch.rand(1, 3, 3, 64, 192, generator=torch.Generator().manual_seed(5))
    K = torch.eye(4)
    K[:3, :3] = torch.tensor([[100.0, 0.0, 96.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]])
    batch = prepare_batch({"images": images, "images_aug": images, "K": K[None, None]}, height=64, width=192,
                          scales=config.model.scales, device=torch.device("cpu"))
    result = train_step(module=model, params=params, batch=batch, optimizer=optimizer, scheduler=scheduler,
                        window=window, step=0, config=config, runtime=Runtime())
    return dict(result.terms), result.grad_norm


def _assert_close_terms(a: list[dict[str, float]], b: list[dict[str, float]], *, rel: float) -> None:
    assert len(a) == len(b)
    for step, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.keys() == y.keys()
        assert x["total"] > 0
        for name in x:
            assert math.isclose(x[name], y[name], rel_tol=rel, abs_tol=1e-9), (step, name, x[name], y[name])


# ----------------------------------------------------------------------------- channels_last
def test_channels_last_gives_the_same_losses_on_cpu() -> None:
    """fine_tune (all four networks learn): one step's loss terms within 1e-5 relative, the gradient norm within
    1e-4 (later steps are not compared: the ground prior's RANSAC turns rounding into different inliers)."""
    (cl_terms, cl_norm), (cf_terms, cf_norm) = (
        _first_step(load_config(DEMO, overrides=[f"train.channels_last={flag}", "train.amp=off"]), phase="fine_tune")
        for flag in ("true", "false"))
    assert len(cl_terms) >= 6 and cl_terms["photometric"] > 0 and cl_terms["ground"] > 0
    _assert_close_terms([cl_terms], [cf_terms], rel=1e-5)
    assert cl_norm > 0 and math.isclose(cl_norm, cf_norm, rel_tol=1e-4), (cl_norm, cf_norm)


@pytest.mark.parametrize("depth_network", ["resnet18", "litemono"])
def test_channels_last_converts_every_module(depth_network: str) -> None:
    overrides = LITE if depth_network == "litemono" else []
    model = build_model(load_config(DEMO, overrides=overrides), Runtime())  # channels_last defaults to true
    assert sorted(model.channels_last_modules()) == sorted(
        ["depth_enc", "depth_dec", "pose_enc", "pose_dec", "motion_enc", "motion_dec", "motion_mask"])
    for name in model.channels_last_modules():
        for key, weight in _weights_4d(getattr(model, name)).items():
            assert weight.is_contiguous(memory_format=torch.channels_last), f"{name}.{key}"
    assert not model.pose_enc.encoder.conv1.weight.is_contiguous()  # 64 x 6 x 7 x 7: really another layout
    depth = _weights_4d(model.depth_enc)
    assert sum(not w.is_contiguous() for w in depth.values()) >= 5
    plain = build_model(load_config(DEMO, overrides=[*overrides, "train.channels_last=false"]), Runtime())
    assert all(w.is_contiguous() for w in _weights_4d(plain).values())
    assert not plain.pose_enc.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for key, value in plain.state_dict().items():  # same init, only the layout differs
        assert torch.equal(value, model.state_dict()[key]), key


# ----------------------------------------------------------------------------- torch.compile
class CountingEager:
    """A torch.compile backend that runs dynamo's captured graphs eagerly and counts them and their nodes."""

    def __init__(self) -> None:
        self.graphs = 0
        self.nodes = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):  # noqa: ANN204
        self.graphs += 1
        self.nodes += len(gm.graph.nodes)
        return gm.forward


def _two_phase_run(shards: Path, run_dir: Path, *, compile_: bool, monkeypatch: pytest.MonkeyPatch,
                   ) -> tuple[list[dict[str, float]], list[type]]:
    """1 disp_init + 1 fine_tune step (checkpoint at the end); returns each step's terms and forward module type."""
    config = load_config(DEMO, overrides=[
        f"data.url={shards}", f"train.run_dir={run_dir}", "data.batch_size=1", "data.num_workers=0",
        "data.augment=false", "schedule.iterations_per_epoch=1", "schedule.motion_init.epochs=0",
        "schedule.mask_init.epochs=0", "train.checkpoint_every=0", "train.progress=false", "train.amp=off",
        f"train.compile={str(compile_).lower()}"])
    modules: list[type] = []
    real_step = loop.train_step

    def recording_step(**kwargs):  # noqa: ANN003, ANN202 - pass-through
        modules.append(type(kwargs["module"]))
        return real_step(**kwargs)

    class Rows:
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []

        def log_step(self, *, result, **_) -> None:  # noqa: ANN001, ANN003
            self.rows.append(dict(result.terms))

    logger = Rows()
    with monkeypatch.context() as patch:
        patch.setattr(loop, "train_step", recording_step)
        summary = run_training(config=config, runtime=Runtime(), logger=logger)
    assert summary.step == 2 and summary.checkpoint is not None
    return logger.rows, modules


def test_compile_runs_the_step_through_dynamo_and_saves_plain_checkpoints(
        shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.eval_frame import OptimizedModule

    torch._dynamo.reset()
    backend = CountingEager()
    monkeypatch.setattr(loop, "COMPILE_BACKEND", backend)
    compiled_terms, compiled_modules = _two_phase_run(shards, tmp_path / "compiled", compile_=True,
                                                      monkeypatch=monkeypatch)
    plain_terms, plain_modules = _two_phase_run(shards, tmp_path / "plain", compile_=False, monkeypatch=monkeypatch)
    assert compiled_modules == [OptimizedModule, OptimizedModule]
    assert plain_modules == [DynamoDepthModel, DynamoDepthModel]
    assert backend.graphs >= 2 and backend.nodes > 200  # both phases captured, the whole model's ops
    _assert_close_terms(compiled_terms, plain_terms, rel=1e-5)
    compiled = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.json")
    plain = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.json")
    assert list(compiled.model) == list(plain.model) == list(DynamoDepthModel().state_dict())
    assert not any("_orig_mod" in key for key in compiled.model)
    for key, value in plain.model.items():
        assert torch.allclose(compiled.model[key], value, rtol=1e-4, atol=1e-6), key
    DynamoDepthModel().load_state_dict(compiled.model)  # loads strictly into a plain model


def test_compile_module_is_the_identity_when_off() -> None:
    model = nn.Linear(2, 2)
    assert loop.compile_module(model, config=load_config(DEMO)) is model


# ----------------------------------------------------------------------------- bench/train.py
ROW = re.compile(r"^\| (\w+) \| [^|]+ \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)% \| ([\d.]+) \((\d+)\) "
                 r"\| ([\d.]+) GiB \|$")


def test_bench_speed_variants_print_one_row_each(shards: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from bench.train import main

    main(["--device", "cpu", "--no-quality", "--variants", "fp32", "bf16", "channels_last", "compile", "all",
          "--speed-height", "64", "--speed-width", "128", "--speed-batch", "1", "--speed-steps", "1",
          "--warmup", "0", "--compile-warmup", "1", "--speed-workers", "0", "--shards", str(shards), "--threads", "1",
          "--compile-backend", "eager", "--out", str(tmp_path)])
    assert loop.COMPILE_BACKEND == "inductor"  # restored
    out = capsys.readouterr().out
    assert "torch " + torch.__version__ in out and "load average (1 min) before" in out
    assert "load average (1 min) after" in out
    assert "--variants fp32 bf16 channels_last compile all" in out
    rows = {m.group(1): m.groups()[1:] for m in map(ROW.match, out.splitlines()) if m}
    assert list(rows) == ["fp32", "bf16", "channels_last", "compile", "all"]
    for name, (images_s, mean_s, median_s, share, warmup_s, warmup_steps, peak) in rows.items():
        assert float(images_s) == pytest.approx(1 / float(mean_s), rel=0.02), name  # batch 1
        assert 0 < float(median_s) < 30 and 0 < float(share) < 100, name
        compiles = name in ("compile", "all")
        assert int(warmup_steps) == int(compiles) and (float(warmup_s) > 0) == compiles, name
        assert 0.1 < float(peak) < 64, name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bench_refuses_cuda_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.train import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device cuda: torch sees no CUDA device (allowed: cpu, cuda)" in capsys.readouterr().err
    assert parse_args([]).variants == ["default"]


def test_native_cpu_bf16_matches_the_cpu_flags_and_bf16_on_other_cpus_warns(monkeypatch, capsys) -> None:
    import train.main as train_main

    assert train_main.native_cpu_bf16() == bool({"avx512_bf16", "amx_tile"} & cpu_flags())
    config = load_config(DEMO, overrides=["train.amp=bf16", "train.threads=0"])
    monkeypatch.setattr(train_main, "native_cpu_bf16", lambda: False)
    train_main.configure_torch(config, Runtime())
    assert "train.amp=bf16 on a CPU without AVX512-BF16 or AMX" in capsys.readouterr().err
    monkeypatch.setattr(train_main, "native_cpu_bf16", lambda: True)
    train_main.configure_torch(config, Runtime())
    train_main.configure_torch(load_config(DEMO, overrides=["train.amp=off"]), Runtime())
    assert capsys.readouterr().err == ""


_PAGE_FAULTS = """
import resource, sys, torch
from train.cpu_memory import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
def faults(mib):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(mib << 18).fill_(1.0)  # freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(64)
print(faults(48))
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux page-fault counts")
def test_freed_memory_is_reused_without_page_faults() -> None:
    """The trainer's CPU setting (``train.cpu_memory.reuse_freed_memory``, called by ``configure_torch``): a
    48 MiB tensor allocated after a 64 MiB one was freed touches no fresh pages (glibc would have unmapped
    the 64 MiB and would map and fault in all 12 k pages of the 48 MiB)."""
    counts = {mode: int(subprocess.run([sys.executable, "-c", _PAGE_FAULTS, mode], cwd=REPO, check=True,
                                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                                       ).stdout) for mode in ("reuse", "default")}
    if counts["default"] < 12288 // 2:  # e.g. transparent huge pages always on: few faults either way
        pytest.skip(f"this kernel / C library does not re-fault freed memory: {counts}")
    assert counts["reuse"] < 256, counts
