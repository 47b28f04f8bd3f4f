"""Motion decoders of Dynamo-Depth: complete 3D flow (3 channels) and motion-mask logits (1 channel).

Both read the motion encoder's features of ``cat([image_-1, image_0, image_+1])`` (9 channels) together
with that raw, un-normalised 9-channel input, and the DETACHED ego-motion of the pose network:

    ego = cat((t_-1 - t_+1) / 2, (a_-1 - a_+1) / 2)   (B, 6, 1, 1), translation first

with t_f / a_f the translation / axis-angle predicted for the pair (f, 0). The decoder is linear (no
nonlinearity anywhere). ``start = _residual_translation(100 * ego)`` (1x1 conv). Six levels ii = 0..5
run over the features [512 @ H/32, 256 @ H/16, 128 @ H/8, 64 @ H/4, 64 @ H/2, raw input @ H]:

    up    = bilinear resize (align_corners=False) of the previous level's field to this level's size
    x1    = refine_motion_conv{ii}.0(cat(up, feature))     3x3, zero padding 1, with bias
    x2    = refine_motion_conv{ii}.1(x1)                   3x3
    field = refine_motion_redu{ii}(cat(x1, x2)) + up       1x1 (computed as two 1x1 convs on the
                                                           weight's halves: no concatenated copy kept)

and the output of scale s is 0.01 * the field of level 5 - s (s = 0 at H x W). Keys are the original's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dynamo_depth.models.resnet import ENCODER_CHANNELS, ResnetEncoder

OUTPUT_SCALE = 0.01
EGO_INPUT_SCALE = 100.0
EGO_MOTION_DIM = 6
LEVELS = 6
RAW_INPUT_CHANNELS = 9


def ego_motion(*, translation: dict[int, torch.Tensor], axisangle: dict[int, torch.Tensor]) -> torch.Tensor:
    """(B, 6, 1, 1) = cat((t_-1 - t_+1) / 2, (a_-1 - a_+1) / 2) of the detached (B, 1, 3) pose outputs."""
    t = (translation[-1].detach() - translation[1].detach()) / 2
    a = (axisangle[-1].detach() - axisangle[1].detach()) / 2
    return torch.cat([t, a], dim=2).reshape(-1, EGO_MOTION_DIM, 1, 1)


class MotionDecoder(nn.Module):
    """[raw input, f0..f4] + ego (B, 6, 1, 1) -> {scale: (B, out_channels, H/2^s, W/2^s)} (module docstring)."""

    def __init__(self, *, out_channels: int, encoder_channels: Sequence[int] = ENCODER_CHANNELS,
                 scales: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.scales = tuple(scales)
        if not set(self.scales) <= set(range(LEVELS)):
            raise ValueError(f"scales must be within 0..{LEVELS - 1}, got {self.scales}")
        level_channels = (*tuple(encoder_channels)[::-1], RAW_INPUT_CHANNELS)
        self._residual_translation = nn.Conv2d(EGO_MOTION_DIM, out_channels, 1)
        for ii, channels in enumerate(level_channels):
            convs = nn.Sequential(nn.Conv2d(channels + out_channels, channels, 3, padding=1),
                                  nn.Conv2d(channels, channels, 3, padding=1))
            self.add_module(f"refine_motion_conv{ii}", convs)
            self.add_module(f"refine_motion_redu{ii}", nn.Conv2d(2 * channels, out_channels, 1))

    def forward(self, features: Sequence[torch.Tensor], ego: torch.Tensor) -> dict[int, torch.Tensor]:
        """features = [raw 9-channel input, encoder features 0..4]; ego (B, 6, 1, 1) (see ``ego_motion``)."""
        if len(features) != LEVELS:
            raise ValueError(f"expected {LEVELS} feature maps (raw input + 5 encoder features), got {len(features)}")
        field = self._residual_translation(EGO_INPUT_SCALE * ego)
        outputs: dict[int, torch.Tensor] = {}
        for ii in range(LEVELS):
            feature = features[LEVELS - 1 - ii]
            up = F.interpolate(field, size=feature.shape[2:], mode="bilinear", align_corners=False)
            convs = getattr(self, f"refine_motion_conv{ii}")
            x1 = convs[0](torch.cat([up, feature], dim=1))
            x2 = convs[1](x1)
            field = _conv1x1_of_concat(getattr(self, f"refine_motion_redu{ii}"), x1, x2) + up
            scale = LEVELS - 1 - ii
            if scale in self.scales:
                outputs[scale] = OUTPUT_SCALE * field
        return outputs


def _conv1x1_of_concat(conv: nn.Conv2d, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``conv(cat([first, second], 1))`` for a 1x1 ``conv``, as two 1x1 convolutions on the weight's halves.

    Same sum up to float rounding, without the concatenated copy that the convolution would keep for its
    backward (``first`` and ``second`` are kept anyway: the input of the next conv, and its output).
    """
    split = first.shape[1]
    out = F.conv2d(first, conv.weight[:, :split], conv.bias)
    return out + F.conv2d(second, conv.weight[:, split:])


def build_motion_networks(*, scales: Sequence[int]) -> tuple[ResnetEncoder, MotionDecoder, MotionDecoder]:
    """(motion_enc, motion_dec, motion_mask): a 9-channel ResNet-18, the 3-channel flow and 1-channel mask decoders."""
    encoder = ResnetEncoder(num_input_images=3)
    channels = encoder.num_ch_enc
    return (encoder, MotionDecoder(out_channels=3, encoder_channels=channels, scales=scales),
            MotionDecoder(out_channels=1, encoder_channels=channels, scales=scales))
