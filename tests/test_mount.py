# SPDX-License-Identifier: MIT
"""The real CLI, mounted through FUSE, against moto_server over HTTP."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import signal
import socket
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.util import (
    free_port,
    fuse_test_marker,
    mounted,
    read_stats,
    run_cli,
    spawn,
    start_moto,
    wait_for_mount,
)

pytestmark = fuse_test_marker()


def put_many(s3: Any, bucket: str, objects: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket=bucket, Key=item[0], Body=item[1]), objects.items()))


def find_files(root: Path) -> dict[str, int]:
    """Every regular file below *root* (relative path -> size), via find(1)."""
    out = subprocess.run(
        ["find", str(root), "-type", "f", "-printf", "%P\\t%s\\n"], check=True, capture_output=True, text=True
    ).stdout
    return {line.split("\t")[0]: int(line.split("\t")[1]) for line in out.splitlines()}


def digest_hex(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


REGISTRY_TREE = (
    {
        f"docker/registry/v2/blobs/sha256/{digest_hex(i)[:2]}/{digest_hex(i)}/data": f"blob {i}".encode()
        for i in range(3)
    }
    | {
        f"docker/registry/v2/repositories/library/app/_layers/sha256/{digest_hex(i)}/link": f"sha256:{digest_hex(i)}".encode()
        for i in range(3)
    }
    | {
        "docker/registry/v2/repositories/library/app/_manifests/tags/v1/current/link": f"sha256:{digest_hex(0)}".encode(),
    }
)


@pytest.mark.parametrize("root", ["", "/", "/a/b/", "registry-root"])
def test_find_shows_exactly_the_keys_under_the_root(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path, root: str
) -> None:
    prefix = root.strip("/") + "/" if root.strip("/") else ""
    put_many(s3, bucket, {prefix + key: body for key, body in REGISTRY_TREE.items()})
    # Keys outside the root must not show.
    s3.put_object(Bucket=bucket, Key="outside/file", Body=b"no")
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", f"rootdirectory={root}", bucket]) as mount:
        files = find_files(mount.path)
        expected = {key: len(body) for key, body in REGISTRY_TREE.items()}
        if not prefix:
            expected["outside/file"] = 2
        assert files == expected
        for key, body in REGISTRY_TREE.items():
            assert (mount.path / key).read_bytes() == body
        tag = mount.path / "docker/registry/v2/repositories/library/app/_manifests/tags/v1/current/link"
        assert tag.read_text() == f"sha256:{digest_hex(0)}"


def test_source_argument_root_and_listing_details(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    objects = {
        "r/a.a": b"1",
        "r/_.abc": b"22",
        "r/.abc": b"333",
        "r/a--b": b"4",
        "r/p/b/x": b"under b",
        "r/p/bc": b"bc file",
        "r/q/bc": b"only bc",
        "r/marker-dir/": b"",
        "r/empty": b"",
    }
    put_many(s3, bucket, objects)
    with mounted(tmp_path / "mnt", [*endpoint_opts, f"{bucket}:/r"]) as mount:
        m = mount.path
        assert sorted(os.listdir(m)) == sorted(
            [".abc", "_.abc", "a--b", "a.a", "empty", "marker-dir", "p", "q"]
        )
        assert (m / "a.a").read_bytes() == b"1" and (m / "_.abc").stat().st_size == 2
        assert (m / "p/b").is_dir() and (m / "p/b/x").read_bytes() == b"under b"
        assert (m / "p/bc").read_bytes() == b"bc file"
        # The driver's Stat would call q/b a directory because q/bc exists; we do not.
        assert not (m / "q/b").exists()
        assert (m / "marker-dir").is_dir() and os.listdir(m / "marker-dir") == []
        assert (m / "empty").stat().st_size == 0 and (m / "empty").read_bytes() == b""
        st = (m / "p/bc").stat()
        assert st.st_blocks == 1 and st.st_nlink == 1 and st.st_mode & 0o777 == 0o644
        assert st.st_uid == os.getuid()
        mtime = s3.head_object(Bucket=bucket, Key="r/p/bc")["LastModified"].timestamp()
        assert abs(st.st_mtime - mtime) < 2
        assert os.statvfs(m).f_namemax == 255


def test_more_than_a_thousand_entries(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    objects = {f"many/f{i:05d}": b"x" for i in range(1100)}
    objects |= {f"top{i:05d}": b"y" for i in range(1050)}  # the root is listed one level at a time
    objects |= {f"deep/sha256/{digest_hex(i)}/link": b"z" for i in range(1200)}
    put_many(s3, bucket, objects)
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        assert len(os.listdir(mount.path / "many")) == 1100
        assert len([n for n in os.listdir(mount.path) if n.startswith("top")]) == 1050
        assert len(os.listdir(mount.path / "deep/sha256")) == 1200
        assert len(find_files(mount.path)) == 3350


def test_keys_posix_cannot_name_are_skipped_with_a_warning(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    put_many(s3, bucket, {"x//y": b"1", "w/./z": b"2", "w/ok": b"3", "sp ace/%+#?\\": b"4"})
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket], check_clean=False) as mount:
        files = find_files(mount.path)
        assert files == {"w/ok": 1, "sp ace/%+#?\\": 1}
        assert (mount.path / "sp ace/%+#?\\").read_bytes() == b"4"
    assert "skipping key 'x//y'" in mount.stderr and "skipping key 'w/./z'" in mount.stderr
    assert "Traceback" not in mount.stderr


def test_read_only_mount_refuses_every_change_with_erofs(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    put_many(s3, bucket, {"d/f": b"data"})
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", "ro", bucket]) as mount:
        m = mount.path
        attempts = [
            lambda: open(m / "d/f", "wb"),
            lambda: open(m / "d/f", "ab"),
            lambda: open(m / "d/new", "wb"),
            lambda: os.mkdir(m / "d/sub"),
            lambda: os.unlink(m / "d/f"),
            lambda: os.rename(m / "d/f", m / "d/g"),
            lambda: os.truncate(m / "d/f", 0),
            lambda: os.chmod(m / "d/f", 0o600),
            lambda: os.rmdir(m / "d"),
            lambda: os.setxattr(m / "d/f", "user.x", b"1"),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS, attempt
        assert s3.get_object(Bucket=bucket, Key="d/f")["Body"].read() == b"data"


def test_read_only_option_mounts_ro(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    put_many(s3, bucket, {"f": b"data"})
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", "ro", bucket]) as mount:
        options = subprocess.run(
            ["findmnt", "-no", "OPTIONS,FSTYPE,SOURCE", str(mount.path)], capture_output=True, text=True
        ).stdout
        assert "ro" in options.split()[0].split(",")
        assert "fuse.s3regfs" in options and bucket in options
        with pytest.raises(OSError) as info:
            open(mount.path / "f", "wb")
        assert info.value.errno == errno.EROFS


def test_extended_attributes(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    put_many(s3, bucket, {"root/dir/file": b"payload"})
    etag = s3.head_object(Bucket=bucket, Key="root/dir/file")["ETag"].strip('"')
    with mounted(tmp_path / "mnt", [*endpoint_opts, f"{bucket}:/root"]) as mount:
        path = mount.path / "dir/file"
        assert os.getxattr(path, "user.s3.etag").decode() == etag
        assert os.getxattr(path, "user.s3.key").decode() == "root/dir/file"
        assert os.getxattr(path, "user.s3.storage_class").decode() == "STANDARD"
        assert set(os.listxattr(path)) == {"user.s3.etag", "user.s3.key", "user.s3.storage_class"}
        with pytest.raises(OSError) as info:
            os.getxattr(path, "user.other")
        assert info.value.errno == errno.ENODATA
        # Synthetic files name no key: they have no user.s3.* attributes.
        stats = mount.path / ".s3regfs/stats"
        assert os.listxattr(stats) == []
        with pytest.raises(OSError) as info:
            os.getxattr(stats, "user.s3.key")
        assert info.value.errno == errno.ENODATA


def test_mounting_over_a_non_empty_directory_warns(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    put_many(s3, bucket, {"in-s3": b"x"})
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt/hidden").write_text("local")
    with mounted(tmp_path / "mnt", [*endpoint_opts, f"{bucket}:/../up"], check_clean=False) as mount:
        assert not (mount.path / "hidden").exists()
    assert (tmp_path / "mnt/hidden").read_text() == "local"
    assert "is not empty: its files are hidden while mounted" in mount.stderr
    assert "has a '..' component" in mount.stderr


def test_sequential_and_random_reads_match(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    rng = random.Random(7)
    body = rng.randbytes(24 * 1024 * 1024 + 12345)
    s3.put_object(Bucket=bucket, Key="big", Body=body)
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", "readahead=4M", bucket]) as mount:
        digest = hashlib.sha256()
        with open(mount.path / "big", "rb") as f:
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(body).hexdigest()
        fd = os.open(mount.path / "big", os.O_RDONLY)
        try:
            for _ in range(40):
                offset = rng.randrange(0, len(body))
                size = rng.choice([1, 100, 4096, 131072, 1 << 20])
                assert os.pread(fd, size, offset) == body[offset : offset + size]
            assert os.pread(fd, 10, len(body) + 5) == b""
        finally:
            os.close(fd)


def test_changed_object_is_not_served_stale(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    key = "docker/registry/v2/repositories/app/_manifests/tags/latest/current/link"
    s3.put_object(Bucket=bucket, Key=key, Body=b"sha256:" + b"1" * 64)
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", "metadata_ttl=1", bucket]) as mount:
        link = mount.path / key
        assert link.read_bytes() == b"sha256:" + b"1" * 64
        assert link.read_bytes() == b"sha256:" + b"1" * 64  # page cache may serve this
        s3.put_object(Bucket=bucket, Key=key, Body=b"sha256:" + b"2" * 64)  # same size
        time.sleep(1.5)
        assert link.read_bytes() == b"sha256:" + b"2" * 64
        s3.put_object(Bucket=bucket, Key=key, Body=b"sha256:" + b"3" * 10)  # other size
        time.sleep(1.5)
        assert link.read_bytes() == b"sha256:" + b"3" * 10
        s3.delete_object(Bucket=bucket, Key=key)
        time.sleep(1.5)
        assert not link.exists()


def test_find_over_digest_directories_costs_few_requests(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    count = 1500
    objects = {
        f"docker/registry/v2/repositories/app/_layers/sha256/{digest_hex(i)}/link": f"sha256:{digest_hex(i)}".encode()
        for i in range(count)
    }
    put_many(s3, bucket, objects)
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        listing = subprocess.run(
            ["find", str(mount.path), "-type", "f", "-ls"], check=True, capture_output=True, text=True
        )
        assert len(listing.stdout.splitlines()) == count
    counts = mount.request_counts()
    assert counts.get("head_object", 0) == 0 and counts.get("get_object", 0) == 0
    assert counts["list_objects_v2"] <= 0.05 * count, counts


def test_daemon_mode_returns_when_mounted(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    put_many(s3, bucket, {"hello": b"world"})
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_cli([*endpoint_opts, bucket, str(mnt)])
    try:
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mnt)  # mounted by the time the command returned
        assert (mnt / "hello").read_bytes() == b"world"
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _daemons_of(mnt):
        time.sleep(0.1)
    assert not _daemons_of(mnt)


def _daemons_of(mountpoint: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"s3regfs" in cmdline and str(mountpoint).encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def test_sigterm_unmounts_and_exits_zero(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    put_many(s3, bucket, {"f": b"1"})
    mnt = tmp_path / "mnt"
    with mounted(mnt, [*endpoint_opts, bucket]) as mount:
        assert (mnt / "f").read_bytes() == b"1"
        mount.process.send_signal(signal.SIGTERM)
        assert mount.process.wait(20) == 0
        assert not os.path.ismount(mnt)
        # mounted() unmounts again: give it a mount to unmount.
        spawn(mount, [*endpoint_opts, bucket])
        wait_for_mount(mount)


# -- failures before mounting: one line, an exit code, nothing mounted -----------


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("s3regfs: error: ")
    return lines[0]


@pytest.mark.parametrize("foreground", [True, False])
def test_missing_mountpoint(endpoint_opts: list[str], bucket: str, tmp_path: Path, foreground: bool) -> None:
    result = run_cli([*(["-f"] if foreground else []), *endpoint_opts, bucket, str(tmp_path / "nope")])
    assert result.returncode == 4
    assert str(tmp_path / "nope") in _one_error_line(result)


def test_mountpoint_not_a_directory(endpoint_opts: list[str], bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    result = run_cli([*endpoint_opts, bucket, str(path)])
    assert result.returncode == 4 and "not a directory" in _one_error_line(result)


@pytest.mark.parametrize("foreground", [True, False])
def test_no_such_bucket(endpoint_opts: list[str], tmp_path: Path, foreground: bool) -> None:
    (tmp_path / "mnt").mkdir()
    result = run_cli(
        [*(["-f"] if foreground else []), *endpoint_opts, "no-such-bucket-here", str(tmp_path / "mnt")]
    )
    line = _one_error_line(result)
    assert result.returncode == 3 and "no-such-bucket-here" in line and "no such bucket" in line
    assert not os.path.ismount(tmp_path / "mnt")


def test_unreachable_endpoint_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = run_cli(
        [
            "-o",
            f"regionendpoint=http://127.0.0.1:{port},region=us-east-1,connect_timeout=2",
            "b",
            str(tmp_path / "mnt"),
        ]
    )
    elapsed = time.monotonic() - started
    line = _one_error_line(result)
    assert result.returncode == 3 and f"127.0.0.1:{port}" in line and "unreachable" in line
    assert elapsed < 15
    assert not os.path.ismount(tmp_path / "mnt")


def test_bad_parameter_exits_2_naming_it(endpoint_opts: list[str], bucket: str, tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    env = {"REGISTRY_STORAGE_S3_SECRETKEY": "hush-hush-1", "REGISTRY_STORAGE_S3_ACCESSKEY": "AKIA"}
    result = run_cli([*endpoint_opts, "-o", "storageclass=COLD", bucket, str(tmp_path / "mnt")], env=env)
    assert result.returncode == 2 and "storageclass" in _one_error_line(result)
    assert "hush-hush-1" not in result.stderr


def test_already_mounted(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        result = run_cli([*endpoint_opts, bucket, str(mount.path)])
        assert result.returncode == 4 and "already mounted" in _one_error_line(result)


def test_invalid_credentials(tmp_path: Path) -> None:
    server = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "1"})
    try:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="y",
        ).create_bucket(Bucket="locked")
        (tmp_path / "mnt").mkdir()
        result = run_cli(
            ["-o", f"regionendpoint={server.url},region=us-east-1", "locked", str(tmp_path / "mnt")]
        )
        line = _one_error_line(result)
        assert result.returncode == 3 and "invalid credentials" in line and "locked" in line
    finally:
        server.stop()


def test_access_denied(tmp_path: Path) -> None:
    server = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        import boto3

        admin = {
            "endpoint_url": server.url,
            "region_name": "us-east-1",
            "aws_access_key_id": "x",
            "aws_secret_access_key": "y",
        }
        boto3.client("s3", **admin).create_bucket(Bucket="guarded")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]  # a user with no policy at all
        (tmp_path / "mnt").mkdir()
        env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        result = run_cli(
            ["-o", f"regionendpoint={server.url},region=us-east-1", "guarded", str(tmp_path / "mnt")], env=env
        )
        line = _one_error_line(result)
        assert result.returncode == 3 and "access denied" in line and "guarded" in line
        assert key["SecretAccessKey"] not in result.stderr
    finally:
        server.stop()


def test_stale_mount_is_explained(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with mounted(mnt, [*endpoint_opts, bucket], check_clean=False) as mount:
        mount.process.kill()
        mount.process.wait()
        result = run_cli([*endpoint_opts, bucket, str(mnt)])
        line = _one_error_line(result)
        assert result.returncode == 4 and f"fusermount3 -uz {mnt}" in line and "stale" in line
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=True)
        # A new mount starts cleanly on the cleared mount point (mounted() unmounts it).
        spawn(mount, [*endpoint_opts, bucket])
        wait_for_mount(mount)


def test_parallel_readers_share_one_readahead_budget(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    rng = random.Random(3)
    bodies = {f"blob{i}": rng.randbytes(6 * 1024 * 1024 + i) for i in range(6)}
    put_many(s3, bucket, bodies)
    budget = 4 * 1024 * 1024
    with mounted(
        tmp_path / "mnt", [*endpoint_opts, "-o", f"readahead=2M,readahead_total={budget}", bucket]
    ) as mount:

        def digest(name: str) -> str:
            h = hashlib.sha256()
            with open(mount.path / name, "rb") as f:
                while chunk := f.read(256 * 1024):
                    h.update(chunk)
            return h.hexdigest()

        with ThreadPoolExecutor(len(bodies)) as pool:
            digests = dict(zip(bodies, pool.map(digest, bodies), strict=True))
        assert digests == {name: hashlib.sha256(body).hexdigest() for name, body in bodies.items()}
    # Over budget by at most two 1 MiB chunks per reader that was waiting for
    # data (a read that straddles a chunk boundary needs both).
    assert 0 < mount.readahead_peak() <= budget + 2 * len(bodies) * 1024 * 1024


def test_gitlab_metadata_database_is_reported(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    put_many(s3, bucket, {"gl/docker/registry/lockfiles/database-in-use": b'{"version":1}'})
    with mounted(tmp_path / "mnt", [*endpoint_opts, f"{bucket}:/gl"], check_clean=False) as mount:
        assert os.listdir(mount.path / "docker/registry/lockfiles") == ["database-in-use"]
    assert "uses GitLab's metadata database" in mount.stderr


def test_statfs_scan_counts_what_was_never_listed(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    objects = {f"deep/{i}/{j}/blob": bytes(100_000) for i in range(5) for j in range(4)}
    put_many(s3, bucket, objects)
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", "statfs=scan", bucket]) as mount:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = os.statvfs(mount.path)
            if st.f_files - st.f_ffree >= len(objects):
                break
            time.sleep(0.2)
        assert st.f_files - st.f_ffree == len(objects)
        assert (st.f_blocks - st.f_bfree) * st.f_frsize >= 20 * 100_000


def test_systemd_notification_after_the_mount_answers(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    import socket as socketlib

    put_many(s3, bucket, {"f": b"1"})
    address = str(tmp_path / "notify.sock")
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        mnt = tmp_path / "mnt"
        with mounted(mnt, [*endpoint_opts, bucket], env={"NOTIFY_SOCKET": address}) as mount:
            message = sock.recv(4096).decode()
            assert message.startswith("READY=1")
            assert os.path.ismount(mnt) and (mnt / "f").read_bytes() == b"1"  # it answers
            mount.process.send_signal(signal.SIGTERM)
            assert sock.recv(4096) == b"STOPPING=1"
            assert mount.process.wait(20) == 0
            spawn(mount, [*endpoint_opts, bucket])  # mounted() unmounts a mount at the end
            wait_for_mount(mount)


def test_second_sigint_exits_at_once(moto: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    from tests.faultproxy import FaultProxy, Rule

    # Every PutObject takes 30 s: the clean unmount of the first SIGINT hangs on it.
    proxy = FaultProxy(moto.port, rules=[Rule(lambda m, p: m == "PUT", status=0, delay=30)]).start()
    mnt = tmp_path / "mnt"
    try:
        with mounted(
            mnt, ["-o", f"regionendpoint={proxy.url},region=us-east-1", bucket], check_clean=False
        ) as mount:
            f = open(mnt / "pending", "wb")
            f.write(b"x" * 100)
            f.flush()
            mount.process.send_signal(signal.SIGINT)
            time.sleep(1)
            assert mount.process.poll() is None  # still committing
            started = time.monotonic()
            mount.process.send_signal(signal.SIGINT)
            assert mount.process.wait(10) == 130
            assert time.monotonic() - started < 10
            with contextlib.suppress(OSError):
                f.close()
            assert not os.path.ismount(mnt)  # detached, not left stale
            proxy.rules = []
            spawn(mount, ["-o", f"regionendpoint={proxy.url},region=us-east-1", bucket])
            wait_for_mount(mount)
        assert "second SIGINT" in mount.stderr
    finally:
        proxy.stop()


def test_stats_file_and_sigusr1(s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path) -> None:

    put_many(s3, bucket, {"d/a": b"x" * 1000, "d/b": b"y" * 2000})
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        m = mount.path
        assert ".s3regfs" not in os.listdir(m)  # reachable by name only
        assert (m / "d/a").read_bytes() == b"x" * 1000
        (m / "d/c").write_bytes(b"z" * 300)
        stats = read_stats(m)
        assert (
            stats["requests"]["LIST"] >= 2 and stats["requests"]["GET"] == 1 and stats["requests"]["PUT"] == 1
        )
        assert stats["bytes_in"] >= 1000 and stats["bytes_out"] == 300
        assert stats["errors"] == 0 and stats["open_uploads"] == 0 and stats["cache"]["hits"] >= 1
        assert os.listdir(m / ".s3regfs") == ["metrics", "stats"]
        with pytest.raises(OSError) as info:
            (m / ".s3regfs/stats").write_text("{}")
        assert info.value.errno == errno.EROFS
        mount.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "stats: " not in mount.read_stderr():
            time.sleep(0.1)
        assert '"requests"' in mount.read_stderr()


def test_prometheus_metrics_as_a_file_and_over_http(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    import urllib.request

    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    put_many(s3, bucket, {"f": b"x" * 5000})
    port = free_port()
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", f"metrics=127.0.0.1:{port}", bucket]) as mount:
        assert (mount.path / "f").read_bytes() == b"x" * 5000
        in_file = samples((mount.path / ".s3regfs/metrics").read_text())
        assert in_file[("s3regfs_requests_total", (("operation", "get_object"), ("outcome", "ok")))] == 1
        assert in_file[("s3regfs_received_bytes_total", ())] >= 5000
        assert ("s3regfs_open_files", ()) in in_file and ("s3regfs_write_memory_bytes", ()) in in_file
        assert ("s3regfs_metadata_cache_hits_total", ()) in in_file
        assert os.listxattr(mount.path / ".s3regfs/metrics") == []
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            over_http = samples(response.read().decode())
        assert over_http[("s3regfs_requests_total", (("operation", "get_object"), ("outcome", "ok")))] == 1
        assert ("s3regfs_uploads_in_flight", ()) in over_http
        # A scraper that resets its connection (SO_LINGER 0) ends nothing but itself.
        for payload in (b"", b"GET /metr"):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(payload)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(0.2)
        assert (mount.path / "f").read_bytes() == b"x" * 5000
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert b"s3regfs_requests_total" in response.read()
        # The port taken: the second mount refuses to start, in one line.
        result = run_cli(["-f", *endpoint_opts, "-o", f"metrics={port}", bucket, str(tmp_path)])
        assert result.returncode == 3, result.stderr
        assert (
            f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
        )


def test_secrets_never_logged_at_any_level(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    import re

    put_many(s3, bucket, {"f": b"data"})
    secret, token = "SECRETsecret0123456789abcdefghij", "SESSIONtoken0123456789abcdefghij"
    env = {
        "REGISTRY_STORAGE_S3_ACCESSKEY": "AKIAEXAMPLEACCESS",
        "REGISTRY_STORAGE_S3_SECRETKEY": secret,
        "REGISTRY_STORAGE_S3_SESSIONTOKEN": token,
    }
    levels = "loglevel=logdebug\\,logdebugwithsigning\\,logdebugwithhttpbody\\,logdebugwithrequestretries"
    with mounted(
        tmp_path / "mnt", ["-d", *endpoint_opts, "-o", levels, bucket], env=env, check_clean=False
    ) as mount:
        assert (mount.path / "f").read_bytes() == b"data"
        (mount.path / "g").write_bytes(b"more")
    log = mount.stderr
    assert "botocore" in log and "Authorization" in log  # the levels did log requests
    assert secret not in log and token not in log
    assert not re.search(r"Signature=[0-9a-f]{64}", log)


def test_sighup_drops_the_metadata_caches(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    put_many(s3, bucket, {"d/old": b"1"})
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", "metadata_ttl=600", bucket]) as mount:
        assert os.listdir(mount.path / "d") == ["old"]
        s3.put_object(Bucket=bucket, Key="d/new", Body=b"2")
        assert os.listdir(mount.path / "d") == ["old"]  # cached for metadata_ttl
        mount.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sorted(os.listdir(mount.path / "d")) != ["new", "old"]:
            time.sleep(0.1)
        assert sorted(os.listdir(mount.path / "d")) == ["new", "old"]


def test_malloc_arenas_are_limited_unless_the_user_says_otherwise() -> None:
    from s3regfs.mount import limit_malloc_arenas

    assert limit_malloc_arenas({"MALLOC_ARENA_MAX": "8"}) is False
    assert limit_malloc_arenas({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) is False
    if os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") or os.path.exists(
        "/lib/aarch64-linux-gnu/libc.so.6"
    ):
        assert limit_malloc_arenas({}) is True  # glibc: mallopt answered 1
