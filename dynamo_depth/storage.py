"""Local paths and object-store URLs (``s3://bucket/prefix``, any fsspec URL) behind one small API.

Every module that reads or writes shards and manifests goes through these helpers, so a local
folder and an S3 prefix behave the same. Local writes are atomic (temporary file in the same
folder, fsync, rename, fsync of the folder); an object-store PUT is atomic by nature.

S3 settings come from the usual environment variables: ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (e.g. a SeaweedFS / MinIO / moto server), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``. They are passed to
s3fs explicitly so that fsspec's instance cache never reuses a client made for another endpoint.
s3fs is imported lazily (by fsspec) only when an ``s3://`` URL is used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import IO, Any

__all__ = [
    "is_local",
    "join",
    "dirname",
    "basename",
    "open_read",
    "exists",
    "size",
    "listdir",
    "put_file",
    "write_bytes_atomic",
    "read_bytes",
    "read_range",
    "remove",
]


def is_local(url: str) -> bool:
    """True for a plain path or a ``file://`` URL."""
    return "://" not in str(url) or str(url).startswith("file://")


def _local_path(url: str) -> str:
    url = os.fspath(url)
    return url[len("file://") :] if url.startswith("file://") else url


def _s3_options() -> dict[str, Any]:
    env = os.environ
    options: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_url"] = endpoint
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        options["key"] = env["AWS_ACCESS_KEY_ID"]
        options["secret"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            options["token"] = env["AWS_SESSION_TOKEN"]
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
    if region:
        options["client_kwargs"] = {"region_name": region}
    return options


def _remote(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a non-local URL."""
    import fsspec  # lazy: fsspec imports s3fs itself, only for s3:// URLs

    protocol = url.split("://", 1)[0]
    options = _s3_options() if protocol in ("s3", "s3a") else {}
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def join(url: str, name: str) -> str:
    """``url`` + ``/`` + ``name`` for URLs, ``os.path.join`` for local paths."""
    if not name:
        raise ValueError(f"cannot join an empty name to {url!r}")
    if is_local(url):
        return os.path.join(_local_path(url), name)
    return url.rstrip("/") + "/" + name


def dirname(url: str) -> str:
    """The folder holding ``url`` (keeps the scheme of remote URLs)."""
    if is_local(url):
        return os.path.dirname(os.path.abspath(_local_path(url)))
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.rstrip('/').rsplit('/', 1)[0]}"


def basename(url: str) -> str:
    """The last path component of ``url``."""
    return os.path.basename(_local_path(url)) if is_local(url) else url.rstrip("/").rsplit("/", 1)[-1]


def open_read(url: str) -> IO[bytes]:
    """Open ``url`` for streaming binary reads (use as a context manager)."""
    if is_local(url):
        return open(_local_path(url), "rb")
    fs, path = _remote(url)
    return fs.open(path, "rb")


def exists(url: str) -> bool:
    if is_local(url):
        return os.path.exists(_local_path(url))
    fs, path = _remote(url)
    fs.invalidate_cache(path)
    return bool(fs.exists(path))


def size(url: str) -> int:
    """Size of the file at ``url`` in bytes."""
    if is_local(url):
        return os.path.getsize(_local_path(url))
    fs, path = _remote(url)
    fs.invalidate_cache(path)
    return int(fs.size(path))


def listdir(url: str) -> list[str]:
    """Sorted names (not paths) of the files directly inside folder ``url``; [] if it does not exist."""
    if is_local(url):
        path = _local_path(url)
        if not os.path.isdir(path):
            return []
        return sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
    fs, path = _remote(url)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_local_write(path: str, write: Any) -> None:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def put_file(local_path: str, url: str) -> None:
    """Copy local file ``local_path`` to ``url`` (atomic: readers see the old or the new file)."""
    if is_local(url):
        dest = _local_path(url)
        with open(local_path, "rb") as src:
            _atomic_local_write(dest, lambda f: shutil.copyfileobj(src, f, 1 << 20))
        return
    fs, path = _remote(url)
    fs.put_file(local_path, path)
    fs.invalidate_cache(path)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` atomically (tmp + fsync + rename locally, one PUT remotely)."""
    if is_local(url):
        _atomic_local_write(_local_path(url), lambda f: f.write(data))
        return
    fs, path = _remote(url)
    fs.pipe_file(path, bytes(data))
    fs.invalidate_cache(path)


def read_bytes(url: str) -> bytes:
    """The whole content of ``url`` (for small files such as manifests)."""
    with open_read(url) as f:
        return f.read()


def read_range(url: str, *, offset: int, length: int) -> bytes:
    """``length`` bytes of ``url`` starting at byte ``offset`` (a ranged GET remotely)."""
    if offset < 0 or length < 0:
        raise ValueError(f"{url}: negative range offset={offset} length={length}")
    with open_read(url) as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise ValueError(f"{url}: range [{offset}, {offset + length}) runs past the end of the file")
    return data


def remove(url: str) -> None:
    """Delete the file at ``url``; a missing file is not an error."""
    if is_local(url):
        try:
            os.unlink(_local_path(url))
        except FileNotFoundError:
            pass
        return
    fs, path = _remote(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    fs.invalidate_cache(path)
