# SPDX-License-Identifier: MIT
"""Parallel ranged reads through the real mount, in front of a distant S3.

The mount talks to tests/s3emulator.py (a bandwidth cap per connection and a
delay per request), which forwards to tests/faultproxy.py, which forwards to
moto.  One connection is slow there, so a sequential reader waits on it and
turns to parallel ranges; the tests check that the bytes are exact whatever
the reader does (hypothesis), while several files are read at once, while S3
answers 503 or cuts connections mid-range, when a range keeps failing, and
when the object is overwritten under the reader.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3regfs.reader import IDLE_STREAM_SECONDS
from tests.faultproxy import FaultProxy, Rule, get_object
from tests.s3emulator import DistantS3, Profile
from tests.util import MotoServer, Mount, fuse_test_marker, mounted, read_stats, rng_bytes

pytestmark = fuse_test_marker()

MiB = 1024 * 1024
PART = 5 * MiB
#: Slow enough per connection that one stream cannot keep up with a reader.
SLOW = Profile("test", bandwidth=6_000_000, latency=0.02)


@dataclass
class Rig:
    mount: Mount
    faults: FaultProxy
    s3: Any
    bucket: str
    #: name -> content of the objects (multipart, PART-sized parts).
    objects: dict[str, bytes]

    def stats(self) -> dict[str, Any]:
        return dict(read_stats(self.mount.path))


def upload(s3: Any, bucket: str, key: str, data: bytes) -> None:
    """Store *data* in PART-sized parts, as the registry's driver does with chunksize=PART."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART)
    s3.upload_fileobj(io.BytesIO(data), bucket, key, Config=config)


@contextlib.contextmanager
def distant_mount(
    moto: MotoServer, s3: Any, tmp_path: Path, objects: dict[str, bytes], extra: str = ""
) -> Iterator[Rig]:
    """A bucket holding *objects*, mounted through the fault proxy and the emulator."""
    bucket = f"par-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda item: upload(s3, bucket, item[0], item[1]), objects.items()))
    # The fault proxy answers whole responses at once, so it sits behind the
    # emulator, whose answers trickle out (a cut answer is cut there too).
    faults = FaultProxy(moto.port, seed=12).start()
    emulator = DistantS3(faults.port, SLOW).start()
    options = f"regionendpoint={emulator.url},region=us-east-1,chunksize={PART}"
    try:
        with mounted(
            tmp_path / "mnt", ["-o", f"{options},{extra}" if extra else options, bucket], check_clean=False
        ) as mount:
            yield Rig(mount, faults, s3, bucket, objects)
    finally:
        faults.stop()
        emulator.stop()


def read_whole(path: Path, piece: int = 128 * 1024) -> bytes:
    out = bytearray()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(piece):
            out += chunk
    return bytes(out)


def range_starts(faults: FaultProxy, key: str) -> list[int]:
    """Start offsets of the GETs of *key* the mount sent, in order."""
    starts = []
    for request in faults.log:
        if get_object(request.method, request.path) and request.path.split("?")[0].endswith("/" + key):
            found = re.match(r"bytes=(\d+)-", request.headers.get("range", ""))
            starts.append(int(found.group(1)) if found else 0)
    return starts


