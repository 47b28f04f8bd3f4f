"""Dynamo-Depth networks: depth, pose, complete flow and motion mask, and the 4-phase wrapper.

``DynamoDepthModel.forward(images, phase=...)`` takes a triplet batch images (B, 3, 3, H, W)
(frames t-1, t, t+1; RGB in [0, 1]; H, W multiples of 32) and returns a dict of tensors:

=============================  ===========================  ==========================================
key                            shape                        meaning
=============================  ===========================  ==========================================
``disp_{s}``, s = 0..3          (B, 1, H/2^s, W/2^s)          sigmoid disparity of frame t (``disp_to_depth``)
``source_from_target_prev``    (B, 4, 4)                    camera t -> camera t-1 (metres)
``source_from_target_next``    (B, 4, 4)                    camera t -> camera t+1
``pose_vector_prev/next``      (B, 6)                       raw later_from_earlier [axis-angle, t]
``ego_motion``                 (B, 6)                       mean of the two pose vectors (per-frame)
``flow_{s}``                   (B, 3, H/2^s, W/2^s)          complete flow t -> t+1, metres, camera t
``mask_logits_{s}``/``mask_{s}`` (B, 1, H/2^s, W/2^s)        independent-motion logits / probability
=============================  ===========================  ==========================================

Which sub-networks run and which learn is data (``PHASES``). Frozen sub-networks run under
``torch.no_grad()`` and in eval mode (BatchNorm statistics untouched). Build the optimiser from
``trainable_parameters(phase=...)``: every one of those parameters gets a gradient from
``compute_losses(...)["total"]`` in its phase (tested), so DDP over those alone needs no
``find_unused_parameters``; parameters outside that list get none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dynamo_depth.models.depth import SCALES, DepthNetwork, disp_to_depth
from dynamo_depth.models.motion import MotionNetwork
from dynamo_depth.models.pose import PoseNetwork, predict_source_from_target
from dynamo_depth.models.registry import DEPTH_NETWORKS, build_depth_network
from dynamo_depth.models.resnet import ResNet18Encoder, load_torchvision_weights

SUBNETWORKS = ("depth", "pose", "flow", "mask")

__all__ = [
    "DEPTH_NETWORKS", "PHASES", "SCALES", "SUBNETWORKS", "DepthNetwork", "DynamoDepthModel", "MotionNetwork",
    "PhaseSpec", "PoseNetwork", "ResNet18Encoder", "build_depth_network", "disp_to_depth",
    "load_torchvision_weights", "phase_spec",
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
def _frozen_unless(trained: bool, modules: Sequence[nn.Module]) -> Iterator[None]:
    """Run the body with grad and unchanged modes if ``trained``; else in eval mode under no_grad."""
    if trained:
        yield
        return
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


class DynamoDepthModel(nn.Module):
    """Depth, pose and motion (complete flow + mask) networks; see the module docstring for outputs."""

    def __init__(self, *, depth_network: str = "resnet18", scales: Sequence[int] = SCALES) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.depth = build_depth_network(depth_network, scales=self.scales)
        self.pose = PoseNetwork()
        self.motion = MotionNetwork(scales=self.scales)

    def _modules_of(self, name: str) -> list[nn.Module]:
        return {
            "depth": [self.depth], "pose": [self.pose],
            "flow": [self.motion.flow_decoder], "mask": [self.motion.mask_decoder],
        }[name]

    def trainable_parameters(self, *, phase: str) -> list[nn.Parameter]:
        """Parameters that learn in ``phase`` (the motion encoder learns when flow or mask does)."""
        spec = phase_spec(phase)
        params = [p for name in spec.train for m in self._modules_of(name) for p in m.parameters()]
        if spec.train & {"flow", "mask"}:
            params += list(self.motion.encoder.parameters())
        return params

    def forward(self, images: torch.Tensor, *, phase: str) -> dict[str, torch.Tensor]:
        spec = phase_spec(phase)
        if images.dim() != 5 or images.shape[1:3] != (3, 3):
            raise ValueError(f"images must be (B, 3 frames, 3, H, W), got {tuple(images.shape)}")
        out: dict[str, torch.Tensor] = {}
        with _frozen_unless("depth" in spec.train, [self.depth]):
            for scale, disp in self.depth(images[:, 1]).items():
                out[f"disp_{scale}"] = disp
        with _frozen_unless("pose" in spec.train, [self.pose]):
            out.update(predict_source_from_target(self.pose, images))
        out["ego_motion"] = 0.5 * (out["pose_vector_prev"] + out["pose_vector_next"])
        if spec.run & {"flow", "mask"}:
            self._run_motion(images, out, spec)
        return out

    def _run_motion(self, images: torch.Tensor, out: dict[str, torch.Tensor], spec: PhaseSpec) -> None:
        ego = out["ego_motion"].detach()
        with _frozen_unless(bool(spec.train & {"flow", "mask"}), [self.motion.encoder]):
            features = self.motion.encode(images)
        if "flow" in spec.run:
            with _frozen_unless("flow" in spec.train, [self.motion.flow_decoder]):
                for scale, flow in self.motion.complete_flow(features, ego).items():
                    out[f"flow_{scale}"] = flow
        if "mask" in spec.run:
            with _frozen_unless("mask" in spec.train, [self.motion.mask_decoder]):
                for scale, logits in self.motion.mask_logits(features, ego).items():
                    out[f"mask_logits_{scale}"] = logits
                    out[f"mask_{scale}"] = torch.sigmoid(logits)
