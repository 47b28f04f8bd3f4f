"""Losses and warping against hand-computed geometry on synthetic textured planes."""

from __future__ import annotations

import math

import pytest
import torch

from dynamo_depth.losses import (
    PHASE_TERMS,
    RAMPED_TERMS,
    TERMS,
    LossSettings,
    compute_losses,
    disparity_smoothness,
    edge_aware_smoothness,
    ground_plane_loss,
    photometric_error,
    ramp,
    ssim,
)
from dynamo_depth.models import PHASES
from dynamo_depth.models.depth import depth_to_disp, disp_to_depth
from dynamo_depth.warping import pixel_grid, warp_source_to_target

torch.set_num_threads(2)
H, W, FOCAL, PLANE_Z = 32, 64, 100.0, 10.0


def _K(batch: int = 1, height: int = H, width: int = W) -> torch.Tensor:
    return torch.tensor([[FOCAL, 0, (width - 1) / 2], [0, FOCAL, (height - 1) / 2], [0, 0, 1]]).expand(batch, 3, 3)


def _translation(x: float, y: float = 0.0, z: float = 0.0, batch: int = 1) -> torch.Tensor:
    transform = torch.eye(4).repeat(batch, 1, 1)
    transform[:, :3, 3] = torch.tensor([x, y, z])
    return transform


def _warp(source, depth, transform):
    K = _K(source.shape[0], source.shape[2], source.shape[3])
    return warp_source_to_target(source, depth=depth, source_from_target=transform, K=K, inv_K=torch.linalg.inv(K))


def test_ssim_identical_is_one_and_constant_images_hand_value():
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(image, image), torch.ones_like(image), atol=1e-5)
    assert photometric_error(image, image).abs().max() < 1e-5
    a = torch.full((1, 3, 8, 8), 0.2, dtype=torch.float64)  # float64: E[x^2] - E[x]^2 cancels exactly enough
    b = torch.full((1, 3, 8, 8), 0.6, dtype=torch.float64)
    c1 = 0.01**2
    expected_ssim = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)  # variances 0: second factor C2/C2 = 1
    assert torch.allclose(ssim(a, b), torch.full_like(a, expected_ssim), atol=1e-7)
    expected_error = 0.85 * (1 - expected_ssim) / 2 + 0.15 * 0.4
    assert torch.allclose(photometric_error(a, b), torch.full((1, 1, 8, 8), expected_error, dtype=torch.float64), atol=1e-7)


def test_identity_pose_with_true_depth_reconstructs_target():
    target = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    depth = 1.0 + 50 * torch.rand(2, 1, H, W, generator=torch.Generator().manual_seed(2))
    warped = _warp(target, depth, _translation(0.0, batch=2))
    assert torch.allclose(warped, target, atol=1e-4)


def test_lateral_translation_shifts_a_plane_by_f_t_over_z():
    """X_src = X + (0.3, 0, 0) on a plane at z = 10 m: u_src = u + f * 0.3 / 10 = u + 3 pixels."""
    source = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(3))
    warped = _warp(source, torch.full((1, 1, H, W), PLANE_Z), _translation(0.3))
    columns = (torch.arange(W) + 3).clamp(max=W - 1)  # border padding repeats the last column
    assert torch.allclose(warped, source[..., columns], atol=1e-4)


