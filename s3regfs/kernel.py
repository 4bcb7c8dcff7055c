# SPDX-License-Identifier: MIT
"""Telling the kernel to forget what it cached (FUSE notifications).

Besides fs.py, the only module that talks to the kernel: it implements
:class:`s3regfs.open_files.KernelCache` for a mounted file system.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import suppress

import pyfuse3
import trio

from s3regfs.inode_cache import Node


def working_directories(mountpoint: str) -> list[str]:
    """The working directories of this machine's processes that lie below
    *mountpoint*, relative to it ("" for the mount point itself); those we
    cannot see (other users' without root, other mount namespaces) are not
    among them."""
    found: list[str] = []
    prefix = mountpoint.rstrip("/") + "/"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue  # gone, or not ours to see
        if cwd == mountpoint:
            found.append("")
        elif cwd.startswith(prefix):
            found.append(cwd[len(prefix) :])
    return found


class KernelNotifier:
    """Makes the kernel forget what it cached (FUSE notifications); see
    :class:`s3regfs.open_files.KernelCache`.  The notifications block, so they
    run on worker threads; dropping pages waits for the page locks a read or
    write of the inode in progress holds until answered, so that one runs in
    the background in *nursery*, never awaited by a handler."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def forget_entry_soon(self, parent: Node, name: str) -> None:
        self.forget_entries_soon([(parent, name)])

    def forget_entries_soon(self, entries: Sequence[tuple[Node, str]]) -> None:
        pairs = [(parent.ino, name.encode("utf-8")) for parent, name in entries]
        self._nursery.start_soon(_notify_each, pyfuse3.invalidate_entry, pairs)

    async def forget_entry(self, parent: Node, name: str) -> None:
        # Not with deleted=: that takes the file's own inode lock, which a
        # write in progress holds.
        with suppress(OSError):  # the kernel did not know it
            await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent.ino, name.encode("utf-8"))

    async def forget_attributes(self, node: Node) -> None:
        with suppress(OSError):
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, node.ino, True)

    def forget_attributes_soon(self, nodes: Sequence[Node]) -> None:
        self._nursery.start_soon(_notify_each, pyfuse3.invalidate_inode, [(node.ino, True) for node in nodes])

    async def forget_pages(self, node: Node) -> None:
        await self._forget_pages(node.ino)

    def forget_pages_soon(self, node: Node) -> None:
        self._nursery.start_soon(self._forget_pages, node.ino)

    @staticmethod
    async def _forget_pages(ino: int) -> None:
        with suppress(OSError):
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, False)


async def _notify_each(notify: Callable[..., None], arguments: Sequence[tuple[object, ...]]) -> None:
    """``notify(*each)`` for each of *arguments*, all on one worker thread; a
    notification the kernel refuses (it did not know the entry) is skipped."""

    def notify_all() -> None:
        for each in arguments:
            with suppress(OSError):
                notify(*each)

    await trio.to_thread.run_sync(notify_all)
