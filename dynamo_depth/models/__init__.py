"""Dynamo-Depth networks as the original builds them, and the 4-phase forward.

``DynamoDepthModel`` holds the original's seven modules under the original's names (``depth_enc``,
``depth_dec``, ``pose_enc``, ``pose_dec``, ``motion_enc``, ``motion_dec``, ``motion_mask``), each with
the original's state-dict keys, so an original checkpoint folder (one ``<name>.pth`` per module) maps
onto it one to one (``dynamo_depth.models.original``).

``forward(images_aug, phase=...)`` takes the (colour-augmented) triplet (B, 3 frames [t-1, t, t+1], 3,
H, W) in [0, 1] and returns ``ModelOutputs`` (``dynamo_depth.models.outputs``):
- depth: ``depth_dec(depth_enc(image_0))`` -> disp[s];
- pose: for f in (-1, +1) ``pose_dec(pose_enc(cat(image_f, image_0)))`` -> axisangle[f], translation[f],
  cam_T_cam[f] = transformation(axisangle, translation, invert=True);
- motion (phases with complete flow / mask): one ``motion_enc`` call on cat(image_-1, image_0, image_+1);
  ``motion_dec`` / ``motion_mask`` read [that raw input, its 5 features] and the detached ego-motion
  (together, ``motion.decode_together``, when both run in the same grad mode).

As in the original, every module runs in the mode the caller set (train mode: BatchNorm on the
batch's statistics, running statistics updated) whether or not it learns in the phase; modules that
do not learn run under ``torch.no_grad()``. Which run and which learn is data (``PHASES``).

Deliberate difference (skipped unused work): the original also runs the depth network on frames -1
and +1 and discards the result. We do not; the outputs and losses are unchanged, but the depth
network's BatchNorm running statistics (used in eval mode only) see one call per step instead of
three, so a model trained here is not bit-identical in eval mode to one trained by the original.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dynamo_depth.models.depth import SCALES, disp_to_depth
from dynamo_depth.models.motion import build_motion_networks, decode_together, ego_motion
from dynamo_depth.models.outputs import ModelOutputs
from dynamo_depth.models.pose import build_pose_network, transformation_from_parameters
from dynamo_depth.models.registry import DEPTH_NETWORKS, build_depth_network

SUBNETWORKS = ("depth", "pose", "flow", "mask")
MODULE_NAMES = ("depth_enc", "depth_dec", "pose_enc", "pose_dec", "motion_enc", "motion_dec", "motion_mask")
"""The original's module names, in its order (checkpoint files ``<name>.pth``)."""
SUBNETWORK_MODULES: dict[str, tuple[str, ...]] = {
    "depth": ("depth_enc", "depth_dec"), "pose": ("pose_enc", "pose_dec"),
    "flow": ("motion_enc", "motion_dec"), "mask": ("motion_mask",),
}
"""The original's trained groups: Depth, Pose, CmpFlow (motion encoder + flow decoder), MotMask."""

__all__ = [
    "DEPTH_NETWORKS", "MODULE_NAMES", "PHASES", "SCALES", "SUBNETWORKS", "DynamoDepthModel", "ModelOutputs",
    "PhaseSpec", "build_depth_network", "disp_to_depth", "phase_spec",
]


@dataclass(frozen=True)
class PhaseSpec:
    """Sub-networks that run (``run``) and that learn (``train``, a subset of ``run``) in a phase."""

    name: str
    run: frozenset[str]
    train: frozenset[str]


PHASES: dict[str, PhaseSpec] = {
    spec.name: spec
    for spec in (
        PhaseSpec("disp_init", frozenset({"depth", "pose"}), frozenset({"depth", "pose"})),
        PhaseSpec("motion_init", frozenset({"depth", "pose", "flow"}), frozenset({"flow"})),
        PhaseSpec("mask_init", frozenset(SUBNETWORKS), frozenset({"pose", "flow", "mask"})),
        PhaseSpec("fine_tune", frozenset(SUBNETWORKS), frozenset(SUBNETWORKS)),
    )
}


def phase_spec(phase: str) -> PhaseSpec:
    """The ``PhaseSpec`` of ``phase``; ValueError naming the allowed phases otherwise."""
    try:
        return PHASES[phase]
    except KeyError:
        raise ValueError(f"unknown phase {phase!r}; allowed: {list(PHASES)}") from None


@contextlib.contextmanager
def _grad_if(enabled: bool) -> Iterator[None]:
    if enabled:
        yield
    else:
        with torch.no_grad():
            yield


