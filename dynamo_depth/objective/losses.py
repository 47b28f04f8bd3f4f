"""Dynamo-Depth training losses, computing what the original computes (proven on the parity fixtures).

Per scale s (the scale's size h x w = H/2^s x W/2^s, full size H x W), sources f = -1, 1, with the
warps of ``view_synthesis.scale_warp`` (every warp is at full size):
  photometric  (p_photo)        mean over pixels of the per-pixel minimum over the sources of
      e(pred, target) = 0.85 * mean_c clamp((1 - SSIM) / 2, 0, 1) + 0.15 * mean_c |pred - target|
      (SSIM from 3x3 means after reflection padding by 1, C1 = 0.01^2, C2 = 0.03^2), target color[0]
      at full size; in disp_init the minimum also runs over the identity errors e(color[f], target)
      plus 1e-5 * N(0, 1) noise (automasking). NOT divided by 2^s (monodepth2 style).
  smoothness   (d_smooth)       S(disp_s / (mean_hw disp_s + 1e-7), I_s) / 2^s
  flow_smoothness (c_smooth)    sum_f S(sign(f) * complete_flow_s, I_s) / 2^s / 2
  mask_smoothness (m_smooth)    sum_f S(mask_s, I_s) / 2^s / 2
      with S(v, I) = mean |d_x v| exp(-mean_c |d_x I|) + mean |d_y v| exp(-mean_c |d_y I|) and
      I_s = the target pyramid level s.
  consistency  (c_consistency)  sum_f mean((disp_s > 0.03) * (1 - mask_s).detach() * |residual_flow_f|) / 2^s / 2
  mask_sparsity (m_sparsity)    sum_f BCE_with_logits(logits_s, 0) over the static pixels / 2^s / 2, where
      static = d < mean(d) over the batch, d = squared distance of sample_ego and sample_complete
      bilinearly resized to h x w; 0 for a source unless every batch item has a static pixel.
  ground       (d_ground)       ``ground_plane`` (fine_tune only).
Which terms a phase computes: ``PHASE_TERMS``. total = mean over scales of sum_terms coef * value,
coef = weight (times ``ramp_factor`` for ``RAMPED_TERMS``); ``terms`` = sum over scales of the
unweighted per-scale values (the original's ``loss_term/<term>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from dynamo_depth.config import LossWeights
from dynamo_depth.models.outputs import ModelOutputs
from dynamo_depth.objective.ground_plane import GroundFit, ground_disp_diff, ground_loss, ransac_plane
from dynamo_depth.objective.inputs import SOURCE_FRAMES, LossBatch, LossDraws, LossSettings
from dynamo_depth.objective.ssim import SSIMTarget, ssim_loss, ssim_target
from dynamo_depth.objective.view_synthesis import FrameWarp, ScaleWarp, Warps, resize, scale_warp, warp_model

__all__ = [
    "ORIGINAL_TERM_NAMES", "PHASE_TERMS", "RAMPED_TERMS", "TERMS", "LossResult", "LossSettings", "LossWeights",
    "compute_losses", "disparity_smoothness", "edge_aware_smoothness", "photometric_error", "ssim_loss",
]

TERMS: tuple[str, ...] = tuple(f.name for f in fields(LossWeights))
ORIGINAL_TERM_NAMES: dict[str, str] = {
    "photometric": "p_photo", "smoothness": "d_smooth", "ground": "d_ground", "flow_smoothness": "c_smooth",
    "consistency": "c_consistency", "mask_sparsity": "m_sparsity", "mask_smoothness": "m_smooth",
}
RAMPED_TERMS = ("flow_smoothness", "consistency", "mask_sparsity", "mask_smoothness")
PHASE_TERMS: dict[str, tuple[str, ...]] = {
    "disp_init": ("photometric", "smoothness"),
    "motion_init": ("photometric", "flow_smoothness"),
    "mask_init": ("photometric", "flow_smoothness", "consistency", "mask_sparsity", "mask_smoothness"),
    "fine_tune": TERMS,
}
AUTOMASK_PHASES = ("disp_init",)
DEFAULT_SETTINGS = LossSettings()


@dataclass(frozen=True)
class LossResult:
    """The losses of one batch.

    total: scalar, the original's ``loss``. per_scale[s][term]: unweighted value of each computed term
    at scale s. terms[term]: sum over scales of per_scale (``loss_term/<term>``), only computed terms.
    scale_totals[s]: weighted sum at scale s (``loss_term/<s>``). warps: the warps the losses used
    (empty after ``compute_losses(backward=True)``).
    identity_selection[s]: (B, H, W) 1 where a reprojection (not an identity) error was the minimum
    (disp_init only). ground[s] / ground_disp_diff[s]: the RANSAC fit and the unclamped disparity
    difference (B, 1, h, w) (fine_tune only).
    """

    total: torch.Tensor
    per_scale: dict[int, dict[str, torch.Tensor]]
    terms: dict[str, torch.Tensor]
    scale_totals: dict[int, torch.Tensor]
    warps: Warps
    identity_selection: dict[int, torch.Tensor] = field(default_factory=dict)
    ground: dict[int, GroundFit] = field(default_factory=dict)
    ground_disp_diff: dict[int, torch.Tensor] = field(default_factory=dict)


def photometric_error(pred: torch.Tensor, target: torch.Tensor | SSIMTarget, *, ssim_weight: float = 0.85,
                      ) -> torch.Tensor:
    """(B, 1, H, W) = ssim_weight * mean_c ssim_loss + (1 - ssim_weight) * mean_c |target - pred|.

    ``target`` may be an ``SSIMTarget`` (``dynamo_depth.objective.ssim``): its statistics are computed once per batch.
    """
    image = target.image if isinstance(target, SSIMTarget) else target
    l1 = (image - pred).abs().mean(1, keepdim=True)
    return ssim_weight * ssim_loss(pred, target).mean(1, keepdim=True) + (1 - ssim_weight) * l1


def edge_aware_smoothness(values: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """mean |dx v| exp(-mean_c |dx I|) + mean |dy v| exp(-mean_c |dy I|); values (B, C, h, w), image (B, 3, h, w)."""
    grad_v_x = (values[:, :, :, :-1] - values[:, :, :, 1:]).abs()
    grad_v_y = (values[:, :, :-1, :] - values[:, :, 1:, :]).abs()
    grad_i_x = (image[:, :, :, :-1] - image[:, :, :, 1:]).abs().mean(1, keepdim=True)
    grad_i_y = (image[:, :, :-1, :] - image[:, :, 1:, :]).abs().mean(1, keepdim=True)
    return (grad_v_x * torch.exp(-grad_i_x)).mean() + (grad_v_y * torch.exp(-grad_i_y)).mean()


def disparity_smoothness(disp: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware smoothness of disp / (mean over (h, w) of disp + 1e-7); 0 for a constant disp."""
    mean_disp = disp.mean(2, keepdim=True).mean(3, keepdim=True)
    return edge_aware_smoothness(disp / (mean_disp + 1e-7), image)


