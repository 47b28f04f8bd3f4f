"""ResNet-18 encoder in the original Dynamo-Depth layout, for 1, 2 or 3 stacked RGB images.

``ResnetEncoder`` holds the torchvision-layout network as ``encoder`` so its state-dict keys are the
original's (``encoder.conv1.weight`` ... ``encoder.layer4.1.bn2.num_batches_tracked``,
``encoder.fc.weight``, ``encoder.fc.bias``). Architecture (He et al. 2016): ``conv1`` 7x7/2 (3n input
channels) -> ``bn1`` (eps 1e-5) -> ReLU -> 3x3/2 max-pool -> ``layer1``..``layer4`` of two BasicBlocks.
The ImageNet classifier ``fc`` (1000 x 512) is never evaluated; it is kept as two buffers so that an
original checkpoint loads and is written back unchanged (it is not a parameter: nothing trains it).

Features for an input (B, 3n, H, W) in [0, 1], normalised inside as (x - 0.45) / 0.225:

=====  ========  ===========
index  channels  resolution
=====  ========  ===========
0      64        H/2 x W/2   (relu(bn1(conv1)))
1      64        H/4 x W/4   (layer1)
2      128       H/8 x W/8   (layer2)
3      256       H/16 x W/16 (layer3)
4      512       H/32 x W/32 (layer4)
=====  ========  ===========
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import IO

import torch
from torch import nn

ENCODER_CHANNELS = (64, 64, 128, 256, 512)
INPUT_MEAN = 0.45
INPUT_STD = 0.225
IMAGENET_CLASSES = 1000
_BLOCKS_PER_LAYER = (2, 2, 2, 2)
_OPTIONAL_BUFFER_SUFFIX = "num_batches_tracked"


class WeightLoadError(ValueError):
    """A weights file does not fit the network; the message names the file, the keys and the reason."""


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34 block)."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
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


class ImageNetHead(nn.Module):
    """The unused ImageNet classifier of torchvision's ResNet: buffers ``weight`` (1000, 512), ``bias`` (1000,)."""

    def __init__(self, *, in_features: int = 512, classes: int = IMAGENET_CLASSES) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(classes, in_features))
        self.register_buffer("bias", torch.zeros(classes))


class ResNet18(nn.Module):
    """torchvision-layout ResNet-18 trunk for ``3 * num_input_images`` input channels."""

    def __init__(self, *, num_input_images: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3 * num_input_images, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = ENCODER_CHANNELS[1:]
        in_widths = (64, *widths[:-1])
        for index, (cin, cout, blocks) in enumerate(zip(in_widths, widths, _BLOCKS_PER_LAYER, strict=True)):
            first = BasicBlock(in_channels=cin, out_channels=cout, stride=1 if index == 0 else 2)
            rest = [BasicBlock(in_channels=cout, out_channels=cout, stride=1) for _ in range(blocks - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(first, *rest))
        self.fc = ImageNetHead(in_features=ENCODER_CHANNELS[-1])
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


class ResnetEncoder(nn.Module):
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
        self.encoder = ResNet18(num_input_images=num_input_images)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3 * num_input_images, H, W) in [0, 1], H and W multiples of 32 -> 5 feature maps."""
        expected = 3 * self.num_input_images
        if images.dim() != 4 or images.shape[1] != expected:
            raise ValueError(f"encoder input must be (B, {expected}, H, W), got {tuple(images.shape)}")
        if images.shape[2] % 32 or images.shape[3] % 32:
            raise ValueError(f"image height and width must be multiples of 32, got {tuple(images.shape[2:])}")
        net = self.encoder
        x = (images - INPUT_MEAN) / INPUT_STD
        first = net.relu(net.bn1(net.conv1(x)))
        features = [first]
        x = net.maxpool(first)
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = layer(x)
            features.append(x)
        return features


# Kept for callers of the earlier name.
ResNet18Encoder = ResnetEncoder


def load_tensor_dict(source: str | Path | IO[bytes], *, name: str) -> Mapping[str, object]:
    """A ``torch.save``d dict (path or binary handle) read with ``weights_only=True``: tensors and plain values
    only; WeightLoadError naming ``name`` if it cannot be read or is not a dict."""
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # any read failure is re-raised naming the file
        raise WeightLoadError(f"{name}: cannot be read as a tensor state dict ({err})") from err
    if not isinstance(state, Mapping):
        raise WeightLoadError(f"{name}: expected a state dict, got {type(state).__name__}")
    return state


def read_state_dict_file(path: str | Path) -> Mapping[str, object]:
    """``load_tensor_dict`` of a file; WeightLoadError naming the file if it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise WeightLoadError(f"weights file {path}: not found")
    return load_tensor_dict(path, name=f"weights file {path}")


def check_state_dict(own: Mapping[str, torch.Tensor], state: Mapping[str, object], *, source: str,
                     optional_suffixes: tuple[str, ...] = (), what: str = "the network", hint: str = "") -> None:
    """WeightLoadError naming ``source`` unless ``state`` has exactly ``own``'s keys (keys ending with an
    ``optional_suffixes`` entry may be missing), every value a tensor of ``own``'s shape."""
    missing = [k for k in own if k not in state and not k.endswith(optional_suffixes or ("\0",))]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        def listed(keys: list[str]) -> str:
            return f"{keys[:8]}{' ...' if len(keys) > 8 else ''}"
        raise WeightLoadError(f"{source}: missing keys {listed(missing)}; unexpected keys {listed(unexpected)}{hint}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise WeightLoadError(f"{source}: key {key!r} holds {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(own[key].shape):
            raise WeightLoadError(f"{source}: key {key!r} has shape {tuple(value.shape)}, "
                                  f"{what} expects {tuple(own[key].shape)}")


def load_torchvision_weights(encoder: ResnetEncoder, path: str | Path) -> None:
    """Load a torchvision-format ResNet-18 state dict file (``resnet18-*.pth``) into ``encoder``."""
    load_torchvision_state_dict(encoder, read_state_dict_file(path), source=str(path))


def load_torchvision_state_dict(
    encoder: ResnetEncoder, state: Mapping[str, object], *, source: str = "<state dict>"
) -> None:
    """Copy torchvision ResNet-18 weights (keys ``conv1.weight`` ..., ``fc.*``) into ``encoder.encoder``.

    Every conv/bn key must be present and no other key may be (``*.num_batches_tracked`` may be
    missing, as in torchvision's files; ``fc.*`` is optional). For ``num_input_images`` n > 1 the
    pretrained ``conv1.weight`` (64, 3, 7, 7) is repeated n times along the input channels and divided
    by n, so the response to n identical images is unchanged.
    """
    own = encoder.encoder.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith(_OPTIONAL_BUFFER_SUFFIX)
                     and not k.startswith("fc."))
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise WeightLoadError(f"{source}: missing keys {missing}; unexpected keys {unexpected}")
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
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
    encoder.encoder.load_state_dict(converted, strict=False)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (trainable or not) in ``module``."""
    return sum(p.numel() for p in module.parameters())
