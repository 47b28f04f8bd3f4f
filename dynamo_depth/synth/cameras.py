"""Camera and LiDAR ray models of the synthetic world: OpenCV distortion, per-pixel rays, an HDL-64-like scan.

Cameras use OpenCV axes (x right, y down, z forward); integer (u, v) is a pixel centre. Element-wise
numpy (no BLAS), so the rays never depend on the machine's BLAS kernels.
"""

from __future__ import annotations

import numpy as np


# -------------------------------------------------------------------------------------- camera model
def _check_distortion(distortion: tuple[float, ...] | None) -> tuple[float, float, float, float, float]:
    if distortion is None:
        return (0.0, 0.0, 0.0, 0.0, 0.0)
    values = tuple(float(d) for d in distortion)
    if len(values) not in (4, 5):
        raise ValueError(f"distortion must be (k1, k2, p1, p2[, k3]) (OpenCV), got {len(values)} values")
    return (*values, 0.0) if len(values) == 4 else values  # type: ignore[return-value]


def distort_normalized(xy: np.ndarray, distortion: tuple[float, ...] | None) -> np.ndarray:
    """Apply the OpenCV (k1, k2, p1, p2, k3) model to normalized points (N, 2) -> (N, 2)."""
    k1, k2, p1, p2, k3 = _check_distortion(distortion)
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return np.stack([xd, yd], axis=1)


def undistort_normalized(xy_distorted: np.ndarray, distortion: tuple[float, ...] | None,
                         *, iterations: int = 30, tolerance: float = 1e-13) -> np.ndarray:
    """Invert ``distort_normalized`` by fixed-point iteration (as OpenCV's undistortPoints).

    xy_distorted: (N, 2) normalized distorted coordinates. Returns (N, 2) undistorted coordinates.
    """
    k1, k2, p1, p2, k3 = _check_distortion(distortion)
    xd, yd = xy_distorted[:, 0], xy_distorted[:, 1]
    x, y = xd.copy(), yd.copy()
    if not any((k1, k2, p1, p2, k3)):
        return np.stack([x, y], axis=1)
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dx = 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
        dy = p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
        x_new, y_new = (xd - dx) / radial, (yd - dy) / radial
        change = max(float(np.max(np.abs(x_new - x), initial=0.0)), float(np.max(np.abs(y_new - y), initial=0.0)))
        x, y = x_new, y_new
        if change < tolerance:
            break
    return np.stack([x, y], axis=1)


_RAY_CACHE: dict[bytes, np.ndarray] = {}


def camera_directions(*, K: np.ndarray, hw: tuple[int, int],
                      distortion: tuple[float, ...] | None = None) -> np.ndarray:
    """(H*W, 3) camera-frame ray directions [x_n, y_n, 1] (OpenCV axes, z = 1) for every pixel.

    Row-major pixel order (index = v * W + u); integer (u, v) is the pixel centre. With
    ``distortion`` the pixel is first undistorted (the distorted camera's view). Read-only, cached.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"K must be a (3, 3) pinhole matrix with positive focal lengths, got {K!r}")
    height, width = int(hw[0]), int(hw[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"hw must be positive (H, W), got {hw!r}")
    dist = _check_distortion(distortion)
    key = K.tobytes() + np.array([height, width], np.int64).tobytes() + np.array(dist).tobytes()
    cached = _RAY_CACHE.get(key)
    if cached is not None:
        return cached
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    y_n = (v.ravel() - K[1, 2]) / K[1, 1]
    x_n = (u.ravel() - K[0, 2] - K[0, 1] * y_n) / K[0, 0]
    xy = undistort_normalized(np.stack([x_n, y_n], axis=1), dist)
    rays = np.concatenate([xy, np.ones((xy.shape[0], 1))], axis=1)
    rays.flags.writeable = False
    if len(_RAY_CACHE) >= 8:
        _RAY_CACHE.pop(next(iter(_RAY_CACHE)))
    _RAY_CACHE[key] = rays
    return rays


def rotate(rotation: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(N, 3) ``rotation @ v`` for each row, element-wise (deterministic, no BLAS)."""
    r = np.asarray(rotation, dtype=np.float64)
    x, y, z = vectors[:, 0], vectors[:, 1], vectors[:, 2]
    return np.stack([r[i, 0] * x + r[i, 1] * y + r[i, 2] * z for i in range(3)], axis=1)


def transform_points(target_from_source: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 3) points moved by a (4, 4) transform, element-wise."""
    return rotate(target_from_source[:3, :3], points) + target_from_source[:3, 3]


def camera_rays(*, K: np.ndarray, world_from_camera: np.ndarray, hw: tuple[int, int],
                distortion: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """World rays of every pixel: (origins (H*W, 3), unit directions (H*W, 3)), row-major.

    The camera z-depth of a hit at ``distance`` metres along a ray is
    ``distance * (directions @ world_from_camera[:3, 2])``.
    """
    world_from_camera = np.asarray(world_from_camera, dtype=np.float64)
    if world_from_camera.shape != (4, 4):
        raise ValueError(f"world_from_camera must be (4, 4), got {world_from_camera.shape}")
    cam = camera_directions(K=K, hw=hw, distortion=distortion)
    unit = cam / np.sqrt(cam[:, 0] ** 2 + cam[:, 1] ** 2 + 1.0)[:, None]
    directions = rotate(world_from_camera[:3, :3], unit)
    origins = np.broadcast_to(world_from_camera[:3, 3], directions.shape)
    return origins, directions


def hdl64_directions(*, azimuth_step_deg: float = 0.35, beams: int = 64, up_deg: float = 2.0,
                     down_deg: float = -24.8) -> np.ndarray:
    """(beams * n_azimuth, 3) unit LiDAR ray directions in the sensor frame (x fwd, y left, z up).

    Elevations are evenly spread from ``up_deg`` to ``down_deg`` (HDL-64E-like); azimuths go
    once around starting straight ahead, counter-clockwise. Order: azimuth-major, then beam.
    """
    if azimuth_step_deg <= 0 or beams <= 0:
        raise ValueError("azimuth_step_deg and beams must be positive")
    elevation = np.radians(np.linspace(up_deg, down_deg, beams))
    azimuth = np.radians(np.arange(0.0, 360.0, azimuth_step_deg))
    az, el = np.meshgrid(azimuth, elevation, indexing="ij")
    cos_el = np.cos(el)
    out = np.stack([cos_el * np.cos(az), cos_el * np.sin(az), np.sin(el)], axis=-1)
    return out.reshape(-1, 3)
