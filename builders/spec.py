"""What a dataset builder gives the runner: ``BuilderSpec`` (its units, how to build one, its options),
``Unit`` (one independent piece of a build, one worker task) and ``SkippedFrame`` (a frame without a sample).

The dataset modules (``builders.kitti`` ...) define a ``SPEC``; ``builders.registry`` finds it by name and
``builders.runner`` runs it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dynamo_depth.shards.schema import SCHEMA_VERSION, TripletSample

__all__ = ["BuilderSpec", "SkippedFrame", "Unit"]


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
        prepare_unit: ``(raw_root, unit, options) -> Unit``, run in the driver right before the unit's
            task is submitted: adds what the task needs to its params (nuScenes: the scene's own table
            records, so that workers never load the whole tables). Default: the unit as listed.
        schema_version: the sample schema version its samples carry (the manifest's ``schema_version``).
    """

    name: str
    dataset: str
    version: str
    list_units: Callable[[str, Mapping[str, Any]], list[Unit]]
    build_unit: Callable[[str, Unit, Mapping[str, Any]], Iterable[TripletSample | SkippedFrame]]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    options_from_args: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    default_split: str = "train"
    prepare_unit: Callable[[str, Unit, Mapping[str, Any]], Unit] = lambda raw_root, unit, options: unit
    schema_version: int = SCHEMA_VERSION
