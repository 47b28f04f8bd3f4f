"""Ground-plane prior of Dynamo-Depth (d_ground, fine_tune only): RANSAC plane on the bottom rows.

Per scale s, on the scale's own disparity (not upsampled) and inv_K|s:
  points X = depth * inv_K|s [u, v, 1]^T (B, 3, h, w), metres; the bottom n_rows = int(ground_prior * h)
  rows flattened row-major give N = n_rows * w candidate points.
  Plane model y = w1 x + w2 z + w3 (camera y points down), A = [x, z, 1] (N, 3), b = y (N,).
  Hypotheses: the drawn indices (B, iterations * points) split into ``iterations`` groups of
  ``points`` consecutive indices; per group w = inverse(A^T A + 1e-6) @ A^T @ b, where (as the
  original) 1e-6 is added to EVERY entry of the 3x3 normal matrix, not only to its diagonal.
  Score: inlier share = mean over the N points of |A w - b| < ground_tolerance; best = first argmax.
  Ground depth of pixel ray r = inv_K|s [u, v, 1]: w3' / (r_y - w1 r_x - w2 r_z) with w3' = w3 + tol,
  set to max_depth where it is < 0 or > max_depth.
  disp_diff = disp - depth_to_disp(ground depth), 0 where the ground depth is max_depth; positive
  values set to 0; d_ground = -mean(disp_diff) / 2^s (penalises points below the plane).

Deliberate difference: by default (``ransac_scoring="own_image"``) hypothesis (b, it) is scored on
its own image b. The original scores it on item (b * iterations + it) mod B (its hypotheses are
ordered b-major but the points are repeated b-minor), so with B = 2 half the hypotheses are scored on
the other image; ``ransac_scoring="original"`` reproduces that. The fit runs without gradients (the
chosen plane is a constant of the loss; the gradient reaches the disparity directly; whether the
original back-propagates through its fit is not covered by the fixtures, which hold no gradients).
Robustness (no effect on regular inputs): a singular 5-point system, on which the original's
``torch.inverse`` raises, gives a NaN hypothesis that is never chosen; an image without any valid
hypothesis gets no ground term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynamo_depth.models.depth import depth_to_disp, disp_to_depth
from dynamo_depth.objective.inputs import LossDraws, LossSettings
from dynamo_depth.objective.warping import backproject, pixel_grid


@dataclass(frozen=True)
class GroundFit:
    """RANSAC results of one scale: indices (B, I * P) int64, hypotheses (B, I, 3) (w1, w2, w3),
    scored_on (B, I) int64 the item each hypothesis was scored on, inlier_share (B, I),
    best (B,) int64, plane (B, 3) the chosen (w1, w2, w3) before the tolerance is added."""

    indices: torch.Tensor
    hypotheses: torch.Tensor
    scored_on: torch.Tensor
    inlier_share: torch.Tensor
    best: torch.Tensor
    plane: torch.Tensor


def ground_points(disp: torch.Tensor, inv_K: torch.Tensor, *, settings: LossSettings) -> torch.Tensor:
    """Candidate points (B, N, 3) (x, y, z metres) of the bottom int(ground_prior * h) rows of disp (B, 1, h, w)."""
    _, depth = disp_to_depth(disp, min_depth=settings.min_depth, max_depth=settings.max_depth)
    batch, _, height, width = disp.shape
    rows = int(settings.ground_prior * height)
    points = backproject(depth, inv_K).reshape(batch, 3, height, width)[:, :, height - rows:]
    return points.reshape(batch, 3, rows * width).transpose(1, 2)


def fit_hypotheses(points: torch.Tensor, indices: torch.Tensor, *, points_per_hypothesis: int) -> torch.Tensor:
    """Least-squares planes of point groups: points (B, N, 3), indices (B, I * P) -> (B, I, 3) (w1, w2, w3).

    w = inverse(A^T A + 1e-6) @ A^T @ b with A = [x, z, 1], b = y of each group of P consecutive indices
    (1e-6 added to every entry of A^T A, as the original). A singular system gives NaN parameters
    (the original raises): such a hypothesis has no inliers and is never chosen unless all are singular.
    """
    batch = points.shape[0]
    picked = torch.gather(points, 1, indices[..., None].expand(-1, -1, 3))  # (B, I * P, 3)
    picked = picked.reshape(batch, -1, points_per_hypothesis, 3)
    A = torch.stack([picked[..., 0], picked[..., 2], torch.ones_like(picked[..., 0])], dim=-1)  # (B, I, P, 3)
    b = picked[..., 1:2]
    At = A.transpose(-1, -2)
    inverse, info = torch.linalg.inv_ex(At @ A + 1e-6)
    w = (inverse @ At @ b)[..., 0]
    singular = (info != 0) | ~torch.isfinite(w).all(dim=-1)
    return torch.where(singular[..., None], torch.full_like(w, float("nan")), w)


def score_hypotheses(
    points: torch.Tensor, hypotheses: torch.Tensor, scored_on: torch.Tensor, *, tolerance: float
) -> torch.Tensor:
    """Inlier share (B, I) of each hypothesis (B, I, 3) on the points (B, N, 3) of item scored_on (B, I).

    A point is an inlier if |w1 x + w2 z + w3 - y| < tolerance (metres); NaN hypotheses score 0.
    """
    shares = torch.zeros(hypotheses.shape[:2], dtype=points.dtype, device=points.device)
    for item in range(points.shape[0]):
        select = scored_on == item
        if not bool(select.any()):
            continue
        w = hypotheses[select]  # (K, 3)
        p = points[item]  # (N, 3)
        A = torch.stack([p[:, 0], p[:, 2], torch.ones_like(p[:, 0])], dim=1)  # (N, 3)
        inlier = ((w @ A.T) - p[:, 1]).abs() < tolerance  # (K, N)
        shares[select] = inlier.to(points.dtype).mean(dim=1)
    return shares


def scoring_items(*, batch: int, iterations: int, scoring: str, device: torch.device) -> torch.Tensor:
    """(B, I) int64 item each hypothesis is scored on: own image b, or (b * I + it) mod B ("original")."""
    if scoring == "own_image":
        return torch.arange(batch, device=device)[:, None].expand(batch, iterations).clone()
    if scoring == "original":
        return (torch.arange(batch * iterations, device=device) % batch).reshape(batch, iterations)
    raise ValueError(f"ransac scoring must be 'own_image' or 'original', got {scoring!r}")


def ransac_plane(
    disp: torch.Tensor, inv_K: torch.Tensor, *, scale: int, draws: LossDraws, settings: LossSettings
) -> GroundFit:
    """RANSAC ground plane of every item of disp (B, 1, h, w) with inv_K (B, 4, 4) of that scale (no gradient)."""
    with torch.no_grad():
        points = ground_points(disp.detach(), inv_K, settings=settings)
        batch, n_points, _ = points.shape
        n_draw = settings.ransac_iterations * settings.ransac_points
        indices = draws.ransac_indices(scale=scale, batch=batch, n_points=n_points, n_samples=n_draw).to(disp.device)
        hypotheses = fit_hypotheses(points, indices, points_per_hypothesis=settings.ransac_points)
        scored_on = scoring_items(batch=batch, iterations=settings.ransac_iterations,
                                  scoring=settings.ransac_scoring, device=disp.device)
        shares = score_hypotheses(points, hypotheses, scored_on, tolerance=settings.ground_tolerance)
        valid = torch.isfinite(hypotheses).all(dim=-1)
        best = torch.where(valid, shares, torch.full_like(shares, -1.0)).argmax(dim=1)
        plane = hypotheses[torch.arange(batch, device=disp.device), best]
    return GroundFit(indices=indices, hypotheses=hypotheses, scored_on=scored_on, inlier_share=shares,
                     best=best, plane=plane)


def ground_disp_diff(
    disp: torch.Tensor, inv_K: torch.Tensor, plane: torch.Tensor, *, settings: LossSettings
) -> torch.Tensor:
    """disp (B, 1, h, w) minus the sigmoid disparity of the plane (B, 3) + tolerance; 0 where no ground.

    Not clamped (``ground_loss`` zeroes the positive values). (B, 1, h, w), sigmoid-disparity units.
    An item whose plane is not finite (every hypothesis singular) gets 0 everywhere (no ground prior).
    """
    batch, _, height, width = disp.shape
    rays = inv_K[:, :3, :3].to(disp.dtype) @ pixel_grid(height, width, dtype=disp.dtype, device=disp.device)
    w1, w2, w3 = (plane[:, i, None] for i in range(3))
    w3 = w3 + settings.ground_tolerance
    ground = w3 / (rays[:, 1] - rays[:, 0] * w1 - rays[:, 2] * w2)  # (B, h*w)
    ground = ground.reshape(batch, 1, height, width)
    far = (ground < 0) | (ground > settings.max_depth)
    ground = torch.where(far, torch.full_like(ground, settings.max_depth), ground)
    diff = disp - depth_to_disp(ground, min_depth=settings.min_depth, max_depth=settings.max_depth)
    no_plane = ~torch.isfinite(plane).all(dim=1).view(-1, 1, 1, 1)
    return torch.where((ground == settings.max_depth) | no_plane, torch.zeros_like(diff), diff)


def ground_loss(disp_diff: torch.Tensor, *, scale: int) -> torch.Tensor:
    """d_ground of one scale: -mean(min(disp_diff, 0)) / 2^scale (scalar)."""
    clamped = torch.where(disp_diff > 0, torch.zeros_like(disp_diff), disp_diff)
    return -clamped.mean() / 2**scale
