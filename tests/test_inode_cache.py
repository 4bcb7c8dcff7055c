# SPDX-License-Identifier: MIT
"""The namespace (inode_cache.py) against moto_server: listings, lookups, lookup counts."""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Sequence
from typing import Any

import pytest
import trio

from s3regfs.errors import NotFound
from s3regfs.inode_cache import Namespace, Node
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
    # root, docker, registry, v2, repositories and blobs: one level each (at
    # once, with the root's listing); app: one flat page.
    assert store.request_counts["list_objects_v2"] == 7


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
    assert "f0001" not in (big.children or {})
    # One delimited listing of each name: f0000, f0001.
    assert store.request_counts["list_objects_v2"] == lists + 2
    # Checks as costly as a listing (2 pages) by now: the next name lists the
    # directory again, and the names after it cost nothing.
    sub = await namespace.lookup(big, "sub")
    assert sub.is_dir
    assert store.request_counts["list_objects_v2"] == lists + 4
    for i in range(2, 40):
        assert (await namespace.lookup(big, f"f{i:04d}")).size == 1
    assert store.request_counts["list_objects_v2"] == lists + 4


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
    assert namespace.kernel_held == 1  # one node, two lookups
    s3.delete_object(Bucket=bucket, Key="d/a")
    s3.delete_object(Bucket=bucket, Key="d/b")
    assert await namespace.list_children(d) == []
    assert not a.attached and not b.attached
    assert namespace.get(a.ino) is a  # the kernel still holds two lookups
    with pytest.raises(KeyError):
        namespace.get(b.ino)  # never handed out: dropped at once
    namespace.forget(a.ino, 1)
    assert namespace.get(a.ino) is a and namespace.kernel_held == 1
    namespace.forget(a.ino, 1)
    with pytest.raises(KeyError):
        namespace.get(a.ino)
    assert namespace.kernel_held == 0
    namespace.forget(a.ino, 1)  # a FORGET too many (a stale inode): no count below zero
    assert namespace.kernel_held == 0


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


