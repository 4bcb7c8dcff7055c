# SPDX-License-Identifier: MIT
"""Open files: the handles the kernel holds and the writers behind them.

One :class:`OpenFiles` per mount owns every open :class:`FileHandle` and the
:class:`~s3regfs.writer.FileWriter` of each inode being written, and makes the
only decisions about a writer's data, each in one place:

- *commit* it (flush, fsync, the last release, a rename, the unmount);
- *discard* it (the file was unlinked or replaced: nothing to store);
- give it up as *lost*: a write, truncate or commit failed, so the file is
  poisoned (:class:`~s3regfs.errors.WriteLost`) and its data is never stored.
  The writer is detached from its inode (a new open starts afresh from the
  stored object), the name shows what S3 holds again, and one log line says
  what was not stored and why.

It also renames files and directories (committing what is being written
first, re-pointing open readers and writers after), and serves reads: a handle
is pinned to one version of its object, except that a handle that has
returned nothing yet follows an object another writer replaced.  fs.py's
handlers call it and translate its errors to errno values.
"""

from __future__ import annotations

import collections
import logging
import mmap
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Protocol

import trio

from s3regfs import layout
from s3regfs.blob_cache import BlobCache, BlobFill
from s3regfs.errors import NotFound, PreconditionFailed, StaleHandle, WriteLost
from s3regfs.inode_cache import Namespace, Node
from s3regfs.reader import ObjectReader, ReadaheadBudget, range_size
from s3regfs.storage.base import BlobReads, ObjectInfo, ObjectStore, RangeReads
from s3regfs.writer import FileWriter, SpoolSpace, WriteMemory

log = logging.getLogger(__name__)

#: Reads that meet a changed object follow it to its new version this many
#: times before they give up (an object rewritten faster than it can be read).
NEW_VERSION_ATTEMPTS = 3


class KernelCache(Protocol):
    """What the kernel caches of the tree, and how to make it forget (the FUSE
    notifications live in fs.py, the only module that talks to the kernel)."""

    async def forget_entry(self, parent: Node, name: str) -> None:
        """The kernel forgets *name* in *parent* before this returns.  It takes
        the directory's lock: never await it in a handler whose own request
        may hold that lock or wait for it (rename, unlink, create, write)."""
        ...

    def forget_entry_soon(self, parent: Node, name: str) -> None:
        """The kernel forgets *name* in *parent* soon (never awaited)."""
        ...

    def forget_entries_soon(self, entries: Sequence[tuple[Node, str]]) -> None:
        """The kernel forgets each (parent, name) of *entries* soon (never awaited)."""
        ...

    async def forget_attributes(self, node: Node) -> None:
        """The kernel forgets *node*'s attributes before this returns."""
        ...

    def forget_attributes_soon(self, nodes: Sequence[Node]) -> None:
        """The kernel forgets the attributes of each of *nodes* soon (never awaited)."""
        ...

    async def forget_pages(self, node: Node) -> None:
        """The kernel forgets *node*'s cached pages before this returns: only
        where no request holds their locks (a directory's, in GETATTR)."""
        ...

    def forget_pages_soon(self, node: Node) -> None:
        """The kernel forgets *node*'s cached pages soon (never awaited: a read
        or write of the inode in progress holds page locks until answered)."""
        ...


@dataclass
class FileHandle:
    """An open file: a reader for its committed data, the inode's writer if writable."""

    node: Node
    reader: ObjectReader | None
    writer: FileWriter | None
    #: A file made up in memory (the images view's, the stats file).
    data: bytes | mmap.mmap | None = None
    #: A blob served from -o cache: the local file, read with pread on a worker thread.
    cached_fd: int | None = None
    #: A read of this handle returned bytes of the object: from now on it is
    #: pinned to that version (a changed object is ESTALE, not a switch).
    served: bool = False


