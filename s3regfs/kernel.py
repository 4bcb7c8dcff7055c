# SPDX-License-Identifier: MIT
"""Telling the kernel to forget what it cached (FUSE notifications).

Besides fs.py, the only module that talks to the kernel: it implements
:class:`s3regfs.open_files.KernelCache` for a mounted file system.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress

import pyfuse3
import trio

from s3regfs.inode_cache import Node


class KernelNotifier:
    """Makes the kernel forget what it cached (FUSE notifications); see
    :class:`s3regfs.open_files.KernelCache`.  The notifications block, so they
    run on worker threads; dropping pages waits for the page locks a read or
    write of the inode in progress holds until answered, so that one runs in
    the background in *nursery*, never awaited by a handler."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def forget_entry_soon(self, parent: Node, name: str) -> None:
        self._nursery.start_soon(self.forget_entry, parent, name)

    def forget_entries_soon(self, parent: Node, names: Sequence[str]) -> None:
        self._nursery.start_soon(self._forget_entries, parent.ino, [name.encode("utf-8") for name in names])

    @staticmethod
    async def _forget_entries(parent_ino: int, names: list[bytes]) -> None:
        def forget_all() -> None:
            for name in names:
                with suppress(OSError):  # the kernel did not know it
                    pyfuse3.invalidate_entry(parent_ino, name)

        await trio.to_thread.run_sync(forget_all)  # one thread hop for the lot

    async def forget_entry(self, parent: Node, name: str) -> None:
        # Not with deleted=: that takes the file's own inode lock, which a
        # write in progress holds.
        with suppress(OSError):  # the kernel did not know it
            await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent.ino, name.encode("utf-8"))

    async def forget_attributes(self, node: Node) -> None:
        with suppress(OSError):
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, node.ino, True)

    def forget_pages_soon(self, node: Node) -> None:
        self._nursery.start_soon(self._forget_pages, node.ino)

    @staticmethod
    async def _forget_pages(ino: int) -> None:
        with suppress(OSError):
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, False)
