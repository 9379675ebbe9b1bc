"""A real S3 HTTP endpoint for the tests: moto's standalone server on loopback (boto3 talks HTTP to it
exactly as to AWS or any S3-compatible store)."""

from __future__ import annotations

import os
import urllib.request

import pytest


@pytest.fixture(scope="session")
def s3_server() -> str:
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    # Port 0: the kernel picks a free port at bind time (a port picked beforehand could be taken meanwhile,
    # and moto's start() then waits forever).
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server) -> tuple[str, str]:
    """A fresh empty bucket: (endpoint_url, bucket name); the endpoint is reset afterwards."""
    import uuid

    import boto3

    bucket = f"odoops-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield s3_server, bucket
    urllib.request.urlopen(urllib.request.Request(f"{s3_server}/moto-api/reset", method="POST")).read()
