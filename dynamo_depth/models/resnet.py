"""ResNet-18 encoder with torchvision's parameter names, for 1, 2 or 3 stacked RGB images.

Architecture (He et al. 2016, ResNet-18): ``conv1`` 7x7/2 -> ``bn1`` -> ReLU -> 3x3/2 max-pool ->
``layer1``..``layer4`` of two BasicBlocks each (``conv1, bn1, conv2, bn2`` and, where the stride or
width changes, ``downsample.0`` (1x1 conv) / ``downsample.1`` (BN)). The classifier ``fc`` is absent.

The encoder returns five feature maps for an input of shape (B, 3 * num_input_images, H, W):

=====  ========  ===========
index  channels  resolution
=====  ========  ===========
0      64        H/2 x W/2   (after conv1/bn1/relu)
1      64        H/4 x W/4   (layer1)
2      128       H/8 x W/8   (layer2)
3      256       H/16 x W/16 (layer3)
4      512       H/32 x W/32 (layer4)
=====  ========  ===========

Inputs are RGB in [0, 1]; the encoder normalises them as (x - 0.45) / 0.225 itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

ENCODER_CHANNELS = (64, 64, 128, 256, 512)
INPUT_MEAN = 0.45
INPUT_STD = 0.225
_BLOCKS_PER_LAYER = (2, 2, 2, 2)
_OPTIONAL_BUFFER_SUFFIX = "num_batches_tracked"


class WeightLoadError(ValueError):
    """A torchvision-format state dict does not fit the encoder; the message names file and keys."""


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34 block)."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _make_layer(*, in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_channels=in_channels, out_channels=out_channels, stride=stride)]
    layers += [BasicBlock(in_channels=out_channels, out_channels=out_channels, stride=1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet18Encoder(nn.Module):
    """ResNet-18 feature extractor for ``num_input_images`` RGB images stacked on the channel axis.

    Args:
        num_input_images: 1 (depth), 2 (pose: 6 input channels) or 3 (motion: 9 input channels).
    """

    def __init__(self, *, num_input_images: int = 1) -> None:
        super().__init__()
        if num_input_images not in (1, 2, 3):
            raise ValueError(f"num_input_images must be 1, 2 or 3, got {num_input_images}")
        self.num_input_images = num_input_images
        self.num_ch_enc = ENCODER_CHANNELS
        self.conv1 = nn.Conv2d(3 * num_input_images, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = ENCODER_CHANNELS[1:]
        in_widths = (64, *widths[:-1])
        for index, (cin, cout, blocks) in enumerate(zip(in_widths, widths, _BLOCKS_PER_LAYER, strict=True)):
            stride = 1 if index == 0 else 2
            layer = _make_layer(in_channels=cin, out_channels=cout, blocks=blocks, stride=stride)
            self.add_module(f"layer{index + 1}", layer)
        self._init_random()

    def _init_random(self) -> None:
        """He-normal (fan-out, ReLU gain) convolutions; BN scale 1, shift 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3 * num_input_images, H, W) in [0, 1], H and W multiples of 32 -> 5 feature maps."""
        expected = 3 * self.num_input_images
        if images.dim() != 4 or images.shape[1] != expected:
            raise ValueError(f"encoder input must be (B, {expected}, H, W), got {tuple(images.shape)}")
        if images.shape[2] % 32 or images.shape[3] % 32:
            raise ValueError(f"image height and width must be multiples of 32, got {tuple(images.shape[2:])}")
        x = (images - INPUT_MEAN) / INPUT_STD
        first = self.relu(self.bn1(self.conv1(x)))
        features = [first]
        x = self.maxpool(first)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            features.append(x)
        return features


def load_torchvision_weights(encoder: ResNet18Encoder, path: str | Path) -> None:
    """Load a torchvision-format ResNet-18 state dict file (``resnet18-*.pth``) into ``encoder``.

    The file is read with ``torch.load(weights_only=True)`` (tensors only, no arbitrary objects).
    See ``load_torchvision_state_dict`` for the key rules.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightLoadError(f"weights file {path}: not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any read failure is re-raised naming the file
        raise WeightLoadError(f"weights file {path}: cannot be read as a tensor state dict ({err})") from err
    if not isinstance(state, Mapping):
        raise WeightLoadError(f"weights file {path}: expected a state dict, got {type(state).__name__}")
    load_torchvision_state_dict(encoder, state, source=str(path))


def load_torchvision_state_dict(
    encoder: ResNet18Encoder, state: Mapping[str, torch.Tensor], *, source: str = "<state dict>"
) -> None:
    """Copy torchvision ResNet-18 weights into ``encoder``.

    Rules: every conv/bn key of the encoder must be present and no other key may be (``fc.*`` is
    ignored; ``*.num_batches_tracked`` may be missing, as in torchvision's original files). For
    ``num_input_images`` n > 1 the pretrained ``conv1.weight`` (64, 3, 7, 7) is repeated n times
    along the input-channel axis and divided by n, so the response to n identical images is unchanged.
    """
    own = encoder.state_dict()
    given = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = sorted(k for k in own if k not in given and not k.endswith(_OPTIONAL_BUFFER_SUFFIX))
    unexpected = sorted(k for k in given if k not in own)
    if missing or unexpected:
        raise WeightLoadError(f"{source}: missing keys {missing}; unexpected keys {unexpected}")
    converted: dict[str, torch.Tensor] = {}
    for key, value in given.items():
        if not isinstance(value, torch.Tensor):
            raise WeightLoadError(f"{source}: key {key!r} holds {type(value).__name__}, not a tensor")
        if key == "conv1.weight" and encoder.num_input_images > 1 and value.shape[1] == 3:
            n = encoder.num_input_images
            value = torch.cat([value] * n, dim=1) / n
        if value.shape != own[key].shape:
            raise WeightLoadError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, encoder expects {tuple(own[key].shape)}"
            )
        converted[key] = value.to(own[key].dtype)
    encoder.load_state_dict(converted, strict=False)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (trainable or not) in ``module``."""
    return sum(p.numel() for p in module.parameters())
