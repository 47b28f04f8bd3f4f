"""ImageNet initialisation of the encoders, as the original trains from (``--init-weights``).

- ``resnet18`` depth network: torchvision's ResNet-18 ImageNet file (``resnet18-*.pth``) initialises
  ``depth_enc`` and the ResNet-18 pose / motion encoders (``pose_enc``, ``motion_enc``; their stacked
  first convolution repeats the RGB filters and divides by the number of images, see
  ``dynamo_depth.models.resnet.load_torchvision_state_dict``).
- ``litemono`` depth network: Lite-Mono's ImageNet-pretrained encoder file initialises ``depth_enc``;
  the pose / motion encoders are ResNet-18s initialised from a torchvision file when one is given.

A Lite-Mono file is a state dict, possibly wrapped as ``{"model": state}`` or ``{"state_dict": state}``
(training checkpoints), with or without the ``module.`` prefix of (Distributed)DataParallel. Besides
the encoder it may hold the ImageNet classifier that the depth encoder lacks: the final LayerNorm
``norm.{weight,bias}`` and the linear ``head.{weight,bias}`` (``IMAGENET_HEAD_KEYS``); exactly these
are ignored. Any other unknown key, a missing key (``*.num_batches_tracked`` may be absent) or a wrong
shape is refused with a ``WeightLoadError`` naming the file and the keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from torch import nn

from dynamo_depth.models.resnet import (
    ResnetEncoder,
    WeightLoadError,
    check_state_dict,
    load_torchvision_state_dict,
    read_state_dict_file,
)

PathLike = str | os.PathLike[str]
IMAGENET_HEAD_KEYS = ("norm.weight", "norm.bias", "head.weight", "head.bias")
"""Keys of Lite-Mono's ImageNet classifier (final LayerNorm and linear head) absent from the depth encoder."""
WRAPPER_KEYS = ("model", "state_dict")
_DDP_PREFIX = "module."
_OPTIONAL_SUFFIX = "num_batches_tracked"
RESNET_ENCODERS = ("pose_enc", "motion_enc")


def load_imagenet_encoder(model: nn.Module, path: PathLike) -> None:
    """``--init-weights PATH``: one ImageNet file for the depth encoder (resnet18: for every encoder).

    resnet18: torchvision's ResNet-18 file into ``depth_enc``, ``pose_enc`` and ``motion_enc``;
    litemono: Lite-Mono's ImageNet encoder file into ``depth_enc`` only (see ``load_imagenet_weights``
    to initialise the pose / motion ResNets as well).
    """
    resnet = path if _network(model) == "resnet18" else None
    load_imagenet_weights(model, depth_encoder=path, resnet=resnet)


def load_imagenet_weights(model: nn.Module, *, depth_encoder: PathLike | None = None,
                          resnet: PathLike | None = None) -> list[str]:
    """Initialise ``model``'s encoders from ImageNet files; returns the module names that were loaded.

    Args:
        model: a ``DynamoDepthModel``.
        depth_encoder: the depth network's ImageNet file (resnet18: torchvision ResNet-18; litemono:
            Lite-Mono's encoder) for ``depth_enc``; None leaves it as is.
        resnet: torchvision's ResNet-18 file for ``pose_enc`` and ``motion_enc``; None leaves them.
    """
    loaded: list[str] = []
    if depth_encoder is not None:
        network = _network(model)
        if network == "resnet18":
            load_torchvision_state_dict(model.depth_enc, read_state_dict_file(depth_encoder),
                                        source=str(depth_encoder))
        elif network == "litemono":
            load_litemono_imagenet(model.depth_enc, depth_encoder)
        else:
            raise ValueError(f"no ImageNet loader for depth network {network!r}; allowed: ['litemono', 'resnet18']")
        loaded.append("depth_enc")
    if resnet is not None:
        state = read_state_dict_file(resnet)
        for name in RESNET_ENCODERS:
            encoder = getattr(model, name)
            if not isinstance(encoder, ResnetEncoder):
                raise ValueError(f"{name} is {type(encoder).__name__}, not a ResNet-18 encoder")
            load_torchvision_state_dict(encoder, state, source=str(resnet))
            loaded.append(name)
    return loaded


def _network(model: nn.Module) -> str:
    network = getattr(model, "depth_network", None)
    if not isinstance(network, str):
        raise ValueError(f"expected a DynamoDepthModel (with a depth_network name), got {type(model).__name__}")
    return network


def unwrap_state_dict(raw: Mapping[str, object], *, source: str) -> dict[str, object]:
    """The state dict inside ``raw`` (under ``model`` / ``state_dict`` if wrapped), ``module.`` prefixes removed."""
    for key in WRAPPER_KEYS:
        if isinstance(raw.get(key), Mapping):
            raw = raw[key]  # type: ignore[assignment]
            break
    state: dict[str, object] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise WeightLoadError(f"{source}: state-dict key {key!r} is not a string")
        plain = key[len(_DDP_PREFIX):] if key.startswith(_DDP_PREFIX) else key
        if plain in state:
            raise WeightLoadError(f"{source}: key {plain!r} appears with and without the {_DDP_PREFIX!r} prefix")
        state[plain] = value
    return state


def load_litemono_imagenet(encoder: nn.Module, path: PathLike) -> None:
    """Copy Lite-Mono's ImageNet-pretrained encoder file into ``encoder`` (a ``LiteMonoEncoder``).

    WeightLoadError naming ``path`` for missing / unknown keys (all listed), a non-tensor value or a
    wrong shape (naming the key); nothing is loaded unless every check passes.
    """
    source = str(path)
    state = unwrap_state_dict(read_state_dict_file(path), source=source)
    state = {k: v for k, v in state.items() if k not in IMAGENET_HEAD_KEYS}
    own = encoder.state_dict()
    check_state_dict(own, state, source=source, optional_suffixes=(_OPTIONAL_SUFFIX,), what="the encoder",
                     hint=" (not a Lite-Mono lite-mono-8m ImageNet encoder)")
    encoder.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
