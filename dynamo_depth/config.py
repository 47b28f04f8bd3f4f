"""Frozen dataclass configuration of a training run, YAML presets and dotted overrides.

A run is described by one ``RunConfig`` (sections ``data``, ``model``, ``loss``, ``optim``,
``schedule``, ``train``). ``load_config(path, overrides=...)`` reads a YAML preset (``configs/*.yaml``),
applies ``key=value`` overrides with dotted keys (``optim.lr=2e-4``, ``schedule.fine_tune.epochs=2``)
and returns the frozen config; fields missing from the YAML keep the defaults below (the paper's
settings). Unknown keys, wrong types and bad values raise ``ConfigError`` (a ``ValueError``) naming
the file, the dotted key and the allowed keys. ``save_config`` writes the resolved config as
canonical YAML (sorted keys) that ``load_config`` reads back to an equal object.

Schedule (paper): four phases in order, each ``epochs`` long, an epoch being
``schedule.iterations_per_epoch`` optimiser steps (8000 in the paper):
disp_init 1 (depth + pose), motion_init 1 (complete flow alone), mask_init 5 (pose + flow + mask),
fine_tune 20 (everything, at ``lr_scale`` 0.5). Adam, lr 1e-4, multiplied by ``optim.decay_factor``
every ``optim.decay_every_epochs`` epochs counted from the start of each phase.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PHASE_NAMES = ("disp_init", "motion_init", "mask_init", "fine_tune")
DATASETS = ("kitti", "nuscenes", "waymo", "video")
AMP_MODES = ("auto", "bf16", "off")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the source and the key."""


@dataclass(frozen=True)
class DataConfig:
    """Where the shards are and how batches are made.

    url: manifest.json or shard folder, local path or ``s3://bucket/prefix``.
    height, width: training image size in pixels (multiples of 32); batches whose stored images
        differ are resized (bilinear, antialiased) and their intrinsics scaled to match.
    batch_size: samples per rank and step; num_workers: DataLoader worker processes per rank.
    include_edges: train on edge samples too (split-file builds flag samples whose missing neighbour is
        the target frame itself); left out by default.
    """

    url: str = ""
    dataset: str = "kitti"
    height: int = 192
    width: int = 640
    batch_size: int = 12
    num_workers: int = 2
    augment: bool = True
    shuffle_buffer: int = 256
    cache_dir: str | None = None
    include_edges: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Network choices: the depth backbone (``dynamo_depth.models.DEPTH_NETWORKS``) and output scales."""

    depth_network: str = "resnet18"
    scales: tuple[int, ...] = (0, 1, 2, 3)
    drop_path_rate: float = 0.4
    """Lite-Mono stochastic depth: the last block's drop rate, rising linearly from 0 over the blocks as
    the original hard-codes (0.4); 0 gives a deterministic train-mode forward. In [0, 1); networks
    without stochastic depth (``resnet18``) ignore it."""


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms in ``total`` (``dynamo_depth.objective.losses``; the last four are also ramped).

    Defined here, torch-free, so the config and the losses share one set of defaults.
    """

    photometric: float = 1.0
    smoothness: float = 1e-3
    ground: float = 0.1
    flow_smoothness: float = 1e-3
    consistency: float = 5.0
    mask_sparsity: float = 0.04
    mask_smoothness: float = 0.1


@dataclass(frozen=True)
class LossConfig(LossWeights):
    """The loss weights (``LossWeights``) and the predicted depth range in metres."""

    min_depth: float = 0.1
    max_depth: float = 100.0


