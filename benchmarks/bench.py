# SPDX-License-Identifier: MIT
"""s3regfs benchmarks against a local moto_server, measured side by side in one run.

    .venv/bin/python benchmarks/bench.py [--size-mib 128] [--links 3000] [--rounds 3]

Prints what it measured, every time:

1. sequential read of one object through the mount vs boto3
   ``get_object()['Body'].read()`` of the same object (ratio of throughputs;
   target >= 0.8), page cache dropped before every mount read;
2. ``find MOUNT -type f -ls`` over a registry tree of N link files, each in its
   own digest directory: S3 requests per file (target <= 0.05) and HEADs
   (target 0), counted by the daemon and at the endpoint;
3. peak RSS of the daemon (VmHWM) after the sequential reads (target <= 200 MiB).

Only loopback traffic; everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402

from tests.util import CREDENTIALS, Mount, cleanup, spawn, start_moto, unmount, wait_for_mount  # noqa: E402

MiB = 1024 * 1024


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def read_file(path: Path, block: int = MiB) -> tuple[int, float]:
    started = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(block):
            total += len(chunk)
    return total, time.perf_counter() - started


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> str:
    cpu = "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), {mem} GiB, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--links", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"machine: {machine()}")
    moto = start_moto()
    workdir = Path(tempfile.mkdtemp(prefix="s3regfs-bench-"))
    mount: Mount | None = None
    try:
        s3: Any = boto3.client(
            "s3",
            endpoint_url=moto.url,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        bucket = "bench"
        s3.create_bucket(Bucket=bucket)
        body = os.urandom(args.size_mib * MiB)
        big_key = (
            "docker/registry/v2/blobs/sha256/"
            + hashlib.sha256(body).hexdigest()[:2]
            + "/"
            + hashlib.sha256(body).hexdigest()
            + "/data"
        )
        s3.put_object(Bucket=bucket, Key=big_key, Body=body)
        del body
        hexes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(args.links)]
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda h: s3.put_object(
                        Bucket=bucket,
                        Key=f"docker/registry/v2/repositories/library/app/_layers/sha256/{h}/link",
                        Body=f"sha256:{h}".encode(),
                    ),
                    hexes,
                )
            )

        # 1. Sequential read: boto3 vs the mount, alternating, same object.
        mount = Mount(workdir / "mnt", None, workdir / "daemon.log")  # type: ignore[arg-type]
        mount.path.mkdir()
        spawn(mount, ["-o", f"regionendpoint={moto.url},region=us-east-1", bucket])
        wait_for_mount(mount)
        dropped = drop_page_cache()
        boto_times: list[float] = []
        mount_times: list[float] = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            data = s3.get_object(Bucket=bucket, Key=big_key)["Body"].read()
            boto_times.append(time.perf_counter() - started)
            assert len(data) == args.size_mib * MiB
            del data
            drop_page_cache()
            total, elapsed = read_file(mount.path / big_key)
            assert total == args.size_mib * MiB
            mount_times.append(elapsed)
        boto_best, mount_best = statistics.median(boto_times), statistics.median(mount_times)
        rss = peak_rss_mib(mount.process.pid)
        print(
            f"\n1. sequential read of {args.size_mib} MiB (median of {args.rounds}; page cache dropped: {dropped})"
        )
        print(
            f"   boto3 get_object().read(): {args.size_mib / boto_best:8.1f} MiB/s  ({', '.join(f'{t:.2f}' for t in boto_times)} s)"
        )
        print(
            f"   through the mount:         {args.size_mib / mount_best:8.1f} MiB/s  ({', '.join(f'{t:.2f}' for t in mount_times)} s)"
        )
        print(f"   ratio mount/boto3: {boto_best / mount_best:.2f}  (target >= 0.8)")
        print(f"\n3. daemon peak RSS (VmHWM) after the reads: {rss:.0f} MiB  (target <= 200)")
        unmount(mount)
        before = mount.request_counts()

        # 2. find over the link tree, on a fresh mount (cold caches).
        lines_before = len(moto.request_lines())
        mount = Mount(workdir / "mnt", None, workdir / "daemon2.log")  # type: ignore[arg-type]
        spawn(mount, ["-o", f"regionendpoint={moto.url},region=us-east-1", bucket])
        wait_for_mount(mount)
        started = time.perf_counter()
        out = subprocess.run(
            ["find", str(mount.path), "-type", "f", "-ls"], check=True, capture_output=True, text=True
        ).stdout
        elapsed = time.perf_counter() - started
        files = len(out.splitlines())
        unmount(mount)
        counts = mount.request_counts()
        endpoint_lines = moto.request_lines()[lines_before:]
        heads = sum(1 for line in endpoint_lines if '"HEAD ' in line)
        requests = sum(counts.values())
        probe = 1  # the mount-time bucket check
        print(
            f"\n2. find -type f -ls over {args.links} link files in digest directories ({files} files listed)"
        )
        print(f"   time: {elapsed:.2f} s; S3 requests by the daemon: {counts} (includes {probe} mount check)")
        print(f"   requests at the endpoint: {len(endpoint_lines)}, of them HEAD: {heads}")
        print(
            f"   requests per file: {(requests - probe) / max(files, 1):.4f}  (target <= 0.05, HEAD target 0)"
        )
        print(f"\n(first mount's requests: {before})")
        mount = None
        return 0
    finally:
        if mount is not None and mount.process is not None:
            cleanup(mount)
        moto.stop()


if __name__ == "__main__":
    sys.exit(main())