class DynamoDepthModel(nn.Module):
    """The seven original modules; see the module docstring."""

    def __init__(self, *, depth_network: str = "resnet18", scales: Sequence[int] = SCALES,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.depth_network = depth_network
        self.scales = tuple(scales)
        self.depth_enc, self.depth_dec = build_depth_network(depth_network, scales=self.scales,
                                                             drop_path_rate=drop_path_rate)
        self.pose_enc, self.pose_dec = build_pose_network()
        self.motion_enc, self.motion_dec, self.motion_mask = build_motion_networks(scales=self.scales)

    def subnetwork_modules(self, name: str) -> list[nn.Module]:
        """The modules of sub-network ``name`` (one of ``SUBNETWORKS``)."""
        return [getattr(self, m) for m in SUBNETWORK_MODULES[name]]

    def trainable_parameters(self, *, phase: str) -> list[nn.Parameter]:
        """Parameters that learn in ``phase``, in module order, each once.

        Parameters a module declares as never used in its forward (``never_used_parameters()``, e.g.
        Lite-Mono's unapplied LayerNorms) are left out: they get no gradient, so DDP needs no
        ``find_unused_parameters``.
        """
        spec = phase_spec(phase)
        seen: set[int] = {id(p) for m in self.modules() if hasattr(m, "never_used_parameters")
                          for p in m.never_used_parameters()}
        params = []
        for name in SUBNETWORKS:
            if name in spec.train:
                for module in self.subnetwork_modules(name):
                    for p in module.parameters():
                        if id(p) not in seen:
                            seen.add(id(p))
                            params.append(p)
        return params

    def channels_last_modules(self) -> list[str]:
        """Names of the modules that run faster in channels_last on CPU and GPU: all of them.

        Lite-Mono's blocks apply their LayerNorm / MLP to channels-last pixels, a view of a channels_last
        map (its depth network's forward + backward: 0.15-0.23 s less per step on CPU, bench/RESULTS.md).
        """
        return ["depth_enc", "depth_dec", "pose_enc", "pose_dec", "motion_enc", "motion_dec", "motion_mask"]

    def use_channels_last(self) -> DynamoDepthModel:
        """Store the 4-D weights of ``channels_last_modules()`` channels_last (in place); returns self.

        Same math: only the memory layout changes, so outputs agree with the channels-first model to float
        rounding (convolution kernels sum in another order; tests/test_parity_networks.py runs both).
        """
        for name in self.channels_last_modules():
            getattr(self, name).to(memory_format=torch.channels_last)
        for decoder in (self.motion_dec, self.motion_mask):
            decoder.contiguous_folded_weights()  # read as matrices only: their gradients' strides (DDP)
        return self

    def predict_disparity(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        """image (B, 3, H, W) in [0, 1] -> {scale: sigmoid disparity (B, 1, H/2^s, W/2^s)}."""
        return self.depth_dec(self.depth_enc(image))

    def forward(self, images: torch.Tensor, *, phase: str) -> ModelOutputs:
        spec = phase_spec(phase)
        if images.dim() != 5 or images.shape[1:3] != (3, 3):
            raise ValueError(f"images must be (B, 3 frames, 3, H, W), got {tuple(images.shape)}")
        frames = {-1: images[:, 0], 0: images[:, 1], 1: images[:, 2]}
        with _grad_if("depth" in spec.train):
            disp = self.predict_disparity(frames[0])
        axisangle, translation, cam_T_cam = {}, {}, {}
        with _grad_if("pose" in spec.train):
            for f in (-1, 1):
                features = self.pose_enc(torch.cat([frames[f], frames[0]], dim=1))
                axisangle[f], translation[f] = self.pose_dec(features[-1])
                cam_T_cam[f] = transformation_from_parameters(axisangle[f], translation[f], invert=True)
        decoded: dict[str, dict[int, torch.Tensor]] = {"flow": {}, "mask": {}}
        if spec.run & {"flow", "mask"}:
            ego = ego_motion(translation=translation, axisangle=axisangle)
            raw = torch.cat([frames[-1], frames[0], frames[1]], dim=1)
            with _grad_if(bool(spec.train & {"flow", "mask"})):
                features = [raw, *self.motion_enc(raw)]
            decoders = {"flow": self.motion_dec, "mask": self.motion_mask}
            for learns in (True, False):  # decoders in the same grad mode share one convolution per level
                names = [n for n in ("flow", "mask") if n in spec.run and (n in spec.train) == learns]
                if names:
                    with _grad_if(learns):
                        outs = decode_together([decoders[n] for n in names], features, ego)
                    decoded.update(zip(names, outs, strict=True))
        return ModelOutputs(disp=disp, axisangle=axisangle, translation=translation, cam_T_cam=cam_T_cam,
                            complete_flow=decoded["flow"], motion_logits=decoded["mask"])
