"""Camera models as COLMAP names them, read from CAMERA.yaml or COLMAP's ``cameras.txt``.

CAMERA.yaml::

    model: OPENCV_FISHEYE        # one of MODELS
    width: 1920                  # the source frames' size in pixels
    height: 1080
    params: [fx, fy, cx, cy, k1, k2, k3, k4]   # COLMAP's order for the model (MODELS)
    pixel_centre: opencv         # optional: opencv (default) or colmap

``pixel_centre`` says where the centre of the top-left pixel is: ``opencv`` (0, 0), what
``cv2.calibrateCamera`` / ``cv2.fisheye.calibrate`` and KITTI's ``P_rect`` give; ``colmap`` (0.5, 0.5),
COLMAP's convention. ``cameras.txt`` (lines ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...``, ``#`` comments) is
read as it is, with COLMAP's convention; it must hold one camera (or several identical ones). Everything
downstream uses the OpenCV convention: a colmap file's cx, cy are moved by -0.5 when read.

Distortion models (x, y: normalised pinhole coordinates, r^2 = x^2 + y^2), from COLMAP's / OpenCV's docs:

- ``SIMPLE_RADIAL`` (f, cx, cy, k): d = 1 + k r^2, (x d, y d);
- ``RADIAL`` (f, cx, cy, k1, k2): d = 1 + k1 r^2 + k2 r^4;
- ``OPENCV`` (fx, fy, cx, cy, k1, k2, p1, p2): x d + 2 p1 x y + p2 (r^2 + 2 x^2), y d + p1 (r^2 + 2 y^2) + 2 p2 x y;
- ``OPENCV_FISHEYE`` (fx, fy, cx, cy, k1..k4): theta = atan(r), theta_d = theta (1 + k1 theta^2 + k2 theta^4
  + k3 theta^6 + k4 theta^8), (x, y) theta_d / r.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "OPENCV_FISHEYE": ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"),
}
"""Model name -> its parameters in COLMAP's order."""
PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
PIXEL_CENTRES = ("opencv", "colmap")
CALIBRATE_HINT = ("calibrate the camera first: COLMAP (feature_extractor + mapper, then model_converter "
                  "--output_type TXT) writes cameras.txt; OpenCV's calibrateCamera / cv2.fisheye.calibrate on "
                  "checkerboard views give fx fy cx cy and the distortion for CAMERA.yaml")


@dataclass(frozen=True)
class Camera:
    """A calibrated camera: ``model`` (``MODELS``), source ``width`` x ``height`` pixels, ``params`` in COLMAP's
    order with cx, cy in the OpenCV convention (top-left pixel centre at (0, 0)); ``source``: the file read."""

    model: str
    width: int
    height: int
    params: tuple[float, ...]
    source: str = ""

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source else ""
        if self.model not in MODELS:
            raise ValueError(f"{where}camera model {self.model!r}; allowed: {sorted(MODELS)}")
        names = MODELS[self.model]
        if len(self.params) != len(names):
            raise ValueError(f"{where}{self.model} needs {len(names)} params ({' '.join(names)}), "
                             f"got {len(self.params)}")
        if not all(math.isfinite(p) for p in self.params):
            raise ValueError(f"{where}params must be finite numbers, got {list(self.params)}")
        if self.width < 2 or self.height < 2:
            raise ValueError(f"{where}width and height must be >= 2 pixels, got {self.width}x{self.height}")
        fx, fy = self.focal
        if fx <= 0 or fy <= 0:
            raise ValueError(f"{where}focal lengths must be > 0, got fx={fx}, fy={fy}")

    @property
    def focal(self) -> tuple[float, float]:
        p = self.params
        return (p[0], p[0]) if MODELS[self.model][0] == "f" else (p[0], p[1])

    @property
    def principal_point(self) -> tuple[float, float]:
        p = self.params
        return (p[1], p[2]) if MODELS[self.model][0] == "f" else (p[2], p[3])

    @property
    def distortion(self) -> tuple[float, ...]:
        """The coefficients after fx fy cx cy (or f cx cy); empty for a pinhole."""
        return self.params[3:] if MODELS[self.model][0] == "f" else self.params[4:]

    @property
    def is_pinhole(self) -> bool:
        return self.model in PINHOLE_MODELS

    def K(self) -> np.ndarray:
        """(3, 3) float64 intrinsics of the source frames (pixels, OpenCV convention)."""
        (fx, fy), (cx, cy) = self.focal, self.principal_point
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    def distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised undistorted coordinates (any shape, float64) -> normalised distorted ones (element-wise)."""
        if self.is_pinhole:
            return x, y
        r2 = x * x + y * y
        if self.model == "OPENCV_FISHEYE":
            k1, k2, k3, k4 = self.distortion
            r = np.sqrt(r2)
            theta = _atan(r)
            t2 = theta * theta
            theta_d = theta * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
            scale = np.divide(theta_d, r, out=np.ones_like(r), where=r > 0)
            return x * scale, y * scale
        k = self.distortion
        k1, k2 = k[0], (k[1] if len(k) > 1 else 0.0)
        radial = 1.0 + r2 * (k1 + r2 * k2)
        if self.model != "OPENCV":
            return x * radial, y * radial
        p1, p2 = k[2], k[3]
        return (x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x),
                y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y)

    def monotonic(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Where the radial distortion still grows with the radius (beyond, the model folds over): bool."""
        r2 = x * x + y * y
        if self.is_pinhole:
            return np.ones(r2.shape, dtype=bool)
        if self.model == "OPENCV_FISHEYE":
            k1, k2, k3, k4 = self.distortion
            t2 = _atan(np.sqrt(r2)) ** 2  # d theta_d / d theta > 0
            return 1.0 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4))) > 0
        k = self.distortion
        k1, k2 = k[0], (k[1] if len(k) > 1 else 0.0)
        return 1.0 + r2 * (3 * k1 + r2 * 5 * k2) > 0  # d (r (1 + k1 r^2 + k2 r^4)) / dr > 0


