"""PNG figures of the eval CLIs (matplotlib, Agg backend; no timestamps in the files)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_PNG_METADATA = {"Software": None}  # keep only deterministic chunks


@dataclass(frozen=True, eq=False)
class QualitativeRow:
    """One row of the qualitative figure.

    Attributes:
        key: sample key.
        image: (H', W', 3) uint8 target frame at the training size.
        depth: (H', W') predicted depth in metres after median scaling.
        points_uv: (N, 2) [u, v] of evaluated LiDAR points in pixels of the training-size image.
        abs_rel: (N,) per-point |gt - pred| / gt.
    """

    key: str
    image: np.ndarray
    depth: np.ndarray
    points_uv: np.ndarray
    abs_rel: np.ndarray


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80, metadata=_PNG_METADATA)
    _pyplot().close(fig)


def plot_error_by_distance(*, by_distance: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Bar chart of AbsRel (pooled over points) and point count per gt distance bin (metres)."""
    plt = _pyplot()
    labels = [f"{b['lo']:.0f}-{b['hi']:.0f}" for b in by_distance]
    abs_rel = [b["abs_rel"] if b["abs_rel"] is not None else 0.0 for b in by_distance]
    counts = [b["num_points"] for b in by_distance]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(labels))
    ax.bar(x, abs_rel, color="tab:blue")
    ax.set_xticks(x, labels)
    ax.set_xlabel("ground-truth depth (m)")
    ax.set_ylabel("AbsRel", color="tab:blue")
    twin = ax.twinx()
    twin.plot(x, counts, "o-", color="tab:orange")
    twin.set_ylabel("LiDAR points", color="tab:orange")
    ax.set_title("Depth error by distance")
    fig.tight_layout()
    _save(fig, path)


def plot_qualitative(*, rows: Sequence[QualitativeRow], path: str | os.PathLike[str], max_rel: float = 0.3) -> None:
    """One row per sample: image, predicted depth (magma, near bright), LiDAR AbsRel over the image."""
    if not rows:
        raise ValueError(f"{os.fspath(path)!r}: no qualitative rows to draw")
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 2.4 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows, strict=True):
        ax_row[0].imshow(row.image)
        ax_row[0].set_title(row.key, fontsize=7)
        ax_row[1].imshow(1.0 / np.maximum(row.depth, 1e-3), cmap="magma")
        ax_row[1].set_title("predicted depth", fontsize=7)
        ax_row[2].imshow(row.image)
        scatter = ax_row[2].scatter(row.points_uv[:, 0], row.points_uv[:, 1], c=row.abs_rel, s=2,
                                    cmap="RdYlGn_r", vmin=0.0, vmax=max_rel)
        ax_row[2].set_title("LiDAR AbsRel", fontsize=7)
        fig.colorbar(scatter, ax=ax_row[2], fraction=0.03)
        for ax in ax_row:
            ax.set_axis_off()
    fig.tight_layout()
    _save(fig, path)


def plot_pr_curve(*, precision: np.ndarray, recall: np.ndarray, best: tuple[float, float],
                  path: str | os.PathLike[str]) -> None:
    """Precision-recall curve of motion segmentation with the best-F1 threshold in the title."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(recall, precision, "-", color="tab:red")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Motion segmentation: best F1 {best[0]:.3f} at t={best[1]:.2f}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
