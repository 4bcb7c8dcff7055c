# SPDX-License-Identifier: MIT
"""The namespace (inode_cache.py) against moto_server: listings, lookups, lookup counts."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import trio

from s3regfs.errors import NotFound
from s3regfs.inode_cache import Namespace
from tests.util import MotoServer, make_store


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
