"""Warping and losses against hand-computed values on synthetic textured planes (parity: test_parity.py)."""

from __future__ import annotations

import math

import pytest
import torch

from dynamo_depth.config import LossWeights
from dynamo_depth.models.depth import depth_to_disp, disp_to_depth
from dynamo_depth.models.outputs import ModelOutputs
from dynamo_depth.objective.ground_plane import fit_hypotheses, ground_disp_diff, ground_loss, ransac_plane
from dynamo_depth.objective.inputs import (
    LossBatch,
    LossSettings,
    ReplayedDraws,
    SeededDraws,
    intrinsics_pyramid,
    make_loss_batch,
    target_pyramid,
)
from dynamo_depth.objective.losses import (
    PHASE_TERMS,
    RAMPED_TERMS,
    TERMS,
    compute_losses,
    disparity_smoothness,
    edge_aware_smoothness,
    photometric_error,
    ssim_loss,
)
from dynamo_depth.objective.view_synthesis import generate_warps
from dynamo_depth.objective.warping import pixel_grid, project_to_grid, warp_source_to_target

torch.set_num_threads(2)
H, W, FOCAL, PLANE_Z, STEP = 32, 64, 100.0, 2.0, 0.06  # STEP m at PLANE_Z m moves FOCAL * STEP / PLANE_Z = 3 px


def _K(batch: int = 1) -> torch.Tensor:
    return torch.tensor([[FOCAL, 0, (W - 1) / 2], [0, FOCAL, (H - 1) / 2], [0, 0, 1]]).expand(batch, 3, 3)


def _translation(x: float, z: float = 0.0, batch: int = 1) -> torch.Tensor:
    transform = torch.eye(4).repeat(batch, 1, 1)
    transform[:, 0, 3], transform[:, 2, 3] = x, z
    return transform


