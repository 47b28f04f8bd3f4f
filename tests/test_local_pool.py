"""The local process pool of the build runner (``builders.local_pool``): results, laziness, progress,
errors, and the worker-death policy (a task in flight at a break is retried once; at a second break it
fails alone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builders.local_pool import LocalPool, Task, WorkerDied, pool_session, report_frames


def _square(value: int) -> int:
    report_frames(value)
    return value * value


def _fail(message: str) -> None:
    raise ValueError(message)


def _die_once(marker: str) -> str:
    """Kills its worker process the first time (no marker file yet), succeeds on the retry."""
    if not os.path.exists(marker):
        Path(marker).write_text("died")
        os._exit(3)
    return "retried"


def _die() -> None:
    os._exit(4)


def test_results_progress_and_errors_of_every_task() -> None:
    taken: list[int] = []

    def tasks():
        for value in range(6):
            taken.append(value)
            yield Task(key=value, fn=_square, args=(value,))
        yield Task(key="bad", fn=_fail, args=("bad input: frame 7",))

    progress: list[int] = []
    pool = LocalPool(2)
    try:
        results = {}
        for task, result, error in pool.run(tasks(), on_progress=progress.append):
            assert len(taken) <= len(results) + 1 + 2  # the source is read only as workers free up
            results[task.key] = (result, error)
    finally:
        pool.close()
    assert {k: r for k, (r, e) in results.items() if k != "bad"} == {v: v * v for v in range(6)}
    assert isinstance(results["bad"][1], ValueError) and str(results["bad"][1]) == "bad input: frame 7"
    assert sum(progress) == sum(range(6))  # every report_frames reached the driver


def test_worker_death_retries_the_tasks_in_flight_once(tmp_path: Path) -> None:
    with pool_session(workers=2) as ensure:
        pool = ensure()
        assert ensure() is pool  # one pool per session
        tasks = [Task(key="once", fn=_die_once, args=(str(tmp_path / "marker"),)),
                 *(Task(key=v, fn=_square, args=(v,)) for v in range(4))]
        results = {task.key: (result, error) for task, result, error in pool.run(tasks)}
    assert results == {"once": ("retried", None), **{v: (v * v, None) for v in range(4)}}


def test_a_task_whose_worker_dies_twice_fails_and_the_pool_goes_on() -> None:
    with pool_session(workers=1) as ensure:
        tasks = [Task(key="dies", fn=_die, args=()), *(Task(key=v, fn=_square, args=(v,)) for v in range(2))]
        results = {task.key: (result, error) for task, result, error in ensure().run(tasks)}
    assert results["dies"][0] is None and isinstance(results["dies"][1], WorkerDied)
    assert "worker process died" in str(results["dies"][1])
    assert {k: results[k] for k in range(2)} == {0: (0, None), 1: (1, None)}


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        LocalPool(0)


def test_executor_choice() -> None:
    from builders.runner import choose_executor

    assert choose_executor("auto", None) == "processes" and choose_executor("auto", "auto") == "ray"
    assert choose_executor("ray", None) == "ray" and choose_executor("processes", None) == "processes"
    with pytest.raises(ValueError, match=r"executor 'threads'; allowed: \['auto', 'processes', 'ray'\]"):
        choose_executor("threads", None)
    with pytest.raises(ValueError, match="--address 10.0.0.1:6379 joins a Ray cluster: it needs --executor ray"):
        choose_executor("processes", "10.0.0.1:6379")
