"""SIGTERM / SIGINT during training: finish the step, agree on it across ranks, checkpoint, exit ``EXIT_STOPPED``.

``StopSignals`` (a context manager around the training loop) replaces the SIGTERM and SIGINT handlers with
one that only records the signal. After every step the loop calls ``agree`` on every rank: a MAX
all-reduce of the signal number (a gloo group on CPU tensors, so a GPU run does not synchronise its
device for it), so all ranks stop after the same step even when only one rank was signalled (preemption
of one node, ``kill`` of one process). The loop then writes the checkpoint of that step and the process
exits with ``EXIT_STOPPED``; ``--resume auto`` (or ``--resume``) continues exactly from it.

``deadline_s`` bounds the time from the signal (or, on a rank that was not signalled, from the agreement)
to the written checkpoint: past it the process prints why and exits with ``EXIT_STOP_DEADLINE``; the
pointer ``checkpoints/last.json`` then still names the previous complete checkpoint (a step file is
committed before the pointer). A second signal stops at once the default way (SIGINT: KeyboardInterrupt).

DataLoader workers signalled themselves (a scheduler signalling every process of the job) may die; the
handler turns off torch's SIGCHLD check so their death cannot interrupt the checkpoint (no batch is fetched
after the agreement). Under torchrun the agent forwards SIGTERM / SIGINT to its workers only (and kills them
``--shutdown-timeout`` seconds later, 30 by default).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from train.runtime import Runtime

EXIT_STOPPED = 75
"""Stopped by SIGTERM / SIGINT after writing the checkpoint of the step reached (``EX_TEMPFAIL``: rerun)."""
EXIT_STOP_DEADLINE = 76
"""Stopped by SIGTERM / SIGINT, but the checkpoint was not written within ``--stop-deadline`` seconds."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Records SIGTERM / SIGINT while active (``with``); ``agree`` is the per-step collective (module docstring)."""

    def __init__(self, *, runtime: Runtime, deadline_s: float | None = None,
                 exit_process: Callable[[int], Any] = os._exit) -> None:
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError(f"deadline_s={deadline_s}: must be > 0 seconds or None")
        self.runtime = runtime
        self.deadline_s = deadline_s
        self.exit_process = exit_process
        self.received: str | None = None
        """The signal's name once one arrived on this rank or was agreed on (``agree``)."""
        self._signum = 0
        self._own_signals = 0
        self._timer: threading.Timer | None = None
        self._previous: dict[int, Any] = {}
        self._group = None
        if runtime.distributed and runtime.device.type != "cpu":
            self._group = dist.new_group(backend="gloo")  # collective: every rank builds it here

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
            self._previous[signal.SIGCHLD] = signal.getsignal(signal.SIGCHLD)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.checkpoint_written()
        self._restore()

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._own_signals += 1
        if self._own_signals > 1:  # a second signal to this process: stop now, as without this handler
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        if not self._signum:
            self._signum, self.received = signum, signal.Signals(signum).name
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a signalled DataLoader worker's death must not raise here
        bound = f" (--stop-deadline {self.deadline_s:g} s)" if self.deadline_s else ""
        # os.write, not print: the handler may run while the main thread is inside a print (reentrant call)
        os.write(2, f"train: rank {self.runtime.rank}: {signal.Signals(signum).name}: finishing this step, then writing a "
                    f"checkpoint{bound}; send it again to stop at once\n".encode())
        self._start_deadline()

    def _start_deadline(self) -> None:
        if self.deadline_s is None or self._timer is not None:
            return
        self._timer = threading.Timer(self.deadline_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        os.write(2, f"train: rank {self.runtime.rank}: the checkpoint was not written within --stop-deadline "
                    f"{self.deadline_s:g} s after {self.received}; exiting with status {EXIT_STOP_DEADLINE} "
                    f"(checkpoints/last.json still names the previous complete checkpoint)\n".encode())
        self.exit_process(EXIT_STOP_DEADLINE)

    def agree(self) -> bool:
        """Collective (every rank, after every step): whether any rank received a stop signal."""
        number = torch.tensor([self._signum], dtype=torch.int64)
        if self.runtime.distributed:
            dist.all_reduce(number, op=dist.ReduceOp.MAX, group=self._group)
        agreed = int(number.item())
        if agreed and not self._signum:  # another rank was signalled: this one stops with it
            self._signum, self.received = agreed, signal.Signals(agreed).name
            self._start_deadline()
        return agreed != 0

    def wait_for_checkpoint(self) -> None:
        """Collective after the stop checkpoint: no rank exits before rank 0 has committed it.

        Without it a rank that does not write would exit at once, and torchrun's agent would then SIGTERM (and
        ``--shutdown-timeout`` seconds later SIGKILL) the others, rank 0 among them, while it still writes.
        The deadline (``--stop-deadline``) keeps running through the wait.
        """
        if self.runtime.distributed:
            dist.barrier(group=self._group)

    def checkpoint_written(self) -> None:
        """The stop checkpoint is committed: the deadline no longer applies."""
        if self._timer is not None:
            self._timer.cancel()
