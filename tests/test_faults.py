# SPDX-License-Identifier: MIT
"""The mount under injected faults: errors, resets, stalls, outages, throttling.

Every test puts tests/faultproxy.py between the mount and moto and checks
that what reaches the reader or the bucket is either exactly right or an
explicit error (EIO), never short or wrong data, and that the mount recovers.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.faultproxy import (
    FaultProxy,
    Rule,
    any_request,
    complete_upload,
    get_object,
    list_objects,
    put_object,
    upload_part,
)
from tests.test_write import body, keys, open_uploads, rng_bytes
from tests.util import MotoServer, fuse_test_marker, mounted

pytestmark = fuse_test_marker()

MiB = 1024 * 1024
BLOBS = "docker/registry/v2/blobs/sha256"


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[FaultProxy]:
    server = FaultProxy(moto.port, seed=6).start()
    yield server
    server.stop()


def proxy_opts(proxy: FaultProxy, extra: str = "") -> list[str]:
    options = f"regionendpoint={proxy.url},region=us-east-1"
    return ["-o", f"{options},{extra}" if extra else options]


def put_blob(s3: Any, bucket: str, data: bytes) -> str:
    """Store *data* as a registry blob; return its path under the mount."""
    hexdigest = hashlib.sha256(data).hexdigest()
    path = f"{BLOBS}/{hexdigest[:2]}/{hexdigest}/data"
    s3.put_object(Bucket=bucket, Key=path, Body=data)
    return path


def drop_page_cache() -> None:
    """Reads must reach the daemon, not the kernel's page cache."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def read_all(path: Path, size: int = MiB) -> bytes:
    pieces = []
    with open(path, "rb", buffering=0) as f:
        while piece := f.read(size):
            pieces.append(piece)
    return b"".join(pieces)


def get_ranges(proxy: FaultProxy) -> list[int]:
    """The start offsets of the GETs of objects, in order."""
    starts = []
    for request in proxy.log:
        if get_object(request.method, request.path):
            match = re.match(r"bytes=(\d+)-", request.headers.get("range", ""))
            starts.append(int(match.group(1)) if match else 0)
    return starts


# -- reads ----------------------------------------------------------------------


