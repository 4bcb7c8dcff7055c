# SPDX-License-Identifier: MIT
"""ObjectReader against moto_server: streams and ranges."""

from __future__ import annotations

import collections
from typing import Any

import pytest
import trio

from s3regfs.errors import StorageError
from s3regfs.reader import RANGE_SIZE, ObjectReader, ReadaheadBudget, range_size
from tests.faultproxy import FaultProxy, Rule, get_object
from tests.s3emulator import DistantS3, Profile
from tests.util import MotoServer, make_store

MiB = 1024 * 1024


def parallel_reader(
    store: Any, info: Any, budget: ReadaheadBudget, nursery: trio.Nursery, counters: collections.Counter[str]
) -> ObjectReader:
    """A reader of "blob" that may go parallel: 2 MiB ranges, 8 in flight, a 64 MiB window."""
    return ObjectReader(
        store,
        "blob",
        info.size,
        info.etag,
        budget=budget,
        nursery=nursery,
        max_window=64 * MiB,
        range_size=2 * MiB,
        max_ranges=8,
        counters=counters,
    )


async def test_reader_streams_and_reads_ranges(moto: MotoServer, s3: Any, bucket: str) -> None:
    data = bytes((i * 7) % 251 for i in range(5 * 1024 * 1024 + 17))
    s3.put_object(Bucket=bucket, Key="blob", Body=data)
    store = make_store(moto.url, bucket)
    info = await store.head("blob")
    budget = ReadaheadBudget(2 * 1024 * 1024)
    async with trio.open_nursery() as nursery:
        reader = ObjectReader(
            store, "blob", info.size, info.etag, budget=budget, nursery=nursery, max_window=2 * 1024 * 1024
        )
        received = bytearray()
        offset = 0
        while chunk := await reader.read(offset, 131072):
            received += chunk
            offset += len(chunk)
        assert bytes(received) == data
        assert await reader.read(123, 456) == data[123:579]
        await reader.aclose()
    assert budget.used == 0
    assert budget.peak <= 2 * 1024 * 1024 + 1024 * 1024
    assert store.request_counts["get_object"] == 2  # one stream, one range


def test_range_size_is_the_part_size_when_the_etag_shows_it() -> None:
    assert range_size(20 * MiB, "abc-4", 5 * MiB) == 5 * MiB  # 4 parts of 5 MiB: 15 < 20 <= 20
    assert range_size(16 * MiB, "abc-4", 5 * MiB) == 5 * MiB
    assert range_size(21 * MiB, "abc-4", 5 * MiB) == RANGE_SIZE  # not 4 parts of 5 MiB
    assert range_size(15 * MiB, "abc-4", 5 * MiB) == RANGE_SIZE
    assert range_size(20 * MiB, "d41d8cd98f00b204e9800998ecf8427e", 5 * MiB) == RANGE_SIZE  # one PUT
    assert range_size(200 * MiB, "abc-2", 100 * MiB) == RANGE_SIZE  # parts too big to be ranges
    assert range_size(6 * MiB, "abc-2", 3 * MiB) == RANGE_SIZE  # too small


async def test_parallel_ranges_stay_in_order_and_within_the_budget(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    data = bytes((i * 13) % 251 for i in range(29 * MiB + 5))
    s3.put_object(Bucket=bucket, Key="blob", Body=data)
    emulator = DistantS3(moto.port, Profile("slow", bandwidth=8_000_000, latency=0.01)).start()
    try:
        store = make_store(emulator.url, bucket, max_connections="8")
        info = await store.head("blob")
        budget = ReadaheadBudget(12 * MiB)
        counters: collections.Counter[str] = collections.Counter()
        async with trio.open_nursery() as nursery:
            reader = parallel_reader(store, info, budget, nursery, counters)
            received = bytearray()
            while chunk := await reader.read(len(received), 131072):
                received += chunk
            assert bytes(received) == data
            await reader.aclose()
        assert counters["parallel_reads"] == 1 and counters["ranges"] >= 5, counters
        # At most 3/4 of the connections (6 of 8) ever held by ranges at once.
        assert store.connections.bulk == 6 and store.connections.streams == 0
        assert budget.used == 0
        # Over budget only by what a blocked reader forces: a range, and a
        # chunk of the stream the ranges took over from.
        assert budget.peak <= 12 * MiB + 2 * MiB + 1 * MiB, budget.peak
    finally:
        emulator.stop()


async def test_a_range_waiting_for_a_connection_gives_its_budget_back_on_close(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    data = bytes((i * 7) % 253 for i in range(24 * MiB))
    s3.put_object(Bucket=bucket, Key="blob", Body=data)
    emulator = DistantS3(moto.port, Profile("slow", bandwidth=4_000_000, latency=0.01)).start()
    try:
        store = make_store(emulator.url, bucket, max_connections="4")
        info = await store.head("blob")
        # Two of the three slots streams may hold are taken elsewhere.
        others = [store.stream("blob", 0, MiB, info.etag) for _ in range(2)]
        for other in others:
            await other.reserve()
        budget = ReadaheadBudget(64 * MiB)
        counters: collections.Counter[str] = collections.Counter()
        async with trio.open_nursery() as nursery:
            reader = parallel_reader(store, info, budget, nursery, counters)
            offset = 0
            while counters["ranges"] < 1:  # read until ranges took over
                offset += len(await reader.read(offset, 131072))
            assert (await reader.read(offset, MiB)) == data[offset : offset + MiB]
            # A second range now waits in line for a connection: close the file.
            await reader.aclose()
        assert budget.used == 0, budget.used
        for other in others:
            await other.aclose()
        assert store.connections.streams == 0 and store.connections.in_use == 0
    finally:
        emulator.stop()


async def test_a_failed_read_ahead_fails_the_reads_that_reach_it_not_reads_elsewhere(
    moto: MotoServer, s3: Any, bucket: str
) -> None:
    data = bytes((i * 11) % 251 for i in range(8 * MiB))
    s3.put_object(Bucket=bucket, Key="blob", Body=data)
    faults = FaultProxy(moto.port).start()
    try:
        # The stream's connection is cut at 5 MiB, and every GET from there
        # on fails: the stream cannot resume.
        faults.rules[:] = [
            Rule(get_object, status=0, truncate_after=5 * MiB, count=1),
            Rule(get_object, status=500, range_from=5 * MiB),
        ]
        store = make_store(faults.url, bucket, maxretries="1")
        info = await store.head("blob")
        async with trio.open_nursery() as nursery:
            reader = ObjectReader(
                store,
                "blob",
                info.size,
                info.etag,
                budget=ReadaheadBudget(16 * MiB),
                nursery=nursery,
                max_window=2 * MiB,
            )
            offset = 0
            while offset < 4 * MiB:
                offset += len(await reader.read(offset, 131072))
            with trio.fail_after(10):
                while reader._error is None:  # the read-ahead has met the cut
                    await trio.sleep(0.05)
            # A read elsewhere (its own GET, which S3 answers) is served...
            assert await reader.read(100, 1000) == data[100:1100]
            # ...and the reads that reach the failure fail.
            with pytest.raises(StorageError):
                while offset < len(data):
                    chunk = await reader.read(offset, 131072)
                    assert chunk == data[offset : offset + len(chunk)]
                    offset += len(chunk)
            assert 5 * MiB - 131072 <= offset <= 5 * MiB
            await reader.aclose()
    finally:
        faults.stop()
