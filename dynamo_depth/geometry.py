"""Batched camera and pose geometry in numpy (float64, for builders, datasets and evaluation).

The differentiable torch counterparts the training path uses (back-projection, projection to a
``grid_sample`` grid, pose vectors) live in ``dynamo_depth.objective.warping``, with the same conventions.

Conventions used throughout:

* Shapes use ``...`` for any leading batch dimensions; nothing assumes a batch size.
* Transforms are 4x4 homogeneous and named ``target_from_source``: ``p_target = T @ p_source``. Metres.
* Cameras use OpenCV axes: x right, y down, z forward. ``K`` is the 3x3 pinhole matrix in pixels.
* Pixel coordinates: ``u`` is the column and ``v`` the row. The integer coordinate ``(u, v) = (i, j)``
  is the CENTRE of pixel column ``i``, row ``j`` (so the image spans ``[-0.5, W - 0.5]``). This is the
  convention of the original preprocessing, whose intrinsics are rescaled without a half-pixel shift.
* For ``torch.nn.functional.grid_sample(..., align_corners=False)`` the normalised coordinate -1 is the
  LEFT EDGE of pixel 0 and +1 the right edge of pixel W-1, so pixel centre ``u`` maps to
  ``x = (2u + 1) / W - 1`` (same for v with H). ``warping.project_to_grid`` uses the equivalent
  align_corners=True form ``x = 2u / (W - 1) - 1`` (as the original Dynamo-Depth), so backprojecting the
  true depth and projecting with the identity pose samples every pixel at its centre either way.

Dataset axis conventions:

* Waymo camera frames are x forward, y left, z up; ``OPENCV_FROM_WAYMO_CAMERA`` converts them.
* KITTI rectified cameras (``P_rect_0x``, ``R_rect_00``) already use OpenCV axes (identity).
* nuScenes camera sensor frames already use OpenCV axes (identity); calibrated_sensor and ego_pose
  records give a pose as ``translation`` (metres) plus ``rotation`` quaternion in (w, x, y, z) order.
"""

from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_M = 6378137.0
_SMALL_ANGLE = 1e-4  # below this rotation angle (rad) the Taylor branches are used

# x_cv = -y_w, y_cv = -z_w, z_cv = x_w
OPENCV_FROM_WAYMO_CAMERA = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
WAYMO_CAMERA_FROM_OPENCV = OPENCV_FROM_WAYMO_CAMERA.T.copy()
OPENCV_FROM_KITTI_RECT_CAMERA = np.eye(4)
OPENCV_FROM_NUSCENES_CAMERA = np.eye(4)
for _const in (
    OPENCV_FROM_WAYMO_CAMERA,
    WAYMO_CAMERA_FROM_OPENCV,
    OPENCV_FROM_KITTI_RECT_CAMERA,
    OPENCV_FROM_NUSCENES_CAMERA,
):
    _const.setflags(write=False)


def _as_array(x, name: str, tail: tuple[int, ...]) -> np.ndarray:
    """float64 array whose trailing dims equal ``tail``, else ValueError naming ``name``."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < len(tail) or tuple(arr.shape[arr.ndim - len(tail) :]) != tail:
        raise ValueError(f"{name}: expected shape (..., {', '.join(map(str, tail))}), got {arr.shape}")
    return arr


def _check_hw(hw, name: str) -> tuple[int, int]:
    if len(hw) != 2 or any(int(s) != s or s <= 0 for s in hw):
        raise ValueError(f"{name}: expected (height, width) positive integers, got {hw!r}")
    return int(hw[0]), int(hw[1])


# ----------------------------------------------------------------------------- intrinsics
def normalize_intrinsics(K, *, hw: tuple[int, int]) -> np.ndarray:
    """K (..., 3, 3) in pixels of an image of size hw=(H, W) -> K with row 0 / W and row 1 / H."""
    h, w = _check_hw(hw, "hw")
    out = _as_array(K, "K", (3, 3)).copy()
    out[..., 0, :] /= w
    out[..., 1, :] /= h
    return out


def denormalize_intrinsics(K_norm, *, hw: tuple[int, int]) -> np.ndarray:
    """Inverse of ``normalize_intrinsics``: row 0 * W, row 1 * H for hw=(H, W)."""
    h, w = _check_hw(hw, "hw")
    out = _as_array(K_norm, "K_norm", (3, 3)).copy()
    out[..., 0, :] *= w
    out[..., 1, :] *= h
    return out


def resize_intrinsics(K, *, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """K (..., 3, 3) for an image resized from (H, W) to (H', W'): fx, cx * W'/W; fy, cy * H'/H.

    No half-pixel shift (the original preprocessing's convention: normalise by the old size, multiply
    by the new one).
    """
    return denormalize_intrinsics(normalize_intrinsics(K, hw=from_hw), hw=to_hw)


# ----------------------------------------------------------------------------- SE(3)
# Everything here that feeds bytes we write is computed element-wise in a fixed order (no BLAS, no
# einsum): numpy's matmul goes through OpenBLAS, whose kernels differ per CPU type, so `A @ B` can
# differ in the last bit between two machines and shard hashes with it.
def matmul_exact(A, B) -> np.ndarray:
    """A (..., n, k) @ B (..., k, m), summed element-wise over k in order: the same bits on any CPU."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.shape[-1] != B.shape[-2]:
        raise ValueError(f"matmul_exact: inner dimensions differ: {A.shape} @ {B.shape}")
    out = A[..., :, 0, None] * B[..., None, 0, :]
    for k in range(1, A.shape[-1]):
        out = out + A[..., :, k, None] * B[..., None, k, :]
    return out


