"""Dynamo-Depth training losses (photometric, smoothness, ground prior, flow/mask regularisers).

Inputs (``compute_losses``): ``inputs["images"]`` (B, 3, 3, H, W) frames (t-1, t, t+1) in [0, 1] and
``inputs["K"]`` (B, 3, 3) pinhole intrinsics in pixels of those H x W images. Outputs: the dict of
``DynamoDepthModel`` (``disp_{s}``, ``source_from_target_prev/next``, ``flow_{s}``, ``mask_logits_{s}``).

Per scale s every disparity, flow and mask map is upsampled (bilinear) to H x W and the terms are
computed at full resolution, except the smoothness terms, which use the scale's own resolution
and are multiplied by 1/2^s. Every term is averaged over the scales.

Where a target pixel's 3D point X (camera t, metres; X = depth * inv_K [u, v, 1]) lands in source
camera s in {t-1, t+1}, with ts = -1 / +1 its signed frame offset, T_s = source_from_target_s, C the
complete flow (camera t, metres per frame, towards t+1) and m the motion-mask probability:
  rigid  (disp_init):           X_s = T_s X
  flow   (motion_init):         X_s = X + ts * C                      (complete flow alone)
  masked (mask_init, fine_tune): X_s = (1 - m) * T_s X + m * (X + ts * C)
ego flow: ego_flow_s = T_s X - X, the displacement a static point shows from t to s (camera t
axes). For a static point ts * C = ego_flow_s, so C itself is the complete flow towards t+1, and
the masked model reads X_s = T_s X + m * (ts * C - ego_flow_s): rigid motion plus the masked
independent flow. (We do not use X_s = T_s (X + C): C contains the ego-motion, which the consistency
and sparsity terms compare it with, so T_s would apply the ego-motion twice.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dynamo_depth.config import LossWeights
from dynamo_depth.models import phase_spec
from dynamo_depth.models.depth import SCALES, disp_to_depth
from dynamo_depth.warping import backproject, project_to_grid, sample_image, transform_points

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
TERMS = ("photometric", "smoothness", "ground", "flow_smoothness", "consistency", "mask_sparsity", "mask_smoothness")
RAMPED_TERMS = ("flow_smoothness", "consistency", "mask_sparsity", "mask_smoothness")
PHASE_TERMS: dict[str, tuple[str, ...]] = {
    "disp_init": ("photometric", "smoothness", "ground"),
    "motion_init": ("photometric", "flow_smoothness"),
    "mask_init": ("photometric", "flow_smoothness", "consistency", "mask_sparsity", "mask_smoothness"),
    "fine_tune": TERMS,
}
MOTION_MODEL = {"disp_init": "rigid", "motion_init": "flow", "mask_init": "masked", "fine_tune": "masked"}
SOURCES = (("prev", -1, 0), ("next", 1, 2))  # (name, signed frame offset ts, index in images)


@dataclass(frozen=True)
class LossSettings:
    """Non-weight constants of the losses.

    ground_rows_fraction: bottom fraction of image rows used by the ground prior.
    ransac_inlier_ratio: a point is a plane inlier if its distance < ratio * median depth of the rows.
    static_mask_threshold / static_disp_threshold: consistency uses pixels with mask < 0.5 and
        scaled disparity 1/depth > 0.03 per metre (closer than 33.3 m; far pixels and sky excluded).
    flow_agreement_ratio: ego and complete flow agree at a pixel when
        |ts*C - ego_flow_s| <= ratio * |ego_flow_s| (Euclidean) for both sources.
    seed: seeds the RANSAC samples and the automasking noise (the losses are deterministic).
    """

    scales: tuple[int, ...] = SCALES
    min_depth: float = 0.1
    max_depth: float = 100.0
    ssim_weight: float = 0.85
    automask_noise: float = 1e-5
    ground_rows_fraction: float = 0.4
    ransac_iterations: int = 64
    ransac_inlier_ratio: float = 0.02
    static_mask_threshold: float = 0.5
    static_disp_threshold: float = 0.03
    flow_agreement_ratio: float = 0.1
    seed: int = 0


def ramp(progress: float) -> float:
    """Linear ramp over the first third of a phase: 0 at progress 0, 1 from progress 1/3 on."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"phase_progress must be in [0, 1], got {progress}")
    return min(1.0, 3.0 * progress)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (B, C, H, W) of two images (B, C, H, W): 3x3 mean windows, reflection padding.

    SSIM = (2 mx my + C1)(2 sxy + C2) / ((mx^2 + my^2 + C1)(sx^2 + sy^2 + C2)), C1 = 0.01^2, C2 = 0.03^2.
    """
    x, y = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
    mean_x, mean_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    var_x = F.avg_pool2d(x * x, 3, 1) - mean_x**2
    var_y = F.avg_pool2d(y * y, 3, 1) - mean_y**2
    cov_xy = F.avg_pool2d(x * y, 3, 1) - mean_x * mean_y
    numerator = (2 * mean_x * mean_y + SSIM_C1) * (2 * cov_xy + SSIM_C2)
    denominator = (mean_x**2 + mean_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return numerator / denominator


def photometric_error(pred: torch.Tensor, target: torch.Tensor, *, ssim_weight: float = 0.85) -> torch.Tensor:
    """(B, 1, H, W) = channel mean of ssim_weight * clamp((1 - SSIM) / 2, 0, 1) + (1 - ssim_weight) * |pred - target|."""
    dissimilarity = ((1.0 - ssim(pred, target)) / 2.0).clamp(0.0, 1.0)
    l1 = (pred - target).abs()
    return (ssim_weight * dissimilarity + (1.0 - ssim_weight) * l1).mean(dim=1, keepdim=True)


def edge_aware_smoothness(values: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """mean |dx v| exp(-mean_c |dx I|) + mean |dy v| exp(-mean_c |dy I|); values (B, C, h, w), image (B, 3, h, w)."""
    grad_v_x = (values[..., :, 1:] - values[..., :, :-1]).abs()
    grad_v_y = (values[..., 1:, :] - values[..., :-1, :]).abs()
    grad_i_x = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(dim=1, keepdim=True)
    grad_i_y = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(dim=1, keepdim=True)
    return (grad_v_x * torch.exp(-grad_i_x)).mean() + (grad_v_y * torch.exp(-grad_i_y)).mean()


def disparity_smoothness(disp: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware smoothness of disp / mean(disp) (mean over each image's pixels); 0 for a constant disp."""
    normalised = disp / (disp.mean(dim=(2, 3), keepdim=True) + 1e-7)
    return edge_aware_smoothness(normalised, image)


