# SPDX-License-Identifier: MIT
"""The S3 store against a real moto_server over HTTP (no kernel involved)."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from s3regfs.errors import InvalidRange, NoSuchBucket, NotFound, PreconditionFailed, TemporaryFailure
from tests.util import MotoServer, free_port, make_store


async def test_listing_pages_prefixes_and_start_after(moto: MotoServer, s3: Any, bucket: str) -> None:
    keys = [f"d/{i:04d}" for i in range(1005)] + ["d/sub/a", "d/sub/b", "e"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    store = make_store(moto.url, bucket)
    first = await store.list_page("d/")
    assert len(first.objects) == 1000 and first.truncated
    second = await store.list_page("d/", token=first.next_token)
    assert [o.key for o in first.objects + second.objects] == sorted(k for k in keys if k.startswith("d/"))
    assert not second.truncated
    delimited = await store.list_page("d/", delimiter="/", start_after="d/1000")
    assert [o.key for o in delimited.objects] == ["d/1001", "d/1002", "d/1003", "d/1004"]
    assert delimited.prefixes == ["d/sub/"]
    assert store.request_counts["list_objects_v2"] == 3


async def test_head_get_range_and_stream(moto: MotoServer, s3: Any, bucket: str) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    s3.put_object(Bucket=bucket, Key="obj", Body=body)
    store = make_store(moto.url, bucket)
    info = await store.head("obj")
    assert info.size == len(body) and info.etag == hashlib.md5(body).hexdigest()
    assert await store.get_range("obj", 10, 20) == body[10:20]
    assert await store.get_range("obj", 5, 5) == b""
    stream = await store.open_stream("obj", 1000, len(body), info.etag)
    received = b""
    while chunk := await stream.read(100_000):
        received += chunk
    await stream.aclose()
    assert received == body[1000:]
    with pytest.raises(NotFound):
        await store.head("missing")
    with pytest.raises(PreconditionFailed):
        await store.get_range("obj", 0, 10, etag="0" * 32)
    with pytest.raises(InvalidRange):
        await store.get_range("obj", len(body) + 10, len(body) + 20)


async def test_client_errors_are_not_retried(moto: MotoServer) -> None:
    store = make_store(moto.url, "no-such-bucket-anywhere")
    with pytest.raises(NoSuchBucket):
        await store.list_page("")
    assert store.request_counts["list_objects_v2"] == 1


async def test_unreachable_endpoint_is_retried_maxretries_times() -> None:
    store = make_store(f"http://127.0.0.1:{free_port()}", "bucket", maxretries="2")
    started = trio.current_time()
    with pytest.raises(TemporaryFailure):
        await store.head("key")
    assert store.request_counts["head_object"] == 3  # 1 + maxretries
    assert trio.current_time() - started >= 0.2 * 0.5 + 0.4 * 0.5  # backoff slept between attempts


async def test_request_rate_is_capped(moto: MotoServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    store = make_store(moto.url, bucket, maxrequestspersecond="20")
    started = trio.current_time()
    for _ in range(11):
        await store.head("k")
    assert trio.current_time() - started >= 10 / 20 * 0.95


async def test_probe_sees_gitlab_database_lockfile(moto: MotoServer, s3: Any, bucket: str) -> None:
    store = make_store(moto.url, bucket)
    assert not (await store.probe("root/")).database_in_use
    s3.put_object(Bucket=bucket, Key="root/docker/registry/lockfiles/database-in-use", Body=b'{"version":1}')
    assert (await store.probe("root/")).database_in_use


def test_multipart_etag_is_the_one_s3_computes(s3: Any, bucket: str) -> None:
    from s3regfs.storage.s3 import multipart_etag

    upload = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    parts = []
    for number, data in enumerate([b"a" * (5 * 1024 * 1024), b"tail"], start=1):
        etag = s3.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=number, Body=data)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="m", UploadId=upload, MultipartUpload={"Parts": parts}
    )
    assert multipart_etag([p["ETag"] for p in parts]) == done["ETag"].strip('"')
    assert multipart_etag([p["ETag"] for p in parts]).endswith("-2")


async def test_stream_slots_come_back_on_close_cancel_and_failure(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="obj", Body=b"x" * (3 * 1024 * 1024))
    store = make_store(moto.url, bucket, max_connections="4")
    # Closed after a read.
    stream = await store.open_stream("obj", 0, 3 * 1024 * 1024)
    assert store.connections.streams == 1 and len(await stream.read(1024)) == 1024
    await stream.aclose()
    # Cancelled while it holds its body (aclose in a cancelled scope still closes).
    with trio.CancelScope() as scope:
        stream = await store.open_stream("obj", 0, 3 * 1024 * 1024)
        scope.cancel()
        try:
            await trio.sleep(1)
        finally:
            await stream.aclose()
    # Failing to open (no such key).
    with pytest.raises(NotFound):
        await store.open_stream("missing", 0, 10)
    assert store.connections.streams == 0 and store.connections.in_use == 0
    # And the slots are there to take again: two of four (streams keep half free).
    streams = [await store.open_stream("obj", 0, 3 * 1024 * 1024) for _ in range(3)]
    assert store.connections.streams == 2
    assert [len(await s.read(1024 * 1024)) for s in streams] == [1024 * 1024] * 3
    for each in streams:
        await each.aclose()
    assert store.connections.streams == 0 and store.connections.in_use == 0


@given(
    moment=st.datetimes(
        min_value=datetime.datetime(1970, 1, 2),
        max_value=datetime.datetime(2999, 12, 31),
        timezones=st.just(datetime.UTC),
    ),
    style=st.sampled_from(["%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ", "%a, %d %b %Y %H:%M:%S GMT"]),
)
def test_the_fast_timestamp_parser_agrees_with_botocores(moment: datetime.datetime, style: str) -> None:
    from botocore.utils import parse_timestamp as botocore_parse

    from s3regfs.storage.s3 import parse_timestamp

    text = moment.strftime(style)
    assert parse_timestamp(text) == botocore_parse(text)


async def test_pages_read_fast_are_the_pages_botocore_parses(moto: MotoServer, s3: Any, bucket: str) -> None:
    """parse_list_page reads the bodies S3 sends as botocore's parser (and
    its URL decoding) does, and the store's listings use it."""
    from s3regfs.storage.s3 import _list_page, parse_list_page
    from tests.util import s3_client

    odd = [
        "a b",
        "a+b",
        "a%20b",
        "100%",
        "x&y<z>\"'",
        "\u00fcml/\u00e9t\u00e9",
        "whale \U0001f433",
        "tab\there",
        "end ",
    ]
    keys = [f"p/{name}" for name in odd] + [f"p/dir/{i:03d}" for i in range(30)] + ["p/dir/sub/x", "p/zz/"]
    for key in keys:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=key.encode(),
            StorageClass="STANDARD_IA" if "0" in key else "STANDARD",
        )
    plain = s3_client(moto.url)  # botocore's parser only
    bodies: list[bytes] = []
    plain.meta.events.register(
        "before-parse.s3.ListObjectsV2", lambda response_dict, **_: bodies.append(response_dict["body"])
    )
    store = make_store(moto.url, bucket)
    asks: list[dict[str, Any]] = [
        {"Prefix": "p/"},
        {"Prefix": "p/", "Delimiter": "/"},
        {"Prefix": "p/", "MaxKeys": 7},
        {"Prefix": "p/", "Delimiter": "/", "MaxKeys": 3, "StartAfter": "p/a b"},
        {"Prefix": "p/nothing/"},
    ]
    for ask in asks:
        bodies.clear()
        expected, truncated = _list_page(plain.list_objects_v2(Bucket=bucket, **ask))
        assert parse_list_page(bodies[0]) == (expected, truncated)
        page = await store.list_page(
            ask["Prefix"],
            delimiter=ask.get("Delimiter"),
            start_after=ask.get("StartAfter"),
            max_keys=ask.get("MaxKeys", 1000),
        )
        assert page == expected
    whole = await store.list_page("p/")
    assert [info.key for info in whole.objects] == sorted(keys)
    assert {info.storage_class for info in whole.objects} == {"STANDARD", "STANDARD_IA"}
    assert all(info.etag == hashlib.md5(info.key.encode()).hexdigest() for info in whole.objects)
    # What it does not read (an error, another document) is left to botocore.
    assert parse_list_page(b"<Error><Code>NoSuchBucket</Code></Error>") is None
    assert parse_list_page(b"not xml") is None
