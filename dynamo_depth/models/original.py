"""Original Dynamo-Depth checkpoint folders: load them into ``DynamoDepthModel`` and write them back.

A folder holds one ``torch.save``d state dict per module: ``depth_enc.pth``, ``depth_dec.pth``,
``pose_enc.pth``, ``pose_dec.pth``, ``motion_enc.pth``, ``motion_dec.pth``, ``motion_mask.pth``. The original's
``Model.save`` appends the ints ``height`` and ``width`` (the network's input size) to the state dict of EVERY
module whose name contains ``enc`` (``depth_enc``, ``pose_enc``, ``motion_enc``); the reader takes them from any
of those files it reads (at least one must hold them; all that hold them must agree) and the writer appends
them to all three, as ``Model.save`` does. Our modules carry the original's names
and keys, so each file maps onto one module unchanged; ``export_folder`` writes the same keys,
dtypes and shapes in the same order (``pose_dec.pth`` lists its tensors twice, as the original's).
A depth-only folder (the two ``depth_*`` files) is enough for depth evaluation and prediction.
Files are read with ``torch.load(weights_only=True)``: tensors and plain numbers only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dynamo_depth.models import MODULE_NAMES
from dynamo_depth.models.resnet import WeightLoadError, check_state_dict, read_state_dict_file

DEPTH_MODULES = ("depth_enc", "depth_dec")
SIZE_KEYS = ("height", "width")


@dataclass(frozen=True)
class OriginalFolder:
    """What a folder holds: its module state dicts and the stored network input size (height, width)."""

    path: Path
    states: Mapping[str, Mapping[str, torch.Tensor]]
    height: int
    width: int


def is_original_folder(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a directory with at least ``depth_enc.pth``."""
    return Path(path).is_dir() and (Path(path) / "depth_enc.pth").is_file()


def read_folder(path: str | os.PathLike[str], *, modules: Sequence[str] = MODULE_NAMES) -> OriginalFolder:
    """Read the ``modules`` files of an original checkpoint folder; WeightLoadError naming a missing one."""
    folder = Path(path)
    if not folder.is_dir():
        raise WeightLoadError(f"checkpoint folder {folder}: not a directory")
    absent = [m for m in modules if not (folder / f"{m}.pth").is_file()]
    if absent:
        raise WeightLoadError(f"checkpoint folder {folder}: missing module file(s) "
                              f"{', '.join(m + '.pth' for m in absent)}")
    states = {m: dict(read_state_dict_file(folder / f"{m}.pth")) for m in modules}
    if not any("enc" in m and SIZE_KEYS[0] in states[m] for m in modules):  # sizes only in an unread encoder file
        extra = [m for m in available_modules(folder) if "enc" in m and m not in states]
        sizes = _stored_size(folder, {m: dict(read_state_dict_file(folder / f"{m}.pth")) for m in extra} | states)
        return OriginalFolder(path=folder, states=states, height=sizes[0], width=sizes[1])
    height, width = _stored_size(folder, states)
    return OriginalFolder(path=folder, states=states, height=height, width=width)


def _size_value(value: object) -> int | None:
    """A stored size as an int (a Python int or a one-element integer tensor), None if it is neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        return int(value.item())
    return None


def _stored_size(folder: Path, states: dict[str, dict[str, object]]) -> tuple[int, int]:
    """Pop ``height`` / ``width`` from every ``*enc*`` state dict in ``states``: (height, width) they agree on;
    WeightLoadError naming the file(s) if a size is not an int, only one of the two is stored, two files
    disagree, or no encoder file holds them."""
    found: dict[str, tuple[int, int]] = {}
    for name, state in states.items():
        if "enc" not in name or not any(k in state for k in SIZE_KEYS):
            continue
        raw = {k: state.pop(k, None) for k in SIZE_KEYS}
        sizes = {k: _size_value(v) for k, v in raw.items()}
        if None in sizes.values():
            raise WeightLoadError(f"{folder / (name + '.pth')}: needs integer 'height' and 'width' entries, got {raw}")
        found[f"{name}.pth"] = (sizes["height"], sizes["width"])
    if not found:
        files = ", ".join(f"{m}.pth" for m in states if "enc" in m)
        raise WeightLoadError(f"checkpoint folder {folder}: no encoder file ({files}) holds the integer 'height' "
                              f"and 'width' entries the original's Model.save writes")
    (first, size), *others = found.items()
    for other, other_size in others:
        if other_size != size:
            raise WeightLoadError(f"checkpoint folder {folder}: {first} stores height x width {size[0]}x{size[1]}, "
                                  f"{other} stores {other_size[0]}x{other_size[1]}; they must agree")
    return size

def load_module_state(module: nn.Module, state: Mapping[str, object], *, source: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with errors naming the file, keys and shapes."""
    own = module.state_dict()
    check_state_dict(own, state, source=source, hint=_depth_network_hint(own, state))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def depth_network_of(keys: Iterable[str]) -> str | None:
    """Which registered depth network a depth-encoder state dict's keys belong to (None if neither)."""
    keys = list(keys)
    if any(k.startswith("encoder.layer1.") for k in keys):
        return "resnet18"
    if any(k.startswith("stages.") for k in keys):
        return "litemono"
    return None


def _depth_network_hint(own: Mapping[str, object], given: Mapping[str, object]) -> str:
    ours, theirs = depth_network_of(own), depth_network_of(given)
    if ours and theirs and ours != theirs:
        return f" (the file holds a {theirs} depth network, the model is {ours}: set model.depth_network to match)"
    return ""


def load_folder(model: nn.Module, path: str | os.PathLike[str], *, depth_only: bool = False) -> OriginalFolder:
    """Load an original folder into ``model`` (all seven modules, or the depth pair with ``depth_only``)."""
    folder = read_folder(path, modules=DEPTH_MODULES if depth_only else MODULE_NAMES)
    for name, state in folder.states.items():
        load_module_state(getattr(model, name), state, source=str(folder.path / f"{name}.pth"))
    return folder


def available_modules(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The module names whose ``.pth`` file exists in ``path``."""
    return tuple(m for m in MODULE_NAMES if (Path(path) / f"{m}.pth").is_file())


def _copied(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of a state dict's tensors (a channels_last model exports the original's
    layout); keys that share a tensor (aliases) keep sharing its copy."""
    copies: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        ident = (value.data_ptr(), tuple(value.shape))
        if ident not in copies or value.numel() == 0:
            copies[ident] = value.detach().cpu().clone(memory_format=torch.contiguous_format)
        out[key] = copies[ident]
    return out


def export_folder(model: nn.Module, out_dir: str | os.PathLike[str], *, height: int, width: int) -> Path:
    """Write ``model``'s seven modules as an original checkpoint folder (each file atomically), as the original's
    ``Model.save``: each module's state dict, with the ints ``height`` and ``width`` appended (after the tensors)
    to every module whose name contains ``enc``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in MODULE_NAMES:
        state = _copied(getattr(model, name).state_dict())
        if "enc" in name:
            state["height"], state["width"] = int(height), int(width)
        tmp = out / f".{name}.pth.tmp"
        torch.save(state, tmp)
        os.replace(tmp, out / f"{name}.pth")
    return out
