"""Pose network: ResNet-18 on (source, target) stacked frames + the original's pose decoder.

Pairs, as the original: for each neighbour f in (-1, +1) the encoder sees ``cat([image_f, image_0])``
(source first, 6 channels), one call per neighbour (its own BatchNorm statistics in training). The
decoder output of that pair gives ``cam_T_cam[f] = transformation(axisangle, translation, invert=True)``
for BOTH neighbours: the transform taking target-camera (frame 0) points into camera f.

Decoder (``PoseDecoder``): ``squeeze`` 1x1 (512 -> 256) + ReLU, ``pose0`` 3x3 (padding 1) + ReLU,
``pose1`` 3x3 + ReLU, ``pose2`` 1x1 -> 12; mean over width then height; x 0.01; viewed (B, 2, 1, 6).
The original predicts two transforms and uses the first: ``axisangle = out[:, 0, :, :3]``,
``translation = out[:, 0, :, 3:]`` (B, 1, 3). It also registers its four convolutions a second time as
``net.0`` .. ``net.3`` (same tensors), so its state dict lists each tensor twice; so does ours.
"""

from __future__ import annotations

import torch
from torch import nn

from dynamo_depth.models.resnet import ResnetEncoder

POSE_SCALE = 0.01
PREDICTED_TRANSFORMS = 2
_AXIS_EPS = 1e-7


class PoseDecoder(nn.Module):
    """layer4 features (B, 512, h, w) -> (axisangle (B, 1, 3) rad, translation (B, 1, 3)); see module docstring."""

    def __init__(self, *, in_channels: int = 512, hidden: int = 256) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, hidden, 1)
        self.pose0 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.pose1 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.pose2 = nn.Conv2d(hidden, 6 * PREDICTED_TRANSFORMS, 1)
        self.relu = nn.ReLU()
        self.net = nn.ModuleList([self.squeeze, self.pose0, self.pose1, self.pose2])

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.relu(self.squeeze(feature))
        x = self.relu(self.pose0(x))
        x = self.relu(self.pose1(x))
        out = self.pose2(x).mean(3).mean(2)
        out = POSE_SCALE * out.view(-1, PREDICTED_TRANSFORMS, 1, 6)
        return out[:, 0, :, :3], out[:, 0, :, 3:]


def rotation_from_axisangle(axisangle: torch.Tensor) -> torch.Tensor:
    """(B, 1, 3) axis-angle -> (B, 3, 3) rotation, with the original's axis = v / (|v| + 1e-7).

    R = cos(a) I + sin(a) [n]x + (1 - cos(a)) n n^T for the angle a = |v| and axis n = v / (a + 1e-7).
    """
    v = axisangle.reshape(-1, 3)
    angle = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    axis = v / (angle + _AXIS_EPS)
    ca, sa = torch.cos(angle)[:, 0], torch.sin(angle)[:, 0]
    c = 1.0 - ca
    x, y, z = axis.unbind(dim=1)
    rows = (
        torch.stack([x * x * c + ca, x * y * c - z * sa, z * x * c + y * sa], dim=1),
        torch.stack([x * y * c + z * sa, y * y * c + ca, y * z * c - x * sa], dim=1),
        torch.stack([z * x * c - y * sa, y * z * c + x * sa, z * z * c + ca], dim=1),
    )
    return torch.stack(rows, dim=1)


def transformation_from_parameters(axisangle: torch.Tensor, translation: torch.Tensor, *, invert: bool,
                                   ) -> torch.Tensor:
    """(B, 1, 3) axis-angle and translation -> (B, 4, 4): [R | t], or its inverse [R^T | -R^T t]."""
    rotation = rotation_from_axisangle(axisangle)
    t = translation.reshape(-1, 3, 1)
    if invert:
        rotation = rotation.transpose(1, 2)
        t = -(rotation @ t)
    top = torch.cat([rotation, t], dim=2)
    bottom = torch.zeros_like(top[:, :1])
    bottom[:, 0, 3] = 1.0
    return torch.cat([top, bottom], dim=1)


def build_pose_network() -> tuple[ResnetEncoder, PoseDecoder]:
    """(pose_enc, pose_dec): a 6-channel ResNet-18 and the pose decoder."""
    encoder = ResnetEncoder(num_input_images=2)
    return encoder, PoseDecoder(in_channels=encoder.num_ch_enc[-1])