class _RecordingKernel:
    """Stands in for the kernel's side of entry invalidation: records what a
    trim asked it to forget (the mount tests cover the real notifications)."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, str]] = []
        self.pages: list[int] = []

    def forget_entries_soon(self, entries: Sequence[tuple[Any, str]]) -> None:
        self.asked += [(parent.ino, name) for parent, name in entries]

    def forget_pages_soon(self, node: Any) -> None:
        self.pages.append(node.ino)


async def test_trim_keeps_the_cache_bounded_and_what_the_kernel_holds(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # 8 repositories of 60 layer links (each repository is listed flat:
    # 60 links + 60 digest directories + 2).
    base = "docker/registry/v2/repositories"
    keys = [key for r in range(8) for key in _layer_links(f"{base}/r{r}", 60)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=key[-70:].encode()), keys))
    store = make_store(moto.url, bucket)
    kernel = _RecordingKernel()
    namespace = Namespace(store, "", metadata_ttl=60, max_nodes=400, kernel=kernel)
    held: dict[str, Any] = {}
    for r in range(8):
        sha = await namespace.resolve(f"{base}/r{r}/_layers/sha256")
        children = await namespace.list_children(sha)
        if r == 0:
            # The kernel holds r0's first digest directory and its link.
            namespace.remember(children[0])
            link = await namespace.lookup(children[0], "link")
            namespace.remember(link)
            held = {"dir": children[0], "link": link, "ino": link.ino}
        assert len(namespace) <= 400 + 130  # the bound, plus at most one listing's worth
    assert namespace.trims >= 1 and namespace.evicted > 0
    # The coldest repositories went first; the warmest (r7) is still whole.
    r7 = await namespace.resolve(f"{base}/r7/_layers/sha256")
    assert r7.fresh_at is not None and len(r7.children or {}) == 60
    # What the kernel holds kept its inode and its place in the tree...
    assert namespace.get(held["ino"]) is held["link"] and held["link"].doomed
    assert held["dir"].children == {"link": held["link"]}
    # ...and the kernel was asked to forget the subtree that holds it.
    assert (await namespace.resolve(base)).ino in {ino for ino, _ in kernel.asked}
    # Once the kernel forgets them, they go.
    namespace.forget(held["link"].ino, 1)
    with pytest.raises(KeyError):
        namespace.get(held["ino"])
    namespace.forget(held["dir"].ino, 1)
    # A trimmed name comes back from a listing, with its attributes.
    lists = store.request_counts["list_objects_v2"]
    again = await namespace.resolve(keys[5])
    assert again.size == 70 and not again.is_dir
    assert store.request_counts["list_objects_v2"] - lists == 1  # the repository, listed flat
    sha0 = await namespace.resolve(f"{base}/r0/_layers/sha256")
    assert sorted(child.name for child in await namespace.list_children(sha0)) == sorted(
        key.split("/")[7] for key in keys[:60]
    )


async def test_trimmed_names_are_freed_at_once_not_by_the_garbage_collector(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    """Listings make no reference cycles: a trimmed node is freed when the
    tree lets go of it, so memory follows the bound even between Python's
    full garbage collections (the daemon runs them rarely)."""
    base = "docker/registry/v2/repositories"
    keys = [key for r in range(8) for key in _layer_links(f"{base}/r{r}", 60)]
    _put_all(s3, bucket, keys)
    store = make_store(moto.url, bucket)
    namespace = Namespace(store, "", metadata_ttl=60, max_nodes=400)
    gc.collect()
    gc.disable()
    try:
        for r in range(8):
            sha = await namespace.resolve(f"{base}/r{r}/_layers/sha256")
            assert len(await namespace.list_children(sha)) == 60
    finally:
        alive = sum(1 for each in gc.get_objects() if isinstance(each, Node))
        gc.enable()
    assert namespace.evicted > 400
    # What the cache holds, and what a listing in flight may still hold.
    assert alive <= len(namespace) + 10, (alive, len(namespace))


async def test_trim_leaves_a_directory_being_read_and_local_changes(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    for i in range(300):
        s3.put_object(Bucket=bucket, Key=f"a/f{i:03d}", Body=b"1")
        s3.put_object(Bucket=bucket, Key=f"b/f{i:03d}", Body=b"2")
    s3.put_object(Bucket=bucket, Key="c/f", Body=b"3")
    store = make_store(moto.url, bucket)
    namespace = Namespace(store, "", metadata_ttl=60, max_nodes=400)
    a = await namespace.resolve("a")
    snapshot = await namespace.list_children(a)
    namespace.hold(a)  # a readdir handle's snapshot
    made = namespace.add_local(a, "new", is_dir=False)
    b = await namespace.resolve("b")
    await namespace.list_children(b)
    await namespace.list_children(await namespace.resolve("c"))
    namespace.trim()
    assert all(namespace.get(node.ino) is node for node in snapshot)  # held
    assert namespace.get(made.ino) is made
    # b's names went; b itself stays, unlisted (the root's listing stays whole).
    assert b.children == {} and b.fresh_at is None and namespace.is_fresh(namespace.root)
    assert len(namespace) < 400
    namespace.release(a)
    namespace.max_nodes = 100
    namespace.trim()
    assert a.children == {"new": made} and a.fresh_at is None
    assert len(await namespace.list_children(a)) == 301
    assert (await namespace.resolve("b/f007")).size == 1


async def test_a_wide_directory_is_never_listed_whole_for_lookups(
    moto: MotoServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import s3regfs.inode_cache as inode_cache
    import s3regfs.layout as layout

    # Scaled down: one flat page, then wide past one page of its own children.
    monkeypatch.setattr(layout, "FLAT_LISTING_PAGES", 1)
    monkeypatch.setattr(inode_cache, "WIDE_PAGES", 1)
    keys = [f"flat/f{i:04d}" for i in range(2500)] + ["flat/sub/x", "flat/zz"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=b"w"), keys))
    store = make_store(moto.url, bucket)
    # The first lookup in it, of a name past the pages a bounded listing reads.
    fresh = Namespace(store, "", metadata_ttl=60)
    assert (await fresh.resolve("flat/zz")).size == 1
    assert (await fresh.resolve("flat")).wide
    namespace = Namespace(store, "", metadata_ttl=60)
    flat = await namespace.lookup(namespace.root, "flat")
    await namespace.ensure_listed(flat)
    assert flat.wide and not namespace.is_fresh(flat)
    # Not empty, whatever the cache holds of it (rmdir, rename over it).
    assert flat.children is not None
    flat.children.clear()
    assert await namespace.has_children(flat)
    lists = store.request_counts["list_objects_v2"]
    # Names past the pages read are checked one by one, never by listing the whole.
    assert (await namespace.lookup(flat, "zz")).size == 1
    assert (await namespace.lookup(flat, "sub")).is_dir
    with pytest.raises(NotFound):
        await namespace.lookup(flat, "nothing")
    assert store.request_counts["list_objects_v2"] - lists == 3
    # A stream gives every name once, a page at a time, in key order.
    stream = namespace.stream(flat)
    names: list[str] = []
    pages = 0
    while (page := await stream.next_page()) is not None:
        names += [node.name for node in page]
        pages += 1
    assert names == sorted({key.split("/")[1] for key in keys}) and pages >= 3
    # list_children still lists it whole (the images view needs every tag).
    assert len(await namespace.list_children(flat)) == 2502 and namespace.is_fresh(flat)


async def test_trim_keeps_the_way_to_working_directories(moto: MotoServer, s3: Any, bucket: str) -> None:
    for i in range(4):
        for j in range(10):
            s3.put_object(Bucket=bucket, Key=f"a{i}/sub/f{j}", Body=b"1")
    store = make_store(moto.url, bucket)
    kernel = _RecordingKernel()
    # A shell sits in a0/sub: forgetting a0 would unhash its working directory.
    namespace = Namespace(store, "", metadata_ttl=60, max_nodes=20, kernel=kernel, busy=lambda: ["a0/sub"])
    for i in range(4):
        held = await namespace.resolve(f"a{i}/sub/f0")
        if i < 2:
            namespace.remember(held)
        await namespace.list_children(await namespace.resolve(f"a{i}/sub"))
    namespace.trim()
    asked = {name for ino, name in kernel.asked if ino == namespace.root.ino}
    assert "a1" in asked and "a0" not in asked


async def test_a_walk_past_a_cut_flat_listing_goes_on_in_flat_pages(
    moto: MotoServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import s3regfs.layout as layout

    monkeypatch.setattr(layout, "FLAT_LISTING_PAGES", 1)  # scaled down: 1,000 keys a flat listing
    # A namespace of 40 repositories, 60 links each: 2,400 keys.
    keys = [key for r in range(40) for key in _layer_links(f"ns/r{r:02d}", 60)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=b"l"), keys))
    store = make_store(moto.url, bucket)
    namespace = Namespace(store, "", metadata_ttl=60)
    found = 0
    for r in range(40):
        sha = await namespace.resolve(f"ns/r{r:02d}/_layers/sha256")
        children = await namespace.list_children(sha)
        found += sum(1 for child in children if child.children and "link" in child.children)
    assert found == 2400
    # root, ns (one flat page, one delimited), then about a page per 1,000
    # keys from there (and the repository the cut fell in): not one per
    # repository.  (And the registry's directories, asked for with the root.)
    assert store.request_counts["list_objects_v2"] - namespace.early_pages <= 8, store.request_counts


async def test_a_directory_s_mtime_tells_when_its_names_changed(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    # The kernel's copy of a directory's contents (-o dircache) is dropped
    # when the mtime it is given differs from the one it copied with.
    for name in ("a", "b"):
        s3.put_object(Bucket=bucket, Key=f"d/{name}", Body=b"x")
    store = make_store(moto.url, bucket)
    kernel = _RecordingKernel()
    namespace = Namespace(store, "", metadata_ttl=0.2, kernel=kernel)
    directory = await namespace.lookup(namespace.root, "d")
    await namespace.ensure_listed(directory)
    listed = directory.mtime_ns
    namespace.kernel_copies(directory)
    assert 0 < namespace.kernel_copy_life(directory) <= 0.2
    await trio.sleep(0.3)
    await namespace.ensure_listed(directory)  # listed again, the same names
    assert directory.mtime_ns == listed
    s3.put_object(Bucket=bucket, Key="d/c", Body=b"x")
    await trio.sleep(0.3)
    await namespace.ensure_listed(directory)  # a new name
    assert directory.mtime_ns > listed
    assert directory.kernel_copy_at is None  # the kernel's copy counts as gone
    changed = directory.mtime_ns

    namespace.kernel_copies(directory)
    assert not namespace.kernel_copy_expired(directory)
    await trio.sleep(0.3)
    # Outlived the TTL: the kernel must ask (timeout 0) and have the copy
    # dropped; the mtime stays, nothing changed (tar checks it).
    assert namespace.kernel_copy_life(directory) == 0 and namespace.kernel_copy_expired(directory)
    assert directory.mtime_ns == changed

    directory.mtime_fixed = True  # utimens: the mtime stays, the pages go
    namespace.kernel_copies(directory)
    s3.delete_object(Bucket=bucket, Key="d/a")
    await trio.sleep(0.3)
    fixed = directory.mtime_ns
    await namespace.ensure_listed(directory)
    assert directory.mtime_ns == fixed and kernel.pages == [directory.ino]


async def test_a_directory_trimmed_and_listed_again_keeps_its_mtime(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    # A trim drops names from memory, not from S3: listed again, the same
    # names are no change (tar and rsync would see one in a new mtime).
    for d in ("sub", "t1", "t2"):
        for i in range(40):
            s3.put_object(Bucket=bucket, Key=f"a/{d}/f{i:02d}", Body=b"x")
    store = make_store(moto.url, bucket)
    namespace = Namespace(store, "", metadata_ttl=60, max_nodes=60, kernel=_RecordingKernel())
    sub = await namespace.resolve("a/sub")
    await namespace.list_children(sub)
    mtime = sub.mtime_ns
    for d in ("t1", "t2"):  # under the same parent, used later: a/sub is the coldest
        await namespace.list_children(await namespace.resolve(f"a/{d}"))
    namespace.trim()  # over the bound since the first listing (of all of a/)
    assert namespace.knows(sub) and not sub.children, "a/sub was not trimmed to its root"
    assert len(await namespace.list_children(sub)) == 40
    assert sub.mtime_ns == mtime
    s3.put_object(Bucket=bucket, Key="a/sub/new", Body=b"x")
    sub.fresh_at = None  # as after metadata_ttl
    assert len(await namespace.list_children(sub)) == 41
    assert sub.mtime_ns > mtime


class _Watched:
    """The real store, with the most LIST requests seen in flight at once."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.in_flight = 0
        self.most_in_flight = 0
        self.listed: list[tuple[str, str | None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def list_page(self, prefix: str, **kwargs: Any) -> Any:
        self.listed.append((prefix, kwargs.get("delimiter")))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._store.list_page(prefix, **kwargs)
        finally:
            self.in_flight -= 1


def _layer_links(repository: str, count: int) -> list[str]:
    """The keys of *count* layer links of *repository* (a path in the bucket)."""
    return [
        f"{repository}/_layers/sha256/{hashlib.sha256(f'{repository}-{i}'.encode()).hexdigest()}/link"
        for i in range(count)
    ]


def _put_all(s3: Any, bucket: str, keys: Sequence[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=b"123456789"), keys))


async def test_a_repository_of_thousands_of_links_is_read_as_ranges_at_once(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    repo = "docker/registry/v2/repositories/app"
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3200)]
    keys = [f"{repo}/_layers/sha256/{d}/link" for d in digests]
    # Names a digest run does not foresee, between and after the digests.
    odd = [":x", "g0", "zz", "0", "\u00e9t\u00e9", "f\U0010ffffz"]
    keys += [f"{repo}/_layers/sha256/{name}/link" for name in odd]
    keys += [f"{repo}/_manifests/revisions/sha256/{d}/link" for d in digests[:40]]
    keys += [f"{repo}/_manifests/tags/v{i}/current/link" for i in range(30)]
    _put_all(s3, bucket, keys)
    store = _Watched(make_store(moto.url, bucket))
    namespace = Namespace(store, "", metadata_ttl=60)
    app = await namespace.resolve(repo)
    store.most_in_flight = 0  # the root's early pages went out at once too
    listed = len(store.listed)
    sha = await namespace.lookup(await namespace.lookup(app, "_layers"), "sha256")
    assert store.most_in_flight >= 4, store.listed[listed:]  # the ranges went out together
    before = len(store.listed)
    names = [child.name for child in await namespace.list_children(sha)]
    assert names == sorted(digests + odd)
    assert len(store.listed) == before  # the repository's listing held them all
    for name in odd + digests[::97]:
        link = await namespace.resolve(f"{repo}/_layers/sha256/{name}/link")
        assert link.size == 9
    tags = await namespace.resolve(f"{repo}/_manifests/tags")
    assert len(await namespace.list_children(tags)) == 30
    assert len(store.listed) == before
    assert sum(1 for prefix, _ in store.listed if prefix.startswith(repo)) <= 12


