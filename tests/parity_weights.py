"""The parity fixtures' integer weight generator (``weights_spec.json``), written from its stated rule.

Key j of module m with shape S draws ``i = default_rng([SEED, m, j]).integers(LO, 128, size=S)`` (LO = 0
for ``running_var``, else -127) and maps it by the key's rule: matrix ``i * 2**-k``; running_var
``1 + i * 2**-8``; norm_weight ``1 + i * 2**-9``; vector ``i * 2**-10``; zero (0-dim / integer) 0;
alias = the earlier key's tensor. Computed in float64, cast to float32 (exact).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def _generated(seed: int, m: int, entry: dict) -> np.ndarray | None:
    rule, shape = entry["rule"], tuple(entry["shape"])
    if rule in ("zero", "alias"):
        return None
    low = 0 if rule == "running_var" else -127
    drawn = np.random.default_rng([seed, m, entry["j"]]).integers(low, 128, size=shape, dtype=np.int64)
    if entry.get("int_sum") is not None and int(drawn.sum()) != int(entry["int_sum"]):
        raise AssertionError(f"{entry['key']}: int_sum {int(drawn.sum())} != spec {entry['int_sum']}")
    values = drawn.astype(np.float64)
    if rule == "matrix":
        fan_in = int(np.prod(shape[1:]))
        k = round(float(np.log2(73.3 * np.sqrt(fan_in / 2))))
        if entry.get("k") is not None and k != entry["k"]:
            raise AssertionError(f"{entry['key']}: k {k} != spec {entry['k']}")
        return values * 2.0**-k
    if rule == "running_var":
        return 1.0 + values * 2.0**-8
    if rule == "norm_weight":
        return 1.0 + values * 2.0**-9
    if rule == "vector":
        return values * 2.0**-10
    raise ValueError(f"{entry['key']}: unknown rule {rule!r}")


def generated_state_dicts(spec_path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: state dict in the original's key order} rebuilt from ``weights_spec.json``."""
    spec = json.loads(Path(spec_path).read_text())
    out: dict[str, dict[str, torch.Tensor]] = {}
    for module in spec["modules"]:
        state: dict[str, torch.Tensor] = {}
        for entry in module["keys"]:
            dtype = getattr(torch, entry["dtype"].replace("torch.", ""))
            values = _generated(int(spec["seed"]), int(module["m"]), entry)
            if entry["rule"] == "alias":
                state[entry["key"]] = state[entry["alias_of"]]
            elif values is None:
                state[entry["key"]] = torch.zeros(tuple(entry["shape"]), dtype=dtype)
            else:
                state[entry["key"]] = torch.from_numpy(values.astype(np.float32)).to(dtype)
        out[module["name"]] = state
    return out


def assert_same_module_files(original: Path, written: Path) -> None:
    """Every original module file in ``written`` holds ``original``'s keys in the same order, the same tensors
    (dtype, shape, values) and the same ints (``height`` / ``width`` of the ``*enc*`` files)."""
    from dynamo_depth.models import MODULE_NAMES

    for name in MODULE_NAMES:
        want = torch.load(original / f"{name}.pth", weights_only=True)
        got = torch.load(written / f"{name}.pth", weights_only=True)
        assert list(got) == list(want), name
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert got[key].dtype == value.dtype and got[key].shape == value.shape, (name, key)
                assert torch.equal(got[key], value), (name, key)
            else:
                assert type(got[key]) is type(value) and got[key] == value, (name, key)
