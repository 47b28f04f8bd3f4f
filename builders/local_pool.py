"""One machine's process pool for the build runner: ``--workers N`` without Ray's start-up.

On one machine (no ``--address``) a build's unit and pack tasks run in ``N`` worker processes of this
pool (``--executor processes``, the default there). It starts in well under a second (Ray's local
instance takes 5-12 s on a small machine: longer than a whole 800-frame KITTI build), and runs the same
task functions as Ray, so the bytes are the same with either executor and with ``--workers 0``.

* Workers are *spawned* (never forked from a driver that may run threads: S3 clients, progress bars),
  import what their first task needs, and run OpenCV on one thread (one task per CPU, as under Ray).
* Progress: a task reports frames through ``report_frames(n)`` (a queue the worker inherited at its
  start); the driver drains it while it waits (``LocalPool.run``).
* A worker process that dies (killed, out of memory, a crash in native code) breaks the whole pool:
  every task then in flight is retried once in a fresh pool; a task in flight at a second break fails
  with "worker process died" (``WorkerDied``). The pool cannot tell which task killed it, so a unit
  that kills its worker every time may take the units running beside it along at its second crash;
  the build reports them failed and a rerun rebuilds only those (finished units are kept).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

POLL_SECONDS = 0.5
_progress: Any = None  # in a worker: the pool's progress queue (inherited at the worker's start)


def _start_worker(progress: Any) -> None:
    global _progress
    _progress = progress
    import cv2

    # OpenCV's pthreads pool ignores OMP_NUM_THREADS and would start one thread per core in every worker.
    cv2.setNumThreads(1)


def report_frames(frames: int) -> None:
    """In a worker: tell the driver that ``frames`` more frames are done (a no-op outside a pool)."""
    if _progress is not None:
        _progress.put(frames)


@dataclass(frozen=True)
class Task:
    """One call ``fn(*args)`` to run in a worker; ``key`` identifies it in ``run``'s results."""

    key: Hashable
    fn: Callable[..., Any]
    args: tuple[Any, ...]


class WorkerDied(RuntimeError):
    """A task's worker process died twice while it ran (see the module docstring)."""


class LocalPool:
    """``workers`` spawned processes; ``run`` maps tasks over them, at most ``workers`` in flight."""

    def __init__(self, workers: int) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._progress = self._context.Queue()
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=self._context,
                                                 initializer=_start_worker, initargs=(self._progress,))
        return self._executor

    @property
    def reporter(self) -> Callable[[int], Any]:
        """The ``report(frames)`` a task calls for progress (picklable: it names a module function)."""
        return report_frames

    def _drain(self) -> int:
        frames = 0
        with contextlib.suppress(queue.Empty):
            while True:
                frames += self._progress.get_nowait()
        return frames

    def run(self, tasks: Iterable[Task], *, on_progress: Callable[[int], Any] | None = None,
            ) -> Iterator[tuple[Task, Any, BaseException | None]]:
        """``(task, result, None)`` or ``(task, None, error)`` per task, in completion order.

        ``tasks`` is consumed lazily: the next task is taken only when a worker is free.
        """
        source, retry = iter(tasks), deque()
        pending: dict[Future, tuple[Task, int]] = {}
        exhausted = False
        while True:
            while len(pending) < self.workers and (retry or not exhausted):
                task, breaks = retry.popleft() if retry else (next(source, None), 0)
                if task is None:
                    exhausted = True
                    break
                pending[self._pool().submit(task.fn, *task.args)] = (task, breaks)
            if not pending:
                return
            done, _ = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            if on_progress is not None and (frames := self._drain()):
                on_progress(frames)
            broken: list[tuple[Task, int]] = []
            for future in done:
                yield from self._outcome(future, pending.pop(future), broken)
            if broken:
                for future in wait(pending)[0]:  # a broken pool fails every future still in flight
                    yield from self._outcome(future, pending.pop(future), broken)
                self.close()
                for task, breaks in broken:
                    if breaks == 0:
                        retry.append((task, 1))
                    else:
                        yield task, None, WorkerDied("worker process died (twice) while running it")

    @staticmethod
    def _outcome(future: Future, entry: tuple[Task, int], broken: list[tuple[Task, int]],
                 ) -> Iterator[tuple[Task, Any, BaseException | None]]:
        task, _ = entry
        error = future.exception()
        if isinstance(error, BrokenProcessPool):
            broken.append(entry)
        else:
            yield task, None if error is not None else future.result(), error

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


@contextlib.contextmanager
def pool_session(*, workers: int) -> Iterator[Callable[[], LocalPool]]:
    """Yield ``ensure()``, which starts the pool the first time it is called; the pool stops on exit."""
    started: list[LocalPool] = []

    def ensure() -> LocalPool:
        if not started:
            started.append(LocalPool(workers))
        return started[0]

    try:
        yield ensure
    finally:
        for pool in started:
            pool.close()
