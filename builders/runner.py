"""The build runner shared by every dataset builder: one Ray task per unit, staging, packing, manifest.

A *unit* is one sequence (Waymo segment, nuScenes scene, KITTI drive+camera). A build runs in two
steps, which is what makes it resumable and byte-reproducible whatever the number of workers:

1. **Units** (parallel, Ray): each unit's samples go into its own staging tar
   ``OUT/_staging/<unit>-000000.tar``, then a sidecar ``OUT/_staging/<unit>.json`` is written
   atomically. The sidecar is the unit's commit point: a rerun skips every unit that has one (for the
   same builder version and options) and redoes only the others.
2. **Pack** (driver, sequential): the staged units are streamed in sorted unit order into the final
   shards ``{dataset}-{split}-{index:06d}.tar`` (rolled over by count and bytes). Each committed shard
   is appended to ``_staging/pack.json``, so a killed pack continues where it stopped. Then
   ``manifest.json`` is written (the build's commit point) and the staging area is removed (kept
   when some unit failed, so that a rerun can repack without rebuilding the good units).

A unit that raises is reported with its error text (which names the file and the reason), the
others go on, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dynamo_depth import storage
from dynamo_depth.manifest import FailedUnit, Manifest, UnitRecord, find_manifest, load_manifest, save_manifest
from dynamo_depth.schema import TripletSample, encode, is_edge_meta_json
from dynamo_depth.shards import ShardRecord, ShardWriter, iter_shard

STAGING = "_staging"
PACK_STATE = "pack.json"
DEFAULT_MAX_COUNT = 2000
DEFAULT_MAX_BYTES = 256 * 2**20
FRAMES_PER_REPORT = 8


@dataclass(frozen=True)
class Unit:
    """One independent piece of a build (a Ray task). ``params`` must be JSON-able."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedFrame:
    """A frame that yields no sample (missing LiDAR, missing neighbour...), counted in the report."""

    frame: int
    reason: str


@dataclass(frozen=True)
class BuilderSpec:
    """What a dataset builder provides to the runner.

    Attributes:
        name: registry name (``kitti``...); dataset: ``SampleMeta.dataset``; version: bumped on any
            change of the bytes a builder writes.
        list_units: ``(raw_root, options) -> list[Unit]`` in any order (the runner sorts by name).
        build_unit: ``(raw_root, unit, options) -> iterator of TripletSample | SkippedFrame``, in a
            deterministic order. Raise ``ValueError`` naming the file and reason on bad input.
        add_arguments: adds the builder's own CLI options; options_from_args turns them into a
            JSON-able dict (everything that changes the output bytes).
    """

    name: str
    dataset: str
    version: str
    list_units: Callable[[str, Mapping[str, Any]], list[Unit]]
    build_unit: Callable[[str, Unit, Mapping[str, Any]], Iterable[TripletSample | SkippedFrame]]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    options_from_args: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    default_split: str = "train"


@dataclass(frozen=True)
class UnitOutcome:
    """What a unit task returns to the driver (small: the samples stay in the staging tar)."""

    name: str
    record: UnitRecord | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class BuildReport:
    manifest: Manifest
    built: tuple[str, ...]
    reused: tuple[str, ...]
    up_to_date: bool = False

    @property
    def ok(self) -> bool:
        return not self.manifest.failed


def staging_name(unit_name: str) -> str:
    """File-name-safe form of a unit name (``drive/image_02`` -> ``drive-image_02``)."""
    return re.sub(r"[^A-Za-z0-9_\-]", "-", unit_name)


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
            writer.write(item.key, encode(item))
            samples += 1
        writer.close()
        if on_frames is not None and samples + skipped > reported:
            on_frames(samples + skipped - reported)
    except Exception as exc:  # noqa: BLE001 - a bad unit is reported, the build goes on
        writer.abort()
        return UnitOutcome(name=unit.name, error=_error_text(exc), seconds=time.perf_counter() - start)
    record = UnitRecord(name=unit.name, samples=samples, skipped=skipped, notes=tuple(notes))
    sidecar = {"digest": options_digest(spec, options), "unit": record.to_json()}
    storage.write_bytes_atomic(storage.join(staging, base + ".json"), json.dumps(sidecar, sort_keys=True).encode())
    return UnitOutcome(name=unit.name, record=record, seconds=time.perf_counter() - start)


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {text}"


def _staged_record(spec: BuilderSpec, unit: Unit, options: Mapping[str, Any], out_url: str) -> UnitRecord | None:
    """The unit's record if it is already staged for this builder version and options."""
    path = storage.join(storage.join(out_url, STAGING), staging_name(unit.name) + ".json")
    if not storage.exists(path):
        return None
    try:
        sidecar = json.loads(storage.read_bytes(path))
        if sidecar["digest"] != options_digest(spec, options):
            return None
        return UnitRecord.from_json(sidecar["unit"])
    except (ValueError, KeyError):
        return None


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
    if os.path.realpath(str(dist.locate_file("builders/runner.py"))) == here:
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


