"""A small analytic 3D driving world: ground plane, oriented boxes, sky, and a moving ego.

Frames and units: world is z-up, metres; the ground is the plane z = 0. The ego frame has x forward,
y left, z up with its origin on the ground. Cameras use OpenCV axes (x right, y down, z forward).
Transforms are ``target_from_source`` 4x4 float64 matrices. Times are seconds from t = 0.

Everything is vectorised numpy and deterministic: the same seed gives the same bytes. Large
per-pixel arithmetic is written element-wise (no BLAS, no LAPACK) so results depend neither on thread
count nor on the CPU's BLAS kernels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from dynamo_depth.geometry import invert_se3
from dynamo_depth.synth.boxes import _CONE_CHUNK, Box, _columns, _group_by_surface, _pose, _ray_box, _RayCones, _rot_z
from dynamo_depth.synth.cameras import (  # noqa: F401 - re-exported: the world's camera model
    _check_distortion,
    camera_directions,
    camera_rays,
    distort_normalized,
    hdl64_directions,
    rotate,
    transform_points,
    undistort_normalized,
)
from dynamo_depth.synth.textures import (  # noqa: F401 - re-exported
    FOG_DISTANCE_M,
    SKY_HORIZON,
    SKY_ZENITH,
    _ground_colour,
    _octaves,
    sky_colour,
)


@dataclass(frozen=True)
class RayHits:
    """Result of ``World.ray_cast`` for N rays.

    distance: (N,) float64 metres along the unit ray direction, inf on a miss.
    surface: (N,) int32, -1 sky/miss, 0 ground, k >= 1 box k-1.
    points: (N, 3) float64 world hit points, nan on a miss.
    directions: (N, 3) float64 unit world directions of the rays (used to shade the sky).
    """

    distance: np.ndarray
    surface: np.ndarray
    points: np.ndarray
    directions: np.ndarray | None = field(default=None)


# ------------------------------------------------------------------------------------------- textures
def _box_face_colour(local: np.ndarray, box: Box, distance: np.ndarray) -> np.ndarray:
    """(M, 3) float colours of points ``local`` (M, 3) in the box frame; one texture per face."""
    half = 0.5 * np.asarray(box.size)
    ratio = np.abs(local) / half
    axis = np.argmax(ratio, axis=1)
    sign = (np.take_along_axis(local, axis[:, None], axis=1)[:, 0] > 0).astype(np.int64)
    face = 2 * axis + sign  # 0..5: -x, +x, -y, +y, -z, +z
    rng = np.random.default_rng(10007 + box.texture_seed)
    base = rng.uniform(40.0, 220.0, size=(6, 3))
    u = np.where(axis == 0, local[:, 1], local[:, 0])
    v = np.where(axis == 2, local[:, 1], local[:, 2])
    noise = _octaves(u + 3.1 * face, v - 1.7 * face, distance, (0.9, 0.23, 0.07), box.texture_seed)
    stripes = 0.25 * (np.abs(((v * 2.5) % 1.0) - 0.5) < 0.08)
    shade = 1.0 + 0.45 * noise - stripes
    return base[face] * shade[:, None]


def _ego_arc(speed: float, yaw_rate: float, t_s: float) -> tuple[float, float, float]:
    """(x, y, yaw) of a constant-speed, constant-yaw-rate path starting at the origin along +x."""
    angle = yaw_rate * t_s
    if abs(angle) < 1e-6:  # series of sin(a)/w and (1 - cos(a))/w, exact to double precision here
        x = speed * t_s * (1.0 - angle * angle / 6.0)
        y = speed * t_s * (angle / 2.0 - angle ** 3 / 24.0)
    else:
        x = speed * math.sin(angle) / yaw_rate
        y = speed * (1.0 - math.cos(angle)) / yaw_rate
    return x, y, angle


@dataclass(frozen=True)
class World:
    """Ground plane z = 0, boxes, sky, and an ego moving on a circular arc (x forward, y left, z up)."""

    boxes: tuple[Box, ...]
    seed: int
    ego_speed: float  # m/s along the trajectory
    ego_yaw_rate: float  # rad/s, constant (circular arc; 0 = straight line)

    def world_from_ego(self, t_s: float) -> np.ndarray:
        """(4, 4) world_from_ego at ``t_s`` seconds; ego at the world origin heading +x at t = 0."""
        x, y, yaw = _ego_arc(self.ego_speed, self.ego_yaw_rate, t_s)
        return _pose(_rot_z(yaw), (x, y, 0.0))

    def ray_cast(self, origins: np.ndarray, directions: np.ndarray, t_s: float) -> RayHits:
        """Nearest hit of N rays (origins, directions (N, 3) world; directions need not be unit)."""
        origins = np.asarray(origins, dtype=np.float64)
        directions = np.asarray(directions, dtype=np.float64)
        if origins.ndim != 2 or origins.shape[1] != 3 or directions.shape != origins.shape:
            raise ValueError(f"origins and directions must both be (N, 3), got {origins.shape}, {directions.shape}")
        dx, dy, dz = (directions[:, i].copy() for i in range(3))
        norm = np.sqrt(dx * dx + dy * dy + dz * dz)
        if np.any(norm == 0):
            raise ValueError("ray directions must be non-zero")
        dx, dy, dz = dx / norm, dy / norm, dz / norm
        origin = _columns(origins)
        distance = np.full(len(norm), np.inf)
        surface = np.full(len(norm), -1, dtype=np.int32)
        down = (dz < -1e-12) & (np.broadcast_to(origin[2], norm.shape) > 0)
        np.divide(-np.broadcast_to(origin[2], norm.shape), dz, out=distance, where=down)
        surface[down] = 0
        shared = np.ndim(origin[0]) == 0
        cones = _RayCones.of((dx, dy, dz)) if shared and len(self.boxes) and dx.size >= 8 * _CONE_CHUNK else None
        for k, box in enumerate(self.boxes):
            index, box_t = _ray_box(origin, (dx, dy, dz), box, t_s, distance, cones)
            distance[index], surface[index] = box_t, k + 1
        unit = np.stack([dx, dy, dz], axis=1)
        points = np.empty(origins.shape)
        miss = surface < 0
        with np.errstate(invalid="ignore"):  # inf * 0 on misses; overwritten by nan below
            for i, d in enumerate((dx, dy, dz)):
                column = distance * d
                column += origin[i] if shared else origins[:, i]
                column[miss] = np.nan
                points[:, i] = column
        points[surface == 0, 2] = 0.0  # exactly on the ground plane
        return RayHits(distance=distance, surface=surface, points=points, directions=unit)

    def _surface_groups(self, hits: RayHits, t_s: float) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        """Yield (ray indices (M,), colours (M, 3) float64 before fog, is_solid) per surface kind."""
        directions = hits.directions if hits.directions is not None \
            else np.tile([1.0, 0.0, 0.0], (len(hits.surface), 1))
        for surface, index in _group_by_surface(hits.surface, len(self.boxes)):
            if surface < 0:
                yield index, sky_colour(directions.take(index, axis=0)), False
            elif surface == 0:
                yield index, _ground_colour(hits.points.take(index, axis=0), hits.distance[index], self.seed), True
            else:
                box = self.boxes[surface - 1]
                box_from_world = invert_se3(box.world_from_box(t_s))
                local = transform_points(box_from_world, hits.points.take(index, axis=0))
                yield index, _box_face_colour(local, box, hits.distance[index]), True

    def surface_colour(self, hits: RayHits, t_s: float) -> np.ndarray:
        """(N, 3) float64 colours in [0, 255] before fog and quantisation."""
        colour = np.empty((len(hits.surface), 3))
        for index, group_colour, _ in self._surface_groups(hits, t_s):
            colour[index] = group_colour
        return colour

    def shade(self, hits: RayHits, t_s: float) -> np.ndarray:
        """(N, 3) uint8 colours of ``hits``: textured surfaces with distance fog, sky gradient on a miss."""
        image = np.empty((len(hits.surface), 3), dtype=np.uint8)
        self._shade_into(hits, t_s, image=image, image_index=None)
        return image

    def _shade_into(self, hits: RayHits, t_s: float, *, image: np.ndarray, image_index: np.ndarray | None) -> None:
        """Write the uint8 colour of ray i into row ``image_index[i]`` (row i when None) of ``image`` (M, 3)."""
        for index, colour, solid in self._surface_groups(hits, t_s):
            if solid and hits.directions is not None:
                fog = np.exp(-hits.distance[index] / FOG_DISTANCE_M)
                np.subtract(1.0, fog, out=fog)
                towards_sky = SKY_HORIZON - colour
                towards_sky *= fog[:, None]
                colour += towards_sky
            np.rint(colour, out=colour)
            np.clip(colour, 0, 255, out=colour)
            image[index if image_index is None else image_index[index]] = colour

    def reflectance(self, hits: RayHits, t_s: float) -> np.ndarray:
        """(N,) float32 LiDAR reflectance in [0, 1] (surface brightness; 0 on a miss)."""
        colour = self.surface_colour(hits, t_s)
        value = (0.299 * colour[:, 0] + 0.587 * colour[:, 1] + 0.114 * colour[:, 2]) / 255.0
        return np.where(hits.surface >= 0, np.clip(value, 0.0, 1.0), 0.0).astype(np.float32)

    def render(self, *, K: np.ndarray, world_from_camera: np.ndarray, hw: tuple[int, int], t_s: float,
               distortion: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Render a camera (OpenCV axes): (image (H, W, 3) uint8, z_depth (H, W) float64 metres, inf = sky).

        Rays are cast in small-tile order (tight bounding cones for box culling) and the result is put
        back in row-major order; every ray's arithmetic is the same as ``camera_rays`` + ``ray_cast``.
        """
        world_from_camera = np.asarray(world_from_camera, dtype=np.float64)
        if world_from_camera.shape != (4, 4):
            raise ValueError(f"world_from_camera must be (4, 4), got {world_from_camera.shape}")
        order, unit = _tiled_unit_rays(K=K, hw=hw, distortion=distortion)
        height, width = int(hw[0]), int(hw[1])
        z_depth = np.empty(height * width)
        image = np.empty((height * width, 3), dtype=np.uint8)
        optical_axis = world_from_camera[:3, 2]
        for start in range(0, len(order), _RENDER_BLOCK):  # blocks keep the temporaries cache-sized
            block = slice(start, start + _RENDER_BLOCK)
            directions = rotate(world_from_camera[:3, :3], unit[block])
            hits = self.ray_cast(np.broadcast_to(world_from_camera[:3, 3], directions.shape), directions, t_s)
            cos_axis = directions[:, 0] * optical_axis[0] + directions[:, 1] * optical_axis[1] \
                + directions[:, 2] * optical_axis[2]
            z_depth[order[block]] = hits.distance * cos_axis
            self._shade_into(hits, t_s, image=image, image_index=order[block])
        return image.reshape(height, width, 3), z_depth.reshape(height, width)


