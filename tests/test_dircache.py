# SPDX-License-Identifier: MIT
"""Directories read without OPENDIR, their contents cached by the kernel
(-o dircache, the default with the pyfuse3 scripts/install.sh builds).

A second read within metadata_ttl reaches the daemon not at all; a listing
the kernel cached is never older than metadata_ttl (also for a directory
whose mtime was set by utimens), SIGHUP makes the kernel check again;
readers that interleave, stop early or outnumber the kept cursors all see
each name once; -o dircache=false opens directories as before.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from s3regfs.fs import kernel_skips_opendir
from tests.util import fuse_test_marker, mounted, read_stats

pytestmark = fuse_test_marker()

TAGS = "docker/registry/v2/repositories/app/_manifests/tags"


def stats(mountpoint: Path) -> dict[str, Any]:
    figures: dict[str, Any] = read_stats(mountpoint)
    return figures


def read_requests(mountpoint: Path) -> int:
    count: int = stats(mountpoint)["directories"]["read_requests"]
    return count


def listed_after(path: Path, name: str, within: float) -> float:
    """Seconds until *name* shows in ``os.listdir(path)``; fails after *within*."""
    started = time.monotonic()
    while name not in os.listdir(path):
        assert time.monotonic() - started < within, f"{name} not listed in {path} after {within} s"
        time.sleep(0.1)
    return time.monotonic() - started


def put_tag(s3: Any, bucket: str, name: str) -> None:
    s3.put_object(Bucket=bucket, Key=f"{TAGS}/{name}/current/link", Body=b"sha256:" + b"0" * 64)


def put_tags(s3: Any, bucket: str, count: int) -> list[str]:
    names = [f"tag-{n:05d}" for n in range(count)]
    for name in names:
        put_tag(s3, bucket, name)
    return names


def test_the_build_reads_directories_without_opendir() -> None:
    # scripts/install.sh builds pyfuse3 with scripts/patches/: the suite must
    # run the mode the product runs in.
    assert getattr(pyfuse3, "READDIR_INODE_WITHOUT_OPENDIR", False) is True
    assert kernel_skips_opendir(os.uname().release)
    assert [
        kernel_skips_opendir(r) for r in ("4.19.0-27-amd64", "5.0.21", "5.1.0", "6.1.0-28-cloud-amd64")
    ] == [
        False,
        False,
        True,
        True,
    ]


def test_a_second_read_is_the_kernels_and_a_change_shows_within_the_ttl(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    names = put_tags(s3, bucket, 40)
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", "metadata_ttl=2", bucket]) as mount:
        assert stats(mount.path)["directories"]["kernel_cache"] is True
        tags = mount.path / TAGS
        assert sorted(os.listdir(tags)) == names
        before = read_requests(mount.path)
        for _ in range(5):
            assert sorted(os.listdir(tags)) == names
        assert read_requests(mount.path) == before  # the kernel's copy
        # Past the TTL the copy is dropped and the directory read again; its
        # mtime stays while its names do (tar's "changed as we read it").
        mtime = tags.stat().st_mtime_ns
        time.sleep(2.5)
        assert sorted(os.listdir(tags)) == names
        assert read_requests(mount.path) > before
        assert tags.stat().st_mtime_ns == mtime
        before = read_requests(mount.path)

        put_tag(s3, bucket, "zz-new")
        s3.delete_object(Bucket=bucket, Key=f"{TAGS}/{names[0]}/current/link")
        waited = listed_after(tags, "zz-new", within=8)
        assert waited < 2 + 1.5, f"the kernel's copy outlived metadata_ttl: {waited:.1f} s"
        assert sorted(os.listdir(tags)) == [*names[1:], "zz-new"]
        assert read_requests(mount.path) > before
        assert tags.stat().st_mtime_ns > mtime  # its names changed


def test_a_directory_whose_mtime_was_set_is_checked_too(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    names = put_tags(s3, bucket, 3)
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", "metadata_ttl=1", bucket]) as mount:
        tags = mount.path / TAGS
        os.utime(tags, ns=(1_000_000_000, 1_000_000_000))
        assert sorted(os.listdir(tags)) == names
        put_tag(s3, bucket, "zz-new")
        listed_after(tags, "zz-new", within=6)
        assert tags.stat().st_mtime_ns == 1_000_000_000  # kept: the pages went instead


def test_sighup_makes_the_kernel_check_its_copy(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    names = put_tags(s3, bucket, 3)
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", "metadata_ttl=3600", bucket]) as mount:
        tags = mount.path / TAGS
        assert sorted(os.listdir(tags)) == names
        put_tag(s3, bucket, "zz-new")
        time.sleep(1)
        assert "zz-new" not in os.listdir(tags)  # an hour's TTL: neither cache looks
        mount.process.send_signal(signal.SIGHUP)
        listed_after(tags, "zz-new", within=10)


@pytest.mark.parametrize("dircache", ["true", "false"])
def test_interleaved_and_abandoned_readers_see_every_name_once(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path, dircache: str
) -> None:
    # 1,500 names take several READDIR requests (32 KiB each): two readers
    # interleave their requests; 300 readers stop after their first entries
    # (more than the 256 kept cursors); then the directory changes under a
    # reader that stopped midway.
    names = put_tags(s3, bucket, 1500)
    options = [*endpoint_opts, "-o", f"metadata_ttl=1,dircache={dircache}", bucket]
    with mounted(tmp_path / "mnt", options) as mount:
        assert stats(mount.path)["directories"]["kernel_cache"] is (dircache == "true")
        tags = mount.path / TAGS
        with os.scandir(tags) as first, os.scandir(tags) as second:
            seen_first: list[str] = []
            seen_second: list[str] = []
            for one, two in zip(first, second, strict=False):
                seen_first.append(one.name)
                seen_second.append(two.name)
            seen_first += [entry.name for entry in first]
            seen_second += [entry.name for entry in second]
        assert sorted(seen_first) == names and sorted(seen_second) == names

        abandoned = []
        for _ in range(300):
            iterator = os.scandir(tags)
            abandoned.append((iterator, next(iterator).name))
        assert stats(mount.path)["directories"]["readers"] <= 256
        time.sleep(1.2)  # the listing goes stale under the open readers
        put_tag(s3, bucket, "zz-new")
        for iterator, first_name in abandoned[-3:]:
            rest = [first_name, *(entry.name for entry in iterator)]
            assert len(rest) == len(set(rest)), "a name given twice"
            assert set(names) <= set(rest), "a name missing"
        for iterator, _ in abandoned:
            iterator.close()
        assert sorted(os.listdir(tags)) == sorted([*names, "zz-new"])
        if dircache == "true":
            # Readers that stopped early keep a cursor each, at most 256.
            assert stats(mount.path)["directories"]["readers"] <= 256


def test_a_copy_begun_by_a_reader_that_stopped_is_completed_by_the_next(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    # `ls | head` reads the first entries and stops: the kernel keeps a
    # partial copy, which the next reader completes only if its offsets are
    # the first one's (both read the same snapshot's cursor).
    names = put_tags(s3, bucket, 600)
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", "metadata_ttl=60", bucket]) as mount:
        tags = mount.path / TAGS
        with os.scandir(tags) as entries:
            next(entries)
        assert stats(mount.path)["directories"]["readers"] == 1
        assert sorted(os.listdir(tags)) == names  # from the daemon, completing the copy
        before = read_requests(mount.path)
        assert sorted(os.listdir(tags)) == names
        assert read_requests(mount.path) == before  # the kernel's copy, whole
