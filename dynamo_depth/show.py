"""``python -m dynamo_depth show SHARDS [--key K] --out FILE.png``: a picture of one sample.

Top row: frames t-1, t, t+1 as stored. Bottom: the target frame with its LiDAR depth points drawn
over it (coloured by depth, scaled from the original resolution to the stored image), and a text
panel with the sample's key, K, timestamps and ego motion.
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np

from dynamo_depth.shards import storage
from dynamo_depth.shards.manifest import load_manifest
from dynamo_depth.shards.reader import read_sample
from dynamo_depth.shards.schema import TripletSample, decode


def find_sample(shards_url: str, key: str | None) -> TripletSample:
    """The sample ``key`` (or the first one) of the shard set at ``shards_url``; range-reads one sample."""
    manifest = load_manifest(shards_url)
    folder = storage.dirname(shards_url) if shards_url.rstrip("/").endswith(".json") else shards_url
    for shard in manifest.shards:
        for span in shard.samples:
            if key is None or span.key == key:
                return decode(read_sample(storage.join(folder, shard.name), span), key=span.key)
    keys = [s.key for shard in manifest.shards for s in shard.samples][:5]
    raise ValueError(f"{shards_url}: no sample with key {key!r} (first keys: {keys})")


def draw(sample: TripletSample, out_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    frames = []
    for name, data in zip(("prev.jpg", "cur.jpg", "next.jpg"), sample.images, strict=True):
        try:
            frames.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        except OSError as exc:
            raise ValueError(f"sample {sample.key!r}, member {name!r}: cannot decode the JPEG ({exc})") from None
    height, width = frames[1].shape[:2]
    orig_h, orig_w = sample.meta.original_size
    fig = plt.figure(figsize=(15, 7.5))
    for i, (frame, label) in enumerate(zip(frames, ("t-1", "t", "t+1"), strict=False)):
        ax = fig.add_subplot(2, 3, i + 1)
        ax.imshow(frame)
        ax.set_title(f"{label}: frame {sample.meta.frame_indices[i]}")
        ax.axis("off")
    ax = fig.add_subplot(2, 3, (4, 5))
    ax.imshow(frames[1])
    depth = sample.depth if sample.depth is not None else np.zeros((0, 3), np.float32)  # schema v2: no LiDAR
    u, v, z = depth[:, 0] * width / orig_w, depth[:, 1] * height / orig_h, depth[:, 2]
    points = ax.scatter(u, v, c=z, s=1.0, cmap="turbo", vmin=0, vmax=float(np.percentile(z, 98)) if len(z) else 1)
    fig.colorbar(points, ax=ax, label="LiDAR depth (m)", fraction=0.03)
    ax.set_title(f"{len(z)} LiDAR points over frame t")
    ax.axis("off")
    ax = fig.add_subplot(2, 3, 6)
    ax.axis("off")
    step = np.linalg.norm(sample.poses[2][:3, 3] - sample.poses[1][:3, 3]) if sample.poses is not None else None
    gaps = np.diff(sample.meta.timestamps_us) / 1000
    text = [sample.key, f"{sample.meta.dataset}/{sample.meta.split}  camera {sample.meta.camera}",
            f"stored {width}x{height}, original {orig_w}x{orig_h}",
            "K = " + np.array2string(sample.K, precision=1, suppress_small=True),
            f"gaps {gaps[0]:.1f} / {gaps[1]:.1f} ms, " + (f"t->t+1 moved {step:.2f} m" if step is not None
                                                          else "no poses"),
            f"depth z {z.min():.1f}-{z.max():.1f} m" if len(z) else "no depth points"]
    ax.text(0, 1, "\n".join(text), va="top", family="monospace", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynamo_depth show", description=__doc__.splitlines()[0])
    parser.add_argument("shards", metavar="SHARDS", help="shard folder or manifest.json (local or s3://)")
    parser.add_argument("--key", default=None, help="sample key (default: the first sample)")
    parser.add_argument("--out", required=True, help="output PNG path")
    args = parser.parse_args(argv)
    try:
        sample = find_sample(args.shards, args.key)
        draw(sample, args.out)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({sample.key})")
    return 0


__all__ = ["draw", "find_sample", "main"]