_TILE_HW = (16, 32)  # 512 pixels = one _CONE_CHUNK
_RENDER_BLOCK = 1 << 16  # rays per ray-cast-and-shade block (a multiple of the tile size)
_TILED_CACHE: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}


def _tiled_unit_rays(*, K: np.ndarray, hw: tuple[int, int],
                     distortion: tuple[float, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """(order (H*W,) row-major pixel index of each tiled ray, unit camera directions (H*W, 3) in that order).

    Pixels are grouped in ``_TILE_HW`` tiles (row-major tiles, row-major inside a tile). Cached.
    """
    cam = camera_directions(K=K, hw=hw, distortion=distortion)
    key = np.asarray(K, dtype=np.float64).tobytes() + np.array(hw, np.int64).tobytes() \
        + np.array(_check_distortion(distortion)).tobytes()
    cached = _TILED_CACHE.get(key)
    if cached is not None:
        return cached
    height, width = int(hw[0]), int(hw[1])
    v, u = np.divmod(np.arange(height * width), width)
    tiles_across = -(-width // _TILE_HW[1])
    order = np.argsort((v // _TILE_HW[0]) * tiles_across + u // _TILE_HW[1], kind="stable")
    tiled = cam[order]
    unit = tiled / np.sqrt(tiled[:, 0] ** 2 + tiled[:, 1] ** 2 + 1.0)[:, None]
    for array in (order, unit):
        array.flags.writeable = False
    if len(_TILED_CACHE) >= 8:
        _TILED_CACHE.pop(next(iter(_TILED_CACHE)))
    _TILED_CACHE[key] = (order, unit)
    return order, unit


# ---------------------------------------------------------------------------------------------- scene
def _place(world: World, *, ahead_m: float, left_m: float) -> tuple[float, float, float]:
    """World (x, y, heading) of a point ``ahead_m`` along the ego path and ``left_m`` to its left."""
    pose = world.world_from_ego(ahead_m / world.ego_speed)
    heading = math.atan2(pose[1, 0], pose[0, 0])
    return (pose[0, 3] - math.sin(heading) * left_m, pose[1, 3] + math.cos(heading) * left_m, heading)


def make_world(seed: int = 0) -> World:
    """A deterministic driving scene for ``seed``.

    Ego at 8-10 m/s on a gentle arc; a car ahead in the ego lane driving away slower (5-8 m/s, so it
    moves independently), an oncoming car in the left lane, parked cars on the right and a truck and
    a wall-like block on the left; all within ~5-40 m of the path during the first few seconds.
    """
    rng = np.random.default_rng([seed, 20231])
    speed = float(rng.uniform(8.0, 10.0))
    yaw_rate = float(rng.uniform(0.02, 0.06) * rng.choice([-1.0, 1.0]))
    ego_only = World(boxes=(), seed=seed, ego_speed=speed, ego_yaw_rate=yaw_rate)
    specs = [  # (ahead m, left m, size (l, w, h), speed along path m/s, category)
        (float(rng.uniform(16.0, 22.0)), 0.0, (4.5, 1.9, 1.6), float(rng.uniform(5.0, 8.0)), "vehicle.car"),
        (float(rng.uniform(45.0, 60.0)), 3.6, (4.8, 2.0, 1.7), -float(rng.uniform(5.0, 8.0)), "vehicle.car"),
        (float(rng.uniform(8.0, 11.0)), -3.8, (4.2, 1.8, 1.5), 0.0, "vehicle.car"),
        (float(rng.uniform(20.0, 26.0)), -4.0, (4.6, 1.9, 1.6), 0.0, "vehicle.car"),
        (float(rng.uniform(33.0, 40.0)), -3.9, (4.4, 1.8, 1.5), 0.0, "vehicle.car"),
        (float(rng.uniform(14.0, 20.0)), 8.0, (8.0, 2.5, 3.2), 0.0, "vehicle.truck"),
        (float(rng.uniform(30.0, 36.0)), 11.0, (12.0, 3.0, 4.5), 0.0, "static_object.bicycle_rack"),
    ]
    boxes = []
    for k, (ahead, left, size, along_speed, category) in enumerate(specs):
        x, y, heading = _place(ego_only, ahead_m=ahead, left_m=left)
        yaw = heading + float(rng.uniform(-0.05, 0.05))
        velocity = (along_speed * math.cos(heading), along_speed * math.sin(heading))
        boxes.append(Box(center_xy=(x, y), size=size, yaw=yaw, velocity_xy=velocity, category=category,
                         texture_seed=seed * 1000 + k))
    return World(boxes=tuple(boxes), seed=seed, ego_speed=speed, ego_yaw_rate=yaw_rate)
