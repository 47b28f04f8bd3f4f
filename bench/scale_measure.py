"""Measuring helpers of the scale benches: a process's wall and CPU time and the peak RSS of it and its Ray workers."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 2**20


# ------------------------------------------------------------------------------------------ measuring
def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _is_worker(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    # Ray workers, and the spawned workers of a local process pool (multiprocessing's spawn_main)
    return cmd.startswith("ray::") or "default_worker.py" in cmd or "spawn_main" in cmd


class PeakRss(threading.Thread):
    """Peak RSS (MB) of a process and of each worker process (Ray's or a process pool's) among its descendants."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.driver_mb, self.workers_mb = pid, 0.0, {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.driver_mb = max(self.driver_mb, _status_kb(self.pid, "VmHWM") / 1024)
            stack = _children(self.pid)
            while stack:
                pid = stack.pop()
                stack += _children(pid)
                if _is_worker(pid):
                    self.workers_mb[pid] = max(self.workers_mb.get(pid, 0.0), _status_kb(pid, "VmHWM") / 1024)
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def measured(command: list[str], *, code: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``command`` with ``PYTHONPATH=code``: wall s, CPU s, driver and largest worker peak RSS (MB)."""
    full_env = {**os.environ, "PYTHONPATH": str(code), "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
                **(env or {})}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=code, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    poller = PeakRss(proc.pid)
    poller.start()
    output = proc.communicate()[0].decode(errors="replace")
    wall = time.perf_counter() - start
    poller.stop()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{output[-3000:]}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    workers = sorted(poller.workers_mb.values())
    return {"wall_s": wall, "cpu_s": cpu, "driver_mb": poller.driver_mb, "worker_mb": workers[-1] if workers else 0.0,
            "workers": len(workers), "output": output.strip().splitlines()[-1] if output.strip() else ""}


def baseline_checkout(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"
