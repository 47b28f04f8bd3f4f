"""ResNet-18 depth network: encoder + the monodepth2-layout disparity decoder, original key names.

Decoder (``DepthDecoder``, channels 16/32/64/128/256), level i = 4 .. 0 (output resolution H/2^i):
  x = upconv_i_0(x)                       ConvBlock: reflection-padded 3x3 conv + ELU
  x = nearest_upsample_x2(x)
  x = concat(x, encoder_feature[i - 1])   (no skip at level 0)
  x = upconv_i_1(x)                       ConvBlock
  disp_i = sigmoid(dispconv_i(x))         reflection-padded 3x3 conv -> 1 channel, for i in scales
State-dict keys: ``upconv_{i}_{j}.conv.conv.{weight,bias}``, ``dispconv_{s}.conv.{weight,bias}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dynamo_depth.models.resnet import ENCODER_CHANNELS, ResnetEncoder

DECODER_CHANNELS = (16, 32, 64, 128, 256)
SCALES = (0, 1, 2, 3)
DEFAULT_MIN_DEPTH = 0.1
DEFAULT_MAX_DEPTH = 100.0


class Conv3x3(nn.Module):
    """3x3 convolution after 1-pixel reflection padding (output size = input size); keys ``conv.*``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class ConvBlock(nn.Module):
    """Conv3x3 followed by ELU; keys ``conv.conv.*``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Conv3x3(in_channels, out_channels)
        self.nonlin = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.conv(x))


class DepthDecoder(nn.Module):
    """Encoder features -> {scale: sigmoid disparity (B, 1, H/2^s, W/2^s)} (module docstring)."""

    def __init__(self, *, encoder_channels: Sequence[int] = ENCODER_CHANNELS, scales: Sequence[int] = SCALES) -> None:
        super().__init__()
        self.scales = tuple(scales)
        if not set(self.scales) <= set(range(5)):
            raise ValueError(f"scales must be within 0..4, got {self.scales}")
        channels = tuple(encoder_channels)
        for level in range(4, -1, -1):
            cin = channels[-1] if level == 4 else DECODER_CHANNELS[level + 1]
            self.add_module(f"upconv_{level}_0", ConvBlock(cin, DECODER_CHANNELS[level]))
            skip = channels[level - 1] if level > 0 else 0
            self.add_module(f"upconv_{level}_1", ConvBlock(DECODER_CHANNELS[level] + skip, DECODER_CHANNELS[level]))
        for scale in range(4):
            self.add_module(f"dispconv_{scale}", Conv3x3(DECODER_CHANNELS[scale], 1))

    def forward(self, features: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
        x = features[-1]
        disps: dict[int, torch.Tensor] = {}
        for level in range(4, -1, -1):
            x = F.interpolate(getattr(self, f"upconv_{level}_0")(x), scale_factor=2.0, mode="nearest")
            if level > 0:
                x = torch.cat([x, features[level - 1]], dim=1)
            x = getattr(self, f"upconv_{level}_1")(x)
            if level in self.scales:
                disps[level] = torch.sigmoid(getattr(self, f"dispconv_{level}")(x))
        return disps


def build_resnet18_depth(*, scales: Sequence[int] = SCALES, drop_path_rate: float = 0.0,
                         ) -> tuple[ResnetEncoder, DepthDecoder]:
    """The ``resnet18`` depth network: (encoder, decoder).

    It has no stochastic depth: ``drop_path_rate`` (configs carry Lite-Mono's 0.4 by default) is accepted
    and ignored, after the same range check as Lite-Mono's ([0, 1)).
    """
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be >= 0 and < 1, got {drop_path_rate}")
    encoder = ResnetEncoder(num_input_images=1)
    return encoder, DepthDecoder(encoder_channels=encoder.num_ch_enc, scales=scales)


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
    """Inverse of ``disp_to_depth`` to sigmoid space: (1/depth - 1/max_depth) / (1/min_depth - 1/max_depth), not clamped."""
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    return (1.0 / depth - min_disp) / (max_disp - min_disp)
