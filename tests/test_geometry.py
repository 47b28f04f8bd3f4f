"""Tests of dynamo_depth.geometry against hand-computed values, OpenCV and the reference assets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynamo_depth import geometry as g
from dynamo_depth.objective import warping

SHARED = Path(__file__).resolve().parents[2] / "shared"
ASSETS = SHARED / "reference" / "dynamo_depth_assets"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason=f"{SHARED} (real fixtures/reference) is absent")

RZ90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return g.quaternion_to_matrix(q)


# ----------------------------------------------------------------------------- intrinsics
def test_resize_intrinsics_hand_values_and_batch():
    K = np.array([[1000.0, 0.0, 960.0], [0.0, 1000.0, 640.0], [0.0, 0.0, 1.0]])
    out = g.resize_intrinsics(K, from_hw=(1280, 1920), to_hw=(320, 480))
    np.testing.assert_allclose(out, [[250.0, 0.0, 240.0], [0.0, 250.0, 160.0], [0.0, 0.0, 1.0]], rtol=0, atol=1e-12)
    batch = g.resize_intrinsics(np.stack([K, 2 * K]), from_hw=(1280, 1920), to_hw=(640, 480))
    assert batch.shape == (2, 3, 3)
    np.testing.assert_allclose(batch[1, :2, :2], [[500.0, 0.0], [0.0, 1000.0]])
    norm = g.normalize_intrinsics(K, hw=(1280, 1920))
    np.testing.assert_allclose(norm[0], [1000 / 1920, 0.0, 0.5])
    np.testing.assert_allclose(norm[1], [0.0, 1000 / 1280, 0.5])
    np.testing.assert_allclose(g.denormalize_intrinsics(norm, hw=(1280, 1920)), K, atol=1e-12)


def test_bad_inputs_raise_value_error_naming_the_argument():
    with pytest.raises(ValueError, match="K: expected shape"):
        g.normalize_intrinsics(np.eye(4), hw=(10, 10))
    with pytest.raises(ValueError, match="hw"):
        g.normalize_intrinsics(np.eye(3), hw=(0, 10))
    with pytest.raises(ValueError, match="zero-norm"):
        g.quaternion_to_matrix([0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="dist"):
        g.undistort_points_opencv(np.zeros((1, 2)), K=np.eye(3), dist=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="compose"):
        g.compose()
    with pytest.raises(ValueError, match="depth"):
        g.backproject_pixels(np.zeros((4, 2)), np.ones(3), np.eye(3))
    with pytest.raises(ValueError, match="axis_angle must have a last dimension of 3"):
        warping.axis_angle_to_matrix(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="points must be"):
        warping.project_to_grid(torch.zeros(1, 3, 5), torch.eye(3)[None], height=2, width=3)


# ----------------------------------------------------------------------------- SE(3)
def test_invert_compose_transform_points_hand_values():
    T = np.eye(4)
    T[:3, :3] = RZ90
    T[:3, 3] = [1.0, 2.0, 3.0]
    # R^T = [[0,1,0],[-1,0,0],[0,0,1]], -R^T t = -(2, -1, 3)
    expected = np.array([[0, 1, 0, -2], [-1, 0, 0, 1], [0, 0, 1, -3], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_array_equal(g.invert_se3(T), expected)
    np.testing.assert_allclose(g.compose(T, g.invert_se3(T)), np.eye(4), atol=1e-15)
    pts = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(g.transform_points(T, pts), [[1.0, 3.0, 3.0], [1.0, 2.0, 3.0]])
    # batch dims (2, 5) broadcast against points (2, 5, N, 3)
    rng = np.random.default_rng(0)
    Ts = np.tile(np.eye(4), (2, 5, 1, 1))
    Ts[..., :3, :3] = _random_rotations(rng, 10).reshape(2, 5, 3, 3)
    Ts[..., :3, 3] = rng.normal(size=(2, 5, 3))
    np.testing.assert_allclose(g.invert_se3(Ts), np.linalg.inv(Ts), atol=1e-12)
    p = rng.normal(size=(2, 5, 7, 3))
    back = g.transform_points(g.invert_se3(Ts), g.transform_points(Ts, p))
    np.testing.assert_allclose(back, p, atol=1e-12)
    np.testing.assert_allclose(g.compose(Ts, Ts, Ts), Ts @ Ts @ Ts, atol=1e-12)


# ----------------------------------------------------------------------------- rotations
def test_axis_angle_90_degrees_and_small_angle_branch():
    np.testing.assert_allclose(g.axis_angle_to_matrix([0.0, 0.0, math.pi / 2]), RZ90, atol=1e-15)
    np.testing.assert_array_equal(g.axis_angle_to_matrix(np.zeros((2, 3))), np.tile(np.eye(3), (2, 1, 1)))
    for t in (1e-9, 3e-5, 2e-4):  # both sides of the Taylor threshold, exact to 1e-16
        c, s = math.cos(t), math.sin(t)
        rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
        np.testing.assert_allclose(g.axis_angle_to_matrix([t, 0.0, 0.0]), rx, rtol=0, atol=2e-16)
        np.testing.assert_allclose(g.matrix_to_axis_angle(rx), [t, 0.0, 0.0], rtol=1e-9, atol=1e-18)
    np.testing.assert_allclose(g.matrix_to_axis_angle(RZ90), [0.0, 0.0, math.pi / 2], atol=1e-15)


def test_axis_angle_round_trip_including_near_pi():
    rng = np.random.default_rng(1)
    axes = rng.normal(size=(50, 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    angles = np.concatenate([rng.uniform(0.0, math.pi, 46), [1e-12, 1e-7, math.pi - 1e-7, math.pi - 1e-3]])
    v = axes * angles[:, None]
    R = g.axis_angle_to_matrix(v)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.tile(np.eye(3), (50, 1, 1)), atol=1e-14)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-14)
    np.testing.assert_allclose(g.matrix_to_axis_angle(R), v, atol=1e-7)
    np.testing.assert_allclose(g.matrix_to_axis_angle(R[:46]), v[:46], atol=1e-10)
    # agrees with OpenCV's Rodrigues
    for vi, Ri in zip(v[:5], R[:5], strict=True):
        np.testing.assert_allclose(cv2.Rodrigues(vi)[0], Ri, atol=1e-12)


def test_quaternion_known_values_and_round_trip():
    h = math.sqrt(0.5)
    np.testing.assert_allclose(g.quaternion_to_matrix([h, 0.0, 0.0, h]), RZ90, atol=1e-15)
    np.testing.assert_allclose(g.quaternion_to_matrix([0.0, 1.0, 0.0, 0.0]), np.diag([1.0, -1.0, -1.0]), atol=0)
    np.testing.assert_allclose(g.quaternion_to_matrix([2.0, 0.0, 0.0, 0.0]), np.eye(3))  # normalised first
    np.testing.assert_allclose(g.matrix_to_quaternion(RZ90), [h, 0.0, 0.0, h], atol=1e-15)
    rng = np.random.default_rng(2)
    q = rng.normal(size=(3, 20, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q *= np.sign(q[..., :1])
    np.testing.assert_allclose(g.matrix_to_quaternion(g.quaternion_to_matrix(q)), q, atol=1e-12)
    for R in (np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])):
        np.testing.assert_allclose(g.quaternion_to_matrix(g.matrix_to_quaternion(R)), R, atol=1e-12)


def test_pose_from_translation_quaternion():
    h = math.sqrt(0.5)
    T = g.pose_from_translation_quaternion([1.0, 2.0, 3.0], [h, 0.0, 0.0, h])
    np.testing.assert_allclose(T @ [1.0, 0.0, 0.0, 1.0], [1.0, 3.0, 3.0, 1.0], atol=1e-15)
    assert g.pose_from_translation_quaternion(np.zeros((4, 3)), [1.0, 0, 0, 0]).shape == (4, 4, 4)


def test_rotation_from_rpy_order():
    np.testing.assert_allclose(g.rotation_from_rpy(0.0, 0.0, math.pi / 2), RZ90, atol=1e-15)
    # Rz(90) @ Rx(90): x -> y, y -> z (by Rx) -> z, z -> -y (by Rx) -> x
    expected = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(g.rotation_from_rpy(math.pi / 2, 0.0, math.pi / 2), expected, atol=1e-15)
    # pitch 90: Ry maps z -> x
    np.testing.assert_allclose(g.rotation_from_rpy(0.0, math.pi / 2, 0.0) @ [0, 0, 1], [1, 0, 0], atol=1e-15)
    assert g.rotation_from_rpy(np.zeros(5), 0.0, np.zeros(5)).shape == (5, 3, 3)


# ------------------------------------------------- torch rotations / poses (dynamo_depth.objective.warping, the training path)
def test_torch_axis_angle_matches_numpy_and_has_finite_gradient_at_zero():
    rng = np.random.default_rng(3)
    v = np.concatenate([rng.normal(size=(6, 3)), np.zeros((1, 3)), [[1e-6, -2e-6, 0.0]]])
    out = warping.axis_angle_to_matrix(torch.from_numpy(v))
    np.testing.assert_allclose(out.numpy(), g.axis_angle_to_matrix(v), atol=1e-15)
    zero = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    warping.axis_angle_to_matrix(zero)[1, 0].backward()  # R[1, 0] = v_z + O(|v|^2)
    np.testing.assert_allclose(zero.grad.numpy(), [0.0, 0.0, 1.0], atol=1e-15)


def test_pose_vector_to_matrix_and_invert():
    rng = np.random.default_rng(4)
    aa = torch.from_numpy(rng.normal(size=(3, 1, 3)))
    tr = torch.from_numpy(rng.normal(size=(3, 1, 3)))
    T = warping.pose_vector_to_matrix(aa, tr)
    assert T.shape == (3, 4, 4)
    np.testing.assert_allclose(T[:, :3, :3].numpy(), g.axis_angle_to_matrix(aa[:, 0].numpy()), atol=1e-15)
    np.testing.assert_allclose(T[:, :3, 3].numpy(), tr[:, 0].numpy())
    np.testing.assert_array_equal(T[:, 3].numpy(), np.tile([0.0, 0.0, 0.0, 1.0], (3, 1)))
    T_inv = warping.pose_vector_to_matrix(aa, tr, invert=True)
    np.testing.assert_allclose(T_inv.numpy(), g.invert_se3(T.numpy()), atol=1e-14)
    one = warping.pose_vector_to_matrix(torch.tensor([[[0.0, 0.0, math.pi / 2]]]), torch.tensor([[[1.0, 2.0, 3.0]]]))
    np.testing.assert_allclose(one[0, :3, :3].numpy(), RZ90, atol=1e-6)


# ----------------------------------------------------------------------------- axis conventions
def test_waymo_axis_change():
    # Waymo camera forward (x) is OpenCV z; left (y) is -x_cv; up (z) is -y_cv.
    np.testing.assert_array_equal(g.OPENCV_FROM_WAYMO_CAMERA @ [1.0, 0, 0, 1], [0, 0, 1.0, 1])
    np.testing.assert_array_equal(g.OPENCV_FROM_WAYMO_CAMERA @ [0, 1.0, 0, 1], [-1.0, 0, 0, 1])
    np.testing.assert_array_equal(g.OPENCV_FROM_WAYMO_CAMERA @ [0, 0, 1.0, 1], [0, -1.0, 0, 1])
    np.testing.assert_array_equal(g.OPENCV_FROM_WAYMO_CAMERA @ g.WAYMO_CAMERA_FROM_OPENCV, np.eye(4))
    vehicle_from_camera_waymo = np.eye(4)
    vehicle_from_camera_waymo[:3, 3] = [1.5, 0.0, 2.0]
    vehicle_from_camera_cv = g.waymo_camera_to_opencv(vehicle_from_camera_waymo)
    # a point 1 m ahead of the camera (OpenCV z) is 1 m ahead of it in the vehicle (x forward)
    np.testing.assert_allclose(vehicle_from_camera_cv @ [0, 0, 1.0, 1], [2.5, 0.0, 2.0, 1.0])
    # a point 1 m to the right (OpenCV x) is at vehicle y = -1 (y is left)
    np.testing.assert_allclose(vehicle_from_camera_cv @ [1.0, 0, 0, 1], [1.5, -1.0, 2.0, 1.0])
    np.testing.assert_array_equal(g.kitti_rect_camera_to_opencv(vehicle_from_camera_waymo), vehicle_from_camera_waymo)
    assert not g.OPENCV_FROM_WAYMO_CAMERA.flags.writeable


# ----------------------------------------------------------------------------- projection
K_SMALL = np.array([[100.0, 0.0, 50.0], [0.0, 200.0, 40.0], [0.0, 0.0, 1.0]])


def test_project_backproject_hand_values_and_round_trip():
    uv, z = g.project_points(np.array([[1.0, 2.0, 4.0]]), K_SMALL)
    np.testing.assert_allclose(uv, [[75.0, 140.0]])  # 100 * 1/4 + 50, 200 * 2/4 + 40
    np.testing.assert_allclose(z, [4.0])
    np.testing.assert_allclose(g.backproject_pixels(uv, z, K_SMALL), [[1.0, 2.0, 4.0]])
    np.testing.assert_array_equal(g.pixel_grid(2, 3), [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]])
    rng = np.random.default_rng(5)
    Ks = np.stack([K_SMALL, 2 * K_SMALL])
    Ks[:, 2, 2] = 1.0
    pix = np.broadcast_to(g.pixel_grid(4, 5), (2, 20, 2))
    depth = rng.uniform(1.0, 80.0, size=(2, 20))
    pts = g.backproject_pixels(pix, depth, Ks)
    uv2, z2 = g.project_points(pts, Ks)
    np.testing.assert_allclose(uv2, pix, atol=1e-10)
    np.testing.assert_allclose(z2, depth, rtol=1e-14)


def _torch_setup(b=2, h=4, w=6):
    rng = np.random.default_rng(6)
    K = torch.tensor([[5.0, 0.0, 2.5], [0.0, 4.0, 1.5], [0.0, 0.0, 1.0]], dtype=torch.float64).repeat(b, 1, 1)
    depth = torch.from_numpy(rng.uniform(1.0, 10.0, size=(b, 1, h, w)))
    image = torch.from_numpy(rng.uniform(size=(b, 3, h, w)))
    return K, depth, image


def test_torch_backproject_matches_numpy():
    K, depth, _ = _torch_setup()
    cam = warping.backproject(depth, torch.linalg.inv(K))
    assert cam.shape == (2, 3, 24)
    expected = g.backproject_pixels(g.pixel_grid(4, 6)[None], depth.reshape(2, 24).numpy(), K.numpy())
    np.testing.assert_allclose(cam.numpy(), np.swapaxes(expected, 1, 2), atol=1e-12)


def test_identity_warp_samples_each_pixel_centre():
    K, depth, image = _torch_setup()
    cam = warping.backproject(depth, torch.linalg.inv(K))
    grid = warping.project_to_grid(cam, K, height=4, width=6, transform=torch.eye(4, dtype=torch.float64).repeat(2, 1, 1))
    assert grid.shape == (2, 4, 6, 2)
    # pixel centre i of W=6 sits at 2 i / 5 - 1 for align_corners=True (z + 1e-7: ~1e-8 relative off)
    np.testing.assert_allclose(grid[0, 0, :, 0].numpy(), [2 * i / 5 - 1 for i in range(6)], atol=1e-7)
    np.testing.assert_allclose(grid[1, :, 0, 1].numpy(), [2 * j / 3 - 1 for j in range(4)], atol=1e-7)
    warped = warping.sample_image(image, grid)
    np.testing.assert_allclose(warped.numpy(), image.numpy(), atol=1e-6)
    grid32 = warping.project_to_grid(cam.float(), K.float(), height=4, width=6)
    assert grid32.dtype == torch.float32
    np.testing.assert_allclose(grid32.numpy(), grid.numpy(), atol=1e-6)


def test_translation_warp_shifts_by_hand_computed_pixels():
    K, _, image = _torch_setup(b=1, h=4, w=6)
    depth = torch.full((1, 1, 4, 6), 2.0, dtype=torch.float64)
    T = torch.eye(4, dtype=torch.float64)[None].clone()
    T[0, 0, 3] = 0.8  # x moves 0.8 m at depth 2 m: u shifts by fx * 0.8 / 2 = 2 px
    cam = warping.backproject(depth, torch.linalg.inv(K))
    grid = warping.project_to_grid(cam, K, height=4, width=6, transform=T)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    np.testing.assert_allclose(warped[..., :4].numpy(), image[..., 2:].numpy(), atol=1e-6)
    np.testing.assert_allclose(warped[..., 4:].numpy(), 0.0, atol=1e-6)
    # transform= equals moving the points first
    moved = warping.project_to_grid(warping.transform_points(T, cam), K, height=4, width=6)
    np.testing.assert_allclose(moved.numpy(), grid.numpy(), atol=1e-12)


# ----------------------------------------------------------------------------- distortion
WAYMO_DIST = np.array([0.040358363932006036, -0.33001662226602974, 0.0010402702690110032, -0.0015669020781401406, 0.0])
K_WAYMO = np.array(
    [[2044.5083584358413, 0.0, 949.5746451352071], [0.0, 2044.5083584358413, 633.2422462156501], [0.0, 0.0, 1.0]]
)


@pytest.mark.parametrize("dist", [WAYMO_DIST, np.array([-0.2, 0.05, 0.002, -0.001, 0.01])])
def test_distortion_matches_cv2_project_points(dist):
    rng = np.random.default_rng(7)
    pts = np.stack([rng.uniform(-4, 4, 30), rng.uniform(-2.5, 2.5, 30), rng.uniform(5, 20, 30)], axis=-1)
    cv_uv = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K_WAYMO, dist)[0][:, 0]
    k1, k2, p1, p2, k3 = dist
    xy = g.distort_points_opencv(pts[:, :2] / pts[:, 2:], k1=k1, k2=k2, p1=p1, p2=p2, k3=k3)
    uv = g.project_points(np.concatenate([xy, np.ones((30, 1))], axis=-1), K_WAYMO)[0]
    np.testing.assert_allclose(uv, cv_uv, atol=1e-8)


def test_undistortion_matches_cv2_and_inverts_distortion():
    rng = np.random.default_rng(8)
    uv = np.stack([rng.uniform(0, 1920, 40), rng.uniform(0, 1280, 40)], axis=-1)
    cv_und = cv2.undistortPoints(uv[:, None], K_WAYMO, WAYMO_DIST, P=K_WAYMO)[:, 0]
    ours_5 = g.undistort_points_opencv(uv, K=K_WAYMO, dist=WAYMO_DIST, iters=5)  # OpenCV's default count
    np.testing.assert_allclose(ours_5, cv_und, rtol=0, atol=1e-9)
    und = g.undistort_points_opencv(uv.reshape(2, 20, 2), K=K_WAYMO, dist=WAYMO_DIST[:4])
    xy = g.backproject_pixels(und.reshape(40, 2), np.ones(40), K_WAYMO)[:, :2]
    k1, k2, p1, p2, _ = WAYMO_DIST
    redistorted = g.project_points(
        np.concatenate([g.distort_points_opencv(xy, k1=k1, k2=k2, p1=p1, p2=p2), np.ones((40, 1))], axis=-1), K_WAYMO
    )[0]
    np.testing.assert_allclose(redistorted, uv, atol=1e-6)


# ----------------------------------------------------------------------------- Mercator (KITTI OXTS)
def test_mercator_hand_values_and_round_trip():
    assert g.mercator_scale(60.0) == pytest.approx(0.5, abs=1e-15)
    x, y = g.latlon_to_mercator(45.0, 1.0, 1.0)
    assert x == pytest.approx(6378137.0 * math.pi / 180.0, rel=1e-15)
    assert y == pytest.approx(6378137.0 * math.log(1.0 + math.sqrt(2.0)), rel=1e-12)  # tan(67.5 deg) = 1 + sqrt 2
    np.testing.assert_allclose(g.latlon_to_mercator(0.0, 0.0, 0.7), (0.0, 0.0), atol=1e-6)  # metres
    scale = g.mercator_scale(49.009347760599)
    lat, lon = np.meshgrid(np.linspace(-80, 80, 17), np.linspace(-179, 179, 9))
    lat2, lon2 = g.mercator_to_latlon(*g.latlon_to_mercator(lat, lon, scale), scale)
    np.testing.assert_allclose(lat2, lat, rtol=0, atol=1e-9)
    np.testing.assert_allclose(lon2, lon, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="lat0_deg"):
        g.mercator_scale(90.0)


# ----------------------------------------------------------------------------- real reference data
@needs_shared
def test_waymo_reference_intrinsics_and_extrinsic():
    cam = json.loads(
        (ASSETS / "tiny_waymo/val/segment-1024360143612057520_3580_000_3600_000/FRONT/rgb/cam.json").read_text()
    )
    fu, fv, cu, cv_, *dist = cam["intrinsic"]
    K = np.array([[fu, 0.0, cu], [0.0, fv, cv_], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(g.normalize_intrinsics(K, hw=tuple(cam["dim"])), cam["intrinsic_mat"], rtol=1e-14)
    K_small = g.resize_intrinsics(K, from_hw=tuple(cam["dim"]), to_hw=(320, 480))
    np.testing.assert_allclose(K_small, g.denormalize_intrinsics(np.array(cam["intrinsic_mat"]), hw=(320, 480)))
    vehicle_from_camera = g.waymo_camera_to_opencv(np.array(cam["extrinsic"]).reshape(4, 4))
    optical_axis = vehicle_from_camera[:3, :3] @ [0.0, 0.0, 1.0]
    assert optical_axis[0] > 0.999  # the FRONT camera looks along vehicle +x
    assert (vehicle_from_camera[:3, :3] @ [0.0, 1.0, 0.0])[2] < -0.999  # image down is vehicle down


@needs_shared
def test_nuscenes_reference_camera_pose():
    cam = json.loads((ASSETS / "tiny_nuscenes/scenes/scene-0001/FRONT/rgb/cam.json").read_text())
    np.testing.assert_allclose(
        g.normalize_intrinsics(np.array(cam["camera_intrinsic"]), hw=tuple(cam["dim"])),
        cam["intrinsic_mat"],
        rtol=1e-14,
    )
    ego_from_camera = g.nuscenes_camera_pose(cam["translation"], cam["rotation"])
    np.testing.assert_allclose(ego_from_camera[:3, 3], cam["translation"])
    assert (ego_from_camera[:3, :3] @ [0.0, 0.0, 1.0])[0] > 0.999  # CAM_FRONT looks along ego +x
    assert (ego_from_camera[:3, :3] @ [1.0, 0.0, 0.0])[1] < -0.999  # image right is ego -y (y is left)


@needs_shared
def test_kitti_oxts_mercator_round_trip():
    oxts_dir = SHARED / "fixtures/kitti_raw/2011_09_26/2011_09_26_drive_0009_sync/oxts/data"
    rows = np.array([np.loadtxt(p) for p in sorted(oxts_dir.glob("*.txt"))])
    lat, lon = rows[:, 0], rows[:, 1]
    scale = g.mercator_scale(lat[0])
    x, y = g.latlon_to_mercator(lat, lon, scale)
    lat2, lon2 = g.mercator_to_latlon(x, y, scale)
    np.testing.assert_allclose(lat2, lat, rtol=0, atol=1e-9)
    np.testing.assert_allclose(lon2, lon, rtol=0, atol=1e-9)
    # the Mercator step between frames over the OXTS time step agrees with the measured speed (vf, vl)
    stamps = (oxts_dir.parent / "timestamps.txt").read_text().splitlines()[: len(rows)]
    seconds = np.array([int(s[11:13]) * 3600 + int(s[14:16]) * 60 + float(s[17:]) for s in stamps])
    step = np.hypot(np.diff(x), np.diff(y))
    speed = np.hypot(rows[:, 8], rows[:, 9])
    np.testing.assert_allclose(step / np.diff(seconds), 0.5 * (speed[1:] + speed[:-1]), rtol=0.02)
