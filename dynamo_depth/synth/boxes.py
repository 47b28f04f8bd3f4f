"""Oriented boxes of the synthetic world and the exact ray-box intersection (slab test, vectorised numpy).

A ``Box`` rests on the ground and moves with constant velocity; ``_ray_box`` finds, for N rays, the
hits nearer than the current distances, optionally pre-culled by bounding cones of consecutive rays
(``_RayCones``: a chunk test that never drops a ray the exact test keeps). Element-wise arithmetic only
(no BLAS), as in ``dynamo_depth.synth.world``, which casts its rays through these.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_EPS = 1e-9


# ----------------------------------------------------------------------------------------------- poses
def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _pose(rotation: np.ndarray, translation: np.ndarray | tuple[float, ...]) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = translation
    return out


@dataclass(frozen=True)
class Box:
    """An oriented box resting on the ground, moving with constant velocity (no turning).

    The box frame has its origin at the geometric centre (height/2 above the ground), x along the
    length, y along the width, z up; the box occupies |x| <= l/2, |y| <= w/2, |z| <= h/2.
    """

    center_xy: tuple[float, float]  # world x, y of the box centre at t=0 (metres)
    size: tuple[float, float, float]  # length (box x), width (box y), height (z), metres
    yaw: float  # radians about world z
    velocity_xy: tuple[float, float] = (0.0, 0.0)  # m/s in world frame; (0, 0) = static
    category: str = "vehicle.car"
    texture_seed: int = 0

    def __post_init__(self) -> None:
        if len(self.size) != 3 or min(self.size) <= 0:
            raise ValueError(f"Box.size must be three positive lengths in metres, got {self.size!r}")
        if len(self.center_xy) != 2 or len(self.velocity_xy) != 2:
            raise ValueError("Box.center_xy and Box.velocity_xy must have two components (x, y)")

    @property
    def is_moving(self) -> bool:
        return self.velocity_xy[0] != 0.0 or self.velocity_xy[1] != 0.0

    def center_at(self, t_s: float) -> np.ndarray:
        """(3,) world position of the box centre at time ``t_s`` seconds (z = height/2)."""
        return np.array([self.center_xy[0] + self.velocity_xy[0] * t_s,
                         self.center_xy[1] + self.velocity_xy[1] * t_s, 0.5 * self.size[2]])

    def world_from_box(self, t_s: float) -> np.ndarray:
        """(4, 4) world_from_box at time ``t_s`` seconds."""
        return _pose(_rot_z(self.yaw), self.center_at(t_s))


# ---------------------------------------------------------------------------------------- ray casting
Columns = tuple[np.ndarray | float, np.ndarray | float, np.ndarray | float]


_CONE_CHUNK = 512  # rays per bounding cone (consecutive rays: a strip of pixels or LiDAR columns)


_CONE_MARGIN_RAD = 1e-6  # widens every cone so the chunk test never drops a ray the exact test keeps


@dataclass(frozen=True)
class _RayCones:
    """Bounding cones of consecutive chunks of unit rays sharing one origin.

    axes: (C, 3) unit cone axes; half_angle: (C,) radians (margin included); chunk: rays per cone.
    """

    axes: np.ndarray
    half_angle: np.ndarray
    chunk: int

    @staticmethod
    def of(direction: tuple[np.ndarray, np.ndarray, np.ndarray], chunk: int = _CONE_CHUNK) -> _RayCones:
        """Cones of unit ray columns (x, y, z), each (N,); the last chunk is padded with its last ray."""
        n = direction[0].size
        pad = (-n) % chunk
        cols = [(np.concatenate([c, np.repeat(c[-1:], pad)]) if pad else c).reshape(-1, chunk) for c in direction]
        mean = [c.mean(axis=1) for c in cols]
        norm = np.sqrt(mean[0] ** 2 + mean[1] ** 2 + mean[2] ** 2)
        norm[norm == 0] = 1.0  # degenerate chunk: the dot below is 0, the cone covers the sphere
        axes = [m / norm for m in mean]
        cos_min = np.min(cols[0] * axes[0][:, None] + cols[1] * axes[1][:, None] + cols[2] * axes[2][:, None],
                         axis=1)
        half_angle = np.arccos(np.clip(cos_min, -1.0, 1.0)) + _CONE_MARGIN_RAD
        return _RayCones(axes=np.stack(axes, axis=1), half_angle=half_angle, chunk=chunk)

    def rays_near(self, rel: list[float], radius: float, n: int) -> np.ndarray:
        """Indices (M,) of the rays whose chunk cone meets the sphere (centre ``rel`` from the origin)."""
        distance = math.sqrt(rel[0] * rel[0] + rel[1] * rel[1] + rel[2] * rel[2])
        cos_to_centre = (self.axes[:, 0] * rel[0] + self.axes[:, 1] * rel[1] + self.axes[:, 2] * rel[2]) / distance
        angle = np.arccos(np.clip(cos_to_centre, -1.0, 1.0))
        near = np.flatnonzero(angle <= self.half_angle + math.asin(min(radius / distance, 1.0)) + _CONE_MARGIN_RAD)
        index = (near[:, None] * self.chunk + np.arange(self.chunk)).ravel()
        return index[index < n]


def _ray_box(origin: Columns, direction: Columns, box: Box, t_s: float,
             max_distance: np.ndarray, cones: _RayCones | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Entry distances of unit rays into ``box`` at ``t_s`` that are closer than ``max_distance``.

    ``origin`` and ``direction`` are (x, y, z) columns, each (N,) or a scalar shared by all rays.
    Returns (indices (M,) of the rays that hit, distances (M,) metres). Rays starting inside the
    box do not hit it. A bounding-sphere test first keeps the slab test to the few candidate rays;
    with ``cones`` (shared origin only) whole chunks of rays are first culled by their bounding cone.
    """
    world_from_box = box.world_from_box(t_s)
    centre = world_from_box[:3, 3]
    radius = 0.5 * math.sqrt(sum(s * s for s in box.size))
    rel = [centre[i] - origin[i] for i in range(3)]
    centre_distance2 = rel[0] * rel[0] + rel[1] * rel[1] + rel[2] * rel[2]
    if np.ndim(centre_distance2) == 0 and centre_distance2 > radius * radius:
        # shared origin outside the sphere: rays inside the cone around the centre direction
        near = cones.rays_near(rel, radius, max_distance.size) if cones is not None else None
        d = direction if near is None else [c[near] for c in direction]
        limit = max_distance if near is None else max_distance[near]
        along = rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]
        keep = (along >= math.sqrt(centre_distance2 - radius * radius)) & (along - radius < limit)
        candidates = np.flatnonzero(keep) if near is None else near[keep]
    else:
        along = rel[0] * direction[0] + rel[1] * direction[1] + rel[2] * direction[2]
        candidates = np.flatnonzero((centre_distance2 - along * along <= radius * radius) & (along > -radius)
                                    & (along - radius < max_distance))
    if candidates.size == 0:
        return candidates, np.empty(0)
    return _slab(rel, direction, candidates, world_from_box, box, max_distance)