def ground_plane_loss(
    depth: torch.Tensor, inv_K: torch.Tensor, *, settings: LossSettings = LossSettings()
) -> torch.Tensor:
    """Ground-plane prior on the bottom rows (scale invariant, unitless); depth (B, 1, H, W) metres.

    Per image: the points X_i of the bottom ``ground_rows_fraction`` rows are back-projected; with
    gradients off, RANSAC (``ransac_iterations`` random point triples, seeded) picks the plane with the
    most inliers (distance < ransac_inlier_ratio * z_med, z_med the median depth of those points),
    which is then refit to its inliers by least squares (normal n = smallest-eigenvalue eigenvector of
    the inlier covariance, offset d = -n . mean). Loss = mean over inliers of |n . X_i + d| / z_med,
    with n, d, z_med and the inlier set held fixed, so only the depths are pulled onto the plane.
    Exactly 0 when the points lie on a plane. Returns the mean over the batch.
    """
    height = depth.shape[2]
    first_row = height - max(3, round(settings.ground_rows_fraction * height))
    points = backproject(depth, inv_K).reshape(depth.shape[0], 3, height, -1)[:, :, first_row:]
    points = points.flatten(2).transpose(1, 2)  # (B, N, 3)
    with torch.no_grad():
        normal, offset, inliers, z_med = _fit_plane(points.detach(), settings)
    distance = (points @ normal[:, :, None])[..., 0] + offset[:, None]
    per_image = (distance.abs() * inliers).sum(dim=1) / inliers.sum(dim=1).clamp(min=1)
    return (per_image / z_med).mean()


