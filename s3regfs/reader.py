# SPDX-License-Identifier: MIT
"""Reading objects: streaming read-ahead for sequential readers, exact ranges
for random ones, inside one global memory budget.

One :class:`ObjectReader` serves one open file handle.  A sequential reader
(its first read at offset 0, or a read that starts where the previous one
ended) gets a *stream*: one GET of the rest of the object, read on a
background task into a buffer of 1 MiB chunks that runs ahead of the reader
by a *window*.  The window starts at 1 MiB and doubles (up to the
``readahead`` option) each time the reader has to wait for data, so a slow
consumer holds little memory and a fast one gets long requests.  A read
elsewhere fetches just its range and leaves the stream alone.

Memory: every buffered byte is taken from one :class:`ReadaheadBudget`
shared by all readers (the ``readahead_total`` option).  A producer that
finds the budget spent waits, unless its reader is blocked on the very next
chunk; then it takes that chunk anyway, so a reader always progresses.  A
blocked read further ahead is told the stream is stalled and fetches its own
range.  So the budget is overshot by at most two chunks (2 MiB) per reader
that is actually waiting, however many files are open.

Concurrency: reads on one handle are serialised by a lock (the kernel sends
several concurrently during its own read-ahead); data is kept 1 MiB behind
the furthest read so slightly reordered requests still hit the buffer.

Idle readers: a stream whose reader has not moved for IDLE_STREAM_SECONDS
ends and gives back its buffer and connection, so open but unused files
(a program holding many open) do not keep memory and connections from the
readers that read.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from s3regfs.budget import MemoryBudget
from s3regfs.errors import IntegrityError, NotFound, PreconditionFailed, StorageError
from s3regfs.storage.base import ObjectStore, ObjectStream

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
INITIAL_WINDOW = 1024 * 1024
KEEP_BEHIND = 1024 * 1024
#: A stream whose reader has not moved for this long ends: its buffer goes back
#: to the budget and its connection to the pool.  A reader that comes back
#: gets a new stream from where it stopped (one more GET).
IDLE_STREAM_SECONDS = 5.0


#: Read-ahead memory of all open files (the ``readahead_total`` option).
ReadaheadBudget = MemoryBudget


class ObjectReader:
    """Reads of one open file: see the module docstring.

    *etag* pins the version: every GET sends If-Match, so a reader never mixes
    bytes of two versions (a changed object fails with PreconditionFailed).
    """

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        size: int,
        etag: str,
        *,
        budget: ReadaheadBudget,
        nursery: trio.Nursery,
        max_window: int,
        verify_digest: str | None = None,
    ) -> None:
        self.key = key
        # -o verify: a stream that starts at offset 0 hashes every chunk it
        # reads, in order, and compares before it hands out the last one.
        self._algorithm = ""
        self._expected = ""
        self._corrupt = False
        if verify_digest:
            algorithm, _, expected = verify_digest.partition(":")
            try:
                hashlib.new(algorithm)
                self._algorithm, self._expected = algorithm, expected
            except ValueError:
                log.warning("cannot verify %s: unknown digest algorithm %r", key, algorithm)
        self.size = size
        self._store = store
        self._etag = etag or None
        self._budget = budget
        self._nursery = nursery
        self._max_window = max(max_window, INITIAL_WINDOW)
        self._lock = trio.Lock()
        # The buffer: chunks (offset, data), contiguous, covering
        # [self._buf_start, self._stream_pos).
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._buf_start = 0
        self._buffered = 0
        self._stream_pos = 0
        self._streaming = False
        self._window = INITIAL_WINDOW
        self._furthest = 0
        self._last_end = -1
        self._waiting = False
        self._wait_offset = 0
        self._stalled = False
        self._error: StorageError | None = None
        self._data_arrived = trio.Event()
        self._consumer_moved = trio.Event()
        self._moved_at = 0.0
        self._producer_scope: trio.CancelScope | None = None
        self._producer_done = trio.Event()
        self._producer_done.set()

    async def read(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of the object, short only at its end."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        async with self._lock:
            while True:
                if self._corrupt:
                    # Every read of this handle fails from now on: the kernel
                    # retries a failed read-ahead with a read of its own.
                    raise IntegrityError(f"{self.key}: content does not match its digest")
                if self._buf_start <= offset and end <= self._stream_pos:
                    data = self._slice(offset, end)
                    self._served(offset, end)
                    return data
                if self._error is not None:
                    error, self._error = self._error, None
                    await self._stop_stream()
                    raise error
                # The kernel's own read-ahead sends reads ahead of the reader:
                # anything within the largest window is the stream's to serve,
                # unless the budget is spent and the read is not next in line.
                in_stream = (
                    self._streaming and self._buf_start <= offset <= self._stream_pos + self._max_window
                )
                if in_stream and (offset < self._stream_pos + CHUNK or not self._stalled):
                    await self._wait_for_data(offset)
                    continue
                if offset == 0 or offset == self._last_end:
                    await self._start_stream(offset)
                    continue
                # A random read: fetch exactly this range, keep any stream.
                data = await self._store.get_range(self.key, offset, end, self._etag)
                self._last_end = end
                return data

    def relocate(self, key: str, etag: str) -> None:
        """The object was renamed to *key* (a copy with *etag*): read from there.

        A stream in flight keeps its open GET of the old key, whose bytes are
        the same.
        """
        self.key = key
        self._etag = etag or None

    async def aclose(self) -> None:
        """Stop read-ahead and give its memory back; idempotent."""
        async with self._lock:
            await self._stop_stream()

    # -- consumer side ------------------------------------------------------

    def _slice(self, start: int, end: int) -> bytes:
        parts: list[bytes] = []
        for chunk_start, chunk in self._chunks:
            chunk_end = chunk_start + len(chunk)
            if chunk_end <= start:
                continue
            if chunk_start >= end:
                break
            lo = max(start, chunk_start) - chunk_start
            hi = min(end, chunk_end) - chunk_start
            parts.append(chunk if lo == 0 and hi == len(chunk) else chunk[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _served(self, start: int, end: int) -> None:
        self._last_end = end
        self._furthest = max(self._furthest, end)
        keep_from = self._furthest - KEEP_BEHIND
        while self._chunks:
            chunk_start, chunk = self._chunks[0]
            if chunk_start + len(chunk) > keep_from:
                break
            self._chunks.popleft()
            self._buf_start = chunk_start + len(chunk)
            self._buffered -= len(chunk)
            self._budget.give(len(chunk))
        self._wake_producer()

    def _wake_producer(self) -> None:
        self._moved_at = trio.current_time()
        self._consumer_moved.set()
        self._consumer_moved = trio.Event()

    async def _wait_for_data(self, offset: int) -> None:
        # Having to wait means the window is too small for this reader.
        self._window = min(self._window * 2, self._max_window)
        self._waiting = True
        self._wait_offset = offset
        self._wake_producer()
        try:
            await self._data_arrived.wait()
        finally:
            self._waiting = False

    # -- producer side --------------------------------------------------------

    async def _start_stream(self, offset: int) -> None:
        await self._stop_stream()
        self._buf_start = self._stream_pos = self._furthest = offset
        self._streaming = True
        self._stalled = False
        self._error = None
        self._moved_at = trio.current_time()
        self._producer_done = trio.Event()
        self._producer_scope = trio.CancelScope()
        self._nursery.start_soon(self._produce, offset, self._producer_scope, self._producer_done)

    async def _stop_stream(self) -> None:
        self._streaming = False
        if self._producer_scope is not None:
            self._producer_scope.cancel()
            self._producer_scope = None
        with trio.CancelScope(shield=True):
            await self._producer_done.wait()
        self._drop_buffer()

    def _drop_buffer(self) -> None:
        self._budget.give(self._buffered)
        self._chunks.clear()
        self._buffered = 0
        self._buf_start = self._stream_pos = 0

    def _idle(self, idle_after: float) -> bool:
        """If the reader has not moved for *idle_after* seconds (and waits for
        nothing), end the stream: give the buffer back (no await, so no read
        sees it half-dropped); the producer's exit closes the stream."""
        # The same sum as the waits' deadline, so a deadline that fired is idle.
        if self._waiting or trio.current_time() < self._moved_at + idle_after:
            return False
        log.debug("read-ahead of %s idle at %d: stream ended", self.key, self._stream_pos)
        self._streaming = False
        # A reader that comes back starts small again: a slow but steady one
        # (reading less than every IDLE_STREAM_SECONDS) must not fetch a grown
        # window at every restart.
        self._window = INITIAL_WINDOW
        self._drop_buffer()
        return True

    async def _wait_unless_idle(self, wait: Callable[[], Awaitable[None]], idle_after: float) -> bool:
        """Await *wait* until the reader's idle deadline; True if the stream
        ended meanwhile for want of a reader (see :meth:`_idle`)."""
        with trio.move_on_at(self._moved_at + idle_after):
            await wait()
        return self._idle(idle_after)

    def _publish(self) -> None:
        # The waiting read has its answer (data, stall or error); until it waits
        # again the producer must not treat it as waiting (no forced chunks).
        # Its wait counts as a move: the chunk it is about to take must not be
        # dropped as idle because the wait was long (a slow GET, a retry).
        if self._waiting:
            self._moved_at = trio.current_time()
        self._waiting = False
        self._data_arrived.set()
        self._data_arrived = trio.Event()

    async def _produce(self, start: int, scope: trio.CancelScope, done: trio.Event) -> None:
        stream: ObjectStream | None = None
        hasher: Any = hashlib.new(self._algorithm) if self._algorithm and start == 0 else None
        # -o verify's hash needs one stream from the first byte: never idle out.
        idle_after = IDLE_STREAM_SECONDS if hasher is None else math.inf
        try:
            with scope:
                stream = await self._store.open_stream(self.key, start, self.size, self._etag)
                while stream.position < self.size:
                    ahead = stream.position - self._furthest
                    if ahead >= self._window and not self._waiting:
                        if await self._wait_unless_idle(self._consumer_moved.wait, idle_after):
                            return
                        continue
                    want = min(CHUNK, self.size - stream.position)
                    if not self._budget.try_take(want):
                        # Over budget, only a read that waits for the very next
                        # chunk gets it; one further ahead is told to fetch its
                        # own range instead of waiting.
                        if self._waiting and self._wait_offset < stream.position + CHUNK:
                            self._budget.try_take(want, force=True)
                        else:
                            if self._waiting and not self._stalled:
                                self._stalled = True
                                self._publish()
                            # Both events are taken now, before any checkpoint, so
                            # a give() or a read in between cannot be missed.
                            either = partial(
                                _first_of, self._budget.freed_event().wait, self._consumer_moved.wait
                            )
                            if await self._wait_unless_idle(either, idle_after):
                                return
                            continue
                    self._stalled = False
                    try:
                        data = await stream.read(want)
                    except BaseException:
                        self._budget.give(want)
                        raise
                    self._budget.give(want - len(data))
                    if hasher is not None:
                        await trio.to_thread.run_sync(hasher.update, data)
                        if stream.position == self.size and hasher.hexdigest() != self._expected:
                            # Decided before the last chunk is handed out.
                            log.error("%r: content does not match its digest (read with -o verify)", self.key)
                            self._corrupt = True
                    self._chunks.append((self._stream_pos, data))
                    self._buffered += len(data)
                    self._stream_pos += len(data)
                    self._publish()
        except StorageError as exc:
            # A changed or deleted object is the reader's to judge (fs.read).
            level = logging.DEBUG if isinstance(exc, (PreconditionFailed, NotFound)) else logging.WARNING
            log.log(level, "read-ahead of %s stopped at %d: %s", self.key, self._stream_pos, exc)
            self._error = exc
            self._publish()
        except Exception as exc:
            # A bug here must fail this file's reads, not the whole mount.
            log.exception("read-ahead of %s failed", self.key)
            self._error = StorageError(f"read-ahead of {self.key} failed: {exc!r}")
            self._publish()
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            done.set()


async def _first_of(*waiters: Callable[[], Awaitable[None]]) -> None:
    """Return as soon as the first of the async callables returns."""
    async with trio.open_nursery() as nursery:

        async def run(fn: Callable[[], Awaitable[None]]) -> None:
            await fn()
            nursery.cancel_scope.cancel()

        for fn in waiters:
            nursery.start_soon(run, fn)
