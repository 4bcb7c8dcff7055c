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
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from s3regfs.reader import IDLE_STREAM_SECONDS
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
from tests.util import (
    MotoServer,
    Mount,
    body,
    cleanup,
    fuse_test_marker,
    keys,
    mounted,
    open_uploads,
    read_stats,
    rng_bytes,
    run_cli,
    spawn,
    stats_when,
    wait_for_mount,
)

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


def read_all_from(f: Any) -> bytes:
    pieces = []
    while piece := f.read(MiB):
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
    with mounted(
        tmp_path / "mnt", [*proxy_opts(proxy, "maxretries=8,readahead=4M"), bucket], check_clean=False
    ) as mount:
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
        # The body breaks at the cut; the first attempt to resume gets a 503.
        proxy.rules = [
            Rule(get_object, status=0, truncate_after=cut, count=1),
            Rule(get_object, status=503, code="SlowDown", count=1),
        ]
        assert read_all(mount.path / blob) == data
        stats = read_stats(mount.path)
        assert stats["retries"] >= 1 and stats["errors"] == 0  # recovered: not an error
    starts = get_ranges(proxy)
    assert starts[0] == 0 and len(starts) >= 2, starts
    # The resuming GETs start where the delivered bytes ended (at most the cut,
    # not the start again): nothing is read twice into the file, nothing skipped.
    assert len(starts) >= 3 and 0 < starts[1] == starts[2] <= cut, starts


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


def test_a_stall_past_read_timeout_is_retried(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    data = rng_bytes(6 * MiB, 13)
    blob = put_blob(s3, bucket, data)
    with mounted(
        tmp_path / "mnt", [*proxy_opts(proxy, "read_timeout=1"), bucket], check_clean=False
    ) as mount:
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


# -- retries, backoff, rate ------------------------------------------------------


def fill(s3: Any, bucket: str, names: list[str], data: bytes = b"x") -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=data), names))