def _run_units_ray(spec: BuilderSpec, raw_root: str, units: list[Unit], options: Mapping[str, Any],
                   out_url: str, *, workers: int, address: str | None,
                   on_frames: Callable[[int], Any], quiet: bool = False) -> Iterator[UnitOutcome]:
    import ray
    from ray.util.queue import Queue

    from builders.registry import get_builder  # noqa: F401 - the task resolves the spec by name

    started_here = not ray.is_initialized()
    if started_here:
        _ray_init(workers=workers, address=address, quiet=quiet)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_remote_unit)
        frames = Queue(actor_options={"num_cpus": 0})
        pending = {}
        queue = list(units)
        while queue or pending:
            while queue and len(pending) < workers:
                unit = queue.pop(0)
                pending[task.remote(spec.name, raw_root, unit, dict(options), out_url, frames)] = unit
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            if frames.qsize():
                on_frames(sum(frames.get_nowait_batch(frames.qsize())))
            for ref in done:
                unit = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a crashed worker fails its unit only
                    yield UnitOutcome(name=unit.name, error=f"worker failed: {_error_text(exc)}")
    finally:
        if started_here:
            ray.shutdown()


def _remote_unit(builder: str, raw_root: str, unit: Unit, options: dict[str, Any], out_url: str,
                 frames: Any) -> UnitOutcome:
    import cv2

    from builders.registry import get_builder

    # One task per CPU (num_cpus=1): OpenCV's pthreads pool ignores OMP_NUM_THREADS and would start one
    # thread per core in every worker.
    cv2.setNumThreads(1)
    return run_unit(get_builder(builder), raw_root, unit, options, out_url, on_frames=frames.put_nowait)


# ------------------------------------------------------------------------------------------------ pack
def _pack(spec: BuilderSpec, records: list[UnitRecord], out_url: str, *, split: str, digest: str,
          max_count: int, max_bytes: int) -> list[ShardRecord]:
    """Stream staged units, in order, into the final shards; resumable through ``pack.json``."""
    staging = storage.join(out_url, STAGING)
    state_url = storage.join(staging, PACK_STATE)
    plan = {"digest": digest, "units": [r.name for r in records], "max_count": max_count, "max_bytes": max_bytes}
    done = _load_pack_state(state_url, plan, out_url)
    skip = sum(r.count for r in done)

    def commit(record: ShardRecord) -> None:
        done.append(record)
        state = {"plan": plan, "shards": [r.to_json() for r in done]}
        storage.write_bytes_atomic(state_url, json.dumps(state, sort_keys=True).encode())

    prefix = f"{spec.dataset}-{split}"
    with ShardWriter(out_url, prefix=prefix, start_index=len(done), max_count=max_count,
                     max_bytes=max_bytes, on_shard=commit) as writer:
        for record in records:
            if skip >= record.samples:
                skip -= record.samples
                continue
            if record.samples == 0:
                continue
            part = storage.join(staging, f"{staging_name(record.name)}-000000.tar")
            for key, members in iter_shard(part):
                if skip:
                    skip -= 1
                    continue
                writer.write(key, members, edge=is_edge_meta_json(members.get("meta.json", b"{}"), key=key))
    return list(done)


def _load_pack_state(state_url: str, plan: Mapping[str, Any], out_url: str) -> list[ShardRecord]:
    if not storage.exists(state_url):
        return []
    try:
        state = json.loads(storage.read_bytes(state_url))
        if state["plan"] != plan:
            return []
        records = [ShardRecord.from_json(s) for s in state["shards"]]
    except (ValueError, KeyError):
        return []
    if any(span.sha256 is None for r in records for span in r.samples):
        return []  # packed before per-sample digests (manifest version 1): repack, never mix versions
    for r in records:  # every committed shard must still be there, whole
        url = storage.join(out_url, r.name)
        if not storage.exists(url) or storage.size(url) != r.bytes:
            return []
    return records


def _remove_staging(out_url: str) -> None:
    staging = storage.join(out_url, STAGING)
    for name in storage.listdir(staging):
        storage.remove(storage.join(staging, name))
    if storage.is_local(staging) and os.path.isdir(staging):
        os.rmdir(staging)


# ----------------------------------------------------------------------------------------------- build
def _layout_matches(shards: tuple[ShardRecord, ...], max_count: int, max_bytes: int) -> bool:
    """Whether packing with ``max_count`` / ``max_bytes`` gives exactly this shard layout.

    The pack is greedy: a shard is closed when the next sample would pass either limit.
    """
    end_of_archive = 1024
    for shard, following in zip(shards, (*shards[1:], None), strict=True):
        if shard.count > max_count or (shard.count > 1 and shard.bytes > max_bytes):
            return False
        if following is not None and shard.count < max_count and \
                shard.bytes + following.samples[0].length <= max_bytes:
            return False  # the next sample would have fitted here
    return all(s.bytes - sum(x.length for x in s.samples) == end_of_archive for s in shards)


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


