# SPDX-License-Identifier: MIT
"""Failed writes through the real mount: an object changes only to a state
that every writer of it was told had been stored.

A write, truncate or fsync that fails (a full spool, S3 refusing an upload)
poisons the open file: every later write, fsync and close answers the error
again, nothing is stored, and S3 keeps exactly what it held before; the name
shows that state at once (no ghost of the lost data).
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faultproxy import FaultProxy, Rule, complete_upload, put_object, upload_part
from tests.util import MotoServer, body, fuse_test_marker, keys, mounted, open_uploads, rng_bytes

pytestmark = fuse_test_marker()

MiB = 1024 * 1024
OLD = rng_bytes(3_000_000, 1)
NEW = rng_bytes(3_000_000, 2)
ODD = "tag 'v1' ü,%2F x"


def spool_opts(endpoint_opts: list[str], spool: Path, limit: str = "1M") -> list[str]:
    spool.mkdir(exist_ok=True)
    return [*endpoint_opts, "-o", f"spooldir={spool},spoolmax={limit}"]


def os_errno(call: Any, *args: Any) -> int:
    """Run an os call; 0 if it succeeded, else its errno."""
    try:
        call(*args)
    except OSError as exc:
        return exc.errno or -1
    return 0


def write_all(fd: int, data: bytes, offset: int | None = None) -> int:
    """Write *data* in 128 KiB pieces (as cp does); 0 or the first errno."""
    for start in range(0, len(data), 128 * 1024):
        piece = data[start : start + 128 * 1024]
        if offset is None:
            code = os_errno(os.write, fd, piece)
        else:
            code = os_errno(os.pwrite, fd, piece, offset + start)
        if code:
            return code
    return 0


def test_full_spool_overwrite_keeps_the_old_object(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="x/good", Body=OLD)
    with mounted(
        tmp_path / "mnt", [*spool_opts(endpoint_opts, tmp_path / "spool"), bucket], check_clean=False
    ) as mount:
        target = mount.path / "x/good"
        fd = os.open(target, os.O_WRONLY | os.O_TRUNC)
        assert write_all(fd, NEW) == errno.ENOSPC
        # Poisoned: a write that would fit, fsync and close all fail again.
        assert os_errno(os.write, fd, b"small") == errno.ENOSPC
        assert os_errno(os.fsync, fd) == errno.ENOSPC
        assert os_errno(os.close, fd) == errno.ENOSPC
        # The name is the stored object again, at once.
        assert target.stat().st_size == len(OLD)
        assert target.read_bytes() == OLD
        assert body(s3, bucket, "x/good") == OLD
        # A new open starts afresh: the failure stays with the file that had it.
        target.write_bytes(b"small enough")
        assert target.read_bytes() == b"small enough"
    assert "the data written was NOT stored: spool full" in mount.stderr
    assert "more bytes needed" in mount.stderr
    assert body(s3, bucket, "x/good") == b"small enough"
    assert open_uploads(s3, bucket) == []


def test_full_spool_new_file_is_never_stored_and_leaves_no_ghost(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.write_bytes(NEW)
    with mounted(
        tmp_path / "mnt", [*spool_opts(endpoint_opts, tmp_path / "spool"), bucket], check_clean=False
    ) as mount:
        result = os.system(f"cp {source} {mount.path}/sp1 2>/dev/null")
        assert os.waitstatus_to_exitcode(result) == 1
        with pytest.raises(FileNotFoundError):
            (mount.path / "sp1").stat()
        assert "sp1" not in os.listdir(mount.path)
        # The same with the writer still holding the file open after the
        # failure: the kernel forgets the name in the background (a write may
        # not wait for the directory's lock), so promptly rather than at once.
        fd = os.open(mount.path / "sp2", os.O_WRONLY | os.O_CREAT, 0o644)
        assert write_all(fd, NEW) == errno.ENOSPC
        deadline = time.monotonic() + 5
        while (mount.path / "sp2").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (mount.path / "sp2").exists()
        assert os_errno(os.close, fd) == errno.ENOSPC
        with pytest.raises(FileNotFoundError):  # after the failed close: at once
            (mount.path / "sp2").stat()
        assert os.listdir(tmp_path / "spool") == []
    assert keys(s3, bucket) == []
    assert open_uploads(s3, bucket) == []


def test_full_spool_append_random_write_and_truncate_keep_the_object(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    small = rng_bytes(100_000, 3)
    s3.put_object(Bucket=bucket, Key="append", Body=small)
    s3.put_object(Bucket=bucket, Key="random", Body=OLD)
    s3.put_object(Bucket=bucket, Key="cut-open", Body=OLD)
    s3.put_object(Bucket=bucket, Key="cut-path", Body=OLD)
    with mounted(
        tmp_path / "mnt", [*spool_opts(endpoint_opts, tmp_path / "spool"), bucket], check_clean=False
    ) as mount:
        # An append that outgrows the spool.
        fd = os.open(mount.path / "append", os.O_WRONLY | os.O_APPEND)
        assert write_all(fd, NEW) == errno.ENOSPC
        assert os_errno(os.close, fd) == errno.ENOSPC
        # A small write in the middle: it fits, but the commit must bring the
        # rest of the object into the spool, which does not fit.
        fd = os.open(mount.path / "random", os.O_WRONLY)
        assert os_errno(os.pwrite, fd, b"changed", 1000) == 0
        assert os_errno(os.close, fd) == errno.ENOSPC
        # Truncation below the object's size: the same, open and by path.
        fd = os.open(mount.path / "cut-open", os.O_RDWR)
        assert os_errno(os.ftruncate, fd, 2_000_000) == 0
        assert os_errno(os.close, fd) == errno.ENOSPC
        assert os_errno(os.truncate, mount.path / "cut-path", 2_000_000) == errno.ENOSPC
        for name in ("random", "cut-open", "cut-path"):
            assert (mount.path / name).stat().st_size == len(OLD), name
        assert (mount.path / "append").stat().st_size == len(small)
        # Sparse writes cost only their bytes: 10 bytes at 100 MiB fit in 1M.
        fd = os.open(mount.path / "sparse", os.O_WRONLY | os.O_CREAT, 0o644)
        assert os_errno(os.pwrite, fd, b"0123456789", 100 * MiB) == 0
        assert os_errno(os.pwrite, fd, b"abc", 5 * MiB) == 0
        os.close(fd)
        assert (mount.path / "sparse").stat().st_size == 100 * MiB + 10
    assert body(s3, bucket, "append") == small
    assert body(s3, bucket, "random") == OLD
    assert body(s3, bucket, "cut-open") == OLD
    assert body(s3, bucket, "cut-path") == OLD
    sparse = body(s3, bucket, "sparse")
    assert len(sparse) == 100 * MiB + 10 and sparse[5 * MiB : 5 * MiB + 3] == b"abc"
    assert sparse[-10:] == b"0123456789" and sparse[:MiB] == bytes(MiB)
    assert open_uploads(s3, bucket) == []


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[FaultProxy]:
    server = FaultProxy(moto.port, seed=10).start()
    yield server
    server.stop()


@pytest.mark.parametrize("failing", ["upload_part", "complete"])
def test_a_failed_fsync_poisons_the_file_even_after_s3_recovers(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path, failing: str
) -> None:
    old = rng_bytes(7 * MiB, 40)
    s3.put_object(Bucket=bucket, Key="blob", Body=old)
    options = f"regionendpoint={proxy.url},region=us-east-1,chunksize=5242880,maxretries=1"
    with mounted(tmp_path / "mnt", ["-o", options, bucket], check_clean=False) as mount:
        target = mount.path / "blob"
        target.stat()
        proxy.rules = [Rule(upload_part if failing == "upload_part" else complete_upload, status=500)]
        fd = os.open(target, os.O_WRONLY | os.O_TRUNC)
        first = write_all(fd, rng_bytes(12 * MiB, 41))
        assert first in (0, errno.EIO)  # a part may fail while the writer goes on
        assert os_errno(os.fsync, fd) == errno.EIO
        proxy.rules = []  # S3 answers again: the lost data must still not be stored
        assert os_errno(os.write, fd, b"more") == errno.EIO
        assert os_errno(os.fsync, fd) == errno.EIO
        assert os_errno(os.close, fd) == errno.EIO
        assert target.stat().st_size == len(old)
        assert target.read_bytes() == old
    assert keys(s3, bucket) == ["blob"]
    assert body(s3, bucket, "blob") == old
    assert open_uploads(s3, bucket) == []
    assert "the data written was NOT stored" in mount.stderr


def test_a_failed_close_leaves_no_ghost_and_answers_eio(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="old", Body=b"old bytes")
    options = f"regionendpoint={proxy.url},region=us-east-1,maxretries=0"
    with mounted(tmp_path / "mnt", ["-o", options, bucket], check_clean=False) as mount:
        assert (mount.path / "old").stat().st_size == 9
        # S3 answers 404 (NoSuchBucket/NoSuchUpload-like) to the PUT: close() is EIO, not ENOENT.
        proxy.rules = [Rule(put_object, status=404, code="NoSuchKey")]
        for name in ("new", "old"):
            fd = os.open(mount.path / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            assert os_errno(os.write, fd, b"never stored, longer than before") == 0
            assert os_errno(os.close, fd) == errno.EIO, name
        proxy.rules = []
        with pytest.raises(FileNotFoundError):
            os.stat(mount.path / "new")
        assert (mount.path / "old").stat().st_size == 9
        assert (mount.path / "old").read_bytes() == b"old bytes"
    assert keys(s3, bucket) == ["old"] and body(s3, bucket, "old") == b"old bytes"


def test_a_full_disk_under_the_spool_and_two_writers_of_one_file(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    """No spoolmax: the disk itself fills (a 2 MiB tmpfs).  Two handles write
    one file; one write fails, so neither close may store anything."""
    spool = tmp_path / "tiny-disk"
    spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(spool)], check=True)
    try:
        s3.put_object(Bucket=bucket, Key="shared", Body=OLD)
        with mounted(
            tmp_path / "mnt", [*endpoint_opts, "-o", f"spooldir={spool}", bucket], check_clean=False
        ) as mount:
            first = os.open(mount.path / "shared", os.O_WRONLY | os.O_TRUNC)
            second = os.open(mount.path / "shared", os.O_WRONLY)
            assert write_all(first, b"x" * 100_000) == 0
            assert write_all(second, NEW, 100_000) == errno.ENOSPC  # the disk is full
            assert os_errno(os.write, first, b"more") == errno.ENOSPC  # the same file: poisoned
            assert os_errno(os.close, second) == errno.ENOSPC
            assert os_errno(os.close, first) == errno.ENOSPC
            assert (mount.path / "shared").read_bytes() == OLD
            # The disk's space came back with the files' spools.
            (mount.path / "after").write_bytes(rng_bytes(MiB, 9))
        assert body(s3, bucket, "shared") == OLD
        assert body(s3, bucket, "after") == rng_bytes(MiB, 9)
        assert "No space left on device" in mount.stderr
    finally:
        subprocess.run(["umount", str(spool)], check=False)


def test_odd_names_and_a_rename_after_a_failure(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    small = rng_bytes(500_000, 8)
    options = [*spool_opts(endpoint_opts, tmp_path / "spool"), bucket]
    with mounted(tmp_path / "mnt", options, check_clean=False) as mount:
        (mount.path / ODD).write_bytes(small)
        fd = os.open(mount.path / ODD, os.O_WRONLY | os.O_TRUNC)
        assert write_all(fd, NEW) == errno.ENOSPC
        # Renamed while its writer is poisoned: the stored object moves, whole.
        os.rename(mount.path / ODD, mount.path / "moved")
        assert os_errno(os.close, fd) == errno.ENOSPC
        assert (mount.path / "moved").read_bytes() == small
    assert keys(s3, bucket) == ["moved"] and body(s3, bucket, "moved") == small
    assert f"{ODD!r}: the data written was NOT stored" in mount.stderr
