# SPDX-License-Identifier: MIT
"""Another writer changes the bucket beside the mount: boto3, a second mount.

A new open that meets a changed object reads the new one (or, within
metadata_ttl, the old one whole), never fails; a handle that has already
returned bytes of the old version answers ESTALE rather than mix versions; a
file deleted under an open handle answers ESTALE, not ENOENT.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from s3regfs.inode_cache import NEGATIVE_TTL
from tests.util import fuse_test_marker, mounted, rng_bytes

pytestmark = fuse_test_marker()

MiB = 1024 * 1024
LINK = "docker/registry/v2/repositories/app/_manifests/tags/v1/current/link"


def appears(path: Path, within: float = NEGATIVE_TTL * 3) -> os.stat_result:
    """stat() of a name another writer just made: a directory listed lately
    may not show it for NEGATIVE_TTL seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return path.stat()
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def digest_text(n: int) -> bytes:
    return f"sha256:{n:064x}".encode()


def test_a_new_open_after_a_remote_overwrite_reads_the_new_object(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key=LINK, Body=digest_text(1))
    with mounted(
        tmp_path / "mnt", [*endpoint_opts, "-o", "metadata_ttl=20", bucket], check_clean=False
    ) as mount:
        link = mount.path / LINK
        assert link.stat().st_size == 71  # the mount now knows its ETag
        s3.put_object(Bucket=bucket, Key=LINK, Body=digest_text(2))  # a retag
        for _ in range(3):
            assert link.read_bytes() == digest_text(2)
        # After a read the page cache may serve the old version within
        # metadata_ttl, whole; never an error, never a mix.
        s3.put_object(Bucket=bucket, Key=LINK, Body=digest_text(3))
        assert link.read_bytes() in (digest_text(2), digest_text(3))
        # New versions of other sizes: the kernel must not cut them at the old size.
        for name, new in (("longer", rng_bytes(300_000, 5)), ("shorter", b"short")):
            s3.put_object(Bucket=bucket, Key=name, Body=digest_text(4))
            assert appears(mount.path / name).st_size == 71
            s3.put_object(Bucket=bucket, Key=name, Body=new)
            assert (mount.path / name).read_bytes() == new
            assert (mount.path / name).stat().st_size == len(new)
    assert "changed in S3" in mount.stderr


def test_a_handle_that_returned_old_bytes_answers_estale_never_enoent(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    old = rng_bytes(8 * MiB, 6)
    for name in ("deleted", "overwritten", "deleted-before-read"):
        s3.put_object(Bucket=bucket, Key=name, Body=old)
    # A small read-ahead, so a read far ahead is a ranged GET of its own.
    options = [*endpoint_opts, "-o", "metadata_ttl=20,readahead=1M", bucket]
    with mounted(tmp_path / "mnt", options, check_clean=False) as mount:
        handles = {name: os.open(mount.path / name, os.O_RDONLY) for name in ("deleted", "overwritten")}
        for fd in handles.values():
            assert os.pread(fd, 4096, 0) == old[:4096]
        s3.delete_object(Bucket=bucket, Key="deleted")
        s3.put_object(Bucket=bucket, Key="overwritten", Body=rng_bytes(8 * MiB, 7))
        for name, fd in handles.items():
            with pytest.raises(OSError) as info:
                os.pread(fd, 4096, 7 * MiB)
            assert info.value.errno == errno.ESTALE, name
            os.close(fd)
        # Deleted after the open, before any read: nothing to serve, ESTALE too.
        fd = os.open(mount.path / "deleted-before-read", os.O_RDONLY)
        s3.delete_object(Bucket=bucket, Key="deleted-before-read")
        with pytest.raises(OSError) as info:
            os.pread(fd, 4096, 0)
        assert info.value.errno == errno.ESTALE
        os.close(fd)
        # A new open of the overwritten file reads the new version.
        assert (mount.path / "overwritten").read_bytes() == rng_bytes(8 * MiB, 7)
    assert "under an open file" in mount.stderr


def test_two_mounts_of_one_bucket(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    versions = [rng_bytes(size, seed) for seed, size in enumerate([1000, 6 * MiB + 5, 70, 2 * MiB], 10)]
    options = [*endpoint_opts, "-o", "metadata_ttl=20", bucket]
    with (
        mounted(tmp_path / "a", options, check_clean=False) as a,
        mounted(tmp_path / "b", options, check_clean=False) as b,
    ):
        (a.path / "f").write_bytes(versions[0])
        assert (b.path / "f").read_bytes() == versions[0]
        (a.path / "g").write_bytes(versions[0])
        assert appears(b.path / "g").st_size == len(versions[0])
        for version in versions[1:]:
            (a.path / "f").write_bytes(version)
            (a.path / "g").write_bytes(version)
            # Looked up, never read: B reads A's new version at once.
            assert (b.path / "g").read_bytes() == version
            # Read before: the new version, or the old one whole within the TTL.
            assert (b.path / "f").read_bytes() in (version, *versions)
        # Overwritten while B reads it: B's handle finishes its version or
        # answers ESTALE; it never returns a mix of two.
        with open(b.path / "g", "rb", buffering=0) as f:
            first = f.read(MiB)
            (a.path / "g").write_bytes(versions[1])
            try:
                rest = f.read()
                assert first + rest == versions[-1]
            except OSError as exc:
                assert exc.errno == errno.ESTALE
        assert (b.path / "g").read_bytes() == versions[1]
        # Deleted by A: B's next open does not find it (at the latest after the TTL).
        os.unlink(a.path / "f")
        with pytest.raises(OSError) as info:
            (b.path / "f").read_bytes()
        assert info.value.errno in (errno.ENOENT, errno.ESTALE)