def test_reads_under_errors_and_resets_match_the_digest(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    contents = [rng_bytes(size, seed) for seed, size in enumerate((24 * MiB, 3 * MiB + 5, 70_000, 0))]
    blobs = [put_blob(s3, bucket, data) for data in contents]
    rng = random.Random(6)
    # One request in five answers 503 SlowDown; of the rest, one GET in five
    # is cut short after 1 MiB and a bit.
    proxy.rules = [
        Rule(any_request, status=503, code="SlowDown", probability=0.2),
        Rule(get_object, status=0, truncate_after=MiB + 4321, probability=0.2),
    ]
    with mounted(tmp_path / "mnt", [*proxy_opts(proxy, "maxretries=8,readahead=4M"), bucket], check_clean=False) as mount:
        for round_ in range(3):
            drop_page_cache()
            for blob in blobs:
                data = read_all(mount.path / blob, MiB if round_ else 128 * 1024)
                assert hashlib.sha256(data).hexdigest() == blob.split("/")[-2]
        # Random ranges: one GET each.
        drop_page_cache()
        for _ in range(60):
            index = rng.randrange(3)
            data = contents[index]
            start = rng.randrange(len(data))
            with open(mount.path / blobs[index], "rb", buffering=0) as f:
                assert os.pread(f.fileno(), 100_000, start) == data[start : start + 100_000]
    fired = [rule.hits for rule in proxy.rules]
    print(f"\nreads under faults: {fired[0]} injected 503s, {fired[1]} cut bodies, {len(proxy.log)} requests")
    assert fired[0] >= 10 and fired[1] >= 5  # the faults really happened
    assert "Traceback" not in mount.stderr


def test_a_reset_mid_stream_resumes_at_the_offset_reached(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    data = rng_bytes(20 * MiB, 11)
    blob = put_blob(s3, bucket, data)
    cut = 3 * MiB + 17
    with mounted(tmp_path / "mnt", [*proxy_opts(proxy), bucket], check_clean=False) as mount:
        (mount.path / blob).stat()
        proxy.log.clear()
        proxy.rules = [Rule(get_object, status=0, truncate_after=cut, count=1)]
        assert read_all(mount.path / blob) == data
    starts = get_ranges(proxy)
    assert starts[0] == 0 and len(starts) >= 2, starts
    # The second GET starts where the delivered bytes ended (at most the cut,
    # not the start again): nothing is read twice into the file, nothing skipped.
    assert 0 < starts[1] <= cut, starts


def test_read_fails_with_eio_when_retries_run_out_and_the_next_read_works(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    data = rng_bytes(8 * MiB, 12)
    blob = put_blob(s3, bucket, data)
    with mounted(tmp_path / "mnt", [*proxy_opts(proxy, "maxretries=2"), bucket], check_clean=False) as mount:
        (mount.path / blob).stat()
        # The stream breaks after 2 MiB, then every attempt to resume fails.
        proxy.rules = [
            Rule(get_object, status=0, truncate_after=2 * MiB, count=1),
            Rule(get_object, status=503, code="SlowDown"),
        ]
        received = bytearray()
        with open(mount.path / blob, "rb", buffering=0) as f:
            with pytest.raises(OSError) as info:
                while piece := f.read(MiB):
                    received += piece
            assert info.value.errno == errno.EIO
        assert len(received) < len(data)  # an error, never a short file
        assert data.startswith(received)
        assert proxy.rules[1].hits >= 3  # at least 1 + maxretries attempts to resume
        proxy.rules = []
        assert read_all(mount.path / blob) == data  # the next read works
    assert "EIO" in mount.stderr or "error" in mount.stderr


def test_a_stall_past_read_timeout_is_retried(s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path) -> None:
    data = rng_bytes(6 * MiB, 13)
    blob = put_blob(s3, bucket, data)
    with mounted(tmp_path / "mnt", [*proxy_opts(proxy, "read_timeout=1"), bucket], check_clean=False) as mount:
        (mount.path / blob).stat()
        # A body that stops after 1 MiB for 20 s, then an answer that starts 20 s late.
        proxy.rules = [
            Rule(get_object, status=0, truncate_after=MiB, stall=20, count=1),
            Rule(get_object, status=0, delay=20, count=1),
        ]
        started = time.monotonic()
        assert read_all(mount.path / blob) == data
        elapsed = time.monotonic() - started
    assert [rule.hits for rule in proxy.rules] == [1, 1]
    assert elapsed < 10, elapsed  # two read timeouts of 1 s and backoff, not the stalls


# -- outages --------------------------------------------------------------------


def test_outage_while_idle_and_during_a_read(s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path) -> None:
    data = rng_bytes(48 * MiB, 14)
    blob = put_blob(s3, bucket, data)
    small = put_blob(s3, bucket, b"small blob")
    with mounted(
        tmp_path / "mnt", [*proxy_opts(proxy, "readahead=2M,metadata_ttl=0"), bucket], check_clean=False
    ) as mount:
        assert (mount.path / small).read_bytes() == b"small blob"
        with proxy.outage():
            time.sleep(3)  # idle: the pooled connections die with the endpoint
        drop_page_cache()
        assert (mount.path / small).read_bytes() == b"small blob"  # recovered, same mount

        outcome: dict[str, Any] = {}

        def slow_reader() -> None:
            received = bytearray()
            try:
                with open(mount.path / blob, "rb", buffering=0) as f:
                    while piece := f.read(MiB):
                        received += piece
                        time.sleep(0.05)
            except OSError as exc:
                outcome["errno"] = exc.errno
            outcome["data"] = bytes(received)

        reader = threading.Thread(target=slow_reader)
        reader.start()
        time.sleep(0.5)
        with proxy.outage():
            time.sleep(2)
        reader.join(60)
        assert not reader.is_alive()
        if "errno" in outcome:
            assert outcome["errno"] == errno.EIO
            assert data.startswith(outcome["data"])
        else:
            assert outcome["data"] == data
        print(f"\nread across a 2 s outage: {'EIO' if 'errno' in outcome else 'completed'}")
        assert read_all(mount.path / blob) == data
        assert sorted(os.listdir(mount.path / BLOBS)) == sorted({small.split("/")[5], blob.split("/")[5]})
