"""Parity with the original Dynamo-Depth on the stored fixtures (``tests/parity_fixture.py``).

Loss / warping half: the network outputs are taken from the fixture (disp|0|s, axisangle, translation,
cam_T_cam|0|f, complete_flow|1|s, motion_prob|1|s), the batch from inputs.npz, the random draws are
replayed; our warps and losses must reproduce every stored warp tensor and every loss entry.
``pytest -s`` prints the largest difference per tensor family and per loss term.

Tolerances: maps max |ours - theirs| <= 1e-4; ``sample*`` grids are ill-conditioned where a point
lands near the camera plane (division by z + 1e-7: the original moves them by 0.5 relative between 1
and 2 threads), so they are compared absolutely where the stored coordinate is within [-2, 2]
(the pixels that decide the warped colour) and only loosely (relative <= 1) elsewhere. Loss terms
<= 1e-4 relative, except d_ground with our own RANSAC fit, whose near-degenerate 5-point hypotheses
and discontinuous argmax make it float-noise sensitive (1e-3 relative); with the stored plane forced
it must match to 1e-5.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamo_depth.config import LossWeights
from dynamo_depth.models.depth import disp_to_depth
from dynamo_depth.models.outputs import ModelOutputs
from dynamo_depth.objective.ground_plane import (
    ground_disp_diff,
    ground_loss,
    ground_points,
    ransac_plane,
    score_hypotheses,
)
from dynamo_depth.objective.inputs import LossBatch, LossSettings, ReplayedDraws, intrinsics_pyramid, target_pyramid
from dynamo_depth.objective.losses import ORIGINAL_TERM_NAMES, LossResult, compute_losses
from dynamo_depth.objective.view_synthesis import resize
from tests.parity_fixture import ParityFixture, Stored, fixture_folders

pytestmark = pytest.mark.shared
FOLDERS = fixture_folders()
SKIP = pytest.mark.skip(reason="no parity fixture folder (set DYNAMO_PARITY_FIXTURES or add <repo>/../shared/reference/parity_*)")
MAP_TOL = 1e-4
LOSS_RTOL = 1e-4
GROUND_RTOL = 1e-3
SAMPLE_IN_IMAGE = 2.0


@functools.cache
def load_fixture(folder: Path) -> ParityFixture:
    """The cached reader of one fixture folder (shared by the loss and the network halves)."""
    return ParityFixture(folder)


def _cases(per_phase: bool, phases: tuple[str, ...] | None = None) -> list:
    params = []
    for folder in FOLDERS:
        for phase in (load_fixture(folder).phases if per_phase else [None]):
            if phases is None or phase in phases:
                params.append(pytest.param(folder, phase, id=folder.name + (f"-{phase}" if phase else "")))
    return params or [pytest.param(None, None, marks=SKIP, id="no-fixture")]


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def fixture_settings(fx: ParityFixture, *, scoring: str = "original") -> LossSettings:
    """LossSettings from the original's parsed options (``fixture.json`` ``opt``)."""
    opt = fx.config["opt"]
    return LossSettings(scales=tuple(fx.scales), min_depth=opt["min_depth"], max_depth=opt["max_depth"],
                        ssim_weight=opt["ssim_weight"], mask_disp_threshold=opt["mask_disp_thrd"],
                        ground_prior=opt["gp_prior"], ground_tolerance=opt["gp_tol"],
                        ransac_iterations=opt["gp_max_it"], ransac_points=opt["gp_np_per_it"], ransac_scoring=scoring)


def fixture_weights(fx: ParityFixture) -> LossWeights:
    opt = fx.config["opt"]
    return LossWeights(**{ours: opt[f"g_{theirs}"] for ours, theirs in ORIGINAL_TERM_NAMES.items()})


@functools.cache
def fixture_batch(folder: Path) -> LossBatch:
    """The LossBatch of inputs.npz (stored pyramid, K, inv_K; ts as float)."""
    fx = load_fixture(folder)
    color = {f: _t(fx.input(f"color|{f}|0")) for f in (-1, 0, 1)}
    pyramid = {s: color[0] if s == 0 else _t(fx.input(f"color|0|{s}")) for s in fx.scales}
    return LossBatch(color=color, target_pyramid=pyramid, K={s: _t(fx.input(f"K|{s}")) for s in fx.scales},
                     inv_K={s: _t(fx.input(f"inv_K|{s}")) for s in fx.scales},
                     ts={f: _t(fx.input(f"ts|{f}")).float() for f in (-1, 1)})