@dataclass(frozen=True)
class OptimConfig:
    """Adam with a step decay: lr * phase.lr_scale * decay_factor ** (epoch_in_phase // decay_every_epochs)."""

    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    decay_every_epochs: int = 10
    decay_factor: float = 0.5
    grad_clip_norm: float | None = None


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase: its length in epochs and its learning-rate multiplier."""

    epochs: int = 1
    lr_scale: float = 1.0


@dataclass(frozen=True)
class ScheduleConfig:
    """The four phases (run in ``PHASE_NAMES`` order; 0 epochs skips a phase) and the epoch length."""

    iterations_per_epoch: int = 8000
    disp_init: PhaseConfig = PhaseConfig(epochs=1)
    motion_init: PhaseConfig = PhaseConfig(epochs=1)
    mask_init: PhaseConfig = PhaseConfig(epochs=5)
    fine_tune: PhaseConfig = PhaseConfig(epochs=20, lr_scale=0.5)


@dataclass(frozen=True)
class TrainConfig:
    """Run control.

    run_dir: checkpoints, TensorBoard logs and the resolved ``config.yaml`` go here.
    seed: model init and data order; rank r seeds its runtime RNGs with ``seed + r``.
    log_every / image_every / checkpoint_every: in steps (rank 0 only; 0 disables).
    threads: torch CPU threads per process (0 keeps torch's default).
    deterministic: ``torch.use_deterministic_algorithms(True)`` (bitwise-reproducible CPU runs).
    amp: ``auto`` = bf16 autocast on GPU, fp32 on CPU; ``bf16`` forces autocast; ``off`` never.
    channels_last: every network's weights in channels_last memory format, on CPU and GPU
        (``DynamoDepthModel.use_channels_last``). Same math.
    compile: run the forward through ``torch.compile`` (inductor; the first step of each phase compiles,
        seconds to minutes). Checkpoints still hold the plain model's keys.
    progress: a tqdm progress bar on rank 0.
    keep_checkpoints: step checkpoints kept in ``run_dir/checkpoints`` (local or object storage): the last K,
        the one ``last.json`` names among them; 0 keeps every one.
    keep_phase_checkpoints: also write a checkpoint at the last step of every phase and keep those apart
        (never deleted, not counted in ``keep_checkpoints``).
    """

    run_dir: str = "runs/default"
    seed: int = 0
    log_every: int = 50
    image_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    keep_phase_checkpoints: bool = False
    threads: int = 0
    deterministic: bool = False
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    progress: bool = True


@dataclass(frozen=True)
class RunConfig:
    """A whole training run (see the module docstring)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def phase(self, name: str) -> PhaseConfig:
        """The ``PhaseConfig`` of phase ``name``."""
        if name not in PHASE_NAMES:
            raise ConfigError(f"unknown phase {name!r}; allowed: {list(PHASE_NAMES)}")
        return getattr(self.schedule, name)


# ----------------------------------------------------------------------------- conversion
def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """``value`` converted to the type ``hint``; ConfigError naming ``source`` and the dotted ``key``."""
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: expected {expected}, got {value!r}")

    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise fail(f"a mapping of {hint.__name__} fields")
        return _build(hint, value, key, source)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, source)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise fail("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail("a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise ConfigError(f"{source}: {key}: unsupported field type {hint!r}")


def _build(cls: type, values: Mapping[str, Any], prefix: str, source: str) -> Any:
    """An instance of dataclass ``cls`` from ``values`` (missing fields keep their defaults)."""
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    dotted = f"{prefix}." if prefix else ""
    unknown = sorted(str(k) for k in set(values) - set(allowed))
    if unknown:
        raise ConfigError(f"{source}: unknown key {dotted}{unknown[0]}; allowed keys"
                          f"{' in ' + prefix if prefix else ''}: {allowed}")
    kwargs = {name: _coerce(v, hints[name], f"{dotted}{name}", source) for name, v in values.items()}
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) of a config dataclass."""
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(config))


def config_from_dict(values: Mapping[str, Any], *, source: str = "config") -> RunConfig:
    """A validated ``RunConfig`` from a nested mapping; errors are prefixed with ``source``."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(values).__name__}")
    return _validate(_build(RunConfig, values, "", source), source)


# ----------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[tuple[str, ...], str]:
    """``"optim.lr=2e-4"`` -> (("optim", "lr"), "2e-4"): the dotted key's parts and the raw value text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r}: expected key=value with a dotted key (e.g. optim.lr=2e-4)")
    return tuple(key.strip().split(".")), raw


def _field_type(path: tuple[str, ...], text: str) -> Any:
    """The type hint of the field at ``path``; ConfigError naming the first unknown part."""
    cls: Any = RunConfig
    for depth, name in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"override {text!r}: {'.'.join(path[:depth])} is a value, not a section")
        allowed = [f.name for f in dataclasses.fields(cls)]
        if name not in allowed:
            where = ".".join(path[: depth + 1])
            raise ConfigError(f"override {text!r}: unknown key {where}; allowed keys: {allowed}")
        cls = typing.get_type_hints(cls)[name]
    return cls


def _override_value(raw: str, hint: Any, text: str) -> Any:
    """The override's value: raw text for string fields (``null`` -> None if optional), else YAML."""
    if hint is str or hint == (str | None):
        return None if hint is not str and raw.strip() in ("null", "~", "") else raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse the value: {exc}") from exc