def _warp(source: torch.Tensor, depth: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    K = _K(source.shape[0])
    return warp_source_to_target(source, depth=depth, source_from_target=transform, K=K, inv_K=torch.linalg.inv(K))


def test_ssim_and_photometric_hand_values():
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert ssim_loss(image, image).abs().max() < 1e-5 and photometric_error(image, image).abs().max() < 1e-5
    a = torch.full((1, 3, 8, 8), 0.2, dtype=torch.float64)  # constant images: variances 0, C2 / C2 = 1
    b = torch.full((1, 3, 8, 8), 0.6, dtype=torch.float64)
    ssim = (2 * 0.2 * 0.6 + 0.01**2) / (0.2**2 + 0.6**2 + 0.01**2)
    assert torch.allclose(ssim_loss(a, b), torch.full_like(a, (1 - ssim) / 2), atol=1e-7)
    expected = 0.85 * (1 - ssim) / 2 + 0.15 * 0.4
    assert torch.allclose(photometric_error(a, b), torch.full((1, 1, 8, 8), expected, dtype=torch.float64), atol=1e-7)


def test_projection_of_a_known_point():
    """(1, 0.5, 10) m: u = 100 * 0.1 + 31.5 = 41.5, v = 100 * 0.05 + 15.5 = 20.5 -> x = 2u / 63 - 1, y = 2v / 31 - 1."""
    points = torch.zeros(1, 3, H * W, dtype=torch.float64)
    points[0, :, 0] = torch.tensor([1.0, 0.5, 10.0], dtype=torch.float64)
    points[0, 2, 1:] = 1.0
    grid = project_to_grid(points, _K().double(), height=H, width=W)
    assert grid[0, 0, 0].tolist() == pytest.approx([2 * 41.5 / 63 - 1, 2 * 20.5 / 31 - 1], abs=1e-7)
    moved = project_to_grid(points, _K().double(), height=H, width=W, transform=_translation(-1.0).double())
    assert moved[0, 0, 0, 0].item() == pytest.approx(2 * 31.5 / 63 - 1, abs=1e-7)  # x = 0 -> principal point


def test_identity_and_lateral_warps():
    target = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    depth = 1.0 + 50 * torch.rand(2, 1, H, W, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(_warp(target, depth, _translation(0.0, batch=2)), target, atol=1e-4)
    source = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(3))
    warped = _warp(source, torch.full((1, 1, H, W), PLANE_Z), _translation(STEP))
    columns = (torch.arange(W) + 3).clamp(max=W - 1)  # border padding repeats the last column
    assert torch.allclose(warped, source[..., columns], atol=1e-4)


def test_forward_translation_magnifies_an_affine_texture():
    u, v = (c.reshape(H, W) for c in pixel_grid(H, W)[:2])
    texture = lambda uu, vv: torch.stack([0.01 * uu + 0.02 * vv, 0.5 - 0.005 * uu, 0.03 * vv + 0.1])[None]  # noqa: E731
    forward = _warp(texture(u, v), torch.full((1, 1, H, W), 10.0), _translation(0.0, z=-2.0))  # z_src = 8 m
    cx, cy = (W - 1) / 2, (H - 1) / 2
    expected = texture((cx + (u - cx) * 10 / 8).clamp(0, W - 1), (cy + (v - cy) * 10 / 8).clamp(0, H - 1))
    assert torch.allclose(forward, expected, atol=1e-4)


def test_smoothness_hand_values():
    image = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(4))
    assert disparity_smoothness(torch.full((2, 1, 8, 12), 0.37), image).item() == 0.0
    disp = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])[None, None]  # mean 2 -> [0.5, 1, 1.5]
    flat = torch.zeros(1, 3, 2, 3)
    assert disparity_smoothness(disp, flat).item() == pytest.approx(0.5, rel=1e-6)
    edge = flat.clone()
    edge[..., 2] = 1.0  # an image edge between columns 1 and 2 damps that gradient by e^-1
    assert disparity_smoothness(disp, edge).item() == pytest.approx((0.5 + 0.5 * math.exp(-1)) / 2, rel=1e-6)
    assert edge_aware_smoothness(torch.full((1, 3, 2, 3), 0.2), edge).item() == 0.0


def test_pyramid_and_intrinsics_hand_values():
    image = torch.rand(2, 3, 8, 16, generator=torch.Generator().manual_seed(6))
    pyramid = target_pyramid(image, scales=(0, 1, 2))
    assert pyramid[0] is image and pyramid[2].shape == (2, 3, 2, 4) and 0 <= pyramid[1].min() <= pyramid[1].max() <= 1
    K_norm = torch.tensor([[0.5, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]]).expand(2, 3, 3).numpy()
    Ks, inv_Ks = intrinsics_pyramid(K_norm, height=8, width=16, scales=(0, 1), normalised=True)
    assert Ks[1][0, :3, :3].tolist() == [[4.0, 0.0, 4.0], [0.0, 4.0, 2.0], [0.0, 0.0, 1.0]] and Ks[1].shape == (2, 4, 4)
    assert torch.allclose(inv_Ks[1] @ Ks[1], torch.eye(4).expand(2, 4, 4), atol=1e-6)
    Ks_px, _ = intrinsics_pyramid(Ks[0].numpy(), height=8, width=16, scales=(0, 1), normalised=False)
    assert torch.equal(Ks_px[1], Ks[1])


def _scene(batch: int = 1, *, ts: float = 1.0) -> LossBatch:
    """Target = texture; frame +1 = the texture moved 3 px right in the image (a point at u is at u + 3), -1 moved left."""
    texture = torch.rand(1, 3, H, W + 6, generator=torch.Generator().manual_seed(5)).expand(batch, -1, -1, -1)
    color = {-1: texture[..., 6:], 0: texture[..., 3: W + 3], 1: texture[..., :W]}
    return make_loss_batch(color=color, K=_K(batch).numpy(), scales=(0, 1, 2, 3), normalised=False,
                           ts={f: torch.full((batch,), ts) for f in (-1, 1)})


