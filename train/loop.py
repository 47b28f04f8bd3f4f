"""The training loop: one optimiser step, the phase loop and checkpointing (batches: ``train.batches``).

Everything takes the frozen ``RunConfig`` and a ``Runtime`` (rank, world size, device); nothing keeps
mutable options. ``run_training`` drives the 4-phase schedule from a step (0 or a checkpoint's) to
``max_steps`` or the end of the schedule, and returns a ``RunSummary``.

Per phase: the phase's trainable parameters get ``requires_grad=True`` (all others False), a fresh
Adam + StepLR is built over them, and the model is wrapped in a new DDP (which then only syncs the
trainable parameters; every one of them gets a gradient in its phase, so ``find_unused_parameters``
stays off; ``FIND_UNUSED_PARAMETERS`` holds that per phase as data).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dynamo_depth.config import PHASE_NAMES, RunConfig, config_to_dict
from dynamo_depth.models import DynamoDepthModel, ModelOutputs
from dynamo_depth.objective.inputs import LossSettings, SeededDraws
from dynamo_depth.objective.losses import TERMS, LossWeights, compute_losses
from train.batches import StepBatch, batch_stream, prepare_batch
from train.checkpoint import Checkpoint, capture_rng, commit_checkpoint, model_digest, restore_rng
from train.phases import PhaseWindow, phase_windows, ramp_factor, total_steps
from train.runtime import Runtime

FIND_UNUSED_PARAMETERS = {name: False for name in PHASE_NAMES}
"""Per phase: whether DDP must look for trainable parameters without a gradient (none do here)."""


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; training stops before the optimiser step."""


@dataclass(frozen=True)
class StepResult:
    """One step's losses (averaged over ranks), learning rate and, if asked, detached outputs."""

    terms: Mapping[str, float]
    lr: float
    grad_norm: float
    outputs: ModelOutputs | None = None


@dataclass(frozen=True)
class RunSummary:
    """Where a run stopped and how its time went (seconds, this rank)."""

    step: int
    steps_run: int
    data_seconds: float
    step_seconds: float
    last_terms: Mapping[str, float]
    checkpoint: str | None
    parameter_digest: str
    """sha256 of the parameters (not buffers: BatchNorm statistics are rank-local between DDP forwards)."""
    stopped_by: str | None = None
    """The signal (``SIGTERM`` / ``SIGINT``) that stopped the run before its target step, after ``checkpoint``."""


# ----------------------------------------------------------------------------- model and optimiser
@dataclass(frozen=True)
class InitSources:
    """Where a new run's initial weights come from (all optional; None = ``train.seed``'s random init).

    imagenet: the depth network's ImageNet file (resnet18: torchvision's ResNet-18, loaded into every
        encoder; litemono: Lite-Mono's encoder file); imagenet_resnet: torchvision's ResNet-18 file for
        the pose and motion encoders (litemono runs); checkpoint: a trainer checkpoint or an original
        module folder whose weights replace everything (fine-tuning from released models).
    """

    imagenet: str | None = None
    imagenet_resnet: str | None = None
    checkpoint: str | None = None


def build_model(config: RunConfig, runtime: Runtime, *, init: InitSources = InitSources()) -> DynamoDepthModel:
    """The networks, initialised from ``train.seed`` (identical on every rank), then from ``init``."""
    from dynamo_depth.models.pretrained import load_imagenet_weights

    torch.manual_seed(config.train.seed)
    model = DynamoDepthModel(depth_network=config.model.depth_network, scales=config.model.scales,
                             drop_path_rate=config.model.drop_path_rate)
    resnet = init.imagenet_resnet or (init.imagenet if config.model.depth_network == "resnet18" else None)
    if init.imagenet is not None or resnet is not None:
        load_imagenet_weights(model, depth_encoder=init.imagenet, resnet=resnet)
    if init.checkpoint is not None:
        init_weights(model, init.checkpoint)
    model = model.to(runtime.device)
    if config.train.channels_last:
        model.use_channels_last()  # ResNet-based modules only, CPU and GPU
    return model


