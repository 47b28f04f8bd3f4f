"""The build runner shared by every dataset builder: one task per unit, staging, packing, manifest.

A *unit* is one sequence (Waymo segment, nuScenes scene, KITTI drive+camera). A build runs in two
steps, which is what makes it resumable and byte-reproducible whatever the number of workers:

1. **Units** (parallel: a local process pool, or Ray tasks on a cluster): each unit's samples go into its own staging tar
   ``OUT/_staging/<unit>-000000.tar``, then a sidecar ``OUT/_staging/<unit>.json`` is written
   atomically (its record and the byte span, sha256 and edge flag of each staged sample). The sidecar
   is the unit's commit point: a rerun skips every unit that has one (for the same builder version and
   options) and redoes only the others. A builder's ``prepare_unit`` runs in the driver right before
   a unit's task is submitted (nuScenes: the scene's own table records go with the task).
2. **Pack** (parallel, the same executor): the final shards ``{dataset}-{split}-{index:06d}.tar`` (rolled over by
   count and bytes, samples in sorted unit order) are planned in the driver from the sidecars alone,
   then each shard is written by its own task from byte ranges of the staging tars
   (``builders.packing``): the bytes are those of streaming every sample through one writer, and no
   sample passes through the driver. Each committed shard is recorded in ``_staging/pack.json``, so
   a killed pack continues where it stopped. Then the sidecar index ``manifest.index`` (the loader's
   start-up without parsing the manifest; deterministic, naming the manifest's sha256) and last
   ``manifest.json`` (the build's commit point) are written, and the staging area is removed (kept
   when some unit failed, so that a rerun can repack without rebuilding the good units).
   ``--workers 0`` does both steps in-process.

A unit that raises is reported with its error text (which names the file and the reason), the
others go on, and the exit code is 1.

One machine runs the tasks in a pool of spawned processes (``builders.local_pool``, no Ray start-up);
``--address`` (or ``--executor ray``) runs them as Ray tasks. Ray start / connect (loopback binding, the
workers' environment) and its task loop are in ``builders.ray_setup``, the pack
step and the staging area in ``builders.packing``; their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from builders.local_pool import LocalPool, Task, pool_session
from builders.packing import PACK_STATE as PACK_STATE  # re-exported
from builders.packing import (
    STAGING,
    PackRunner,
    PlannedShard,
    StagedUnit,
    _layout_matches,
    _pack,
    _remove_staging,
    _remove_stale_shards,
    pack_shard,
    staging_name,
)
from builders.ray_setup import BIND_ENV, LOOPBACK, RayTasks, _ray_init, bind_address, ray_session, worker_env  # noqa: F401
from builders.registry import get_builder
from builders.spec import BuilderSpec, SkippedFrame, Unit
from dynamo_depth.shards import storage
from dynamo_depth.shards.index_store import save_indexed_manifest
from dynamo_depth.shards.manifest import FailedUnit, Manifest, UnitRecord, find_manifest, load_manifest
from dynamo_depth.shards.records import SampleSpan, ShardRecord
from dynamo_depth.shards.schema import encode, is_edge_meta_json
from dynamo_depth.shards.writer import ShardWriter

EXECUTORS = ("auto", "processes", "ray")
Executor = LocalPool | RayTasks
DEFAULT_MAX_COUNT = 2000
DEFAULT_MAX_BYTES = 256 * 2**20
FRAMES_PER_REPORT = 8


@dataclass(frozen=True)
class UnitOutcome:
    """What a unit task returns to the driver (small: the samples stay in the staging tar)."""

    name: str
    record: UnitRecord | None = None
    error: str | None = None
    seconds: float = 0.0
    spans: tuple[SampleSpan, ...] = ()


@dataclass(frozen=True)
class BuildReport:
    manifest: Manifest
    built: tuple[str, ...]
    reused: tuple[str, ...]
    up_to_date: bool = False

    @property
    def ok(self) -> bool:
        return not self.manifest.failed


def options_digest(spec: BuilderSpec, options: Mapping[str, Any]) -> str:
    text = json.dumps({"builder": spec.name, "version": spec.version, "options": options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- units
def run_unit(spec: BuilderSpec, raw_root: str, unit: Unit, options: Mapping[str, Any], out_url: str,
             *, on_frames: Callable[[int], Any] | None = None) -> UnitOutcome:
    """Build one unit into its staging tar and commit it with its sidecar; never raises.

    ``on_frames(n)`` is told about frames done (samples written + frames skipped), a few at a time.
    """
    start = time.perf_counter()
    staging = storage.join(out_url, STAGING)
    base = staging_name(unit.name)
    samples, skipped, notes = 0, 0, []
    writer = ShardWriter(staging, prefix=base, max_count=10**9, max_bytes=2**62)
    reported = 0
    try:
        for item in spec.build_unit(raw_root, unit, options):
            if on_frames is not None and samples + skipped - reported >= FRAMES_PER_REPORT:
                on_frames(samples + skipped - reported)
                reported = samples + skipped
            if isinstance(item, SkippedFrame):
                skipped += 1
                notes.append(f"frame {item.frame}: {item.reason}")
                continue
            members = encode(item)
            writer.write(item.key, members, edge=is_edge_meta_json(members.get("meta.json", b"{}"), key=item.key))
            samples += 1
        spans = tuple(span for shard in writer.close() for span in shard.samples)
        if on_frames is not None and samples + skipped > reported:
            on_frames(samples + skipped - reported)
    except Exception as exc:  # noqa: BLE001 - a bad unit is reported, the build goes on
        writer.abort()
        return UnitOutcome(name=unit.name, error=_error_text(exc), seconds=time.perf_counter() - start)
    record = UnitRecord(name=unit.name, samples=samples, skipped=skipped, notes=tuple(notes))
    sidecar = {"digest": options_digest(spec, options), "unit": record.to_json(),
               "spans": [span.to_json() for span in spans]}
    storage.write_bytes_atomic(storage.join(staging, base + ".json"), json.dumps(sidecar, sort_keys=True).encode())
    return UnitOutcome(name=unit.name, record=record, seconds=time.perf_counter() - start, spans=spans)


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {text}"


def _staged_unit(spec: BuilderSpec, unit: Unit, options: Mapping[str, Any], out_url: str) -> StagedUnit | None:
    """The unit's record and sample spans if it is already staged for this builder version and options.

    A sidecar without spans (staged before the parallel pack) is not reused: the unit is rebuilt.
    """
    path = storage.join(storage.join(out_url, STAGING), staging_name(unit.name) + ".json")
    if not storage.exists(path):
        return None
    try:
        sidecar = json.loads(storage.read_bytes(path))
        if sidecar["digest"] != options_digest(spec, options):
            return None
        record = UnitRecord.from_json(sidecar["unit"])
        spans = tuple(SampleSpan.from_json(s) for s in sidecar["spans"])
    except (ValueError, KeyError, TypeError):
        return None
    return StagedUnit(record=record, spans=spans) if len(spans) == record.samples else None


def _run_units_parallel(spec: BuilderSpec, raw_root: str, units: list[Unit], options: Mapping[str, Any],
                        out_url: str, *, executor: Executor, on_frames: Callable[[int], Any]) -> Iterator[UnitOutcome]:
    """The units as tasks of ``executor`` (a process pool or Ray), at most its ``workers`` at a time.

    ``prepare_unit`` runs in the driver right before a unit is handed to a free worker.
    """
    unprepared: list[UnitOutcome] = []

    def tasks() -> Iterator[Task]:
        for unit in units:
            ready = _prepared(spec, raw_root, unit, options)
            if isinstance(ready, UnitOutcome):
                unprepared.append(ready)
                continue
            yield Task(key=ready.name, fn=_remote_unit,
                       args=(spec.name, raw_root, ready, dict(options), out_url, executor.reporter))

    for task, outcome, error in executor.run(tasks(), on_progress=on_frames):
        yield from _take_all(unprepared)
        if error is None:
            yield outcome
        else:  # a crashed worker fails its unit only
            yield UnitOutcome(name=str(task.key), error=f"worker failed: {_error_text(error)}")
    yield from _take_all(unprepared)


def _take_all(items: list[UnitOutcome]) -> Iterator[UnitOutcome]:
    while items:
        yield items.pop(0)


def _pack_runner(out_url: str, *, ensure: Callable[[], Executor]) -> PackRunner:
    """Pack shards as tasks of the executor ``ensure()`` starts; each task reads and writes storage itself.

    Every shard that completes is yielded (and so recorded in ``pack.json``) even when another failed;
    then the failures are raised as one ``ValueError`` naming their shards.
    """
    def run(shards: Sequence[PlannedShard]) -> Iterator[ShardRecord]:
        if len(shards) < 2:  # nothing to overlap: no executor start-up for it
            yield from (pack_shard(shard, out_url) for shard in shards)
            return
        errors = []
        tasks = (Task(key=shard.name, fn=pack_shard, args=(shard, out_url)) for shard in shards)
        for task, record, error in ensure().run(tasks):
            if error is None:
                yield record
            else:  # the others are kept; reported below
                errors.append(f"pack {task.key}: {_error_text(getattr(error, 'cause', None) or error)}")
        if errors:
            raise ValueError("; ".join(errors))

    return run


def _prepared(spec: BuilderSpec, raw_root: str, unit: Unit, options: Mapping[str, Any]) -> Unit | UnitOutcome:
    """``spec.prepare_unit`` in the driver; a unit it cannot prepare fails alone (its error as outcome)."""
    try:
        return spec.prepare_unit(raw_root, unit, options)
    except Exception as exc:  # noqa: BLE001 - a bad unit is reported, the build goes on
        return UnitOutcome(name=unit.name, error=_error_text(exc))


def _run_units_here(spec: BuilderSpec, raw_root: str, units: list[Unit], options: Mapping[str, Any],
                    out_url: str, *, on_frames: Callable[[int], Any]) -> Iterator[UnitOutcome]:
    """The units one after the other in this process (``workers=0``)."""
    for unit in units:
        ready = _prepared(spec, raw_root, unit, options)
        yield ready if isinstance(ready, UnitOutcome) else run_unit(spec, raw_root, ready, options, out_url,
                                                                    on_frames=on_frames)


def _remote_unit(builder: str, raw_root: str, unit: Unit, options: dict[str, Any], out_url: str,
                 report: Callable[[int], Any]) -> UnitOutcome:
    """A unit task in a worker (pool process or Ray); ``report(frames)`` tells the driver of progress."""
    import cv2


    # One task per CPU: OpenCV's pthreads pool ignores OMP_NUM_THREADS and would start one thread per core
    # in every worker.
    cv2.setNumThreads(1)
    return run_unit(get_builder(builder), raw_root, unit, options, out_url, on_frames=report)


# ----------------------------------------------------------------------------------------------- build
def _up_to_date(spec: BuilderSpec, out_url: str, options: Mapping[str, Any], split: str,
                units: list[Unit], *, max_count: int, max_bytes: int) -> Manifest | None:
    """The existing manifest when the build at ``out_url`` is complete for these units and options."""
    try:
        manifest = load_manifest(out_url)
    except (FileNotFoundError, ValueError):
        return None
    same = (manifest.builder == f"builders.{spec.name}" and manifest.builder_version == spec.version
            and dict(manifest.options) == dict(options) and manifest.split == split and not manifest.failed
            and [u.name for u in manifest.units] == [u.name for u in units])
    if not same or not _layout_matches(manifest.shards, max_count, max_bytes):
        return None
    for shard in manifest.shards:
        url = storage.join(out_url, shard.name)
        if not storage.exists(url) or storage.size(url) != shard.bytes:
            return None
    return manifest


def choose_executor(executor: str, address: str | None) -> str:
    """``processes`` or ``ray`` for ``--executor`` (``auto``: Ray when joining ``address``, else processes)."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor {executor!r}; allowed: {list(EXECUTORS)}")
    if executor == "processes" and address:
        raise ValueError(f"--address {address} joins a Ray cluster: it needs --executor ray (or auto)")
    return executor if executor != "auto" else ("ray" if address else "processes")


