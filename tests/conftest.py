# SPDX-License-Identifier: MIT
"""Shared fixtures: a real moto_server on loopback, buckets, boto3 clients."""

from __future__ import annotations

import faulthandler
import gc
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.util import MotoServer, s3_client, start_moto

faulthandler.enable()


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(moto: MotoServer) -> Any:
    return s3_client(moto.url)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def endpoint_opts(moto: MotoServer) -> list[str]:
    """-o options that point a mount at the moto endpoint."""
    return ["-o", f"regionendpoint={moto.url},region=us-east-1"]


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    yield
    gc.collect()


def put_tree(s3: Any, bucket: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


@pytest.fixture
def put(s3: Any) -> Any:
    def _put(bucket: str, objects: dict[str, bytes]) -> None:
        put_tree(s3, bucket, objects)

    return _put
