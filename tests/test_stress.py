# SPDX-License-Identifier: MIT
"""Load: one mount serving 16 readers, 4 writers and a find(1) loop at once.

A registry-like tree of blobs (0 bytes to 24 MiB, each stored under the
sha256 of its content) and repository links is put in a fresh bucket and
mounted; for ``S3REGFS_STRESS_SECONDS`` (default 60) seconds:

- 16 reader threads open random files and read them whole (the sha256 must be
  the blob's digest), at random ranges with pread, or sequentially from a
  random offset; every byte is compared with what the test computed itself.
  Most reads first drop the file's pages from the page cache
  (POSIX_FADV_DONTNEED), and the whole page cache is dropped twice, so the
  daemon serves them rather than the kernel;
- 4 writer threads write new files of random sizes (many above the 5 MiB
  chunksize, so uploaded in parts while written), close them, and read half
  of them back;
- one thread runs ``find MOUNT -type f`` in a loop: every blob, link and file
  closed before that find started must be listed.

Then: no thread saw an error, every thread finished within a deadline (else
the stacks of the test and of the daemon are dumped), the daemon's peak RSS
stayed bounded, every written file is in S3 with its content and reads back
the same through a fresh mount, the S3 request count is bounded by what was
done, and the daemon logged no error.  The figures are printed (``pytest -s``,
or ``-rA``).
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.util import fuse_test_marker, mounted, read_stats

pytestmark = [fuse_test_marker(), pytest.mark.stress]

MiB = 1024 * 1024
SECONDS = float(os.environ.get("S3REGFS_STRESS_SECONDS", "60"))
READERS = 16
WRITERS = 4
#: Every thread must finish this long after the window closes (a writer may be
#: in the middle of a 16 MiB file; nothing should take more than seconds).
DRAIN_DEADLINE = 60.0
#: Bytes each writer writes per second on average (bursts of whole files):
#: enough to keep multipart uploads going all the time, bounded so moto's
#: memory and the checks afterwards stay small.
WRITE_RATE = 2 * MiB
#: Measured: 150 MiB at most (230 MiB without the two malloc arenas).
RSS_LIMIT = 320 * MiB
SEED = int(os.environ.get("S3REGFS_STRESS_SEED", "20240611"))
#: More -o options for the mount, to try the load with other settings
#: (``readahead_total=4M,max_connections=4``...).
EXTRA_OPTIONS = os.environ.get("S3REGFS_STRESS_OPTIONS", "")
CHUNKSIZE = 5 * MiB
ROOT = "docker/registry/v2"


@dataclass(frozen=True)
class Expected:
    """A file of the tree and what reading it must give."""

    path: str
    data: bytes
    #: "sha256:<hex>" for blob data files.
    digest: str | None = None


def blob_sizes(rng: random.Random) -> list[int]:
    """Edge sizes (empty, around the kernel's 128 KiB reads, the 1 MiB chunks
    of read-ahead and the 5 MiB part size) and random ones up to 24 MiB."""
    edges = [0, 1, 511, 4096, 128 * 1024 - 1, 128 * 1024 + 1, MiB - 1, MiB, MiB + 1]
    edges += [5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 16 * MiB + 7, 24 * MiB]
    randoms = [int(2 ** rng.uniform(6, 24.5)) for _ in range(24)]
    return edges + randoms


def registry_tree(seed: int) -> tuple[dict[str, bytes], list[Expected]]:
    """Keys and bodies of a registry with three repositories; the files to read."""
    rng = random.Random(seed)
    objects: dict[str, bytes] = {}
    files: list[Expected] = []

    def add_blob(data: bytes) -> str:
        hexdigest = hashlib.sha256(data).hexdigest()
        path = f"{ROOT}/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"
        objects[path] = data
        files.append(Expected(path, data, f"sha256:{hexdigest}"))
        return hexdigest

    def add_link(path: str, hexdigest: str) -> None:
        data = f"sha256:{hexdigest}".encode()
        objects[path] = data
        files.append(Expected(path, data))

    layers = [(add_blob(rng.randbytes(size)), size) for size in blob_sizes(rng)]
    for repo in ("library/alpine", "team/app", "team/tools"):
        chosen = rng.sample(layers, 6)
        config = json.dumps({"architecture": "amd64", "os": "linux", "repo": repo}).encode()
        config_hex = add_blob(config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "size": len(config),
                    "digest": f"sha256:{config_hex}",
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": size,
                        "digest": f"sha256:{hexdigest}",
                    }
                    for hexdigest, size in chosen
                ],
            },
            indent=3,
        ).encode()
        manifest_hex = add_blob(manifest)
        base = f"{ROOT}/repositories/{repo}"
        for hexdigest, _ in [*chosen, (config_hex, 0)]:
            add_link(f"{base}/_layers/sha256/{hexdigest}/link", hexdigest)
        add_link(f"{base}/_manifests/revisions/sha256/{manifest_hex}/link", manifest_hex)
        add_link(f"{base}/_manifests/tags/latest/current/link", manifest_hex)
        add_link(f"{base}/_manifests/tags/latest/index/sha256/{manifest_hex}/link", manifest_hex)
    return objects, files


@dataclass
class Load:
    """What the threads did, and what went wrong; shared under :attr:`lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    reads: int = 0
    whole_reads: int = 0
    range_reads: int = 0
    preads: int = 0
    bytes_verified: int = 0
    writes: int = 0
    bytes_written: int = 0
    read_backs: int = 0
    finds: int = 0
    find_entries: int = 0
    #: Written and closed: name -> sha256 hex of the content.
    written: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def failed(self, what: str) -> None:
        with self.lock:
            self.error_count += 1
            if len(self.errors) < 20:
                self.errors.append(f"{what}:\n{traceback.format_exc()}")
        time.sleep(0.05)  # a dead mount fails every call at once: do not spin


def read_whole(fd: int, expected: Expected, rng: random.Random) -> int:
    hasher = hashlib.sha256()
    total = 0
    while True:
        chunk = os.read(fd, rng.choice([4096, 65536, 128 * 1024, 1000_000, MiB]))
        if not chunk:
            break
        hasher.update(chunk)
        total += len(chunk)
    assert total == len(expected.data), f"{expected.path}: read {total} bytes of {len(expected.data)}"
    if expected.digest:
        assert f"sha256:{hasher.hexdigest()}" == expected.digest, f"{expected.path}: wrong content"
    else:
        assert hasher.digest() == hashlib.sha256(expected.data).digest(), f"{expected.path}: wrong content"
    return total


def read_ranges(fd: int, expected: Expected, rng: random.Random, *, sequential: bool) -> tuple[int, int]:
    """pread at random offsets; or *sequential*ly from a random offset (which
    makes the daemon start a stream there).  Returns (preads, bytes)."""
    size = len(expected.data)
    verified = 0
    offset = rng.randrange(size + 1)
    count = rng.randint(1, 6)
    for _ in range(count):
        if not sequential:
            offset = rng.randrange(size + 1)
        length = (
            rng.choice([1, 4096, 100_000, 128 * 1024, MiB, 3 * MiB])
            if rng.random() < 0.5
            else rng.randint(1, 2 * MiB)
        )
        data = os.pread(fd, length, offset)
        want = expected.data[offset : offset + length]
        assert data == want, f"{expected.path}: {len(data)} bytes at {offset} differ (asked {length})"
        verified += len(data)
        offset += len(data)
    return count, verified


def reader(mnt: Path, files: list[Expected], load: Load, number: int) -> None:
    rng = random.Random(SEED * 100 + number)
    while not load.stop.is_set():
        expected = rng.choice(files)
        kind = rng.random()
        what = f"reader {number}: {expected.path}"
        try:
            fd = os.open(mnt / expected.path, os.O_RDONLY)
            try:
                if rng.random() < 0.7:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                if kind < 0.3:
                    load.add(reads=1, whole_reads=1, bytes_verified=read_whole(fd, expected, rng))
                else:
                    preads, verified = read_ranges(fd, expected, rng, sequential=kind > 0.8)
                    load.add(reads=1, range_reads=1, preads=preads, bytes_verified=verified)
            finally:
                os.close(fd)
        except Exception:  # noqa: BLE001 - collected, asserted at the end
            load.failed(what)


def write_size(rng: random.Random) -> int:
    pick = rng.random()
    if pick < 0.1:
        return rng.choice([0, 1, CHUNKSIZE - 1, CHUNKSIZE, CHUNKSIZE + 1, 2 * CHUNKSIZE])
    if pick < 0.55:
        return rng.randint(1, 256 * 1024)
    if pick < 0.75:
        return rng.randint(256 * 1024, CHUNKSIZE)
    return rng.randint(CHUNKSIZE, 16 * MiB)


def writer(mnt: Path, load: Load, number: int) -> None:
    rng = random.Random(SEED * 1000 + number)
    directory = f"scratch/w{number}"
    started = time.monotonic()
    written = 0
    index = 0
    while not load.stop.is_set():
        size = write_size(rng)
        data = rng.randbytes(size)
        name = f"{directory}/f{index:04d}-{size}"
        index += 1
        try:
            fd = os.open(mnt / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view[: rng.choice([4096, 128 * 1024, MiB, 1_500_000])]) :]
            finally:
                os.close(fd)  # the commit: close returns once the object is stored
            with load.lock:
                load.written[name] = hashlib.sha256(data).hexdigest()
            load.add(writes=1, bytes_written=size)
            if rng.random() < 0.5:
                assert (mnt / name).read_bytes() == data, f"{name}: read back differs"
                load.add(read_backs=1, bytes_verified=size)
        except Exception:  # noqa: BLE001 - collected, asserted at the end
            load.failed(f"writer {number}: {name}")
        written += size
        # Bursts of whole files, WRITE_RATE on average.
        while not load.stop.is_set() and written > WRITE_RATE * (time.monotonic() - started):
            time.sleep(0.05)


#: find(1) once per line read, from a shell started before any file is open
#: for writing: a process forked while a writer holds a file open would close
#: that descriptor at exec, and every close of a written file is a FLUSH, which
#: commits what was written so far (an extra upload: the content ends up right,
#: but the request count is no longer what the registry's driver would spend).
FIND_LOOP = 'while read -r _; do find "$1" -type f -printf "%P\\n" 2>>"$2"; echo "@@ $?"; done'


def start_find_loop(mnt: Path, errors: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", FIND_LOOP, "find-loop", str(mnt), str(errors)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def finder(loop: subprocess.Popen[str], errors: Path, static: set[str], load: Load) -> None:
    """Every blob, link and file closed before a find started must be listed."""
    assert loop.stdin is not None and loop.stdout is not None
    while not load.stop.is_set():
        with load.lock:
            closed_before = set(load.written)
        try:
            loop.stdin.write("\n")
            loop.stdin.flush()
            seen: set[str] = set()
            while not (line := loop.stdout.readline()).startswith("@@ "):
                assert line, "the find loop ended"
                seen.add(line.rstrip("\n"))
            status = line.split()[1]
            assert status == "0" and not errors.read_text(), f"find: exit {status}: {errors.read_text()}"
            missing = sorted((static | closed_before) - seen)
            assert not missing, f"find did not list {len(missing)} files, e.g. {missing[:5]}"
            load.add(finds=1, find_entries=len(seen))
        except Exception:  # noqa: BLE001 - collected, asserted at the end
            load.failed("find")
            if loop.poll() is not None:
                return


def rss_sampler(pid: int, stop: threading.Event, samples: list[tuple[float, int]]) -> None:
    """(time, VmRSS) of the daemon every 0.5 s until *stop*."""
    while not stop.is_set():
        with contextlib.suppress(OSError, ValueError):
            samples.append((time.monotonic(), proc_status_bytes(pid, "VmRSS")))
        stop.wait(0.5)


def quarter_peaks(samples: list[tuple[float, int]], start: float, seconds: float) -> list[float]:
    """The peak RSS (MiB) of each quarter of the window: a leak shows as a climb."""
    peaks = [0.0] * 4
    for at, rss in samples:
        quarter = min(3, max(0, int((at - start) / seconds * 4)))
        peaks[quarter] = max(peaks[quarter], round(rss / MiB, 1))
    return peaks


def proc_status_bytes(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise ValueError(f"no {name} in /proc/{pid}/status")


def drop_caches() -> bool:
    """Drop the page cache, dentries and inodes (root only): the daemon serves
    the next reads, and the kernel forgets inodes while they are in use."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def stuck_report(threads: list[threading.Thread], pid: int, stderr_path: Path) -> str:
    """What hangs: the test's stacks on stderr, the daemon's figures and thread
    stacks (SIGUSR1, then SIGABRT with PYTHONFAULTHANDLER) in its log."""
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGUSR1)
        time.sleep(1)
        os.kill(pid, signal.SIGABRT)
        time.sleep(1)
    names = [t.name for t in threads if t.is_alive()]
    return f"threads still running {DRAIN_DEADLINE} s after the window: {names}\n{stderr_path.read_text()[-20000:]}"


@pytest.fixture
def big_bucket(s3: Any, bucket: str) -> Iterator[str]:
    """The bucket, emptied afterwards: moto keeps about a GB of it in memory."""
    yield bucket
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        if page.get("Contents"):
            s3.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": item["Key"]} for item in page["Contents"]]}
            )


def test_readers_writers_and_find_at_once(
    s3: Any, big_bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    bucket = big_bucket
    began = time.monotonic()
    objects, files = registry_tree(SEED)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket=bucket, Key=item[0], Body=item[1]), objects.items()))
    static = set(objects)
    # Last resort if the test itself hangs (a wedged unmount): dump every stack and exit.
    faulthandler.dump_traceback_later(SECONDS + DRAIN_DEADLINE + 600, exit=True)
    load = Load()
    rss: list[tuple[float, int]] = []
    rss_stop = threading.Event()
    options = [*endpoint_opts, "-o", f"chunksize={CHUNKSIZE},metadata_ttl=5"]
    if EXTRA_OPTIONS:
        options += ["-o", EXTRA_OPTIONS]
    try:
        with (
            mounted(tmp_path / "mnt", [*options, bucket], env={"PYTHONFAULTHANDLER": "1"}) as mount,
            contextlib.ExitStack() as stack,  # left before the unmount
        ):
            mnt = mount.path
            pid = mount.process.pid
            for number in range(WRITERS):
                (mnt / f"scratch/w{number}").mkdir(parents=True)
            rss_at_mount = proc_status_bytes(pid, "VmRSS")
            sampler = threading.Thread(target=rss_sampler, args=(pid, rss_stop, rss), daemon=True)
            sampler.start()
            find_errors = tmp_path / "find-errors"
            find_errors.touch()
            loop = stack.enter_context(start_find_loop(mnt, find_errors))
            stack.callback(loop.terminate)
            threads = [
                threading.Thread(target=reader, args=(mnt, files, load, n), name=f"reader-{n}", daemon=True)
                for n in range(READERS)
            ]
            threads += [
                threading.Thread(target=writer, args=(mnt, load, n), name=f"writer-{n}", daemon=True)
                for n in range(WRITERS)
            ]
            threads.append(
                threading.Thread(
                    target=finder, args=(loop, find_errors, static, load), name="find", daemon=True
                )
            )
            window_start = time.monotonic()
            for thread in threads:
                thread.start()
            drops = 0
            for fraction in (1 / 3, 2 / 3, 1):
                time.sleep(max(0.0, window_start + SECONDS * fraction - time.monotonic()))
                if fraction < 1 and drop_caches():
                    drops += 1
            load.stop.set()
            drain_start = time.monotonic()
            deadline = drain_start + DRAIN_DEADLINE
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            if any(thread.is_alive() for thread in threads):
                pytest.fail(stuck_report(threads, pid, mount.stderr_path))
            drain = time.monotonic() - drain_start
            window = time.monotonic() - window_start
            stats = read_stats(mnt)
            rss_stop.set()
            sampler.join()
            hwm = proc_status_bytes(pid, "VmHWM")
    finally:
        faulthandler.cancel_dump_traceback_later()
    counts = mount.request_counts()
    requests = sum(counts.values())
    peak_rss = max(value for _, value in rss)

    # Every written file, via S3 (no leftovers, no open uploads) and via a fresh mount.
    listed: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="scratch/"):
        listed |= {item["Key"] for item in page.get("Contents", [])}
    in_s3_ok = {
        name
        for name, hexdigest in load.written.items()
        if hashlib.sha256(s3.get_object(Bucket=bucket, Key=name)["Body"].read()).hexdigest() == hexdigest
    }
    open_uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    with mounted(tmp_path / "mnt", [*options, "-o", "ro", bucket]) as again:
        remount_ok = {
            name
            for name, hexdigest in load.written.items()
            if hashlib.sha256((again.path / name).read_bytes()).hexdigest() == hexdigest
        }
    wall = time.monotonic() - began

    figures = {
        "window s": round(window, 1),
        "drain s": round(drain, 1),
        "reads": load.reads,
        "whole reads": load.whole_reads,
        "range reads": load.range_reads,
        "read-backs": load.read_backs,
        "bytes verified": load.bytes_verified,
        "writes": load.writes,
        "bytes written": load.bytes_written,
        "find loops": load.finds,
        "page cache drops": drops,
        "RSS at mount MiB": round(rss_at_mount / MiB, 1),
        "peak RSS (sampled) MiB": round(peak_rss / MiB, 1),
        "RSS samples": len(rss),
        "peak RSS by quarter MiB": quarter_peaks(rss, window_start, SECONDS),
        "VmHWM MiB": round(hwm / MiB, 1),
        "read-ahead peak MiB": round(mount.readahead_peak() / MiB, 1),
        "write-memory peak MiB": round(mount.write_memory_peak() / MiB, 1),
        "preads": load.preads,
        "S3 requests": requests,
        "by type": counts,
        "S3 bytes in": stats.get("bytes_in"),
        "S3 bytes out": stats.get("bytes_out"),
        "retries": stats.get("retries"),
        "errors": stats.get("errors"),
        "wall s": round(wall, 1),
    }
    print("\nstress figures:")
    for name, value in figures.items():
        print(f"  {name}: {value}")

    assert load.error_count == 0, f"{load.error_count} errors, the first ones:\n" + "\n".join(load.errors)
    assert load.reads > 0 and load.writes > 0 and load.finds > 0
    assert listed == set(load.written), sorted(listed ^ set(load.written))[:10]
    assert in_s3_ok == set(load.written), sorted(set(load.written) - in_s3_ok)[:10]
    assert remount_ok == set(load.written), sorted(set(load.written) - remount_ok)[:10]
    assert not open_uploads, open_uploads
    assert max(peak_rss, hwm) < RSS_LIMIT, f"peak RSS {max(peak_rss, hwm) / MiB:.0f} MiB"
    assert len(rss) >= SECONDS  # sampled all along (two a second)
    assert stats.get("errors") == 0 and stats.get("retries") == 0, stats
    # Requests, bounded by what was done.  Writes cost exactly what the
    # registry's driver would spend: one PutObject below chunksize, else one
    # multipart upload in chunksize parts.
    sizes = [int(name.rsplit("-", 1)[1]) for name in load.written]
    large = [size for size in sizes if size >= CHUNKSIZE]
    assert counts.get("put_object", 0) == len(sizes) - len(large), counts
    assert (
        counts.get("create_multipart_upload", 0) == counts.get("complete_multipart_upload", 0) == len(large)
    )
    assert counts.get("upload_part", 0) == sum(-(-size // CHUNKSIZE) for size in large), counts
    assert "abort_multipart_upload" not in counts and "upload_part_copy" not in counts, counts
    # Reads: one stream per whole read, at most a ranged GET and a stream per
    # pread (in fact far fewer: the page cache serves many); and the bytes
    # fetched stay within twice the bytes read (read-ahead is bounded).
    assert counts.get("get_object", 0) <= load.whole_reads + load.read_backs + 2 * load.preads, counts
    assert stats["bytes_in"] <= 2 * load.bytes_verified, stats
    # At most one HEAD per open; listings at most once per directory per metadata_ttl.
    assert counts.get("head_object", 0) <= load.reads + load.read_backs + 2 * load.writes, counts
    directories = {str(Path(path).parent) for path in [*static, *load.written]}
    directories |= {str(parent) for d in list(directories) for parent in Path(d).parents}
    assert counts.get("list_objects_v2", 0) <= len(directories) * (SECONDS / 5 + 2), counts


def test_open_streams_stay_within_max_connections(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    """More files streaming at once than max_connections: each open stream
    keeps a connection, so they must share the pool with the other requests
    (urllib3 warns "Connection pool is full" when more are checked out)."""
    rng = random.Random(5)
    bodies = {f"blob{i}": rng.randbytes(4 * MiB + i) for i in range(8)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket=bucket, Key=item[0], Body=item[1]), bodies.items()))
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", "max_connections=2", bucket]) as mount:
        started = threading.Barrier(len(bodies))

        def digest(name: str) -> str:
            h = hashlib.sha256()
            with open(mount.path / name, "rb") as f:
                h.update(f.read(256 * 1024))
                started.wait(timeout=60)  # every file has its stream open now
                while chunk := f.read(256 * 1024):
                    h.update(chunk)
                    time.sleep(0.01)
            return h.hexdigest()

        with ThreadPoolExecutor(len(bodies)) as pool:
            digests = dict(zip(bodies, pool.map(digest, bodies), strict=True))
    assert digests == {name: hashlib.sha256(body).hexdigest() for name, body in bodies.items()}
    assert "Connection pool is full" not in mount.stderr
    # A stream without a connection of its own reads 1 MiB chunks as ranged GETs.
    assert mount.request_counts()["get_object"] <= sum(-(-len(body) // MiB) + 1 for body in bodies.values())
