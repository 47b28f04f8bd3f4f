"""Load a model for inference from either checkpoint kind a user may hold.

- a trainer checkpoint file (``train/checkpoint.py``: ``format == "dynamo-depth-checkpoint"``, ``model`` is
  ``DynamoDepthModel.state_dict()``, ``config`` the resolved run config), local or a URL (``s3://...``), or
  the run folder / its ``checkpoints/last.json`` pointer, which names the latest complete checkpoint; or
- an original Dynamo-Depth folder of module files (``dynamo_depth.models.original``); a folder with only
  ``depth_enc.pth`` / ``depth_dec.pth`` is enough for depth.

Errors are ``WeightLoadError`` (a ValueError) naming the path and the reason.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamo_depth.models import MODULE_NAMES, DynamoDepthModel
from dynamo_depth.models.original import (
    DEPTH_MODULES,
    available_modules,
    depth_network_of,
    is_original_folder,
    load_folder,
    load_module_state,
)
from dynamo_depth.models.resnet import WeightLoadError, load_tensor_dict, read_state_dict_file

TRAINER_FORMAT = "dynamo-depth-checkpoint"


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode with the network input size it was trained at and which modules hold weights."""

    model: DynamoDepthModel
    height: int
    width: int
    modules: tuple[str, ...]
    min_depth: float = 0.1
    max_depth: float = 100.0

    @property
    def has_motion(self) -> bool:
        return set(MODULE_NAMES) <= set(self.modules)


def _guess_depth_network(path: Path) -> str:
    """The depth network whose keys the folder's ``depth_enc.pth`` holds; WeightLoadError if none matches."""
    from dynamo_depth.models.registry import DEPTH_NETWORKS

    name = depth_network_of(read_state_dict_file(path / "depth_enc.pth"))
    if name is None:
        raise WeightLoadError(f"{path / 'depth_enc.pth'}: not the encoder of a known depth network "
                              f"(allowed: {sorted(DEPTH_NETWORKS)})")
    return name


POINTER = "last.json"


def resolve_trainer_checkpoint(url: str) -> str:
    """A run folder, ``.../last.json`` or checkpoint file (local or URL) -> the checkpoint file it means."""
    from dynamo_depth.shards import storage

    candidates = [url] if url.endswith(POINTER) else [storage.join(storage.join(url, "checkpoints"), POINTER),
                                                       storage.join(url, POINTER)]
    for pointer in candidates:
        if storage.exists(pointer):
            try:
                name = json.loads(storage.read_bytes(pointer))["checkpoint"]
            except (ValueError, KeyError, TypeError) as err:
                raise WeightLoadError(f"checkpoint pointer {pointer}: not a checkpoint pointer ({err})") from err
            return storage.join(storage.dirname(pointer), str(name))
    return url


def load_for_inference(path: str | os.PathLike[str], *, need_motion: bool = False,
                       depth_network: str | None = None) -> LoadedModel:
    """The model of a trainer checkpoint (file, run folder, pointer; local or URL) or an original folder,
    in eval mode on the CPU."""
    from dynamo_depth.shards import storage

    url = resolve_trainer_checkpoint(os.fspath(path))
    if not storage.is_local(url):
        if not storage.exists(url):
            raise WeightLoadError(f"checkpoint {url}: no such object")
        raw = load_tensor_dict(io.BytesIO(storage.read_bytes(url)), name=f"checkpoint {url}")
        return _from_trainer_dict(raw, source=url)
    local = Path(url)
    if not local.exists():
        raise WeightLoadError(f"checkpoint {local}: no such file or directory")
    if local.is_dir():
        return _from_folder(local, need_motion=need_motion, depth_network=depth_network)
    return _from_trainer_dict(read_state_dict_file(local), source=str(local))


def _from_folder(path: Path, *, need_motion: bool, depth_network: str | None) -> LoadedModel:
    if not is_original_folder(path):
        raise WeightLoadError(f"checkpoint folder {path}: no depth_enc.pth (expected the original's module files "
                              f"{', '.join(m + '.pth' for m in MODULE_NAMES)})")
    present = available_modules(path)
    depth_only = not need_motion and set(present) < set(MODULE_NAMES)
    from dynamo_depth.models.registry import default_scales

    name = depth_network or _guess_depth_network(path)
    model = DynamoDepthModel(depth_network=name, scales=default_scales(name))  # the original's --scales
    folder = load_folder(model, path, depth_only=depth_only)
    model.eval()
    return LoadedModel(model=model, height=folder.height, width=folder.width,
                       modules=DEPTH_MODULES if depth_only else MODULE_NAMES)


def _from_trainer_dict(raw: Mapping[str, Any], *, source: str) -> LoadedModel:
    if raw.get("format") != TRAINER_FORMAT:
        raise WeightLoadError(f"checkpoint {source}: not a dynamo-depth trainer checkpoint nor an original folder")
    config = raw.get("config", {})
    try:
        model_config, data_config, loss_config = config["model"], config["data"], config.get("loss", {})
        model = DynamoDepthModel(depth_network=model_config["depth_network"], scales=tuple(model_config["scales"]))
    except (KeyError, TypeError) as err:
        raise WeightLoadError(f"checkpoint {source}: its config lacks {err}") from err
    load_module_state(model, raw["model"], source=source)
    model.eval()
    return LoadedModel(model=model, height=int(data_config["height"]), width=int(data_config["width"]),
                       modules=MODULE_NAMES, min_depth=float(loss_config.get("min_depth", 0.1)),
                       max_depth=float(loss_config.get("max_depth", 100.0)))
