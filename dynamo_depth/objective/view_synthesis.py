"""The per-phase warps of Dynamo-Depth (the original's ``generate_images_pred``), for every scale and source.

For scale s and source frame f in (-1, 1), with H x W the full size:
  disp_s upsampled to H x W (bilinear, align_corners=False) -> disp_scaled, depth (``disp_to_depth``);
  P = depth * inv_K|0 [u, v, 1]^T (B, 3, H*W), metres; T = cam_T_cam[f] (target camera -> camera f);
  C_f = upsample(sign(f) * complete_flow[s]) * ts[f] (B, 3, H, W), metres (complete flow towards f);
  ego_flow = T P - P (B, 3, H*W); residual_flow = downsample to the scale of C_f - ego_flow.
  rigid  (disp_init):              sample = project(T P)
  flow   (motion_init):            sample = project(P + C_f)                     (no T)
  masked (mask_init, fine_tune):   independ_flow = (C_f - ego_flow) * m_f,  sample = project(T (P + independ_flow))
with m_f the motion mask sigmoid(logits[s]) upsampled to H x W, ``project`` = K|0 then the
``grid_sample`` normalisation of ``warping.project_to_grid``; sample_ego = project(T P) and
sample_complete = project(P + C_f) are detached; color = grid_sample(color[f], sample) (border).
Every scale warps with K|0 / inv_K|0 (the full-size images).

Difference from the original (stored tensors only, the losses are unchanged): in motion_init the
original's stored ``cam_points`` holds P + C_1 (an in-place add); ours is always the back-projection P.
Tensors a phase does not compute are None (the original stores zeros for independ_flow /
residual_flow in disp_init and ones for motion_mask_r in disp_init and motion_init).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dynamo_depth.models.depth import disp_to_depth
from dynamo_depth.models.outputs import ModelOutputs
from dynamo_depth.objective.inputs import SOURCE_FRAMES, LossBatch, LossSettings
from dynamo_depth.objective.warping import backproject, project_to_grid, sample_image

WARP_MODELS: dict[str, str] = {"disp_init": "rigid", "motion_init": "flow", "mask_init": "masked", "fine_tune": "masked"}


@dataclass(frozen=True)
class FrameWarp:
    """One source frame's warp at one scale (full size H x W unless stated).

    sample: (B, H, W, 2) grid (x, y) in [-1, 1] over the source image (align_corners=True);
    color: (B, 3, H, W) the source frame resampled there; ego_flow: (B, 3, H*W) metres;
    independ_flow: (B, 3, H, W) metres (None in disp_init; C_f - ego_flow unmasked in motion_init);
    residual_flow: (B, 3, h, w) at the scale's size (None in disp_init);
    motion_mask_r: (B, 1, H, W) upsampled motion mask (None before mask_init);
    sample_ego / sample_complete: detached (B, H, W, 2) (sample_complete None in disp_init).
    """

    sample: torch.Tensor
    color: torch.Tensor
    ego_flow: torch.Tensor
    independ_flow: torch.Tensor | None
    residual_flow: torch.Tensor | None
    motion_mask_r: torch.Tensor | None
    sample_ego: torch.Tensor
    sample_complete: torch.Tensor | None


@dataclass(frozen=True)
class ScaleWarp:
    """One scale: disp_scaled (B, 1, H, W) 1/m, depth (B, 1, H, W) m, cam_points (B, 4, H*W) homogeneous
    metres (row 3 = 1), and frames[f] for f = -1, 1."""

    disp_scaled: torch.Tensor
    depth: torch.Tensor
    cam_points: torch.Tensor
    frames: Mapping[int, FrameWarp]


@dataclass(frozen=True)
class Warps:
    """scales[s]: the ``ScaleWarp`` of every loss scale."""

    scales: Mapping[int, ScaleWarp]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False, no antialias) of (B, C, h, w) to ``size``; identity at equal size."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def warp_model(phase: str) -> str:
    """The warp model of ``phase`` (rigid / flow / masked); ValueError naming the allowed phases."""
    if phase not in WARP_MODELS:
        raise ValueError(f"unknown phase {phase!r}; allowed: {list(WARP_MODELS)}")
    return WARP_MODELS[phase]


def generate_warps(batch: LossBatch, outputs: ModelOutputs, *, phase: str, settings: LossSettings) -> Warps:
    """The warps of every scale in ``settings.scales`` and source f = -1, 1 (module docstring)."""
    model = warp_model(phase)
    return Warps(scales={s: scale_warp(batch, outputs, scale=s, model=model, settings=settings)
                         for s in settings.scales})


def scale_warp(batch: LossBatch, outputs: ModelOutputs, *, scale: int, model: str, settings: LossSettings) -> ScaleWarp:
    """The warps of both sources at ``scale`` with warp ``model`` (``warp_model(phase)``: rigid / flow / masked)."""
    size = batch.size
    disp_scaled, depth = disp_to_depth(resize(outputs.disp[scale], size),
                                       min_depth=settings.min_depth, max_depth=settings.max_depth)
    points = backproject(depth, batch.inv_K[0])
    frames = {f: _frame_warp(batch, outputs, points, scale, f, model) for f in SOURCE_FRAMES}
    ones = torch.ones_like(points[:, :1])
    return ScaleWarp(disp_scaled=disp_scaled, depth=depth, cam_points=torch.cat([points, ones], dim=1), frames=frames)


def _frame_warp(
    batch: LossBatch, outputs: ModelOutputs, points: torch.Tensor, scale: int, frame: int, model: str
) -> FrameWarp:
    """Warp of source ``frame`` at ``scale``; points (B, 3, H*W) the back-projected target pixels."""
    (height, width), K, T = batch.size, batch.K[0], outputs.cam_T_cam[frame]
    bsz, n = points.shape[0], height * width
    sample_ego = project_to_grid(points, K, height=height, width=width, transform=T)
    ego_flow = _ego_flow(points, T)
    independ = residual = mask_r = sample_complete = None
    sample = sample_ego
    if model != "rigid":
        flow = outputs.complete_flow[scale] if frame > 0 else -outputs.complete_flow[scale]
        complete = resize(flow, (height, width)) * batch.ts[frame].to(flow.dtype).view(-1, 1, 1, 1)
        complete_flat = complete.reshape(bsz, 3, n)
        rel = complete - ego_flow.reshape(bsz, 3, height, width)
        residual = resize(rel, tuple(flow.shape[2:]))
        independ = rel
        sample_complete = project_to_grid(points + complete_flat, K, height=height, width=width)
        if model == "flow":
            sample = sample_complete
        else:
            mask_r = resize(outputs.motion_mask(scale), (height, width))
            independ = rel * mask_r
            sample = project_to_grid(points + independ.reshape(bsz, 3, n), K, height=height, width=width, transform=T)
        sample_complete = sample_complete.detach()
    color = sample_image(batch.color[frame], sample)
    return FrameWarp(sample=sample, color=color, ego_flow=ego_flow, independ_flow=independ, residual_flow=residual,
                     motion_mask_r=mask_r, sample_ego=sample_ego.detach(), sample_complete=sample_complete)


def _ego_flow(points: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """(T P - P) (B, 3, N) for points P (B, 3, N) and T (B, 4, 4), metres (the homogeneous product's first rows)."""
    moved = T[:, :3, :3] @ points + T[:, :3, 3:4]
    return moved - points