def _fit_plane(
    points: torch.Tensor, settings: LossSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RANSAC + least-squares refit; points (B, N, 3) -> normal (B, 3), offset (B,), inliers (B, N), z_med (B,)."""
    batch, count, _ = points.shape
    generator = torch.Generator(device=points.device).manual_seed(settings.seed)
    index = torch.randint(count, (batch, settings.ransac_iterations, 3), generator=generator, device=points.device)
    triples = torch.gather(points[:, None].expand(-1, settings.ransac_iterations, -1, -1), 2,
                           index[..., None].expand(-1, -1, -1, 3))  # (B, I, 3 points, 3)
    normals = torch.linalg.cross(triples[:, :, 1] - triples[:, :, 0], triples[:, :, 2] - triples[:, :, 0])
    lengths = normals.norm(dim=-1)
    z_med = points[..., 2].median(dim=1).values
    valid = lengths > 1e-12 * z_med[:, None] ** 2
    normals = normals / lengths.clamp(min=1e-30)[..., None]
    offsets = -(normals * triples[:, :, 0]).sum(dim=-1)  # (B, I)
    distances = (normals @ points.transpose(1, 2) + offsets[..., None]).abs()  # (B, I, N)
    threshold = settings.ransac_inlier_ratio * z_med
    votes = torch.where(valid, (distances < threshold[:, None, None]).sum(dim=-1), -1)
    best = votes.argmax(dim=1)
    inliers = (distances[torch.arange(batch), best] < threshold[:, None]).to(points.dtype)
    weight = inliers / inliers.sum(dim=1, keepdim=True).clamp(min=1)
    centre = (weight[..., None] * points).sum(dim=1)
    centred = points - centre[:, None]
    covariance = (weight[..., None] * centred).transpose(1, 2) @ centred
    normal = torch.linalg.eigh(covariance).eigenvectors[..., 0]
    offset = -(normal * centre).sum(dim=-1)
    refit = ((points @ normal[:, :, None])[..., 0] + offset[:, None]).abs() < threshold[:, None]
    return normal, offset, (inliers.bool() & refit).to(points.dtype), z_med


def source_points(
    points: torch.Tensor,
    *,
    source_from_target: torch.Tensor,
    ts: int,
    model: str,
    flow: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Target points (B, 3, N) -> their positions in the source camera (B, 3, N) (module docstring).

    flow: complete flow (B, 3, N) metres per frame; mask: motion probability (B, 1, N).
    """
    if model == "rigid":
        return transform_points(source_from_target, points)
    moved = points + ts * flow
    if model == "flow":
        return moved
    if model == "masked":
        return (1.0 - mask) * transform_points(source_from_target, points) + mask * moved
    raise ValueError(f"unknown motion model {model!r}; allowed: rigid, flow, masked")


def _get(outputs: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    """outputs[key]; ValueError naming a missing key."""
    if key not in outputs:
        raise ValueError(f"outputs: missing key {key!r} (present: {sorted(outputs)})")
    return outputs[key]


def _full(outputs: Mapping[str, torch.Tensor], key: str, size: tuple[int, int]) -> torch.Tensor:
    """outputs[key] upsampled (bilinear) to ``size``; ValueError naming a missing key."""
    value = _get(outputs, key)
    if tuple(value.shape[2:]) == size:
        return value
    return F.interpolate(value, size=size, mode="bilinear", align_corners=False)


def _read_inputs(inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    for key in ("images", "K"):
        if key not in inputs:
            raise ValueError(f"inputs: missing key {key!r} (present: {sorted(inputs)})")
    images, K = inputs["images"], inputs["K"]
    if images.dim() != 5 or images.shape[1:3] != (3, 3):
        raise ValueError(f"inputs['images'] must be (B, 3, 3, H, W), got {tuple(images.shape)}")
    if K.shape != (images.shape[0], 3, 3):
        raise ValueError(f"inputs['K'] must be ({images.shape[0]}, 3, 3), got {tuple(K.shape)}")
    return images, K.to(images.dtype)


def _automask_errors(images: torch.Tensor, settings: LossSettings) -> torch.Tensor:
    """Identity reprojection errors of the unwarped sources (B, 2, H, W) plus seeded noise of 1e-5 scale."""
    target = images[:, 1]
    errors = torch.cat([photometric_error(images[:, i], target, ssim_weight=settings.ssim_weight)
                        for _, _, i in SOURCES], dim=1)
    generator = torch.Generator(device=images.device).manual_seed(settings.seed)
    noise = torch.randn(errors.shape, generator=generator, device=images.device, dtype=errors.dtype)
    return errors + settings.automask_noise * noise


def _smoothness_terms(
    target: torch.Tensor, outputs: Mapping[str, torch.Tensor], scale: int, active: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Edge-aware smoothness of the scale's own disparity / flow / mask maps, times 1/2^scale.

    The target image (B, 3, H, W) is area-resized to each map's resolution for the edge weights.
    """
    factor = 1.0 / 2**scale
    terms: dict[str, torch.Tensor] = {}
    for term, key, fn in (
        ("smoothness", f"disp_{scale}", disparity_smoothness),
        ("flow_smoothness", f"flow_{scale}", edge_aware_smoothness),
        ("mask_smoothness", f"mask_{scale}", edge_aware_smoothness),
    ):
        if term in active:
            value = _get(outputs, key)
            image = F.interpolate(target, size=value.shape[2:], mode="area")
            terms[term] = factor * fn(value, image)
    return terms


def _scale_terms(
    images: torch.Tensor,
    K: torch.Tensor,
    inv_K: torch.Tensor,
    outputs: Mapping[str, torch.Tensor],
    scale: int,
    phase: str,
    settings: LossSettings,
) -> dict[str, torch.Tensor]:
    """Unweighted terms of one scale (module docstring); ``photometric_errors`` is (B, 2, H, W)."""
    active, model = PHASE_TERMS[phase], MOTION_MODEL[phase]
    size = tuple(images.shape[3:])
    batch, n_pix = images.shape[0], size[0] * size[1]
    disp = _full(outputs, f"disp_{scale}", size)
    inverse_depth, depth = disp_to_depth(disp, min_depth=settings.min_depth, max_depth=settings.max_depth)
    points = backproject(depth, inv_K)
    flow = _full(outputs, f"flow_{scale}", size).reshape(batch, 3, n_pix) if model != "rigid" else None
    mask = _full(outputs, f"mask_{scale}", size).reshape(batch, 1, n_pix) if model == "masked" else None
    errors = []
    for name, ts, index in SOURCES:
        transform = _get(outputs, f"source_from_target_{name}") if model != "flow" else None
        moved = source_points(points, source_from_target=transform, ts=ts, model=model, flow=flow, mask=mask)
        warped = sample_image(images[:, index], project_to_grid(moved, K, height=size[0], width=size[1]))
        errors.append(photometric_error(warped, images[:, 1], ssim_weight=settings.ssim_weight))
    terms = {"photometric_errors": torch.cat(errors, dim=1), **_smoothness_terms(images[:, 1], outputs, scale, active)}
    if "ground" in active:
        terms["ground"] = ground_plane_loss(depth, inv_K, settings=settings)
    if "consistency" in active or "mask_sparsity" in active:
        logits = _full(outputs, f"mask_logits_{scale}", size).reshape(batch, n_pix)
        terms.update(_flow_terms(points, flow, mask, logits, inverse_depth.reshape(batch, n_pix), outputs, settings))
    return terms


def _flow_terms(
    points: torch.Tensor,
    flow: torch.Tensor,
    mask: torch.Tensor,
    logits: torch.Tensor,
    inverse_depth: torch.Tensor,
    outputs: Mapping[str, torch.Tensor],
    settings: LossSettings,
) -> dict[str, torch.Tensor]:
    """Consistency and mask sparsity at full resolution: points, flow (B, 3, N), mask (B, 1, N),
    logits and inverse_depth (B, N), N = H * W.

    consistency = mean over sources s and over static pixels (mask < 0.5 and 1/depth > 0.03) of the L1
    norm |ts * C - ego_flow_s|_1 (metres), ego_flow_s = T_s X - X with X, T_s detached.
    mask_sparsity = mean over agreeing pixels of BCE(mask, 0) = softplus(logits).
    """
    near = inverse_depth.detach() > settings.static_disp_threshold
    static = ((mask.detach()[:, 0] < settings.static_mask_threshold) & near).to(flow.dtype)
    fixed_points = points.detach()
    consistency, agree = [], torch.ones_like(static, dtype=torch.bool)
    for name, ts, _ in SOURCES:
        transform = _get(outputs, f"source_from_target_{name}").detach()
        ego_flow = transform_points(transform, fixed_points) - fixed_points
        residual = ts * flow - ego_flow
        consistency.append((residual.abs().sum(dim=1) * static).sum() / static.sum().clamp(min=1))
        agree &= residual.detach().norm(dim=1) <= settings.flow_agreement_ratio * ego_flow.norm(dim=1)
    agree_f = agree.to(flow.dtype)
    sparsity = (F.softplus(logits) * agree_f).sum() / agree_f.sum().clamp(min=1)
    return {"consistency": torch.stack(consistency).mean(), "mask_sparsity": sparsity}


def compute_losses(
    inputs: Mapping[str, torch.Tensor],
    outputs: Mapping[str, torch.Tensor],
    *,
    phase: str,
    phase_progress: float,
    weights: LossWeights = LossWeights(),
    settings: LossSettings = LossSettings(),
) -> dict[str, torch.Tensor]:
    """All loss terms (unweighted, averaged over scales; 0 when inactive in ``phase``) and ``total``.

    total = sum over active terms of weight * term, times ``ramp(phase_progress)`` for RAMPED_TERMS.
    The photometric term is the mean over pixels of the per-pixel minimum over the two sources'
    errors (and, in disp_init, over the identity errors of the unwarped sources: automasking).
    """
    phase_spec(phase)
    ramp_factor = ramp(phase_progress)
    images, K = _read_inputs(inputs)
    inv_K = torch.linalg.inv(K)
    automask = _automask_errors(images, settings) if phase == "disp_init" else None
    sums: dict[str, torch.Tensor] = {}
    for scale in settings.scales:
        terms = _scale_terms(images, K, inv_K, outputs, scale, phase, settings)
        errors = terms.pop("photometric_errors")
        if automask is not None:
            errors = torch.cat([automask, errors], dim=1)
        terms["photometric"] = errors.min(dim=1).values.mean()
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value / len(settings.scales)
    zero = images.new_zeros(())
    result = {name: sums.get(name, zero) for name in TERMS}
    total = zero
    for name in PHASE_TERMS[phase]:
        factor = ramp_factor if name in RAMPED_TERMS else 1.0
        total = total + getattr(weights, name) * factor * result[name]
    result["total"] = total
    return result
