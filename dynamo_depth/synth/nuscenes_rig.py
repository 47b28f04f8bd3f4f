"""The synthetic nuScenes rig and its fixed frames: sensor rates, the CAM_FRONT and LIDAR_TOP calibration
(values of a real nuScenes calibrated_sensor record), the "global" frame (a fixed yaw and offset of the
world), the category / attribute / visibility vocabularies, and the quaternion <-> rotation conversions
of nuScenes records (w, x, y, z). Used by ``dynamo_depth.synth.nuscenes``, which writes the dataroot.
"""

from __future__ import annotations

import math

import numpy as np

from dynamo_depth.synth.fused import norm_sequential

IMAGE_HW = (900, 1600)
JPEG_QUALITY = 90
CAMERA_PERIOD_US = 1_000_000 / 12.0
LIDAR_PERIOD_US = 50_000
CAMERA_FRAMES_PER_SAMPLE = 6
LIDAR_SWEEPS_PER_SAMPLE = 10
LIDAR_MAX_RANGE_M = 70.0
LIDAR_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)
LIDAR_AZIMUTH_COUNT = 1091  # 360 / 1091 = 0.33 deg per step
FIRST_SCENE_START_US = 1_531_883_530_000_000
SCENE_SPACING_US = 3_600_000_000

# Real nuScenes CAM_FRONT calibration (camera_from -> ego: translation metres, rotation w, x, y, z).
CAM_FRONT_INTRINSIC = ((1266.417203046554, 0.0, 816.2670197447984),
                       (0.0, 1266.417203046554, 491.50706579294757), (0.0, 0.0, 1.0))
CAM_FRONT_TRANSLATION = (1.70079118954, 0.0159456324149, 1.51095763913)
CAM_FRONT_ROTATION = (0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755)
# LIDAR_TOP: x right, y forward, z up; about yaw -90 deg in the ego frame (x forward, y left, z up).
LIDAR_TOP_TRANSLATION = (0.943713, 0.0, 1.84023)
LIDAR_TOP_ROTATION = (0.7077955119163518, -0.006492242056004365, 0.010646214713995808, -0.7063073142877817)

GLOBAL_YAW_RAD = math.radians(28.0)
GLOBAL_OFFSET_M = (400.0, 1100.0, 0.0)

# nuScenes(-lidarseg) category names with their lidarseg indices.
CATEGORY_NAMES = (
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child",
    "human.pedestrian.construction_worker", "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer", "human.pedestrian.stroller", "human.pedestrian.wheelchair",
    "movable_object.barrier", "movable_object.debris", "movable_object.pushable_pullable",
    "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle", "vehicle.bus.bendy",
    "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
    "flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade",
    "static.other", "static.vegetation", "vehicle.ego")
ATTRIBUTE_NAMES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider",
                   "cycle.without_rider", "pedestrian.sitting_lying_down", "pedestrian.standing",
                   "pedestrian.moving")
VISIBILITY_LEVELS = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))


def _rotation_from_quaternion(wxyz) -> np.ndarray:
    """(3, 3) rotation matrix of a unit quaternion (w, x, y, z) (normalised first)."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / norm_sequential(wxyz)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _quaternion_from_rotation(rotation: np.ndarray) -> list[float]:
    """Unit quaternion [w, x, y, z] (w >= 0) of a (3, 3) rotation matrix (Shepperd's method)."""
    r = np.asarray(rotation, dtype=np.float64)
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = [(r[k, j] - r[j, k]) / s, 0.0, 0.0, 0.0]
        q[1 + i], q[1 + j], q[1 + k] = 0.25 * s, (r[j, i] + r[i, j]) / s, (r[k, i] + r[i, k]) / s
    q = np.asarray(q) / norm_sequential(q)
    return [float(v) for v in (q if q[0] >= 0 else -q)]


def pose_from_record(*, translation, rotation) -> np.ndarray:
    """(4, 4) target_from_source of a nuScenes record's translation (m) and rotation (w, x, y, z)."""
    out = np.eye(4)
    out[:3, :3] = _rotation_from_quaternion(rotation)
    out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


def _make_global_from_world() -> np.ndarray:
    out = np.eye(4)
    c, s = math.cos(GLOBAL_YAW_RAD), math.sin(GLOBAL_YAW_RAD)
    out[:2, :2] = [[c, -s], [s, c]]
    out[:3, 3] = GLOBAL_OFFSET_M
    return out


GLOBAL_FROM_WORLD = _make_global_from_world()
EGO_FROM_CAMERA = pose_from_record(translation=CAM_FRONT_TRANSLATION, rotation=CAM_FRONT_ROTATION)
EGO_FROM_LIDAR = pose_from_record(translation=LIDAR_TOP_TRANSLATION, rotation=LIDAR_TOP_ROTATION)