def _affine_texture(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A 3-channel image that is affine in (u, v): bilinear sampling reproduces it exactly."""
    return torch.stack([0.01 * u + 0.02 * v, 0.5 - 0.005 * u, 0.03 * v + 0.1])[None]


def test_fractional_and_forward_translations_match_analytic_images():
    pixels = pixel_grid(H, W)
    u, v = pixels[0].reshape(H, W), pixels[1].reshape(H, W)
    source = _affine_texture(u, v)
    depth = torch.full((1, 1, H, W), PLANE_Z)
    lateral = _warp(source, depth, _translation(0.25))  # 2.5 pixels
    assert torch.allclose(lateral, _affine_texture((u + 2.5).clamp(max=W - 1), v), atol=1e-4)
    # source camera 2 m further forward: z_src = 8 m, the image magnifies about the principal point
    forward = _warp(source, depth, _translation(0.0, z=-2.0))
    cx, cy = (W - 1) / 2, (H - 1) / 2
    u_src = (cx + (u - cx) * PLANE_Z / 8.0).clamp(0, W - 1)
    v_src = (cy + (v - cy) * PLANE_Z / 8.0).clamp(0, H - 1)
    assert torch.allclose(forward, _affine_texture(u_src, v_src), atol=1e-4)


def _ground_depth(*, roll_slope: float = 0.1, camera_height: float = 1.5) -> torch.Tensor:
    """Depth (1, 1, H, W) of the plane -slope * x + y = h (camera axes; y down) below the horizon, 20 m above."""
    rays = torch.linalg.inv(_K()[0]) @ pixel_grid(H, W)
    denominator = rays[1] - roll_slope * rays[0]
    depth = torch.where(denominator > 0.05, camera_height / denominator.clamp(min=0.05), torch.tensor(20.0))
    return depth.reshape(1, 1, H, W)


def test_ground_prior_zero_on_a_plane_positive_otherwise():
    inv_K = torch.linalg.inv(_K())
    plane_depth = disp_to_depth(depth_to_disp(_ground_depth()))[1]  # through the disparity parametrisation
    assert ground_plane_loss(plane_depth, inv_K).item() < 1e-6
    u = pixel_grid(H, W)[0].reshape(1, 1, H, W)
    bumpy = plane_depth * (1 + 0.005 * torch.sin(u))
    value = ground_plane_loss(bumpy, inv_K).item()
    assert value > 1e-4
    # scale invariant: monocular depth has no metric scale
    assert ground_plane_loss(3.0 * bumpy, inv_K).item() == pytest.approx(value, rel=1e-3)
    # the gradient pulls only the depths (the plane is fixed)
    trainable = bumpy.clone().requires_grad_(True)
    ground_plane_loss(trainable, inv_K).backward()
    assert trainable.grad[..., : H - round(0.4 * H), :].abs().sum() == 0
    assert trainable.grad[..., H - round(0.4 * H):, :].abs().sum() > 0


def test_smoothness_hand_values():
    image = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(4))
    assert disparity_smoothness(torch.full((2, 1, 8, 12), 0.37), image).item() == 0.0
    disp = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])[None, None]  # mean 2 -> [0.5, 1, 1.5]
    flat = torch.zeros(1, 3, 2, 3)
    assert disparity_smoothness(disp, flat).item() == pytest.approx(0.5)
    edge = flat.clone()
    edge[..., 2] = 1.0  # an image edge between columns 1 and 2 damps that gradient by e^-1
    assert disparity_smoothness(disp, edge).item() == pytest.approx((0.5 + 0.5 * math.exp(-1)) / 2)
    assert edge_aware_smoothness(torch.full((1, 3, 2, 3), 0.2), edge).item() == 0.0


def test_ramp():
    assert [ramp(p) for p in (0.0, 1 / 6, 1 / 3, 0.9, 1.0)] == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="phase_progress"):
        ramp(1.5)


def _plane_scene(shift_px: int = 3) -> dict[str, torch.Tensor]:
    """Target = texture f; next = f shifted so that X + (0.3, 0, 0) m reproduces f; prev the opposite."""
    texture = torch.rand(1, 3, H, W + 2 * shift_px, generator=torch.Generator().manual_seed(5))
    target = texture[..., shift_px: W + shift_px]
    next_image, prev_image = texture[..., :W], texture[..., 2 * shift_px:]
    return {"images": torch.stack([prev_image, target, next_image], dim=1), "K": _K()}


def _outputs(*, depth: float, prev_t: float, next_t: float, flow_x: float, mask_logit: float):
    out = {"source_from_target_prev": _translation(prev_t), "source_from_target_next": _translation(next_t)}
    for s in range(4):
        h, w = H // 2**s, W // 2**s
        out[f"disp_{s}"] = depth_to_disp(torch.full((1, 1, h, w), depth))
        out[f"flow_{s}"] = torch.tensor([flow_x, 0.0, 0.0]).reshape(1, 3, 1, 1).expand(1, 3, h, w)
        out[f"mask_logits_{s}"] = torch.full((1, 1, h, w), mask_logit)
        out[f"mask_{s}"] = torch.sigmoid(out[f"mask_logits_{s}"])
    return out


def test_disp_init_true_geometry_has_near_zero_photometric_loss():
    scene = _plane_scene()
    good = compute_losses(scene, _outputs(depth=PLANE_Z, prev_t=-0.3, next_t=0.3, flow_x=0, mask_logit=0),
                          phase="disp_init", phase_progress=0.0)
    assert set(good) == {*TERMS, "total"}
    assert good["photometric"].item() < 1e-4 and good["ground"].item() < 1e-5 and good["smoothness"].item() == 0
    assert all(good[t].item() == 0 for t in TERMS if t not in PHASE_TERMS["disp_init"])
    wrong = compute_losses(scene, _outputs(depth=1.5 * PLANE_Z, prev_t=-0.3, next_t=0.3, flow_x=0, mask_logit=0),
                           phase="disp_init", phase_progress=0.0)
    assert wrong["photometric"].item() > 0.01


def test_motion_init_complete_flow_alone_explains_a_moving_plane():
    scene = _plane_scene()  # static camera (identity poses), the plane moves 0.3 m right per frame
    moving = compute_losses(scene, _outputs(depth=PLANE_Z, prev_t=0, next_t=0, flow_x=0.3, mask_logit=0),
                            phase="motion_init", phase_progress=1.0)
    assert moving["photometric"].item() < 1e-4 and moving["flow_smoothness"].item() == 0
    still = compute_losses(scene, _outputs(depth=PLANE_Z, prev_t=0, next_t=0, flow_x=0.0, mask_logit=0),
                           phase="motion_init", phase_progress=1.0)
    assert still["photometric"].item() > 0.01


def test_mask_init_consistency_and_sparsity_hand_values():
    scene = _plane_scene()
    # mask ~1: the flow explains the motion; no static pixels -> consistency 0
    moving = compute_losses(scene, _outputs(depth=PLANE_Z, prev_t=0, next_t=0, flow_x=0.3, mask_logit=20.0),
                            phase="mask_init", phase_progress=1.0)
    assert moving["photometric"].item() < 1e-4 and moving["consistency"].item() == 0
    # mask ~0 with the same flow: every pixel is static and 1/depth = 0.1 > 0.03, ego flow 0 -> |C|_1 = 0.3
    static = compute_losses(scene, _outputs(depth=PLANE_Z, prev_t=0, next_t=0, flow_x=0.3, mask_logit=-20.0),
                            phase="mask_init", phase_progress=1.0)
    assert static["consistency"].item() == pytest.approx(0.3, abs=1e-5)
    assert static["mask_sparsity"].item() == 0  # flows disagree everywhere: no sparsity pixels
    assert static["photometric"].item() > 0.01


def test_fine_tune_total_is_the_weighted_ramped_sum():
    """Camera moves 0.3 m right per frame and C equals the ego flow: flows agree everywhere, so the
    sparsity term is BCE(sigmoid(-1), 0) = softplus(-1); consistency is 0; total = 0.5 * 0.04 * softplus(-1)."""
    scene = _plane_scene()
    losses = compute_losses(scene, _outputs(depth=PLANE_Z, prev_t=-0.3, next_t=0.3, flow_x=0.3, mask_logit=-1.0),
                            phase="fine_tune", phase_progress=1 / 6)
    softplus_minus_one = math.log1p(math.exp(-1.0))
    assert losses["mask_sparsity"].item() == pytest.approx(softplus_minus_one, abs=1e-5)
    assert losses["consistency"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["mask_smoothness"].item() == 0 and losses["flow_smoothness"].item() == 0
    assert losses["photometric"].item() < 1e-4
    assert losses["total"].item() == pytest.approx(0.5 * 0.04 * softplus_minus_one, abs=2e-4)
    assert set(RAMPED_TERMS) <= set(PHASE_TERMS["fine_tune"]) and set(PHASE_TERMS) == set(PHASES)


def test_bad_inputs_name_the_key():
    scene = _plane_scene()
    outputs = _outputs(depth=PLANE_Z, prev_t=0, next_t=0, flow_x=0.3, mask_logit=0)
    del outputs["flow_0"]
    with pytest.raises(ValueError, match="missing key 'flow_0'"):
        compute_losses(scene, outputs, phase="motion_init", phase_progress=0.5)
    with pytest.raises(ValueError, match="missing key 'K'"):
        compute_losses({"images": scene["images"]}, outputs, phase="disp_init", phase_progress=0.5)
    with pytest.raises(ValueError, match="unknown phase"):
        compute_losses(scene, outputs, phase="warmup", phase_progress=0.5)
    with pytest.raises(ValueError, match=r"inputs\['K'\] must be \(1, 3, 3\)"):
        compute_losses({"images": scene["images"], "K": torch.eye(3)}, outputs, phase="disp_init", phase_progress=0)
    with pytest.raises(ValueError, match="phase_progress"):
        compute_losses(scene, outputs, phase="motion_init", phase_progress=-0.1)
    one_scale = compute_losses(scene, outputs, phase="motion_init", phase_progress=1.0,
                               settings=LossSettings(scales=(1,)))
    assert one_scale["photometric"].item() < 1e-4  # flow_0 is not needed when only scale 1 is used
