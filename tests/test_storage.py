# SPDX-License-Identifier: MIT
"""The S3 store against a real moto_server over HTTP (no kernel involved)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from s3regfs.config import build
from s3regfs.errors import InvalidRange, NoSuchBucket, NotFound, PreconditionFailed, TemporaryFailure
from s3regfs.inode_cache import Namespace
from s3regfs.reader import ObjectReader, ReadaheadBudget
from s3regfs.storage.s3 import S3Store
from tests.util import CREDENTIALS, MotoServer, free_port


def make_store(endpoint: str, bucket: str, **params: str) -> S3Store:
    options = [("regionendpoint", endpoint), ("region", "us-east-1"), *params.items()]
    environ = {
        "REGISTRY_STORAGE_S3_ACCESSKEY": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "REGISTRY_STORAGE_S3_SECRETKEY": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }
    config = build(source=bucket, mountpoint="/unused", mount_options=options, environ=environ)
    return S3Store.create(config.driver, config.options)


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


async def test_namespace_lists_a_subtree_in_few_requests(moto: MotoServer, s3: Any, bucket: str) -> None:
    hexes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(300)]
    for h in hexes:
        s3.put_object(
            Bucket=bucket,
            Key=f"r/docker/registry/v2/repositories/app/_layers/sha256/{h}/link",
            Body=h.encode(),
        )
    store = make_store(moto.url, bucket)
    namespace = Namespace(store, "r/", metadata_ttl=60)
    node = namespace.root
    for name in ["docker", "registry", "v2", "repositories", "app"]:
        node = await namespace.lookup(node, name)
    layers = await namespace.lookup(node, "_layers")
    sha = await namespace.lookup(layers, "sha256")
    children = await namespace.list_children(sha)
    assert [c.name for c in children] == sorted(hexes)
    for child in children:
        link = await namespace.lookup(child, "link")
        assert link.size == 64
    # root, docker, registry, v2, repositories: one level each; app: one flat page.
    assert store.request_counts["list_objects_v2"] == 6


async def test_reader_streams_and_reads_ranges(moto: MotoServer, s3: Any, bucket: str) -> None:
    data = bytes((i * 7) % 251 for i in range(5 * 1024 * 1024 + 17))
    s3.put_object(Bucket=bucket, Key="blob", Body=data)
    store = make_store(moto.url, bucket)
    info = await store.head("blob")
    budget = ReadaheadBudget(2 * 1024 * 1024)
    async with trio.open_nursery() as nursery:
        reader = ObjectReader(
            store, "blob", info.size, info.etag, budget=budget, nursery=nursery, max_window=2 * 1024 * 1024
        )
        received = bytearray()
        offset = 0
        while chunk := await reader.read(offset, 131072):
            received += chunk
            offset += len(chunk)
        assert bytes(received) == data
        assert await reader.read(123, 456) == data[123:579]
        await reader.aclose()
    assert budget.used == 0
    assert budget.peak <= 2 * 1024 * 1024 + 1024 * 1024
    assert store.request_counts["get_object"] == 2  # one stream, one range


async def test_stale_lookup_in_a_large_directory_checks_one_name(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    for i in range(1200):
        s3.put_object(Bucket=bucket, Key=f"big/f{i:04d}", Body=b"x")
    s3.put_object(Bucket=bucket, Key="big/sub/inner", Body=b"y")
    store = make_store(moto.url, bucket)
    namespace = Namespace(store, "", metadata_ttl=0.2)
    big = await namespace.lookup(namespace.root, "big")
    assert len(await namespace.list_children(big)) == 1201
    assert big.list_cost == 2
    lists = store.request_counts["list_objects_v2"]
    await trio.sleep(0.3)
    s3.delete_object(Bucket=bucket, Key="big/f0001")
    node = await namespace.lookup(big, "f0000")
    assert node.size == 1 and store.request_counts["head_object"] == 0
    with pytest.raises(NotFound):
        await namespace.lookup(big, "f0001")
    assert "f0001" not in big.children
    sub = await namespace.lookup(big, "sub")
    assert sub.is_dir
    # One delimited listing of each name: f0000, f0001 and sub.
    assert store.request_counts["list_objects_v2"] == lists + 3


async def test_forget_keeps_detached_inodes_until_the_kernel_lets_go(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="d/a", Body=b"1")
    s3.put_object(Bucket=bucket, Key="d/b", Body=b"2")
    store = make_store(moto.url, bucket)
    namespace = Namespace(store, "", metadata_ttl=0)
    d = await namespace.lookup(namespace.root, "d")
    a = await namespace.lookup(d, "a")
    b = await namespace.lookup(d, "b")
    namespace.remember(a)
    namespace.remember(a)
    s3.delete_object(Bucket=bucket, Key="d/a")
    s3.delete_object(Bucket=bucket, Key="d/b")
    assert await namespace.list_children(d) == []
    assert not a.attached and not b.attached
    assert namespace.get(a.ino) is a  # the kernel still holds two lookups
    with pytest.raises(KeyError):
        namespace.get(b.ino)  # never handed out: dropped at once
    namespace.forget(a.ino, 1)
    assert namespace.get(a.ino) is a
    namespace.forget(a.ino, 1)
    with pytest.raises(KeyError):
        namespace.get(a.ino)


async def test_upload_journal_recovery_reads_dead_files_only(tmp_path: Path) -> None:
    from s3regfs.storage.journal import UploadJournal, recover

    class Store:
        """A stand-in for S3 with one open upload ("u1"); "u2" is gone."""

        def __init__(self) -> None:
            self.aborted: list[str] = []

        async def upload_exists(self, key: str, upload_id: str) -> bool:
            return upload_id == "u1"

        async def abort_multipart(self, key: str, upload_id: str) -> None:
            self.aborted.append(upload_id)

    directory = str(tmp_path)
    dead = tmp_path / "t.1.jsonl"
    dead.write_text(
        '{"begin":"u1","key":"a","time":"T"}\n{"begin":"u2","key":"b","time":"T"}\n'
        '{"begin":"u3","key":"c","time":"T"}\n{"end":"u3"}\n{"begin":"u4","ke'  # torn by a crash
    )
    (tmp_path / "other.1.jsonl").write_text('{"begin":"x","key":"x"}\n')  # another bucket's
    live = UploadJournal(directory, "t", "live")  # a live mount of the same bucket: never read
    live.begun("live-key", "u9")
    store = Store()
    mine = UploadJournal(directory, "t", "mine")
    found = await recover(store, mine, directory, "t", abort=False)
    assert [u.upload_id for u in found.still_open] == ["u1"] and found.gone == 1
    assert store.aborted == [] and not dead.exists()
    assert mine.open_count == 1  # carried over, so the next mount reports it again
    mine.close()
    again = UploadJournal(directory, "t", "again")
    found = await recover(store, again, directory, "t", abort=True)
    assert [u.upload_id for u in found.aborted] == ["u1"] and store.aborted == ["u1"]
    again.close()
    live.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.1.jsonl", live.path.rsplit("/", 1)[1]]


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


async def test_stale_lookup_past_many_names_sorting_before_the_directory(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # "v1.0000" ... sort between the object "v1" and the prefix "v1/": the one
    # delimited listing of "v1" is cut short before it reaches "v1/".
    keys = [f"big/v1.{i:04d}" for i in range(1100)] + ["big/v1/x", "big/v2"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=b"z"), keys))
    store = make_store(moto.url, bucket)
    namespace = Namespace(store, "", metadata_ttl=0.2)
    big = await namespace.lookup(namespace.root, "big")
    assert len(await namespace.list_children(big)) == 1102
    await trio.sleep(0.3)
    lists = store.request_counts["list_objects_v2"]
    assert (await namespace.lookup(big, "v1")).is_dir
    assert store.request_counts["list_objects_v2"] == lists + 2  # the name, then "v1/"
    v2 = await namespace.lookup(big, "v2")
    assert not v2.is_dir and v2.size == 1
    with pytest.raises(NotFound):
        await namespace.lookup(big, "v3")


def test_upload_journals_never_share_a_file(tmp_path: Path) -> None:
    from s3regfs.storage.journal import UploadJournal

    # A pid can come back after a crash: the new journal must not reopen (and
    # at its clean exit delete) the dead one of the same pid.
    first = UploadJournal(str(tmp_path), "t", "42")
    first.begun("k", "u1")
    second = UploadJournal(str(tmp_path), "t", "42")
    assert first.path != second.path
    second.close()
    assert os.path.exists(first.path) and "u1" in Path(first.path).read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging file left
    first.close()


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


def test_malloc_arenas_are_limited_unless_the_user_says_otherwise() -> None:
    from s3regfs.mount import limit_malloc_arenas

    assert limit_malloc_arenas({"MALLOC_ARENA_MAX": "8"}) is False
    assert limit_malloc_arenas({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) is False
    if os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") or os.path.exists(
        "/lib/aarch64-linux-gnu/libc.so.6"
    ):
        assert limit_malloc_arenas({}) is True  # glibc: mallopt answered 1


async def test_a_dead_journal_stays_when_its_uploads_cannot_be_carried_over(tmp_path: Path) -> None:
    from s3regfs.storage.journal import UploadJournal, recover

    class Store:
        async def upload_exists(self, key: str, upload_id: str) -> bool:
            return True

        async def abort_multipart(self, key: str, upload_id: str) -> None:
            raise AssertionError("nothing is aborted without abort=True")

    dead = tmp_path / "t.1.jsonl"
    dead.write_text('{"begin":"u1","key":"a","time":"T"}\n')
    mine = UploadJournal(str(tmp_path), "t", "mine")
    assert mine._file is not None
    mine._file.close()
    mine._file = open("/dev/full", "w")  # the disk is full: every write fails  # noqa: SIM115
    found = await recover(Store(), mine, str(tmp_path), "t", abort=False)
    assert [u.upload_id for u in found.still_open] == ["u1"]
    assert dead.exists()  # kept, so the next mount reports u1 again
    mine.close()  # and closing a journal on a full disk raises nothing
