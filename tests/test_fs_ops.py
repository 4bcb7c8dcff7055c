# SPDX-License-Identifier: MIT
"""The FUSE handlers driven directly, without a kernel, against moto_server.

The kernel-free tier (``pytest -m "not uses_fuse"``): ``Operations`` is built
by the mount's own ``build_operations`` over a real S3 endpoint; only the
kernel is absent, so its cache notifications are recorded instead.  These
tests catch a broken handler or writer lifecycle in seconds, without mounting.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from s3regfs.config import Config, build
from s3regfs.fs import Operations
from s3regfs.inode_cache import Node
from s3regfs.mount import build_operations
from s3regfs.reader import ReadaheadBudget
from s3regfs.storage.s3 import S3Store
from s3regfs.writer import WriteMemory
from tests.util import CREDENTIALS, MotoServer, body, keys, open_uploads, rng_bytes

MiB = 1024 * 1024
ROOT = pyfuse3.ROOT_INODE
CTX = pyfuse3.RequestContext()


@dataclass
class RecordingKernel:
    """Stands for the kernel: records what it is told to forget."""

    entries: list[tuple[int, str]] = field(default_factory=list)
    attributes: list[int] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)

    async def forget_entry(self, parent: Node, name: str) -> None:
        self.entries.append((parent.ino, name))

    def forget_entry_soon(self, parent: Node, name: str) -> None:
        self.entries.append((parent.ino, name))

    def forget_entries_soon(self, entries: Sequence[tuple[Node, str]]) -> None:
        self.entries += [(parent.ino, name) for parent, name in entries]

    async def forget_attributes(self, node: Node) -> None:
        self.attributes.append(node.ino)

    def forget_attributes_soon(self, nodes: Sequence[Node]) -> None:
        self.attributes += [node.ino for node in nodes]

    async def forget_pages(self, node: Node) -> None:
        self.pages.append(node.ino)

    def forget_pages_soon(self, node: Node) -> None:
        self.pages.append(node.ino)


@dataclass
class Fs:
    ops: Operations
    kernel: RecordingKernel
    config: Config

    async def create(self, path: str, data: bytes = b"") -> pyfuse3.FileHandleT:
        parent = await self.dir_of(path)
        info, _ = await self.ops.create(parent, os.path.basename(path).encode(), 0o644, os.O_WRONLY, CTX)
        if data:
            assert await self.ops.write(info.fh, 0, data) == len(data)
        return info.fh

    async def dir_of(self, path: str) -> pyfuse3.InodeT:
        inode = ROOT
        for part in [p for p in os.path.dirname(path).split("/") if p]:
            try:
                inode = (await self.ops.lookup(inode, part.encode(), CTX)).st_ino
            except pyfuse3.FUSEError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                inode = (await self.ops.mkdir(inode, part.encode(), 0o755, CTX)).st_ino
        return inode

    async def inode(self, path: str) -> pyfuse3.InodeT:
        inode = ROOT
        for part in [p for p in path.split("/") if p]:
            inode = (await self.ops.lookup(inode, part.encode(), CTX)).st_ino
        return inode

    async def close(self, fh: pyfuse3.FileHandleT) -> None:
        try:
            await self.ops.flush(fh)
        finally:
            await self.ops.release(fh)

    async def read_all(self, path: str) -> bytes:
        info = await self.ops.open(await self.inode(path), os.O_RDONLY, CTX)
        try:
            pieces = []
            offset = 0
            while piece := await self.ops.read(info.fh, offset, MiB):
                pieces.append(piece)
                offset += len(piece)
            return b"".join(pieces)
        finally:
            await self.ops.release(info.fh)


@pytest.fixture
async def fs_factory(moto: MotoServer, bucket: str, tmp_path: Path) -> AsyncIterator[Any]:
    """Build an Operations over *bucket* with extra -o options."""
    async with trio.open_nursery() as nursery:
        made: list[Fs] = []

        def make(**options: str) -> Fs:
            spool = tmp_path / f"spool{len(made)}"
            spool.mkdir()
            opts = [("regionendpoint", moto.url), ("region", "us-east-1"), ("spooldir", str(spool))]
            opts += [
                ("accesskey", CREDENTIALS["AWS_ACCESS_KEY_ID"]),
                ("secretkey", CREDENTIALS["AWS_SECRET_ACCESS_KEY"]),
            ]
            opts += list(options.items())
            config = build(source=bucket, mountpoint="/unused", mount_options=opts, environ={})
            store = S3Store.create(config.driver, config.options)
            kernel = RecordingKernel()
            ops = build_operations(
                config,
                store,
                nursery,
                ReadaheadBudget(config.options.readahead_total),
                WriteMemory(config.options.write_memory),
                kernel,
            )
            made.append(Fs(ops, kernel, config))
            return made[-1]

        yield make
        for each in made:
            await each.ops.close_all()
        nursery.cancel_scope.cancel()


async def test_create_write_close_stores_and_reads_back(s3: Any, bucket: str, fs_factory: Any) -> None:
    fs = fs_factory(chunksize="5242880")
    small, big = b"hello", rng_bytes(11 * MiB + 7, 3)
    await fs.close(await fs.create("dir/small", small))
    fh = await fs.create("dir/big")
    for offset in range(0, len(big), MiB):
        await fs.ops.write(fh, offset, big[offset : offset + MiB])
    await fs.close(fh)
    assert body(s3, bucket, "dir/small") == small
    assert body(s3, bucket, "dir/big") == big
    assert await fs.read_all("dir/big") == big
    assert open_uploads(s3, bucket) == []
    attrs = await fs.ops.getattr(await fs.inode("dir/big"), CTX)
    assert attrs.st_size == len(big)


async def test_a_failed_write_poisons_the_file_and_keeps_the_stored_object(
    s3: Any, bucket: str, fs_factory: Any
) -> None:
    s3.put_object(Bucket=bucket, Key="old", Body=b"stored before")
    fs = fs_factory(spoolmax="64K")
    # A new file: ENOSPC, then every later call fails too; nothing stored; the name is gone.
    fh = await fs.create("new", b"x" * 1000)
    with pytest.raises(pyfuse3.FUSEError) as info:
        await fs.ops.write(fh, 1000, b"y" * 100_000)
    assert info.value.errno == errno.ENOSPC
    for call in (fs.ops.write(fh, 0, b"z"), fs.ops.flush(fh)):
        with pytest.raises(pyfuse3.FUSEError) as info:
            await call
        assert info.value.errno == errno.ENOSPC
    await fs.ops.release(fh)
    assert (ROOT, "new") in fs.kernel.entries
    with pytest.raises(pyfuse3.FUSEError) as info:
        await fs.ops.lookup(ROOT, b"new", CTX)
    assert info.value.errno == errno.ENOENT
    # An existing object: O_TRUNC then too much; its stored size comes back.
    inode = await fs.inode("old")
    opened = await fs.ops.open(inode, os.O_WRONLY | os.O_TRUNC, CTX)
    with pytest.raises(pyfuse3.FUSEError):
        await fs.ops.write(opened.fh, 0, b"n" * 100_000)
    assert (await fs.ops.getattr(inode, CTX)).st_size == len(b"stored before")
    assert inode in fs.kernel.attributes and inode in fs.kernel.pages
    with pytest.raises(pyfuse3.FUSEError) as info:
        await fs.close(opened.fh)
    assert info.value.errno == errno.ENOSPC
    assert keys(s3, bucket) == ["old"] and body(s3, bucket, "old") == b"stored before"
    # The next open starts afresh.
    opened = await fs.ops.open(inode, os.O_WRONLY | os.O_TRUNC, CTX)
    await fs.ops.write(opened.fh, 0, b"new content")
    await fs.close(opened.fh)
    assert body(s3, bucket, "old") == b"new content"


async def test_a_new_handle_follows_a_remote_overwrite_a_served_one_is_stale(
    s3: Any, bucket: str, fs_factory: Any
) -> None:
    s3.put_object(Bucket=bucket, Key="tag", Body=b"sha256:" + b"1" * 64)
    fs = fs_factory(metadata_ttl="30", readahead="1M")
    inode = await fs.inode("tag")
    s3.put_object(Bucket=bucket, Key="tag", Body=b"sha256:" + b"2" * 64 + b"\n")
    assert await fs.read_all("tag") == b"sha256:" + b"2" * 64 + b"\n"
    assert inode in fs.kernel.attributes  # it grew: the kernel's size must go
    # A handle that returned bytes of one version never switches.
    big = rng_bytes(8 * MiB, 4)
    s3.put_object(Bucket=bucket, Key="big", Body=big)
    info = await fs.ops.open(await fs.inode("big"), os.O_RDONLY, CTX)
    assert await fs.ops.read(info.fh, 0, 4096) == big[:4096]
    s3.delete_object(Bucket=bucket, Key="big")
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await fs.ops.read(info.fh, 7 * MiB, 4096)
    assert raised.value.errno == errno.ESTALE
    await fs.ops.release(info.fh)


async def test_renames_unlink_and_extended_attributes(s3: Any, bucket: str, fs_factory: Any) -> None:
    fs = fs_factory(multipartcopymaxconcurrency="2")
    for name in ("d/a", "d/sub/b", "d/sub/c", "f"):
        await fs.close(await fs.create(name, name.encode()))
    d = await fs.inode("d")
    await fs.ops.rename(ROOT, b"d", ROOT, b"e", 0, CTX)
    assert sorted(keys(s3, bucket)) == ["e/a", "e/sub/b", "e/sub/c", "f"]
    assert await fs.inode("e") == d
    assert await fs.read_all("e/sub/c") == b"d/sub/c"
    await fs.ops.rename(ROOT, b"f", await fs.inode("e"), b"g", 0, CTX)
    assert body(s3, bucket, "e/g") == b"f"
    await fs.ops.unlink(await fs.inode("e/sub"), b"b", CTX)
    assert sorted(keys(s3, bucket)) == ["e/a", "e/g", "e/sub/c"]
    g = await fs.inode("e/g")
    assert await fs.ops.getxattr(g, b"user.s3.key", CTX) == b"e/g"
    assert b"user.s3.key" in await fs.ops.listxattr(g, CTX)
    # A directory rename whose keys would be too long is refused before any copy.
    inode = await fs.inode("e")
    for _ in range(4):
        inode = (await fs.ops.mkdir(inode, b"n" * 250, 0o755, CTX)).st_ino
    with pytest.raises(pyfuse3.FUSEError) as info:
        await fs.ops.rename(ROOT, b"e", ROOT, b"y" * 250, 0, CTX)
    assert info.value.errno == errno.ENAMETOOLONG
    assert sorted(keys(s3, bucket)) == ["e/a", "e/g", "e/sub/c"]
    # The stats file has no key.
    stats = (await fs.ops.lookup(await fs.inode(".s3regfs"), b"stats", CTX)).st_ino
    assert await fs.ops.listxattr(stats, CTX) == []