def invert_se3(T) -> np.ndarray:
    """Closed-form inverse of rigid transforms T (..., 4, 4): [R^T | -R^T t] (CPU-independent bits)."""
    T = _as_array(T, "T", (4, 4))
    R_t = np.swapaxes(T[..., :3, :3], -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = R_t
    out[..., :3, 3] = -matmul_exact(R_t, T[..., :3, 3, None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def compose(*Ts) -> np.ndarray:
    """Matrix product T1 @ T2 @ ... of (..., 4, 4) transforms (batch dims broadcast; CPU-independent bits)."""
    if not Ts:
        raise ValueError("compose: needs at least one transform")
    out = _as_array(Ts[0], "Ts[0]", (4, 4))
    for i, T in enumerate(Ts[1:], start=1):
        out = matmul_exact(out, _as_array(T, f"Ts[{i}]", (4, 4)))
    return out


def transform_points(T, points) -> np.ndarray:
    """Apply T (..., 4, 4) target_from_source to points (..., N, 3) in source -> (..., N, 3) in target."""
    T = _as_array(T, "T", (4, 4))
    pts = _as_array(points, "points", (3,))
    if pts.ndim < 2:
        raise ValueError(f"points: expected shape (..., N, 3), got {pts.shape}")
    R = T[..., None, :3, :3]
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    rows = [R[..., i, 0] * x + R[..., i, 1] * y + R[..., i, 2] * z + T[..., None, i, 3] for i in range(3)]
    return np.stack(rows, axis=-1)


# ----------------------------------------------------------------------------- rotations
def _skew_np(v: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3, 3) cross-product matrix [v]_x."""
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = np.zeros_like(x)
    return np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(v.shape[:-1] + (3, 3))


def axis_angle_to_matrix(v) -> np.ndarray:
    """Rodrigues: axis-angle v (..., 3) (direction = axis, norm = angle in rad) -> R (..., 3, 3).

    R = I + A [v]_x + B [v]_x^2 with A = sin(t)/t, B = (1 - cos t)/t^2 (Taylor series for small t).
    """
    v = _as_array(v, "v", (3,))
    theta_sq = np.sum(v * v, axis=-1)
    small = theta_sq < _SMALL_ANGLE**2
    safe_sq = np.where(small, 1.0, theta_sq)
    safe_theta = np.sqrt(safe_sq)
    a = np.where(small, 1.0 - theta_sq / 6.0 + theta_sq**2 / 120.0, np.sin(safe_theta) / safe_theta)
    b = np.where(small, 0.5 - theta_sq / 24.0 + theta_sq**2 / 720.0, (1.0 - np.cos(safe_theta)) / safe_sq)
    K = _skew_np(v)
    return np.eye(3) + a[..., None, None] * K + b[..., None, None] * (K @ K)


def matrix_to_quaternion(R) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) as (w, x, y, z) with w >= 0.

    Shepperd's method: of the four algebraically equal formulas, use the one with the largest
    (best conditioned) square root.
    """
    R = _as_array(R, "R", (3, 3))
    r = {(i, j): R[..., i, j] for i in range(3) for j in range(3)}
    four_sq = np.stack(
        [
            1 + r[0, 0] + r[1, 1] + r[2, 2],
            1 + r[0, 0] - r[1, 1] - r[2, 2],
            1 - r[0, 0] + r[1, 1] - r[2, 2],
            1 - r[0, 0] - r[1, 1] + r[2, 2],
        ],
        axis=-1,
    )
    half = 0.5 * np.sqrt(np.clip(four_sq, 1e-12, None))  # |w|, |x|, |y|, |z| candidates
    d = 4.0 * half
    sk = (r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1])
    sy = (r[0, 1] + r[1, 0], r[0, 2] + r[2, 0], r[1, 2] + r[2, 1])
    candidates = np.stack(
        [
            np.stack([half[..., 0], sk[0] / d[..., 0], sk[1] / d[..., 0], sk[2] / d[..., 0]], -1),
            np.stack([sk[0] / d[..., 1], half[..., 1], sy[0] / d[..., 1], sy[1] / d[..., 1]], -1),
            np.stack([sk[1] / d[..., 2], sy[0] / d[..., 2], half[..., 2], sy[2] / d[..., 2]], -1),
            np.stack([sk[2] / d[..., 3], sy[1] / d[..., 3], sy[2] / d[..., 3], half[..., 3]], -1),
        ],
        axis=-2,
    )
    best = np.argmax(four_sq, axis=-1)[..., None, None]
    q = np.take_along_axis(candidates, best, axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q) -> np.ndarray:
    """Quaternions (..., 4) as (w, x, y, z), normalised first -> R (..., 3, 3)."""
    q = _as_array(q, "q", (4,))
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("q: zero-norm quaternion cannot be a rotation")
    w, x, y, z = np.moveaxis(q / norm, -1, 0)
    rows = [
        1 - 2 * (y * y + z * z),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (x * x + z * z),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (x * x + y * y),
    ]
    return np.stack(rows, axis=-1).reshape(q.shape[:-1] + (3, 3))


def matrix_to_axis_angle(R) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> axis-angle (..., 3), angle in [0, pi]; exact near 0 and pi."""
    q = matrix_to_quaternion(R)
    w, xyz = q[..., 0], q[..., 1:]
    n = np.linalg.norm(xyz, axis=-1)
    small = n < 1e-6
    safe_n = np.where(small, 1.0, n)
    # angle / n = 2 atan2(n, w) / n  ~  2/w - 2 n^2 / (3 w^3) for small n (w ~ 1 there)
    scale = np.where(small, 2.0 / w - 2.0 * n * n / (3.0 * w**3), 2.0 * np.arctan2(n, w) / safe_n)
    return xyz * scale[..., None]


def pose_from_translation_quaternion(translation, quaternion) -> np.ndarray:
    """translation (..., 3) metres + quaternion (..., 4) (w, x, y, z) -> (..., 4, 4) [R | t]."""
    t = _as_array(translation, "translation", (3,))
    R = quaternion_to_matrix(quaternion)
    batch = np.broadcast_shapes(t.shape[:-1], R.shape[:-2])
    out = np.zeros(batch + (4, 4))
    out[..., :3, :3] = R
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def rotation_from_rpy(roll, pitch, yaw) -> np.ndarray:
    """Rz(yaw) @ Ry(pitch) @ Rx(roll) (radians, arrays broadcast) -> (..., 3, 3) (KITTI OXTS)."""
    roll, pitch, yaw = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (roll, pitch, yaw)))
    one, zero = np.ones_like(roll), np.zeros_like(roll)
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.stack([one, zero, zero, zero, cr, -sr, zero, sr, cr], -1).reshape(roll.shape + (3, 3))
    ry = np.stack([cp, zero, sp, zero, one, zero, -sp, zero, cp], -1).reshape(roll.shape + (3, 3))
    rz = np.stack([cy, -sy, zero, sy, cy, zero, zero, zero, one], -1).reshape(roll.shape + (3, 3))
    return rz @ ry @ rx


# ----------------------------------------------------------------------------- axis conventions
def waymo_camera_to_opencv(vehicle_from_camera_waymo) -> np.ndarray:
    """Waymo camera extrinsic (..., 4, 4) (camera axes x fwd, y left, z up) -> vehicle_from_camera_cv."""
    return _as_array(vehicle_from_camera_waymo, "vehicle_from_camera_waymo", (4, 4)) @ WAYMO_CAMERA_FROM_OPENCV


def kitti_rect_camera_to_opencv(target_from_camera_rect) -> np.ndarray:
    """KITTI rectified cameras already use OpenCV axes: returns a float64 copy (identity change)."""
    return _as_array(target_from_camera_rect, "target_from_camera_rect", (4, 4)) @ OPENCV_FROM_KITTI_RECT_CAMERA


def nuscenes_camera_pose(translation, rotation_wxyz) -> np.ndarray:
    """nuScenes calibrated_sensor (translation, rotation w,x,y,z) -> ego_from_camera (..., 4, 4), OpenCV axes."""
    return pose_from_translation_quaternion(translation, rotation_wxyz) @ OPENCV_FROM_NUSCENES_CAMERA


# ----------------------------------------------------------------------------- pinhole projection
def pixel_grid(h: int, w: int) -> np.ndarray:
    """(h*w, 2) float64 pixel centres (u, v), row-major: index = v * w + u."""
    h, w = _check_hw((h, w), "pixel_grid(h, w)")
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    return np.stack([u.ravel(), v.ravel()], axis=-1)


def project_points(points_cam, K) -> tuple[np.ndarray, np.ndarray]:
    """points_cam (..., N, 3) camera frame (metres) -> (uv (..., N, 2) pixels, z (..., N) metres).

    No filtering: points with z <= 0 give inf/nan or mirrored pixels; callers keep ``z > 0``.
    """
    pts = _as_array(points_cam, "points_cam", (3,))
    K = _as_array(K, "K", (3, 3))
    pix = np.einsum("...ij,...nj->...ni", K, pts)
    z = pts[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = pix[..., :2] / pix[..., 2:3]
    return uv, z


def backproject_pixels(uv, depth, K) -> np.ndarray:
    """uv (..., N, 2) pixels, depth (..., N) camera z (metres) -> points (..., N, 3) camera frame (broadcast)."""
    uv = _as_array(uv, "uv", (2,))
    depth = np.asarray(depth, dtype=np.float64)
    try:
        np.broadcast_shapes(uv.shape[:-1], depth.shape)
    except ValueError:
        raise ValueError(f"depth: shape {depth.shape} does not broadcast against uv {uv.shape[:-1]}") from None
    K_inv = np.linalg.inv(_as_array(K, "K", (3, 3)))
    homog = np.concatenate([uv, np.ones_like(uv[..., :1])], axis=-1)
    rays = np.einsum("...ij,...nj->...ni", K_inv, homog)
    return rays * depth[..., None]


# ----------------------------------------------------------------------------- lens distortion
def distort_points_opencv(
    xy_norm, *, k1: float = 0.0, k2: float = 0.0, p1: float = 0.0, p2: float = 0.0, k3: float = 0.0
) -> np.ndarray:
    """OpenCV pinhole distortion of normalised coordinates (x/z, y/z) (..., 2) -> distorted (..., 2).

    x' = x (1 + k1 r^2 + k2 r^4 + k3 r^6) + 2 p1 x y + p2 (r^2 + 2 x^2); y' likewise with p1 <-> p2.
    """
    xy = _as_array(xy_norm, "xy_norm", (2,))
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return np.stack([xd, yd], axis=-1)


def undistort_points_opencv(uv, *, K, dist, iters: int = 20) -> np.ndarray:
    """Distorted pixels uv (..., 2) -> undistorted pixels (..., 2) under the same K (3, 3).

    dist = (k1, k2, p1, p2[, k3]). The fixed-point iteration of ``cv2.undistortPoints`` (which runs 5
    iterations by default; 20 here converges further). Divide by K for normalised coordinates.
    """
    uv = _as_array(uv, "uv", (2,))
    K = _as_array(K, "K", (3, 3))
    coeffs = np.asarray(dist, dtype=np.float64).ravel()
    if coeffs.size not in (4, 5):
        raise ValueError(f"dist: expected 4 or 5 coefficients (k1, k2, p1, p2[, k3]), got {coeffs.size}")
    if iters < 1:
        raise ValueError(f"iters: must be >= 1, got {iters}")
    k1, k2, p1, p2, k3 = np.pad(coeffs, (0, 5 - coeffs.size))
    fx, fy, cx, cy, skew = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    y0 = (uv[..., 1] - cy) / fy
    x0 = (uv[..., 0] - cx - skew * y0) / fx
    x, y = x0, y0
    for _ in range(iters):
        r2 = x * x + y * y
        inv_radial = 1.0 / (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3)))
        dx = 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
        dy = p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
        x, y = (x0 - dx) * inv_radial, (y0 - dy) * inv_radial
    return np.stack([fx * x + skew * y + cx, fy * y + cy], axis=-1)


# ----------------------------------------------------------------------------- KITTI OXTS (Mercator)
def mercator_scale(lat0_deg: float) -> float:
    """Mercator scale cos(lat0) for the reference latitude (degrees) of a drive (its first OXTS)."""
    if not -90.0 < float(lat0_deg) < 90.0:
        raise ValueError(f"lat0_deg: must be in (-90, 90), got {lat0_deg}")
    return math.cos(math.radians(float(lat0_deg)))


def latlon_to_mercator(lat_deg, lon_deg, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) degrees -> Mercator (x, y) metres: x = s r lon pi/180, y = s r log(tan((90+lat) pi/360))."""
    lat = np.asarray(lat_deg, dtype=np.float64)
    lon = np.asarray(lon_deg, dtype=np.float64)
    x = scale * EARTH_RADIUS_M * lon * math.pi / 180.0
    y = scale * EARTH_RADIUS_M * np.log(np.tan((90.0 + lat) * math.pi / 360.0))
    return x, y


def mercator_to_latlon(x, y, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``latlon_to_mercator``: Mercator (x, y) metres -> (lat, lon) degrees."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    lon = x * 180.0 / (math.pi * scale * EARTH_RADIUS_M)
    lat = 360.0 / math.pi * np.arctan(np.exp(y / (scale * EARTH_RADIUS_M))) - 90.0
    return lat, lon
