"""``python -m dynamo_depth predict --checkpoint C IMAGES_OR_FOLDER --out DIR``: depth for your own images.

Each image (any size; PNG/JPEG) is resized to the network's size with PIL's bicubic filter (as the
original's evaluation resizes its inputs) and run through the depth network in eval mode.

Writes to ``DIR``:
- ``predictions.npz``: per image file stem, the scale-0 disparity: the network's sigmoid output at the
  network's size, float32 (H, W) (the original's ``('disp', 0)``);
- ``<stem>_depth.png``: the depth ``disp_to_depth`` gives, upsampled (bilinear) to the image's size, in colour
  (near = bright), a picture to look at, not data;
- with ``--motion`` (a folder of consecutive frames, sorted by name; a checkpoint with the motion
  networks): ``motion.npz`` with ``<stem>/mask`` (H, W) motion probability and ``<stem>/flow`` (3, H, W)
  complete flow in metres towards the next frame, for every frame that has both neighbours.
Videos (mp4 / mov / mkv / avi; ``dynamo_depth.predict_video``): ``DIR/<name>_depth.mp4``, a colour-mapped depth
video at the source's frame rate (divided by ``--every``), and with ``--motion`` ``DIR/<name>_motion.mp4``,
the motion mask over the frames; ``--every K`` / ``--max-frames N`` for long videos.
The checkpoint is a trainer checkpoint or an original Dynamo-Depth module folder. Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from dynamo_depth.pictures import colour_depth
from dynamo_depth.video.frames import VIDEO_SUFFIXES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_images(inputs: Sequence[str]) -> list[Path]:
    """Image files named or found (non-recursively, sorted by name) in the given paths; ValueError if none."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"{path}: no such file or directory")
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {list(inputs)}")
    stems = [p.stem for p in found]
    if len(set(stems)) != len(stems):
        raise ValueError(f"two images share a file stem: {sorted(s for s in stems if stems.count(s) > 1)[:4]}")
    return found


def read_image(path: Path, *, height: int, width: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(3, height, width) float32 in [0, 1] (PIL bicubic resize) and the image's own (H, W)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except Exception as err:  # PIL raises several types for unreadable files
        raise ValueError(f"{path}: cannot read it as an image ({err})") from err
    own = (rgb.height, rgb.width)
    if own != (height, width):
        rgb = rgb.resize((width, height), Image.BICUBIC)
    array = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(array.transpose(2, 0, 1)), own


def _batches(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start:start + size]


def predict_depth(*, loaded, paths: list[Path], out: Path, batch_size: int, device: str, progress: bool) -> int:
    """Write predictions.npz and the depth pictures; returns the number of images."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from tqdm import tqdm

    from dynamo_depth.models.depth import disp_to_depth

    model = loaded.model.to(device)
    disparities: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    for chunk in _batches(paths, batch_size):
        read = [read_image(p, height=loaded.height, width=loaded.width) for p in chunk]
        x = torch.from_numpy(np.stack([r[0] for r in read])).to(device)
        with torch.no_grad():
            disp = model.predict_disparity(x)[0].float().cpu()
        for path, (_, own), d in zip(chunk, read, disp, strict=True):
            disparities[path.stem] = d[0].numpy().astype(np.float32)
            up = F.interpolate(d[None], size=own, mode="bilinear", align_corners=False)
            _, depth = disp_to_depth(up, min_depth=loaded.min_depth, max_depth=loaded.max_depth)
            Image.fromarray(colour_depth(depth[0, 0].numpy())).save(out / f"{path.stem}_depth.png")
        bar.update(len(chunk))
    bar.close()
    np.savez(out / "predictions.npz", **disparities)
    return len(disparities)


def predict_motion(*, loaded, paths: list[Path], out: Path, device: str, progress: bool) -> int:
    """Write motion.npz for every frame with both neighbours; returns their number."""
    import torch
    from tqdm import tqdm

    if len(paths) < 3:
        raise ValueError(f"--motion needs at least 3 consecutive frames, got {len(paths)}")
    model = loaded.model.to(device)
    frames = [torch.from_numpy(read_image(p, height=loaded.height, width=loaded.width)[0]) for p in paths]
    result: dict[str, np.ndarray] = {}
    for i in tqdm(range(1, len(paths) - 1), desc="motion", unit="frame", disable=not progress):
        triplet = torch.stack(frames[i - 1:i + 2])[None].to(device)
        with torch.no_grad():
            outputs = model(triplet, phase="fine_tune")
        result[f"{paths[i].stem}/mask"] = outputs.motion_mask(0)[0, 0].float().cpu().numpy()
        result[f"{paths[i].stem}/flow"] = outputs.complete_flow[0][0].float().cpu().numpy()
    np.savez(out / "motion.npz", **result)
    return len(result)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dynamo_depth predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images, or video files")
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint (.pt) or original module folder")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--motion", action="store_true", help="also write motion.npz (consecutive frames)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward (default 8)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--every", type=int, default=1, metavar="K", help="videos: every K-th frame (default 1)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="videos: at most N frames")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dynamo_depth.models.loading import load_for_inference

    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        videos = [Path(p) for p in args.inputs if Path(p).suffix.lower() in VIDEO_SUFFIXES]
        if videos:
            return _predict_videos(args, videos)
        paths = list_images(args.inputs)
        loaded = load_for_inference(args.checkpoint, need_motion=args.motion)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        count = predict_depth(loaded=loaded, paths=paths, out=out, batch_size=args.batch_size,
                              device=args.device, progress=not args.quiet)
        if args.motion:
            predict_motion(loaded=loaded, paths=paths, out=out, device=args.device, progress=not args.quiet)
    except ValueError as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    print(f"predict: {count} image(s) -> {out / 'predictions.npz'}")
    return 0


def _predict_videos(args: argparse.Namespace, videos: list[Path]) -> int:
    from dynamo_depth.models.loading import load_for_inference
    from dynamo_depth.predict_video import predict_video

    if len(videos) != len(args.inputs):
        raise ValueError("give either videos or images, not both")
    for video in videos:
        if not video.is_file():
            raise ValueError(f"{video}: no such file")
    loaded = load_for_inference(args.checkpoint, need_motion=args.motion)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for video in videos:
        count = predict_video(loaded=loaded, path=video, out=out, every=args.every, max_frames=args.max_frames,
                              motion=args.motion, batch_size=args.batch_size, device=args.device,
                              progress=not args.quiet)
        print(f"predict: {video}: {count} frame(s) -> {out / (video.stem + '_depth.mp4')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
