"""Ray start / connect for the build runner: loopback binding (``--bind``), the workers' environment.

* ``bind_address``: the ``--bind`` / ``$DYNAMO_DEPTH_BIND`` address Ray must keep to (loopback only).
* ``worker_env``: the environment variables shipped to every Ray worker (``PYTHONPATH`` from a bare checkout).
* ``_ray_init``: start a local Ray instance on 127.0.0.1, or join a cluster, optionally quiet.
* ``ray_session``: Ray started on first use for one build (units and pack), shut down at its end.
* ``RayTasks``: tasks as Ray tasks, at most ``workers`` in flight (the interface of ``local_pool.LocalPool``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from builders.local_pool import POLL_SECONDS, Task

BIND_ENV = "DYNAMO_DEPTH_BIND"
LOOPBACK = "127.0.0.1"
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def bind_address(value: str | None = None) -> str | None:
    """The address Ray must keep to when joining a cluster: ``value`` or ``$DYNAMO_DEPTH_BIND``, else ``None``.

    Only loopback is accepted (``127.0.0.1`` or ``localhost``): for any other node address Ray listens on
    every interface, so an "interface" setting would promise what Ray does not do.
    """
    value = os.environ.get(BIND_ENV, "") if value is None else value
    if not value.strip():
        return None
    if value.strip() not in (LOOPBACK, "localhost"):
        raise ValueError(f"--bind / {BIND_ENV}: only {LOOPBACK} (loopback) is supported, got {value!r}")
    return LOOPBACK


@contextlib.contextmanager
def _ray_keeps_loopback() -> Iterator[None]:
    """Stop Ray 2.60 from replacing a loopback node / GCS address with the machine's routable one.

    ``ray.init`` and ``ray start`` pass every ``127.0.0.1`` / ``localhost`` through
    ``services.resolve_ip_for_localhost``, which returns the routable address (and then the GCS, raylet and
    workers listen on every interface) unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` -- the single-machine
    mode Ray uses on macOS and Windows, where every process listens on the node address 127.0.0.1. The
    variable is read once at import, so the module constant is set too (and both are restored after the
    processes are started: they are spawned with the variable).
    """
    import ray._private.ray_constants as ray_constants

    saved_env, saved_flag = os.environ.get(_RAY_CLUSTER_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_RAY_CLUSTER_ENV, None)
        else:
            os.environ[_RAY_CLUSTER_ENV] = saved_env


def _checkout_root() -> str | None:
    """The source checkout this code runs from, or ``None`` when it runs from an installed distribution.

    Installed (``pip install .``, or ``pip install -e .`` of this very checkout): the Ray workers import the
    package from their own node's installation and nothing is shipped. From a bare checkout (``PYTHONPATH=.``)
    the driver ships ``PYTHONPATH=<checkout>`` to the workers, which then need the same checkout at the same
    path on every node.
    """
    from importlib import metadata

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        dist = metadata.distribution("dynamo-depth")
    except metadata.PackageNotFoundError:
        return root
    here = os.path.realpath(os.path.abspath(__file__))
    if os.path.realpath(str(dist.locate_file("builders/ray_setup.py"))) == here:
        return None  # a regular installation: this file is one of its files
    direct_url = dist.read_text("direct_url.json") or "{}"
    try:
        info = json.loads(direct_url)
    except ValueError:
        info = {}
    if info.get("dir_info", {}).get("editable") and info.get("url", "").startswith("file://"):
        from urllib.parse import unquote, urlparse

        if os.path.realpath(unquote(urlparse(info["url"]).path)) == os.path.realpath(root):
            return None  # an editable installation of this checkout
    return root


def worker_env() -> dict[str, str]:
    """The environment variables the driver ships to every Ray worker (``runtime_env.env_vars``)."""
    env = {"RAY_AUTH_MODE": "disabled"}
    root = _checkout_root()
    if root is not None:
        paths = [root, *(os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _ray_init(*, workers: int, address: str | None, quiet: bool) -> None:
    """Start a local Ray instance on 127.0.0.1 (``address`` None) or join ``address``.

    A local instance always keeps every socket on 127.0.0.1 (nothing else needs to reach it). Joining a
    cluster keeps to loopback only with ``$DYNAMO_DEPTH_BIND=127.0.0.1`` (``--bind``): a single-machine
    cluster started with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head --node-ip-address 127.0.0.1``.
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    init: dict[str, Any] = {"runtime_env": {"env_vars": worker_env()}, "include_dashboard": False,
                            "log_to_driver": False}
    if quiet:
        init["logging_level"] = logging.WARNING  # no "Started a local Ray instance." / "Connected to..."
    bind = bind_address()
    if address and bind is None:
        ray.init(address=address, **init)
        return
    with _ray_keeps_loopback():
        if address:
            ray.init(address=address, _node_ip_address=LOOPBACK, **init)
        else:
            ray.init(num_cpus=workers, object_store_memory=100_000_000, _node_ip_address=LOOPBACK, **init)


class RayTasks:
    """Tasks as Ray tasks (one CPU each, no retries), at most ``workers`` in flight; Ray must be up.

    ``reporter`` is the picklable ``report(frames)`` a task calls for progress (a Ray queue actor,
    created on first use); ``run`` has the contract of ``LocalPool.run``. A task's error comes back as
    Ray raised it (``RayTaskError``: the task's exception is its ``cause``; a dead worker: a Ray error).
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._queue: Any = None
        self._remote: dict[Callable[..., Any], Any] = {}

    @property
    def reporter(self) -> Callable[[int], Any]:
        if self._queue is None:
            from ray.util.queue import Queue

            self._queue = Queue(actor_options={"num_cpus": 0})
        return self._queue.put_nowait

    def _drain(self) -> int:
        if self._queue is None or not self._queue.qsize():
            return 0
        return sum(self._queue.get_nowait_batch(self._queue.qsize()))

    def run(self, tasks: Iterable[Task], *, on_progress: Callable[[int], Any] | None = None,
            ) -> Iterator[tuple[Task, Any, BaseException | None]]:
        import ray

        source, pending, exhausted = iter(tasks), {}, False
        while True:
            while len(pending) < self.workers and not exhausted:
                task = next(source, None)
                if task is None:
                    exhausted = True
                    break
                if task.fn not in self._remote:
                    self._remote[task.fn] = ray.remote(num_cpus=1, max_retries=0)(task.fn)
                pending[self._remote[task.fn].remote(*task.args)] = task
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            if on_progress is not None and (frames := self._drain()):
                on_progress(frames)
            for ref in done:
                task = pending.pop(ref)
                try:
                    yield task, ray.get(ref), None
                except Exception as exc:  # noqa: BLE001 - a failed task is the caller's to report
                    yield task, None, exc


@contextlib.contextmanager
def ray_session(*, workers: int, address: str | None, quiet: bool) -> Iterator[Callable[[], RayTasks]]:
    """Yield ``ensure()``, which starts (or joins) Ray the first time it is called; shut down on exit.

    ``ensure()`` returns the session's ``RayTasks``. Only a Ray started here is shut down (a caller's own
    ``ray.init`` is left alone), and Ray is never started when nothing calls ``ensure`` (``--workers 0``,
    or nothing to build or pack in parallel).
    """
    started: list[bool] = []
    tasks = RayTasks(workers)

    def ensure() -> RayTasks:
        import ray

        if not ray.is_initialized():
            _ray_init(workers=workers, address=address, quiet=quiet)
            started.append(True)
        return tasks

    try:
        yield ensure
    finally:
        if started:
            import ray

            ray.shutdown()
