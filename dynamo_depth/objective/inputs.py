"""What the warping and the losses read besides the network outputs: the batch and the random draws.

``LossBatch`` holds the un-augmented frames, the target's colour pyramid, the intrinsics of every
scale and the frame time scales. ``LossDraws`` is where the losses get their random numbers from
(the automasking noise of disp_init and the RANSAC samples of the ground prior): ``SeededDraws``
owns its generators (never the global RNG), ``ReplayedDraws`` hands out given arrays (the parity
fixtures' ``automask_randn|s`` / ``ransac_indices|s``).

Frame offsets f are ints (-1, 0, 1), scales s are ints (0 = full size H x W, s = H/2^s x W/2^s).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

SOURCE_FRAMES = (-1, 1)


@dataclass(frozen=True)
class LossBatch:
    """The batch the warping and the losses read (all float32 torch tensors on one device).

    color[f]: (B, 3, H, W) un-augmented frames f = -1, 0, 1 in [0, 1] at full size.
    target_pyramid[s]: (B, 3, H/2^s, W/2^s) frame 0 at scale s (``target_pyramid``); [0] is color[0].
    K[s] / inv_K[s]: (B, 4, 4) intrinsics in pixels of scale s and their inverse (``intrinsics_pyramid``).
    ts[f]: (B,) time scale of the source frames f = -1, 1 (multiplies the complete flow; 1 for
        KITTI / Waymo, whose frames are evenly spaced).
    """

    color: Mapping[int, torch.Tensor]
    target_pyramid: Mapping[int, torch.Tensor]
    K: Mapping[int, torch.Tensor]
    inv_K: Mapping[int, torch.Tensor]
    ts: Mapping[int, torch.Tensor]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the full-size frames."""
        return int(self.color[0].shape[2]), int(self.color[0].shape[3])