@pytest.fixture(scope="module")
def rig(moto: MotoServer, s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    # Not blobs: their pages are dropped at every open, so each read reaches the daemon.
    objects = {f"data/obj{i}": rng_bytes(17 * MiB + 12345 * i, seed=40 + i) for i in range(3)}
    with distant_mount(moto, s3, tmp_path_factory.mktemp("parallel"), objects) as rig:
        yield rig


def test_a_sequential_reader_of_a_slow_connection_gets_aligned_parallel_ranges(rig: Rig) -> None:
    before = rig.stats()
    data = rig.objects["data/obj0"]
    assert read_whole(rig.mount.path / "data/obj0") == data
    after = rig.stats()
    assert after["parallel_reads"] == before["parallel_reads"] + 1, after
    # Sorted: ranges start in order but their requests race to the endpoint.
    starts = sorted(range_starts(rig.faults, "data/obj0"))
    # One stream from 0, cut where the ranges took over (one range up to the
    # next part boundary), then ranges on part boundaries: the object's parts.
    assert starts[0] == 0 and len(starts) >= 3, starts
    assert all(start % PART == 0 for start in starts[2:]), starts
    assert len(set(starts)) == len(starts), starts  # no byte fetched twice
    assert after["read_ranges"] - before["read_ranges"] == len(starts) - 1
    # The kernel sends RELEASE after close() returned: give it a moment.
    deadline = time.monotonic() + 5
    while rig.stats()["readahead_bytes"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rig.stats()["readahead_bytes"] == 0


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(["data/obj0", "data/obj1", "data/obj2"]),
    lead=st.integers(min_value=3 * MiB, max_value=6 * MiB),
    reads=st.lists(
        st.tuples(
            st.sampled_from(["next", "next", "jump"]),
            st.integers(min_value=0, max_value=18 * MiB),
            st.integers(min_value=1, max_value=3 * MiB),
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_reads_at_any_offset_are_exact_while_ranges_are_in_flight(
    rig: Rig, name: str, lead: int, reads: list[tuple[str, int, int]]
) -> None:
    data = rig.objects[name]
    fd = os.open(rig.mount.path / name, os.O_RDONLY)
    try:
        # A sequential lead that turns the read-ahead parallel...
        position = 0
        while position < lead:
            piece = os.pread(fd, 128 * 1024, position)
            assert piece == data[position : position + 128 * 1024]
            position += len(piece)
        # ...then reads that go on from there or jump anywhere, in and past the file.
        for kind, offset, size in reads:
            if kind == "jump":
                position = offset
            piece = os.pread(fd, size, position)
            assert piece == data[position : position + size], (kind, position, size)
            position += len(piece)
    finally:
        os.close(fd)


def test_the_hypothesis_reads_went_parallel(rig: Rig) -> None:
    # Run after the property test: it proved something only if ranges were in flight.
    stats = rig.stats()
    assert stats["parallel_reads"] >= 6 and stats["read_ranges"] >= 12, stats


def test_files_read_at_once_are_exact_and_share_the_connections(rig: Rig) -> None:
    before = rig.stats()
    with ThreadPoolExecutor(3) as pool:
        digests = dict(
            zip(
                rig.objects,
                pool.map(
                    lambda name: hashlib.sha256(read_whole(rig.mount.path / name)).hexdigest(), rig.objects
                ),
                strict=True,
            )
        )
    assert digests == {name: hashlib.sha256(data).hexdigest() for name, data in rig.objects.items()}
    after = rig.stats()
    assert after["parallel_reads"] - before["parallel_reads"] >= 2, after
    assert "Connection pool is full" not in rig.mount.read_stderr()


def test_503s_and_cut_connections_on_ranges_never_give_wrong_bytes(rig: Rig) -> None:
    before = rig.stats()
    slow_down = Rule(get_object, status=503, code="SlowDown", probability=0.25, range_from=1)
    cut = Rule(get_object, status=0, truncate_after=300_000, probability=0.25, range_from=1)
    rig.faults.rules[:] = [slow_down, cut]
    try:
        for name, data in rig.objects.items():
            assert read_whole(rig.mount.path / name) == data, name
    finally:
        rig.faults.rules.clear()
    after = rig.stats()
    assert slow_down.hits > 0 and cut.hits > 0
    assert after["retries"] > before["retries"]
    assert after["parallel_reads"] - before["parallel_reads"] >= 2, after
    assert after["errors"] == before["errors"], after


def test_a_range_failing_past_the_retry_budget_fails_that_read_and_the_mount_goes_on(
    moto: MotoServer, s3: Any, tmp_path: Path
) -> None:
    objects = {"data/big": rng_bytes(26 * MiB, seed=51), "data/other": rng_bytes(3 * MiB, seed=52)}
    with distant_mount(moto, s3, tmp_path, objects, "maxretries=1") as rig:
        # Every GET that starts at or past 15 MiB fails: the stream from 0
        # does not, the ranges that take over there do.
        broken = Rule(get_object, status=500, range_from=15 * MiB)
        rig.faults.rules.append(broken)
        got = bytearray()
        with pytest.raises(OSError) as failure, open(rig.mount.path / "data/big", "rb", buffering=0) as f:
            while chunk := f.read(128 * 1024):
                got += chunk
        assert failure.value.errno == errno.EIO
        assert broken.hits >= 2  # tried, retried once, given up
        # What was read is the object's own first bytes, up to the broken range at most.
        assert 2 * MiB <= len(got) <= 15 * MiB and bytes(got) == objects["data/big"][: len(got)]
        assert read_whole(rig.mount.path / "data/other") == objects["data/other"]
        rig.faults.rules.clear()
        assert read_whole(rig.mount.path / "data/big") == objects["data/big"]
        assert rig.stats()["parallel_reads"] >= 2


def test_an_object_overwritten_under_a_parallel_reader_fails_the_read_never_mixes(
    moto: MotoServer, s3: Any, tmp_path: Path
) -> None:
    old = rng_bytes(30 * MiB, seed=61)
    new = rng_bytes(30 * MiB, seed=62)
    # Two ranges in flight at most: most of the object is fetched after the overwrite.
    with distant_mount(moto, s3, tmp_path, {"data/img": old}, "read_ranges=2") as rig:
        got = bytearray()
        with pytest.raises(OSError) as failure, open(rig.mount.path / "data/img", "rb", buffering=0) as f:
            while len(got) < 6 * MiB:
                got += f.read(128 * 1024)
            assert rig.stats()["parallel_reads"] == 1
            upload(s3, rig.bucket, "data/img", new)
            while chunk := f.read(128 * 1024):
                got += chunk
        # ESTALE: the handle's version is gone (see docs/reading.md).
        assert failure.value.errno == errno.ESTALE
        assert len(got) < len(old) and bytes(got) == old[: len(got)]
        # A new open reads the new version.
        assert read_whole(rig.mount.path / "data/img") == new


def test_idle_parallel_read_ahead_gives_back_its_memory_and_resumes_exactly(rig: Rig) -> None:
    data = rig.objects["data/obj1"]
    with open(rig.mount.path / "data/obj1", "rb", buffering=0) as f:
        got = bytearray()
        while len(got) < 5 * MiB:
            got += f.read(128 * 1024)
        assert rig.stats()["readahead_bytes"] > 0
        deadline = time.monotonic() + IDLE_STREAM_SECONDS + 10
        while rig.stats()["readahead_bytes"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert rig.stats()["readahead_bytes"] == 0  # ranges cancelled, budget back
        while chunk := f.read(128 * 1024):
            got += chunk
    assert bytes(got) == data


def test_verify_hashes_parallel_ranges_in_order(moto: MotoServer, s3: Any, tmp_path: Path) -> None:
    good = rng_bytes(21 * MiB, seed=71)
    digest = hashlib.sha256(good).hexdigest()
    bad_digest = hashlib.sha256(b"something else").hexdigest()
    objects = {
        f"docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data": good,
        f"docker/registry/v2/blobs/sha256/{bad_digest[:2]}/{bad_digest}/data": rng_bytes(21 * MiB, seed=72),
    }
    with distant_mount(moto, s3, tmp_path, objects, "verify") as rig:
        paths = list(objects)
        assert read_whole(rig.mount.path / paths[0]) == good
        with pytest.raises(OSError) as failure:
            read_whole(rig.mount.path / paths[1])
        assert failure.value.errno == errno.EIO
        assert rig.stats()["parallel_reads"] >= 2
