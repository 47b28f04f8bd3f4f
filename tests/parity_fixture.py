"""Reader of the parity fixtures (``shared/reference/parity_*``: numbers of the original Dynamo-Depth).

A fixture folder holds ``fixture.json``, ``inputs.npz``, and per phase ``outputs_<phase>.npz``,
``losses_<phase>.json`` (with the ``outputs`` index) and ``draws_<phase>.npz`` (see its README.md).
Keys are the original dict keys joined with ``|``. Output storage: ``full`` (the array), ``same_as`` /
``neg_of`` with ``ref`` = ``<file>:<key>`` (possibly another file, possibly ``<key>@samples``), or
``samples`` (only ``<key>@samples``: the flat C-order array at indices floor(i * n / 4096)). The uint8
colour inputs decode as float32(u8) / 255.

Folders: ``DYNAMO_PARITY_FIXTURES`` (colon-separated paths) or every ``<repo>/../shared/reference/parity_*``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

ENV_VAR = "DYNAMO_PARITY_FIXTURES"
N_SAMPLES = 4096
REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "reference"


def fixture_folders() -> list[Path]:
    """The fixture folders to test: $DYNAMO_PARITY_FIXTURES (colon-separated) or the default ones, existing only."""
    env = os.environ.get(ENV_VAR)
    if env:
        candidates = [Path(p) for p in env.split(":") if p]
    else:
        candidates = sorted(DEFAULT_ROOT.glob("parity_*")) if DEFAULT_ROOT.is_dir() else []
    return [p for p in candidates if (p / "fixture.json").is_file()]


def sample_indices(n: int) -> np.ndarray:
    """The 4096 flat indices floor(i * n / 4096), i = 0..4095, of a samples-stored array of n elements."""
    return (np.arange(N_SAMPLES, dtype=np.int64) * n) // N_SAMPLES


@dataclass(frozen=True)
class Stored:
    """One stored tensor: ``value`` is the full array, or its samples when ``sampled`` (``shape`` = full shape)."""

    value: np.ndarray
    shape: tuple[int, ...]
    sampled: bool

    def view(self, ours: np.ndarray) -> np.ndarray:
        """Our full array (of ``shape``) reduced to what is stored: itself or its values at the sample indices."""
        ours = np.asarray(ours)
        if tuple(ours.shape) != self.shape:
            raise ValueError(f"shape {ours.shape} differs from the stored {self.shape}")
        return ours.reshape(-1)[sample_indices(ours.size)] if self.sampled else ours


class ParityFixture:
    """Lazy, cached access to one fixture folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._npz: dict[str, dict[str, np.ndarray]] = {}
        self._json: dict[str, dict] = {}

    @property
    def name(self) -> str:
        return self.folder.name

    @cached_property
    def config(self) -> dict:
        return json.loads((self.folder / "fixture.json").read_text())

    @property
    def phases(self) -> list[str]:
        return list(self.config["phases"])

    @property
    def scales(self) -> list[int]:
        return [int(s) for s in self.config["scales"]]

    def npz(self, file: str) -> dict[str, np.ndarray]:
        """All arrays of one .npz of the folder (loaded once)."""
        if file not in self._npz:
            with np.load(self.folder / file) as data:
                self._npz[file] = {k: data[k] for k in data.files}
        return self._npz[file]

    def losses(self, phase: str) -> dict:
        """The parsed ``losses_<phase>.json``."""
        if phase not in self._json:
            self._json[phase] = json.loads((self.folder / f"losses_{phase}.json").read_text())
        return self._json[phase]

    def input(self, key: str) -> np.ndarray:
        """``inputs.npz[key]``, uint8 colours decoded to float32(u8) / 255."""
        return _decode(key, self.npz("inputs.npz")[key])

    def draws(self, phase: str) -> dict[str, np.ndarray]:
        """``draws_<phase>.npz`` (empty for phases that draw nothing)."""
        return self.npz(f"draws_{phase}.npz")

    def output_keys(self, phase: str) -> list[str]:
        return list(self.losses(phase)["outputs"])

    def output(self, phase: str, key: str) -> Stored:
        """The stored value of outputs[key] of ``phase``, references resolved."""
        entry = self.losses(phase)["outputs"][key]
        shape, storage = tuple(entry["shape"]), entry["storage"]
        if storage == "full":
            return Stored(self.npz(f"outputs_{phase}.npz")[key], shape, False)
        if storage == "samples":
            return Stored(self.npz(f"outputs_{phase}.npz")[key + "@samples"], shape, True)
        if storage not in ("same_as", "neg_of"):
            raise ValueError(f"{self.name} {phase} {key}: unknown storage {storage!r}; allowed: full, samples, same_as, neg_of")
        file, ref_key = entry["ref"].split(":", 1)
        value = _decode(ref_key, self.npz(file)[ref_key])
        return Stored(-value if storage == "neg_of" else value, shape, ref_key.endswith("@samples"))


def _decode(key: str, value: np.ndarray) -> np.ndarray:
    """float32(u8) / 255 for uint8 colour arrays, the array otherwise."""
    if value.dtype == np.uint8 and key.startswith("color"):
        return value.astype(np.float32) / np.float32(255)
    return value
