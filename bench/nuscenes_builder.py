"""Frames per second per core: ``builders.nuscenes`` vs a file-per-frame loop done the original way.

``PYTHONPATH=. python bench/nuscenes_builder.py [DATAROOT] [--version V] [--sequences N --frames N]``

Without DATAROOT a synthetic dataroot is generated first (``write_nuscenes``, not timed). Both sides
run in this one process, one core each, and load the tables themselves (timed):

- builder: ``build(..., workers=0)`` into a temporary folder (shards + manifest; one frame = one
  sample: its JPEG, its LiDAR projection, motion labels at keyframes, the triplet written to the tar);
- original way: for every CAM_FRONT frame, PIL open, resize to 512x288, save a JPEG into a folder;
  nearest LIDAR_TOP sweep by a Python scan; ``LidarPointCloud.from_file`` moved through ego and global
  frames with the devkit's ``rotate``/``translate`` and ``view_points``; one ``.npy`` saved per frame.

Heavy imports happen before timing. Figures: wall seconds, CPU seconds of this process, frames / CPU second (= frames/s per core; robust
to other jobs on a shared machine) and frames / wall second.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builders import nuscenes as nb  # noqa: E402
from builders.runner import build  # noqa: E402


def _timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    frames = function(*args)
    return frames, time.perf_counter() - wall, time.process_time() - cpu


def run_builder(dataroot: str, version: str, out: str) -> int:
    nb._NUSCENES.clear()  # load the tables inside the timed region, as the original loop does
    report = build(nb.SPEC, dataroot, out, split="all", options={"split": "all", "version": version}, workers=0,
                   show_progress=False)
    if not report.ok:
        raise SystemExit(f"builder failed: {report.manifest.failed}")
    return report.manifest.num_samples


def _original_depth(nusc, cam: dict, lidar: dict) -> np.ndarray:
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import view_points
    from pyquaternion import Quaternion

    cloud = LidarPointCloud.from_file(os.path.join(nusc.dataroot, lidar["filename"]))
    for record, inverse in ((nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"]), False),
                            (nusc.get("ego_pose", lidar["ego_pose_token"]), False),
                            (nusc.get("ego_pose", cam["ego_pose_token"]), True),
                            (nusc.get("calibrated_sensor", cam["calibrated_sensor_token"]), True)):
        rotation = Quaternion(record["rotation"]).rotation_matrix
        if inverse:
            cloud.translate(-np.array(record["translation"]))
            cloud.rotate(rotation.T)
        else:
            cloud.rotate(rotation)
            cloud.translate(np.array(record["translation"]))
    depths = cloud.points[2, :]
    K = np.array(nusc.get("calibrated_sensor", cam["calibrated_sensor_token"])["camera_intrinsic"])
    points = view_points(cloud.points[:3, :], K, normalize=True)
    keep = (depths > 1) & (points[0] > 1) & (points[0] < cam["width"] - 1) & (points[1] > 1) & (points[1] < cam["height"] - 1)
    return np.column_stack([points[:2, keep].T, depths[keep]])


def run_original_way(dataroot: str, version: str, out: str) -> int:
    from nuscenes.nuscenes import NuScenes
    from PIL import Image

    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    frames = 0
    for scene in nusc.scene:
        chains = nb.scene_frames(nusc, scene)  # the same chains; the nearest sweep is searched again below
        sweeps = nb._chain(nusc, chains.lidars[0])
        folder = Path(out) / scene["name"]
        (folder / "rgb").mkdir(parents=True)
        (folder / "depth").mkdir()
        for index, cam in enumerate(chains.cameras):
            image = Image.open(os.path.join(dataroot, cam["filename"])).convert("RGB")
            image.resize((512, 288), Image.BILINEAR).save(folder / "rgb" / f"{index:06d}.jpg", quality=95)
            lidar = sweeps[int(np.argmin([abs(s["timestamp"] - cam["timestamp"]) for s in sweeps]))]
            np.save(folder / "depth" / f"{index:06d}.npy", _original_depth(nusc, cam, lidar))
            frames += 1
    return frames


def _warm_imports() -> None:
    """Import the heavy modules both sides use (devkit ~2.4 s, cv2, PIL, pyquaternion) before any timing."""
    import cv2  # noqa: F401
    import nuscenes.nuscenes  # noqa: F401
    import nuscenes.utils.data_classes  # noqa: F401
    import nuscenes.utils.geometry_utils  # noqa: F401
    import PIL.Image  # noqa: F401
    import pyquaternion  # noqa: F401
    import tqdm  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataroot", nargs="?", default=None, help="nuScenes dataroot (default: generate one)")
    parser.add_argument("--version", default=None)
    parser.add_argument("--sequences", type=int, default=2)
    parser.add_argument("--frames", type=int, default=12)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nuscenes-bench-") as tmp:
        dataroot = args.dataroot
        if dataroot is None:
            from dynamo_depth.synth.nuscenes import write_nuscenes

            dataroot = str(Path(tmp) / "raw")
            write_nuscenes(dataroot, sequences=args.sequences, frames=args.frames, seed=0)
        version = nb.resolve_version(dataroot, args.version)
        _warm_imports()
        rows = [("builder (shards)", *_timed(run_builder, dataroot, version, str(Path(tmp) / "shards"))),
                ("original way (files)", *_timed(run_original_way, dataroot, version, str(Path(tmp) / "files")))]
    print(f"{'pipeline':<22}{'frames':>8}{'wall s':>9}{'cpu s':>8}{'frames/cpu-s':>14}{'frames/wall-s':>15}")
    for name, frames, wall, cpu in rows:
        print(f"{name:<22}{frames:>8}{wall:>9.2f}{cpu:>8.2f}{frames / cpu:>14.1f}{frames / wall:>15.1f}")
    print(f"builder / original, per core: {(rows[0][1] / rows[0][3]) / (rows[1][1] / rows[1][3]):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