def target_pyramid(color0: torch.Tensor, *, scales: Sequence[int]) -> dict[int, torch.Tensor]:
    """Colour pyramid of the target frame (B, 3, H, W) -> {s: (B, 3, H/2^s, W/2^s)}.

    Level s = clamp(bicubic antialiased resize of level s-1 to (h // 2, w // 2), 0, 1), what
    torchvision's ``Resize`` (bicubic, antialias=True) does on float tensors; level 0 is color0.
    """
    levels = {0: color0}
    for s in range(1, max(scales) + 1):
        prev = levels[s - 1]
        size = (prev.shape[2] // 2, prev.shape[3] // 2)
        levels[s] = F.interpolate(prev, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
    return {s: levels[s] for s in scales}


def intrinsics_pyramid(
    K: np.ndarray, *, height: int, width: int, scales: Sequence[int], normalised: bool
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per-scale intrinsics from one K (B, 4, 4) or (B, 3, 3) -> ({s: K_s}, {s: inv_K_s}), (B, 4, 4) float32.

    A pixel K (of the H x W images) is normalised first (row 0 / W, row 1 / H). K_s = normalised K
    with row 0 times W // 2^s and row 1 times H // 2^s (float32); inv_K_s = ``numpy.linalg.pinv`` of
    that float32 matrix, per batch item, in float32 (as the original; equal to the stored fixture
    values up to LAPACK rounding, ~3e-8).
    """
    K = np.asarray(K, dtype=np.float32)
    if K.ndim != 3 or K.shape[1:] not in ((3, 3), (4, 4)):
        raise ValueError(f"K must be (B, 3, 3) or (B, 4, 4), got {K.shape}")
    full = np.tile(np.eye(4, dtype=np.float32), (K.shape[0], 1, 1))
    full[:, :3, :3] = K[:, :3, :3]
    if not normalised:
        full[:, 0, :] /= np.float32(width)
        full[:, 1, :] /= np.float32(height)
    Ks, inv_Ks = {}, {}
    for s in scales:
        K_s = full.copy()
        K_s[:, 0, :] *= width // 2**s
        K_s[:, 1, :] *= height // 2**s
        Ks[s] = torch.from_numpy(K_s)
        inv_Ks[s] = torch.from_numpy(np.stack([np.linalg.pinv(k) for k in K_s]).astype(np.float32))
    return Ks, inv_Ks


class LossDraws(Protocol):
    """Source of the losses' random numbers (one call per scale, scales in order)."""

    def automask_noise(self, *, scale: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Standard normal noise of ``shape`` (B, 2, H, W) float32 (scaled by 1e-5 in the loss)."""
        ...

    def ransac_indices(self, *, scale: int, batch: int, n_points: int, n_samples: int = 500) -> torch.Tensor:
        """(batch, n_samples) int64 point indices, uniform in [0, n_points), with replacement."""
        ...


@dataclass
class SeededDraws:
    """``LossDraws`` from its own generators seeded with ``seed`` (a torch one per device, a numpy one).

    Deterministic for a given seed and call sequence; never touches the global RNGs.
    """

    seed: int
    _torch: dict[str, torch.Generator] = field(default_factory=dict, repr=False)
    _numpy: np.random.Generator | None = field(default=None, repr=False)

    def automask_noise(self, *, scale: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        device = torch.device(device)
        key = str(device)
        if key not in self._torch:
            self._torch[key] = torch.Generator(device=device).manual_seed(self.seed)
        return torch.randn(shape, generator=self._torch[key], device=device, dtype=torch.float32)

    def ransac_indices(self, *, scale: int, batch: int, n_points: int, n_samples: int = 500) -> torch.Tensor:
        if self._numpy is None:
            self._numpy = np.random.default_rng(self.seed)
        return torch.from_numpy(self._numpy.integers(0, n_points, size=(batch, n_samples), dtype=np.int64))


@dataclass(frozen=True)
class ReplayedDraws:
    """``LossDraws`` that hand out given arrays per scale: automask_randn[s] (B, 2, H, W) float32,
    ransac_indices[s] (B, n_samples) int64. A request whose shape differs raises ValueError."""

    automask_randn: Mapping[int, torch.Tensor] = field(default_factory=dict)
    ransac: Mapping[int, torch.Tensor] = field(default_factory=dict)

    def automask_noise(self, *, scale: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        value = _lookup(self.automask_randn, scale, "automask_randn")
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"automask_randn[{scale}] has shape {tuple(value.shape)}, requested {tuple(shape)}")
        return value.to(device=device, dtype=torch.float32)

    def ransac_indices(self, *, scale: int, batch: int, n_points: int, n_samples: int = 500) -> torch.Tensor:
        value = _lookup(self.ransac, scale, "ransac")
        if tuple(value.shape) != (batch, n_samples):
            raise ValueError(f"ransac[{scale}] has shape {tuple(value.shape)}, requested {(batch, n_samples)}")
        if int(value.min()) < 0 or int(value.max()) >= n_points:
            raise ValueError(f"ransac[{scale}] indices must be in [0, {n_points})")
        return value.long()


def _lookup(table: Mapping[int, torch.Tensor], scale: int, name: str) -> torch.Tensor:
    if scale not in table:
        raise ValueError(f"ReplayedDraws.{name} has no scale {scale}; allowed: {sorted(table)}")
    return table[scale]


RANSAC_SCORING = ("own_image", "original")


@dataclass(frozen=True)
class LossSettings:
    """Non-weight constants of the warping and the losses (defaults: the original's options).

    scales: the loss scales (0 = full size). min_depth / max_depth: the depth range in metres of
    ``disp_to_depth``. ssim_weight: photometric mix (SSIM vs L1). automask_noise: std of the noise
    added to the identity losses in disp_init. mask_disp_threshold: consistency uses pixels with
    sigmoid disparity above it. ground_prior: bottom fraction of rows the plane is fitted on;
    ground_tolerance: inlier distance (metres, vertical) and the plane's offset margin;
    ransac_iterations x ransac_points: hypotheses per image and points per hypothesis (the indices
    drawn are iterations * points). ransac_scoring: "own_image" scores every hypothesis on its own
    image (default); "original" reproduces the original's mix-up of batch items (see ground_plane).
    """

    scales: tuple[int, ...] = (0, 1, 2, 3)
    min_depth: float = 0.1
    max_depth: float = 100.0
    ssim_weight: float = 0.85
    automask_noise: float = 1e-5
    mask_disp_threshold: float = 0.03
    ground_prior: float = 0.4
    ground_tolerance: float = 0.005
    ransac_iterations: int = 100
    ransac_points: int = 5
    ransac_scoring: str = "own_image"

    def __post_init__(self) -> None:
        if not self.scales or sorted(set(self.scales)) != list(self.scales) or min(self.scales) < 0:
            raise ValueError(f"scales must be increasing non-negative ints, got {self.scales}")
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        if self.ransac_scoring not in RANSAC_SCORING:
            raise ValueError(f"ransac_scoring must be one of {RANSAC_SCORING}, got {self.ransac_scoring!r}")
        if not 0 < self.ground_prior <= 1:
            raise ValueError(f"ground_prior must be in (0, 1], got {self.ground_prior}")


def make_loss_batch(
    *, color: Mapping[int, torch.Tensor], K: np.ndarray, ts: Mapping[int, torch.Tensor] | None = None,
    scales: Sequence[int], normalised: bool,
) -> LossBatch:
    """A ``LossBatch`` from the frames color[f] (B, 3, H, W) and one K per item (see ``intrinsics_pyramid``).

    ts defaults to ones (evenly spaced frames). K / inv_K are moved to the frames' device.
    """
    color0 = color[0]
    height, width = int(color0.shape[2]), int(color0.shape[3])
    Ks, inv_Ks = intrinsics_pyramid(K, height=height, width=width, scales=scales, normalised=normalised)
    if ts is None:
        ts = {f: torch.ones(color0.shape[0], device=color0.device) for f in SOURCE_FRAMES}
    return LossBatch(color=dict(color), target_pyramid=target_pyramid(color0, scales=scales),
                     K={s: k.to(color0.device) for s, k in Ks.items()},
                     inv_K={s: k.to(color0.device) for s, k in inv_Ks.items()}, ts=dict(ts))
