"""DDP gets every gradient in its bucket view's layout (issue #30): no "Grad strides do not match bucket view
strides" warning (a gradient copy per step) in any phase, for both depth networks, channels_last on.

A bucket view has its parameter's strides, so the single-process test compares each trainable parameter's
accumulated gradient with the parameter; the two-process test counts the warning in a real gloo DDP step of
every phase (``warnings`` captured; torch warns once per process, so the negative control, which restores the
channels_last strides of the motion decoders' 1x1 ``refine_motion_redu*`` weights, runs last).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dynamo_depth.config import load_config
from train.loop import Runtime, build_model, make_optimizer, prepare_batch, select_trainable, train_step, wrap_model
from train.phases import phase_windows

REPO = Path(__file__).resolve().parents[1]
NETWORKS = {"resnet18": [], "litemono": ["model.depth_network=litemono", "model.scales=[0,1,2]"]}
WARNING = "Grad strides do not match bucket view strides"


def _setup(network: str, runtime: Runtime):  # noqa: ANN202 - (config, model, batch)
    config = load_config(REPO / "configs" / "demo.yaml", overrides=["data.height=64", "data.width=64",
                                                                     *NETWORKS[network]])
    model = build_model(config, runtime)
    generator = torch.Generator().manual_seed(runtime.rank)
    images = torch.rand(2, 3, 3, 64, 64, generator=generator)
    K = torch.eye(4)
    K[:3, :3] = torch.tensor([[50.0, 0.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]])
    batch = prepare_batch({"images": images, "images_aug": images, "K": K.expand(2, 1, 4, 4)}, height=64, width=64,
                          scales=config.model.scales, device=torch.device("cpu"))
    return config, model, batch


def _step(config, model, batch, window, runtime: Runtime) -> list:  # noqa: ANN001
    """One training step of ``window``'s phase (DDP when distributed); returns the trainable parameters."""
    params = select_trainable(model, phase=window.name)
    optimizer, scheduler = make_optimizer(config, params, window)
    module = wrap_model(model, runtime, phase=window.name)
    train_step(module=module, params=params, batch=batch, optimizer=optimizer, scheduler=scheduler, window=window,
               step=window.start, config=config, runtime=runtime)
    return params


def test_every_gradient_has_its_parameters_strides_in_every_phase() -> None:
    torch.set_num_threads(1)
    for network in NETWORKS:
        config, model, batch = _setup(network, Runtime())
        names = {id(p): n for n, p in model.named_parameters()}
        for window in phase_windows(config):
            seen: dict[str, tuple] = {}
            hooks = [p.register_post_accumulate_grad_hook(
                lambda p, seen=seen, names=names: seen.__setitem__(names[id(p)], (p.grad.stride(), p.stride())))
                for p in select_trainable(model, phase=window.name)]
            params = _step(config, model, batch, window, Runtime())
            for hook in hooks:
                hook.remove()
            assert set(seen) == {names[id(p)] for p in params}, (network, window.name)
            mismatched = {name: strides for name, strides in seen.items() if strides[0] != strides[1]}
            assert not mismatched, (network, window.name, mismatched)
        assert model.motion_dec.refine_motion_conv0[0].weight.is_contiguous(memory_format=torch.channels_last)


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    runtime = Runtime(rank=rank, world_size=2)
    counts: dict[str, int] = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for network in NETWORKS:
                config, model, batch = _setup(network, runtime)
                for window in phase_windows(config):
                    before = len(caught)
                    _step(config, model, batch, window, runtime)
                    counts[f"{network}/{window.name}"] = sum(WARNING in str(w.message) for w in caught[before:])
            # negative control: the channels_last strides the 1x1 weights had before the fix
            for level in range(6):
                weight = model.motion_dec.get_submodule(f"refine_motion_redu{level}").weight
                weight.data = weight.data.clone(memory_format=torch.channels_last)
            before = len(caught)
            _step(config, model, batch, phase_windows(config)[1], runtime)  # motion_init
            counts["control"] = sum(WARNING in str(w.message) for w in caught[before:])
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(counts))
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_steps_of_every_phase_warn_of_no_gradient_copy(tmp_path: Path) -> None:
    context = mp.start_processes(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 300
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError("the two gloo ranks did not finish within 300 s (hang)")
    expected = {f"{network}/{phase}": 0 for network in NETWORKS
                for phase in ("disp_init", "motion_init", "mask_init", "fine_tune")}
    for rank in (0, 1):
        counts = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert counts == {**expected, "control": 1}, counts  # the capture sees the warning when there is one
