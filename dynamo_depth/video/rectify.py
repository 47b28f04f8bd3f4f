"""Source frames of a calibrated camera -> pinhole frames at the training size, and their intrinsics.

The rule (``Rectifier.plan``), for a source of W x H pixels and an output of w x h (default 640 x 192):

1. **Box.** ``resize="crop"`` (default): the largest box of the output's aspect ratio centred in the W x H
   frame: if W / H > w / h the box is H high and round(H w / h) wide, at x0 = (W - width) // 2; else W
   wide and round(W h / w) high at y0 = (H - height) // 2. ``resize="stretch"``: the whole frame (the
   aspect ratio changes, as the KITTI builder's 1242x375 -> 640x192 resize).
2. **Undistortion** (distorted models only) into a pinhole "view" of the W x H frame with the source's
   principal point and focal lengths ``s fx, s fy``: each box pixel (u, v) samples the source at
   ``fx * distort((u - cx) / (s fx), (v - cy) / (s fy)) + (cx, cy)`` (``Camera.distort``; bilinear,
   ``cv2.remap``, maps computed once per camera and quantised to 1/32 pixel by ``cv2.convertMaps``).
   ``s`` is the smallest scale (widest view) at which every pixel on the box's border samples inside the
   source frame ([0, W-1] x [0, H-1]) where the model is still monotonic, found by 48 bisection steps,
   so no black corner enters training; or, with ``fov_deg``, the scale at which the box is ``fov_deg``
   degrees wide (``s fx = (box width / 2) / tan(fov / 2)``; black outside the source, see ``coverage``).
   Pinhole models are not resampled (s = 1).
3. **Resize** of the box to w x h with ``cv2.INTER_AREA``.

The output intrinsics ``K`` are the view's with cx - x0, cy - y0, then scaled by w / box width and
h / box height (``geometry.resize_intrinsics``: no half-pixel shift, the project's convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynamo_depth.geometry import resize_intrinsics
from dynamo_depth.video.cameras import Camera

RESIZE_RULES = ("crop", "stretch")
DEFAULT_OUT_HW = (192, 640)
_BISECTION_STEPS = 48


@dataclass(frozen=True)
class RectifyOptions:
    """out_hw: output (H, W) pixels; resize: one of ``RESIZE_RULES``; fov_deg: horizontal field of view of
    the output for distorted models (None: the widest without black corners)."""

    out_hw: tuple[int, int] = DEFAULT_OUT_HW
    resize: str = "crop"
    fov_deg: float | None = None

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"resize {self.resize!r}; allowed: {list(RESIZE_RULES)}")
        if len(self.out_hw) != 2 or min(self.out_hw) < 8:
            raise ValueError(f"output size must be two sizes >= 8 pixels, got {self.out_hw}")
        if self.fov_deg is not None and not 1.0 <= self.fov_deg < 179.0:
            raise ValueError(f"fov must be in [1, 179) degrees, got {self.fov_deg}")


def crop_box(hw: tuple[int, int], out_hw: tuple[int, int], resize: str) -> tuple[int, int, int, int]:
    """(x0, y0, width, height) of the box of a (H, W) frame that is resized to ``out_hw`` (module rule 1)."""
    height, width = hw
    if resize == "stretch":
        return 0, 0, width, height
    if width * out_hw[0] > height * out_hw[1]:
        box_w = min(width, round(height * out_hw[1] / out_hw[0]))
        return (width - box_w) // 2, 0, box_w, height
    box_h = min(height, round(width * out_hw[0] / out_hw[1]))
    return 0, (height - box_h) // 2, width, box_h


@dataclass(frozen=True, eq=False)
class Rectifier:
    """A planned rectification (``plan``): ``apply`` turns a source frame into the output frame.

    view_K: (3, 3) pinhole of the undistorted W x H view; box: (x0, y0, width, height) in it; K: (3, 3) of
    the output frames; maps: ``cv2.remap`` maps of the box (None for pinhole models); scale: s (rule 2)."""

    camera: Camera
    options: RectifyOptions
    view_K: np.ndarray
    box: tuple[int, int, int, int]
    K: np.ndarray
    scale: float
    maps: tuple[np.ndarray, np.ndarray] | None

    @classmethod
    def plan(cls, camera: Camera, options: RectifyOptions = RectifyOptions()) -> Rectifier:
        box = crop_box((camera.height, camera.width), options.out_hw, options.resize)
        if camera.is_pinhole:
            if options.fov_deg is not None:
                raise ValueError(f"{camera.source}: --fov applies to distorted models, {camera.model} is a pinhole")
            scale, maps = 1.0, None
        else:
            scale = _fov_scale(camera, box, options.fov_deg) if options.fov_deg else _widest_scale(camera, box)
            maps = _maps(camera, box, scale)
        (fx, fy), (cx, cy) = camera.focal, camera.principal_point
        view_K = np.array([[fx * scale, 0.0, cx], [0.0, fy * scale, cy], [0.0, 0.0, 1.0]])
        boxed = view_K.copy()
        boxed[0, 2] -= box[0]
        boxed[1, 2] -= box[1]
        K = resize_intrinsics(boxed, from_hw=(box[3], box[2]), to_hw=options.out_hw)
        return cls(camera=camera, options=options, view_K=view_K, box=box, K=K, scale=scale, maps=maps)

    def apply(self, rgb: np.ndarray, *, name: str = "frame") -> np.ndarray:
        """(H, W, 3) uint8 source frame -> (h, w, 3) uint8 output frame; ValueError naming ``name`` on a size
        other than the camera's."""
        import cv2

        if rgb.shape[:2] != (self.camera.height, self.camera.width):
            raise ValueError(f"{name}: frame is {rgb.shape[1]}x{rgb.shape[0]}, the camera "
                             f"({self.camera.source or self.camera.model}) is {self.camera.width}x"
                             f"{self.camera.height}: calibrate at the video's resolution")
        x0, y0, width, height = self.box
        if self.maps is None:
            boxed = rgb[y0:y0 + height, x0:x0 + width]
        else:
            boxed = cv2.remap(rgb, self.maps[0], self.maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        out_h, out_w = self.options.out_hw
        if boxed.shape[:2] == (out_h, out_w):
            return np.ascontiguousarray(boxed)
        return cv2.resize(np.ascontiguousarray(boxed), (out_w, out_h), interpolation=cv2.INTER_AREA)

    def coverage(self) -> np.ndarray:
        """(h, w) bool: output pixels that see only the source frame (all True without ``fov_deg``)."""
        white = np.full((self.camera.height, self.camera.width, 3), 255, dtype=np.uint8)
        return self.apply(white)[..., 0] == 255

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for a sample's ``meta.json`` extra."""
        return {"camera_model": self.camera.model, "view_K": self.view_K.tolist(), "box_xywh": list(self.box),
                "view_scale": self.scale, "resize": self.options.resize}


def _border(box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    x0, y0, width, height = box
    us = np.arange(x0, x0 + width, dtype=np.float64)
    vs = np.arange(y0, y0 + height, dtype=np.float64)
    u = np.concatenate([us, us, np.full(height, x0, np.float64), np.full(height, x0 + width - 1, np.float64)])
    v = np.concatenate([np.full(width, y0, np.float64), np.full(width, y0 + height - 1, np.float64), vs, vs])
    return u, v


def _source_points(camera: Camera, u: np.ndarray, v: np.ndarray, scale: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    (fx, fy), (cx, cy) = camera.focal, camera.principal_point
    x, y = (u - cx) / (fx * scale), (v - cy) / (fy * scale)
    xd, yd = camera.distort(x, y)
    return fx * xd + cx, fy * yd + cy, camera.monotonic(x, y)


def _inside(camera: Camera, box: tuple[int, int, int, int], scale: float) -> bool:
    su, sv, ok = _source_points(camera, *_border(box), scale)
    return bool(np.all(ok & (su >= 0) & (su <= camera.width - 1) & (sv >= 0) & (sv <= camera.height - 1)))


def _widest_scale(camera: Camera, box: tuple[int, int, int, int]) -> float:
    low, high = 1.0 / 64, 1.0
    while not _inside(camera, box, high):
        low, high = high, high * 2
        if high > 64:
            raise ValueError(f"{camera.source}: no pinhole view of this {camera.model} camera stays inside its "
                             "frames; check the distortion coefficients")
    if _inside(camera, box, low):
        return low
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        low, high = (low, middle) if _inside(camera, box, middle) else (middle, high)
    return high


def _fov_scale(camera: Camera, box: tuple[int, int, int, int], fov_deg: float) -> float:
    return (box[2] / 2) / math.tan(math.radians(fov_deg) / 2) / camera.focal[0]


def _maps(camera: Camera, box: tuple[int, int, int, int], scale: float) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    x0, y0, width, height = box
    v, u = np.mgrid[y0:y0 + height, x0:x0 + width].astype(np.float64)
    su, sv, ok = _source_points(camera, u, v, scale)
    su, sv = np.where(ok, su, -1e4), np.where(ok, sv, -1e4)  # past the fold: black
    return cv2.convertMaps(su.astype(np.float32), sv.astype(np.float32), cv2.CV_16SC2)
