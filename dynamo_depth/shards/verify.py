"""``python -m dynamo_depth verify SHARDS [--reference MANIFEST]``: re-hash a shard set and compare.

SHARDS is a folder (local or ``s3://...``) holding ``*.tar`` shards and ``manifest.json``, or the
URL of that manifest. Every shard listed in the expected manifest (``--reference`` if given, else
the one beside the shards) is checked: missing, truncated (smaller than recorded), grown or
altered (different sha256; then its samples are counted from the tar) and extra ``*.tar`` files
in the folder are reported, one line each, then a one-line summary. In an altered shard each sample
whose span bytes differ from its recorded sha256 is reported too, by key and byte offset (``SAMPLE``
lines): the digests come from the expected manifest (version 2), or, when that is a version-1
reference, from the manifest beside the shards if it lists the same spans. With ``--reference`` the
sample counts of the manifest beside the shards are compared with the reference too. A sidecar index
beside the manifest (``python -m dynamo_depth index``) that names the manifest's sha256 but differs from
the index derived from it is reported (``INDEX``); a stale one (another manifest's) is ignored, as the
loader ignores it.
Exit status: 0 all match, 1 any difference, 2 the manifest cannot be read or arguments are wrong.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from dynamo_depth.shards import storage
from dynamo_depth.shards.manifest import Manifest, find_manifest, load_manifest
from dynamo_depth.shards.reader import count_samples, sha256_of, span_sha256
from dynamo_depth.shards.records import ShardRecord

__all__ = ["Problem", "verify_shards", "main"]

PROBLEM_KINDS = ("missing", "extra", "truncated", "altered", "sample", "count", "index")


@dataclass(frozen=True)
class Problem:
    """One difference between a shard set and its manifest.

    Attributes:
        kind: one of ``PROBLEM_KINDS``.
        shard: the shard's file name.
        detail: human-readable facts (sizes, hashes, counts; for ``sample``: key and byte offset).
        key, offset: the sample's key and byte offset (``sample`` problems only).
    """

    kind: str
    shard: str
    detail: str
    key: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        return f"{self.kind.upper()} {self.shard}: {self.detail}"


def _check_shard(folder: str, record: ShardRecord, digests: tuple[str, ...] | None) -> list[Problem]:
    url = storage.join(folder, record.name)
    size = storage.size(url)
    if size < record.bytes:
        cut = [Problem("sample", record.name, f"{span.key!r} at byte offset {span.offset} ({span.length} bytes): "
                                              f"cut off, the shard ends at byte {size}", key=span.key, offset=span.offset)
               for span in record.samples if span.offset + span.length > size]
        return [Problem("truncated", record.name, f"{size} bytes, manifest says {record.bytes}"), *cut]
    if size > record.bytes:
        problem = Problem("altered", record.name, f"{size} bytes, manifest says {record.bytes}")
    else:
        _, sha = sha256_of(url)
        if sha == record.sha256:
            return []
        problem = Problem("altered", record.name, f"sha256 {sha}, manifest says {record.sha256} (same size)")
    samples = _altered_samples(url, record, digests) if digests is not None else []
    try:
        count = count_samples(url)
    except ValueError as exc:
        return [Problem(problem.kind, problem.shard, f"{problem.detail}; tar unreadable: {exc}"), *samples]
    if count != record.count:
        return [problem, *samples,
                Problem("count", record.name, f"{count} samples in the tar, manifest says {record.count}")]
    return [problem, *samples]


def _altered_samples(url: str, record: ShardRecord, digests: tuple[str, ...]) -> list[Problem]:
    """A ``sample`` problem for each span of ``record`` whose bytes in ``url`` differ from its digest."""
    problems = []
    with storage.open_read(url) as f:
        for span, expected in zip(record.samples, digests, strict=True):
            f.seek(span.offset)
            got = span_sha256(f.read(span.length))
            if got != expected:
                problems.append(Problem("sample", record.name, f"{span.key!r} at byte offset {span.offset} "
                                        f"({span.length} bytes): sha256 {got}, manifest says {expected}",
                                        key=span.key, offset=span.offset))
    return problems


def _sample_digests(record: ShardRecord, beside: Manifest | None) -> tuple[str, ...] | None:
    """Per-sample digests for ``record``: its own, else those of the same spans in ``beside``, else None."""
    own = tuple(span.sha256 for span in record.samples)
    if all(own):
        return own  # type: ignore[return-value]
    other = next((s for s in beside.shards if s.name == record.name), None) if beside is not None else None
    if other is None or [(s.key, s.offset, s.length) for s in other.samples] != \
            [(s.key, s.offset, s.length) for s in record.samples]:
        return None
    theirs = tuple(span.sha256 for span in other.samples)
    return theirs if all(theirs) else None  # type: ignore[return-value]


def _compare_counts(beside: Manifest, reference: Manifest) -> list[Problem]:
    problems = []
    reference_counts = {s.name: s.count for s in reference.shards}
    for record in beside.shards:
        expected = reference_counts.get(record.name)
        if expected is not None and expected != record.count:
            problems.append(Problem("count", record.name,
                                    f"manifest beside the shards says {record.count} samples, reference says {expected}"))
    return problems


def verify_shards(shards_url: str, *, reference: str | None = None) -> list[Problem]:
    """All differences between the shards at ``shards_url`` and the expected manifest.

    ``shards_url``: folder or ``.../manifest.json`` (local or any fsspec URL). ``reference``: a
    manifest (or its folder) to compare against instead of the one beside the shards. Raises
    ``ValueError`` / ``FileNotFoundError`` naming the manifest when it cannot be read.
    """
    return _verify(shards_url, reference=reference)[1]


def _verify(shards_url: str, *, reference: str | None) -> tuple[Manifest, list[Problem]]:
    manifest_url = find_manifest(shards_url)
    folder = storage.dirname(manifest_url)
    beside = None
    if reference is None or storage.exists(manifest_url):
        beside = load_manifest(manifest_url)
    expected = load_manifest(reference) if reference is not None else beside
    if expected is None:
        raise FileNotFoundError(f"manifest {manifest_url}: not found")
    present = set(storage.listdir(folder))
    problems: list[Problem] = []
    for record in expected.shards:
        if record.name not in present:
            problems.append(Problem("missing", record.name, f"not found in {folder}"))
        else:
            problems.extend(_check_shard(folder, record, _sample_digests(record, beside)))
    expected_names = {s.name for s in expected.shards}
    for name in sorted(present):
        if name.endswith(".tar") and name not in expected_names:
            problems.append(Problem("extra", name, f"in {folder} but not in the manifest"))
    if reference is not None and beside is not None:
        problems.extend(_compare_counts(beside, expected))
    if beside is not None:
        problems.extend(_check_sidecar(manifest_url))
    return expected, problems


def _check_sidecar(manifest_url: str) -> list[Problem]:
    """An ``index`` problem when the sidecar names this manifest but is not the index derived from it."""
    import hashlib

    from dynamo_depth.shards.index import _parse_header
    from dynamo_depth.shards.index_store import sidecar_bytes, sidecar_url

    side = sidecar_url(manifest_url)
    if not storage.exists(side):
        return []
    data = storage.read_bytes(side)
    try:
        claimed = _parse_header(data, side)[0].get("manifest_sha256")
    except ValueError as exc:
        return [Problem("index", storage.basename(side), f"unreadable: {exc}")]
    if claimed != hashlib.sha256(storage.read_bytes(manifest_url)).hexdigest() or data == sidecar_bytes(manifest_url):
        return []
    return [Problem("index", storage.basename(side), "names this manifest's sha256 but differs from the index "
                    "derived from it; rewrite it with `python -m dynamo_depth index`")]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dynamo_depth verify",
        description="Re-hash every shard and compare with the manifest beside the shards (or a reference "
                    "manifest). Reports missing, extra, truncated and altered shards, the altered samples "
                    "(key and byte offset) of an altered shard, and sample-count mismatches; exit 1 on any "
                    "difference, 0 when all match, 2 if the manifest is unreadable.",
    )
    parser.add_argument("shards", metavar="SHARDS", help="shard folder or its manifest.json (local path or s3://...)")
    parser.add_argument("--reference", metavar="MANIFEST", default=None,
                        help="reference manifest (file or folder) to compare against, e.g. manifests/kitti-train.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        expected, problems = _verify(args.shards, reference=args.reference)
    except (ValueError, OSError) as exc:
        print(f"verify: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. S3 credentials/permissions (botocore): name URL and reason
        print(f"verify: error: {args.shards}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    verdict = "FAILED" if problems else "OK"
    print(f"verify: {len(expected.shards)} shards, {len(problems)} problems: {verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
