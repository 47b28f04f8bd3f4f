"""Video and image-sequence frames with their timestamps, frame selection at a target rate, a video writer.

Decoding and encoding go through PyAV (``av``, pinned; FFmpeg ships inside its wheel). Times are exact
fractions of a second: a video frame's time is ``pts * time_base`` of its stream; frame ``i`` of an image
sequence (files sorted by name) is at ``i / rate``.

Frame selection at a target rate F (``select_at_rate``), the rule exactly: with t0 the first frame's time,
the targets are T_k = t0 + k / F for k = 0, 1, ... while T_k <= the last frame's time; each target takes the
frame whose time is nearest to it (on a tie the earlier frame); a frame taken by several targets is kept
once. Frames come out in time order. This works on variable-frame-rate clips (phone videos) as on constant
ones: only the timestamps count, never the container's nominal rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
T = TypeVar("T")


@dataclass(frozen=True)
class FrameRef:
    """One source frame: ``index`` in decode order (0-based), ``time`` in seconds, ``load()`` -> (H, W, 3) uint8
    RGB (decoded pixels are converted only when asked)."""

    index: int
    time: Fraction
    load: Callable[[], np.ndarray]

    @property
    def time_us(self) -> int:
        """The time in whole microseconds (nearest; halves to even)."""
        return round(self.time * 1_000_000)


def _video_error(path: Path, exc: Exception) -> ValueError:
    return ValueError(f"{path}: cannot decode the video ({type(exc).__name__}: {exc})")


def iter_video(path: str | Path) -> Iterator[FrameRef]:
    """Every frame of the first video stream of ``path``, in presentation order; ValueError naming the file on
    a file that is not a video, a frame without timestamp or timestamps that do not increase."""
    import av

    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise _video_error(path, exc) from None
    with container:
        if not container.streams.video:
            raise ValueError(f"{path}: holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        previous: Fraction | None = None
        try:
            for index, frame in enumerate(container.decode(stream)):
                if frame.pts is None:
                    raise ValueError(f"{path}: frame {index} has no timestamp (pts)")
                time = Fraction(frame.pts) * Fraction(stream.time_base)
                if previous is not None and time <= previous:
                    raise ValueError(f"{path}: frame {index} at {float(time):.6f} s does not follow frame "
                                     f"{index - 1} at {float(previous):.6f} s (timestamps must increase)")
                previous = time
                yield FrameRef(index=index, time=time, load=_rgb_of(frame))
        except av.FFmpegError as exc:
            raise _video_error(path, exc) from None


def _rgb_of(frame: Any) -> Callable[[], np.ndarray]:
    return lambda: frame.to_ndarray(format="rgb24")


def image_files(folder: Path) -> list[Path]:
    """The images of a sequence folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def iter_image_sequence(folder: str | Path, *, rate: Fraction) -> Iterator[FrameRef]:
    """The images of ``folder`` in name order, frame ``i`` at ``i / rate`` seconds."""
    folder = Path(folder)
    for index, path in enumerate(image_files(folder)):
        yield FrameRef(index=index, time=Fraction(index) / rate, load=_image_loader(path))


def _image_loader(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import cv2

        data = np.fromfile(str(path), dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if image is None:
            raise ValueError(f"{path}: cannot decode the image ({data.size} bytes)")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return load


def select_at_rate(frames: Iterable[T], *, rate: Fraction, time: Callable[[T], Fraction]) -> Iterator[T]:
    """The frames nearest to the targets t0 + k / rate (module rule), streamed with one frame of look-ahead.

    ``frames`` must come in increasing ``time``."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    period = 1 / Fraction(rate)
    start: Fraction | None = None
    k = 0
    held: tuple[T, Fraction, bool] | None = None  # the previous frame, its time, whether a target took it
    for frame in frames:
        t = time(frame)
        if start is None:
            start = t
        taken_now = False
        if held is not None:
            item, t_prev, taken = held
            while start + k * period < t:  # targets between the previous frame and this one
                target = start + k * period
                if target - t_prev <= t - target:
                    taken = True
                else:
                    taken_now = True
                k += 1
            if taken:
                yield item
        held = (frame, t, taken_now)
    if held is not None:
        item, t_last, taken = held
        if taken or (start is not None and start + k * period == t_last):
            yield item


def nominal_rate(path: str | Path) -> Fraction:
    """The container's average frame rate of a video (frames per second), for writing a video like it."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    except (av.FFmpegError, OSError, IndexError) as exc:
        raise _video_error(path, exc) from None
    if not rate:
        raise ValueError(f"{path}: the container states no frame rate")
    return Fraction(rate)


class VideoWriter:
    """H.264 (libx264, yuv420p) writer of (H, W, 3) uint8 RGB frames at ``rate`` frames per second.

    Odd sizes are padded by one black row / column (yuv420p needs even sizes). Use as a context manager."""

    def __init__(self, path: str | Path, *, rate: Fraction, crf: int = 18) -> None:
        import av

        self.path = Path(path)
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=Fraction(rate))
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf)}
        self._size: tuple[int, int] | None = None

    def write(self, rgb: np.ndarray) -> None:
        import av

        height, width = rgb.shape[:2]
        if self._size is None:
            self._size = (height + height % 2, width + width % 2)
            self._stream.height, self._stream.width = self._size
        padded = np.zeros((*self._size, 3), dtype=np.uint8)
        padded[:height, :width] = rgb
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
