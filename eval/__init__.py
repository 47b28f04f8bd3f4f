"""Evaluation command lines: ``python -m eval.depth``, ``eval.motion_segmentation``, ``eval.odometry``.

Shared helpers of the three CLIs live here: reading built shards in order, reading prediction
files, writing the report. Metrics themselves are in ``dynamo_depth.metrics``.

Data (``--data``): a shard file ``*.tar``, a folder / object-store prefix holding ``*.tar`` shards
(all of them, in sorted name order), or a ``manifest.json`` (every ``*.tar`` in its folder). Local
paths and ``s3://`` URLs both work (``dynamo_depth.storage``). Evaluation reads every sample once,
sequentially (no shuffling, no rank split): it does not go through the training loader.

Predictions (``--predictions FILE.npz``): an uncompressed or compressed ``.npz`` written with
``np.savez(path, **{sample_key: array})``: one array per sample, named by the sample key
(``{sequence}_{camera}_{frame:06d}``). Each CLI documents what its arrays hold.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["PredictionFile", "iter_samples", "list_shards", "rgb_from_jpeg", "write_report"]


def list_shards(data_url: str) -> list[str]:
    """URLs of the shards named by ``data_url`` (see module doc), sorted by name."""
    from dynamo_depth import storage

    url = os.fspath(data_url)
    if url.endswith(".tar"):
        if not storage.exists(url):
            raise ValueError(f"--data {url!r}: shard does not exist")
        return [url]
    folder = storage.dirname(url) if url.endswith("manifest.json") else url
    names = [n for n in storage.listdir(folder) if n.endswith(".tar")]
    if not names:
        raise ValueError(f"--data {url!r}: no *.tar shard found in {folder!r}")
    return [storage.join(folder, n) for n in names]


def iter_samples(data_url: str, *, max_samples: int | None = None) -> Iterator[Any]:
    """Decoded ``TripletSample``s of every shard of ``data_url`` in order (at most ``max_samples``)."""
    from dynamo_depth.schema import decode
    from dynamo_depth.shards import iter_shard

    if max_samples is not None and max_samples < 1:
        raise ValueError(f"--max-samples must be >= 1, got {max_samples}")
    count = 0
    for shard in list_shards(data_url):
        for key, members in iter_shard(shard):
            yield decode(members, key=key)
            count += 1
            if max_samples is not None and count >= max_samples:
                return


class PredictionFile:
    """Read-only view of a predictions ``.npz`` (arrays named by sample key; never unpickles)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._npz = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"predictions {self.path!r}: cannot read as .npz: {exc}") from exc
        if not hasattr(self._npz, "files"):
            raise ValueError(f"predictions {self.path!r}: a .npz archive (arrays named by sample key) is required")
        self.keys = frozenset(self._npz.files)

    def get(self, key: str, *, ndim: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The array of sample ``key`` as float64; ``ValueError`` naming file and key if missing or malformed."""
        if key not in self.keys:
            raise ValueError(f"predictions {self.path!r}: no array for sample key {key!r}")
        try:
            arr = np.asarray(self._npz[key], dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"predictions {self.path!r}, key {key!r}: not a numeric array: {exc}") from exc
        if arr.ndim != ndim or (shape is not None and arr.shape != shape):
            want = shape if shape is not None else f"{ndim}-D"
            raise ValueError(f"predictions {self.path!r}, key {key!r}: shape {arr.shape}, expected {want}")
        return arr

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> PredictionFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def rgb_from_jpeg(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB of JPEG bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def write_report(*, out_dir: str | os.PathLike[str], report: Mapping[str, Any], markdown: str) -> None:
    """Write ``metrics.json`` (canonical: sorted keys, indent 2, no NaN) and ``metrics.md`` into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    text = json.dumps(report, sort_keys=True, indent=2, allow_nan=False) + "\n"
    for name, body in (("metrics.json", text), ("metrics.md", markdown)):
        path = os.path.join(out_dir, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(path + ".tmp", path)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: ``-`` for None, fixed decimals for floats."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
