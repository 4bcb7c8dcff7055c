# SPDX-License-Identifier: MIT
"""-o cache: blob data kept by digest on local disk, shared by mounts."""

from __future__ import annotations

import errno
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.util import (
    MotoServer,
    blob_data_gets,
    bucket_requests,
    fuse_test_marker,
    idle_stats,
    mounted,
    put_random_blobs,
    settled_stats,
)

pytestmark = fuse_test_marker()

BLOBS = "docker/registry/v2/blobs/sha256"


def _put_blobs(s3: Any, bucket: str, count: int, seed: int = 1) -> dict[str, bytes]:
    """*count* blobs at their registry paths: path -> bytes."""
    return put_random_blobs(s3, bucket, count, seed=seed, sizes=(50_000, 1_500_000))


def _cache_stats(mountpoint: Path) -> dict[str, int]:
    return dict(settled_stats(mountpoint)["blob_cache"])


_blob_gets = blob_data_gets


def test_a_cache_shared_by_mounts_and_restarts(
    moto: MotoServer, s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    blobs = _put_blobs(s3, bucket, 20)
    cache = tmp_path / "cache"
    options = [*endpoint_opts, "-o", f"cache={cache}", bucket]
    with mounted(tmp_path / "a", options) as mount:
        for path, data in blobs.items():
            assert (mount.path / path).read_bytes() == data
        figures = idle_stats(mount.path)  # every chunk queued for the hasher gave its budget back
        stats = figures["blob_cache"]
        assert stats["fills"] == 20 and stats["size"] == sum(map(len, blobs.values())), stats
        metrics = (mount.path / ".s3regfs/metrics").read_text()
        assert "s3regfs_blob_cache_fills_total 20.0" in metrics
        gauge = re.search(r"^s3regfs_blob_cache_bytes (\S+)$", metrics, re.M)
        assert gauge is not None and float(gauge.group(1)) == stats["size"]
    assert not os.listdir(cache / "tmp")  # nothing half-filled left behind
    # Another mount of the same bucket with the same directory, and a
    # remount: every blob from the cache, not one GET of blob data.
    for again in ("b", "a"):
        seen = len(moto.request_lines())
        with mounted(tmp_path / again, options) as mount:
            for path, data in blobs.items():
                assert (mount.path / path).read_bytes() == data
            stats = _cache_stats(mount.path)
            assert stats["hits"] == 20 and stats["bytes_served"] == sum(map(len, blobs.values())), stats
        assert _blob_gets(moto, seen, bucket) == 0
        assert bucket_requests(moto.request_lines()[seen:], bucket)["GET"] == 0


def test_damaged_cache_files_are_fetched_again(
    moto: MotoServer, s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    blobs = _put_blobs(s3, bucket, 3, seed=2)
    cache = tmp_path / "cache"
    paths = list(blobs)
    with mounted(tmp_path / "m", [*endpoint_opts, "-o", f"cache={cache}", bucket]) as mount:
        for path in paths:
            (mount.path / path).read_bytes()
    cached = {
        path: cache / "blobs" / "sha256" / path.split("/")[-2][:2] / path.split("/")[-2] for path in paths
    }
    # A file cut short: found by its size.
    with open(cached[paths[0]], "r+b") as file:
        file.truncate(1000)
    # The same size, other bytes: found by its hash under -o verify.
    damaged = bytearray(cached[paths[1]].read_bytes())
    damaged[500] ^= 0xFF
    cached[paths[1]].write_bytes(bytes(damaged))
    seen = len(moto.request_lines())
    options = [*endpoint_opts, "-o", f"cache={cache},verify", bucket]
    with mounted(tmp_path / "m2", options, check_clean=False) as mount:
        for path, data in blobs.items():
            assert (mount.path / path).read_bytes() == data
        stats = _cache_stats(mount.path)
    assert _blob_gets(moto, seen, bucket) == 2  # the two damaged ones, fetched again
    assert stats["hits"] == 1 and stats["verification_failures"] == 1 and stats["fills"] == 2, stats
    for path, data in blobs.items():
        assert cached[path].read_bytes() == data  # filled again, right
    assert "does not match its digest: removed" in mount.stderr


def test_only_whole_verified_blobs_enter_and_the_size_is_held(
    moto: MotoServer, s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    blobs = _put_blobs(s3, bucket, 12, seed=3)
    # A blob whose bytes in S3 are not those of its digest.
    wrong = f"{BLOBS}/ab/ab{'0' * 62}/data"
    s3.put_object(Bucket=bucket, Key=wrong, Body=b"not what the digest says" * 1000)
    cache = tmp_path / "cache"
    bound = 3 * 1024 * 1024
    options = [*endpoint_opts, "-o", f"cache={cache},cache_size={bound}", bucket]
    with mounted(tmp_path / "m", options, check_clean=False) as mount:
        with open(mount.path / wrong, "rb") as file, pytest.raises(OSError) as caught:
            file.read()
        assert caught.value.errno == errno.EIO
        first = next(iter(blobs))
        with open(mount.path / first, "rb") as file:
            assert file.read(1000) == blobs[first][:1000]  # a partial read fills nothing
        sizes = []
        for path, data in blobs.items():
            assert (mount.path / path).read_bytes() == data
            sizes.append(_cache_stats(mount.path)["size"])
        stats = _cache_stats(mount.path)
    assert max(sizes) <= bound and stats["evictions"] > 0, (sizes, stats)
    on_disk = sum(p.stat().st_size for p in (cache / "blobs").rglob("*") if p.is_file())
    assert on_disk == stats["size"] <= bound
    assert not (cache / "blobs" / "sha256" / "ab" / f"ab{'0' * 62}").exists()
    assert not os.listdir(cache / "tmp")


def test_two_mounts_filling_one_blob_at_once_leave_one_good_file(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    blobs = _put_blobs(s3, bucket, 4, seed=4)
    cache = tmp_path / "cache"
    options = [*endpoint_opts, "-o", f"cache={cache}", bucket]
    with mounted(tmp_path / "a", options) as a, mounted(tmp_path / "b", options) as b:
        with ThreadPoolExecutor(8) as pool:
            reads = [pool.submit((mount.path / path).read_bytes) for path in blobs for mount in (a, b)]
            got = [future.result() for future in reads]
        assert got == [data for data in blobs.values() for _ in (a, b)]
    for path, data in blobs.items():
        hexdigest = path.split("/")[-2]
        assert (cache / "blobs" / "sha256" / hexdigest[:2] / hexdigest).read_bytes() == data
    assert not os.listdir(cache / "tmp")


def test_a_full_cache_disk_stops_filling_and_never_fails_a_read(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    blobs = _put_blobs(s3, bucket, 6, seed=5)
    tiny = tmp_path / "tiny-disk"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], check=True)
    try:
        options = [*endpoint_opts, "-o", f"cache={tiny},cache_size=100M", bucket]
        with mounted(tmp_path / "m", options, check_clean=False) as mount:
            for path, data in blobs.items():
                assert (mount.path / path).read_bytes() == data  # from S3, whatever the disk says
            stats = _cache_stats(mount.path)
        assert stats["fill_failures"] >= 1 and stats["fills"] <= 1, stats
        assert mount.stderr.count("cannot add to the blob cache") == 1
        assert not os.listdir(tiny / "tmp")  # no half-written file left
    finally:
        subprocess.run(["umount", str(tiny)], check=False)
