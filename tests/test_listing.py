# SPDX-License-Identifier: MIT
"""Listings through the real mount: a repository of thousands of links read as
key ranges at once, names no digest run foresees, changes made beside the
mount, and the registry's fixed directories asked for together."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.util import fuse_test_marker, mounted, read_stats

pytestmark = fuse_test_marker()

REPO = "docker/registry/v2/repositories/app"
#: Names between, before and after the digests of _layers/sha256.
ODD = [":x", "g0", "zz", "0", "\u00e9t\u00e9", "f\U0010ffffz", "-"]


def _digest(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _put(s3: Any, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=key.encode()[-20:]), keys))


def _bucket_files(s3: Any, bucket: str) -> list[str]:
    files = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        files += [f"{item['Key']} {item['Size']}" for item in page.get("Contents", [])]
    return sorted(files)


def _mount_files(mount: Path) -> list[str]:
    found = subprocess.run(
        [
            "find",
            str(mount),
            "-path",
            str(mount / ".s3regfs"),
            "-prune",
            "-o",
            "-type",
            "f",
            "-printf",
            "%P %s\n",
        ],
        capture_output=True,
        check=False,
    )
    assert found.returncode == 0 and not found.stderr, found.stderr[:2000]
    return sorted(found.stdout.decode("utf-8", "surrogateescape").splitlines())


@contextlib.contextmanager
def _another_writer(
    s3: Any, bucket: str, new_key: Callable[[int], str], gone_key: Callable[[int], str]
) -> Iterator[None]:
    """While the block runs, another writer beside the mount puts
    ``new_key(i)`` and deletes ``gone_key(i)`` for i = 0, 1, 2, ..."""
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            s3.put_object(Bucket=bucket, Key=new_key(i), Body=b"new")
            s3.delete_object(Bucket=bucket, Key=gone_key(i))
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()


def _walk_of_a_moving_bucket(path: Path) -> list[str]:
    """``find PATH -type f``: a name may be gone by the time find reaches it
    (as on any disk), nothing worse."""
    walk = subprocess.run(["find", str(path), "-type", "f"], capture_output=True, text=True)
    problems = [line for line in walk.stderr.splitlines() if "No such file or directory" not in line]
    assert not problems, problems[:5]
    return walk.stdout.splitlines()


def test_a_walk_of_split_listings_shows_the_bucket_and_its_changes(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    keys = [f"{REPO}/_layers/sha256/{_digest(i)}/link" for i in range(2600)]
    keys += [f"{REPO}/_layers/sha256/{name}/link" for name in ODD]
    keys += [f"{REPO}/_manifests/revisions/sha256/{_digest(-i)}/link" for i in range(1, 40)]
    keys += [f"{REPO}/_manifests/tags/v{i}/current/link" for i in range(20)]
    keys += ["docker/registry/v2/blobs/sha256/ab/ab01/data"]
    _put(s3, bucket, keys)
    with mounted(tmp_path / "m", [*endpoint_opts, "-o", "metadata_ttl=2", bucket]) as mount:
        assert _mount_files(mount.path) == _bucket_files(s3, bucket)
        stats = read_stats(mount.path)
        # The root's listing asked for the five directories below it at once,
        # and the walk used each.
        assert stats["cache"]["early_pages"] == stats["cache"]["early_pages_used"] == 5
        assert stats["cache"]["list_ranges"] >= 3  # the repository's rest, at once
        lists = stats["operations"]["list_objects_v2"]
        # 6 fixed directories, the repository's first page and its ranges.
        assert lists <= 6 + 1 + 16 + 4, lists
        # Another writer adds a link in the middle of the digests, and one
        # after everything, and deletes one: seen after metadata_ttl.
        middle = f"{REPO}/_layers/sha256/{'8' + '0' * 63}/link"
        _put(s3, bucket, [middle, f"{REPO}/_uploads/u1/startedat"])
        s3.delete_object(Bucket=bucket, Key=keys[100])
        time.sleep(2.2)
        files = _mount_files(mount.path)
        assert files == _bucket_files(s3, bucket)
        assert f"{middle} 20" in files and not any(line.startswith(keys[100]) for line in files)
        assert os.path.getsize(mount.path / f"{REPO}/_layers/sha256/f\U0010ffffz/link") == 20


def test_a_walk_slower_than_the_ttl_lists_expired_digest_directories_a_page_at_a_time(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    """The listing of a run of digest directories can expire while a walk is
    on its way through them (a walk slower than metadata_ttl, a loaded
    machine): the walk then lists them again a page of 1,000 keys at a time,
    not a request for each directory, and sees what changed meanwhile."""
    ttl = 4.0
    digests = sorted(_digest(i) for i in range(1500))
    _put(s3, bucket, [f"{REPO}/_layers/sha256/{digest}/link" for digest in digests])
    with mounted(tmp_path / "m", [*endpoint_opts, "-o", f"metadata_ttl={ttl:g}", bucket]) as mount:
        layers = mount.path / REPO / "_layers/sha256"
        # The repository is listed flat: every digest directory is fresh from now.
        assert (mount.path / REPO / "_layers").is_dir()
        listed_at = time.monotonic()
        time.sleep(ttl * 0.6)
        # Read while fresh: the kernel keeps these entries for a TTL from now,
        # so the walk below opens each directory without a lookup first.
        assert sorted(os.listdir(layers)) == digests
        # Beside the mount, meanwhile: a link rewritten, one removed.
        changed, removed = digests[700], digests[1200]
        s3.put_object(Bucket=bucket, Key=f"{REPO}/_layers/sha256/{changed}/link", Body=b"rewritten, longer")
        s3.delete_object(Bucket=bucket, Key=f"{REPO}/_layers/sha256/{removed}/link")
        time.sleep(max(0.0, listed_at + ttl + 0.3 - time.monotonic()))
        lists = read_stats(mount.path)["operations"]["list_objects_v2"]
        for digest in digests:
            if digest != removed:
                assert os.listdir(layers / digest) == ["link"], digest
                continue
            # Gone from S3: empty while the kernel still holds its entry, else gone.
            with contextlib.suppress(FileNotFoundError):
                assert os.listdir(layers / digest) == []
        spent = read_stats(mount.path)["operations"]["list_objects_v2"] - lists
        # 1,500 keys: pages of 1,000 from the directories where the walk (or
        # the listing ahead of it) met an expired one, and the removed one's
        # own listing: 10 here.  One request per directory would be 1,500
        # (339 were made before the walk outlived the kernel's entries).
        assert spent <= 20, spent
        assert (layers / changed / "link").stat().st_size == len(b"rewritten, longer")


def test_walks_listing_ahead_while_this_mount_and_another_writer_change_the_namespaces(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    """Namespaces are listed ahead of the walk (each on its own, 2 pages)
    while files are written into them through the mount and objects are put
    and deleted beside it: every walk finishes without an error other than a
    name gone meanwhile, what the mount wrote is in S3 whole and shown by
    every walk after its close, and after metadata_ttl the mount shows the
    bucket."""
    top = "docker/registry/v2/repositories"
    keys = [f"{top}/ns{n}/r{i:04}/_layers/link" for n in range(5) for i in range(1100)]
    _put(s3, bucket, keys)
    written: dict[str, bytes] = {}
    with mounted(tmp_path / "m", [*endpoint_opts, "-o", "metadata_ttl=1", bucket]) as mount:
        with _another_writer(
            s3,
            bucket,
            lambda i: f"{top}/ns{i % 5}/beside{i:04}/link",
            lambda i: keys[(i * 97) % len(keys)],
        ):
            for walk_number in range(3):
                # This mount writes into the namespaces the walk has yet to reach.
                for n in range(1, 5):
                    name = f"{top}/ns{n}/mine{walk_number}/data"
                    data = os.urandom(1000 + n)
                    (mount.path / name).parent.mkdir(parents=True, exist_ok=True)
                    (mount.path / name).write_bytes(data)
                    written[name] = data
                shown = {
                    line[len(str(mount.path)) + 1 :] for line in _walk_of_a_moving_bucket(mount.path / top)
                }
                assert len(shown) > 5000
                assert set(written) <= shown, sorted(set(written) - shown)
            stats = read_stats(mount.path)["cache"]
            assert stats["lists_ahead"] >= 3, stats
        time.sleep(1.2)
        assert _mount_files(mount.path) == _bucket_files(s3, bucket)
    for name, data in written.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == data


def test_a_walk_while_a_registry_pushes_and_deletes(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    keys = [f"{REPO}/_layers/sha256/{_digest(i)}/link" for i in range(2400)]
    _put(s3, bucket, keys)
    # A TTL several times what moto takes for a page of 1,000 keys (0.3 s
    # here, more while the writer runs): a listing that is stale when it
    # arrives would leave every step of the walk to list again.
    ttl = 3.0
    with mounted(tmp_path / "m", [*endpoint_opts, "-o", f"metadata_ttl={ttl:g}", bucket]) as mount:
        with _another_writer(
            s3,
            bucket,
            lambda i: f"{REPO}/_layers/sha256/{_digest(10_000 + i)}/link",
            lambda i: keys[(10_000 + i) % len(keys)],
        ):
            for _ in range(3):
                # Each walk sees some state of a moving bucket.
                assert len(_walk_of_a_moving_bucket(mount.path)) > 2000
        time.sleep(ttl + 0.2)
        assert _mount_files(mount.path) == _bucket_files(s3, bucket)


def test_the_request_loop_polls_for_a_walks_requests_and_still_runs_uploads(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    """-o busy_poll: a walk's requests are taken by polling (the stats count
    them), uploads through the mount during walks still finish (trio's loop
    gets its turns), and with busy_poll=0 every request is waited for."""
    keys = [f"{REPO}/_layers/sha256/{_digest(i)}/link" for i in range(1500)]
    _put(s3, bucket, keys)
    blobs = {f"up/{i}": os.urandom(7 * 1024 * 1024 + i) for i in range(3)}
    with mounted(tmp_path / "m", [*endpoint_opts, "-o", "chunksize=5242880", bucket]) as mount:
        stop = threading.Event()
        walks: list[int] = []

        def walk_until_stopped() -> None:
            while not stop.is_set():
                found = subprocess.run(["find", str(mount.path / REPO)], capture_output=True, check=True)
                walks.append(len(found.stdout.splitlines()))

        walker = threading.Thread(target=walk_until_stopped)
        walker.start()
        try:
            (mount.path / "up").mkdir()
            for name, data in blobs.items():
                (mount.path / name).write_bytes(data)  # close() waits for the multipart upload
        finally:
            stop.set()
            walker.join()
        assert walks and all(count == walks[0] for count in walks), walks
        stats = read_stats(mount.path)
        assert stats["request_loop"]["busy_poll_us"] == 50
        assert stats["request_loop"]["polled"] > 0 and stats["request_loop"]["after_waiting"] > 0, stats[
            "request_loop"
        ]
        assert _mount_files(mount.path) == _bucket_files(s3, bucket)
    for name, data in blobs.items():
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == data
    with mounted(tmp_path / "m2", [*endpoint_opts, "-o", "busy_poll=0", bucket]) as mount:
        assert _mount_files(mount.path) == _bucket_files(s3, bucket)
        stats = read_stats(mount.path)
        assert "request_loop" not in stats