def _photometric(
    target: SSIMTarget, warp: ScaleWarp, scale: int, identity: torch.Tensor | None, draws: LossDraws,
    settings: LossSettings,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """p_photo of one scale and, with automasking (identity (B, 2, H, W) given), the identity selection."""
    errors = torch.cat([photometric_error(warp.frames[f].color, target, ssim_weight=settings.ssim_weight)
                        for f in SOURCE_FRAMES], dim=1)
    if identity is None:
        return errors.min(dim=1).values.mean(), None
    noise = draws.automask_noise(scale=scale, shape=tuple(identity.shape), device=identity.device)
    combined = torch.cat([identity + noise * settings.automask_noise, errors], dim=1)
    best, index = combined.min(dim=1)
    return best.mean(), (index > identity.shape[1] - 1).to(errors.dtype)


def _flow_terms(
    batch: LossBatch, outputs: ModelOutputs, warp: ScaleWarp, scale: int, active: tuple[str, ...],
    settings: LossSettings,
) -> dict[str, torch.Tensor]:
    """c_smooth, m_smooth, c_consistency, m_sparsity of one scale (those in ``active``), summed over sources."""
    image, factor = batch.target_pyramid[scale], 2**scale * len(SOURCE_FRAMES)
    out: dict[str, torch.Tensor] = {}
    for f in SOURCE_FRAMES:
        terms: dict[str, torch.Tensor] = {}
        if "flow_smoothness" in active:
            flow = outputs.complete_flow[scale] if f > 0 else -outputs.complete_flow[scale]
            terms["flow_smoothness"] = edge_aware_smoothness(flow, image)
        if "mask_smoothness" in active:
            terms["mask_smoothness"] = edge_aware_smoothness(outputs.motion_mask(scale), image)
        if "consistency" in active:
            terms["consistency"] = _consistency(outputs, warp, scale, f, settings)
        if "mask_sparsity" in active:
            terms["mask_sparsity"] = _mask_sparsity(outputs, warp.frames[f], scale)
        for name, value in terms.items():
            out[name] = out[name] + value / factor if name in out else value / factor
    return out


def _consistency(outputs: ModelOutputs, warp: ScaleWarp, scale: int, frame: int, settings: LossSettings) -> torch.Tensor:
    """mean((disp_s > threshold) * (1 - mask_s).detach() * |residual_flow|) over (B, 3, h, w)."""
    near = (outputs.disp[scale] > settings.mask_disp_threshold).to(outputs.disp[scale].dtype)
    static = 1 - outputs.motion_mask(scale).detach()
    return (near * static * warp.frames[frame].residual_flow.abs()).mean()


def _mask_sparsity(outputs: ModelOutputs, fw: FrameWarp, scale: int) -> torch.Tensor:
    """BCE-with-logits towards 0 of the motion logits over the static pixels (ego and complete samples agree)."""
    logits = outputs.motion_logits[scale]
    size = tuple(logits.shape[2:])
    ego = resize(fw.sample_ego.permute(0, 3, 1, 2), size)
    complete = resize(fw.sample_complete.permute(0, 3, 1, 2), size)
    dist = ((ego - complete) ** 2).sum(dim=1)  # (B, h, w)
    static = dist < dist.mean()
    if not bool(static.flatten(1).any(dim=1).all()):
        return logits.new_zeros(())
    selected = logits[:, 0][static]
    return F.binary_cross_entropy_with_logits(selected, torch.zeros_like(selected))


def _identity_errors(batch: LossBatch, target: SSIMTarget, settings: LossSettings) -> torch.Tensor:
    """Photometric errors of the un-warped sources against the target (B, 2, H, W) (automasking)."""
    return torch.cat([photometric_error(batch.color[f], target, ssim_weight=settings.ssim_weight)
                      for f in SOURCE_FRAMES], dim=1)


def compute_losses(
    batch: LossBatch,
    outputs: ModelOutputs,
    *,
    phase: str,
    ramp_factor: float,
    weights: LossWeights = LossWeights(),
    settings: LossSettings = DEFAULT_SETTINGS,
    draws: LossDraws,
    backward: bool = False,
) -> LossResult:
    """All loss terms of ``phase`` (module docstring), their per-scale values and the weighted total.

    ramp_factor in [0, 1] multiplies the weights of RAMPED_TERMS. ``draws`` gives the automasking
    noise (disp_init) and the RANSAC indices (fine_tune), one call per scale in scale order.

    backward=True backpropagates each scale's share of the total (its weighted sum / number of scales)
    as soon as that scale is computed, so only one scale's warps and loss graph are alive at a time
    (the trainer's memory peak). Give it ``outputs.cut()`` (the gradients land in the cut tensors'
    ``.grad``; ``ModelOutputs.backward`` carries them into the networks). The result then holds
    detached values and no warps. The gradient is the same sum, accumulated scale by scale (float
    rounding apart). A scale whose share is not finite is not backpropagated (check the values before
    using the gradients, as ``train.loop.train_step`` does).
    """
    model = warp_model(phase)
    if not 0.0 <= ramp_factor <= 1.0:
        raise ValueError(f"ramp_factor must be in [0, 1], got {ramp_factor}")
    active = PHASE_TERMS[phase]
    coef = _coefficients(ramp_factor, weights)
    target = ssim_target(batch.color[0])
    identity = _identity_errors(batch, target, settings) if phase in AUTOMASK_PHASES else None
    warps: dict[int, ScaleWarp] = {}
    per_scale: dict[int, dict[str, torch.Tensor]] = {}
    selection: dict[int, torch.Tensor] = {}
    ground: dict[int, GroundFit] = {}
    diffs: dict[int, torch.Tensor] = {}
    for s in settings.scales:
        warp = scale_warp(batch, outputs, scale=s, model=model, settings=settings)
        values: dict[str, torch.Tensor] = {}
        values["photometric"], chosen = _photometric(target, warp, s, identity, draws, settings)
        if chosen is not None:
            selection[s] = chosen
        if "smoothness" in active:
            values["smoothness"] = disparity_smoothness(outputs.disp[s], batch.target_pyramid[s]) / 2**s
        if "ground" in active:
            ground[s] = ransac_plane(outputs.disp[s], batch.inv_K[s], scale=s, draws=draws, settings=settings)
            diffs[s] = ground_disp_diff(outputs.disp[s], batch.inv_K[s], ground[s].plane, settings=settings)
            values["ground"] = ground_loss(diffs[s], scale=s)
        values.update(_flow_terms(batch, outputs, warp, s, active, settings))
        per_scale[s] = {name: values[name] for name in TERMS if name in values}
        if backward:
            share = _weighted_sum(per_scale[s], coef) / len(settings.scales)
            if share.requires_grad and bool(torch.isfinite(share)):  # a non-finite step is refused by the
                share.backward()  # caller; CPU grid_sample's backward can crash on NaN sampling coordinates
            per_scale[s] = {name: value.detach() for name, value in per_scale[s].items()}
            if s in diffs:
                diffs[s] = diffs[s].detach()
        else:
            warps[s] = warp
        del warp
    return _assemble(per_scale, coef, warps=Warps(scales=warps), identity_selection=selection, ground=ground,
                     ground_disp_diff=diffs)


def _coefficients(ramp_factor: float, weights: LossWeights) -> dict[str, float]:
    """Each term's weight, times ``ramp_factor`` for RAMPED_TERMS."""
    return {name: getattr(weights, name) * (ramp_factor if name in RAMPED_TERMS else 1.0) for name in TERMS}


def _weighted_sum(values: dict[str, torch.Tensor], coef: dict[str, float]) -> torch.Tensor:
    return sum(coef[n] * v for n, v in values.items())  # type: ignore[return-value]


def _assemble(per_scale: dict[int, dict[str, torch.Tensor]], coef: dict[str, float], **extra: object) -> LossResult:
    """Weighted per-scale sums, their mean over scales (``total``) and the per-term sums over scales."""
    scale_totals = {s: _weighted_sum(values, coef) for s, values in per_scale.items()}
    total = sum(scale_totals.values()) / len(per_scale)
    terms: dict[str, torch.Tensor] = {}
    for values in per_scale.values():
        for name, value in values.items():
            terms[name] = terms[name] + value if name in terms else value
    return LossResult(total=total, per_scale=per_scale, terms=terms, scale_totals=scale_totals, **extra)
