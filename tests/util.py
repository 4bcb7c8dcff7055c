# SPDX-License-Identifier: MIT
"""Helpers for tests that run real processes: moto_server, s3regfs mounts."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


def s3_client(endpoint: str, config: Any = None) -> Any:
    """A boto3 client of the test endpoint with the test credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=config,
    )


def body(s3: Any, bucket: str, key: str) -> bytes:
    """The bytes S3 holds at *key*."""
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key of *bucket* under *prefix*, in S3's order."""
    found: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents", [])]
    return found


def open_uploads(s3: Any, bucket: str) -> list[str]:
    """The keys of the multipart uploads open in *bucket*."""
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def rng_bytes(n: int, seed: int = 1) -> bytes:
    """*n* reproducible random bytes."""
    return random.Random(seed).randbytes(n)


def fuse_test_marker() -> pytest.MarkDecorator:
    """Skip when this machine cannot mount FUSE; else mark uses_fuse."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return pytest.mark.skip(reason="FUSE is not available (no /dev/fuse or fusermount3)")
    return pytest.mark.uses_fuse


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


@dataclass
class MotoServer:
    """A moto_server process on loopback; its stderr (one line a request) in *log_path*."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request_lines(self) -> list[str]:
        return [line for line in self.log_path.read_text(errors="replace").splitlines() if '"' in line]

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process we started, SIGKILL it if it lingers, and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_moto(extra_env: dict[str, str] | None = None, *, ranged: bool = False) -> MotoServer:
    """moto_server on a free loopback port; with *ranged*, through
    tests/moto_ranged.py (a ranged GET costs the range, as on S3)."""
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])
    env = dict(os.environ, **(extra_env or {}))
    if ranged:
        command = [sys.executable, str(REPO / "tests/moto_ranged.py")]
    else:
        command = [shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = MotoServer(port, process, log_path)
    try:
        wait_for_port(port, process)
    except Exception:
        server.stop()
        raise
    return server


@dataclass
class SynthServer:
    """A ``python -m tests.synths3`` process on loopback (see start_synth):
    *keys* is the real key count of its bucket; its stdout and stderr in
    *log_path*."""

    port: int
    process: subprocess.Popen[bytes]
    bucket: str
    keys: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        """The server's request counters (GET /_synths3/stats)."""
        with urllib.request.urlopen(f"{self.url}/_synths3/stats", timeout=30) as answer:
            found: dict[str, int] = json.load(answer)
        return found

    def stop(self) -> None:
        stop_process(self.process)


def start_synth(
    keys: int,
    *,
    seed: int = 1,
    bucket: str = "synth",
    list_delay: float = 0.0,
    request_delay: float = 0.0,
    rootdirectory: str = "",
    wide_uploads: int = 0,
    timeout: float = 120,
) -> SynthServer:
    """tests/synths3.py serving a generated registry bucket of about *keys*
    keys on a free loopback port; returns once it serves."""
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="synths3-", suffix=".log")[1])
    command = [sys.executable, "-m", "tests.synths3", "--keys", str(keys), "--seed", str(seed)]
    command += ["--port", str(port), "--bucket", bucket, "--rootdirectory", rootdirectory]
    command += ["--list-delay", str(list_delay), "--request-delay", str(request_delay)]
    command += ["--wide-uploads", str(wide_uploads)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    try:
        wait_for_port(port, process, timeout)
        deadline = time.monotonic() + timeout
        while not (found := re.search(r"listening on \S+ keys=(\d+)", log_path.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"synths3 did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.05)
    except Exception:
        stop_process(process)
        raise
    return SynthServer(port, process, bucket, int(found.group(1)), log_path)


def s3regfs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "s3regfs", *args]


#: The mounts' state directory (their upload journals): the tests' own, not the machine's.
STATE_DIRECTORY = tempfile.mkdtemp(prefix="s3regfs-state-")
#: The mounts' default cache directory (the reports' manifests): the tests' own too.
CACHE_DIRECTORY = tempfile.mkdtemp(prefix="s3regfs-cache-")


def mount_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env["STATE_DIRECTORY"] = STATE_DIRECTORY
    env["CACHE_DIRECTORY"] = CACHE_DIRECTORY
    env.update(CREDENTIALS)
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


@dataclass
class Mount:
    """A running ``s3regfs -f`` process and its mount point."""

    path: Path
    process: subprocess.Popen[str]
    stderr_path: Path
    exit_code: int | None = None
    stderr: str = field(default="", repr=False)

    def read_stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def readahead_peak(self) -> int:
        """The most read-ahead memory the daemon held at once, logged when it unmounts."""
        match = re.search(r"read-ahead peak: (\d+) bytes", self.stderr)
        assert match, self.stderr
        return int(match.group(1))

    def write_memory_peak(self) -> int:
        """The most part-buffer memory the daemon held at once, logged when it unmounts."""
        match = re.search(r"write-memory peak: (\d+) bytes", self.stderr)
        assert match, self.stderr
        return int(match.group(1))

    def request_counts(self) -> dict[str, int]:
        """The daemon's own count of S3 requests, logged when it unmounts."""
        match = re.search(r"S3 requests: (.*)", self.stderr)
        if not match or match.group(1).strip() == "none":
            return {}
        return {k: int(v) for k, v in (item.split("=") for item in match.group(1).split(", "))}


def wait_for_mount(mount: Mount, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mount.path):
            return
        if mount.process.poll() is not None:
            pytest.fail(f"file system process terminated prematurely:\n{mount.read_stderr()}")
        time.sleep(0.05)
    pytest.fail(f"not mounted after {timeout} s:\n{mount.read_stderr()}")


def unmount(mount: Mount, timeout: float = 30) -> None:
    """fusermount3 -u, then the process must exit 0 without a traceback."""
    subprocess.run(["fusermount3", "-u", str(mount.path)], check=True)
    mount.exit_code = mount.process.wait(timeout)
    mount.stderr = mount.read_stderr()
    assert mount.exit_code == 0, mount.stderr
    assert "Traceback" not in mount.stderr, mount.stderr


def cleanup(mount: Mount) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mount.path)], stderr=subprocess.DEVNULL, check=False)
    if mount.process.poll() is None:
        mount.process.send_signal(signal.SIGTERM)
        try:
            mount.process.wait(10)
        except subprocess.TimeoutExpired:
            mount.process.kill()
            mount.process.wait()


