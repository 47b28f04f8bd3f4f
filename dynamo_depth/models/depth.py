"""Depth network: ResNet-18 encoder + a U-Net style disparity decoder (monodepth2 layout).

Decoder level i = 4 .. 0 (output resolution H/2^i):
  x = ELU(conv3x3_reflect(x))            -> DECODER_CHANNELS[i] channels
  x = nearest_upsample_x2(x)
  x = concat(x, encoder_feature[i - 1])  (no skip at level 0)
  x = ELU(conv3x3_reflect(x))            -> DECODER_CHANNELS[i] channels
and at scales 0..3 a disparity head sigmoid(conv3x3_reflect(x)) -> (B, 1, H/2^s, W/2^s) in (0, 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dynamo_depth.models.resnet import ENCODER_CHANNELS, ResNet18Encoder

DECODER_CHANNELS = (16, 32, 64, 128, 256)
SCALES = (0, 1, 2, 3)
DEFAULT_MIN_DEPTH = 0.1
DEFAULT_MAX_DEPTH = 100.0


class ReflectConv3x3(nn.Module):
    """3x3 convolution with 1-pixel reflection padding (output size = input size)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ConvELU(nn.Module):
    """ReflectConv3x3 followed by ELU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ReflectConv3x3(in_channels, out_channels)
        self.act = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class UpDecoder(nn.Module):
    """The U-Net trunk shared by the depth, complete-flow and motion-mask decoders.

    ``forward(features)`` returns the decoder feature map of every level i = 4..0 as a dict
    {i: (B, DECODER_CHANNELS[i], H/2^i, W/2^i)}.
    """

    def __init__(self, *, encoder_channels: Sequence[int] = ENCODER_CHANNELS) -> None:
        super().__init__()
        self.encoder_channels = tuple(encoder_channels)
        self.pre = nn.ModuleDict()
        self.post = nn.ModuleDict()
        for level in range(4, -1, -1):
            cin = self.encoder_channels[-1] if level == 4 else DECODER_CHANNELS[level + 1]
            self.pre[str(level)] = ConvELU(cin, DECODER_CHANNELS[level])
            skip = self.encoder_channels[level - 1] if level > 0 else 0
            self.post[str(level)] = ConvELU(DECODER_CHANNELS[level] + skip, DECODER_CHANNELS[level])

    def forward(self, features: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
        x = features[-1]
        levels: dict[int, torch.Tensor] = {}
        for level in range(4, -1, -1):
            x = F.interpolate(self.pre[str(level)](x), scale_factor=2.0, mode="nearest")
            if level > 0:
                x = torch.cat([x, features[level - 1]], dim=1)
            x = self.post[str(level)](x)
            levels[level] = x
        return levels


class DepthDecoder(nn.Module):
    """Disparity heads on ``UpDecoder``: {scale: (B, 1, H/2^s, W/2^s) sigmoid disparity}."""

    def __init__(self, *, encoder_channels: Sequence[int] = ENCODER_CHANNELS, scales: Sequence[int] = SCALES) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.trunk = UpDecoder(encoder_channels=encoder_channels)
        self.heads = nn.ModuleDict({str(s): ReflectConv3x3(DECODER_CHANNELS[s], 1) for s in self.scales})

    def forward(self, features: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
        levels = self.trunk(features)
        return {s: torch.sigmoid(self.heads[str(s)](levels[s])) for s in self.scales}


class DepthNetwork(nn.Module):
    """ResNet-18 depth network: image (B, 3, H, W) in [0, 1] -> {scale: disparity (B, 1, H/2^s, W/2^s)}."""

    def __init__(self, *, scales: Sequence[int] = SCALES) -> None:
        super().__init__()
        self.encoder = ResNet18Encoder(num_input_images=1)
        self.decoder = DepthDecoder(encoder_channels=self.encoder.num_ch_enc, scales=scales)

    def forward(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        return self.decoder(self.encoder(image))


def disp_to_depth(
    disp: torch.Tensor, *, min_depth: float = DEFAULT_MIN_DEPTH, max_depth: float = DEFAULT_MAX_DEPTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid disparity in [0, 1] -> (scaled disparity in 1/metres, depth in metres).

    scaled = 1/max_depth + (1/min_depth - 1/max_depth) * disp; depth = 1 / scaled, so disp 0 gives
    max_depth and disp 1 gives min_depth.
    """
    if not 0 < min_depth < max_depth:
        raise ValueError(f"need 0 < min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}")
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    scaled = min_disp + (max_disp - min_disp) * disp
    return scaled, 1.0 / scaled


def depth_to_disp(
    depth: torch.Tensor, *, min_depth: float = DEFAULT_MIN_DEPTH, max_depth: float = DEFAULT_MAX_DEPTH
) -> torch.Tensor:
    """Inverse of ``disp_to_depth``: depth in metres -> sigmoid-space disparity (not clamped)."""
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    return (1.0 / depth - min_disp) / (max_disp - min_disp)
