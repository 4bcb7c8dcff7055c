# SPDX-License-Identifier: MIT
"""The blob cache (-o cache): what a first read costs with it, and what a
second read saves.

    .venv/bin/python benchmarks/cache.py [--blobs 20] [--size-mib 8] [--rounds 3]

Against a local moto_server (loopback; everything it starts, it stops):
*blobs* blobs of *size-mib* MiB at their registry paths; for each round, with
the page cache dropped before every read: all blobs read through a mount
without the cache, through a mount with an empty cache (the first read: it
hashes and fills), and through a remount with that cache (the second read).
Prints each round's seconds and GETs of blob data seen by moto, then the
medians and the ratios: first read with the cache / without (target >= 0.9:
the fill's overhead), and second read from the cache / from S3.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import Running, drop_page_cache, machine, read_file, wait_mounted  # noqa: E402

from tests.s3emulator import PROFILES, DistantS3  # noqa: E402
from tests.util import MotoServer, mount_env, s3_client, s3regfs_command, start_moto  # noqa: E402

BUCKET = "cachebench"


def mount(url: str, path: Path, log: Path, cache: Path | None) -> Running:
    options = f"regionendpoint={url},region=us-east-1" + (f",cache={cache}" if cache else "")
    path.mkdir(exist_ok=True)
    with open(log, "ab") as err:
        process = subprocess.Popen(
            s3regfs_command("-f", "-o", options, BUCKET, str(path)),
            stdout=err,
            stderr=subprocess.STDOUT,
            env=mount_env(),
        )
    return wait_mounted(Running("s3regfs", process, path, ["fusermount3", "-u"]))


def read_all(moto: MotoServer, root: Path, paths: list[str]) -> tuple[float, int]:
    """Seconds to read every blob (page cache dropped first), and moto's GETs of blob data."""
    drop_page_cache()
    seen = len(moto.request_lines())
    started = time.perf_counter()
    for path in paths:
        read_file(root / path)
    elapsed = time.perf_counter() - started
    time.sleep(0.5)  # moto logs a request after answering it
    gets = sum(1 for line in moto.request_lines()[seen:] if "/data HTTP" in line and "GET " in line)
    return elapsed, gets


def run_profile(
    moto: MotoServer, url: str, paths: list[str], workdir: Path, args: argparse.Namespace
) -> None:
    """Rounds of: without the cache, first read with it, second read from it."""
    results: dict[str, list[float]] = {"plain": [], "fill": [], "cached": []}
    for round_number in range(1, args.rounds + 1):
        cache = workdir / f"cache-{round_number}"
        figures = []
        for label, cache_dir in (("plain", None), ("fill", cache), ("cached", cache)):
            running = mount(url, workdir / "mnt", workdir / "s3regfs.log", cache_dir)
            try:
                elapsed, gets = read_all(moto, running.path, paths)
            finally:
                running.stop()
            results[label].append(elapsed)
            figures.append(f"{label} {elapsed:.2f} s ({gets} GETs of blob data)")
        print(f"  round {round_number}: " + ", ".join(figures))
        shutil.rmtree(cache, ignore_errors=True)
    plain, fill, cached = (statistics.median(results[k]) for k in ("plain", "fill", "cached"))
    total = args.blobs * args.size_mib
    print(
        f"  median: without cache {plain:.2f} s ({total / plain:.0f} MiB/s), first read with cache "
        f"{fill:.2f} s ({total / fill:.0f} MiB/s), second read from cache {cached:.2f} s "
        f"({total / cached:.0f} MiB/s)"
    )
    print(
        f"  ratio first read with cache / without: {plain / fill:.2f} (target >= 0.9), rounds "
        + ", ".join(f"{p / f:.2f}" for p, f in zip(results["plain"], results["fill"], strict=True))
        + f"; second read from cache / from S3: {plain / cached:.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blobs", type=int, default=20)
    parser.add_argument("--size-mib", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profiles", default="none,T", help="none (moto straight), T, L")
    args = parser.parse_args(argv)
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"machine: {machine()}")
    print(
        "endpoint: moto_server through tests/moto_ranged.py (ranged GETs cost the range); "
        f"{args.blobs} blobs of {args.size_mib} MiB"
    )
    moto = start_moto(mount_env(), ranged=True)
    workdir = Path(tempfile.mkdtemp(prefix="s3regfs-cache-bench-"))
    try:
        s3 = s3_client(moto.url)
        s3.create_bucket(Bucket=BUCKET)
        rng = random.Random(1)
        paths = []
        for _ in range(args.blobs):
            data = rng.randbytes(args.size_mib * 1024 * 1024)
            hexdigest = hashlib.sha256(data).hexdigest()
            path = f"docker/registry/v2/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"
            s3.put_object(Bucket=BUCKET, Key=path, Body=data)
            paths.append(path)
        for profile in args.profiles.split(","):
            proxy = DistantS3(moto.port, PROFILES[profile]).start() if profile != "none" else None
            try:
                print(f"profile {profile}: " + (str(PROFILES[profile]) if proxy else "no proxy"))
                run_profile(moto, proxy.url if proxy else moto.url, paths, workdir, args)
            finally:
                if proxy is not None:
                    proxy.stop()
    finally:
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
