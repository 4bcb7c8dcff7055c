# SPDX-License-Identifier: MIT
"""s3regfs against a distant S3, emulated on loopback, side by side with boto3.

    .venv/bin/python benchmarks/distant.py [--size-mib 64] [--profiles T,L] [--links 1000]

The endpoint is moto_server started through tests/moto_ranged.py (a ranged GET
costs the range, as on S3), behind tests/s3emulator.py (per-connection
bandwidth cap, a delay before each request; profiles T and L).  For each
profile it prints, measured in the same run:

1. the cost of ranged GETs on this moto (no emulator), so a reader of these
   figures knows what the endpoint charges;
2. reading one object: boto3 ``download_fileobj`` (8 MiB ranges, 10 threads)
   vs ``cat`` of the file through a fresh s3regfs mount (page cache dropped);
3. writing it: boto3 ``upload_file`` (8 MiB parts, 10 threads) vs ``cp`` into
   the mount (chunksize 8 MiB) until close() returns;
4. ``find -ls`` over N link files, each in its own digest directory.

Only loopback traffic; everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.s3emulator import PROFILES, DistantS3  # noqa: E402
from tests.util import (  # noqa: E402
    free_port,
    mount_env,
    s3_client,
    s3regfs_command,
    stop_process,
    wait_for_port,
)

MiB = 1024 * 1024
BUCKET = "distant"


def start_ranged_moto(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "tests/moto_ranged.py"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=mount_env(),
        )
    wait_for_port(port, process)
    return process, port


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def mount(url: str, path: Path, log: Path) -> subprocess.Popen[str]:
    path.mkdir(parents=True, exist_ok=True)
    options = f"regionendpoint={url},region=us-east-1,chunksize={8 * MiB},metadata_ttl=60"
    out = open(log, "a")  # noqa: SIM115 - lives as long as the mount
    process = subprocess.Popen(
        s3regfs_command("-f", "-o", options, BUCKET, str(path)),
        stdout=out,
        stderr=subprocess.STDOUT,
        env=mount_env(),
        text=True,
    )
    deadline = time.monotonic() + 30
    while not os.path.ismount(path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"s3regfs did not mount: {log.read_text()}")
        time.sleep(0.05)
    return process


def unmount(process: subprocess.Popen[str], path: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(path)], check=False)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        stop_process(process)  # type: ignore[arg-type]


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def range_costs(s3: Any, key: str, rounds: int = 5) -> str:
    one = [
        timed(lambda: s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-0")["Body"].read())
        for _ in range(rounds)
    ]
    mib = [
        timed(
            lambda: s3.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={MiB}-{2 * MiB - 1}")["Body"].read()
        )
        for _ in range(rounds)
    ]
    return f"1-byte range {min(one) * 1000:.1f} ms, 1 MiB range {min(mib) * 1000:.1f} ms (best of {rounds})"


def run_profile(
    name: str, port: int, args: argparse.Namespace, transfer: Any, work: Path, digest: str, source: Path
) -> None:
    """Sections 2-4 for one emulator profile."""
    profile = PROFILES[name]
    proxy = DistantS3(port, profile).start()
    try:
        cap = (
            f"{profile.bandwidth / 1e6:.0f} MB/s per connection" if profile.bandwidth else "no bandwidth cap"
        )
        print(
            f"\nprofile {name}: {cap}, {profile.latency * 1000:.0f} ms per request, "
            f"+{profile.list_latency * 1000:.0f} ms per LIST page"
        )
        client = s3_client(proxy.url)
        sink = io.BytesIO()
        boto_read = timed(lambda: client.download_fileobj(BUCKET, "big", sink, Config=transfer))
        assert hashlib.sha256(sink.getvalue()).hexdigest() == digest
        mnt = work / f"mnt-{name}"
        process = mount(proxy.url, mnt, work / f"s3regfs-{name}.log")
        try:
            drop_page_cache()
            fs_read = timed(
                lambda: subprocess.run(["cat", str(mnt / "big")], stdout=subprocess.DEVNULL, check=True)
            )
            size = args.size_mib
            print(
                f"2. read {size} MiB: boto3 download_fileobj {size / boto_read:6.1f} MiB/s, "
                f"s3regfs {size / fs_read:6.1f} MiB/s, ratio {boto_read / fs_read:.2f}"
            )
            boto_write = timed(lambda: client.upload_file(str(source), BUCKET, "up-boto", Config=transfer))
            fs_write = timed(lambda: subprocess.run(["cp", str(source), str(mnt / "up-fs")], check=True))
            print(
                f"3. write {size} MiB: boto3 upload_file {size / boto_write:6.1f} MiB/s, "
                f"s3regfs {size / fs_write:6.1f} MiB/s, ratio {boto_write / fs_write:.2f}"
            )
        finally:
            unmount(process, mnt)
        process = mount(proxy.url, mnt, work / f"s3regfs-{name}.log")
        try:
            before = proxy.requests
            elapsed = timed(
                lambda: subprocess.run(
                    ["find", str(mnt / "docker"), "-type", "f", "-ls"],
                    stdout=subprocess.DEVNULL,
                    check=True,
                )
            )
            print(
                f"4. find -ls over {args.links} link files, fresh mount: {elapsed:.2f} s, "
                f"{proxy.requests - before} requests"
            )
        finally:
            unmount(process, mnt)
    finally:
        proxy.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--profiles", default="T,L")
    parser.add_argument("--links", type=int, default=1000)
    args = parser.parse_args()
    from boto3.s3.transfer import TransferConfig

    transfer = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=10)
    work = Path(tempfile.mkdtemp(prefix="s3regfs-distant-"))
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print("endpoint: moto_server with ranged GETs costing the range (tests/moto_ranged.py)")
    moto, port = start_ranged_moto(work / "moto.log")
    try:
        direct = s3_client(f"http://127.0.0.1:{port}")
        direct.create_bucket(Bucket=BUCKET)
        data = os.urandom(args.size_mib * MiB)
        digest = hashlib.sha256(data).hexdigest()
        direct.put_object(Bucket=BUCKET, Key="big", Body=data)
        source = work / "source"
        source.write_bytes(data)
        for i in range(args.links):
            hexdigest = hashlib.sha256(str(i).encode()).hexdigest()
            direct.put_object(
                Bucket=BUCKET,
                Key=f"docker/registry/v2/repositories/app/_layers/sha256/{hexdigest}/link",
                Body=f"sha256:{hexdigest}".encode(),
            )
        print(f"1. ranged GETs of a {args.size_mib} MiB object, no emulator: {range_costs(direct, 'big')}")
        for name in args.profiles.split(","):
            run_profile(name, port, args, transfer, work, digest, source)
    finally:
        stop_process(moto)
    return 0


if __name__ == "__main__":
    sys.exit(main())
