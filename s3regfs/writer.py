# SPDX-License-Identifier: MIT
"""Writing files: a local spool per written file, parts uploaded while the
writer goes on, and commits after which the object exists whole.

A :class:`FileWriter` serves every handle that writes one inode.  Written bytes
go to a *spool*: an unlinked temporary file (``spooldir``), so uncommitted data
is readable through the mount and never piles up in RAM.  The file's content is
the *base* (the object in S3 the writer started from, if any, cut to
``base_size``), overlaid with the spool's written extents, then zeros.

Sequential writing (every write since the base was set lands in
``[base_keep, size]``: a new file, O_TRUNC, or an append) is *streamed*: each
time ``chunksize`` bytes past the upload cursor are in the spool, a background
task reads them back and uploads them as the next part of a multipart upload,
at most ``parts_in_flight`` at once per file; a writer that gets further ahead
waits (backpressure), and every part buffer comes from one :class:`WriteMemory`
budget shared by all files.  The commit uploads the last part and completes
the upload; a file smaller than chunksize is one PutObject.  An append reuses
the base server-side as the first part (UploadPartCopy) when it is at least
5 MiB, else reads it into the spool, as the driver's Writer(append=true) does.

Anything else (overwriting the base, holes, truncating to a non-zero size
below the base) turns the writer *general*: at commit the missing base ranges
are fetched into the spool and the whole file is uploaded from it.

Commit semantics: nothing is sent before the first commit (flush/fsync); a
commit with nothing new costs no request; the object appears only when
complete; on failure the multipart upload (always one s3regfs created) is
aborted and the error is raised.

Failures poison: once a write, truncate or commit has failed, the writer's
pending data is never stored.  That call and every later write, truncate and
commit raise :class:`WriteLost` (with the first failure as its cause), so the
object stays what it was before the file was opened for writing, or after its
last successful commit: it changes only to a state every writer of it was
told had been stored.

Spool accounting (``spoolmax``) counts the bytes written, not offsets: a hole
costs nothing.

Concurrency: one lock per writer serialises writes, truncation, reads and
commits; part uploads run outside it, in the mount's nursery, and report to
the writer's :class:`_Upload`.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import trio

from s3regfs.budget import MemoryBudget
from s3regfs.errors import SpoolFull, StorageError, WriteLost
from s3regfs.storage.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

MIN_PART = 5 * 1024 * 1024
MAX_PART = 5 * 1024 * 1024 * 1024
#: Parts of one file uploading at once by default (the ``parts_in_flight``
#: option); a writer that gets further ahead waits.
PARTS_IN_FLIGHT = 10
FETCH_CHUNK = 8 * 1024 * 1024


#: Part-buffer memory of all files being written (the ``write_memory`` option).
WriteMemory = MemoryBudget


class SpoolSpace:
    """Spool bytes across the mount: at most *limit* (0: only the disk's limit)."""

    def __init__(self, directory: str, limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> None:
        if self.limit and self.used + size > self.limit:
            available = max(0, self.limit - self.used)
            raise SpoolFull(
                f"spool full: {size} more bytes needed, {available} of spoolmax={self.limit} available"
            )
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size


class Extents:
    """Disjoint, sorted [start, end) ranges."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_left(self._ends, start)
        j = bisect.bisect_right(self._starts, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def truncate(self, size: int) -> None:
        i = bisect.bisect_left(self._ends, size)
        del self._starts[i + 1 :], self._ends[i + 1 :]
        if i < len(self._starts):
            if self._starts[i] >= size:
                del self._starts[i], self._ends[i]
            else:
                self._ends[i] = size

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()

    def segments(self, start: int, end: int) -> list[tuple[int, int, bool]]:
        """[start, end) cut into (a, b, covered) pieces."""
        pieces: list[tuple[int, int, bool]] = []
        i = bisect.bisect_right(self._ends, start)
        position = start
        while position < end:
            if i < len(self._starts) and self._starts[i] <= position:
                b = min(end, self._ends[i])
                pieces.append((position, b, True))
                i += 1
            else:
                b = min(end, self._starts[i]) if i < len(self._starts) else end
                pieces.append((position, b, False))
            position = b
        return pieces

    def covers(self, start: int, end: int) -> bool:
        return all(covered for _, _, covered in self.segments(start, end))

    def covered_length(self, start: int, end: int) -> int:
        """How many bytes of [start, end) the extents cover."""
        return sum(b - a for a, b, covered in self.segments(start, end) if covered)

    def __repr__(self) -> str:
        return f"Extents({list(zip(self._starts, self._ends, strict=True))})"


@dataclass
class _Upload:
    """One multipart upload of a streamed commit."""

    upload_id: str
    #: The key the upload was created for (a rename cannot change it).
    key: str = ""
    parts: dict[int, str] = field(default_factory=dict)
    next_number: int = 1
    #: Spool offset up to which parts have been scheduled.
    cursor: int = 0
    pending: int = 0
    error: BaseException | None = None
    stale: bool = False
    changed: trio.Event = field(default_factory=trio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class FileWriter:
    """The write state of one inode; see the module docstring."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        base: ObjectInfo | None,
        *,
        chunksize: int,
        space: SpoolSpace,
        memory: WriteMemory,
        nursery: trio.Nursery,
        parts_in_flight: int = PARTS_IN_FLIGHT,
    ) -> None:
        self.key = key
        self._parts_in_flight = max(1, parts_in_flight)
        self._store = store
        self._chunksize = chunksize
        self._space = space
        self._memory = memory
        self._nursery = nursery
        self.lock = trio.Lock()
        self.refs = 0
        self.unlinked = False
        self.dirty = False
        #: The first write, truncate or commit that failed: the pending data is
        #: poisoned and never stored (see the module docstring).
        self.failure: Exception | None = None
        #: close() ran: the spool is gone and the writer must not be used.
        self.closed = False
        #: The object as stored: at the start, then after each commit.
        self.etag = base.etag if base else ""
        self.stored_size = base.size if base else 0
        self.size = self.stored_size
        self._base_key = key
        self._base_size = self.size
        self._base_etag = self.etag
        self._base_keep = self.size
        self._general = False
        self._extents = Extents()
        self._fd = -1
        self._reserved = 0
        self._upload: _Upload | None = None
        #: The bytes appended since the upload cursor, kept in memory (at most
        #: one part) so a streamed part is uploaded without reading it back.
        #: None once a write breaks the pure append (the spool serves then).
        self._tail: bytearray | None = bytearray()
        self._tail_start = self.size
        #: The tail holds a chunksize reservation of the write memory.
        self._tail_reserved = False

    # -- the spool --------------------------------------------------------------------

    def _spool(self) -> int:
        if self._fd < 0:
            fd, path = tempfile.mkstemp(prefix="s3regfs-spool-", dir=self._space.directory)
            os.unlink(path)  # nothing to clean up after a crash
            self._fd = fd
        return self._fd

    def _pwrite(self, offset: int, data: bytes) -> None:
        """Write *data* into the spool; the caller then adds it to the extents."""
        new = len(data) - self._extents.covered_length(offset, offset + len(data))
        if new > 0:
            self._space.reserve(new)
            self._reserved += new
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self._spool(), view, offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(f"spool full: {exc.strerror}") from None
            raise

    def _pread(self, start: int, end: int) -> bytes:
        data = os.pread(self._spool(), end - start, start) if end > start else b""
        # Past the spool file's end (a hole up to the size) reads as zeros.
        return data + bytes(end - start - len(data))

    def _release_spool(self, size: int) -> None:
        self._space.release(size)
        self._reserved -= size

    def close(self) -> None:
        """Drop the spool and the tail (after the last handle is released); final."""
        self.closed = True
        self._extents.clear()
        self._drop_tail()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._release_spool(self._reserved)

    # -- operations -------------------------------------------------------------------

    def _poisoned(self) -> None:
        if self.failure is not None:
            raise WriteLost(self.failure)

    def _poison(self, exc: Exception) -> WriteLost:
        if self.failure is None:
            self.failure = exc
        return WriteLost(self.failure)

    @contextmanager
    def _poisoning(self) -> Iterator[None]:
        """Around a change to the pending data: refused once poisoned, and any
        failure of it poisons."""
        self._poisoned()
        try:
            yield
        except Exception as exc:
            raise self._poison(exc) from exc

    async def write(self, offset: int, data: bytes) -> int:
        """Write *data* at *offset* (into the spool).  WriteLost once anything failed."""
        async with self.lock:
            with self._poisoning():
                await self._write_locked(offset, data)
        return len(data)

    async def _write_locked(self, offset: int, data: bytes) -> None:
        if not (self._base_keep <= offset <= self.size):
            self._general = True
        if not self._general and 0 < self._base_keep < MIN_PART and offset == self._base_keep:
            # Too small to copy server-side as part 1: read it into the spool.
            await self._fetch_base(0, self._base_keep)
            self._base_keep = 0
        if self._tail is not None and offset == self.size == self._tail_start + len(self._tail):
            if not self._tail_reserved and self._memory.used + self._chunksize <= self._memory.total // 2:
                # Tails may hold at most half the budget: part uploads
                # read back from the spool always find room.
                self._tail_reserved = self._memory.try_take(self._chunksize)
            if self._tail_reserved:
                self._tail += data
            else:
                self._drop_tail()  # no memory to spare: parts are read back from the spool
        else:
            self._drop_tail()
        self._pwrite(offset, data)
        end = offset + len(data)
        self._extents.add(offset, end)
        self.size = max(self.size, end)
        self.dirty = True
        if self._upload is not None and offset < self._upload.cursor:
            self._upload.stale = True  # an uploaded part changed: start over at commit
        if not self._general:
            try:
                await self._schedule_parts(final=False)
            except StorageError as exc:
                # The data is safe in the spool; the commit starts the
                # upload again and reports what still fails.
                log.debug("%s: could not start the upload yet: %s", self.key, exc)
                self._drop_tail()

    async def truncate(self, size: int) -> None:
        """Set the size; takes effect at the next commit (0: a fresh object).
        WriteLost once anything failed."""
        async with self.lock:
            with self._poisoning():
                await self._truncate_locked(size)

    async def _truncate_locked(self, size: int) -> None:
        if size == self.size:
            return
        if size == 0:
            await self._abort_upload()
            self._base_size = self._base_keep = 0
            self._general = False
            self._release_spool(self._reserved)
            self._extents.clear()
        else:
            if size > self.size or size < self._base_keep:
                self._general = True
            if self._upload is not None and size < self._upload.cursor:
                self._upload.stale = True
            self._release_spool(self._extents.covered_length(size, max(size, self.size)))
            self._extents.truncate(size)
            self._base_size = min(self._base_size, size)
        if self._fd >= 0:
            os.ftruncate(self._fd, size)
        self.size = size
        self.dirty = True
        if size == 0:
            self._restart_tail()
        else:
            self._drop_tail()

    async def read(self, offset: int, size: int) -> bytes:
        async with self.lock:
            end = min(offset + size, self.size)
            pieces: list[bytes] = []
            for a, b, covered in self._extents.segments(offset, end):
                if covered:
                    pieces.append(self._pread(a, b))
                    continue
                base_end = min(b, self._base_size)
                if a < base_end:
                    pieces.append(await self._store.get_range(self._base_key, a, base_end, self._base_etag))
                    a = base_end
                if a < b:
                    pieces.append(bytes(b - a))
            return b"".join(pieces)

    async def commit(self) -> bool:
        """Store everything written; True if a request was needed.

        Raises WriteLost (the upload is aborted, nothing partial is visible):
        for this failure and, the writer being poisoned, every later call.
        """
        async with self.lock:
            return await self.commit_locked()

    async def commit_locked(self) -> bool:
        """:meth:`commit` for a caller that holds :attr:`lock` (rename, unlink)."""
        if self.unlinked or self.closed:
            return False
        self._poisoned()
        if not self.dirty:
            return False
        try:
            if self._general:
                etag = await self._commit_general()
            else:
                etag = await self._commit_stream()
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self._abort_upload()
            if isinstance(exc, Exception):
                raise self._poison(exc) from exc
            # A cancelled commit (the unmount's commit_timeout) reported no
            # error to anybody: it poisons nothing.
            raise
        self._restart_tail()
        self.etag = etag
        self.stored_size = self.size
        self._base_key = self.key
        self._base_etag = etag
        self._base_size = self._base_keep = self.size
        self._general = False
        self.dirty = False
        return True

    async def discard(self) -> None:
        """Give up uncommitted data (the file was unlinked, or shutdown gave up)."""
        async with self.lock:
            with trio.CancelScope(shield=True):
                await self._abort_upload()
            self._drop_tail()
            self.dirty = False

    def rename(self, key: str, etag: str) -> None:
        """The object was copied to *key* (with *etag*) after a commit, under
        :attr:`lock`: later commits go there and build on the copy."""
        self.key = key
        self.etag = etag
        self._base_key = key
        self._base_etag = etag

    @property
    def uploading(self) -> bool:
        """A multipart upload of this file is open in S3."""
        return self._upload is not None

    def _drop_tail(self) -> None:
        self._tail = None
        if self._tail_reserved:
            self._memory.give(self._chunksize)
            self._tail_reserved = False

    def _restart_tail(self) -> None:
        """A fresh append region starts at the current size (after a commit or truncate(0))."""
        self._drop_tail()
        self._tail = bytearray()
        self._tail_start = self.size

    # -- streaming ----------------------------------------------------------------

    async def _schedule_parts(self, *, final: bool) -> None:
        """Start uploads of the full parts (and, with *final*, the last one)."""
        upload = self._upload
        chunk = self._chunksize
        while True:
            start = upload.cursor if upload is not None else self._base_keep
            remaining = self.size - start
            if remaining < chunk and not (final and remaining > 0):
                return
            if upload is None:
                upload = await self._start_upload()
                continue
            if upload.stale and not final:
                return  # restarted at the commit: no more parts for this upload
            while upload.pending >= self._parts_in_flight and upload.error is None:
                await upload.changed.wait()
            if upload.error is not None:
                self._drop_tail()
                return  # reported at commit
            end = min(start + chunk, self.size)
            number = upload.next_number
            upload.next_number += 1
            upload.cursor = end
            upload.pending += 1
            data: bytes | None = None
            reserved = 0
            if self._tail is not None and self._tail_start == start and len(self._tail) >= end - start:
                # One copy (a slice of the bytearray would be a second), on
                # the event loop: 10 MiB a part.
                with memoryview(self._tail) as view:
                    data = bytes(view[: end - start])
                del self._tail[: end - start]
                self._tail_start = end
                if self._tail_reserved:
                    # The part leaves with the tail's memory reservation.
                    reserved = self._chunksize
                    self._tail_reserved = False
            else:
                self._drop_tail()
            self._nursery.start_soon(self._upload_part, upload, number, start, end, data, reserved)

    async def _start_upload(self) -> _Upload:
        upload = _Upload(await self._store.create_multipart(self.key), key=self.key)
        try:
            await self._copy_base(upload)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._store.abort_multipart(upload.key, upload.upload_id)
            raise
        # Only a complete first part makes the upload usable.
        self._upload = upload
        return upload

    async def _copy_base(self, upload: _Upload) -> None:
        keep = self._base_keep
        if keep:
            # The base, server-side, as the first part(s): >= 5 MiB each.
            count = -(-keep // MAX_PART)
            step = -(-keep // count)
            for start in range(0, keep, step):
                number = upload.next_number
                upload.next_number += 1
                upload.parts[number] = await self._store.upload_part_copy(
                    upload.key,
                    upload.upload_id,
                    number,
                    self._base_key,
                    start,
                    min(start + step, keep),
                    self._base_etag,
                )
        upload.cursor = keep

    async def _upload_part(
        self, upload: _Upload, number: int, start: int, end: int, data: bytes | None, reserved: int
    ) -> None:
        """Upload one part; *reserved* bytes of write memory come with it (a part
        cut from the tail brings the tail's reservation; others take their own)."""
        try:
            if not reserved:
                reserved = end - start
                await self._memory.take(reserved)
            try:
                if data is None:
                    data = await trio.to_thread.run_sync(self._pread, start, end)
                etag = await self._store.upload_part(upload.key, upload.upload_id, number, data)
            finally:
                self._memory.give(reserved)
            upload.parts[number] = etag
        except Exception as exc:  # noqa: BLE001 - reported by the commit, never lost
            upload.error = exc
        finally:
            upload.pending -= 1
            upload.notify()

    async def _wait_parts(self, upload: _Upload) -> None:
        while upload.pending:
            await upload.changed.wait()
        if upload.error is not None:
            error = upload.error
            raise error

    async def _abort_upload(self) -> None:
        upload, self._upload = self._upload, None
        if upload is None:
            return
        while upload.pending:
            await upload.changed.wait()
        try:
            await self._store.abort_multipart(upload.key, upload.upload_id)
        except StorageError as exc:
            log.warning("could not abort multipart upload of %s: %s", upload.key, exc)

    async def _commit_stream(self) -> str:
        if self._upload is not None and (self._upload.stale or self._upload.error is not None):
            await self._abort_upload()
        if self._upload is None and self._base_keep == 0 and self.size < self._chunksize:
            return await self._store.put(self.key, self._pread(0, self.size))
        return await self._finish_upload()

    async def _finish_upload(self) -> str:
        """Upload the rest of the spool, wait for every part, complete the upload."""
        await self._schedule_parts(final=True)
        if self._upload is None:  # only a copied base and nothing after it
            self._upload = await self._start_upload()
        upload = self._upload
        await self._wait_parts(upload)
        etag = await self._store.complete_multipart(
            upload.key, upload.upload_id, sorted(upload.parts.items())
        )
        self._upload = None
        return etag

    # -- general commits ----------------------------------------------------------

    async def _fetch_base(self, start: int, end: int) -> None:
        for a, b, covered in self._extents.segments(start, end):
            if covered:
                continue
            for piece in range(a, b, FETCH_CHUNK):
                piece_end = min(piece + FETCH_CHUNK, b)
                data = await self._store.get_range(self._base_key, piece, piece_end, self._base_etag)
                self._pwrite(piece, data)
                self._extents.add(piece, piece_end)

    async def _commit_general(self) -> str:
        await self._abort_upload()
        await self._fetch_base(0, min(self.size, self._base_size))
        self._base_keep = 0
        if self.size < self._chunksize:
            return await self._store.put(self.key, self._pread(0, self.size))
        return await self._finish_upload()
