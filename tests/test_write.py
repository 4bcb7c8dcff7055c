# SPDX-License-Identifier: MIT
"""Writing through the real mount: the registry driver's conformance cases, run
through FUSE against moto_server, and the S3 requests they cost."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.util import body, fuse_test_marker, keys, mounted, open_uploads, rng_bytes, spawn, wait_for_mount

pytestmark = fuse_test_marker()

MiB = 1024 * 1024
SMALL_CHUNKS = ["-o", "chunksize=5242880,multipartcopythresholdsize=5242880,multipartcopychunksize=5242880"]


def test_small_files_are_one_put_each(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    one_mib = rng_bytes(MiB)
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        (mount.path / "one").write_bytes(b"x")
        (mount.path / "dir/sub").mkdir(parents=True)
        (mount.path / "dir/sub/mib").write_bytes(one_mib)
        assert (mount.path / "dir/sub/mib").read_bytes() == one_mib
        assert (mount.path / "dir/sub/mib").stat().st_size == MiB
    assert body(s3, bucket, "one") == b"x"
    assert body(s3, bucket, "dir/sub/mib") == one_mib
    assert sorted(keys(s3, bucket)) == ["dir/sub/mib", "one"]  # no "dir/" markers
    head = s3.head_object(Bucket=bucket, Key="one")
    assert head["ContentType"] == "application/octet-stream"
    counts = mount.request_counts()
    assert counts["put_object"] == 2 and "create_multipart_upload" not in counts


def test_multipart_file_in_chunksize_parts(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    data = rng_bytes(12 * MiB + 3)
    source = tmp_path / "src"
    source.write_bytes(data)
    with mounted(tmp_path / "mnt", [*endpoint_opts, *SMALL_CHUNKS, bucket]) as mount:
        subprocess.run(["cp", str(source), str(mount.path / "big")], check=True)
        assert hashlib.sha256((mount.path / "big").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert body(s3, bucket, "big") == data
    counts = mount.request_counts()
    assert counts["create_multipart_upload"] == 1 and counts["upload_part"] == 3
    assert counts["complete_multipart_upload"] == 1 and "put_object" not in counts
    parts = s3.head_object(Bucket=bucket, Key="big", PartNumber=1)["ContentLength"]
    assert parts == 5 * MiB  # every part but the last is exactly chunksize
    assert open_uploads(s3, bucket) == []


def test_empty_file_created_and_closed_is_an_empty_object(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        (mount.path / "empty").touch()
        assert (mount.path / "empty").stat().st_size == 0
    assert body(s3, bucket, "empty") == b""


def test_registry_filesystem_driver_pattern_costs_one_put(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        path = mount.path / "repositories/app/_manifests/tags/v1/current/link"
        path.parent.mkdir(parents=True)
        # Distribution 2.8's filesystem driver, traced: open, ftruncate(0), write, fsync, fsync, close.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        os.ftruncate(fd, 0)
        os.write(fd, b"sha256:" + b"a" * 64)
        os.fsync(fd)
        assert body(s3, bucket, "repositories/app/_manifests/tags/v1/current/link") == b"sha256:" + b"a" * 64
        os.fsync(fd)
        os.close(fd)
        # An upload file reopened without O_APPEND, positioned at the end, fsynced unchanged.
        fd = os.open(path, os.O_WRONLY)
        assert os.lseek(fd, 0, os.SEEK_END) == 71
        os.fsync(fd)
        os.close(fd)
        # Rewriting the tag: the old content stays readable in S3 until the commit.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        os.ftruncate(fd, 0)
        assert body(s3, bucket, "repositories/app/_manifests/tags/v1/current/link") == b"sha256:" + b"a" * 64
        os.write(fd, b"sha256:" + b"b" * 64)
        os.fsync(fd)
        os.close(fd)
    assert body(s3, bucket, "repositories/app/_manifests/tags/v1/current/link") == b"sha256:" + b"b" * 64
    assert mount.request_counts()["put_object"] == 2


@pytest.mark.parametrize("first_size", [100, 6 * MiB])
def test_append_in_several_sessions(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path, first_size: int
) -> None:
    first, second, third = rng_bytes(first_size, 1), rng_bytes(3000, 2), rng_bytes(6 * MiB + 5, 3)
    with mounted(tmp_path / "mnt", [*endpoint_opts, *SMALL_CHUNKS, bucket]) as mount:
        path = mount.path / "stream"
        path.write_bytes(first)
        with open(path, "ab") as f:
            f.write(second)
        with open(path, "r+b") as f:  # reopened, written at the end: the append path too
            f.seek(0, os.SEEK_END)
            f.write(third)
        assert path.read_bytes() == first + second + third
    assert body(s3, bucket, "stream") == first + second + third
    counts = mount.request_counts()
    if first_size >= 5 * MiB:
        assert counts["upload_part_copy"] >= 1  # the existing object reused server-side
    assert open_uploads(s3, bucket) == []


def test_zero_byte_file_then_append(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        (mount.path / "z").write_bytes(b"")
        assert body(s3, bucket, "z") == b""
        with open(mount.path / "z", "ab") as f:
            f.write(b"appended")
    assert body(s3, bucket, "z") == b"appended"


def test_overwrite_with_shorter_content(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        (mount.path / "f").write_bytes(b"long content here")
        (mount.path / "f").write_bytes(b"short")
        assert (mount.path / "f").read_bytes() == b"short"
    assert body(s3, bucket, "f") == b"short"


def test_overwrite_in_the_middle_holes_and_truncate(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    original = rng_bytes(7 * MiB + 11)
    s3.put_object(Bucket=bucket, Key="f", Body=original)
    expected = bytearray(original)
    with mounted(tmp_path / "mnt", [*endpoint_opts, *SMALL_CHUNKS, bucket]) as mount:
        path = mount.path / "f"
        with open(path, "r+b") as f:
            f.seek(MiB)
            f.write(b"middle")
            expected[MiB : MiB + 6] = b"middle"
            f.seek(len(original) + 100)  # a hole, then data
            f.write(b"tail")
            expected += bytes(100) + b"tail"
            f.flush()
            assert path.read_bytes() == bytes(expected)  # readable before the commit
        assert body(s3, bucket, "f") == bytes(expected)
        os.truncate(path, 3 * MiB)  # truncate(2) of a closed file: takes effect now
        assert body(s3, bucket, "f") == bytes(expected[: 3 * MiB])
        with open(path, "r+b") as f:
            f.truncate(4 * MiB)  # extended with zeros
        assert body(s3, bucket, "f") == bytes(expected[: 3 * MiB]) + bytes(MiB)
    assert open_uploads(s3, bucket) == []


def test_reads_see_uncommitted_writes(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    data = rng_bytes(11 * MiB)
    with mounted(tmp_path / "mnt", [*endpoint_opts, *SMALL_CHUNKS, bucket]) as mount:
        path = mount.path / "growing"
        with open(path, "wb") as f:
            f.write(data)
            f.flush()  # to the kernel, not a commit: nothing in S3 yet
            assert keys(s3, bucket) == []
            assert path.stat().st_size == len(data)
            with open(path, "rb") as reader:
                assert reader.read() == data
            assert os.listdir(mount.path) == ["growing"]
        assert body(s3, bucket, "growing") == data


def test_unlink_rmdir_and_directories(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="d/only", Body=b"1")
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        m = mount.path
        with pytest.raises(IsADirectoryError):
            os.unlink(m / "d")
        with pytest.raises(OSError) as info:
            os.rmdir(m / "d")
        assert info.value.errno == errno.ENOTEMPTY
        os.unlink(m / "d/only")
        assert keys(s3, bucket) == []
        assert (m / "d").is_dir() and os.listdir(m / "d") == []  # stays until rmdir
        os.rmdir(m / "d")
        assert not (m / "d").exists()
        (m / "a/b/c").mkdir(parents=True)
        assert (m / "a/b/c").is_dir() and keys(s3, bucket) == []  # in memory only
        with pytest.raises(FileExistsError):
            (m / "a/b").mkdir()
        (m / "a/b/c/file").write_bytes(b"x")
        assert keys(s3, bucket) == ["a/b/c/file"]
        # Go's os.RemoveAll relies on unlink -> EISDIR and rmdir -> ENOTEMPTY.
        subprocess.run(["rm", "-r", str(m / "a")], check=True)
        assert keys(s3, bucket) == [] and not (m / "a").exists()


def test_recursive_delete_leaves_siblings(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    for key in ("a/1", "a/sub/2", "ab/3", "a.x/4", "a-b"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        subprocess.run(["rm", "-r", str(mount.path / "a")], check=True)
    assert sorted(keys(s3, bucket)) == ["a-b", "a.x/4", "ab/3"]


def renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, bytes(old), at_fdcwd, bytes(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_rename_files(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    big = rng_bytes(12 * MiB)
    s3.put_object(Bucket=bucket, Key="small", Body=b"small data")
    s3.put_object(Bucket=bucket, Key="big", Body=big)
    s3.put_object(Bucket=bucket, Key="victim", Body=b"old")
    with mounted(tmp_path / "mnt", [*endpoint_opts, *SMALL_CHUNKS, bucket]) as mount:
        m = mount.path
        os.rename(m / "small", m / "renamed")
        os.rename(m / "big", m / "big2")
        assert (m / "big2").read_bytes() == big
        with pytest.raises(OSError) as info:
            renameat2(m / "renamed", m / "victim", 1)  # RENAME_NOREPLACE
        assert info.value.errno == errno.EEXIST
        with pytest.raises(OSError) as info:
            renameat2(m / "renamed", m / "victim", 2)  # RENAME_EXCHANGE
        assert info.value.errno == errno.EINVAL
        os.rename(m / "renamed", m / "victim")  # over an existing file
        with pytest.raises(FileNotFoundError):
            os.rename(m / "missing", m / "victim")
        assert (m / "victim").read_bytes() == b"small data"
    assert sorted(keys(s3, bucket)) == ["big2", "victim"]
    assert body(s3, bucket, "big2") == big and body(s3, bucket, "victim") == b"small data"
    counts = mount.request_counts()
    assert counts["copy_object"] == 2 and counts["upload_part_copy"] == 3  # 12 MiB in 5 MiB copy parts


def test_rename_directory(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    objects = {f"src/{i}/f": rng_bytes(100, i) for i in range(5)} | {
        "src/big": rng_bytes(6 * MiB),
        "srcx": b"sibling",
    }
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    with mounted(tmp_path / "mnt", [*endpoint_opts, *SMALL_CHUNKS, bucket]) as mount:
        (mount.path / "src/empty-local").mkdir()
        os.rename(mount.path / "src", mount.path / "dst")
        assert sorted(os.listdir(mount.path / "dst")) == ["0", "1", "2", "3", "4", "big", "empty-local"]
        assert (mount.path / "dst/3/f").read_bytes() == objects["src/3/f"]
    expected = {
        key.replace("src/", "dst/", 1): data for key, data in objects.items() if key.startswith("src/")
    }
    assert sorted(keys(s3, bucket)) == sorted([*expected, "srcx"])
    for key, data in expected.items():
        assert body(s3, bucket, key) == data
    assert mount.request_counts()["delete_objects"] == 1


def test_concurrent_writers_and_readers(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    payloads = {f"w/{i:02d}": rng_bytes(50_000 + i * 1000, i) for i in range(32)}
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        (mount.path / "w").mkdir()

        def write(item: tuple[str, bytes]) -> None:
            (mount.path / item[0]).write_bytes(item[1])

        with ThreadPoolExecutor(32) as pool:
            list(pool.map(write, payloads.items()))
        big = rng_bytes(8 * MiB, 99)
        (mount.path / "shared").write_bytes(big)
        rng = random.Random(5)
        offsets = [rng.randrange(len(big)) for _ in range(10)]

        def read_at(offset: int) -> bool:
            with open(mount.path / "shared", "rb") as f:
                f.seek(offset)
                return f.read(65536) == big[offset : offset + 65536]

        with ThreadPoolExecutor(10) as pool:
            assert all(pool.map(read_at, offsets))
    for key, data in payloads.items():
        assert body(s3, bucket, key) == data


def test_a_thousand_files_written_in_one_directory(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    source = tmp_path / "tree"
    source.mkdir()
    for i in range(1001):
        (source / f"f{i:04d}").write_bytes(str(i).encode())
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        subprocess.run(["cp", "-r", str(source), str(mount.path / "tree")], check=True)
        assert len(os.listdir(mount.path / "tree")) == 1001
    assert len(keys(s3, bucket, "tree/")) == 1001
    assert body(s3, bucket, "tree/f0500") == b"500"


def test_attributes_links_and_cp_archive(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub/file").write_bytes(b"content")
    os.chmod(source / "sub/file", 0o640)
    os.utime(source / "sub/file", (1_600_000_000, 1_600_000_000))
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        subprocess.run(["cp", "-a", str(source), str(mount.path / "copy")], check=True)
        st = (mount.path / "copy/sub/file").stat()
        assert st.st_mode & 0o777 == 0o640 and int(st.st_mtime) == 1_600_000_000
        with pytest.raises(PermissionError):
            os.symlink("target", mount.path / "link")
        with pytest.raises(PermissionError):
            os.link(mount.path / "copy/sub/file", mount.path / "hard")
    assert body(s3, bucket, "copy/sub/file") == b"content"


@pytest.mark.parametrize("keyid", ["", "arn:aws:kms:us-east-1:123456789012:key/s3regfs-test"])
def test_headers_on_written_appended_and_copied_objects(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path, keyid: str
) -> None:
    options = "encrypt=true,storageclass=STANDARD_IA,objectacl=public-read,chunksize=5242880,multipartcopythresholdsize=5242880,multipartcopychunksize=5242880"
    if keyid:
        options += f",keyid={keyid}"
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", options, bucket]) as mount:
        (mount.path / "small").write_bytes(b"x")
        (mount.path / "multi").write_bytes(rng_bytes(11 * MiB))
        with open(mount.path / "multi", "ab") as f:
            f.write(b"more")
        os.rename(mount.path / "small", mount.path / "small-copied")
        os.rename(mount.path / "multi", mount.path / "multi-copied")
    for key in ("small-copied", "multi-copied"):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == "application/octet-stream", key
        assert head["ServerSideEncryption"] == ("aws:kms" if keyid else "AES256"), key
        if keyid:
            assert head["SSEKMSKeyId"] == keyid, key
        assert head["StorageClass"] == "STANDARD_IA", key
        grants = s3.get_object_acl(Bucket=bucket, Key=key)["Grants"]
        assert any(
            g["Grantee"].get("URI", "").endswith("/AllUsers") and g["Permission"] == "READ" for g in grants
        ), key


def test_sigterm_commits_open_files(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket], check_clean=False) as mount:
        f = open(mount.path / "pending", "wb")
        f.write(b"written but not closed")
        f.flush()
        assert keys(s3, bucket) == []
        mount.process.send_signal(signal.SIGTERM)
        assert mount.process.wait(30) == 0
        with pytest.raises(OSError) as info:
            f.close()  # the file system is gone; the descriptor can only fail
        assert info.value.errno == errno.ENOTCONN
        assert not os.path.ismount(mount.path)  # detached, not left stale
        spawn(mount, [*endpoint_opts, bucket])
        wait_for_mount(mount)
    assert body(s3, bucket, "pending") == b"written but not closed"


def test_failed_upload_part_fails_close_and_leaves_nothing(
    moto: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    from tests.faultproxy import FaultProxy, Rule, upload_part

    proxy = FaultProxy(moto.port, rules=[Rule(upload_part, status=500)]).start()
    try:
        options = f"regionendpoint={proxy.url},region=us-east-1,chunksize=5242880,maxretries=1"
        with mounted(tmp_path / "mnt", ["-o", options, bucket], check_clean=False) as mount:
            with pytest.raises(OSError) as info, open(mount.path / "big", "wb") as f:
                f.write(rng_bytes(12 * MiB))
            assert info.value.errno == errno.EIO
            assert keys(s3, bucket) == []
            assert open_uploads(s3, bucket) == []  # ours, aborted
            # A PutObject failing once is retried and succeeds.
            proxy.rules = [
                Rule(lambda m, p: m == "PUT" and "uploadId" not in p, status=503, code="SlowDown", count=1)
            ]
            (mount.path / "small").write_bytes(b"ok")
        assert "the data written was NOT stored" in mount.stderr
        assert body(s3, bucket, "small") == b"ok"
        attempts = proxy.count(upload_part)
        assert attempts >= 2 and attempts % 2 == 0  # 1 + maxretries for every part tried
    finally:
        proxy.stop()


def test_full_spool_answers_enospc(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    with mounted(
        tmp_path / "mnt", [*endpoint_opts, "-o", f"spooldir={spool},spoolmax=1M", bucket], check_clean=False
    ) as mount:
        with pytest.raises(OSError) as info, open(mount.path / "too-big", "wb") as f:
            f.write(rng_bytes(2 * MiB))
        assert info.value.errno == errno.ENOSPC
        (mount.path / "fits").write_bytes(rng_bytes(512 * 1024))  # the space came back
        assert os.listdir(spool) == []  # spool files are unlinked at once
    assert body(s3, bucket, "fits") == rng_bytes(512 * 1024)
    # Nothing of a file whose write failed is stored (not even a prefix).
    assert keys(s3, bucket) == ["fits"]


def test_many_writers_share_one_write_memory_budget(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    payloads = {f"p{i}": rng_bytes(16 * MiB + i, i) for i in range(4)}
    budget = 12 * MiB
    with mounted(
        tmp_path / "mnt", [*endpoint_opts, *SMALL_CHUNKS, "-o", f"write_memory={budget}", bucket]
    ) as mount:

        def write(item: tuple[str, bytes]) -> None:
            (mount.path / item[0]).write_bytes(item[1])

        with ThreadPoolExecutor(len(payloads)) as pool:
            list(pool.map(write, payloads.items()))
    for key, data in payloads.items():
        assert body(s3, bucket, key) == data
    assert 0 < mount.write_memory_peak() <= budget


def test_quick_reopens_while_a_release_commits(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        target = mount.path / "log"
        script = f"for i in $(seq 1 40); do echo line$i >> {target}; done"
        subprocess.run(["sh", "-c", script], check=True)
        expected = "".join(f"line{i}\n" for i in range(1, 41))
        assert target.read_text() == expected
    assert body(s3, bucket, "log") == expected.encode()


def test_rename_while_open_then_append(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    first = rng_bytes(6 * MiB, 4)
    with mounted(tmp_path / "mnt", [*endpoint_opts, *SMALL_CHUNKS, bucket]) as mount:
        (mount.path / "before").write_bytes(first)
        with open(mount.path / "before", "ab") as f:
            os.rename(mount.path / "before", mount.path / "after")
            f.write(b"appended after the rename")
        assert (mount.path / "after").read_bytes() == first + b"appended after the rename"
    assert keys(s3, bucket) == ["after"]
    assert body(s3, bucket, "after") == first + b"appended after the rename"


def test_failed_part_copy_of_an_append_keeps_the_object(
    moto: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    from tests.faultproxy import FaultProxy, Rule

    base = rng_bytes(6 * MiB, 7)
    s3.put_object(Bucket=bucket, Key="obj", Body=base)

    def first_part(method: str, path: str) -> bool:
        return method == "PUT" and "partNumber=1&" in path + "&" and "uploadId=" in path

    proxy = FaultProxy(moto.port, rules=[Rule(first_part, status=500, count=1)]).start()
    try:
        options = f"regionendpoint={proxy.url},region=us-east-1,chunksize=5242880,maxretries=0"
        # Appending more than a part starts the upload inside write(): its
        # first part, the server-side copy of the object, fails once. The data
        # is in the spool, so the writes succeed; the commit starts the upload again.
        with (
            mounted(tmp_path / "mnt", ["-o", options, bucket], check_clean=False) as mount,
            open(mount.path / "obj", "ab") as f,
        ):
            for _ in range(8):
                f.write(rng_bytes(MiB, 8))
            f.write(b"after the failure")
        assert body(s3, bucket, "obj") == base + rng_bytes(MiB, 8) * 8 + b"after the failure"
        assert open_uploads(s3, bucket) == []
    finally:
        proxy.stop()