def _atan(r: np.ndarray) -> np.ndarray:
    """Element-wise arctan through Python's ``math.atan`` (one libm routine, not numpy's CPU-dispatched loops)."""
    return np.fromiter(map(math.atan, r.ravel().tolist()), dtype=np.float64, count=r.size).reshape(r.shape)


def _from_mapping(obj: object, source: str) -> Camera:
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a mapping with model, width, height, params")
    allowed = {"model", "width", "height", "params", "pixel_centre"}
    unknown = sorted(set(obj) - allowed)
    missing = sorted({"model", "width", "height", "params"} - set(obj))
    if unknown or missing:
        raise ValueError(f"{source}: " + (f"unknown keys {unknown}; " if unknown else "")
                         + (f"missing keys {missing}; " if missing else "") + f"allowed: {sorted(allowed)}")
    centre = obj.get("pixel_centre", "opencv")
    if centre not in PIXEL_CENTRES:
        raise ValueError(f"{source}: pixel_centre {centre!r}; allowed: {list(PIXEL_CENTRES)}")
    params = obj["params"]
    if not isinstance(params, list) or not all(isinstance(p, (int, float)) and not isinstance(p, bool)
                                               for p in params):
        raise ValueError(f"{source}: params must be a list of numbers, got {params!r}")
    for name in ("width", "height"):
        if not isinstance(obj[name], int) or isinstance(obj[name], bool):
            raise ValueError(f"{source}: {name} must be an integer, got {obj[name]!r}")
    camera = Camera(model=str(obj["model"]), width=obj["width"], height=obj["height"],
                    params=tuple(float(p) for p in params), source=source)
    return _to_opencv_centre(camera) if centre == "colmap" else camera


def _to_opencv_centre(camera: Camera) -> Camera:
    params = list(camera.params)
    first = 1 if MODELS[camera.model][0] == "f" else 2
    params[first] -= 0.5
    params[first + 1] -= 0.5
    return Camera(model=camera.model, width=camera.width, height=camera.height, params=tuple(params),
                  source=camera.source)


def _from_cameras_txt(text: str, source: str) -> Camera:
    cameras = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            cameras.append((parts[1], int(parts[2]), int(parts[3]), tuple(float(p) for p in parts[4:])))
        except (IndexError, ValueError):
            raise ValueError(f"{source}: line {number}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', "
                             f"got {line!r}") from None
    if not cameras:
        raise ValueError(f"{source}: no camera in it; {CALIBRATE_HINT}")
    if len(set(cameras)) > 1:
        raise ValueError(f"{source}: holds {len(set(cameras))} different cameras; give each sequence its own "
                         "file (see builders.video) or run COLMAP with --ImageReader.single_camera 1")
    model, width, height, params = cameras[0]
    return _to_opencv_centre(Camera(model=model, width=width, height=height, params=params, source=source))


def load_camera(path: str | Path) -> Camera:
    """The camera of a CAMERA.yaml (``.yaml`` / ``.yml``) or a COLMAP ``cameras.txt`` (``.txt``).

    ValueError naming the file and the reason on a missing file, a bad model, a wrong parameter count."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the camera file ({exc.strerror}); {CALIBRATE_HINT}") from None
    if path.suffix.lower() == ".txt":
        return _from_cameras_txt(text, str(path))
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"{path}: camera file must be CAMERA.yaml (.yaml / .yml) or COLMAP's cameras.txt")
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    return _from_mapping(obj, str(path))
