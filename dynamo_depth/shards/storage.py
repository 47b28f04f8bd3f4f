"""Local paths and object-store URLs (``s3://bucket/prefix``, any fsspec URL) behind one small API.

Every module that reads or writes shards and manifests goes through these helpers, so a local
folder and an S3 prefix behave the same. Local writes are atomic (temporary file in the same
folder, fsync, rename, fsync of the folder); an object-store PUT is atomic by nature.

S3 settings come from the usual environment variables: ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (e.g. a SeaweedFS / MinIO / moto server), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``. They are passed to
s3fs explicitly so that fsspec's instance cache never reuses a client made for another endpoint.
s3fs is imported lazily (by fsspec) only when an ``s3://`` URL is used.

An object store refusing the credentials (Forbidden, InvalidAccessKeyId, SignatureDoesNotMatch...) raises
``StorageAuthError`` (a ``PermissionError``) whose one-line message names the URL and the variables to check.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
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
    "write_atomic",
    "StorageAuthError",
    "auth_error_code",
    "auth_error_message",
]

AUTH_ERROR_CODES = ("Forbidden", "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "InvalidToken", "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed")
"""S3 error codes that mean "these credentials / this endpoint are not accepted"."""


class StorageAuthError(PermissionError):
    """The object store refused the credentials; the message names the URL and the variables to check."""


def auth_error_code(exc: BaseException) -> str | None:
    """The S3 auth error code behind ``exc`` (itself, its causes or its text), None if it is not one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)  # botocore ClientError
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            if code in AUTH_ERROR_CODES:
                return "Forbidden" if code == "403" else code
        found = re.search(r"An error occurred \((\w+)\)", str(current))  # a ClientError's text (wrapped)
        if found and found.group(1) in AUTH_ERROR_CODES:
            return "Forbidden" if found.group(1) == "403" else found.group(1)
        current = current.__cause__ or current.__context__
    return None


def auth_error_message(url: str, code: str) -> str:
    """One line: ``url`` was refused (``code``) and which AWS_* variables to check (values of none but the endpoint)."""
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    have = ", ".join(f"{name} {'set' if env.get(name) else 'NOT set'}"
                     for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    return (f"{url}: the object store refused the credentials ({code}); check AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY ({have}) and AWS_ENDPOINT_URL (now {endpoint or 'unset: AWS S3'})")


@contextlib.contextmanager
def _auth_errors(url: str) -> Iterator[None]:
    """Turn an object store's credential refusal inside the body into ``StorageAuthError`` naming ``url``."""
    try:
        yield
    except StorageAuthError:
        raise
    except Exception as exc:
        code = auth_error_code(exc) or ("Forbidden" if isinstance(exc, PermissionError) else None)
        if code is None:
            raise
        raise StorageAuthError(auth_error_message(url, code)) from exc


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
    with _auth_errors(url):
        fs, path = _remote(url)
        return fs.open(path, "rb")


def exists(url: str) -> bool:
    if is_local(url):
        return os.path.exists(_local_path(url))
    with _auth_errors(url):
        fs, path = _remote(url)
        fs.invalidate_cache(path)
        return bool(fs.exists(path))


def size(url: str) -> int:
    """Size of the file at ``url`` in bytes."""
    if is_local(url):
        return os.path.getsize(_local_path(url))
    with _auth_errors(url):
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
    with _auth_errors(url):
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
    with _auth_errors(url):
        fs, path = _remote(url)
        fs.put_file(local_path, path)
        fs.invalidate_cache(path)


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` atomically (tmp + fsync + rename locally, one PUT remotely)."""
    if is_local(url):
        _atomic_local_write(_local_path(url), lambda f: f.write(data))
        return
    with _auth_errors(url):
        fs, path = _remote(url)
        fs.pipe_file(path, bytes(data))
        fs.invalidate_cache(path)


def read_bytes(url: str) -> bytes:
    """The whole content of ``url`` (for small files such as manifests)."""
    with _auth_errors(url), open_read(url) as f:
        return f.read()


def read_range(url: str, *, offset: int, length: int) -> bytes:
    """``length`` bytes of ``url`` starting at byte ``offset`` (a ranged GET remotely)."""
    if offset < 0 or length < 0:
        raise ValueError(f"{url}: negative range offset={offset} length={length}")
    with _auth_errors(url), open_read(url) as f:
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
    with _auth_errors(url):
        fs, path = _remote(url)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
        fs.invalidate_cache(path)


def move(url: str, target: str) -> None:
    """Move the file or folder ``url`` to ``target`` (same store); its parent folders are created.

    Locally one rename. On an object store every object under ``url`` is copied to the same relative key
    under ``target``, then the originals are deleted (a crash in between leaves both copies, never none).
    """
    if is_local(url) != is_local(target):
        raise ValueError(f"cannot move {url} to {target}: not the same store")
    if is_local(url):
        destination = _local_path(target)
        os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
        os.replace(_local_path(url), destination)
        _fsync_dir(os.path.dirname(os.path.abspath(destination)))
        return
    with _auth_errors(url):
        fs, path = _remote(url)
        _, destination = _remote(target)
        fs.invalidate_cache()
        names = [path] if fs.isfile(path) else sorted(fs.find(path))
        for name in names:
            fs.copy(name, destination + name[len(path):])
        for name in names:
            fs.rm_file(name)
        fs.invalidate_cache()


def write_atomic(url: str, write: Callable[[IO[bytes]], None]) -> None:
    """Stream a file to ``url`` atomically: ``write(f)`` fills a binary file (large outputs: checkpoints).

    Locally: temporary file in the same folder, fsync, rename. Remotely: a local temporary file, then one
    upload (readers see the old object or the new one, never a partial one).
    """
    if is_local(url):
        _atomic_local_write(_local_path(url), write)
        return
    with tempfile.TemporaryDirectory(prefix="dynamo-upload-") as folder:
        local = os.path.join(folder, basename(url) or "object")
        with open(local, "wb") as f:
            write(f)
        put_file(local, url)
