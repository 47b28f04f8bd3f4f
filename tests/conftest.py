"""Shared pytest fixtures: an in-process S3 server (moto) and a fresh bucket per test.

Sample builders live in ``tests/samples.py`` (``from tests.samples import make_sample``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

_BUCKET_NUMBERS = itertools.count()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server running in a thread for the whole session."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<new bucket>`` on the moto server, with the AWS_* environment pointing at it."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"test-bucket-{next(_BUCKET_NUMBERS)}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"
