# SPDX-License-Identifier: MIT
"""s3regfs against a distant S3, emulated on loopback, side by side with boto3.

    .venv/bin/python benchmarks/distant.py [--profiles T,L] [--size-mib 256]
        [--readers 4] [--reader-mib 128] [--links 3000] [--rounds 3]

(``benchmarks/bench.py --profiles T,L`` runs the same.)  The endpoint is
moto_server started through tests/moto_ranged.py (a ranged GET costs the
range, as on S3: plain moto reads the whole object for every range), behind
tests/s3emulator.py (a bandwidth cap per connection and direction, a delay
before each request, more per LIST page; profiles T and L).  For each profile
it prints, every round and the median, measured in the same run and
alternating the two sides:

1. read: boto3 ``download_fileobj`` (8 MiB ranges, 10 threads) vs ``cat`` of
   the blob through the mount, the page cache dropped before each;
2. write: boto3 ``upload_file`` (8 MiB parts, 10 threads) vs ``cp`` into the
   mount (chunksize 8 MiB) until close() returns;
3. N readers of N different blobs at once: aggregate throughput vs N
   ``download_fileobj`` at once, and each reader's share;
4. first byte of a small link file (its directory listed already, and on a
   fresh mount by its whole path);
5. ``find -ls`` over N link files, each in its own digest directory, on a
   fresh mount: time, requests, and the time the requests would take one
   after another (requests x their delays);
6. the daemon's peak RSS (VmHWM) over sections 1-3 (one mount);
8. with ``--peers``: s3fs-fuse and rclone mount (Debian's packages, when
   installed), reading the blob and walking the links the same way.

Only loopback traffic; everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import drop_page_cache, peak_rss_mib, read_file  # noqa: E402  (beside this file)

from tests.s3emulator import PROFILES, DistantS3, Profile  # noqa: E402
from tests.util import (  # noqa: E402
    mount_env,
    s3_client,
    s3regfs_command,
    start_moto,
    stop_process,
)

MiB = 1024 * 1024
BUCKET = "distant"
PART = 8 * MiB
LINKS = "docker/registry/v2/repositories/app/_layers/sha256"


def blob_key(digest: str) -> str:
    return f"docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data"


class Mounted:
    """``s3regfs -f`` of the bucket through *url* at *path*."""

    def __init__(self, url: str, path: Path, log: Path, extra: str = "") -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = f"regionendpoint={url},region=us-east-1,chunksize={PART},metadata_ttl=60"
        if extra:
            options += f",{extra}"
        self.path = path
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                s3regfs_command("-f", "-o", options, BUCKET, str(path)),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=mount_env(),
            )
        deadline = time.monotonic() + 30
        while not os.path.ismount(path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"s3regfs did not mount: {log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.path)], check=False)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            stop_process(self.process)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def range_costs(s3: Any, key: str, rounds: int = 5) -> str:
    def get(range_: str) -> float:
        return timed(lambda: s3.get_object(Bucket=BUCKET, Key=key, Range=range_)["Body"].read())

    one = min(get("bytes=0-0") for _ in range(rounds))
    mib = min(get(f"bytes={MiB}-{2 * MiB - 1}") for _ in range(rounds))
    return f"1-byte range {one * 1000:.1f} ms, 1 MiB range {mib * 1000:.1f} ms (best of {rounds})"


def rounds_text(values: list[float], unit: str = "s") -> str:
    return ", ".join(f"{v:.2f}" for v in values) + f" {unit}"


def ratio_line(
    label: str, mib: float, boto: list[float], fs: list[float], target: str, tool: str = "s3regfs"
) -> str:
    b, f = statistics.median(boto), statistics.median(fs)
    return (
        f"{label}: boto3 {mib / b:6.1f} MiB/s ({rounds_text(boto)}), {tool} {mib / f:6.1f} MiB/s "
        f"({rounds_text(fs)}); ratio {b / f:.2f} (rounds {', '.join(f'{x / y:.2f}' for x, y in zip(boto, fs, strict=True))}; target {target})"
    )


class Bench:
    """The data of one run: a 'big' blob, N reader blobs, a source file, links."""

    def __init__(self, port: int, work: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.work = work
        direct = s3_client(f"http://127.0.0.1:{port}")
        direct.create_bucket(Bucket=BUCKET)
        data = os.urandom(args.size_mib * MiB)
        self.big_digest = hashlib.sha256(data).hexdigest()
        direct.put_object(Bucket=BUCKET, Key=blob_key(self.big_digest), Body=data)
        self.source = work / "source"
        self.source.write_bytes(data)
        del data
        self.readers: list[str] = []
        for _ in range(args.readers):
            body = os.urandom(args.reader_mib * MiB)
            digest = hashlib.sha256(body).hexdigest()
            direct.put_object(Bucket=BUCKET, Key=blob_key(digest), Body=body)
            self.readers.append(digest)
        self.link_names: list[str] = []
        with ThreadPoolExecutor(8) as pool:

            def put_link(i: int) -> None:
                hexdigest = hashlib.sha256(str(i).encode()).hexdigest()
                direct.put_object(
                    Bucket=BUCKET, Key=f"{LINKS}/{hexdigest}/link", Body=f"sha256:{hexdigest}".encode()
                )

            list(pool.map(put_link, range(args.links)))
        self.first_link = f"{LINKS}/{hashlib.sha256(b'0').hexdigest()}/link"
        print(
            f"1. ranged GETs of a {args.size_mib} MiB object, no emulator: {range_costs(direct, blob_key(self.big_digest))}"
        )

    def run_profile(self, port: int, profile: Profile) -> None:
        args = self.args
        import botocore.config
        from boto3.s3.transfer import TransferConfig

        proxy = DistantS3(port, profile).start()
        transfer = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=10)
        # The mount's client settings: checksums only when required (the registry sends none).
        client: Any = s3_client(
            proxy.url,
            botocore.config.Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=64,
            ),
        )
        cap = (
            f"{profile.bandwidth / 1e6:.0f} MB/s per connection" if profile.bandwidth else "no bandwidth cap"
        )
        print(
            f"\nprofile {profile.name}: {cap}, {profile.latency * 1000:.0f} ms before each request, "
            f"+{profile.list_latency * 1000:.0f} ms per LIST page; {args.rounds} rounds, medians"
        )
        mnt = self.work / f"mnt-{profile.name}"
        log = self.work / f"s3regfs-{profile.name}.log"
        try:
            mounted = Mounted(proxy.url, mnt, log)
            try:
                self._transfers(client, transfer, mounted)
                print(
                    f"6. daemon peak RSS (VmHWM) over 1-3: {peak_rss_mib(mounted.process.pid):.0f} MiB (target <= 300)"
                )
            finally:
                mounted.stop()
            self._first_byte(proxy, mnt, log, profile)
            self._find(proxy, mnt, log, profile)
            if args.peers:
                self._peers(proxy, client, transfer, profile)
        finally:
            proxy.stop()

    def _boto_read(self, client: Any, transfer: Any) -> float:
        sink = io.BytesIO()
        key = blob_key(self.big_digest)
        elapsed = timed(lambda: client.download_fileobj(BUCKET, key, sink, Config=transfer))
        assert hashlib.sha256(sink.getvalue()).hexdigest() == self.big_digest
        return elapsed

    def _peers(self, proxy: DistantS3, client: Any, transfer: Any, profile: Profile) -> None:
        """8. s3fs-fuse and rclone mount (Debian's), read-only, through the same proxy."""
        import shutil
        from types import SimpleNamespace

        from bench import mount_rclone, mount_s3fs

        endpoint: Any = SimpleNamespace(url=proxy.url)
        key = blob_key(self.big_digest)
        size = self.args.size_mib
        for binary, start in (("s3fs", mount_s3fs), ("rclone", mount_rclone)):
            if not shutil.which(binary):
                print(f"8. {binary}: not installed, skipped")
                continue
            path = self.work / f"mnt-{binary}-{profile.name}"
            path.mkdir(exist_ok=True)
            running = start(endpoint, path, self.work / f"{binary}.log", bucket=BUCKET)
            try:
                boto_reads: list[float] = []
                peer_reads: list[float] = []
                for _ in range(self.args.rounds):
                    boto_reads.append(self._boto_read(client, transfer))
                    drop_page_cache()
                    peer_reads.append(read_file(path / key)[1])
                    assert sha256_of_file(path / key) == self.big_digest, f"{binary} read wrong bytes"
                print(
                    ratio_line(
                        f"8. {running.name} read {size} MiB",
                        size,
                        boto_reads,
                        peer_reads,
                        "for s3regfs >= 1.0",
                        tool=running.name,
                    )
                )
                before = proxy.requests
                started = time.perf_counter()
                try:
                    subprocess.run(
                        ["find", str(path / "docker/registry/v2/repositories"), "-type", "f", "-ls"],
                        stdout=subprocess.DEVNULL,
                        check=True,
                        timeout=self.args.peer_find_timeout,
                    )
                    walked = f"{time.perf_counter() - started:.2f} s"
                except subprocess.TimeoutExpired:
                    walked = f"not done after {self.args.peer_find_timeout:.0f} s"
                print(
                    f"   {running.name} find -ls over {self.args.links} links: {walked}, {proxy.requests - before} requests"
                )
            finally:
                running.stop()

    def _transfers(self, client: Any, transfer: Any, mounted: Mounted) -> None:
        args = self.args
        size = args.size_mib
        key = blob_key(self.big_digest)
        big = mounted.path / key

        def fs_read() -> float:
            drop_page_cache()
            elapsed = read_file(big)[1]
            # Checked after the clock stopped (blob pages stay cached).
            assert sha256_of_file(big) == self.big_digest, "s3regfs read wrong bytes"
            return elapsed

        boto_reads: list[float] = []
        fs_reads: list[float] = []
        for _ in range(args.rounds):
            boto_reads.append(self._boto_read(client, transfer))
            fs_reads.append(fs_read())
        print(ratio_line(f"2. read {size} MiB", size, boto_reads, fs_reads, ">= 1.0"))

        def boto_write(name: str) -> float:
            return timed(lambda: client.upload_file(str(self.source), BUCKET, name, Config=transfer))

        def fs_write(name: str) -> float:
            elapsed = timed(
                lambda: subprocess.run(["cp", str(self.source), str(mounted.path / name)], check=True)
            )
            assert client.head_object(Bucket=BUCKET, Key=name)["ContentLength"] == size * MiB
            return elapsed

        (mounted.path / "upload").mkdir(exist_ok=True)
        boto_writes = []
        fs_writes = []
        for round_ in range(args.rounds):
            boto_writes.append(boto_write(f"upload/boto-{round_}"))
            fs_writes.append(fs_write(f"upload/cp-{round_}"))
        print(ratio_line(f"3. write {size} MiB", size, boto_writes, fs_writes, ">= 0.9"))

        n, each = args.readers, args.reader_mib
        boto_all: list[float] = []
        fs_all: list[float] = []
        shares: list[str] = []
        for _ in range(args.rounds):
            boto_all.append(self._boto_readers(client, transfer))
            elapsed, finished = self._fs_readers(mounted)
            fs_all.append(elapsed)
            # A reader's share: its throughput over the aggregate's, times N
            # (1.0 = a fair share; >= 0.8 is the target).
            aggregate = n * each / elapsed
            shares.append("/".join(f"{(each / finished[d]) / aggregate * n:.2f}" for d in self.readers))
        print(
            ratio_line(
                f"4. {n} readers of {each} MiB at once, aggregate", n * each, boto_all, fs_all, ">= 0.9"
            )
        )
        print(
            f"   each s3regfs reader's share of the aggregate x {n}, per round: {'; '.join(shares)} (target >= 0.8)"
        )

    def _boto_readers(self, client: Any, transfer: Any) -> float:
        sinks = {digest: io.BytesIO() for digest in self.readers}

        def one(digest: str) -> None:
            client.download_fileobj(BUCKET, blob_key(digest), sinks[digest], Config=transfer)

        with ThreadPoolExecutor(len(sinks)) as pool:
            elapsed = timed(lambda: list(pool.map(one, sinks)))
        for digest, sink in sinks.items():
            assert hashlib.sha256(sink.getvalue()).hexdigest() == digest
        return elapsed

    def _fs_readers(self, mounted: Mounted) -> tuple[float, dict[str, float]]:
        """All readers at once: the time until the last ended, and each one's."""
        drop_page_cache()
        finished: dict[str, float] = {}
        started = time.perf_counter()

        def one(digest: str) -> None:
            read_file(mounted.path / blob_key(digest))
            finished[digest] = time.perf_counter() - started

        with ThreadPoolExecutor(len(self.readers)) as pool:
            elapsed = timed(lambda: list(pool.map(one, self.readers)))
        for digest in self.readers:
            assert sha256_of_file(mounted.path / blob_key(digest)) == digest, "s3regfs read wrong bytes"
        return elapsed, finished

    def _first_byte(self, proxy: DistantS3, mnt: Path, log: Path, profile: Profile) -> None:
        mounted = Mounted(proxy.url, mnt, log)
        try:
            path = mounted.path / self.first_link

            def first_byte() -> None:
                with open(path, "rb", buffering=0) as f:
                    assert f.read(1) == b"s"

            before = proxy.requests
            cold = timed(first_byte)
            cold_requests = proxy.requests - before
            warm: list[float] = []
            warm_requests = 0
            for i in range(1, 1 + self.args.rounds):
                # Another link, its directory listed already (ls of the parent);
                # a link's pages are dropped at every open (not a blob).
                other = f"{LINKS}/{hashlib.sha256(str(i).encode()).hexdigest()}/link"
                os.listdir(mounted.path / other.rpartition("/")[0])
                path = mounted.path / other
                before = proxy.requests
                warm.append(timed(first_byte))
                warm_requests += proxy.requests - before
            print(
                f"5. first byte of a link file, its directory listed: {statistics.median(warm) * 1000:.0f} ms "
                f"({rounds_text([w * 1000 for w in warm], 'ms')}); one request's delay "
                f"{profile.latency * 1000:.0f} ms (target <= 1.5 x + FUSE overhead); "
                f"{warm_requests / self.args.rounds:.1f} requests each; "
                f"fresh mount, whole path: {cold * 1000:.0f} ms, {cold_requests} requests"
            )
        finally:
            mounted.stop()

    def _find(self, proxy: DistantS3, mnt: Path, log: Path, profile: Profile) -> None:
        mounted = Mounted(proxy.url, mnt, log)
        try:
            time.sleep(0.5)  # start-up requests are not the walk's
            before, lists_before = proxy.requests, proxy.list_requests
            elapsed = timed(
                lambda: subprocess.run(
                    ["find", str(mounted.path / "docker/registry/v2/repositories"), "-type", "f", "-ls"],
                    stdout=subprocess.DEVNULL,
                    check=True,
                )
            )
            requests = proxy.requests - before
            lists = proxy.list_requests - lists_before
            serial = requests * profile.latency + lists * profile.list_latency
            print(
                f"7. find -ls over {self.args.links} link files, fresh mount: {elapsed:.2f} s, {requests} requests "
                f"({lists} LIST); those requests one after another: {serial:.2f} s; "
                f"ratio {elapsed / serial if serial else float('nan'):.2f} (target <= 1.5)"
            )
        finally:
            mounted.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", default="T,L")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--reader-mib", type=int, default=128)
    parser.add_argument("--links", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--peers", action="store_true", help="also s3fs-fuse and rclone mount, when installed"
    )
    parser.add_argument("--peer-find-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="s3regfs-distant-"))
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(
        "endpoint: moto_server through tests/moto_ranged.py (ranged GETs cost the range), "
        "behind tests/s3emulator.py"
    )
    moto = start_moto(mount_env(), ranged=True)
    try:
        bench = Bench(moto.port, work, args)
        for name in args.profiles.split(","):
            bench.run_profile(moto.port, PROFILES[name])
    finally:
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
