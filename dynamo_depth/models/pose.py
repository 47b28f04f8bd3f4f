"""Pose network: ResNet-18 on two stacked frames + a small convolutional pose decoder.

Convention (fixed here, tested in tests/test_models.py):
  * The network always sees a pair in temporal order ``(earlier, later)`` and its 6-dof output
    (axis-angle, translation in metres) is read as ``later_from_earlier``: it maps points in the
    earlier camera's frame to the later camera's frame.
  * For the neighbour t+1 the pair is (img_t, img_t+1) and T_source_from_target = later_from_earlier.
  * For the neighbour t-1 the pair is (img_t-1, img_t) and T_source_from_target = inverse(later_from_earlier).
So both returned transforms map target-camera (frame t) points into the source camera, the
transform used by ``dynamo_depth.warping``: X_source = T_source_from_target @ X_target.
"""

from __future__ import annotations

import torch
from torch import nn

from dynamo_depth.models.resnet import ResNet18Encoder
from dynamo_depth.warping import pose_vector_to_matrix

POSE_SCALE = 0.01


class PoseDecoder(nn.Module):
    """layer4 features (B, 512, h, w) -> (axis_angle (B, 1, 3) radians, translation (B, 1, 3) metres).

    squeeze: 1x1 conv 512->256 + ReLU; the squeezed features of the inputs are concatenated (one
    pair here, so 256 channels); three 3x3 convs of 256 channels, each followed by ReLU; a final
    1x1 conv -> 6 channels; spatial mean; x0.01.
    """

    def __init__(self, *, in_channels: int = 512, hidden: int = 256) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, hidden, 1)
        self.conv1 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv3 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, 6, 1)
        self.relu = nn.ReLU()

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.relu(self.squeeze(feature))
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        vector = POSE_SCALE * self.out(x).mean(dim=(2, 3))
        return vector[:, None, :3], vector[:, None, 3:]


class PoseNetwork(nn.Module):
    """(earlier, later) images (B, 3, H, W) each in [0, 1] -> later_from_earlier (axis_angle, translation)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = ResNet18Encoder(num_input_images=2)
        self.decoder = PoseDecoder(in_channels=self.encoder.num_ch_enc[-1])

    def forward(self, earlier: torch.Tensor, later: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(torch.cat([earlier, later], dim=1))
        return self.decoder(features[-1])


def predict_source_from_target(pose_net: PoseNetwork, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the pose network on a triplet images (B, 3 frames [t-1, t, t+1], 3, H, W).

    Returns:
        ``source_from_target_prev`` / ``source_from_target_next``: (B, 4, 4), camera t -> camera t-1 / t+1.
        ``pose_vector_prev`` / ``pose_vector_next``: (B, 6) raw later_from_earlier [axis-angle, translation]
        of the pairs (t-1, t) and (t, t+1).
    """
    prev_img, cur_img, next_img = images.unbind(dim=1)
    rot_prev, trans_prev = pose_net(prev_img, cur_img)
    rot_next, trans_next = pose_net(cur_img, next_img)
    return {
        "source_from_target_prev": pose_vector_to_matrix(rot_prev, trans_prev, invert=True),
        "source_from_target_next": pose_vector_to_matrix(rot_next, trans_next, invert=False),
        "pose_vector_prev": torch.cat([rot_prev, trans_prev], dim=-1)[:, 0],
        "pose_vector_next": torch.cat([rot_next, trans_next], dim=-1)[:, 0],
    }
