# SPDX-License-Identifier: MIT
"""s3regfs benchmarks against a local moto_server, measured side by side in one run.

    .venv/bin/python benchmarks/bench.py [--size-mib 128] [--links 3000] [--rounds 3] [--peers]
    .venv/bin/python benchmarks/bench.py --profiles T,L   # a distant S3, emulated (distant.py)

Prints what it measured, every time:

1. sequential read of one object through the mount vs boto3
   ``get_object()['Body'].read()`` of the same object (ratio of throughputs;
   target >= 0.8), the page cache dropped before every read through a mount;
2. ``find MOUNT -type f -ls`` over a registry tree of N link files, each in its
   own digest directory, on a fresh mount: S3 requests per file (target <= 0.05)
   and HEADs (target 0), counted at the endpoint;
3. peak RSS of the s3regfs daemon (VmHWM) after the sequential reads
   (target <= 200 MiB).

With ``--peers``, s3fs-fuse and rclone mount (Debian's packages, when
installed) are measured the same way against the same endpoint in the same run.

Only loopback traffic; everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from tests.util import CREDENTIALS, MotoServer, mount_env, s3_client, s3regfs_command, start_moto  # noqa: E402

MiB = 1024 * 1024
BUCKET = "bench"


@dataclass
class Running:
    """A mounted file system of some tool."""

    name: str
    process: subprocess.Popen[bytes]
    path: Path
    unmount: list[str]

    def stop(self) -> None:
        subprocess.run([*self.unmount, str(self.path)], check=False, stderr=subprocess.DEVNULL)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_mounted(running: Running, timeout: float = 30) -> Running:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(running.path):
            return running
        if running.process.poll() is not None:
            raise RuntimeError(f"{running.name} exited with {running.process.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{running.name} did not mount within {timeout} s")


def mount_s3regfs(moto: MotoServer, path: Path, log: Path) -> Running:
    with open(log, "ab") as err:
        process = subprocess.Popen(
            s3regfs_command("-f", "-o", f"regionendpoint={moto.url},region=us-east-1", BUCKET, str(path)),
            stdout=err,
            stderr=subprocess.STDOUT,
            env=mount_env(),
        )
    return wait_mounted(Running("s3regfs", process, path, ["fusermount3", "-u"]))


def mount_s3fs(
    moto: MotoServer, path: Path, log: Path, *, read_only: bool = True, bucket: str = BUCKET
) -> Running:
    passwd = log.with_suffix(".passwd")
    passwd.write_text(f"{CREDENTIALS['AWS_ACCESS_KEY_ID']}:{CREDENTIALS['AWS_SECRET_ACCESS_KEY']}\n")
    passwd.chmod(0o600)
    command = [
        "s3fs", bucket, str(path), "-f", "-o", f"url={moto.url}", "-o", "use_path_request_style",
        "-o", f"passwd_file={passwd}", "-o", "endpoint=us-east-1",
    ]  # fmt: skip
    if read_only:
        command += ["-o", "ro"]
    with open(log, "ab") as err:
        process = subprocess.Popen(command, stdout=err, stderr=subprocess.STDOUT)
    return wait_mounted(Running("s3fs-fuse", process, path, ["fusermount", "-u"]))


def mount_rclone(moto: MotoServer, path: Path, log: Path, *, bucket: str = BUCKET) -> Running:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env |= {
        "RCLONE_CONFIG_MOTO_TYPE": "s3",
        "RCLONE_CONFIG_MOTO_PROVIDER": "Other",
        "RCLONE_CONFIG_MOTO_ENDPOINT": moto.url,
        "RCLONE_CONFIG_MOTO_ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "RCLONE_CONFIG_MOTO_FORCE_PATH_STYLE": "true",
    }
    command = ["rclone", "mount", f"moto:{bucket}", str(path), "--read-only"]
    with open(log, "ab") as err:
        process = subprocess.Popen(command, stdout=err, stderr=subprocess.STDOUT, env=env)
    return wait_mounted(Running("rclone mount", process, path, ["fusermount", "-u"]))


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


def rss_split_mib(pid: int) -> tuple[float, float]:
    """Process *pid*'s resident memory now: anonymous (its heap) and file
    pages (mapped files it read, such as rendered reports), in MiB."""
    found = {"RssAnon": float("nan"), "RssFile": float("nan")}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in found:
            found[name] = int(value.split()[0]) / 1024
    return found["RssAnon"], found["RssFile"]


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process *pid* so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    cpu = "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    idle = ""
    halt_poll = guest_halt_poll_ns()
    if halt_poll is not None:
        idle = f", guest halt polling {halt_poll // 1000} us"
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), {mem} GiB, "
        f"Python {platform.python_version()}{idle}"
    )


#: The cpuidle-haltpoll driver's setting on a KVM guest: how long an idle
#: virtual CPU polls for work before it halts (the kernel's default is
#: 200 us; a halted one costs the host an exit and an interrupt to wake).
HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def guest_halt_poll_ns() -> int | None:
    """This guest's halt-polling time in ns (None: no cpuidle-haltpoll here)."""
    try:
        return int(HALT_POLL.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def guest_halt_polling(ns: int | None) -> Iterator[None]:
    """With *ns* (not None): the guest's halt polling set to *ns* for the
    block and put back after it.  A walk through FUSE wakes the walker once
    per request; on a guest whose idle CPUs halt at once each wake-up costs
    a host round trip, which is most of a walk's time there."""
    before = guest_halt_poll_ns()
    if ns is None or before is None:
        yield
        return
    HALT_POLL.write_text(str(ns))
    try:
        yield
    finally:
        HALT_POLL.write_text(str(before))


def fill_bucket(s3: Any, size_mib: int, links: int) -> str:
    s3.create_bucket(Bucket=BUCKET)
    body = os.urandom(size_mib * MiB)
    digest = hashlib.sha256(body).hexdigest()
    big_key = f"docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data"
    s3.put_object(Bucket=BUCKET, Key=big_key, Body=body)
    hexes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(links)]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda h: s3.put_object(
                    Bucket=BUCKET,
                    Key=f"docker/registry/v2/repositories/library/app/_layers/sha256/{h}/link",
                    Body=f"sha256:{h}".encode(),
                ),
                hexes,
            )
        )
    return big_key


