"""Name -> depth-network constructor. Add new backbones (e.g. Lite-Mono) here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from dynamo_depth.models.depth import DepthNetwork

DEPTH_NETWORKS: dict[str, Callable[..., nn.Module]] = {"resnet18": DepthNetwork}


def build_depth_network(name: str, **kwargs: Any) -> nn.Module:
    """Build the depth network registered as ``name``; keyword arguments go to its constructor.

    Every depth network maps an image (B, 3, H, W) in [0, 1] to {scale: disparity (B, 1, H/2^s, W/2^s)}.
    """
    try:
        constructor = DEPTH_NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown depth network {name!r}; allowed: {sorted(DEPTH_NETWORKS)}") from None
    return constructor(**kwargs)