def apply_overrides(values: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of the nested mapping ``values`` with each ``key=value`` override set."""
    out = _deep_copy(values)
    for text in overrides:
        path, raw = parse_override(text)
        value = _override_value(raw, _field_type(path, text), text)
        node = out
        for name in path[:-1]:
            child = node.get(name)
            node[name] = child = dict(child) if isinstance(child, Mapping) else {}
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in values.items()}


# ----------------------------------------------------------------------------- validation
def _validate(config: RunConfig, source: str) -> RunConfig:
    """Value checks that types alone do not catch; ConfigError naming the key."""
    def fail(key: str, reason: str) -> None:
        raise ConfigError(f"{source}: {key}: {reason}")

    d, o, s, t = config.data, config.optim, config.schedule, config.train
    if d.dataset not in DATASETS:
        fail("data.dataset", f"{d.dataset!r} is not one of {list(DATASETS)}")
    for key, size in (("data.height", d.height), ("data.width", d.width)):
        if size < 32 or size % 32:
            fail(key, f"{size} must be a positive multiple of 32")
    for key, value in (("data.batch_size", d.batch_size), ("schedule.iterations_per_epoch", s.iterations_per_epoch),
                       ("optim.decay_every_epochs", o.decay_every_epochs)):
        if value < 1:
            fail(key, f"{value} must be >= 1")
    if d.num_workers < 0:
        fail("data.num_workers", f"{d.num_workers} must be >= 0")
    if not o.lr > 0 or not 0 < o.decay_factor <= 1:
        fail("optim", f"lr {o.lr} must be > 0 and decay_factor {o.decay_factor} in (0, 1]")
    for name in PHASE_NAMES:
        phase = getattr(s, name)
        if phase.epochs < 0 or not phase.lr_scale > 0:
            fail(f"schedule.{name}", f"epochs {phase.epochs} must be >= 0 and lr_scale {phase.lr_scale} > 0")
    if sum(getattr(s, n).epochs for n in PHASE_NAMES) == 0:
        fail("schedule", "every phase has 0 epochs; nothing to train")
    if not config.model.scales or sorted(set(config.model.scales)) != list(config.model.scales) or \
            config.model.scales[0] != 0:
        fail("model.scales", f"{config.model.scales} must be increasing, distinct and start at 0")
    if not 0.0 <= config.model.drop_path_rate < 1.0:
        fail("model.drop_path_rate", f"{config.model.drop_path_rate} must be >= 0 and < 1")
    if t.amp not in AMP_MODES:
        fail("train.amp", f"{t.amp!r} is not one of {list(AMP_MODES)}")
    if min(t.log_every, t.image_every, t.checkpoint_every, t.threads, t.keep_checkpoints) < 0:
        fail("train", "log_every, image_every, checkpoint_every, threads and keep_checkpoints must be >= 0")
    if not 0 < config.loss.min_depth < config.loss.max_depth:
        fail("loss", f"need 0 < min_depth ({config.loss.min_depth}) < max_depth ({config.loss.max_depth})")
    return config


# ----------------------------------------------------------------------------- files
def load_config(path: str | Path | None, *, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML preset (``None``: the defaults), apply dotted ``overrides``, validate."""
    values: Any = {}
    source = "defaults" if path is None else str(path)
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(values, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    overrides = list(overrides)
    if overrides:
        source += " + overrides"
    return config_from_dict(apply_overrides(values, overrides), source=source)


def dump_config(config: RunConfig) -> str:
    """Canonical YAML text (sorted keys, block style) of a config."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=True, default_flow_style=False)


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write ``dump_config(config)`` to ``path`` atomically (``*.tmp`` + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_config(config), encoding="utf-8")
    tmp.replace(path)


def config_differences(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted keys whose values differ between two configs (sorted)."""
    def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
        return out
    fa, fb = flat(config_to_dict(a)), flat(config_to_dict(b))
    return sorted(k for k in fa if fa[k] != fb.get(k))
