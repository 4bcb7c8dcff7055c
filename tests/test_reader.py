# SPDX-License-Identifier: MIT
"""ObjectReader against moto_server: streams and ranges."""

from __future__ import annotations

from typing import Any

import trio

from s3regfs.reader import ObjectReader, ReadaheadBudget
from tests.util import MotoServer, make_store


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
