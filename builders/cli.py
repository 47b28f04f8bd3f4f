"""The command line shared by every dataset builder: ``python -m builders.<name> RAW OUT [options]``.

Exit codes: 0 when every unit built, 1 when some unit failed (the others are in the manifest),
2 on bad input (a missing folder, a bad option, an unreachable output).
"""

from __future__ import annotations

import argparse
import os
import sys

from builders.runner import (
    BIND_ENV,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_COUNT,
    EXECUTORS,
    BuilderSpec,
    BuildReport,
    bind_address,
    build,
)


def make_parser(spec: BuilderSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m builders.{spec.name}",
        description=f"Build {spec.dataset} triplet shards (schema v{spec.schema_version}) + manifest.json from the raw data.",
    )
    parser.add_argument("raw_root", metavar="RAW", help="root of the raw dataset (local path)")
    parser.add_argument("out_url", metavar="OUT", help="output folder or s3://bucket/prefix (one per split)")
    parser.add_argument("--split", default=spec.default_split, help=f"split name (default {spec.default_split})")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)),
                        help="concurrent tasks (default: CPU count; 0 = in-process)")
    parser.add_argument("--executor", default="auto", choices=EXECUTORS,
                        help="where the tasks run: 'processes' (a pool of local processes, no Ray start-up), "
                             "'ray' (Ray tasks: a local instance, or the cluster of --address); default auto: "
                             "ray with --address, else processes")
    parser.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. 'auto'); implies "
                                                       "--executor ray")
    parser.add_argument("--bind", default=None, metavar="127.0.0.1",
                        help=f"keep every Ray socket on loopback when joining --address (a cluster started on "
                             f"127.0.0.1, see README 'Scaling out'); default ${BIND_ENV}. A local instance "
                             f"(no --address) always listens on 127.0.0.1 only")
    parser.add_argument("--shard-max-count", type=int, default=DEFAULT_MAX_COUNT, help="samples per shard at most")
    parser.add_argument("--shard-max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="bytes per shard at most")
    parser.add_argument("--keep-staging", action="store_true", help="keep the per-unit staging tars")
    parser.add_argument("--quiet", action="store_true",
                        help="print only errors and the final summary line (no progress, no Ray banner)")
    spec.add_arguments(parser)
    return parser


def cli_main(spec: BuilderSpec, argv: list[str] | None = None) -> int:
    parser = make_parser(spec)
    args = parser.parse_args(argv)
    saved_bind = os.environ.get(BIND_ENV)
    try:
        if args.bind is not None:
            os.environ[BIND_ENV] = bind_address(args.bind) or ""
        bind_address()  # a bad $DYNAMO_DEPTH_BIND is a usage error (exit 2) before anything starts
        report = build(spec, args.raw_root, args.out_url, split=args.split, options=spec.options_from_args(args),
                       workers=args.workers, address=args.address, executor=args.executor, max_count=args.shard_max_count,
                       max_bytes=args.shard_max_bytes, keep_staging=args.keep_staging, show_progress=not args.quiet)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. botocore errors: name the output and the reason
        print(f"error: {args.out_url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        if saved_bind is None:
            os.environ.pop(BIND_ENV, None)
        else:
            os.environ[BIND_ENV] = saved_bind
    print(format_report(report, quiet=args.quiet))
    return 0 if report.ok else 1


def format_report(report: BuildReport, *, quiet: bool = False) -> str:
    """Per-unit lines, then one summary line; ``quiet``: only the FAILED lines and the summary line."""
    m = report.manifest
    lines = []
    for unit in () if quiet else m.units:
        lines.append(f"  ok      {unit.name}: {unit.samples} samples, {unit.skipped} frames skipped")
        lines += [f"            {note}" for note in unit.notes[:5]]
        if len(unit.notes) > 5:
            lines.append(f"            ... {len(unit.notes) - 5} more")
    for f in m.failed:
        lines.append(f"  FAILED  {f.unit}: {f.error}")
    lines.append(f"{m.dataset}/{m.split}: {len(m.units)} units ok, {len(m.failed)} failed, "
                 f"{m.num_samples} samples in {len(m.shards)} shards "
                 f"({len(report.built)} built now, {len(report.reused)} reused)"
                 + ("; already complete: nothing to do" if report.up_to_date else ""))
    return "\n".join(lines)
