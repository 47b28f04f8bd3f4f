"""The synthetic world: hand-computed ray casts, ego arc, box motion, camera model, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from dynamo_depth.synth import boxes as boxes_module
from dynamo_depth.synth import world as world_module
from dynamo_depth.synth.world import (
    Box,
    World,
    camera_directions,
    camera_rays,
    distort_normalized,
    hdl64_directions,
    make_world,
    sky_colour,
    undistort_normalized,
)

# camera looking along world +x from height 1.5 m: camera x = -world y, camera y = -world z, camera z = world x
CAMERA_AXES_IN_WORLD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _forward_camera(height: float) -> np.ndarray:
    world_from_camera = np.eye(4)
    world_from_camera[:3, :3] = CAMERA_AXES_IN_WORLD
    world_from_camera[2, 3] = height
    return world_from_camera


def _empty_world(**kwargs: float) -> World:
    return World(boxes=(), seed=3, ego_speed=kwargs.get("speed", 10.0), ego_yaw_rate=kwargs.get("yaw_rate", 0.0))


def test_box_pose_moves_with_constant_velocity_and_sits_on_ground() -> None:
    box = Box(center_xy=(10.0, -2.0), size=(4.0, 2.0, 1.6), yaw=math.pi / 2, velocity_xy=(1.5, -0.5))
    pose = box.world_from_box(2.0)
    np.testing.assert_allclose(pose[:3, 3], [13.0, -3.0, 0.8])
    np.testing.assert_allclose(pose[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    assert box.is_moving and not Box(center_xy=(0, 0), size=(1, 1, 1), yaw=0).is_moving
    with pytest.raises(ValueError, match="size"):
        Box(center_xy=(0, 0), size=(1.0, -1.0, 1.0), yaw=0.0)


def test_ego_arc_hand_values_and_composition() -> None:
    straight = _empty_world(speed=9.0)
    np.testing.assert_allclose(straight.world_from_ego(2.0)[:3, 3], [18.0, 0.0, 0.0])
    turning = _empty_world(speed=10.0, yaw_rate=0.1)
    quarter = turning.world_from_ego(math.pi / 2 / 0.1)  # quarter circle of radius v / w = 100 m
    np.testing.assert_allclose(quarter[:3, 3], [100.0, 100.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(quarter[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    # constant speed and yaw rate: pose(a + b) = pose(a) @ pose(b) (the motion is a one-parameter group)
    for a, b in ((0.3, 1.2), (2.0, 0.7)):
        np.testing.assert_allclose(turning.world_from_ego(a + b), turning.world_from_ego(a) @ turning.world_from_ego(b),
                                   atol=1e-9)
    tiny = _empty_world(speed=10.0, yaw_rate=1e-9)  # series branch agrees with the straight line
    np.testing.assert_allclose(tiny.world_from_ego(1.0)[:3, 3], [10.0, 5e-9, 0.0], atol=1e-12)


def test_ray_cast_ground_box_moving_box_and_sky() -> None:
    boxes = (Box(center_xy=(10.0, 0.0), size=(4.0, 2.0, 2.0), yaw=0.0),
             Box(center_xy=(0.0, 20.0), size=(4.0, 2.0, 2.0), yaw=math.pi / 2, velocity_xy=(0.0, 1.0)))
    world = World(boxes=boxes, seed=0, ego_speed=8.0, ego_yaw_rate=0.0)
    origins = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [9.0, 0.0, 1.0]])
    directions = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 1.0], [1.0, 0.0, -0.5]])
    hits = world.ray_cast(origins, directions, 2.0)
    # ground at 45 deg from 2 m; box 1 front face x = 8; box 2 (rotated: length along y) at y = 22 - 2 = 20 at t=2;
    # upward ray misses; a ray starting inside box 1 ignores it and meets the ground 2 m further
    np.testing.assert_allclose(hits.distance[:3], [2 * math.sqrt(2), 8.0, 20.0])
    np.testing.assert_array_equal(hits.surface, [0, 1, 2, -1, 0])
    np.testing.assert_allclose(hits.points[0], [2.0, 0.0, 0.0])
    np.testing.assert_allclose(hits.points[1], [8.0, 0.0, 1.0])
    np.testing.assert_allclose(hits.points[4], [11.0, 0.0, 0.0])
    assert np.isinf(hits.distance[3]) and np.all(np.isnan(hits.points[3]))
    with pytest.raises(ValueError, match="N, 3"):
        world.ray_cast(origins, directions[:2], 0.0)


def test_render_depth_of_ground_and_facing_box_matches_pinhole_geometry() -> None:
    K = np.array([[100.0, 0.0, 30.0], [0.0, 100.0, 20.0], [0.0, 0.0, 1.0]])
    box = Box(center_xy=(12.0, 0.0), size=(2.0, 4.0, 3.0), yaw=0.0)  # front face at x = 11, 3 m tall
    world = World(boxes=(box,), seed=1, ego_speed=8.0, ego_yaw_rate=0.0)
    image, depth = world.render(K=K, world_from_camera=_forward_camera(1.5), hw=(40, 60), t_s=0.0)
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8 and depth.shape == (40, 60)
    # rows below the horizon (v > 20) that miss the box see the ground at z = f * h / (v - cy)
    for v in (30, 35, 39):
        assert depth[v, 2] == pytest.approx(100.0 * 1.5 / (v - 20.0), rel=1e-12)
    # the box face spans |camera x| < 2 m and camera y from -1.5 to 1.5 m at z = 11 m: constant depth
    assert depth[20, 30] == pytest.approx(11.0, rel=1e-12) and depth[10, 25] == pytest.approx(11.0, rel=1e-12)
    assert np.isinf(depth[0, 0])  # above the box: sky
    horizon = sky_colour(np.array([[1.0, 0.0, 0.0]]))[0]
    assert np.all(np.abs(image[19, 0].astype(float) - horizon) < 25)  # just above the horizon, sky-like colour


def test_camera_rays_unit_and_distortion_inverts() -> None:
    K = np.array([[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]])
    distortion = (-0.3, 0.1, 0.001, -0.0005, 0.0)
    directions = camera_directions(K=K, hw=(48, 64), distortion=distortion)
    distorted = distort_normalized(directions[:, :2], distortion)
    v, u = np.divmod(np.arange(48 * 64), 64)
    np.testing.assert_allclose(distorted[:, 0] * 500.0 + 320.0, u, atol=1e-6)
    np.testing.assert_allclose(distorted[:, 1] * 480.0 + 240.0, v, atol=1e-6)
    np.testing.assert_allclose(undistort_normalized(distorted, distortion), directions[:, :2], atol=1e-9)
    origins, unit = camera_rays(K=K, world_from_camera=_forward_camera(2.0), hw=(48, 64))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0)
    np.testing.assert_allclose(origins, np.tile([0.0, 0.0, 2.0], (48 * 64, 1)))
    with pytest.raises(ValueError, match="distortion"):
        camera_directions(K=K, hw=(4, 4), distortion=(0.1, 0.2))
    with pytest.raises(ValueError, match="K must be"):
        camera_directions(K=np.eye(2), hw=(4, 4))


def test_box_texture_moves_with_the_box() -> None:
    moving = Box(center_xy=(10.0, 3.0), size=(4.0, 2.0, 1.6), yaw=0.3, velocity_xy=(6.0, 0.0), texture_seed=7)
    world = World(boxes=(moving,), seed=0, ego_speed=8.0, ego_yaw_rate=0.0)
    local_points = np.array([[-2.0, 0.3, 0.1, 1.0], [-2.0, -0.6, -0.4, 1.0], [1.0, -1.0, 0.2, 1.0]])  # rear + side
    offsets = np.array([[-5.0, 0.0, 0.5], [-4.0, 1.0, 0.0], [0.5, -6.0, 0.0]])  # same box-local viewpoint
    colours = []
    for t_s in (0.0, 1.0):
        targets = (moving.world_from_box(t_s) @ local_points.T).T[:, :3]
        rotation = moving.world_from_box(t_s)[:3, :3]
        origins = targets + offsets @ rotation.T
        hits = world.ray_cast(origins, targets - origins, t_s)
        assert np.all(hits.surface == 1)
        np.testing.assert_allclose(hits.points, targets, atol=1e-9)
        colours.append(world.shade(hits, t_s))
    np.testing.assert_array_equal(colours[0], colours[1])
    assert len({tuple(c) for c in colours[0]}) > 1  # faces are textured, not flat


def test_make_world_is_deterministic_and_has_the_promised_scene() -> None:
    world = make_world(4)
    assert make_world(4) == world and make_world(5) != world
    assert 8.0 <= world.ego_speed <= 10.0 and 0.0 < abs(world.ego_yaw_rate) <= 0.1
    speeds = [math.hypot(*box.velocity_xy) for box in world.boxes]
    assert any(5.0 <= s <= 8.0 for s in speeds) and any(s == 0.0 for s in speeds)
    ego = world.world_from_ego(0.0)[:3, 3]
    near = [np.linalg.norm(box.center_at(0.0)[:2] - ego[:2]) for box in world.boxes]
    assert sum(5.0 <= d <= 40.0 for d in near) >= 4
    K = np.array([[200.0, 0.0, 80.0], [0.0, 200.0, 30.0], [0.0, 0.0, 1.0]])
    cam = world.world_from_ego(0.5) @ np.linalg.inv(world.world_from_ego(0.0)) @ _forward_camera(1.6)
    first = world.render(K=K, world_from_camera=cam, hw=(60, 160), t_s=0.5)
    second = make_world(4).render(K=K, world_from_camera=cam, hw=(60, 160), t_s=0.5)
    assert first[0].tobytes() == second[0].tobytes() and first[1].tobytes() == second[1].tobytes()
    ground = first[0][45:, :, :].astype(float)
    assert ground.std() > 12.0  # textured enough for photometric losses


def test_hdl64_directions_cover_the_vertical_field() -> None:
    rays = hdl64_directions(azimuth_step_deg=1.0)
    assert rays.shape == (360 * 64, 3)
    np.testing.assert_allclose(np.linalg.norm(rays, axis=1), 1.0)
    elevation = np.degrees(np.arcsin(rays[:, 2]))
    assert elevation.max() == pytest.approx(2.0) and elevation.min() == pytest.approx(-24.8)
    np.testing.assert_allclose(rays[0], [math.cos(math.radians(2.0)), 0.0, math.sin(math.radians(2.0))])


def _render_reference(world: World, *, K: np.ndarray, world_from_camera: np.ndarray, hw: tuple[int, int],
                      t_s: float, distortion: tuple[float, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row-major rays cast in batches too small for cone culling: the plain per-ray definition."""
    origins, directions = camera_rays(K=K, world_from_camera=world_from_camera, hw=hw, distortion=distortion)
    image, z_depth = [], []
    for start in range(0, len(directions), 1000):
        hits = world.ray_cast(origins[start:start + 1000], directions[start:start + 1000], t_s)
        d, axis = directions[start:start + 1000], world_from_camera[:3, 2]  # cos to the optical axis, no BLAS
        z_depth.append(hits.distance * (d[:, 0] * axis[0] + d[:, 1] * axis[1] + d[:, 2] * axis[2]))
        image.append(world.shade(hits, t_s))
    return np.concatenate(image).reshape(*hw, 3), np.concatenate(z_depth).reshape(hw)