def _slab(rel: list, direction: Columns, candidates: np.ndarray, world_from_box: np.ndarray, box: Box,
          max_distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 slab test of the ``candidates`` rays against the box; (hit indices, distances)."""
    pick = [np.broadcast_to(c, max_distance.shape)[candidates] for c in (*rel, *direction)]
    r = world_from_box[:3, :3]  # box_from_world rotation is r.T: row i of it is column i of r
    t_near = t_far = None
    for i in range(3):
        local_o = -(r[0, i] * pick[0] + r[1, i] * pick[1] + r[2, i] * pick[2])
        local_d = r[0, i] * pick[3] + r[1, i] * pick[4] + r[2, i] * pick[5]
        half = 0.5 * box.size[i]
        safe_d = np.where(np.abs(local_d) < 1e-12, np.where(local_d < 0, -1e-12, 1e-12), local_d)
        t1 = (-half - local_o) / safe_d
        t2 = (half - local_o) / safe_d
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        t_near = near if t_near is None else np.maximum(t_near, near)
        t_far = far if t_far is None else np.minimum(t_far, far)
    hit = (t_far >= t_near) & (t_near > _EPS) & (t_near < max_distance[candidates])
    return candidates[hit], t_near[hit]


def _group_by_surface(surface: np.ndarray, n_boxes: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (surface id, ascending ray indices) for every surface id present (-1 sky, 0 ground, k box)."""
    if n_boxes < 126:  # int8 keys: numpy's stable sort is a linear-time radix sort
        order = np.argsort((surface + 1).astype(np.int8), kind="stable")
        counts = np.bincount(surface + 1, minlength=n_boxes + 2)
        ends = np.cumsum(counts)
        for key, (start, stop) in enumerate(zip(ends - counts, ends, strict=True)):
            if stop > start:
                yield key - 1, order[start:stop]
        return
    for key in range(-1, n_boxes + 1):
        index = np.flatnonzero(surface == key)
        if index.size:
            yield key, index


def _columns(values: np.ndarray) -> Columns:
    """(N, 3) -> three contiguous columns, or three scalars when every row is the same."""
    if len(values) and (values.strides[0] == 0 or bool(np.all(values == values[0]))):
        return float(values[0, 0]), float(values[0, 1]), float(values[0, 2])
    return values[:, 0].copy(), values[:, 1].copy(), values[:, 2].copy()
