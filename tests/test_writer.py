# SPDX-License-Identifier: MIT
"""FileWriter against moto_server, and its Extents against a model (no kernel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from s3regfs.config import build
from s3regfs.errors import SpoolFull, WriteLost
from s3regfs.storage.base import ObjectInfo
from s3regfs.storage.s3 import S3Store
from s3regfs.writer import Extents, FileWriter, SpoolSpace, WriteMemory
from tests.util import CREDENTIALS, MotoServer, body, open_uploads, rng_bytes

MiB = 1024 * 1024


def store_for(moto: MotoServer, bucket: str) -> S3Store:
    options = [
        ("regionendpoint", moto.url),
        ("region", "us-east-1"),
        ("accesskey", CREDENTIALS["AWS_ACCESS_KEY_ID"]),
        ("secretkey", CREDENTIALS["AWS_SECRET_ACCESS_KEY"]),
    ]
    config = build(source=bucket, mountpoint="/unused", mount_options=options, environ={})
    return S3Store.create(config.driver, config.options)


async def test_sequential_general_and_poisoned_writes(
    moto: MotoServer, s3: Any, bucket: str, tmp_path: Path
) -> None:
    store = store_for(moto, bucket)
    memory = WriteMemory(64 * MiB)
    space = SpoolSpace(str(tmp_path), 0)
    async with trio.open_nursery() as nursery:

        def writer(key: str, base: ObjectInfo | None = None, spool: SpoolSpace = space) -> FileWriter:
            return FileWriter(
                store, key, base, chunksize=5 * MiB, space=spool, memory=memory, nursery=nursery
            )

        # Sequential: parts while writing, one Complete.
        data = rng_bytes(12 * MiB + 5, 1)
        new = writer("seq")
        for offset in range(0, len(data), MiB):
            await new.write(offset, data[offset : offset + MiB])
        assert await new.commit() and not await new.commit()  # nothing new: no request
        new.close()
        assert body(s3, bucket, "seq") == data
        # General: a write in the middle of a stored object.
        head = await store.head("seq")
        middle = writer("seq", head)
        await middle.write(100, b"middle")
        assert await middle.read(98, 10) == data[98:100] + b"middle" + data[106:108]
        await middle.commit()
        middle.close()
        assert body(s3, bucket, "seq") == data[:100] + b"middle" + data[106:]
        # Poisoned: a full spool fails the write and every later call.
        small = SpoolSpace(str(tmp_path), 1000)
        full = writer("never", spool=small)
        await full.write(0, b"x" * 900)
        with pytest.raises(WriteLost) as info:
            await full.write(900, b"y" * 200)
        assert isinstance(info.value.cause, SpoolFull)
        assert "200 more bytes needed, 100 of spoolmax=1000 available" in str(info.value)
        for attempt in (full.write(0, b"z"), full.truncate(0), full.commit()):
            with pytest.raises(WriteLost):
                await attempt
        await full.discard()
        full.close()
        assert small.used == 0
        assert "never" not in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert open_uploads(s3, bucket) == []
        nursery.cancel_scope.cancel()
    assert space.used == 0


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 300), st.integers(0, 300)),
            st.tuples(st.just("truncate"), st.integers(0, 300), st.just(0)),
        ),
        max_size=30,
    )
)
def test_extents_follow_a_set_of_bytes(operations: list[tuple[str, int, int]]) -> None:
    extents = Extents()
    covered: set[int] = set()
    for op, a, b in operations:
        if op == "add":
            start, end = min(a, b), max(a, b)
            extents.add(start, end)
            covered |= set(range(start, end))
        else:
            extents.truncate(a)
            covered = {byte for byte in covered if byte < a}
    for start in range(0, 310, 7):
        for end in (start, start + 1, start + 13, 310):
            pieces = extents.segments(start, end)
            # Contiguous pieces that cover [start, end), each wholly covered or not.
            assert [p[0] for p in pieces[1:]] == [p[1] for p in pieces[:-1]]
            if start < end:
                assert pieces[0][0] == start and pieces[-1][1] == end
            for a, b, is_covered in pieces:
                assert all((byte in covered) == is_covered for byte in range(a, b))
            assert extents.covered_length(start, end) == len([b for b in covered if start <= b < end])
