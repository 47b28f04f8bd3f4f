"""Name -> depth-network constructor (one small registry): ``resnet18`` and ``litemono`` (lite-mono-8m)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from dynamo_depth.models.depth import build_resnet18_depth
from dynamo_depth.models.litemono import build_litemono_depth

DEPTH_NETWORKS: dict[str, Callable[..., tuple[nn.Module, nn.Module]]] = {
    "resnet18": build_resnet18_depth,
    "litemono": build_litemono_depth,
}
DEFAULT_SCALES: dict[str, tuple[int, ...]] = {"resnet18": (0, 1, 2, 3), "litemono": (0, 1, 2)}
"""The original's scales for each network (``--scales``): all the decoder can output."""


def build_depth_network(name: str, **kwargs: Any) -> tuple[nn.Module, nn.Module]:
    """(depth_enc, depth_dec) of the depth network registered as ``name``; keywords go to its constructor.

    ``depth_dec(depth_enc(image))`` maps an image (B, 3, H, W) in [0, 1] to {scale: disparity (B, 1, H/2^s, W/2^s)}.
    """
    try:
        constructor = DEPTH_NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown depth network {name!r}; allowed: {sorted(DEPTH_NETWORKS)}") from None
    return constructor(**kwargs)


def default_scales(name: str) -> tuple[int, ...]:
    """The scales the original trains ``name`` with (every scale its decoder has); ValueError if unknown."""
    if name not in DEFAULT_SCALES:
        raise ValueError(f"unknown depth network {name!r}; allowed: {sorted(DEPTH_NETWORKS)}")
    return DEFAULT_SCALES[name]