def fixture_outputs(fx: ParityFixture, phase: str) -> ModelOutputs:
    """The network outputs the original produced in ``phase`` (complete flow / logits only where run)."""
    keys = set(fx.output_keys(phase))

    def get(key: str) -> torch.Tensor:
        return _t(fx.output(phase, key).value)

    return ModelOutputs(
        disp={s: get(f"disp|0|{s}") for s in fx.scales},
        axisangle={f: get(f"axisangle|0|{f}") for f in (-1, 1)},
        translation={f: get(f"translation|0|{f}") for f in (-1, 1)},
        cam_T_cam={f: get(f"cam_T_cam|0|{f}") for f in (-1, 1)},
        complete_flow={s: get(f"complete_flow|1|{s}") for s in fx.scales} if "complete_flow|1|0" in keys else {},
        motion_logits={s: get(f"motion_prob|1|{s}") for s in fx.scales} if "motion_prob|1|0" in keys else {},
    )


def fixture_draws(fx: ParityFixture, phase: str) -> ReplayedDraws:
    draws = fx.draws(phase)
    return ReplayedDraws(
        automask_randn={s: _t(draws[f"automask_randn|{s}"]) for s in fx.scales if f"automask_randn|{s}" in draws},
        ransac={s: _t(draws[f"ransac_indices|{s}"]) for s in fx.scales if f"ransac_indices|{s}" in draws})


@functools.cache
def run_losses(folder: Path, phase: str, scoring: str = "original") -> LossResult:
    """Our warps and losses on the fixture's batch, outputs and draws (ramp saturated, as the fixture)."""
    fx = load_fixture(folder)
    with torch.no_grad():
        return compute_losses(fixture_batch(folder), fixture_outputs(fx, phase), phase=phase, ramp_factor=1.0,
                              weights=fixture_weights(fx), settings=fixture_settings(fx, scoring=scoring),
                              draws=fixture_draws(fx, phase))


def _report(title: str, rows: dict[str, str]) -> None:
    print(f"\n{title}")
    for name, text in rows.items():
        print(f"  {name:<22} {text}")


@pytest.mark.parametrize("folder, phase", _cases(per_phase=False))
def test_inputs_pyramid_and_intrinsics(folder: Path, phase: None) -> None:
    """target_pyramid reproduces color|0|s; intrinsics_pyramid gives K|s bitwise, inv_K|s to LAPACK rounding."""
    fx = load_fixture(folder)
    color0 = _t(fx.input("color|0|0"))
    pyramid = target_pyramid(color0, scales=fx.scales)
    K0 = fx.input("K|0")
    Ks, inv_Ks = intrinsics_pyramid(K0, height=color0.shape[2], width=color0.shape[3], scales=fx.scales,
                                    normalised=False)
    rows = {}
    for s in fx.scales:
        pyr = float(np.abs(pyramid[s].numpy() - fx.input(f"color|0|{s}")).max())
        inv = float(np.abs(inv_Ks[s].numpy() - fx.input(f"inv_K|{s}")).max())
        rows[f"scale {s}"] = f"pyramid {pyr:.3g}  K bitwise {np.array_equal(Ks[s].numpy(), fx.input(f'K|{s}'))}  inv_K {inv:.3g}"
        assert pyr <= 1e-6
        np.testing.assert_array_equal(Ks[s].numpy(), fx.input(f"K|{s}"))
        assert inv <= 1e-7
    _report(f"{fx.name} inputs", rows)