def write_benchmarks(moto: MotoServer, workdir: Path, args: argparse.Namespace, peers: list[str]) -> None:
    """4. cp of a big file into the mount vs boto3 upload_file; 5. RSS while copying
    1 GiB in; 6. cp -r and rm -r of 1,000 small files, next to s3fs."""
    import botocore.config
    from boto3.s3.transfer import TransferConfig

    from s3regfs.writer import PARTS_IN_FLIGHT

    chunk = 10 * MiB  # the driver's default chunksize
    source = workdir / "upload.bin"
    with open(source, "wb") as f:
        f.write(os.urandom(args.size_mib * MiB))
    transfer = TransferConfig(
        multipart_threshold=chunk, multipart_chunksize=chunk, max_concurrency=PARTS_IN_FLIGHT
    )
    boto_times: list[float] = []
    cp_times: list[float] = []

    def copy_round(round_: int) -> None:
        """Both copies against a fresh endpoint, the sides taking turns to go
        first: moto's CPU per copy grows and spikes as one process takes copy
        after copy (its RSS grows by about 60 MiB a copy, deleted or not), and
        the side after a slow one paid for it (see benchmarks/README.md)."""
        endpoint = start_moto()
        mountpoint = workdir / f"mnt-write-{round_}"
        mountpoint.mkdir()
        try:
            # Same client settings as s3regfs (checksums only when required, as
            # the registry sends none), same part size and concurrency.
            client: Any = s3_client(
                endpoint.url,
                botocore.config.Config(
                    request_checksum_calculation="when_required", response_checksum_validation="when_required"
                ),
            )
            client.create_bucket(Bucket=BUCKET)
            running = mount_s3regfs(endpoint, mountpoint, workdir / "write.log")
            try:
                (running.path / "upload").mkdir()

                def boto_copy() -> float:
                    subprocess.run(["sync"], check=True)
                    started = time.perf_counter()
                    client.upload_file(str(source), BUCKET, "upload/boto", Config=transfer)
                    return time.perf_counter() - started

                def mount_copy() -> float:
                    subprocess.run(["sync"], check=True)
                    started = time.perf_counter()
                    subprocess.run(["cp", str(source), str(running.path / "upload/cp")], check=True)
                    elapsed = time.perf_counter() - started
                    head = client.head_object(Bucket=BUCKET, Key="upload/cp")
                    assert head["ContentLength"] == args.size_mib * MiB
                    return elapsed

                if round_ % 2:
                    cp_times.append(mount_copy())
                    boto_times.append(boto_copy())
                else:
                    boto_times.append(boto_copy())
                    cp_times.append(mount_copy())
            finally:
                running.stop()
        finally:
            endpoint.stop()

    for round_ in range(args.write_rounds):
        copy_round(round_)
    boto, cp = statistics.median(boto_times), statistics.median(cp_times)
    ratios = sorted(b / c for b, c in zip(boto_times, cp_times, strict=True))
    print(
        f"\n4. cp of {args.size_mib} MiB into the mount (until close() returns) vs boto3 upload_file, "
        f"{args.write_rounds} rounds, median and spread"
    )
    print(
        f"   boto3 upload_file ({chunk // MiB} MiB parts, {PARTS_IN_FLIGHT} at once): {args.size_mib / boto:7.1f} MiB/s  ({', '.join(f'{t:.2f}' for t in boto_times)} s)"
    )
    print(
        f"   cp into s3regfs:                               {args.size_mib / cp:7.1f} MiB/s  ({', '.join(f'{t:.2f}' for t in cp_times)} s)"
    )
    print(
        f"   ratio: median {statistics.median(ratios):.2f}, rounds {ratios[0]:.2f}-{ratios[-1]:.2f} "
        f"({', '.join(f'{r:.2f}' for r in ratios)})  (target >= 0.8)"
    )

    # 5. Peak RSS of a fresh daemon while copying 1 GiB in.
    gib = workdir / "gib.bin"
    with open(gib, "wb") as f:
        for _ in range(1024 // 64):
            f.write(os.urandom(64 * MiB))
    (workdir / "mnt-gib").mkdir()
    running = mount_s3regfs(moto, workdir / "mnt-gib", workdir / "gib.log")
    try:
        started = time.perf_counter()
        subprocess.run(["cp", str(gib), str(running.path / "gib")], check=True)
        elapsed = time.perf_counter() - started
        rss = peak_rss_mib(running.process.pid)
    finally:
        running.stop()
    gib.unlink()
    print(
        f"\n5. cp of 1 GiB into the mount: {elapsed:.1f} s; daemon peak RSS (VmHWM): {rss:.0f} MiB  (target <= 250)"
    )

    # 6. Many small files.
    tree = workdir / "tree"
    tree.mkdir()
    for i in range(1000):
        (tree / f"f{i:04d}").write_bytes(os.urandom(200))
    print("\n6. cp -r of 1,000 small files into the mount, then rm -r")
    starters: list[tuple[str, Callable[[MotoServer, Path, Path], Running]]] = [("s3regfs", mount_s3regfs)]
    if "s3fs" in peers:
        starters.append(("s3fs", lambda m, p, log: mount_s3fs(m, p, log, read_only=False)))
    for name, starter in starters:
        path = workdir / f"mnt-small-{name}"
        path.mkdir()
        running = starter(moto, path, workdir / f"small-{name}.log")
        try:
            started = time.perf_counter()
            subprocess.run(["cp", "-r", str(tree), str(path / "tree")], check=True)
            copy = time.perf_counter() - started
            started = time.perf_counter()
            subprocess.run(["rm", "-r", str(path / "tree")], check=True)
            remove = time.perf_counter() - started
        finally:
            running.stop()
        print(
            f"   {running.name:10} cp -r: {1000 / copy:7.1f} files/s ({copy:.2f} s)   rm -r: {1000 / remove:7.1f} files/s ({remove:.2f} s)"
        )


def images_view_costs(moto: MotoServer, workdir: Path, repositories: int = 200) -> None:
    """7. What the _images view costs on a registry of *repositories* repositories."""
    s3: Any = s3_client(moto.url)
    bucket = "images-bench"
    s3.create_bucket(Bucket=bucket)
    root = "docker/registry/v2"
    objects: dict[str, bytes] = {}

    def blob(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        objects[f"{root}/blobs/sha256/{digest[:2]}/{digest}/data"] = data
        return digest

    for r in range(repositories):
        name = f"team{r % 10}/app{r}"
        config = blob(json.dumps({"architecture": "amd64", "os": "linux", "n": r}).encode())
        layers = [blob(os.urandom(1000)) for _ in range(2)]
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": f"sha256:{config}",
                    "size": 1,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": f"sha256:{d}",
                        "size": 1000,
                    }
                    for d in layers
                ],
            }
        ).encode()
        m = blob(manifest)
        repo = f"{root}/repositories/{name}"
        objects[f"{repo}/_manifests/tags/latest/current/link"] = f"sha256:{m}".encode()
        objects[f"{repo}/_manifests/tags/latest/index/sha256/{m}/link"] = f"sha256:{m}".encode()
        objects[f"{repo}/_manifests/revisions/sha256/{m}/link"] = f"sha256:{m}".encode()
        for d in (config, *layers):
            objects[f"{repo}/_layers/sha256/{d}/link"] = f"sha256:{d}".encode()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket=bucket, Key=item[0], Body=item[1]), objects.items()))
    path = workdir / "mnt-images"
    path.mkdir()
    with open(workdir / "images.log", "ab") as err:
        process = subprocess.Popen(
            s3regfs_command("-f", "-o", f"regionendpoint={moto.url},region=us-east-1", bucket, str(path)),
            stdout=err,
            stderr=subprocess.STDOUT,
            env=mount_env(),
        )
    running = wait_mounted(Running("s3regfs", process, path, ["fusermount3", "-u"]))
    try:
        time.sleep(0.5)

        def count(action: Callable[[], object]) -> tuple[int, int, float]:
            before = moto.request_lines()
            started = time.perf_counter()
            action()
            elapsed = time.perf_counter() - started
            new = moto.request_lines()[len(before) :]
            return (
                len(new),
                sum(1 for line in new if "GET /images-bench/" in line and "list-type" not in line),
                elapsed,
            )

        listing = count(lambda: [os.listdir(path / "_images" / f"team{t}") for t in range(10)])
        index = count(lambda: (path / "_images/team3/app3/index.json").read_bytes())
        walk = count(
            lambda: subprocess.run(
                ["find", str(path / "_images"), "-type", "f"], check=True, capture_output=True
            )
        )
    finally:
        running.stop()
    print(
        f"\n7. the _images view on a registry of {repositories} repositories ({len(objects)} keys), fresh mount"
    )
    print(
        f"   list every repository:           {listing[0]:4d} requests ({listing[1]} GETs), {listing[2]:.2f} s"
    )
    print(f"   then one repository's index.json: {index[0]:4d} requests ({index[1]} GETs), {index[2]:.2f} s")
    print(f"   then find over the whole view:   {walk[0]:4d} requests ({walk[1]} GETs), {walk[2]:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--links", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-rounds", type=int, default=5, help="rounds of the cp vs upload_file figure")
    parser.add_argument(
        "--profiles",
        default="",
        help="T,L: run the distant-S3 benchmark (benchmarks/distant.py) with these profiles instead",
    )
    parser.add_argument("--peers", action="store_true", help="also measure s3fs-fuse and rclone mount")
    parser.add_argument("--images-only", action="store_true", help="only measure the _images view's costs")
    parser.add_argument(
        "--reports",
        type=int,
        default=0,
        metavar="KEYS",
        help="run the _registry reports benchmark (benchmarks/reports.py) on a generated bucket of KEYS keys instead",
    )
    args = parser.parse_args()
    if args.reports:
        import reports  # benchmarks/reports.py, beside this file

        return reports.main(["--keys", str(args.reports)])
    if args.profiles:
        import distant  # benchmarks/distant.py, beside this file

        print(f"machine: {machine()}")
        extra = ["--peers"] if args.peers else []
        return distant.main(["--profiles", args.profiles, "--rounds", str(args.rounds), *extra])

    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"machine: {machine()}")
    print("endpoint: moto_server on loopback, as installed (no proxy)")
    moto = start_moto()
    workdir = Path(tempfile.mkdtemp(prefix="s3regfs-bench-"))
    if args.images_only:
        try:
            images_view_costs(moto, workdir)
        finally:
            moto.stop()
        return 0
    tools: list[tuple[str, Callable[[MotoServer, Path, Path], Running]]] = [("s3regfs", mount_s3regfs)]
    if args.peers:
        for binary, starter in (("s3fs", mount_s3fs), ("rclone", mount_rclone)):
            if shutil.which(binary):
                tools.append((binary, starter))
            else:
                print(f"({binary} is not installed: skipped)")
    running: Running | None = None
    try:
        s3: Any = s3_client(moto.url)
        big_key = fill_bucket(s3, args.size_mib, args.links)
        size = args.size_mib * MiB

        # One tool mounted at a time (idle peers' daemons would take CPU from
        # the one measured); boto3 is measured in the same window, alternating.
        boto_times: dict[str, list[float]] = {name: [] for name, _ in tools}
        read_times: dict[str, list[float]] = {name: [] for name, _ in tools}
        names: dict[str, str] = {}
        rss: float = float("nan")
        dropped = False
        for name, starter in tools:
            path = workdir / f"mnt-{name}"
            path.mkdir()
            running = starter(moto, path, workdir / f"{name}.log")
            names[name] = running.name
            try:
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    data = s3.get_object(Bucket=BUCKET, Key=big_key)["Body"].read()
                    boto_times[name].append(time.perf_counter() - started)
                    assert len(data) == size
                    del data
                    dropped = drop_page_cache()
                    total, elapsed = read_file(running.path / big_key)
                    assert total == size, (name, total)
                    read_times[name].append(elapsed)
                if name == "s3regfs":
                    rss = peak_rss_mib(running.process.pid)
            finally:
                running.stop()
                running = None

        print(
            f"\n1. sequential read of {args.size_mib} MiB, median of {args.rounds} (page cache dropped: {dropped})"
        )
        for name, _ in tools:
            boto = statistics.median(boto_times[name])
            t = statistics.median(read_times[name])
            print(
                f"   {names[name]:14} {args.size_mib / t:8.1f} MiB/s   boto3 get_object().read() in the same window: "
                f"{args.size_mib / boto:7.1f} MiB/s   ratio: {boto / t:.2f}"
            )
        print("   (target for s3regfs: ratio >= 0.8)")

        print(
            f"\n2. find MOUNT -type f -ls over {args.links} link files, each in its own digest directory (fresh mount)"
        )
        for name, starter in tools:
            path = workdir / f"mnt-{name}"
            running = starter(moto, path, workdir / f"{name}.log")
            time.sleep(0.5)  # let start-up requests finish before counting
            before = len(moto.request_lines())
            started = time.perf_counter()
            out = subprocess.run(
                ["find", str(path), "-type", "f", "-ls"], check=True, capture_output=True, text=True
            ).stdout
            elapsed = time.perf_counter() - started
            lines = moto.request_lines()[before:]
            own = ""
            if name == "s3regfs":  # its own accounting, since it mounted
                own = f", by its .s3regfs/stats: {json.loads((path / '.s3regfs/stats').read_text())['requests']}"
            running.stop()
            running = None
            files = len(out.splitlines())
            heads = sum(1 for line in lines if '"HEAD ' in line)
            print(
                f"   {names[name]:14} {elapsed:7.2f} s  {files} files  {len(lines):6d} requests "
                f"({len(lines) / max(files, 1):.4f} per file), HEAD: {heads}{own}"
            )
        print("   (targets for s3regfs: <= 0.05 requests per file, 0 HEAD)")
        print(f"\n3. s3regfs daemon peak RSS (VmHWM) after the reads: {rss:.0f} MiB  (target <= 200)")
        images_view_costs(moto, workdir)
        write_benchmarks(moto, workdir, args, peers=[name for name, _ in tools if name != "s3regfs"])
        return 0
    finally:
        if running is not None:
            running.stop()
        moto.stop()


if __name__ == "__main__":
    sys.exit(main())