def spawn(mount: Mount, args: Sequence[str], env: dict[str, str] | None = None) -> None:
    """Start ``s3regfs -f ARGS MOUNTPOINT`` for *mount* (its stderr appended to its log)."""
    with open(mount.stderr_path, "a") as err:
        mount.process = subprocess.Popen(
            s3regfs_command("-f", *args, str(mount.path)),
            stdout=err,
            stderr=subprocess.STDOUT,
            env=mount_env(env),
            text=True,
            cwd=str(REPO),
        )


@contextlib.contextmanager
def mounted(
    mountpoint: Path,
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check_clean: bool = True,
) -> Iterator[Mount]:
    """Run ``python -m s3regfs -f ARGS MOUNTPOINT``; unmount cleanly afterwards.

    With *check_clean*, the daemon's stderr must hold no warning or error.
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    stderr_path = Path(tempfile.mkstemp(prefix="s3regfs-", suffix=".err")[1])
    mount = Mount(mountpoint, None, stderr_path)  # type: ignore[arg-type]
    spawn(mount, args, env)
    try:
        wait_for_mount(mount)
        yield mount
    except BaseException:
        cleanup(mount)
        print(mount.read_stderr(), file=sys.stderr)
        raise
    unmount(mount)
    if check_clean:
        bad = [line for line in mount.stderr.splitlines() if "warning:" in line or "error:" in line]
        assert not bad, mount.stderr


def run_cli(
    args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        s3regfs_command(*args),
        capture_output=True,
        text=True,
        env=mount_env(env),
        timeout=timeout,
        cwd=str(REPO),
        stdin=subprocess.DEVNULL,
    )


def make_store(endpoint: str, bucket: str, **params: str) -> Any:
    """An S3Store of *bucket* at *endpoint* with the test credentials and -o *params*."""
    from s3regfs.config import build
    from s3regfs.storage.s3 import S3Store

    options = [("regionendpoint", endpoint), ("region", "us-east-1"), *params.items()]
    environ = {
        "REGISTRY_STORAGE_S3_ACCESSKEY": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "REGISTRY_STORAGE_S3_SECRETKEY": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }
    config = build(source=bucket, mountpoint="/unused", mount_options=options, environ=environ)
    return S3Store.create(config.driver, config.options)


def bucket_requests(lines: list[str], bucket: str) -> dict[str, int]:
    """LIST, GET (of an object) and HEAD requests for *bucket* in moto's log lines."""
    found = {"LIST": 0, "GET": 0, "HEAD": 0}
    for line in lines:
        match = re.search(r'"(?:\x1b\[[\d;]*m)*(GET|HEAD) (/[^ ]*) HTTP', line)
        if match is None or not match.group(2).startswith(f"/{bucket}"):
            continue
        method, path = match.groups()
        if method == "HEAD":
            found["HEAD"] += 1
        elif "list-type=2" in path:
            found["LIST"] += 1
        elif path.startswith(f"/{bucket}/"):
            found["GET"] += 1
    return found


