"""Benchmark (#27): the KITTI builder as whole processes against the original's preprocessing, same run.

    PYTHONPATH=. .venv/bin/python bench/kitti_whole.py [--frames 408 --rounds 3]

Input: one drive of ``--frames`` frames x 2 cameras (drive 0009's real 1242x375 frames repeated through
symlinks, ``bench.scale_builders.long_kitti_drive``): 816 camera-frames by default, the size the issue
measures. Every contender is a fresh process (imports, start-up and output included), run in turn
(A B C ...) ``--rounds`` times; CPU = user + sys of the process and of every descendant it waited for
(``RUSAGE_CHILDREN``: the local pool's workers are joined by the driver, Ray's are not, so Ray's CPU is
not shown).

- ``original``: the original ``prepare_data/kitti.py`` way (``bench.kitti_builder.original_way``: PIL
  decode + resize + JPEG per frame, a numpy projection with a Python ``Counter`` loop, one ``.npy`` per
  frame), as a user runs it (numpy's OpenBLAS on every core: its threads spin while they wait, which is
  CPU time too), and with ``OPENBLAS_NUM_THREADS=1`` (its work alone, one core).
- ``ours``: ``python -m builders.kitti RAW OUT --quiet`` with ``--workers 0`` (one process),
  ``--workers 2`` (the local process pool, the default on one machine) and ``--workers 2 --executor ray``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale_builders import long_kitti_drive  # noqa: E402

ORIGINAL = ("import sys; from pathlib import Path; from bench.kitti_builder import original_way; "
            "print(original_way(Path(sys.argv[1]), Path(sys.argv[2])))")


def contenders(raw: Path, out: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    ours = [sys.executable, "-m", "builders.kitti", str(raw), str(out), "--quiet"]
    return {
        "original (as run)": ([sys.executable, "-c", ORIGINAL, str(raw), str(out)], {}),
        "original (1 BLAS thread)": ([sys.executable, "-c", ORIGINAL, str(raw), str(out)],
                                     {"OPENBLAS_NUM_THREADS": "1"}),
        "ours --workers 0": (ours + ["--workers", "0"], {}),
        "ours --workers 2 (processes)": (ours + ["--workers", "2"], {}),
        "ours --workers 2 --executor ray": (ours + ["--workers", "2", "--executor", "ray"], {}),
    }


def run_once(command: list[str], env: dict[str, str], out: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + sys, waited-for descendants included) of one fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled",
                                                    **env}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=408, help="frames of the drive (x 2 cameras)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated substrings of contender names to run")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_kitti_whole_"))
    try:
        raw = long_kitti_drive(tmp / "raw", args.frames)
        runs = {name: spec for name, spec in contenders(raw, tmp / "out").items()
                if not args.only or any(s in name for s in args.only.split(","))}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        print(f"{2 * args.frames} camera-frames; {args.rounds} rounds; load average {os.getloadavg()[0]:.1f}")
        for _ in range(args.rounds):
            for name, (command, env) in runs.items():
                times[name].append(run_once(command, env, tmp / "out"))
        base = {k: statistics.median(t[k] for t in times["original (as run)"]) if "original (as run)" in times
                else float("nan") for k in (0, 1)}
        print("| contender | wall s median (best) | CPU s median (best) | wall / original | CPU / original |")
        print("| --- | --- | --- | --- | --- |")
        for name, values in times.items():
            wall, cpu = (statistics.median(v[k] for v in values) for k in (0, 1))
            best_wall, best_cpu = (min(v[k] for v in values) for k in (0, 1))
            cpu_text = "(not counted)" if "ray" in name else f"{cpu:.2f} ({best_cpu:.2f})"
            cpu_ratio = "-" if "ray" in name else f"{cpu / base[1]:.2f}x"
            print(f"| {name} | {wall:.2f} ({best_wall:.2f}) | {cpu_text} | {wall / base[0]:.2f}x | {cpu_ratio} |")
        print(f"load average now {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
