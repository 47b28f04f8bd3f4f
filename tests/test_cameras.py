"""Camera files (CAMERA.yaml, COLMAP cameras.txt) and undistortion to a pinhole (``dynamo_depth.video.rectify``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dynamo_depth.video.cameras import Camera, load_camera
from dynamo_depth.video.rectify import Rectifier, RectifyOptions, crop_box
from tests.samples import SHARED

KITTI = SHARED / "fixtures" / "kitti_raw" / "2011_09_26"
needs_shared = pytest.mark.skipif(not KITTI.exists(), reason="../shared/fixtures/kitti_raw is absent")


def kitti_frame_and_K(frame: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(375, 1242, 3) uint8 RGB of image_02 frame ``frame`` of drive 0009 and its P_rect_02[:, :3]."""
    line = next(x for x in (KITTI / "calib_cam_to_cam.txt").read_text().splitlines() if x.startswith("P_rect_02"))
    K = np.array(line.split(":")[1].split(), float).reshape(3, 4)[:, :3]
    png = KITTI / "2011_09_26_drive_0009_sync" / "image_02" / "data" / f"{frame:010d}.png"
    return cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB), K


def distort_with_opencv(pinhole: np.ndarray, K: np.ndarray, camera: Camera) -> np.ndarray:
    """The frame ``camera`` would see of the scene in ``pinhole`` (intrinsics K), through OpenCV's own models."""
    height, width = camera.height, camera.width
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.stack([u.ravel(), v.ravel()], 1)[:, None, :]
    distortion = np.array(camera.distortion)
    if camera.model == "OPENCV_FISHEYE":
        rays = cv2.fisheye.undistortPoints(pixels, camera.K(), distortion)
    else:
        rays = cv2.undistortPointsIter(pixels, camera.K(), distortion, None, None,
                                       (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12))
    rays = rays.reshape(height, width, 2)
    map_x = (K[0, 0] * rays[..., 0] + K[0, 2]).astype(np.float32)
    map_y = (K[1, 1] * rays[..., 1] + K[1, 2]).astype(np.float32)
    return cv2.remap(pinhole, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def ideal_view(pinhole: np.ndarray, K: np.ndarray, rectifier: Rectifier) -> tuple[np.ndarray, np.ndarray]:
    """The scene rendered straight into the rectifier's pinhole view and box (then INTER_AREA to the output
    size), and the output pixels whose rays lie inside the original frame (2-pixel margin)."""
    x0, y0, width, height = rectifier.box
    v, u = np.mgrid[y0:y0 + height, x0:x0 + width].astype(np.float64)
    view = rectifier.view_K
    map_x = (K[0, 0] * (u - view[0, 2]) / view[0, 0] + K[0, 2]).astype(np.float32)
    map_y = (K[1, 1] * (v - view[1, 2]) / view[1, 1] + K[1, 2]).astype(np.float32)
    rendered = cv2.remap(pinhole, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    h, w = pinhole.shape[:2]
    inside = ((map_x >= 2) & (map_x <= w - 3) & (map_y >= 2) & (map_y <= h - 3)).astype(np.uint8) * 255
    out_h, out_w = rectifier.options.out_hw
    return (cv2.resize(rendered, (out_w, out_h), interpolation=cv2.INTER_AREA),
            cv2.resize(inside, (out_w, out_h), interpolation=cv2.INTER_AREA) == 255)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    err = np.mean((a.astype(np.float64) - b.astype(np.float64))[mask] ** 2)
    return float(10 * np.log10(255.0 ** 2 / err))


FISHEYE = Camera(model="OPENCV_FISHEYE", width=1242, height=375,
                 params=(700.0, 700.0, 620.5, 187.0, 0.2, -0.05, 0.01, -0.002))
RADTAN = Camera(model="OPENCV", width=1242, height=375,
                params=(680.0, 690.0, 615.0, 190.0, -0.25, 0.06, 0.001, -0.0015))


@needs_shared
@pytest.mark.parametrize("camera", [FISHEYE, RADTAN], ids=["fisheye", "opencv"])
def test_distorted_by_opencv_then_undistorted_matches_the_original(camera: Camera) -> None:
    original, K = kitti_frame_and_K()
    distorted = distort_with_opencv(original, K, camera)
    rectifier = Rectifier.plan(camera, RectifyOptions())
    out = rectifier.apply(distorted)
    assert out.shape == (192, 640, 3) and rectifier.coverage().all()  # the widest view without black corners
    truth, inside = ideal_view(original, K, rectifier)
    assert inside.mean() > 0.8
    assert psnr(out, truth, inside) >= 30.0
    # a scale 1 % narrower or wider than the chosen one would not be the widest view inside the frame
    assert Rectifier.plan(camera, RectifyOptions(fov_deg=_fov(rectifier) * 1.01)).coverage().mean() < 1.0


def _fov(rectifier: Rectifier) -> float:
    return float(np.degrees(2 * np.arctan(rectifier.box[2] / 2 / rectifier.view_K[0, 0])))


def test_fov_option_sets_the_view_focal_and_leaves_black_outside() -> None:
    rectifier = Rectifier.plan(FISHEYE, RectifyOptions(fov_deg=120.0))
    assert rectifier.box == (0, 1, 1242, 373)
    assert rectifier.view_K[0, 0] == pytest.approx(621 / np.tan(np.radians(60)), rel=1e-12)
    assert rectifier.view_K[1, 1] == pytest.approx(rectifier.view_K[0, 0], rel=1e-12)  # fx == fy here
    coverage = rectifier.coverage()
    assert not coverage[0, 0] and coverage[96, 320]


def test_crop_rule_and_output_intrinsics_by_hand() -> None:
    assert crop_box((375, 1242), (192, 640), "crop") == (0, 1, 1242, 373)  # round(1242 * 192 / 640) = 373
    assert crop_box((1080, 1920), (192, 640), "crop") == (0, 252, 1920, 576)
    assert crop_box((480, 1920), (192, 640), "crop") == (160, 0, 1600, 480)
    assert crop_box((1080, 1920), (192, 640), "stretch") == (0, 0, 1920, 1080)
    camera = Camera(model="PINHOLE", width=1920, height=1080, params=(1000.0, 1001.0, 959.5, 539.5))
    rectifier = Rectifier.plan(camera, RectifyOptions())
    want = np.array([[1000 / 3, 0, 959.5 / 3], [0, 1001 / 3, (539.5 - 252) / 3], [0, 0, 1]])
    np.testing.assert_allclose(rectifier.K, want, rtol=1e-12)
    frame = np.zeros((1080, 1920, 3), np.uint8)
    frame[252:252 + 576] = 200  # exactly the box: the output is that band, resized
    assert (rectifier.apply(frame) == 200).all()
    with pytest.raises(ValueError, match="frame is 1280x720, the camera .* is 1920x1080"):
        rectifier.apply(np.zeros((720, 1280, 3), np.uint8))
    with pytest.raises(ValueError, match="--fov applies to distorted models"):
        Rectifier.plan(camera, RectifyOptions(fov_deg=90))
    with pytest.raises(ValueError, match=r"resize 'squash'; allowed: \['crop', 'stretch'\]"):
        RectifyOptions(resize="squash")


def test_camera_yaml_and_colmap_cameras_txt(tmp_path: Path) -> None:
    yaml_file = tmp_path / "CAMERA.yaml"
    yaml_file.write_text("model: OPENCV_FISHEYE\nwidth: 1242\nheight: 375\n"
                         "params: [700, 700, 620.5, 187, 0.2, -0.05, 0.01, -0.002]\n")
    camera = load_camera(yaml_file)
    assert camera.params == FISHEYE.params and camera.model == "OPENCV_FISHEYE" and camera.source == str(yaml_file)
    txt = tmp_path / "cameras.txt"
    txt.write_text("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                   "# Number of cameras: 1\n1 SIMPLE_RADIAL 1920 1080 1500.5 960 540 -0.031\n")
    colmap = load_camera(txt)
    assert colmap.model == "SIMPLE_RADIAL" and (colmap.width, colmap.height) == (1920, 1080)
    assert colmap.params == (1500.5, 959.5, 539.5, -0.031)  # COLMAP's pixel centres moved to OpenCV's
    assert colmap.focal == (1500.5, 1500.5) and colmap.distortion == (-0.031,)
    txt.write_text("1 PINHOLE 640 480 500 500 320 240\n2 PINHOLE 640 480 510 500 320 240\n")
    with pytest.raises(ValueError, match="holds 2 different cameras"):
        load_camera(txt)
    yaml_file.write_text("model: OPENCV\nwidth: 640\nheight: 480\nparams: [500, 500, 320, 240]\n")
    with pytest.raises(ValueError, match=r"CAMERA.yaml: OPENCV needs 8 params \(fx fy cx cy k1 k2 p1 p2\), got 4"):
        load_camera(yaml_file)
    yaml_file.write_text("model: KANNALA\nwidth: 640\nheight: 480\nparams: [500]\n")
    with pytest.raises(ValueError, match="camera model 'KANNALA'; allowed"):
        load_camera(yaml_file)
    with pytest.raises(ValueError, match="missing.yaml: cannot read the camera file.*calibrate the camera first"):
        load_camera(tmp_path / "missing.yaml")