def build(spec: BuilderSpec, raw_root: str, out_url: str, *, split: str, options: Mapping[str, Any],
          workers: int = 1, address: str | None = None, max_count: int = DEFAULT_MAX_COUNT,
          max_bytes: int = DEFAULT_MAX_BYTES, keep_staging: bool = False, show_progress: bool = True) -> BuildReport:
    """Build (or resume) ``raw_root`` into shards + ``manifest.json`` under ``out_url``.

    ``workers`` bounds the number of concurrent Ray tasks (``0`` runs in-process, without Ray).
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = in-process without Ray), got {workers}")
    units = sorted(spec.list_units(raw_root, options), key=lambda u: u.name)
    if len({staging_name(u.name) for u in units}) != len(units):
        raise ValueError(f"builder {spec.name}: unit names in {raw_root} collide once made file-name safe: "
                         f"{sorted(u.name for u in units)}")
    if not units:
        raise ValueError(f"{raw_root}: no {spec.name} sequences found (check the path and the layout)")
    existing = _up_to_date(spec, out_url, options, split, units, max_count=max_count, max_bytes=max_bytes)
    if existing is not None:
        return BuildReport(manifest=existing, built=(), reused=tuple(u.name for u in units), up_to_date=True)
    digest = options_digest(spec, options)
    staged = {u.name: r for u in units if (r := _staged_record(spec, u, options, out_url)) is not None}
    todo = [u for u in units if u.name not in staged]
    outcomes = _run_units(spec, raw_root, todo, options, out_url, workers=workers, address=address,
                          show_progress=show_progress)
    failed = [FailedUnit(unit=o.name, error=o.error) for o in outcomes if o.error is not None]
    staged.update({o.name: o.record for o in outcomes if o.record is not None})
    records = [staged[u.name] for u in units if u.name in staged]
    failed = sorted(failed, key=lambda f: f.unit)
    if not records and storage.exists(find_manifest(out_url)):
        previous = load_manifest(out_url)  # nothing new to pack: leave the earlier build untouched
        return BuildReport(manifest=replace(previous, failed=tuple(failed)), built=(), reused=())
    if storage.exists(find_manifest(out_url)):
        storage.remove(find_manifest(out_url))  # the shards are about to change: no stale commit point
    shards = _pack(spec, records, out_url, split=split, digest=digest, max_count=max_count, max_bytes=max_bytes)
    manifest = Manifest(dataset=spec.dataset, split=split, builder=f"builders.{spec.name}",
                        builder_version=spec.version, options=dict(options), shards=tuple(shards),
                        units=tuple(records), failed=tuple(failed))
    _remove_stale_shards(out_url, spec.dataset, split, {s.name for s in shards})
    save_manifest(manifest, out_url)
    if not failed and not keep_staging:
        _remove_staging(out_url)
    return BuildReport(manifest=manifest, built=tuple(o.name for o in outcomes if o.record is not None),
                       reused=tuple(sorted(set(staged) - {o.name for o in outcomes})))


def _remove_stale_shards(out_url: str, dataset: str, split: str, keep: set[str]) -> None:
    """Remove final shards of an earlier, larger build of this dataset/split (never other files)."""
    pattern = re.compile(rf"^{re.escape(dataset)}-{re.escape(split)}-\d{{6}}\.tar$")
    for name in storage.listdir(out_url):
        if pattern.match(name) and name not in keep:
            storage.remove(storage.join(out_url, name))


def _run_units(spec: BuilderSpec, raw_root: str, units: list[Unit], options: Mapping[str, Any], out_url: str,
               *, workers: int, address: str | None, show_progress: bool) -> list[UnitOutcome]:
    from tqdm import tqdm

    if not units:
        return []
    outcomes: list[UnitOutcome] = []
    bar = tqdm(total=len(units), unit="seq", desc=f"build {spec.name}", disable=not show_progress,
               file=sys.stderr, dynamic_ncols=True, position=0)
    frame_bar = tqdm(unit="frame", desc="frames", disable=not show_progress, file=sys.stderr, dynamic_ncols=True,
                     position=1)
    samples = 0
    if workers == 0:
        stream: Iterable[UnitOutcome] = (run_unit(spec, raw_root, u, options, out_url, on_frames=frame_bar.update)
                                         for u in units)
    else:
        stream = _run_units_ray(spec, raw_root, units, options, out_url, workers=workers, address=address,
                                on_frames=frame_bar.update, quiet=not show_progress)
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