@contextlib.contextmanager
def _executor_session(executor: str, *, workers: int, address: str | None,
                      quiet: bool) -> Iterator[Callable[[], Executor]]:
    """``ensure()`` starting the build's executor on first use (never for ``workers=0``)."""
    if executor == "ray":
        with ray_session(workers=workers, address=address, quiet=quiet) as ensure:
            yield ensure
    else:
        with pool_session(workers=max(workers, 1)) as ensure:
            yield ensure


def build(spec: BuilderSpec, raw_root: str, out_url: str, *, split: str, options: Mapping[str, Any],
          workers: int = 1, address: str | None = None, executor: str = "auto", max_count: int = DEFAULT_MAX_COUNT,
          max_bytes: int = DEFAULT_MAX_BYTES, keep_staging: bool = False, show_progress: bool = True) -> BuildReport:
    """Build (or resume) ``raw_root`` into shards + ``manifest.json`` under ``out_url``.

    ``workers`` bounds the number of concurrent tasks, for the units and then for the pack (``0`` runs
    everything in-process). ``executor`` (``choose_executor``): ``processes`` runs them in a local pool
    of spawned processes, ``ray`` as Ray tasks (a local instance, or the cluster at ``address``); the
    bytes are the same with either, and with ``workers=0``.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = in-process), got {workers}")
    executor = choose_executor(executor, address)
    units = sorted(spec.list_units(raw_root, options), key=lambda u: u.name)
    if len({staging_name(u.name) for u in units}) != len(units):
        raise ValueError(f"builder {spec.name}: unit names in {raw_root} collide once made file-name safe: "
                         f"{sorted(u.name for u in units)}")
    if not units:
        raise ValueError(f"{raw_root}: no {spec.name} sequences found (check the path and the layout)")
    existing = _up_to_date(spec, out_url, options, split, units, max_count=max_count, max_bytes=max_bytes)
    if existing is not None:
        return BuildReport(manifest=existing, built=(), reused=tuple(u.name for u in units), up_to_date=True)
    with _executor_session(executor, workers=workers, address=address, quiet=not show_progress) as ensure:
        staged = {u.name: r for u in units if (r := _staged_unit(spec, u, options, out_url)) is not None}
        todo = [u for u in units if u.name not in staged]
        outcomes = _run_units(spec, raw_root, todo, options, out_url, executor=ensure if workers else None,
                              show_progress=show_progress)
        staged.update({o.name: StagedUnit(record=o.record, spans=o.spans) for o in outcomes if o.record is not None})
        failed = tuple(sorted((FailedUnit(unit=o.name, error=o.error) for o in outcomes if o.error is not None),
                              key=lambda f: f.unit))
        ready = [staged[u.name] for u in units if u.name in staged]
        if not ready and storage.exists(find_manifest(out_url)):
            previous = load_manifest(out_url)  # nothing new to pack: leave the earlier build untouched
            return BuildReport(manifest=replace(previous, failed=failed), built=(), reused=())
        if storage.exists(find_manifest(out_url)):
            storage.remove(find_manifest(out_url))  # the shards are about to change: no stale commit point
        runner = _pack_runner(out_url, ensure=ensure) if workers else None
        shards = _pack_with_progress(spec, ready, out_url, split=split, max_count=max_count, max_bytes=max_bytes,
                                     digest=options_digest(spec, options), runner=runner, show_progress=show_progress)
    manifest = Manifest(dataset=spec.dataset, split=split, builder=f"builders.{spec.name}",
                        builder_version=spec.version, options=dict(options), shards=tuple(shards),
                        units=tuple(s.record for s in ready), failed=failed, schema_version=spec.schema_version)
    _remove_stale_shards(out_url, spec.dataset, split, {s.name for s in shards})

    save_indexed_manifest(manifest, out_url)  # manifest.index, then manifest.json (the commit point)
    if not failed and not keep_staging:
        _remove_staging(out_url)
    return BuildReport(manifest=manifest, built=tuple(o.name for o in outcomes if o.record is not None),
                       reused=tuple(sorted(set(staged) - {o.name for o in outcomes})))


def _pack_with_progress(spec: BuilderSpec, staged: list[StagedUnit], out_url: str, *, split: str, digest: str,
                        max_count: int, max_bytes: int, runner: PackRunner | None,
                        show_progress: bool) -> list[ShardRecord]:
    from tqdm import tqdm

    with tqdm(unit="shard", desc="pack", disable=not show_progress, file=sys.stderr, dynamic_ncols=True) as bar:
        return _pack(spec, staged, out_url, split=split, digest=digest, max_count=max_count, max_bytes=max_bytes,
                     runner=runner, on_shard=lambda record: bar.update(1))


def _run_units(spec: BuilderSpec, raw_root: str, units: list[Unit], options: Mapping[str, Any], out_url: str,
               *, executor: Callable[[], Executor] | None, show_progress: bool) -> list[UnitOutcome]:
    """Every unit's outcome, sorted by name: in-process (``executor`` None) or as tasks of ``executor()``."""
    from tqdm import tqdm

    if not units:
        return []
    outcomes: list[UnitOutcome] = []
    bar = tqdm(total=len(units), unit="seq", desc=f"build {spec.name}", disable=not show_progress,
               file=sys.stderr, dynamic_ncols=True, position=0)
    frame_bar = tqdm(unit="frame", desc="frames", disable=not show_progress, file=sys.stderr, dynamic_ncols=True,
                     position=1)
    samples = 0
    if executor is None:
        stream: Iterable[UnitOutcome] = _run_units_here(spec, raw_root, units, options, out_url,
                                                        on_frames=frame_bar.update)
    else:
        stream = _run_units_parallel(spec, raw_root, units, options, out_url, executor=executor(),
                                     on_frames=frame_bar.update)
    for outcome in stream:
        outcomes.append(outcome)
        samples += outcome.record.samples if outcome.record else 0
        bar.update(1)
        bar.set_postfix(samples=samples, failed=sum(o.error is not None for o in outcomes))
        if outcome.error is not None and show_progress:  # quiet: the final report names it (stdout)
            bar.write(f"FAILED {outcome.name}: {outcome.error}", file=sys.stderr)
    frame_bar.close()
    bar.close()
    return sorted(outcomes, key=lambda o: o.name)