def read_stats(mountpoint: Path) -> dict[str, Any]:
    """The mount's ``.s3regfs/stats``, parsed."""
    stats: dict[str, Any] = json.loads((mountpoint / ".s3regfs/stats").read_text())
    return stats


def stats_when(
    mountpoint: Path,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 20.0,
    interval: float = 0.05,
) -> dict[str, Any]:
    """The mount's stats as soon as *predicate* holds of them, or as last read
    when *timeout* seconds have passed: the caller asserts what it needs (some
    figures settle beside the request that moved them, on the daemon's or the
    kernel's own time)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = read_stats(mountpoint)
        if predicate(stats) or time.monotonic() >= deadline:
            return stats
        time.sleep(interval)


def _filling(stats: dict[str, Any]) -> int:
    return int(stats.get("blob_cache", {}).get("filling", 0))


def settled_stats(mountpoint: Path, timeout: float = 20.0) -> dict[str, Any]:
    """The mount's stats once no blob cache fill is in progress (a fill's
    fsync, rename and eviction finish beside the reader, after its last read)."""
    stats = stats_when(mountpoint, lambda stats: _filling(stats) == 0, timeout)
    assert _filling(stats) == 0, f"blob cache fills still in progress after {timeout} s: {stats}"
    return stats


def put_random_blobs(
    s3: Any, bucket: str, count: int, *, seed: int, sizes: tuple[int, int], root: str = ""
) -> dict[str, bytes]:
    """*count* blobs of random bytes (sizes in [sizes[0], sizes[1])) at their
    registry paths under *root*: S3 key -> bytes."""
    import hashlib

    rng = random.Random(seed)
    found = {}
    for _ in range(count):
        data = rng.randbytes(rng.randrange(*sizes))
        hexdigest = hashlib.sha256(data).hexdigest()
        key = f"{root}docker/registry/v2/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        found[key] = data
    return found


def blob_data_gets(moto: MotoServer, seen: int, bucket: str) -> int:
    """GETs of blob data files (``.../data``) in *bucket* in moto's log since line *seen*."""
    return sum(
        1 for line in moto.request_lines()[seen:] if "/data HTTP" in line and f"GET /{bucket}/" in line
    )


def _held(stats: dict[str, Any]) -> tuple[int, ...]:
    return (stats["open_files"], stats["readahead_bytes"], stats["connections_in_use"], _filling(stats))


def idle_stats(mountpoint: Path, timeout: float = 20.0) -> dict[str, Any]:
    """The mount's stats once every file is closed and nothing is held:
    read-ahead budget, connections, cache fills (the kernel's RELEASE comes
    after close() returns, and a reader winds down after it)."""
    stats = stats_when(mountpoint, lambda stats: not any(_held(stats)), timeout)
    assert not any(_held(stats)), f"still held after {timeout} s: {stats}"
    return stats