def _outputs(*, batch: int = 1, depth: float = PLANE_Z, ego_x: float = 0.0, flow_x: float = 0.0,
             logit: float = 0.0) -> ModelOutputs:
    """Constant depth, camera +1 at ego_x (camera -1 opposite), complete flow (flow_x, 0, 0) m towards +1."""
    size = {s: (H // 2**s, W // 2**s) for s in range(4)}
    zeros = torch.zeros(batch, 1, 3)
    return ModelOutputs(
        disp={s: depth_to_disp(torch.full((batch, 1, *hw), depth), min_depth=0.1, max_depth=100.0) for s, hw in size.items()},
        axisangle={-1: zeros, 1: zeros}, translation={-1: zeros, 1: zeros},
        cam_T_cam={-1: _translation(-ego_x, batch=batch), 1: _translation(ego_x, batch=batch)},
        complete_flow={s: torch.tensor([flow_x, 0.0, 0.0]).reshape(1, 3, 1, 1).expand(batch, 3, *hw).clone()
                       for s, hw in size.items()},
        motion_logits={s: torch.full((batch, 1, *hw), logit) for s, hw in size.items()})


def _losses(batch: LossBatch, outputs: ModelOutputs, phase: str, ramp_factor: float = 1.0, **settings):
    return compute_losses(batch, outputs, phase=phase, ramp_factor=ramp_factor, settings=LossSettings(**settings),
                          draws=SeededDraws(0))


def test_disp_init_true_geometry_has_near_zero_photometric_loss():
    good = _losses(_scene(), _outputs(ego_x=STEP), "disp_init")
    assert set(good.terms) == set(PHASE_TERMS["disp_init"]) and set(good.per_scale) == {0, 1, 2, 3}
    assert good.terms["photometric"].item() < 1e-4 and good.terms["smoothness"].item() == 0
    assert good.identity_selection[0].shape == (1, H, W) and good.identity_selection[0].mean() > 0.5
    wrong = _losses(_scene(), _outputs(depth=1.5 * PLANE_Z, ego_x=STEP), "disp_init")
    assert wrong.terms["photometric"].item() > 0.01


def test_motion_init_complete_flow_and_ts_scaling():
    moving = _losses(_scene(), _outputs(flow_x=STEP), "motion_init")
    assert moving.terms["photometric"].item() < 1e-4 and moving.terms["flow_smoothness"].item() == 0
    assert _losses(_scene(), _outputs(), "motion_init").terms["photometric"].item() > 0.01
    # ts multiplies the complete flow: half the flow over twice the time warps identically
    halved = _losses(_scene(ts=2.0), _outputs(flow_x=STEP / 2), "motion_init")
    for s in (0, 3):
        assert torch.allclose(halved.warps.scales[s].frames[1].sample, moving.warps.scales[s].frames[1].sample, atol=1e-6)
    assert halved.terms["photometric"].item() == pytest.approx(moving.terms["photometric"].item(), abs=1e-6)


def test_mask_init_consistency_hand_value():
    """Static camera, flow (STEP, 0, 0), mask ~0: |residual| averages STEP / 3 over (x, y, z) for each source,
    disparity of 2 m > 0.03 everywhere -> per scale (STEP / 3) / 2^s, summed over 4 scales."""
    static = _losses(_scene(), _outputs(flow_x=STEP, logit=-20.0), "mask_init")
    expected = sum(STEP / 3 / 2**s for s in range(4))
    assert static.terms["consistency"].item() == pytest.approx(expected, rel=1e-5)
    assert static.terms["photometric"].item() > 0.01  # mask ~0: the rigid (static) warp is wrong
    moving = _losses(_scene(), _outputs(flow_x=STEP, logit=20.0), "mask_init")
    assert moving.terms["photometric"].item() < 1e-4 and moving.terms["consistency"].item() < 1e-9
    far = _losses(_scene(), _outputs(depth=50.0, flow_x=STEP, logit=-20.0), "mask_init")
    assert far.terms["consistency"].item() == 0  # disparity of 50 m < 0.03: no pixel counts


def test_mask_sparsity_hand_value_and_every_item_rule():
    """Flow only in the left half: ego and complete samples agree on the right half (static) -> BCE of the
    constant logit L towards 0 = softplus(L) per scale / 2^s (each source / 2, two sources)."""
    outputs = _outputs(batch=2, logit=-1.0)
    for flow in outputs.complete_flow.values():
        flow[:, 0, :, : flow.shape[3] // 2] = STEP
    result = _losses(_scene(batch=2), outputs, "mask_init")
    softplus = math.log1p(math.exp(-1.0))
    assert result.terms["mask_sparsity"].item() == pytest.approx(sum(softplus / 2**s for s in range(4)), rel=1e-5)
    uneven = _outputs(batch=2, logit=-1.0)  # item 0 agrees everywhere, item 1 nowhere: item 1 has no static pixel
    for flow in uneven.complete_flow.values():
        flow[1, 0] = STEP
    assert _losses(_scene(batch=2), uneven, "mask_init").terms["mask_sparsity"].item() == 0


def test_fine_tune_total_is_the_mean_of_weighted_ramped_scale_sums():
    result = _losses(_scene(), _outputs(ego_x=STEP, flow_x=STEP, logit=-1.0), "fine_tune", ramp_factor=0.5)
    assert set(result.terms) == set(TERMS) and set(RAMPED_TERMS) <= set(TERMS)
    weights = LossWeights()
    for s, values in result.per_scale.items():
        expected = sum(getattr(weights, n) * (0.5 if n in RAMPED_TERMS else 1.0) * v for n, v in values.items())
        assert result.scale_totals[s].item() == pytest.approx(float(expected), rel=1e-6)
    assert result.total.item() == pytest.approx(sum(float(v) for v in result.scale_totals.values()) / 4, rel=1e-6)
    for name in TERMS:
        assert result.terms[name].item() == pytest.approx(sum(float(v[name]) for v in result.per_scale.values()), rel=1e-6)
    assert result.terms["consistency"].item() < 1e-6  # the complete flow equals the ego flow
    assert result.terms["photometric"].item() < 1e-4


def test_batch_size_independent():
    one = _losses(_scene(batch=1), _outputs(batch=1, flow_x=STEP, logit=-1.0), "mask_init")
    two = _losses(_scene(batch=2), _outputs(batch=2, flow_x=STEP, logit=-1.0), "mask_init")
    for name, value in one.terms.items():
        assert two.terms[name].item() == pytest.approx(value.item(), rel=1e-6, abs=1e-9)


def _ground_scene(*, height: float = 1.5, slope: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid disparity (1, 1, H, W) of the plane y = slope * x + height (y down), 20 m above the horizon; inv_K."""
    inv_K = torch.linalg.inv(_K())
    rays = inv_K[0] @ pixel_grid(H, W)
    denominator = rays[1] - slope * rays[0]
    depth = torch.where(denominator > 0.05, height / denominator.clamp(min=0.05), torch.tensor(20.0))
    return depth_to_disp(depth.reshape(1, 1, H, W), min_depth=0.1, max_depth=100.0), inv_K


def test_ground_plane_fit_and_loss_hand_values():
    disp, inv_K = _ground_scene()
    settings = LossSettings()
    fit = ransac_plane(disp, inv_K, scale=0, draws=SeededDraws(3), settings=settings)
    assert fit.plane[0].tolist() == pytest.approx([0.1, 0.0, 1.5], abs=2e-3)  # (w1, w2, w3)
    rows = int(0.4 * H)
    rays = (inv_K[0] @ pixel_grid(H, W)).reshape(3, H, W)[:, H - rows:]
    on_ground = (rays[1] - 0.1 * rays[0] > 0.05).float()  # the rest is "sky" at 20 m
    assert fit.inlier_share[0, fit.best[0]].item() == pytest.approx(on_ground.mean().item(), abs=2 / (rows * W))
    assert fit.indices.shape == (1, 500) and torch.equal(fit.scored_on, torch.zeros(1, 100, dtype=torch.long))
    assert ground_loss(ground_disp_diff(disp, inv_K, fit.plane, settings=settings), scale=0).item() == 0
    # one bottom pixel twice as far as the ground (below the plane): d_ground = (disp_ground - disp) / (h w) / 2^s
    _, depth = disp_to_depth(disp, min_depth=0.1, max_depth=100.0)
    dipped = disp.clone()
    dipped[0, 0, -1, 10] = depth_to_disp(2 * depth[0, 0, -1, 10], min_depth=0.1, max_depth=100.0)
    ray = inv_K[0] @ torch.tensor([10.0, H - 1.0, 1.0])
    w1, w2, w3 = fit.plane[0].tolist()
    ground_depth = (w3 + 0.005) / (ray[1] - w1 * ray[0] - w2 * ray[2])
    expected = (depth_to_disp(ground_depth, min_depth=0.1, max_depth=100.0) - dipped[0, 0, -1, 10]) / (H * W) / 2
    loss = ground_loss(ground_disp_diff(dipped, inv_K, fit.plane, settings=settings), scale=1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_ground_plane_singular_systems_give_no_plane():
    """Points at the origin: A^T A + 1e-6 has two equal rows, exactly singular (the original raises)."""
    w = fit_hypotheses(torch.zeros(1, 10, 3), torch.arange(10)[None], points_per_hypothesis=5)
    assert w.shape == (1, 2, 3) and torch.isnan(w).all()
    disp, inv_K = _ground_scene()
    nan_plane = torch.full((1, 3), float("nan"))
    assert ground_loss(ground_disp_diff(disp, inv_K, nan_plane, settings=LossSettings()), scale=0).item() == 0


def test_draws_seeded_and_replayed():
    a, b = SeededDraws(7), SeededDraws(7)
    state = torch.get_rng_state()
    x = a.automask_noise(scale=0, shape=(2, 2, 4, 5), device=torch.device("cpu"))
    assert torch.equal(x, b.automask_noise(scale=0, shape=(2, 2, 4, 5), device=torch.device("cpu")))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    idx = a.ransac_indices(scale=0, batch=2, n_points=30)
    assert idx.shape == (2, 500) and idx.dtype == torch.int64 and 0 <= idx.min() and idx.max() < 30
    replay = ReplayedDraws(automask_randn={0: x}, ransac={0: idx})
    assert torch.equal(replay.automask_noise(scale=0, shape=(2, 2, 4, 5), device=torch.device("cpu")), x)
    with pytest.raises(ValueError, match="requested"):
        replay.ransac_indices(scale=0, batch=3, n_points=30)
    with pytest.raises(ValueError, match="allowed: \\[0\\]"):
        replay.automask_noise(scale=1, shape=(2, 2, 4, 5), device=torch.device("cpu"))


def test_bad_arguments_name_the_allowed_values():
    scene, outputs = _scene(), _outputs()
    with pytest.raises(ValueError, match="allowed: \\['disp_init'"):
        _losses(scene, outputs, "warmup")
    with pytest.raises(ValueError, match="ramp_factor"):
        _losses(scene, outputs, "motion_init", ramp_factor=1.5)
    with pytest.raises(ValueError, match="own_image"):
        LossSettings(ransac_scoring="best")
    with pytest.raises(ValueError, match="allowed: \\['disp_init'"):
        generate_warps(scene, outputs, phase="warmup", settings=LossSettings())