def test_maxretries_backoff_and_jitter_counted_at_the_proxy(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    fill(s3, bucket, [f"d{i}/f" for i in range(4)])
    gaps: list[list[float]] = []
    with mounted(tmp_path / "mnt", [*proxy_opts(proxy, "maxretries=3"), bucket], check_clean=False) as mount:
        names = os.listdir(mount.path)
        assert sorted(names) == [f"d{i}" for i in range(4)]
        for name in names:
            proxy.log.clear()
            proxy.rules = [Rule(list_objects, status=500)]
            with pytest.raises(OSError) as info:
                os.listdir(mount.path / name)
            assert info.value.errno == errno.EIO
            times = proxy.times(list_objects)
            assert len(times) == 4, times  # 1 + maxretries, not one more
            gaps.append([b - a for a, b in zip(times, times[1:], strict=False)])
        proxy.rules = []
        assert os.listdir(mount.path / names[0]) == ["f"]  # and then it works
    # Backoff n (1-based) waits 0.2 s * 2**(n-1) times a random factor in [0.5, 1].
    for series in gaps:
        for n, gap in enumerate(series, start=1):
            nominal = 0.2 * 2 ** (n - 1)
            # (the upper bound allows for a busy machine: the gap includes the request)
            assert 0.5 * nominal - 0.02 <= gap <= nominal + 0.6, (n, series)
        assert series[2] > series[0], series  # it grows
    firsts = [series[2] for series in gaps]
    assert max(firsts) - min(firsts) > 0.01, gaps  # jitter: not the same wait every time
    print(f"\nbackoff gaps (s): {[[round(g, 3) for g in s] for s in gaps]}")


@pytest.mark.parametrize(
    ("status", "code", "attempts", "error"),
    [
        (403, "AccessDenied", 1, errno.EACCES),
        (400, "InvalidRequest", 1, errno.EIO),
        (429, "TooManyRequests", 3, None),
        (503, "SlowDown", 3, None),
    ],
)
def test_which_errors_are_retried(
    s3: Any,
    bucket: str,
    proxy: FaultProxy,
    tmp_path: Path,
    status: int,
    code: str,
    attempts: int,
    error: int | None,
) -> None:
    fill(s3, bucket, ["d/f"])
    with mounted(tmp_path / "mnt", [*proxy_opts(proxy, "maxretries=5"), bucket], check_clean=False) as mount:
        assert os.listdir(mount.path) == ["d"]
        proxy.log.clear()
        proxy.rules = [Rule(list_objects, status=status, code=code, count=2)]
        if error is None:
            assert os.listdir(mount.path / "d") == ["f"]
        else:
            with pytest.raises(OSError) as info:
                os.listdir(mount.path / "d")
            assert info.value.errno == error
        assert proxy.count(list_objects) == attempts


def test_maxrequestspersecond_caps_the_rate_at_the_proxy(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    names = [f"f{i:03}" for i in range(90)]
    fill(s3, bucket, names)
    rate = 25
    with mounted(
        tmp_path / "mnt", [*proxy_opts(proxy, f"maxrequestspersecond={rate}"), bucket], check_clean=False
    ) as mount:
        assert len(os.listdir(mount.path)) == len(names)
        proxy.log.clear()
        with ThreadPoolExecutor(12) as pool:  # far more demand than the cap
            assert set(pool.map(lambda name: (mount.path / name).read_bytes(), names)) == {b"x"}
    times = sorted(proxy.times(any_request))
    measured = (len(times) - 1) / (times[-1] - times[0])
    print(f"\nmaxrequestspersecond={rate}: {len(times)} requests at {measured:.1f}/s at the proxy")
    assert len(times) >= len(names)
    assert measured <= rate * 1.1
    assert measured >= rate * 0.5  # the workload was enough to reach the cap


# -- listings ---------------------------------------------------------------------


def test_a_listing_that_fails_part_way_is_an_error_not_a_short_directory(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    # "d" is listed flat (its whole subtree), the root one level at a time:
    # both take two pages of 1,000 keys here.
    flat = [f"d/{i:04}" for i in range(1100)]
    wide = [f"{i:04}" for i in range(1100)]
    fill(s3, bucket, flat + wide)
    second_page = Rule(
        lambda m, p: list_objects(m, p) and "continuation-token=" in p, status=503, code="SlowDown"
    )
    with mounted(tmp_path / "mnt", [*proxy_opts(proxy, "maxretries=2"), bucket], check_clean=False) as mount:
        proxy.rules = [second_page]
        for directory in (mount.path, mount.path / "d"):
            with pytest.raises(OSError) as info:
                os.listdir(directory)
            assert info.value.errno == errno.EIO
            # find reports it too, and exits non-zero: no silent partial walk.
            result = subprocess.run(["find", str(directory)], capture_output=True, text=True)
            assert result.returncode != 0 and "Input/output error" in result.stderr
        assert second_page.hits >= 6
        proxy.rules = []
        assert len(os.listdir(mount.path / "d")) == len(flat)
        assert len(os.listdir(mount.path)) == len(wide) + 1


def test_a_split_listing_whose_ranges_fail_is_an_error_or_whole(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    repo = "docker/registry/v2/repositories/app/_layers/sha256"
    digests = sorted(hashlib.sha256(str(i).encode()).hexdigest() for i in range(2600))
    fill(s3, bucket, [f"{repo}/{d}/link" for d in digests])
    # The ranges of the split listing: a StartAfter inside the digest run.
    ranges = Rule(lambda m, p: list_objects(m, p) and "start-after=" in p, status=503, code="SlowDown")
    with mounted(tmp_path / "mnt", [*proxy_opts(proxy, "maxretries=2"), bucket], check_clean=False) as mount:
        proxy.rules = [ranges]
        with pytest.raises(OSError) as info:
            os.listdir(mount.path / repo)
        assert info.value.errno == errno.EIO
        assert ranges.hits >= 3
        # Two ranges' requests fail, within the retry budget: the listing is whole.
        proxy.rules = [
            Rule(
                lambda m, p: list_objects(m, p) and "start-after=" in p, status=503, code="SlowDown", count=2
            )
        ]
        assert sorted(os.listdir(mount.path / repo)) == digests
        assert proxy.rules[0].hits == 2
        proxy.rules = []
        found = subprocess.run(
            ["find", str(mount.path / repo), "-name", "link"], capture_output=True, text=True
        )
        assert found.returncode == 0 and len(found.stdout.splitlines()) == len(digests)


def test_a_listing_ahead_that_fails_is_listed_again_by_its_reader(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """-o list_ahead: reading namespace a/ lists b/ ahead; when that listing
    fails, b/ is not taken as listed (nor empty): its reader lists it, and
    gets the error while the endpoint fails, the whole directory after."""
    top = "docker/registry/v2/repositories"  # listed a level at a time: each namespace on its own
    names = {d: [f"{top}/{d}/r{i:04}/f" for i in range(1100)] for d in "abc"}
    fill(s3, bucket, [key for keys in names.values() for key in keys])
    of_b = Rule(lambda m, p: list_objects(m, p) and f"prefix={top}/b/".replace("/", "%2F") in p, status=503)
    with mounted(tmp_path / "mnt", [*proxy_opts(proxy, "maxretries=1"), bucket], check_clean=False) as mount:
        assert sorted(os.listdir(mount.path / top)) == ["a", "b", "c"]
        proxy.rules = [of_b]
        assert len(os.listdir(mount.path / top / "a")) == 1100
        deadline = time.monotonic() + 30
        while of_b.hits < 2 and time.monotonic() < deadline:  # both attempts of the listing ahead
            time.sleep(0.05)
        stats = read_stats(mount.path)["cache"]
        assert of_b.hits >= 2 and stats["lists_ahead"] >= 1, (of_b.hits, stats)
        with pytest.raises(OSError) as info:
            os.listdir(mount.path / top / "b")
        assert info.value.errno == errno.EIO
        proxy.rules = []
        found = subprocess.run(
            ["find", str(mount.path / "docker"), "-type", "f"], capture_output=True, text=True
        )
        assert found.returncode == 0, found.stderr
        assert sorted(line[len(str(mount.path)) + 1 :] for line in found.stdout.splitlines()) == sorted(
            key for keys in names.values() for key in keys
        )


# -- writes -------------------------------------------------------------------------


def test_writes_under_faults_are_whole_or_an_error(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    writes = {
        f"w{i}": rng_bytes(size, 20 + i)
        for i, size in enumerate(
            [0, 100, 4 * MiB, 12 * MiB, 11 * MiB + 3, 6 * MiB, 5 * MiB, 300, 16 * MiB, MiB]
        )
    }
    proxy.rules = [
        Rule(
            lambda m, p: upload_part(m, p) or complete_upload(m, p) or put_object(m, p),
            status=503,
            code="SlowDown",
            probability=0.3,
        ),
        Rule(upload_part, status=500, lose_response=True, probability=0.2),
    ]
    outcomes: dict[str, int] = {}
    with mounted(
        tmp_path / "mnt", [*proxy_opts(proxy, "chunksize=5242880,maxretries=3"), bucket], check_clean=False
    ) as mount:
        for name, data in writes.items():
            try:
                with open(mount.path / name, "wb") as f:
                    f.write(data)
                outcomes[name] = 0
            except OSError as exc:
                outcomes[name] = exc.errno or -1
        faults = sum(rule.hits for rule in proxy.rules)
        proxy.rules = []
    stored = set(keys(s3, bucket))
    for name, data in writes.items():
        if outcomes[name] == 0:
            assert body(s3, bucket, name) == data, name
        else:
            assert outcomes[name] == errno.EIO and name not in stored, (name, outcomes[name])
    assert open_uploads(s3, bucket) == []
    print(f"\nwrites under faults: {outcomes}, {faults} faults")
    assert faults >= 3
    assert list(outcomes.values()).count(0) >= 6


def test_an_error_inside_a_200_answer_is_retried_not_taken_as_a_result(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    # S3 can answer 200 and then send an <Error> body (CompleteMultipartUpload
    # and copies do, after a long wait). A LIST page read that way must not
    # read as an empty directory, nor a Complete as a stored object.
    fill(s3, bucket, [f"d/{i:04}" for i in range(1100)])
    data = rng_bytes(12 * MiB, 32)
    with mounted(
        tmp_path / "mnt", [*proxy_opts(proxy, "chunksize=5242880"), bucket], check_clean=False
    ) as mount:
        proxy.rules = [
            Rule(list_objects, status=200, code="InternalError", count=2),
            Rule(complete_upload, status=200, code="InternalError", count=1),
        ]
        # Two pages; the first two answers of the listing were errors.
        assert sorted(os.listdir(mount.path / "d")) == [f"{i:04}" for i in range(1100)]
        with open(mount.path / "f", "wb") as f:
            f.write(data)
        assert [rule.hits for rule in proxy.rules] == [2, 1]
        assert (mount.path / "f").read_bytes() == data
    assert body(s3, bucket, "f") == data
    assert open_uploads(s3, bucket) == []
    assert "Traceback" not in mount.stderr


@pytest.mark.parametrize("lost", ["complete", "complete-gone", "put"])
def test_a_lost_answer_is_retried_without_a_duplicate_or_an_error(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path, lost: str
) -> None:
    # The request reached S3 and did its work; only the answer was lost.
    data = rng_bytes(1000 if lost == "put" else 12 * MiB, 30)
    match = put_object if lost == "put" else complete_upload
    with mounted(
        tmp_path / "mnt", [*proxy_opts(proxy, "chunksize=5242880"), bucket], check_clean=False
    ) as mount:
        proxy.rules = [Rule(match, status=500, lose_response=True, count=1)]
        if lost == "complete-gone":
            # As AWS may answer a repeated CompleteMultipartUpload once the first
            # one finished: the upload is gone, the object is there.
            proxy.rules.append(Rule(match, status=404, code="NoSuchUpload", count=1))
        with open(mount.path / "f", "wb") as f:
            f.write(data)
        assert [rule.hits for rule in proxy.rules] == [1] * len(proxy.rules)
        assert (mount.path / "f").read_bytes() == data
    assert keys(s3, bucket) == ["f"] and body(s3, bucket, "f") == data
    assert open_uploads(s3, bucket) == []


def test_a_retried_complete_that_finds_no_upload_and_another_object_fails(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    # The first Complete never reached S3; its retry is told the upload is
    # gone. The object at the key is an older one: not ours, so close() fails
    # and the upload (still open in fact) is aborted.
    old = b"the object somebody else stored"
    s3.put_object(Bucket=bucket, Key="f", Body=old)
    with mounted(
        tmp_path / "mnt", [*proxy_opts(proxy, "chunksize=5242880"), bucket], check_clean=False
    ) as mount:
        proxy.rules = [
            Rule(complete_upload, status=500, count=1),
            Rule(complete_upload, status=404, code="NoSuchUpload", count=1),
        ]
        with pytest.raises(OSError) as info, open(mount.path / "f", "wb") as f:
            f.write(rng_bytes(12 * MiB, 31))
        assert info.value.errno == errno.EIO
        assert [rule.hits for rule in proxy.rules] == [1, 1]
    assert "the upload is gone and the object is not the one it would have made" in mount.stderr
    assert body(s3, bucket, "f") == old
    assert open_uploads(s3, bucket) == []


def test_a_failed_overwrite_keeps_the_old_object_whole(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    old = rng_bytes(7 * MiB, 40)
    s3.put_object(Bucket=bucket, Key="blob", Body=old)
    with mounted(
        tmp_path / "mnt", [*proxy_opts(proxy, "chunksize=5242880,maxretries=1"), bucket], check_clean=False
    ) as mount:
        proxy.rules = [Rule(complete_upload, status=500)]
        with pytest.raises(OSError) as info, open(mount.path / "blob", "wb") as f:
            f.write(rng_bytes(12 * MiB, 41))
        assert info.value.errno == errno.EIO
        proxy.rules = [Rule(put_object, status=503, code="SlowDown")]
        with pytest.raises(OSError) as info, open(mount.path / "small", "wb") as f:
            f.write(b"never stored")
        assert info.value.errno == errno.EIO
        proxy.rules = []
    assert keys(s3, bucket) == ["blob"]
    assert body(s3, bucket, "blob") == old  # not truncated, not mixed
    assert open_uploads(s3, bucket) == []


# -- crash safety -------------------------------------------------------------------


def uploads(s3: Any, bucket: str) -> dict[str, str]:
    return {u["UploadId"]: u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def test_kill_9_during_a_copy_leaves_no_object_and_the_next_mount_reports_our_upload(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    # The registry's own resumable upload, which s3regfs must never touch.
    theirs_key = "docker/registry/v2/repositories/r/_uploads/0d6c/data"
    theirs = s3.create_multipart_upload(Bucket=bucket, Key=theirs_key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=theirs_key, UploadId=theirs, PartNumber=1, Body=b"partial layer")
    source = tmp_path / "big"
    source.write_bytes(rng_bytes(64 * MiB, 50))
    state = tmp_path / "state"
    args = [*endpoint_opts, "-o", f"chunksize=5242880,statedir={state}", bucket]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount = Mount(mnt, None, tmp_path / "daemon.err")  # type: ignore[arg-type]
    spawn(mount, args)
    copy: subprocess.Popen[bytes] | None = None
    try:
        wait_for_mount(mount)
        copy = subprocess.Popen(["cp", str(source), str(mnt / "big")], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        ours: list[str] = []
        while not ours and time.monotonic() < deadline:
            ours = [u for u, key in uploads(s3, bucket).items() if key == "big"]
            time.sleep(0.05)
        assert ours, "the copy never started its multipart upload"
        while not s3.list_parts(Bucket=bucket, Key="big", UploadId=ours[0]).get("Parts"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(mount.process.pid, signal.SIGKILL)
        mount.process.wait(10)
        assert copy.wait(30) != 0  # cp sees the mount die
    finally:
        cleanup(mount)
        if copy is not None and copy.poll() is None:
            copy.kill()
            copy.wait()
    assert "big" not in keys(s3, bucket)  # no partial object, ever
    assert uploads(s3, bucket) == {ours[0]: "big", theirs: theirs_key}
    journals = list((state / "uploads").iterdir())
    assert len(journals) == 1 and ours[0] in journals[0].read_text()

    # The next mount reports our upload (by key and id) and touches nothing.
    with mounted(mnt, args, check_clean=False) as mount:
        assert os.listdir(mnt) == []
    report = [line for line in mount.stderr.splitlines() if "left open" in line]
    assert len(report) == 1 and "'big'" in report[0] and ours[0] in report[0] and theirs not in report[0]
    assert "abort_stale_uploads" in report[0]
    assert uploads(s3, bucket) == {ours[0]: "big", theirs: theirs_key}

    # With the option, ours is aborted; the registry's upload stays.
    with mounted(mnt, [*args[:-1], "-o", "abort_stale_uploads", bucket], check_clean=False) as mount:
        pass
    assert "aborted 1 multipart uploads" in mount.stderr and ours[0] in mount.stderr
    assert uploads(s3, bucket) == {theirs: theirs_key}
    assert s3.list_parts(Bucket=bucket, Key=theirs_key, UploadId=theirs)["Parts"][0]["Size"] == 13
    # Nothing is left to report; the journal is gone after the clean unmount.
    with mounted(mnt, args):
        pass
    assert list((state / "uploads").iterdir()) == []


def test_a_dead_mount_is_named_and_cleared_with_fusermount(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount = Mount(mnt, None, tmp_path / "daemon.err")  # type: ignore[arg-type]
    spawn(mount, [*endpoint_opts, bucket])
    try:
        wait_for_mount(mount)
        os.kill(mount.process.pid, signal.SIGKILL)
        mount.process.wait(10)
        with pytest.raises(OSError) as info:
            os.listdir(mnt)
        assert info.value.errno == errno.ENOTCONN
        result = run_cli([*endpoint_opts, bucket, str(mnt)])
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1 and f"fusermount3 -uz {mnt}" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=True)
    with mounted(mnt, [*endpoint_opts, bucket]) as mount:
        (mnt / "after").write_bytes(b"clean start")
    assert body(s3, bucket, "after") == b"clean start"


# -- memory under many open files ---------------------------------------------------


def test_idle_open_files_give_back_read_ahead_and_connections(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    idle_data = [rng_bytes(16 * MiB, 60 + i) for i in range(3)]
    idle_blobs = [put_blob(s3, bucket, data) for data in idle_data]
    active_data = rng_bytes(24 * MiB, 63)
    active = put_blob(s3, bucket, active_data)
    # Six connections: streams may hold three, as many as there are idle files.
    options = "readahead=4M,readahead_total=6M,max_connections=6"
    with mounted(tmp_path / "mnt", [*proxy_opts(proxy, options), bucket], check_clean=False) as mount:
        drop_page_cache()
        # Three files read a little and left open: their streams fill the
        # read-ahead budget and hold every connection streams may have.
        idle = [open(mount.path / blob, "rb", buffering=0) for blob in idle_blobs]
        try:
            for f in idle:
                assert f.read(MiB) and f.read(MiB)
            assert read_stats(mount.path)["readahead_bytes"] > 0
            time.sleep(IDLE_STREAM_SECONDS)  # idle now: their streams end
            stats = stats_when(mount.path, lambda stats: not stats["readahead_bytes"], 15, 0.2)
            assert stats["readahead_bytes"] == 0
            proxy.log.clear()
            assert read_all(mount.path / active) == active_data
            gets = [r for r in proxy.log if get_object(r.method, r.path) and active.split("/")[-2] in r.path]
            # One stream, not a ranged GET per chunk for want of memory or a connection.
            assert len(gets) <= 2, [r.headers.get("range") for r in gets]
            for f, data in zip(idle, idle_data, strict=True):
                assert read_all_from(f) == data[2 * MiB :]  # and the idle ones go on
        finally:
            for f in idle:
                f.close()


def test_an_outage_longer_than_the_retry_budget_fails_reads_with_eio_then_recovers(
    s3: Any, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    # Larger than what socket buffers hold: the outage cuts the stream.
    data = rng_bytes(48 * MiB, 70)
    blob = put_blob(s3, bucket, data)
    s3.put_object(Bucket=bucket, Key="other/f", Body=b"other")
    with mounted(
        tmp_path / "mnt",
        [*proxy_opts(proxy, "maxretries=1,metadata_ttl=0,readahead=2M"), bucket],
        check_clean=False,
    ) as mount:
        drop_page_cache()
        received = bytearray()
        with open(mount.path / blob, "rb", buffering=0) as f:
            received += f.read(MiB)  # the stream is open before the outage
            with proxy.outage():
                with pytest.raises(OSError) as info:
                    while piece := f.read(MiB):
                        received += piece
                assert info.value.errno == errno.EIO
                assert len(received) < len(data) and data.startswith(received)
                with pytest.raises(OSError) as info:
                    os.listdir(mount.path / "other")
                assert info.value.errno == errno.EIO
                assert mount.process.poll() is None  # the daemon lives on
        assert read_all(mount.path / blob) == data
        assert os.listdir(mount.path / "other") == ["f"]