@pytest.mark.parametrize("distortion", [None, (-0.2, 0.05, 0.001, -0.0005)])
def test_tiled_blocked_render_is_bit_identical_to_per_ray_casting(monkeypatch: pytest.MonkeyPatch,
                                                                   distortion: tuple[float, ...] | None) -> None:
    monkeypatch.setattr(world_module, "_RENDER_BLOCK", 4096)  # several blocks, partial edge tiles (100 x 150)
    world = make_world(2)
    K = np.array([[90.0, 0.0, 74.5], [0.0, 90.0, 49.5], [0.0, 0.0, 1.0]])
    cam = world.world_from_ego(0.4) @ _forward_camera(1.6)
    image, depth = world.render(K=K, world_from_camera=cam, hw=(100, 150), t_s=0.4, distortion=distortion)
    ref_image, ref_depth = _render_reference(world, K=K, world_from_camera=cam, hw=(100, 150), t_s=0.4,
                                             distortion=distortion)
    assert image.tobytes() == ref_image.tobytes() and depth.tobytes() == ref_depth.tobytes()
    assert np.isinf(depth).any() and np.isfinite(depth).mean() > 0.3  # sky, ground and boxes all present


def test_ray_cones_never_drop_a_ray_inside_a_bounding_sphere() -> None:
    rng = np.random.default_rng(5)
    rays = rng.normal(size=(20000, 3))
    rays /= np.linalg.norm(rays, axis=1)[:, None]
    rays = rays[np.argsort(np.arctan2(rays[:, 1], rays[:, 0]))]  # neighbouring rays: cones of varied width
    columns = (rays[:, 0].copy(), rays[:, 1].copy(), rays[:, 2].copy())
    cones = boxes_module._RayCones.of(columns, chunk=256)
    assert cones.axes.shape == (79, 3) and np.all(cones.half_angle > 0)
    for _ in range(40):
        centre = rng.uniform(-30.0, 30.0, size=3)
        radius = float(rng.uniform(0.5, 3.0))
        distance = float(np.linalg.norm(centre))
        if distance <= radius:
            continue
        inside = np.flatnonzero(rays @ centre >= math.sqrt(distance ** 2 - radius ** 2))  # ray meets the sphere
        near = cones.rays_near(list(centre), radius, len(rays))
        assert np.isin(inside, near).all() and len(near) < len(rays)


