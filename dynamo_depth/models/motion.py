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
    field = refine_motion_redu{ii}(cat(x1, x2)) + up       1x1

and the output of scale s is 0.01 * the field of level 5 - s (s = 0 at H x W). Keys are the original's.

Computed without x1 and x2 (deliberate difference: same math, float rounding only). Each level is linear
in [up, feature], and only ``out_channels`` (3 or 1) of its C channels leave it, so the three convolutions
fold into one 5x5 convolution with ``out_channels`` outputs (``_LevelKernels``): redu's x2 half times
conv1 plus redu's x1 half is a 3x3 kernel ``kf`` on x1, and ``kf`` after conv0 is the 5x5 kernel. Where
the original's zero padding of x1 differs from the 5x5 convolution (x1 one pixel outside the image, which
conv1 sees as 0), the border rows and columns are corrected exactly (``_level_field``). A resnet18
fine_tune step's motion decoders drop from ~29 GFLOP each (forward) to ~2; the gradients reach
conv0 / conv1 / redu through the folding (tests/test_models.py compares outputs and gradients with the
three convolutions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
        return decode_together([self], features, ego)[0]

    def contiguous_folded_weights(self) -> None:
        """Give the 1x1 ``refine_motion_redu*`` weights contiguous strides (in place; the same values).

        They never run as a convolution: ``level_kernels`` reads them as (O, 2C) matrices, so their gradient
        comes from indexing, with contiguous strides. An (O, 2C, 1, 1) weight holds the same memory channels_last
        or not, but its strides differ, and DDP copies (and warns "Grad strides do not match bucket view
        strides") every gradient whose strides differ from its parameter's. Same math: the (O, 2C) views the fold
        reads have the same strides in both layouts.
        """
        for level in range(LEVELS):
            weight = getattr(self, f"refine_motion_redu{level}").weight
            weight.data = weight.data.clone(memory_format=torch.contiguous_format)

    def level_kernels(self, level: int) -> _LevelKernels:
        """Level ``level``'s (0 = coarsest) three convolutions folded into ``_LevelKernels``."""
        convs = getattr(self, f"refine_motion_conv{level}")
        return _LevelKernels.fold(convs[0], convs[1], getattr(self, f"refine_motion_redu{level}"))


def decode_together(decoders: Sequence[MotionDecoder], features: Sequence[torch.Tensor], ego: torch.Tensor,
                    ) -> list[dict[int, torch.Tensor]]:
    """``[decoder(features, ego) for decoder in decoders]``, every level of all of them in one convolution.

    The decoders read the same features, so their folded kernels stack (each output row reads its own
    decoder's up-sampled field and the shared feature): one convolution over cat(ups, feature) per level
    instead of one per decoder. On CPU a convolution with 1 to 4 output channels costs about the same
    (memory-bound on its input), so the flow and mask decoders together cost what one did.
    """
    if len(features) != LEVELS:
        raise ValueError(f"expected {LEVELS} feature maps (raw input + 5 encoder features), got {len(features)}")
    channels_last = decoders[0].refine_motion_conv0[0].weight.is_contiguous(memory_format=torch.channels_last)
    fields = [decoder._residual_translation(EGO_INPUT_SCALE * ego) for decoder in decoders]
    widths = [decoder.out_channels for decoder in decoders]
    outputs: list[dict[int, torch.Tensor]] = [{} for _ in decoders]
    for ii in range(LEVELS):
        feature = features[LEVELS - 1 - ii]
        ups = [F.interpolate(field, size=feature.shape[2:], mode="bilinear", align_corners=False) for field in fields]
        kernels = _LevelKernels.stack([decoder.level_kernels(ii) for decoder in decoders])
        joint = _level_field(kernels, ups[0] if len(ups) == 1 else torch.cat(ups, dim=1), feature,
                             channels_last=channels_last)
        fields = [part + up for part, up in zip(joint.split(widths, dim=1), ups, strict=True)]
        scale = LEVELS - 1 - ii
        for decoder, out, field in zip(decoders, outputs, fields, strict=True):
            if scale in decoder.scales:
                out[scale] = OUTPUT_SCALE * field
    return outputs


@dataclass(frozen=True)
class _LevelKernels:
    """One level's three convolutions folded (module docstring); O = out_channels, C = the level's channels.

    conv0: (C, O + C, 3, 3) with bias b0 (C,), the original's first convolution (kept for the border).
    kf: (O, C, 3, 3), bias_f (O,): redu(cat(x1, conv1(x1))) as one 3x3 convolution on x1.
    k5: (O, O + C, 5, 5), bias5 (O,): kf after conv0, on the level's zero-padded input cat(up, feature).
    Stacked for n decoders (``stack``): O = sum of their outputs, C = n times the level's channels.
    """

    conv0: torch.Tensor
    b0: torch.Tensor
    kf: torch.Tensor
    k5: torch.Tensor
    bias5: torch.Tensor

    @staticmethod
    def fold(conv0: nn.Conv2d, conv1: nn.Conv2d, redu: nn.Conv2d) -> _LevelKernels:
        channels = conv1.in_channels
        r1, r2 = redu.weight[:, :channels, 0, 0], redu.weight[:, channels:, 0, 0]  # (O, C) each
        kf = torch.einsum("od,dcyx->ocyx", r2, conv1.weight) + F.pad(r1[:, :, None, None], (1, 1, 1, 1))
        bias_f = redu.bias + r2 @ conv1.bias
        # k5[o, i, a + b] = sum_c kf[o, c, a] * conv0[c, i, b]: a transposed convolution over the kernels
        k5 = F.conv_transpose2d(conv0.weight.transpose(0, 1), kf.transpose(0, 1)).transpose(0, 1)
        bias5 = bias_f + kf.sum(dim=(2, 3)) @ conv0.bias
        return _LevelKernels(conv0=conv0.weight, b0=conv0.bias, kf=kf, k5=k5, bias5=bias5)

    @staticmethod
    def stack(levels: Sequence[_LevelKernels]) -> _LevelKernels:
        """Several decoders' kernels of one level as one, on the input cat(up_1, ..., up_n, feature)."""
        if len(levels) == 1:
            return levels[0]
        widths = [k.kf.shape[0] for k in levels]
        hidden = [k.kf.shape[1] for k in levels]

        def on_joint_input(weight: torch.Tensor, j: int) -> torch.Tensor:
            # (rows, O_j + C, k, k) -> (rows, sum O + C, k, k): zero columns for the other decoders' fields
            before, after = sum(widths[:j]), sum(widths[j + 1:])
            up = F.pad(weight[:, :widths[j]], (0, 0, 0, 0, before, after))
            return torch.cat([up, weight[:, widths[j]:]], dim=1)

        def block_diagonal(kf: torch.Tensor, j: int) -> torch.Tensor:
            return F.pad(kf, (0, 0, 0, 0, sum(hidden[:j]), sum(hidden[j + 1:])))

        return _LevelKernels(
            conv0=torch.cat([on_joint_input(k.conv0, j) for j, k in enumerate(levels)]),
            b0=torch.cat([k.b0 for k in levels]),
            kf=torch.cat([block_diagonal(k.kf, j) for j, k in enumerate(levels)]),
            k5=torch.cat([on_joint_input(k.k5, j) for j, k in enumerate(levels)]),
            bias5=torch.cat([k.bias5 for k in levels]))


def _level_field(k: _LevelKernels, up: torch.Tensor, feature: torch.Tensor, *, channels_last: bool) -> torch.Tensor:
    """redu(cat(x1, x2)) of one level, (B, O, h, w), from up (B, O, h, w) and feature (B, C, h, w).

    k5 on the zero-padded input equals kf on x1 extended one pixel past the image (x1_ext: conv0 evaluated
    there); the original's conv1 sees x1 as 0 there, so kf times that ring of x1_ext is taken off the
    border rows and columns of the output. The ring: row -1 and row h over columns -1..w, column -1 and
    column w over rows 0..h-1 (each ring pixel once).
    """
    x = torch.cat([up, feature], dim=1)
    if channels_last:  # the decoders' layout; also for the channels-first raw input (oneDNN: 1.2-1.4x faster)
        x = x.contiguous(memory_format=torch.channels_last)
    field = F.conv2d(x, k.k5, k.bias5, padding=2)
    top, bottom, left, right = _BorderStrips.apply(x)
    # x1_ext on the ring: only the kernel row / column facing the image reaches it
    ring_top = F.conv2d(top, k.conv0[:, :, 2:3, :], k.b0, padding=(0, 2))  # (B, C, 1, w + 2)
    ring_bottom = F.conv2d(bottom, k.conv0[:, :, 0:1, :], k.b0, padding=(0, 2))
    ring_left = F.conv2d(left, k.conv0[:, :, :, 2:3], k.b0, padding=(1, 0))  # (B, C, h, 1)
    ring_right = F.conv2d(right, k.conv0[:, :, :, 0:1], k.b0, padding=(1, 0))
    field[:, :, :1, :] -= F.conv2d(ring_top, k.kf[:, :, 0:1, :])
    field[:, :, -1:, :] -= F.conv2d(ring_bottom, k.kf[:, :, 2:3, :])
    field[..., :1] -= F.conv2d(ring_left, k.kf[:, :, :, 0:1], padding=(1, 0))
    field[..., -1:] -= F.conv2d(ring_right, k.kf[:, :, :, 2:3], padding=(1, 0))
    return field


class _BorderStrips(torch.autograd.Function):
    """x (B, C, h, w) -> copies of its first row, last row, first column, last column.

    Four slices would each give x a full-size gradient of zeros in the backward (four fills and four
    additions of the whole map); this one writes the four strips' gradients into one.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.shape, ctx.channels_last = x.shape, x.is_contiguous(memory_format=torch.channels_last)
        return x[:, :, :1].clone(), x[:, :, -1:].clone(), x[..., :1].clone(), x[..., -1:].clone()

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> torch.Tensor:
        some = next(g for g in grads if g is not None)
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        grad = torch.empty(ctx.shape, dtype=some.dtype, device=some.device, memory_format=layout).zero_()
        for index, g in zip(((..., slice(0, 1), slice(None)), (..., slice(-1, None), slice(None)),
                             (..., slice(0, 1)), (..., slice(-1, None))), grads, strict=True):
            if g is not None:
                grad[index] += g
        return grad


def build_motion_networks(*, scales: Sequence[int]) -> tuple[ResnetEncoder, MotionDecoder, MotionDecoder]:
    """(motion_enc, motion_dec, motion_mask): a 9-channel ResNet-18, the 3-channel flow and 1-channel mask decoders."""
    encoder = ResnetEncoder(num_input_images=3)
    channels = encoder.num_ch_enc
    return (encoder, MotionDecoder(out_channels=3, encoder_channels=channels, scales=scales),
            MotionDecoder(out_channels=1, encoder_channels=channels, scales=scales))
