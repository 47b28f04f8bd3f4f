"""Motion networks: a shared 3-frame ResNet-18 encoder with a complete-flow and a motion-mask decoder.

Complete flow C (B, 3, H/2^s, W/2^s): the 3D displacement, in metres per frame and in camera-t
coordinates, of the scene point seen at each target pixel between t and t+1 *including* the
displacement caused by the ego-motion (for a static point C = T_{t+1<-t} X - X). Under the linear
(constant-velocity) motion assumption the displacement towards t-1 is -C.

Motion mask (B, 1, H/2^s, W/2^s): probability that the pixel moves independently; ``mask_logits``
are its logits (mask = sigmoid(logits)).

Both decoders are coarse to fine and start from the ego-motion: the DETACHED 6-dof ego-motion
vector e = [axis-angle, translation] (B, 6) goes through a 1x1 conv (equivalent to a linear map,
broadcast over all pixels) to give the level-4 (H/16) prediction; each level s = 3..0 adds a
residual: pred_s = bilinear_up(pred_{s+1}) + 0.01 * head_s(decoder features at s). The flow's ego
conv starts as the identity on the translation (C = t at init, the exact ego flow of a pure
translation); the mask's starts at zero (logit 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dynamo_depth.models.depth import DECODER_CHANNELS, SCALES, ReflectConv3x3, UpDecoder
from dynamo_depth.models.resnet import ENCODER_CHANNELS, ResNet18Encoder

RESIDUAL_SCALE = 0.01
EGO_MOTION_DIM = 6


class CoarseToFineDecoder(nn.Module):
    """Features + ego-motion (B, 6) -> {scale: (B, out_channels, H/2^s, W/2^s)}; see module docstring."""

    def __init__(
        self,
        *,
        out_channels: int,
        identity_translation_init: bool,
        encoder_channels: Sequence[int] = ENCODER_CHANNELS,
        scales: Sequence[int] = SCALES,
    ) -> None:
        super().__init__()
        if identity_translation_init and out_channels != 3:
            raise ValueError("identity_translation_init needs out_channels == 3 (a 3D flow)")
        self.scales = tuple(sorted(scales))
        self.trunk = UpDecoder(encoder_channels=encoder_channels)
        self.ego_conv = nn.Conv2d(EGO_MOTION_DIM, out_channels, 1)
        self.heads = nn.ModuleDict(
            {str(s): ReflectConv3x3(DECODER_CHANNELS[s], out_channels) for s in range(max(self.scales) + 1)}
        )
        with torch.no_grad():
            self.ego_conv.weight.zero_()
            self.ego_conv.bias.zero_()
            if identity_translation_init:
                for axis in range(3):
                    self.ego_conv.weight[axis, 3 + axis] = 1.0

    def forward(self, features: Sequence[torch.Tensor], ego_motion: torch.Tensor) -> dict[int, torch.Tensor]:
        if ego_motion.dim() != 2 or ego_motion.shape[1] != EGO_MOTION_DIM:
            raise ValueError(f"ego_motion must be (B, 6), got {tuple(ego_motion.shape)}")
        levels = self.trunk(features)
        coarse_hw = levels[4].shape[2:]
        pred = self.ego_conv(ego_motion.detach()[:, :, None, None]).expand(-1, -1, *coarse_hw)
        outputs: dict[int, torch.Tensor] = {}
        for scale in range(max(self.scales), -1, -1):
            up = F.interpolate(pred, size=levels[scale].shape[2:], mode="bilinear", align_corners=False)
            pred = up + RESIDUAL_SCALE * self.heads[str(scale)](levels[scale])
            if scale in self.scales:
                outputs[scale] = pred
        return outputs


class MotionNetwork(nn.Module):
    """Shared 9-channel encoder on (t-1, t, t+1) with complete-flow and motion-mask decoders."""

    def __init__(self, *, scales: Sequence[int] = SCALES) -> None:
        super().__init__()
        self.encoder = ResNet18Encoder(num_input_images=3)
        channels = self.encoder.num_ch_enc
        self.flow_decoder = CoarseToFineDecoder(
            out_channels=3, identity_translation_init=True, encoder_channels=channels, scales=scales
        )
        self.mask_decoder = CoarseToFineDecoder(
            out_channels=1, identity_translation_init=False, encoder_channels=channels, scales=scales
        )

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3 frames, 3, H, W) in [0, 1] -> encoder features of the stacked frames."""
        if images.dim() != 5 or images.shape[1:3] != (3, 3):
            raise ValueError(f"images must be (B, 3, 3, H, W), got {tuple(images.shape)}")
        return self.encoder(images.flatten(1, 2))

    def complete_flow(self, features: Sequence[torch.Tensor], ego_motion: torch.Tensor) -> dict[int, torch.Tensor]:
        """{scale: C (B, 3, H/2^s, W/2^s)} metres per frame, camera-t frame, towards t+1."""
        return self.flow_decoder(features, ego_motion)

    def mask_logits(self, features: Sequence[torch.Tensor], ego_motion: torch.Tensor) -> dict[int, torch.Tensor]:
        """{scale: logits (B, 1, H/2^s, W/2^s)}; the motion probability is sigmoid(logits)."""
        return self.mask_decoder(features, ego_motion)