def test_cli_small_reproduces_the_reference_waymo_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dynamo_depth.synth.cli import _parser, main, small_options
    from dynamo_depth.synth.waymo import WaymoSynthOptions, write_waymo

    assert "--small" in _parser().format_help()
    extra, note = small_options("waymo")
    assert note is None and extra == {"options": WaymoSynthOptions(top_width=400, short_range_hw=(60, 180),
                                                                   image_hw=(320, 480))}
    for dataset in ("kitti", "nuscenes"):
        assert small_options(dataset) == ({}, f"synth {dataset}: --small has no effect "
                                               "(this writer has no reduced-size option)")
    assert main(["waymo", str(tmp_path / "cli"), "--frames", "1", "--seed", "3", "--small"]) == 0
    assert "--small" not in capsys.readouterr().out  # no note for a writer that supports it
    direct = write_waymo(tmp_path / "direct", sequences=1, frames=1, seed=3, options=extra["options"])
    written = sorted((tmp_path / "cli").rglob("*.tfrecord"))
    assert [p.name for p in written] == [p.name for p in direct]
    assert written[0].read_bytes() == direct[0].read_bytes()
    default = write_waymo(tmp_path / "default", sequences=1, frames=1, seed=3)
    assert default[0].stat().st_size > written[0].stat().st_size  # --small really is smaller