async def test_a_split_listing_cut_by_its_budget_goes_on_where_it_stopped(
    moto: MotoServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3regfs.layout as layout

    monkeypatch.setattr(layout, "FLAT_LISTING_PAGES", 2)  # scaled down: 2,000 keys a flat listing
    digests = sorted(hashlib.sha256(str(i).encode()).hexdigest() for i in range(6000))
    _put_all(s3, bucket, [f"b/sha256/{d[:2]}/{d}/data" for d in digests])
    store = _Watched(make_store(moto.url, bucket))
    namespace = Namespace(store, "", metadata_ttl=60)
    sha = await namespace.resolve("b/sha256")
    store.most_in_flight = 0
    fanouts = await namespace.list_children(sha)
    assert [f.name for f in fanouts] == sorted({d[:2] for d in digests})
    found = []
    for fanout in fanouts:
        for blob in await namespace.list_children(fanout):
            data = await namespace.lookup(blob, "data")
            assert data.size == 9
            found.append(blob.name)
    assert found == digests
    # About a page per 1,000 keys and some ranges: not a listing per fan-out directory.
    assert len(store.listed) < 60, len(store.listed)
    assert store.most_in_flight >= 2


async def test_the_registry_s_fixed_directories_are_listed_in_one_round_trip(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    s3.put_object(
        Bucket=bucket, Key="r/docker/registry/v2/repositories/app/_layers/sha256/ab/link", Body=b"l"
    )
    s3.put_object(Bucket=bucket, Key="r/docker/registry/v2/blobs/sha256/ab/abc/data", Body=b"d")
    store = _Watched(make_store(moto.url, bucket))
    namespace = Namespace(store, "r/", metadata_ttl=60)
    repositories = await namespace.resolve("docker/registry/v2/repositories")
    assert [c.name for c in await namespace.list_children(repositories)] == ["app"]
    assert store.most_in_flight == 6  # the root and the five below it at once
    assert namespace.early_pages == 5 and namespace.early_pages_used == 4
    blobs = await namespace.resolve("docker/registry/v2/blobs")
    assert [c.name for c in await namespace.list_children(blobs)] == ["sha256"]
    assert len(store.listed) == 6 and namespace.early_pages_used == 5


def _on_a_clock(moto: MotoServer, bucket: str) -> tuple[_Watched, Namespace, list[float]]:
    """A namespace (metadata_ttl 60) whose clock the test moves: clock[0]."""
    store = _Watched(make_store(moto.url, bucket))
    namespace = Namespace(store, "", metadata_ttl=60)
    clock = [1000.0]
    namespace._now = lambda: clock[0]  # type: ignore[method-assign]
    return store, namespace, clock


async def test_an_early_page_older_than_the_ttl_or_a_change_is_not_used(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="docker/registry/v2/repositories/app/_layers/x/link", Body=b"l")
    store, namespace, clock = _on_a_clock(moto, bucket)
    await namespace.ensure_listed(namespace.root)
    assert namespace.early_pages == 5
    prefix = "docker/registry/v2/repositories/"
    early = namespace._early_pages[prefix]
    clock[0] += 59.9
    assert namespace._take_early_page(prefix) is not None
    namespace._early_pages[prefix] = early
    clock[0] += 0.2  # older than metadata_ttl
    assert namespace._take_early_page(prefix) is None
    # SIGHUP drops every early page.
    await namespace.ensure_listed(namespace.root)
    assert namespace._early_pages
    namespace.invalidate_all()
    assert not namespace._early_pages


async def test_an_early_page_does_not_undo_a_directory_made_here(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="docker/registry/v2/repositories/app/_layers/x/link", Body=b"l")
    store, namespace, clock = _on_a_clock(moto, bucket)
    v2 = await namespace.resolve("docker/registry/v2")  # the early pages of repositories, blobs wait
    repositories = await namespace.lookup(v2, "repositories")
    namespace.add_local(repositories, "pushed", is_dir=True)  # mkdir through the mount
    s3.delete_object(Bucket=bucket, Key="docker/registry/v2/repositories/app/_layers/x/link")
    names = [c.name for c in await namespace.list_children(repositories)]
    # Listed anew, not from the page asked before the mkdir: "app" is gone, "pushed" stays.
    assert names == ["pushed"]
    assert namespace.early_pages_used == 3


async def test_a_bucket_that_is_no_registry_pays_for_early_pages_once(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="data/file", Body=b"f")
    store, namespace, clock = _on_a_clock(moto, bucket)
    await namespace.ensure_listed(namespace.root)
    assert len(store.listed) == 6  # the root, and the registry's directories it might hold
    clock[0] += 61
    await namespace.ensure_listed(namespace.root)
    assert len(store.listed) == 7  # the root only: it has no "docker"
    assert [c.name for c in await namespace.list_children(namespace.root)] == ["data"]


async def test_a_range_cut_by_the_budget_before_later_ranges_ended_leaves_no_hole(
    moto: MotoServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3regfs.layout as layout

    monkeypatch.setattr(layout, "FLAT_LISTING_PAGES", 3)  # 3,000 keys a flat listing
    # Uniform digests, and a dense cluster the first page cannot foresee: the
    # range that holds it runs out of budget while the ranges after it end.
    uniform = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1500)]
    cluster = ["8" + hashlib.sha256(f"c{i}".encode()).hexdigest()[1:] for i in range(2500)]
    digests = sorted(set(uniform + cluster))
    _put_all(s3, bucket, [f"repo/_layers/sha256/{d}/link" for d in digests])
    store = _Watched(make_store(moto.url, bucket))
    namespace = Namespace(store, "", metadata_ttl=60)
    sha = await namespace.resolve("repo/_layers/sha256")
    assert namespace.list_ranges >= 2
    assert [c.name for c in await namespace.list_children(sha)] == digests
    for digest in digests[::50] + cluster[:20]:
        assert (await namespace.resolve(f"repo/_layers/sha256/{digest}/link")).size == 9


async def test_a_directory_the_cut_falls_in_is_read_on_from_the_cut(
    moto: MotoServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3regfs.layout as layout

    monkeypatch.setattr(layout, "FLAT_LISTING_PAGES", 2)  # scaled down: 2,000 keys a flat listing
    digests = sorted(hashlib.sha256(str(i).encode()).hexdigest() for i in range(5000))
    keys = [f"app/_layers/sha256/{d}/link" for d in digests]
    keys += [f"app/_manifests/tags/v{i}/current/link" for i in range(30)]
    _put_all(s3, bucket, keys)
    store = _Watched(make_store(moto.url, bucket))
    namespace = Namespace(store, "", metadata_ttl=60)
    app = await namespace.resolve("app")
    before = len(store.listed)
    # "app" is cut inside _layers/sha256; _layers and sha256 go on from there.
    sha = await namespace.resolve("app/_layers/sha256")
    assert [c.name for c in await namespace.list_children(sha)] == digests
    for digest in digests:
        child = await namespace.lookup(sha, digest)
        assert (await namespace.lookup(child, "link")).size == 9
    tags = await namespace.resolve("app/_manifests/tags")
    assert len(await namespace.list_children(tags)) == 30
    assert namespace.is_fresh(app)
    # Read once, in about a page per 1,000 keys and the ranges: reading the
    # 2,000 keys before each cut again (3 times) and the digest directories
    # one window after another took 20 requests.
    assert len(store.listed) - before <= 12, store.listed[before:]
    # Any change to the tree (a rename in app could put another directory at
    # the path the cut fell in) ends reading on from that cut.
    assert app.children is not None
    assert namespace._straddled(app.children["_layers"]) is not None
    namespace.changed(app)
    assert namespace._straddled(app.children["_layers"]) is None


async def test_a_name_found_after_the_cut_listing_is_kept_by_the_listings_that_go_on_from_it(
    moto: MotoServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3regfs.layout as layout

    monkeypatch.setattr(layout, "FLAT_LISTING_PAGES", 2)
    digests = sorted(hashlib.sha256(str(i).encode()).hexdigest() for i in range(5000))
    _put_all(s3, bucket, [f"r/app/_layers/sha256/{d}/link" for d in digests])
    store, namespace, clock = _on_a_clock(moto, bucket)
    sha = await namespace.resolve("r/app/_layers/sha256")
    assert len(await namespace.list_children(sha)) == 5000
    clock[0] += 61  # all stale
    app = await namespace.resolve("r/app")
    await namespace.ensure_listed(app)  # cut inside _layers/sha256 again
    assert app.children is not None
    layers = app.children["_layers"]
    assert layers.children is not None
    sha = layers.children["sha256"]
    # Another registry pushes a layer that sorts before the cut, and a stat
    # finds it by the one-name check of a stale directory.
    pushed = "0" * 63 + "1"
    s3.put_object(Bucket=bucket, Key=f"r/app/_layers/sha256/{pushed}/link", Body=b"123456789")
    found = await namespace._check_child(sha, pushed)
    # The listings that go on from the cut must not drop what that check found.
    await namespace.list_children(layers)
    names = [c.name for c in await namespace.list_children(sha)]
    assert pushed in names and len(names) == 5001
    assert sha.children is not None and sha.children[pushed] is found and found.attached


async def test_a_lookup_lists_a_stale_directory_too_big_for_a_flat_listing_one_level_only(
    moto: MotoServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walk past metadata_ttl looks names up in blobs/sha256: listing it
    again must not read its subtree's first flat pages (the walk is far past
    them), only its own children; a reader's listing still reads them."""
    import s3regfs.layout as layout

    monkeypatch.setattr(layout, "FLAT_LISTING_PAGES", 2)
    sha256 = "docker/registry/v2/blobs/sha256"  # blobs is listed one level at a time
    digests = sorted(hashlib.sha256(str(i).encode()).hexdigest() for i in range(2500))
    pushed = "f" * 64
    _put_all(s3, bucket, [f"{sha256}/{d[:2]}/{d}/data" for d in digests])
    store, namespace, clock = _on_a_clock(moto, bucket)
    sha = await namespace.resolve(sha256)
    fanout = sorted({d[:2] for d in digests})
    assert sorted(child.name for child in await namespace.list_children(sha)) == fanout
    assert any(delimiter is None for prefix, delimiter in store.listed if prefix == sha256 + "/")
    clock[0] += 61  # stale
    s3.put_object(Bucket=bucket, Key=f"{sha256}/ff/{pushed}/data", Body=b"x")
    # Another writer empties the first fan-out directory.
    for digest in digests:
        if digest[:2] == fanout[0]:
            s3.delete_object(Bucket=bucket, Key=f"{sha256}/{digest[:2]}/{digest}/data")
    before = len(store.listed)
    for name in fanout[-60:]:  # more names than one-name checks are worth
        assert (await namespace.lookup(sha, name)).is_dir
    since = store.listed[before:]
    # One-name checks, then one listing of its own children: no flat page.
    assert all(delimiter == "/" for _, delimiter in since), since
    assert sum(1 for prefix, _ in since if prefix == sha256 + "/") == 1
    assert len(since) <= 40, since
    # The names are those of S3 now; what was listed below stays as it was.
    assert sorted(child.name for child in await namespace.list_children(sha)) == fanout[1:]
    ff = await namespace.resolve(f"{sha256}/ff")
    assert pushed in {child.name for child in await namespace.list_children(ff)}
    # A reader's listing of it, stale again, reads the flat pages as before.
    clock[0] += 61
    before = len(store.listed)
    await namespace.ensure_listed(sha, reading=True)
    assert any(delimiter is None for prefix, delimiter in store.listed[before:] if prefix == sha256 + "/")


async def test_a_child_whose_keys_lie_past_the_bound_a_split_listing_stopped_at_is_listed(
    moto: MotoServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flat listing read as ranges stops at a range's bound, which can lie
    inside a child before any of its keys ("sha256/c6/c603..." with c6's
    first key c608...).  The delimited listing of the rest must still show
    that child: it starts after the child's name, not after the bound (a
    common prefix sorting before StartAfter is not shown by every store)."""
    import s3regfs.layout as layout

    monkeypatch.setattr(layout, "FLAT_LISTING_PAGES", 2)
    sha256 = "docker/registry/v2/blobs/sha256"
    digests = sorted(hashlib.sha256(str(i).encode()).hexdigest() for i in range(2500))
    _put_all(s3, bucket, [f"{sha256}/{d[:2]}/{d}/data" for d in digests])
    store, namespace, _ = _on_a_clock(moto, bucket)
    sha = await namespace.resolve(sha256)
    names = [child.name for child in await namespace.list_children(sha)]
    assert names == sorted({d[:2] for d in digests})
    # Every blob is found under it, each directory listed once at most.
    found = []
    for name in names:
        fanout = await namespace.lookup(sha, name)
        for digest in await namespace.list_children(fanout):
            found += [digest.name for _ in await namespace.list_children(digest)]
    assert sorted(found) == digests


async def test_listing_ahead_goes_to_the_next_namespace_after_the_last_part_of_a_cut_one(
    moto: MotoServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A namespace too big for one flat listing is read a part at a time as
    a walk goes through it; after its last part, the next namespace is
    listed ahead while the walk finishes this one."""
    import s3regfs.layout as layout

    monkeypatch.setattr(layout, "FLAT_LISTING_PAGES", 1)
    base = "docker/registry/v2/repositories"
    keys = [key for r in range(14) for key in _layer_links(f"{base}/ns0/r{r:02d}", 100)]
    keys += _layer_links(f"{base}/ns1/r00", 10)
    _put_all(s3, bucket, keys)
    store = make_store(moto.url, bucket)
    async with trio.open_nursery() as nursery:
        namespace = Namespace(store, "", metadata_ttl=60, nursery=nursery, list_ahead=True)
        repositories = await namespace.resolve(base)
        await namespace.ensure_listed(repositories, reading=True)
        assert repositories.children is not None
        ns0, ns1 = repositories.children["ns0"], repositories.children["ns1"]
        # The walk: each directory's entries read in name order, as find does.
        await namespace.ensure_listed(ns0, reading=True)
        assert ns0.children is not None
        for name in sorted(ns0.children):
            await trio.sleep(0.2)  # the walk's own time in the repository before
            await namespace.ensure_listed(ns0.children[name], reading=True)
        await trio.sleep(0.5)
        assert namespace.is_fresh(ns1), "the next namespace was not listed ahead"
        assert namespace.lists_ahead_used >= 2 and namespace.lists_ahead >= 3
        lists = store.request_counts["list_objects_v2"]
        await namespace.ensure_listed(ns1, reading=True)
        assert store.request_counts["list_objects_v2"] == lists
        nursery.cancel_scope.cancel()


async def test_listing_ahead_climbs_from_the_end_of_the_blob_store_into_the_first_namespace(
    moto: MotoServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the blob store's last part, a walk goes up to `repositories`
    and at once into its first namespace: that one is listed ahead while
    the walk finishes the blob store, not when the walk gets there."""
    import s3regfs.layout as layout

    monkeypatch.setattr(layout, "FLAT_LISTING_PAGES", 1)
    v2 = "docker/registry/v2"
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1200)]
    blobs = [f"{v2}/blobs/sha256/{digest[:2]}/{digest}/data" for digest in digests]
    links = [
        key for n in range(2) for r in range(20) for key in _layer_links(f"{v2}/repositories/ns{n}/r{r}", 50)
    ]
    _put_all(s3, bucket, blobs + links)
    store = make_store(moto.url, bucket)
    arrived: dict[str, bool] = {}
    async with trio.open_nursery() as nursery:
        namespace = Namespace(store, "", metadata_ttl=60, nursery=nursery, list_ahead=True)

        async def walk(directory: Node) -> None:
            """find's order: a directory's entries, then each subdirectory."""
            if directory.path == f"{v2}/repositories":
                ns0 = (directory.children or {}).get("ns0")
                arrived["ns0 fresh"] = ns0 is not None and namespace.is_fresh(ns0)
            await namespace.ensure_listed(directory, reading=True)
            assert directory.children is not None
            for name in sorted(directory.children):
                child = directory.children[name]
                if child.is_dir:
                    if "/blobs/sha256/" in child.path:
                        await trio.sleep(0.002)  # the walk's own time per directory
                    await walk(child)

        await walk(namespace.root)
        nursery.cancel_scope.cancel()
    assert arrived == {"ns0 fresh": True}, "the first namespace was not listed ahead"


class _ForgettingKernel:
    """The kernel's side of a walk: it holds every entry handed out, and
    forgets the entries a trim asked it to (with all below them) when
    forget_now() is called, as FORGET requests come after a trim."""

    def __init__(self) -> None:
        self.namespace: Namespace | None = None
        self.asked: list[tuple[Node, str]] = []

    def forget_entries_soon(self, entries: Sequence[tuple[Node, str]]) -> None:
        self.asked += entries

    def forget_pages_soon(self, node: Node) -> None:
        pass

    def forget_now(self) -> None:
        assert self.namespace is not None
        asked, self.asked = self.asked, []
        for parent, name in asked:
            top = (parent.children or {}).get(name)
            below = [top] if top is not None else []
            while below:
                node = below.pop()
                below += (node.children or {}).values()
                if node.nlookup:
                    self.namespace.forget(node.ino, node.nlookup)


async def test_a_trim_takes_what_a_walk_used_before_what_it_has_yet_to_reach(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    """Under the cache's bound a walk holds what it read (the kernel forgets
    it only when a trim asks), and what is listed ahead of it was listed
    before much of what it used since: a trim still takes the used names
    first, so nothing is listed twice."""
    base = "docker/registry/v2/repositories"
    keys = [key for n in range(24) for key in _layer_links(f"{base}/ns{n:02d}/app", 60)]
    _put_all(s3, bucket, keys)
    store = make_store(moto.url, bucket)
    kernel = _ForgettingKernel()
    async with trio.open_nursery() as nursery:
        namespace = Namespace(
            store, "", metadata_ttl=60, max_nodes=1000, kernel=kernel, nursery=nursery, list_ahead=True
        )
        kernel.namespace = namespace
        repositories = await namespace.resolve(base)
        await namespace.ensure_listed(repositories, reading=True)
        lists = store.request_counts["list_objects_v2"]

        async def walk(directory: Node) -> None:
            await namespace.ensure_listed(directory, reading=True)
            assert directory.children is not None
            for name in sorted(directory.children):
                child = directory.children[name]
                namespace.remember(child)  # readdirplus: the kernel holds it
                if child.is_dir:
                    await walk(child)
                    await trio.sleep(0.001)
            kernel.forget_now()

        for name in sorted(repositories.children or {}):
            await walk((repositories.children or {})[name])
            await trio.sleep(0.3)  # the listings ahead end
        nursery.cancel_scope.cancel()
    assert namespace.trims >= 3
    # Each namespace listed once (flat: one request), by the walk or ahead of it.
    assert store.request_counts["list_objects_v2"] - lists == 24, (
        namespace.lists_ahead,
        namespace.lists_ahead_used,
    )


async def test_a_flat_page_builds_the_same_tree_whatever_its_keys_share(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    # One flat page, in key order: keys that share directories with the key
    # before them (at every depth), climb back up, hide an object under a
    # directory of the same name, mark a directory, or cannot be named.
    bodies = {
        "t/a/b/c/1": b"1",
        "t/a/b/c/2": b"22",
        "t/a/b/d/3": b"333",
        "t/a/e": b"4444",
        "t/a/f/": b"",
        "t/a-/g": b"55555",
        "t/ab/h": b"666666",
        "t/k": b"hidden by k/",
        "t/k/z": b"7",
        "t/m/n/o/p/q": b"88",
        "t/m/n/r": b"999",
        "t/x//y": b"skipped",
    }
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    store = make_store(moto.url, bucket)
    namespace = Namespace(store, "", metadata_ttl=60)
    top = await namespace.lookup(namespace.root, "t")
    lists = store.request_counts["list_objects_v2"]

    async def tree(directory: Node, path: str) -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        for child in await namespace.list_children(directory):
            name = f"{path}/{child.name}"
            found[name] = None if child.is_dir else child.size
            if child.is_dir:
                found.update(await tree(child, name))
        return found

    assert await tree(top, "t") == {
        "t/a": None,
        "t/a/b": None,
        "t/a/b/c": None,
        "t/a/b/c/1": 1,
        "t/a/b/c/2": 2,
        "t/a/b/d": None,
        "t/a/b/d/3": 3,
        "t/a/e": 4,
        "t/a/f": None,
        "t/a-": None,
        "t/a-/g": 5,
        "t/ab": None,
        "t/ab/h": 6,
        "t/k": None,
        "t/k/z": 1,
        "t/m": None,
        "t/m/n": None,
        "t/m/n/o": None,
        "t/m/n/o/p": None,
        "t/m/n/o/p/q": 2,
        "t/m/n/r": 3,
        "t/x": None,
    }
    # The whole subtree from one flat page: no directory below it was listed.
    assert store.request_counts["list_objects_v2"] == lists + 1


async def test_an_expired_digest_directory_is_listed_with_a_page_of_its_siblings(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    """A reader's listing of an expired digest directory reads one page of its
    parent's subtree from it on, making the next siblings fresh; not while
    such pages take more than half the TTL, nor with metadata_ttl=0."""
    repository = "docker/registry/v2/repositories/app"
    _put_all(s3, bucket, _layer_links(repository, 1200))
    store, namespace, clock = _on_a_clock(moto, bucket)
    layers = await namespace.resolve(f"{repository}/_layers/sha256")
    digests = await namespace.list_children(layers)
    assert len(digests) == 1200 and all(namespace.is_fresh(d) for d in digests)
    clock[0] += 61  # every listing expired
    listed = len(store.listed)
    await namespace.ensure_listed(digests[10], reading=True)
    assert store.listed[listed:] == [(f"{repository}/_layers/sha256/", None)]  # one page, no delimiter
    fresh = [namespace.is_fresh(d) for d in digests]
    assert fresh[10:1009] == [True] * 999 and not any(fresh[:10]) and not any(fresh[1011:])
    # A directory before it is listed on its own way (a page from it too).
    listed = len(store.listed)
    await namespace.ensure_listed(digests[3], reading=True)
    assert len(store.listed) - listed == 1 and namespace.is_fresh(digests[4])
    # Pages slower than half the TTL: each directory on its own, for a TTL.
    clock[0] += 61

    async def slow_page(prefix: str, **kwargs: Any) -> Any:
        clock[0] += 31
        return await _Watched.list_page(store, prefix, **kwargs)

    store.list_page = slow_page  # type: ignore[method-assign]
    listed = len(store.listed)
    await namespace.ensure_listed(digests[100], reading=True)  # a page, 31 s long
    assert store.listed[listed:] == [(f"{repository}/_layers/sha256/", None)]
    await namespace.ensure_listed(digests[1150], reading=True)  # past that page
    assert store.listed[listed + 1][0] == f"{repository}/_layers/sha256/{digests[1150].name}/"
    # metadata_ttl=0: never a page for a directory of one file.
    zero = Namespace(_Watched(make_store(moto.url, bucket)), "", metadata_ttl=0)
    layers = await zero.resolve(f"{repository}/_layers/sha256")
    first = (await zero.list_children(layers))[0]
    before = len(zero._store.listed)  # type: ignore[attr-defined]
    await zero.ensure_listed(first, reading=True)
    assert zero._store.listed[before][0] == f"{repository}/_layers/sha256/{first.name}/"  # type: ignore[attr-defined]