def init_weights(model: DynamoDepthModel, source: str) -> None:
    """Copy every module's weights from a trainer checkpoint or an original folder into ``model``."""
    from dynamo_depth.models.loading import load_for_inference

    loaded = load_for_inference(source, need_motion=True, depth_network=model.depth_network)
    if loaded.model.depth_network != model.depth_network:
        raise ValueError(f"--init-from {source}: holds a {loaded.model.depth_network} depth network, the run "
                         f"uses {model.depth_network}")
    model.load_state_dict(loaded.model.state_dict())


def select_trainable(model: DynamoDepthModel, *, phase: str) -> list[nn.Parameter]:
    """Turn ``requires_grad`` on for the phase's trainable parameters only; returns them."""
    trainable = model.trainable_parameters(phase=phase)
    chosen = {id(p) for p in trainable}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in chosen)
        parameter.grad = None
    return trainable


def make_optimizer(config: RunConfig, params: list[nn.Parameter], window: PhaseWindow,
                   ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.StepLR]:
    """Adam at lr * lr_scale and a StepLR decaying by decay_factor every decay_every_epochs epochs.

    torch's fused Adam: the same update as the original's per-parameter loop (float rounding apart: 1-2 ulp),
    one kernel over all parameters (the optimizer column of bench/RESULTS.md: ours against the original's).
    """
    o = config.optim
    optimizer = torch.optim.Adam(params, lr=o.lr * window.lr_scale, betas=(o.beta1, o.beta2),
                                 weight_decay=o.weight_decay, fused=True)  # one kernel: 1.7x faster on CPU
    step_size = o.decay_every_epochs * config.schedule.iterations_per_epoch
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=o.decay_factor)


def wrap_model(model: nn.Module, runtime: Runtime, *, phase: str) -> nn.Module:
    """DDP around ``model`` when distributed (call after ``select_trainable``), else the model itself."""
    if not runtime.distributed:
        return model
    device_ids = [runtime.local_rank] if runtime.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                               find_unused_parameters=FIND_UNUSED_PARAMETERS[phase])


COMPILE_BACKEND: str | Callable[..., Any] = "inductor"
"""``torch.compile``'s backend for ``train.compile`` (a name or a backend callable). ``"eager"`` keeps
dynamo's graph capture but skips inductor's code generation (minutes of C++ compiling per phase on CPU):
the tests and ``bench/train.py --compile-backend`` set it; training keeps inductor."""


def compile_module(module: nn.Module, *, config: RunConfig) -> nn.Module:
    """``torch.compile(module, backend=COMPILE_BACKEND)`` when ``train.compile`` is set, else ``module`` itself.

    Called on the module the step runs (after ``wrap_model``: compiling the DDP wrapper is PyTorch's
    supported way, its DDPOptimizer splits the graph at the gradient buckets). Only the step runs the
    compiled wrapper (forward, and its backward through AOTAutograd); checkpoints and digests keep using the
    plain model, so their keys never carry ``_orig_mod.``. Each phase calls ``forward(phase=...)`` with its
    own constant, so each phase compiles once (one graph, no graph breaks).
    """
    return torch.compile(module, backend=COMPILE_BACKEND) if config.train.compile else module


def autocast_enabled(config: RunConfig, device: torch.device) -> bool:
    """bf16 autocast: ``amp=bf16`` always, ``auto`` on GPU only, ``off`` never."""
    return config.train.amp == "bf16" or (config.train.amp == "auto" and device.type == "cuda")


