"""Differentiable torch view synthesis: back-projection, rigid transforms, projection, sampling.

Conventions (docs/ARCHITECTURE.md): OpenCV camera axes (x right, y down, z forward), metres,
transforms named ``target_from_source`` as (B, 4, 4). Pixel (u, v) = (column, row) has its centre at
integer coordinates, matching the pinhole K of the stored images. As the original Dynamo-Depth,
``grid_sample`` is called with ``align_corners=True``: pixel centre u maps to the normalised
coordinate 2 u / (W - 1) - 1 (the same pixel centre as (2u + 1) / W - 1 with align_corners=False),
and projection divides by z + 1e-7 (no clamp: points behind the camera project mirrored, as there).

The per-phase warps of the training losses (``generate_warps``) live in ``dynamo_depth.objective.view_synthesis``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SMALL_ANGLE = 1e-4
PROJECTION_EPS = 1e-7


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: axis-angle (..., 3) (direction = axis, norm = angle in radians) -> (..., 3, 3).

    R = I + (sin t / t) [v]x + ((1 - cos t) / t^2) [v]x^2 with t = |v|; Taylor series below 1e-4 rad,
    so the value and gradient are finite at v = 0.
    """
    if axis_angle.shape[-1] != 3:
        raise ValueError(f"axis_angle must have a last dimension of 3, got {tuple(axis_angle.shape)}")
    theta_sq = (axis_angle * axis_angle).sum(dim=-1)
    small = theta_sq < _SMALL_ANGLE**2
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta_sq), theta_sq))
    a = torch.where(small, 1.0 - theta_sq / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta_sq / 24.0, (1.0 - torch.cos(theta)) / (theta * theta))
    skew = skew_matrix(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(skew)
    return eye + a[..., None, None] * skew + b[..., None, None] * (skew @ skew)


def skew_matrix(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrix [v]x with [v]x w = v x w."""
    x, y, z = v.unbind(dim=-1)
    zero = torch.zeros_like(x)
    rows = (torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1), torch.stack([-y, x, zero], -1))
    return torch.stack(rows, dim=-2)


def pose_vector_to_matrix(axis_angle: torch.Tensor, translation: torch.Tensor, *, invert: bool = False) -> torch.Tensor:
    """(B, 1, 3) or (B, 3) axis-angle and translation (metres) -> (B, 4, 4) rigid transform.

    Without ``invert`` the transform is [R | t] (rotate, then translate). With ``invert`` it is the
    exact inverse [R^T | -R^T t].
    """
    axis_angle = axis_angle.reshape(-1, 3)
    translation = translation.reshape(-1, 3)
    rotation = axis_angle_to_matrix(axis_angle)
    if invert:
        rotation = rotation.transpose(1, 2)
        translation = -(rotation @ translation[..., None])[..., 0]
    out = torch.zeros(axis_angle.shape[0], 4, 4, dtype=axis_angle.dtype, device=axis_angle.device)
    out[:, :3, :3] = rotation
    out[:, :3, 3] = translation
    out[:, 3, 3] = 1.0
    return out


def invert_rigid(transform: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid (..., 4, 4) transforms: [R | t]^-1 = [R^T | -R^T t]."""
    rotation_t = transform[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(transform)
    out[..., :3, :3] = rotation_t
    out[..., :3, 3] = -(rotation_t @ transform[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def relative_pose(*, world_from_source: torch.Tensor, world_from_target: torch.Tensor) -> torch.Tensor:
    """source_from_target = inverse(world_from_source) @ world_from_target, all (..., 4, 4)."""
    return invert_rigid(world_from_source) @ world_from_target


def pixel_grid(height: int, width: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Homogeneous pixel centres (3, H*W): rows u (column index), v (row index), 1; row-major order."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device), torch.arange(width, dtype=dtype, device=device), indexing="ij"
    )
    return torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(height * width, dtype=dtype, device=device)])


def backproject(depth: torch.Tensor, inv_K: torch.Tensor) -> torch.Tensor:
    """depth (B, 1, H, W) z-depth in metres, inv_K (B, 3, 3) or (B, 4, 4) -> camera points (B, 3, H*W), metres.

    X = depth * (inv_K[:3, :3] @ [u, v, 1]^T) for every pixel centre (u = column, v = row).
    """
    if depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must be (B, 1, H, W), got {tuple(depth.shape)}")
    batch, _, height, width = depth.shape
    pixels = pixel_grid(height, width, dtype=depth.dtype, device=depth.device)
    rays = inv_K[:, :3, :3].to(depth.dtype) @ pixels.expand(batch, 3, height * width)
    return depth.reshape(batch, 1, height * width) * rays


def transform_points(transform: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply (B, 4, 4) ``b_from_a`` to points (B, 3, N) in frame a -> (B, 3, N) in frame b."""
    return transform[:, :3, :3] @ points + transform[:, :3, 3:4]


def project_to_grid(
    points: torch.Tensor, K: torch.Tensor, *, height: int, width: int, transform: torch.Tensor | None = None
) -> torch.Tensor:
    """Camera points (B, 3, H*W) -> ``grid_sample`` grid (B, H, W, 2) (x, y), align_corners=True convention.

    With ``transform`` (B, 4, 4) the points are first moved by it (as one matrix (K @ T)[:3] applied to
    the homogeneous points). K (B, 3, 3) or (B, 4, 4) in pixels of the (height, width) image.
    u = (K X)_0 / ((K X)_2 + 1e-7), x = 2 u / (width - 1) - 1; likewise v, y with height.
    """
    if points.dim() != 3 or points.shape[1] != 3 or points.shape[2] != height * width:
        raise ValueError(f"points must be (B, 3, {height * width}) for a {height}x{width} grid, got {tuple(points.shape)}")
    batch = points.shape[0]
    matrix = torch.zeros(batch, 3, 4, dtype=points.dtype, device=points.device)
    matrix[:, :, :3] = K[:, :3, :3].to(points.dtype)
    if transform is not None:
        matrix = matrix @ transform.to(points.dtype)
    cam = matrix[:, :, :3] @ points + matrix[:, :, 3:4]
    pix = cam[:, :2] / (cam[:, 2:3] + PROJECTION_EPS)
    pix = pix.reshape(batch, 2, height, width).permute(0, 2, 3, 1)
    scale = torch.tensor([width - 1, height - 1], dtype=points.dtype, device=points.device)
    return pix / scale * 2.0 - 1.0


def sample_image(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear ``grid_sample`` of image (B, C, H, W) at grid (B, H', W', 2); border padding, align_corners=True."""
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def warp_source_to_target(
    source_image: torch.Tensor,
    *,
    depth: torch.Tensor,
    source_from_target: torch.Tensor,
    K: torch.Tensor,
    inv_K: torch.Tensor,
) -> torch.Tensor:
    """Rigid view synthesis: the source image (B, C, H, W) resampled into the target view.

    Each target pixel is back-projected with its depth (B, 1, H, W), moved by source_from_target
    (B, 4, 4), projected with K and the source sampled there (K, inv_K (B, 3, 3) or (B, 4, 4)).
    """
    points = backproject(depth, inv_K)
    grid = project_to_grid(points, K, height=depth.shape[2], width=depth.shape[3], transform=source_from_target)
    return sample_image(source_image, grid)
