"""Lite-Mono depth network (Zhang et al., CVPR 2023), variant lite-mono-8m, original state-dict keys.

Encoder (``LiteMonoEncoder``; dims 64/128/224, depths 4/4/10, 8 heads), input (B, 3, H, W) in [0, 1]
normalised as x = (input - 0.45) / 0.225:
  x_down[i]  = AvgPool2d(3, 2, 1, count_include_pad=True) applied i + 1 times to x    (3 @ H/2^(i+1))
  stem       = downsample_layers.0: 3 x (conv3x3 + BN + GELU), the first with stride 2  (64 @ H/2)
  s0_in      = stem2: conv3x3 stride 2 of cat(stem, x_down[0])                          (64 @ H/4)
  f0         = stage 0 (s0_in)
  s1_in      = downsample_layers.1: conv3x3 stride 2 of cat(s0_in, f0, x_down[1])       (128 @ H/8)
  f1         = stage 1 (s1_in); s2_in / f2 likewise with x_down[2]                       (224 @ H/16)
Stages: DilatedConv blocks with dilations [1, 2, 3], [1, 2, 3], [1, 2, 3, 1, 2, 3, 2, 4, 6], then one
LGFI block (stage 0 with the positional encoding). Stochastic depth: block k = 0..17 (over all stages)
has rate drop_path_rate * k / 17 (the first block never drops: 17 active DropPath modules).

Decoder (``LiteDepthDecoder``; channels enc / 2 = 32/64/112), for level i = 2, 1, 0:
  x = ConvBlock(x); x = bilinear x2 (align_corners=False); x = cat(x, f[i-1]) if i > 0; x = ConvBlock(x)
  disp[i] = sigmoid(bilinear x2 (Conv3x3(x)))     (B, 1, H/2^i, W/2^i), for i in scales
Keys ``decoder.0`` .. ``decoder.8`` = upconv (2,0), (2,1), (1,0), (1,1), (0,0), (0,1), dispconv 0, 1, 2
(the three disparity heads always exist; only the requested scales are evaluated).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dynamo_depth.models.depth import Conv3x3, ConvBlock
from dynamo_depth.models.litemono_blocks import ConvBN, DilatedConvBlock, LGFIBlock
from dynamo_depth.models.resnet import INPUT_MEAN, INPUT_STD

ENCODER_CHANNELS = (64, 128, 224)
DEPTHS = (4, 4, 10)
DILATIONS = ((1, 2, 3), (1, 2, 3), (1, 2, 3, 1, 2, 3, 2, 4, 6))
HEADS = 8
SCALES = (0, 1, 2)
DEFAULT_DROP_PATH_RATE = 0.4
_INPUT_MULTIPLE = 16


def drop_path_rates(drop_path_rate: float, *, blocks: int = sum(DEPTHS)) -> list[float]:
    """Per-block stochastic-depth rates rising linearly from 0 (first block) to ``drop_path_rate`` (last)."""
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be >= 0 and < 1, got {drop_path_rate}")
    return [drop_path_rate * k / (blocks - 1) for k in range(blocks)]


def _stage(index: int, rates: Sequence[float]) -> nn.Sequential:
    dim = ENCODER_CHANNELS[index]
    blocks: list[nn.Module] = [DilatedConvBlock(dim=dim, dilation=d, drop_path_rate=r)
                               for d, r in zip(DILATIONS[index], rates, strict=False)]
    blocks.append(LGFIBlock(dim=dim, heads=HEADS, positional=index == 0, drop_path_rate=rates[-1]))
    return nn.Sequential(*blocks)


class LiteMonoEncoder(nn.Module):
    """image (B, 3, H, W) in [0, 1], H and W multiples of 16 -> [64 @ H/4, 128 @ H/8, 224 @ H/16]."""

    def __init__(self, *, drop_path_rate: float = DEFAULT_DROP_PATH_RATE) -> None:
        super().__init__()
        self.num_ch_enc = ENCODER_CHANNELS
        rates = drop_path_rates(drop_path_rate)
        c0, c1, c2 = ENCODER_CHANNELS
        self.downsample_layers = nn.ModuleList([
            nn.Sequential(ConvBN(3, c0, stride=2, bn_act=True), ConvBN(c0, c0, bn_act=True),
                          ConvBN(c0, c0, bn_act=True)),
            nn.Sequential(ConvBN(2 * c0 + 3, c1, stride=2)),
            nn.Sequential(ConvBN(2 * c1 + 3, c2, stride=2)),
        ])
        self.stem2 = nn.Sequential(ConvBN(c0 + 3, c0, stride=2))
        starts = [sum(DEPTHS[:i]) for i in range(3)]
        self.stages = nn.ModuleList([_stage(i, rates[starts[i]:starts[i] + DEPTHS[i]]) for i in range(3)])
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True)
        self.apply(_init_weights)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"encoder input must be (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[2] % _INPUT_MULTIPLE or images.shape[3] % _INPUT_MULTIPLE:
            raise ValueError(f"image height and width must be multiples of {_INPUT_MULTIPLE}, "
                             f"got {tuple(images.shape[2:])}")
        x = (images - INPUT_MEAN) / INPUT_STD
        if self.stem2[0].conv.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # the pooled images join channels_last maps
        x_down = [self.pool(x)]
        for _ in range(2):
            x_down.append(self.pool(x_down[-1]))
        stage_in = self.stem2(torch.cat((self.downsample_layers[0](x), x_down[0]), dim=1))
        features = [self.stages[0](stage_in)]
        for i in (1, 2):
            stage_in = self.downsample_layers[i](torch.cat((stage_in, features[-1], x_down[i]), dim=1))
            features.append(self.stages[i](stage_in))
        return features


def _init_weights(module: nn.Module) -> None:
    """Conv / Linear: truncated normal (std 0.02), zero bias; norms: weight 1, bias 0 (ConvNeXt-style)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class LiteDepthDecoder(nn.Module):
    """[64 @ H/4, 128 @ H/8, 224 @ H/16] -> {scale: sigmoid disparity (B, 1, H/2^s, W/2^s)} (module docstring)."""

    def __init__(self, *, encoder_channels: Sequence[int] = ENCODER_CHANNELS, scales: Sequence[int] = SCALES) -> None:
        super().__init__()
        self.scales = tuple(scales)
        if not self.scales or not set(self.scales) <= set(SCALES):
            raise ValueError(f"scales must be a non-empty subset of {SCALES}, got {self.scales}")
        enc = tuple(encoder_channels)
        dec = tuple(c // 2 for c in enc)
        convs: list[nn.Module] = []
        for i in (2, 1, 0):
            convs.append(ConvBlock(enc[-1] if i == 2 else dec[i + 1], dec[i]))
            convs.append(ConvBlock(dec[i] + (enc[i - 1] if i > 0 else 0), dec[i]))
        convs.extend(Conv3x3(dec[s], 1) for s in SCALES)
        self.decoder = nn.ModuleList(convs)

    def forward(self, features: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
        x = features[-1]
        disps: dict[int, torch.Tensor] = {}
        for n, i in enumerate((2, 1, 0)):
            x = _up2(self.decoder[2 * n](x))
            if i > 0:
                x = torch.cat((x, features[i - 1]), dim=1)
            x = self.decoder[2 * n + 1](x)
            if i in self.scales:
                disps[i] = torch.sigmoid(_up2(self.decoder[6 + i](x)))
        return dict(sorted(disps.items()))


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def build_litemono_depth(*, scales: Sequence[int] = SCALES, drop_path_rate: float = DEFAULT_DROP_PATH_RATE,
                         ) -> tuple[LiteMonoEncoder, LiteDepthDecoder]:
    """The ``litemono`` depth network (lite-mono-8m): (encoder, decoder).

    Args:
        scales: disparity scales to output, a non-empty subset of (0, 1, 2).
        drop_path_rate: stochastic depth of the last block (train mode only; 0 = deterministic), in [0, 1).
    """
    if not tuple(scales) or not set(scales) <= set(SCALES):
        raise ValueError(f"litemono scales must be a non-empty subset of {SCALES}, got {tuple(scales)}")
    encoder = LiteMonoEncoder(drop_path_rate=drop_path_rate)
    return encoder, LiteDepthDecoder(encoder_channels=encoder.num_ch_enc, scales=scales)