# ----------------------------------------------------------------------------- one step
def _mean_over_ranks(values: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= runtime.world_size
    return values


def loss_settings(config: RunConfig) -> LossSettings:
    c = config.loss
    return LossSettings(scales=config.model.scales, min_depth=c.min_depth, max_depth=c.max_depth)


def loss_weights(config: RunConfig) -> LossWeights:
    return LossWeights(**{f: getattr(config.loss, f) for f in LossWeights.__dataclass_fields__})


def step_draws(config: RunConfig, runtime: Runtime, step: int) -> SeededDraws:
    """The losses' random draws of ``step`` on this rank: a function of (seed, rank, step), so resumes replay them."""
    return SeededDraws(seed=(config.train.seed * 1_000_003 + runtime.rank) * 1_000_033 + step)


def float_outputs(outputs: ModelOutputs) -> ModelOutputs:
    """The outputs in float32 (after a bf16 autocast forward: the losses run in fp32)."""
    return outputs.map(torch.Tensor.float)


def train_step(*, module: nn.Module, params: list[nn.Parameter], batch: StepBatch,
               optimizer: torch.optim.Optimizer, scheduler: Any, window: PhaseWindow, step: int,
               config: RunConfig, runtime: Runtime, keep_outputs: bool = False) -> StepResult:
    """Forward (bf16 autocast if enabled), losses in fp32, finiteness check on all ranks, backward, step."""
    amp = autocast_enabled(config, runtime.device)
    with torch.autocast(device_type=runtime.device.type, dtype=torch.bfloat16, enabled=amp):
        outputs = module(batch.images_aug, phase=window.name)
    outputs = float_outputs(outputs)
    names = (*TERMS, "total")
    ramp = ramp_factor(window, step, iterations_per_epoch=config.schedule.iterations_per_epoch)
    cut = outputs.cut()  # each scale's loss is backpropagated into ``cut`` as soon as it is computed
    result = compute_losses(batch.losses, cut, phase=window.name, ramp_factor=ramp,
                            weights=loss_weights(config), settings=loss_settings(config),
                            draws=step_draws(config, runtime, step), backward=True)
    values = {**result.terms, "total": result.total}
    local = torch.stack([torch.as_tensor(values.get(n, 0.0), device=runtime.device).detach().float()
                         for n in names])
    mean = _mean_over_ranks(local, runtime)  # every rank sees the same values, so all stop together
    if not bool(torch.isfinite(mean).all()):
        bad = {n: v for n, v in zip(names, mean.tolist(), strict=True) if not math.isfinite(v)}
        raise NonFiniteLossError(f"step {step} ({window.name}): loss is not finite on some rank: {bad}")
    optimizer.zero_grad(set_to_none=True)
    outputs.backward(cut)
    del cut
    max_norm = config.optim.grad_clip_norm if config.optim.grad_clip_norm is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm)
    if not bool(torch.isfinite(grad_norm)):
        raise NonFiniteLossError(f"step {step} ({window.name}): gradient norm is {float(grad_norm)}")
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # free the gradients now: the next forward's peak does not hold them
    scheduler.step()
    return StepResult(terms=dict(zip(names, mean.tolist(), strict=True)), lr=lr, grad_norm=float(grad_norm),
                      outputs=outputs.detached() if keep_outputs else None)


# ----------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class _Position:
    step: int
    loader: Mapping[str, int] | None


def _checkpoint(*, config: RunConfig, runtime: Runtime, model: nn.Module, optimizer: Any, scheduler: Any,
                phase: str, position: _Position, logger: Any = None) -> str | None:
    """Collective: gather RNG states; rank 0 writes ``run_dir/checkpoints/step-N.pt``, then the ``last.json``
    pointer (``train.checkpoint.commit_checkpoint``), then lets the logger upload its files."""
    rng = capture_rng(world_size=runtime.world_size)
    if not runtime.is_main:
        return None
    state = Checkpoint(step=position.step, phase=phase, model=model.state_dict(), optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict(), loader=dict(position.loader or {}), rng=rng,
                       config=config_to_dict(config))
    phase_ends = {w.end for w in phase_windows(config)} if config.train.keep_phase_checkpoints else set()
    url = commit_checkpoint(state, config.train.run_dir, keep=config.train.keep_checkpoints,
                            protected_steps=phase_ends)
    if logger is not None and hasattr(logger, "sync"):
        logger.sync()
    return url


def _should(every: int, step: int) -> bool:
    return every > 0 and step % every == 0