def _expected_missing(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """What the original stores for a tensor a phase does not compute: zero flows, a mask of ones."""
    return np.ones(shape, np.float32) if key.startswith("motion_mask_r") else np.zeros(shape, np.float32)


def _our_warp_tensors(result: LossResult, fx: ParityFixture, phase: str) -> dict[str, torch.Tensor | None]:
    """Our tensors under the fixture's keys (``cam_points`` with the original's motion_init quirk applied)."""
    batch, outputs = fixture_batch(fx.folder), fixture_outputs(fx, phase)
    ours: dict[str, torch.Tensor | None] = {}
    for s, sw in result.warps.scales.items():
        cam = sw.cam_points
        if phase == "motion_init":  # the original's stored cam_points holds P + C_1 (in-place add)
            flow = resize(outputs.complete_flow[s], batch.size) * batch.ts[1].view(-1, 1, 1, 1)
            cam = cam + torch.cat([flow.flatten(2), torch.zeros_like(cam[:, :1])], dim=1)
        ours.update({f"depth|0|{s}": sw.depth, f"disp_scaled|0|{s}": sw.disp_scaled, f"cam_points|0|{s}": cam})
        for f, fw in sw.frames.items():
            for name in ("sample", "color", "ego_flow", "independ_flow", "residual_flow", "motion_mask_r",
                         "sample_ego", "sample_complete"):
                ours[f"{name}|{f}|{s}"] = getattr(fw, name)
            if outputs.motion_logits:
                ours[f"motion_mask|{f}|{s}"] = outputs.motion_mask(s)
    return ours


def _compare(key: str, ours: np.ndarray, stored: Stored) -> tuple[float, float]:
    """(max abs diff, max rel diff |a - b| / max(|b|, 1)); for sample* the abs diff is over in-image coordinates."""
    mine, theirs = stored.view(ours), stored.value
    diff = np.abs(mine.astype(np.float64) - theirs)
    rel = float((diff / np.maximum(np.abs(theirs), 1.0)).max())
    if key.startswith("sample"):
        inside = np.abs(theirs) <= SAMPLE_IN_IMAGE
        return float(diff[inside].max()), rel
    return float(diff.max()), rel


@pytest.mark.parametrize("folder, phase", _cases(per_phase=True))
def test_warps(folder: Path, phase: str) -> None:
    """Every stored warp tensor family (full or at the sample indices) matches."""
    fx = load_fixture(folder)
    ours = _our_warp_tensors(run_losses(folder, phase), fx, phase)
    keys = set(fx.output_keys(phase))
    worst: dict[str, tuple[float, float]] = {}
    for key, tensor in ours.items():
        if key not in keys:
            assert key.startswith(("sample_complete", "sample_ego")) or tensor is None, f"{key} not stored"
            continue
        stored = fx.output(phase, key)
        value = _expected_missing(key, stored.shape) if tensor is None else tensor.detach().numpy()
        a, r = _compare(key, value, stored)
        family = key.split("|")[0]
        worst[family] = (max(a, worst.get(family, (0, 0))[0]), max(r, worst.get(family, (0, 0))[1]))
    _report(f"{fx.name} {phase} warps: max abs (sample*: in-image) / max rel",
            {k: f"{a:.3g} / {r:.3g}" for k, (a, r) in sorted(worst.items())})
    stored_families = {k.split("|")[0] for k in keys} & {k.split("|")[0] for k in ours}
    assert stored_families == set(worst)
    for family, (a, r) in worst.items():
        assert a <= MAP_TOL, f"{family}: max abs diff {a}"
        assert r <= (1.0 if family.startswith("sample") else MAP_TOL), f"{family}: max rel diff {r}"


def _rel(ours: torch.Tensor, theirs: float) -> float:
    return abs(float(ours) - theirs) / max(abs(theirs), 1e-12)


@pytest.mark.parametrize("folder, phase", _cases(per_phase=True))
def test_losses(folder: Path, phase: str) -> None:
    """Every per-scale term, loss_term/<term>, loss_term/<s> and loss match (relative)."""
    fx = load_fixture(folder)
    result, stored = run_losses(folder, phase), fx.losses(phase)
    worst: dict[str, float] = {}
    for s in fx.scales:
        for ours_name, name in ORIGINAL_TERM_NAMES.items():
            entry = stored["per_scale"][str(s)][name]
            assert (ours_name in result.per_scale[s]) == entry["computed"], f"{name} scale {s}"
            if entry["computed"]:
                worst[name] = max(worst.get(name, 0.0), _rel(result.per_scale[s][ours_name], entry["value"]))
        worst["loss_term/<s>"] = max(worst.get("loss_term/<s>", 0.0),
                                     _rel(result.scale_totals[s], stored["losses"][f"loss_term/{s}"]["value"]))
    for ours_name, name in ORIGINAL_TERM_NAMES.items():
        entry = stored["losses"][f"loss_term/{name}"]
        assert (ours_name in result.terms) == entry["computed"]
        if entry["computed"]:
            worst[f"loss_term/{name}"] = _rel(result.terms[ours_name], entry["value"])
    worst["loss"] = _rel(result.total, stored["losses"]["loss"]["value"])
    flips = _identity_flips(result, fx, phase)
    _report(f"{fx.name} {phase} losses: max rel diff", {**{k: f"{v:.3g}" for k, v in worst.items()}, **flips})
    for name, value in worst.items():
        ground = "d_ground" in name or (phase == "fine_tune" and name in ("loss", "loss_term/<s>"))
        assert value <= (GROUND_RTOL if ground else LOSS_RTOL), f"{name}: {value}"


def _identity_flips(result: LossResult, fx: ParityFixture, phase: str) -> dict[str, str]:
    """disp_init: identity_selection pixels that differ (near-ties of the per-pixel minimum), at most 0.1%."""
    rows = {}
    for s, ours in result.identity_selection.items():
        theirs = fx.output(phase, f"identity_selection/{s}").value
        flips = int((ours.numpy() != theirs).sum())
        rows[f"identity_selection/{s}"] = f"{flips} of {theirs.size} pixels differ"
        assert flips <= 1e-3 * theirs.size
    return rows


GROUND_CASES = _cases(per_phase=True, phases=("fine_tune",))


@pytest.mark.parametrize("folder, phase", GROUND_CASES)
def test_ground_with_forced_plane(folder: Path, phase: str) -> None:
    """With the stored plane_param|s, our disp_diff and d_ground equal the original's."""
    fx = load_fixture(folder)
    outputs, batch, draws = fixture_outputs(fx, phase), fixture_batch(folder), fx.draws(phase)
    settings, per_scale = fixture_settings(fx), fx.losses(phase)["per_scale"]
    rows = {}
    for s in fx.scales:
        diff = ground_disp_diff(outputs.disp[s], batch.inv_K[s], _t(draws[f"plane_param|{s}"]), settings=settings)
        loss = ground_loss(diff, scale=s)
        d_diff = float(np.abs(diff.numpy() - draws[f"disp_diff|{s}"]).max())
        clamped = float(np.abs(diff.clamp(max=0).numpy() - draws[f"disp_diff_clamped|{s}"]).max())
        rel = _rel(loss, per_scale[str(s)]["d_ground"]["value"])
        rows[f"scale {s}"] = f"disp_diff {d_diff:.3g}  clamped {clamped:.3g}  d_ground rel {rel:.3g}"
        assert d_diff <= MAP_TOL and clamped <= MAP_TOL and rel <= 1e-5
    _report(f"{fx.name} ground, stored plane forced: max abs / rel diff", rows)


def _points64(fx: ParityFixture, phase: str, scale: int, settings: LossSettings) -> np.ndarray:
    """Independent float64 ground candidates (B, N, 3) of the bottom int(prior * h) rows, row-major."""
    disp = fx.output(phase, f"disp|0|{scale}").value.astype(np.float64)
    inv_K = fx.input(f"inv_K|{scale}").astype(np.float64)[:, :3, :3]
    _, depth = disp_to_depth(disp, min_depth=settings.min_depth, max_depth=settings.max_depth)
    batch, _, h, w = disp.shape
    v, u = np.mgrid[0:h, 0:w]
    rays = np.einsum("bij,jn->bin", inv_K, np.stack([u.ravel(), v.ravel(), np.ones(h * w)]))
    points = (rays * depth.reshape(batch, 1, -1)).reshape(batch, 3, h, w)
    rows = int(settings.ground_prior * h)
    return points[:, :, h - rows:].reshape(batch, 3, -1).transpose(0, 2, 1)


def _brute_shares(points: np.ndarray, hypotheses: np.ndarray, tol: float) -> np.ndarray:
    """Inlier share (B, I) of hypothesis (b, it) on image b, float64."""
    pred = np.einsum("bik,bnk->bin", hypotheses[..., :2], points[..., [0, 2]]) + hypotheses[..., 2:3]
    return (np.abs(pred - points[:, None, :, 1]) < tol).mean(axis=-1)


@pytest.mark.parametrize("folder, phase", GROUND_CASES)
def test_ransac_original_scoring(folder: Path, phase: str) -> None:
    """scoring='original' with the stored indices reproduces hypotheses, scored_on, shares, best and plane."""
    fx = load_fixture(folder)
    settings, outputs, batch, draws = fixture_settings(fx), fixture_outputs(fx, phase), fixture_batch(folder), fx.draws(phase)
    replay = fixture_draws(fx, phase)
    rows = {}
    for s in fx.scales:
        fit = ransac_plane(outputs.disp[s], batch.inv_K[s], scale=s, draws=replay, settings=settings)
        n_points = int(draws[f"ransac_N|{s}"].reshape(-1)[0])
        hyp = float(np.abs(fit.hypotheses.numpy() - draws[f"ransac_hypotheses|{s}"]).max())
        share = float(np.abs(fit.inlier_share.numpy() - draws[f"ransac_inlier_frac|{s}"]).max())
        plane = float(np.abs(fit.plane.numpy() - draws[f"plane_param|{s}"]).max())
        same_best = np.array_equal(fit.best.numpy(), draws[f"ransac_best|{s}"])
        rows[f"scale {s}"] = (f"hypotheses {hyp:.3g}  shares {share:.3g} (1/N = {1 / n_points:.3g})  "
                              f"best equal {same_best}  plane {plane:.3g}")
        np.testing.assert_array_equal(fit.scored_on.numpy(), draws[f"ransac_scored_on|{s}"])
        # near-degenerate 5-point fits amplify float noise (the original moves them by ~1e-2 between thread
        # counts): a loose bound on every hypothesis, a tight one on the typical one
        np.testing.assert_allclose(fit.hypotheses.numpy(), draws[f"ransac_hypotheses|{s}"], rtol=1e-2, atol=1e-2)
        assert float(np.median(np.abs(fit.hypotheses.numpy() - draws[f"ransac_hypotheses|{s}"]))) <= 1e-6
        points = ground_points(outputs.disp[s], batch.inv_K[s], settings=settings)
        their_shares = score_hypotheses(points, _t(draws[f"ransac_hypotheses|{s}"]), fit.scored_on,
                                        tolerance=settings.ground_tolerance)
        scoring = float(np.abs(their_shares.numpy() - draws[f"ransac_inlier_frac|{s}"]).max())
        rows[f"scale {s}"] += f"  their hypotheses scored {scoring:.3g}"
        assert scoring <= 2.0 / n_points  # our scoring of their hypotheses: at most 2 threshold flips
        assert share <= 8.0 / n_points  # our own hypotheses move by float noise: a few threshold flips
        if not same_best:  # a near-tie of the argmax: their choice must score as well as ours, to 3 points
            theirs = fit.inlier_share.numpy()[np.arange(len(fit.best)), draws[f"ransac_best|{s}"]]
            assert np.all(theirs >= fit.inlier_share.numpy().max(axis=1) - 3.0 / n_points)
        else:
            assert plane <= 1e-3
    _report(f"{fx.name} RANSAC (original scoring, replayed indices): max abs diff", rows)


@pytest.mark.parametrize("folder, phase", GROUND_CASES)
def test_ransac_own_image_scoring(folder: Path, phase: str) -> None:
    """Default scoring picks, per image, the hypothesis with the largest inlier share on that image
    (checked against an independent float64 brute force over the same hypotheses)."""
    fx = load_fixture(folder)
    settings = fixture_settings(fx, scoring="own_image")
    outputs, batch, replay = fixture_outputs(fx, phase), fixture_batch(folder), fixture_draws(fx, phase)
    rows = {}
    for s in fx.scales:
        fit = ransac_plane(outputs.disp[s], batch.inv_K[s], scale=s, draws=replay, settings=settings)
        points = _points64(fx, phase, s, settings)
        shares = _brute_shares(points, fit.hypotheses.numpy().astype(np.float64), settings.ground_tolerance)
        items = np.arange(points.shape[0])
        chosen = shares[items, fit.best.numpy()]
        gap = float((shares.max(axis=1) - chosen).max())
        rows[f"scale {s}"] = f"best {fit.best.tolist()}  share {np.round(chosen, 4).tolist()}  gap to brute-force max {gap:.3g}"
        np.testing.assert_array_equal(fit.scored_on.numpy(), np.broadcast_to(items[:, None], fit.scored_on.shape))
        np.testing.assert_array_equal(fit.plane.numpy(), fit.hypotheses.numpy()[items, fit.best.numpy()])
        assert gap <= 2.0 / points.shape[1]
        assert float(np.abs(fit.inlier_share.numpy() - shares).max()) <= 3.0 / points.shape[1]
    _report(f"{fx.name} RANSAC (own-image scoring)", rows)