class OpenFiles:
    """The open handles and writers of one mount; see the module docstring."""

    def __init__(
        self,
        store: ObjectStore,
        namespace: Namespace,
        kernel: KernelCache,
        nursery: trio.Nursery,
        *,
        chunksize: int,
        spool: SpoolSpace,
        write_memory: WriteMemory,
        readahead: ReadaheadBudget,
        max_window: int,
        max_ranges: int,
        parts_in_flight: int,
        verify: bool,
        blob_cache: BlobCache | None = None,
        blob_reads: BlobReads | None = None,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._kernel = kernel
        self._nursery = nursery
        self._chunksize = chunksize
        self._spool = spool
        self.write_memory = write_memory
        self.readahead = readahead
        self._max_window = max_window
        self._max_ranges = max_ranges
        #: The readers' parallel_reads and ranges (see reader.ObjectReader).
        self.read_counters: collections.Counter[str] = collections.Counter()
        self._parts_in_flight = parts_in_flight
        self._verify = verify
        #: -o cache: blob data by digest on local disk (None without it).
        self.blob_cache = blob_cache
        #: The registry's CloudFront in front of S3 for blob data (None without it).
        self.blob_reads = blob_reads
        self._handles: dict[int, FileHandle] = {}
        self._writers: dict[int, FileWriter] = {}
        self._next_fh = 1
        #: close_all() began: the kernel needs no more notifications.
        self._closing = False

    # -- handles ------------------------------------------------------------------

    def add(self, handle: FileHandle) -> int:
        """Register *handle*; its file handle number."""
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def __getitem__(self, fh: int) -> FileHandle:
        return self._handles[fh]

    def __len__(self) -> int:
        return len(self._handles)

    def new_reader(self, node: Node) -> ObjectReader:
        """A reader of the version of *node* the namespace knows now (with
        -o cache, one that fills the cache when it reads a blob whole)."""
        digest = layout.blob_digest(node.path)
        cache = self.blob_cache
        begin_fill = None
        if cache is not None and digest is not None and not node.local:
            size = node.size

            def begin_fill() -> BlobFill | None:
                return cache.begin_fill(digest, size)

        key = self._namespace.key(node)
        source: RangeReads = self._store
        through_cdn = False
        if (
            self.blob_reads is not None
            and digest is not None
            and layout.digest_problem(digest) is None  # else nothing could check its bytes
            and not node.local
            and self.blob_reads.routes(key)
        ):
            source, through_cdn = self.blob_reads, True
        return ObjectReader(
            source,
            key,
            node.size,
            node.etag,
            budget=self.readahead,
            nursery=self._nursery,
            max_window=self._max_window,
            range_size=range_size(node.size, node.etag, self._chunksize),
            max_ranges=self._max_ranges,
            counters=self.read_counters,
            verify_digest=digest if self._verify else None,
            cache_digest=digest,
            begin_fill=begin_fill,
            through_cdn=through_cdn,
            fallback=self._store,
        )

    async def release(self, fh: int) -> None:
        """The kernel closed *fh*: stop its reader; the last writer's user commits."""
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.cached_fd is not None:
            os.close(handle.cached_fd)
        if handle.reader is not None:
            await handle.reader.aclose()
        if handle.writer is not None:
            await self.drop_writer(handle.node, handle.writer)

    async def read(self, handle: FileHandle, offset: int, size: int) -> bytes:
        """Bytes of *handle*'s file: a file being written here reads its
        committed part from S3 and the rest from its spool; any other reads
        the version its handle is pinned to.  A handle that has returned
        nothing yet follows an object another writer replaced (at most
        NEW_VERSION_ATTEMPTS times); one that returned bytes of a version
        never mixes in another: StaleHandle, as for an object deleted under it."""
        node = handle.node
        writer = self._writers.get(node.ino)
        if writer is not None:
            return await writer.read(offset, size)
        for attempt in range(1, NEW_VERSION_ATTEMPTS + 1):
            reader = handle.reader
            if reader is None:
                raise StaleHandle(f"{node.path}: not open for reading")
            try:
                data = await reader.read(offset, size)
            except (PreconditionFailed, NotFound) as exc:
                if handle.reader is not reader and not handle.served:
                    continue  # a concurrent read of this handle followed it already
                if handle.served or attempt == NEW_VERSION_ATTEMPTS:
                    log.warning(
                        "read %r at %d: the object changed or was deleted under an open file: %s",
                        node.path,
                        offset,
                        exc,
                    )
                    raise StaleHandle(f"{node.path}: changed under an open file") from exc
                try:
                    old_etag, _ = await self.follow_new_version(handle)
                except NotFound:
                    log.warning("read %r: deleted under an open file", node.path)
                    raise StaleHandle(f"{node.path}: deleted under an open file") from None
                log.info(
                    "%r changed in S3 (ETag %s -> %s): reading the new version",
                    node.path,
                    old_etag,
                    node.etag,
                )
                continue
            if data:
                handle.served = True
            return data
        raise AssertionError("not reached")  # the loop returns or raises

    async def follow_new_version(self, handle: FileHandle) -> tuple[str, int]:
        """Point *handle* (which has returned no byte yet) at the object S3
        holds now; returns the old (ETag, size).  NotFound if it is gone.

        The kernel holds no page of the old version from before this open:
        only blobs keep their pages across opens, and a blob's bytes do not
        change.  (Pages another handle of the inode filled since may remain:
        see docs/reading.md.  Dropping them is no remedy: any invalidation of
        the inode, pages included, also stops the kernel from taking the size
        from a short answer, below.)  Its idea of the
        size matters: a read is cut at the size it knows, so a version that
        grew needs the cached attributes dropped before this read is answered
        (the next read past the old end asks for them).  A version that shrank
        must keep them: the short answer itself then sets the new size, which
        the kernel would not do after an invalidation (it would pad the read
        with zeros up to the old size)."""
        node = handle.node
        old = (node.etag, node.size)
        node.fresh_at = None
        await self._namespace.refresh_file(node)
        if handle.reader is not None:
            await handle.reader.aclose()
        handle.reader = self.new_reader(node)
        if node.size > old[1]:
            await self._kernel.forget_attributes(node)
        return old

    # -- writers ------------------------------------------------------------------

    def writer_for(self, node: Node, *, created: bool = False) -> FileWriter:
        """The inode's writer (made on first use); counts one more user.
        *created*: the file was just created, so its first commit stores it
        even if nothing is written (an empty object)."""
        writer = self._writers.get(node.ino)
        if writer is None:
            key = self._namespace.key(node)
            base = None if node.local else ObjectInfo(key, node.size, node.etag, node.mtime_ns)
            writer = FileWriter(
                self._store,
                key,
                base,
                chunksize=self._chunksize,
                space=self._spool,
                memory=self.write_memory,
                nursery=self._nursery,
                parts_in_flight=self._parts_in_flight,
            )
            self._writers[node.ino] = writer
            node.writing = True
        writer.refs += 1
        if created:
            writer.dirty = True
        return writer

    def writer_of(self, node: Node) -> FileWriter | None:
        """The writer of *node* being written here, if any."""
        return self._writers.get(node.ino)

    def discard_writer_of(self, node: Node) -> None:
        """*node* was unlinked or replaced: its writer's data must never be stored."""
        writer = self._writers.get(node.ino)
        if writer is not None:
            writer.unlinked = True

    async def commit(self, node: Node, writer: FileWriter, *, closing: bool = False) -> None:
        """Store what *writer* holds; WriteLost if it cannot.  *closing*: for
        close() (FLUSH), which holds no lock of the kernel's: a file that was
        never stored and whose data is lost is gone from the kernel's entries
        before the caller hears of the error (no ghost).  Not for fsync: the
        kernel holds the file's lock through FSYNC, and forgetting the entry
        needs its directory's, which an rm of the file may hold while it
        waits for the file's (the entry is then forgotten in the background)."""
        try:
            async with self.guard(node, writer):
                if await writer.commit():
                    self._stored(node, writer)
        except WriteLost:
            parent = node.parent
            # Not when a new file took the name meanwhile: its entry is right.
            if (
                closing
                and not node.attached
                and not self._closing
                and parent is not None
                and parent.children is not None
                and node.name not in parent.children
            ):
                await self._kernel.forget_entry(parent, node.name)
            raise

    async def commit_locked(self, node: Node, writer: FileWriter) -> None:
        """:meth:`commit` for a caller that holds the writer's lock (rename)."""
        async with self.guard(node, writer):
            if await writer.commit_locked():
                self._stored(node, writer)

    def _stored(self, node: Node, writer: FileWriter) -> None:
        self._namespace.stored(node, size=writer.size, etag=writer.etag)
        # The kernel's page cache holds what was written: it may stay.
        node.cached_etag = writer.etag

    async def pending_bytes(self, node: Node, limit: int) -> bytes | None:
        """*node*'s whole content as a reader here sees it (written data
        included), if it is at most *limit* bytes; else None."""
        if node.size > limit:
            return None
        writer = self._writers.get(node.ino)
        if writer is not None:
            return await writer.read(0, node.size)
        return await self._store.get_range(self._namespace.key(node), 0, node.size, node.etag or None)

    @asynccontextmanager
    async def guard(self, node: Node, writer: FileWriter) -> AsyncIterator[None]:
        """Around a write, truncate or commit of *writer*: if it fails, the
        file's data is lost for good (:meth:`_abandon`)."""
        try:
            yield
        except WriteLost:
            with trio.CancelScope(shield=True):
                await self._abandon(node, writer)
            raise

    async def _abandon(self, node: Node, writer: FileWriter) -> None:
        """*writer*'s data will never be stored.  Detach it from the inode, so a
        new open starts from the stored object, and make the name what S3
        holds: a file never stored disappears, an existing one gets its stored
        size and ETag back; the kernel forgets what it cached of either.  The
        handles that hold *writer* keep failing until they are released.
        The one log line that says what was not stored and why."""
        if self._writers.get(node.ino) is not writer:
            return  # already abandoned, or replaced
        del self._writers[node.ino]
        node.writing = False
        cause = writer.failure if writer.failure is not None else "unmounted before it was stored"
        log.error("%r: the data written was NOT stored: %s", node.path, cause)
        if self._closing or node.is_dir:
            return
        if node.local:
            parent, name = node.parent, node.name
            if parent is not None and parent.children is not None and parent.children.get(name) is node:
                self._namespace.remove(node)
                # Not awaited: the request that failed may hold (or wait for)
                # the directory's lock (see KernelCache.forget_entry).
                self._kernel.forget_entry_soon(parent, name)
        else:
            node.size = writer.stored_size
            node.etag = writer.etag
            node.fresh_at = None  # the next open asks S3 (one HEAD)
            node.cached_etag = ""
            await self._kernel.forget_attributes(node)
            self._kernel.forget_pages_soon(node)

    async def drop_writer(self, node: Node, writer: FileWriter) -> None:
        """One user fewer; the last one commits (or discards) and closes.  A
        commit that fails here has nobody to tell but the log."""
        writer.refs -= 1
        if writer.refs > 0:
            return
        try:
            if not writer.unlinked and writer.failure is None:
                with suppress(WriteLost):
                    await self.commit(node, writer)
        finally:
            # Opened again while this commit was awaited: the writer lives on.
            if writer.refs == 0:
                if writer.failure is not None or writer.unlinked:
                    await writer.discard()
                writer.close()
                if self._writers.get(node.ino) is writer:
                    del self._writers[node.ino]
                    node.writing = False

    # -- renames ------------------------------------------------------------------

    def relocated(self, node: Node, key: str) -> None:
        """*node*'s object now lives at *key* (ETag ``node.etag``): its open
        readers and its writer go there.  A stream in flight keeps its open
        GET of the old key, whose bytes are the same."""
        for handle in self._handles.values():
            if handle.node is node and handle.reader is not None:
                handle.reader.relocate(key, node.etag)
        writer = self._writers.get(node.ino)
        if writer is not None and not node.local:
            writer.rename(key, node.etag)

    async def move_file(self, node: Node, new_path: str) -> None:
        """Rename a file: commit what is being written (under the writer's
        lock from commit to delete, so no write or commit lands on the old key
        in between), copy as the driver copies, delete the source."""
        writer = self._writers.get(node.ino)
        if writer is None:
            await self._move_object(node, new_path)
            return
        async with writer.lock:
            await self.commit_locked(node, writer)
            await self._move_object(node, new_path)

    async def _move_object(self, node: Node, new_path: str) -> None:
        if node.local:
            return  # nothing stored yet
        source = self._namespace.key(node)
        dest = layout.key_of(self._namespace.key_prefix, new_path)
        node.etag = await self._store.copy(source, dest, node.size, node.etag or None)
        node.cached_etag = node.etag
        await self._store.delete(source)
        self.relocated(node, dest)

    async def move_directory(self, directory: Node, new_path: str) -> None:
        """Rename a directory: commit the files being written below it, then
        copy every object below and delete the sources (not atomic; KeyTooLong
        before any copy if a new key would be too long)."""
        await self.commit_below(directory)
        descendants = self._namespace.descendants(directory)
        relatives = {inner.ino: inner.path[len(directory.path) + 1 :] for inner in descendants}
        dest_prefix = layout.key_of(self._namespace.key_prefix, new_path) + "/"
        new_etags = await self._store.move_prefix(
            self._namespace.key(directory) + "/", dest_prefix, also=list(relatives.values())
        )
        for inner in descendants:
            relative = relatives[inner.ino]
            if relative in new_etags:
                inner.etag = inner.cached_etag = new_etags[relative]
            self.relocated(inner, dest_prefix + relative)

    async def commit_below(self, directory: Node) -> None:
        """Commit every file being written below *directory* (before it moves)."""
        for ino, writer in list(self._writers.items()):
            inner = self._namespace.get(ino)
            if inner.path.startswith(directory.path + "/"):
                await self.commit(inner, writer)

    # -- the unmount --------------------------------------------------------------

    async def close_all(self, commit_timeout: float) -> None:
        """Stop every reader; commit the open writers within *commit_timeout*
        seconds; give up (and log) the rest."""
        for handle in list(self._handles.values()):
            if handle.reader is not None:
                await handle.reader.aclose()
        # The kernel stopped listening: a notification could wait forever for
        # a lock held by a request nobody will answer.
        self._closing = True
        writers = {id(w): w for w in self._writers.values()}
        writers.update({id(h.writer): h.writer for h in self._handles.values() if h.writer is not None})
        with trio.move_on_after(commit_timeout):
            for ino, writer in list(self._writers.items()):
                if not writer.unlinked:
                    with suppress(WriteLost):  # logged by _abandon
                        await self.commit(self._namespace.get(ino), writer)
        for ino, writer in list(self._writers.items()):
            if writer.dirty and not writer.unlinked:
                await self._abandon(self._namespace.get(ino), writer)
        for writer in writers.values():
            await writer.discard()
            writer.close()
        self._writers.clear()
        self._handles.clear()

    @property
    def kernel(self) -> KernelCache:
        """How the mount makes the kernel forget what it cached."""
        return self._kernel

    def stats(self) -> dict[str, object]:
        """The open files' figures of the stats file."""
        return {
            "open_files": len(self._handles),
            "open_uploads": sum(1 for writer in self._writers.values() if writer.uploading),
            "files_being_written": len(self._writers),
            "readahead_bytes": self.readahead.used,
            "write_memory_bytes": self.write_memory.used,
            "parallel_reads": self.read_counters["parallel_reads"],
            "read_ranges": self.read_counters["ranges"],
        }


def default_spooldir() -> str:
    """Where spools go without ``-o spooldir``: the system's temporary directory."""
    return tempfile.gettempdir()


__all__ = ["FileHandle", "KernelCache", "OpenFiles", "default_spooldir"]