def run_training(*, config: RunConfig, runtime: Runtime, max_steps: int | None = None,
                 resume: Checkpoint | None = None, logger: Any = None, init: InitSources = InitSources(),
                 stopper: Any = None) -> RunSummary:
    """Train from step 0 (or ``resume``) to ``max_steps`` (absolute, capped by the schedule).

    ``init`` (ignored when resuming: the checkpoint holds the weights): the initial weights' sources.
    ``stopper`` (``train.stopping.StopSignals``): asked after every step (a collective) whether a rank got
    SIGTERM / SIGINT; if so, the step's checkpoint is written and the run returns (``stopped_by``).
    """
    model = build_model(config, runtime, init=InitSources() if resume is not None else init)
    position = _Position(step=0, loader=None)
    if resume is not None:
        model.load_state_dict(resume.model)
        restore_rng(resume.rng, rank=runtime.rank, world_size=runtime.world_size)
        position = _Position(step=resume.step, loader=resume.loader or None)
    else:
        _seed_runtime(config.train.seed + runtime.rank)
    stop = min(total_steps(config), max_steps if max_steps is not None else total_steps(config))
    stream = batch_stream(config, runtime, start=position.loader)
    clock = {"data": 0.0, "step": 0.0, "steps": 0, "terms": {}, "checkpoint": None, "stopped_by": None,
             "stopper": stopper}
    for window in phase_windows(config):
        if position.step >= min(window.end, stop):
            continue
        position = _run_phase(window=window, config=config, runtime=runtime, model=model, stream=stream,
                              position=position, stop=stop, resume=resume, clock=clock, logger=logger)
        if clock["stopped_by"] is not None:
            break
    return RunSummary(step=position.step, steps_run=clock["steps"], data_seconds=clock["data"],
                      step_seconds=clock["step"], last_terms=clock["terms"], checkpoint=clock["checkpoint"],
                      parameter_digest=model_digest(dict(model.named_parameters())), stopped_by=clock["stopped_by"])


def _seed_runtime(seed: int) -> None:
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _run_phase(*, window, config, runtime, model, stream, position, stop, resume, clock, logger) -> _Position:
    """Steps of one phase from ``position`` to min(phase end, stop); checkpoints as configured."""
    params = select_trainable(model, phase=window.name)
    optimizer, scheduler = make_optimizer(config, params, window)
    if resume is not None and resume.phase == window.name and resume.step == position.step:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
    module = compile_module(wrap_model(model, runtime, phase=window.name), config=config)
    end = min(window.end, stop)
    while position.step < end:
        tick = time.perf_counter()
        raw, loader_state = next(stream)
        batch = prepare_batch(raw, height=config.data.height, width=config.data.width, scales=config.model.scales,
                              device=runtime.device)
        fetched = time.perf_counter()
        show = logger is not None and _should(config.train.image_every, position.step + 1)
        result = train_step(module=module, params=params, batch=batch, optimizer=optimizer, scheduler=scheduler,
                            window=window, step=position.step, config=config, runtime=runtime, keep_outputs=show)
        done = time.perf_counter()
        clock["data"] += fetched - tick
        clock["step"] += done - tick
        clock["steps"] += 1
        clock["terms"] = result.terms
        position = _Position(step=position.step + 1, loader=loader_state)
        if logger is not None:
            logger.log_step(step=position.step, phase=window.name, result=result, batch=batch if show else None,
                            data_seconds=fetched - tick, step_seconds=done - tick)
        stopping = clock["stopper"] is not None and clock["stopper"].agree() and position.step < stop
        phase_end = config.train.keep_phase_checkpoints and position.step == window.end
        if stopping or phase_end or _should(config.train.checkpoint_every, position.step) or position.step == stop:
            clock["checkpoint"] = _checkpoint(config=config, runtime=runtime, model=model, optimizer=optimizer,
                                              scheduler=scheduler, phase=window.name, position=position,
                                              logger=logger)
        if stopping:
            clock["stopper"].wait_for_checkpoint()
            clock["stopper"].checkpoint_written()
            clock["stopped_by"] = clock["stopper"].received
            return position
    return position


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(enabled)`` for the body, restoring the previous setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    if previous == enabled:  # the call imports torch._inductor (seconds): only make it when needed
        yield
        return
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
