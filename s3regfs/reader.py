# SPDX-License-Identifier: MIT
"""Reading objects: read-ahead for sequential readers (one stream, then
parallel ranges when the network is the bottleneck), small ranges for random
readers, inside one global memory budget and the connection pool.

One :class:`ObjectReader` serves one open file handle.  A sequential reader
(its first read at offset 0, or a read that starts where the previous one
ended) gets read-ahead: a background *producer* that keeps data ahead of the
reader by a *window*.  The window starts at 1 MiB and doubles (up to the
``readahead`` option) each time the reader has to wait for data, so a slow
consumer holds little memory and a fast one gets long requests.

The producer fetches with one *stream* (one GET of the rest of the object,
read 1 MiB at a time) as long as the window is at most one *range* (8 MiB, or
the object's part size when it is known).  A reader that outgrows it is
waiting on the network, which on a distant S3 gives one connection tens of
MB/s: the stream is then cut at the next range boundary and the window is
fetched as *parallel ranges*: ranged GETs aligned to the range boundaries, at
most ``read_ranges`` in flight per file, each on a connection it waits its
turn for (so files reading at once share the pool), each taking its whole
range from the budget before it starts.  A *deliverer* task hands the bytes to
the reader strictly in order; -o verify hashes them there.  A reader that keeps
up with one stream never waits long enough to leave it.

A read elsewhere (a random reader) fetches its range, rounded up to
RANDOM_MIN, and keeps that one block for the reads that follow it; it never
starts read-ahead and leaves any read-ahead alone.

Memory: every buffered byte is taken from one :class:`ReadaheadBudget`
shared by all readers (the ``readahead_total`` option).  A producer that
finds the budget spent waits, unless its reader is blocked on the very next
chunk; then it takes that chunk (or range) anyway, so a reader always
progresses.  A blocked read further ahead is told the read-ahead is stalled
and fetches its own range.  So the budget is overshot only by what reads
that are actually waiting need and nothing has fetched yet, rounded out to
whole chunks or ranges (a read that straddles a boundary: two), however many
files are open.  A read-ahead that hashes (-o verify, -o cache, a CDN) takes
from the budget for each chunk waiting for the hasher too (at most HASH_QUEUE),
so its bytes are counted until hashed even once the reader has them.

Errors: a stream or range that breaks is resumed where it broke, with
If-Match on the ETag, within the retry budget (storage/s3.py).  A range that
fails for good fails the reads that reach it (not earlier ones, nor reads
elsewhere), and a changed
object fails with PreconditionFailed: a reader never sees bytes out of order,
twice, or of two versions.

Concurrency: reads on one handle are serialised by a lock (the kernel sends
several concurrently during its own read-ahead); data is kept 1 MiB behind
the furthest read so slightly reordered requests still hit the buffer.

Idle readers: read-ahead whose reader has not moved for IDLE_STREAM_SECONDS
ends and gives back its buffer, ranges and connections, so open but unused
files (a program holding many open) do not keep memory and connections from
the readers that read.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from s3regfs.blob_cache import BlobFill
from s3regfs.budget import MemoryBudget
from s3regfs.errors import IntegrityError, NotFound, PreconditionFailed, StorageError
from s3regfs.storage.base import ObjectStream, RangeReads

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
INITIAL_WINDOW = 1024 * 1024
KEEP_BEHIND = 1024 * 1024
#: Delivered chunks that may wait for the hasher (-o verify, a cache fill).
HASH_QUEUE = 8

#: Read-ahead whose reader has not moved for this long ends: its buffer goes
#: back to the budget and its connections to the pool.  A reader that comes
#: back gets new read-ahead from where it stopped.
IDLE_STREAM_SECONDS = 5.0
#: The range size of parallel reads unless the object's part size is known.
RANGE_SIZE = 8 * 1024 * 1024
#: Part sizes that make good ranges (else RANGE_SIZE).
RANGE_MIN, RANGE_MAX = 4 * 1024 * 1024, 32 * 1024 * 1024
#: One stream gives way to parallel ranges only once its reader, over at
#: least STREAM_TRIAL bytes since the first ones came, has been waiting for
#: data WAITING_SHARE of the time: the network, not the reader, is slow.
STREAM_TRIAL = 2 * 1024 * 1024
WAITING_SHARE = 0.75
#: A random read fetches at least this much and keeps it for the next reads.
RANDOM_MIN = 128 * 1024


#: Read-ahead memory of all open files (the ``readahead_total`` option).
ReadaheadBudget = MemoryBudget


def range_size(size: int, etag: str, part_size: int) -> int:
    """The range size for parallel reads of an object of *size* bytes: the
    part size it was uploaded with, when its multipart ETag (``-N``) shows
    *part_size* is that (N - 1 full parts and a last one), and it lies
    within [RANGE_MIN, RANGE_MAX]; else RANGE_SIZE."""
    _, dash, count = etag.rpartition("-")
    if dash and count.isdigit() and RANGE_MIN <= part_size <= RANGE_MAX:
        parts = int(count)
        if parts > 1 and (parts - 1) * part_size < size <= parts * part_size:
            return part_size
    return RANGE_SIZE


class _Fetch:
    """One GET of bytes [start, limit) of the object, read chunk by chunk.

    *limit* may be lowered (never below the end of a read in progress) to
    cut a stream at a range boundary.  Received bytes wait in *chunks* until
    the deliverer hands them to the reader in order; *held* is the budget
    they (and, for a range, the rest of it) stand for.
    """

    def __init__(self, start: int, limit: int, *, is_range: bool) -> None:
        self.start = start
        self.position = start
        self.limit = limit
        self.is_range = is_range
        self.chunks: deque[bytes] = deque()
        self.held = 0
        self.done = False
        self.error: StorageError | None = None


class ObjectReader:
    """Reads of one open file: see the module docstring.

    *etag* pins the version: every GET sends If-Match, so a reader never mixes
    bytes of two versions (a changed object fails with PreconditionFailed).
    *range_size* and *max_ranges* shape parallel ranges (``max_ranges`` 1:
    one stream only).
    """

    def __init__(
        self,
        store: RangeReads,
        key: str,
        size: int,
        etag: str,
        *,
        budget: ReadaheadBudget,
        nursery: trio.Nursery,
        max_window: int,
        range_size: int = RANGE_SIZE,
        max_ranges: int = 1,
        verify_digest: str | None = None,
        counters: collections.Counter[str] | None = None,
        cache_digest: str | None = None,
        begin_fill: Callable[[], BlobFill | None] | None = None,
        through_cdn: bool = False,
        fallback: RangeReads | None = None,
    ) -> None:
        self.key = key
        #: *store* is a CDN in front of S3 (CloudFront): whole reads are
        #: checked against *cache_digest* as with -o verify, and once a
        #: checked read-ahead failed, the rest of this handle reads from
        #: *fallback* (S3): a read restarted mid-blob could not be checked.
        self.through_cdn = through_cdn
        self._fallback = fallback
        # -o cache: read-ahead from offset 0 hashes what it delivers and
        # writes it to a cache fill, kept only when the whole hash matched.
        self._begin_fill = begin_fill
        # Bytes through a CDN are checked as strictly as -o verify's: every
        # byte of a read from offset 0 is hashed before the last is handed out.
        self._strict = bool(verify_digest) or through_cdn
        if begin_fill is not None or through_cdn:
            verify_digest = verify_digest or cache_digest
        #: parallel_reads (read-ahead that turned to ranges) and ranges (their
        #: GETs), shared by the readers of one mount for its stats.
        self._counters = counters if counters is not None else collections.Counter()
        # -o verify: read-ahead that starts at offset 0 hashes every chunk it
        # delivers, in order, and compares before it hands out the last one.
        self._algorithm = ""
        self._expected = ""
        self._corrupt = False
        if verify_digest:
            algorithm, _, expected = verify_digest.partition(":")
            try:
                hashlib.new(algorithm)
                self._algorithm, self._expected = algorithm, expected
            except ValueError:
                if self._strict:
                    log.warning("cannot verify %s: unknown digest algorithm %r", key, algorithm)
        self.size = size
        self._store = store
        self._etag = etag or None
        self._budget = budget
        self._nursery = nursery
        self._max_window = max(max_window, INITIAL_WINDOW)
        self._range_size = max(range_size, CHUNK)
        self._max_ranges = max(max_ranges, 1)
        self._lock = trio.Lock()
        # The buffer: chunks (offset, data), contiguous, covering
        # [self._buf_start, self._stream_pos), delivered in order.
        self._chunks: deque[tuple[int, bytes]] = deque()
        self._buf_start = 0
        self._buffered = 0
        self._stream_pos = 0
        # Fetches of the running read-ahead, in offset order, and the first
        # offset none of them covers.
        self._fetches: deque[_Fetch] = deque()
        self._next_fetch = 0
        self._generation = 0
        self._streaming = False
        self._window = INITIAL_WINDOW
        self._furthest = 0
        self._last_end = -1
        self._waiting = False
        self._wait_offset = 0
        self._wait_end = 0
        self._stalled = False
        self._error: StorageError | None = None
        self._data_arrived = trio.Event()
        self._consumer_moved = trio.Event()
        self._progress = trio.Event()
        self._scheduler_wake = trio.Event()
        self._moved_at = 0.0
        self._producer_scope: trio.CancelScope | None = None
        self._producer_done = trio.Event()
        self._producer_done.set()
        # How long the reader waited since the read-ahead's first bytes came.
        self._first_data_at: float | None = None
        self._first_data_pos = 0
        self._waited = 0.0
        self._hasher_waited = 0.0
        # Parallel ranges have paid for this reader (it was network-bound):
        # read-ahead that starts again goes straight to them.
        self._ranges_pay = False
        # This read-ahead hashes what it delivers (-o verify from offset 0).
        self._verifying = False
        # The last random read's block: (offset, data).
        self._block: tuple[int, bytes] = (0, b"")

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
                # A failed read-ahead fails the reads that reach its failure
                # (where its delivered bytes end), not reads elsewhere.
                if (
                    self._error is not None
                    and self._buf_start <= offset <= self._stream_pos + self._max_window
                ):
                    error, self._error = self._error, None
                    if self._verifying and self.through_cdn and self._fallback is not None:
                        self._store = self._fallback
                    await self._stop_stream()
                    raise error
                # The kernel's own read-ahead sends reads ahead of the reader:
                # anything within the largest window is the read-ahead's to
                # serve, unless the budget is spent and the read is not next
                # in line.
                in_stream = (
                    self._streaming and self._buf_start <= offset <= self._stream_pos + self._max_window
                )
                if in_stream and (offset < self._stream_pos + CHUNK or not self._stalled):
                    await self._wait_for_data(offset, end)
                    continue
                if offset == 0 or offset == self._last_end:
                    await self._start_stream(offset)
                    continue
                return await self._read_random(offset, end)

    async def _read_random(self, offset: int, end: int) -> bytes:
        """A random read: its range, rounded up to RANDOM_MIN, kept for the
        next reads; any read-ahead is left alone."""
        block_start, block = self._block
        if not (block_start <= offset and end <= block_start + len(block)):
            fetch_end = min(self.size, max(end, offset + RANDOM_MIN))
            block = await self._store.get_range(self.key, offset, fetch_end, self._etag)
            block_start = offset
            self._block = (block_start, block)
        self._last_end = end
        return block[offset - block_start : end - block_start]

    def relocate(self, key: str, etag: str) -> None:
        """The object was renamed to *key* (a copy with *etag*): read from there.

        Fetches in flight keep their open GETs of the old key, whose bytes
        are the same.
        """
        self.key = key
        self._etag = etag or None

    async def aclose(self) -> None:
        """Stop read-ahead and give its memory back; idempotent."""
        async with self._lock:
            await self._stop_stream()
            self._block = (0, b"")

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
        self._wake_scheduler()

    def _wake_scheduler(self) -> None:
        # One event for both things the scheduler waits for (a read, a fetch's
        # progress): cheaper per chunk than waiting for the first of two.
        self._scheduler_wake.set()
        self._scheduler_wake = trio.Event()

    async def _wait_for_data(self, offset: int, end: int) -> None:
        # Having to wait means the window is too small for this reader.
        self._window = min(self._window * 2, self._max_window)
        self._waiting = True
        self._wait_offset = offset
        self._wait_end = end
        self._wake_producer()
        began = trio.current_time()
        counted = self._first_data_at is not None
        try:
            await self._data_arrived.wait()
        finally:
            self._waiting = False
            if counted:
                self._waited += trio.current_time() - began

    def _network_bound(self) -> bool:
        """The reader has spent most of its time since the first bytes
        arrived waiting for more (over at least STREAM_TRIAL bytes): one
        connection does not keep up with it."""
        if self._first_data_at is None or self._stream_pos - self._first_data_pos < STREAM_TRIAL:
            return False
        elapsed = trio.current_time() - self._first_data_at
        # Time the deliverer spent waiting for the hasher (a cache fill's
        # disk, -o verify's hash) is not the network's: more connections
        # would not shorten it.
        waited = self._waited - self._hasher_waited
        return elapsed > 0 and waited >= WAITING_SHARE * elapsed

    # -- producer side --------------------------------------------------------

    async def _start_stream(self, offset: int) -> None:
        await self._stop_stream()
        self._buf_start = self._stream_pos = self._furthest = self._next_fetch = offset
        self._streaming = True
        self._stalled = False
        self._first_data_at = None
        self._first_data_pos = offset
        self._waited = 0.0
        self._hasher_waited = 0.0
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
        """Give back the delivered buffer; a later delivery of the same
        read-ahead is discarded (the generation moves on)."""
        self._generation += 1
        self._budget.give(self._buffered)
        self._chunks.clear()
        self._buffered = 0
        self._buf_start = self._stream_pos = 0

    def _idle(self, idle_after: float) -> bool:
        """If the reader has not moved for *idle_after* seconds (and waits for
        nothing), end the read-ahead: give the buffer back (no await, so no
        read sees it half-dropped); the producer's exit ends the fetches."""
        # The same sum as the waits' deadline, so a deadline that fired is idle.
        if self._waiting or trio.current_time() < self._moved_at + idle_after:
            return False
        log.debug("read-ahead of %s idle at %d: ended", self.key, self._stream_pos)
        self._streaming = False
        # A reader that comes back starts small again: a slow but steady one
        # (reading less than every IDLE_STREAM_SECONDS) must not fetch a grown
        # window at every restart.
        self._window = INITIAL_WINDOW
        self._ranges_pay = False
        self._drop_buffer()
        return True

    def _idle_deadline(self, idle_after: float) -> float:
        # A reader blocked on data is not idle, however long it waits: its
        # answer counts as a move (see _publish).
        return math.inf if self._waiting else self._moved_at + idle_after

    async def _wait_unless_idle(self, wait: Callable[[], Awaitable[None]], idle_after: float) -> bool:
        """Await *wait* until the reader's idle deadline; True if the
        read-ahead ended meanwhile for want of a reader (see :meth:`_idle`)."""
        with trio.move_on_at(self._idle_deadline(idle_after)):
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
        # The scheduler's idle deadline depended on the reader waiting.
        self._wake_scheduler()

    def _signal_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()
        self._wake_scheduler()

    def _stall(self) -> None:
        """The budget is spent: a read waiting beyond the next chunk is told
        to fetch its own range instead of waiting (never with -o verify: that
        range would skip the hash; the producer forces its takes instead)."""
        if self._waiting and not self._stalled and not self._verifying:
            self._stalled = True
            self._publish()

    async def _produce(self, start: int, scope: trio.CancelScope, done: trio.Event) -> None:
        generation = self._generation
        hasher: _Absorber | None = None
        if self._algorithm and start == 0:
            fill = await trio.to_thread.run_sync(self._begin_fill) if self._begin_fill is not None else None
            if self._strict or fill is not None:
                hasher = _Absorber(hashlib.new(self._algorithm), fill)
        self._verifying = hasher is not None and self._strict
        # -o verify's hash needs every byte from the first, in order: never
        # idle out (a cache fill alone is given up instead).
        idle_after = math.inf if self._verifying else IDLE_STREAM_SECONDS
        try:
            with scope:
                async with trio.open_nursery() as fetches:
                    fetches.start_soon(self._deliver, generation, hasher)
                    if not await self._schedule(start, fetches, idle_after):
                        fetches.cancel_scope.cancel()
        except Exception as exc:
            # A bug here must fail this file's reads, not the whole mount.
            log.exception("read-ahead of %s failed", self.key)
            if generation == self._generation:
                self._error = StorageError(f"read-ahead of {self.key} failed: {exc!r}")
                self._publish()
        finally:
            # Every fetch has ended: what they hold and never delivered goes back.
            for fetch in self._fetches:
                self._budget.give(fetch.held)
                fetch.held = 0
            self._fetches.clear()
            if hasher is not None and hasher.fill is not None and not hasher.fill.done:
                # Stopped before the end (closed, idle, a seek, a failure): nothing cached.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(hasher.fill.abort)
            done.set()

    async def _schedule(self, start: int, fetches: trio.Nursery, idle_after: float) -> bool:
        """Start the fetches of read-ahead from *start*, one stream first and
        parallel ranges once the window outgrows a range; return when every
        byte to the end has been fetched and read (True), or the reader went
        idle or failed (False)."""
        size = self.size
        step = self._range_size
        parallel = self._max_ranges > 1
        stream: _Fetch | None = None
        if not (parallel and self._ranges_pay):
            stream = _Fetch(start, size, is_range=False)
            self._fetches.append(stream)
            self._next_fetch = size
            fetches.start_soon(self._run_stream, stream)
        while True:
            if self._error is not None:
                return False
            if (
                parallel
                and stream is not None
                and not stream.done
                and self._window > step
                and stream.limit == size
                and self._network_bound()
            ):
                # The reader outgrew one stream: cut it after the chunk it may
                # be reading now; ranges take over from there (the first one
                # up to the next range boundary).
                cut = stream.position + CHUNK
                if cut < size:
                    log.debug(
                        "read-ahead of %s: parallel ranges from %d (waited %.2f s of %.2f s)",
                        self.key,
                        cut,
                        self._waited,
                        trio.current_time() - (self._first_data_at or 0.0),
                    )
                    stream.limit = self._next_fetch = cut
                    self._ranges_pay = True
                    self._counters["parallel_reads"] += 1
            active = sum(1 for fetch in self._fetches if fetch.is_range and not fetch.done)
            if (
                self._next_fetch < size
                and active < self._max_ranges
                and (
                    self._next_fetch - self._furthest < self._window
                    or (self._waiting and self._wait_end > self._next_fetch)
                )
            ):
                started = await self._start_range(fetches, idle_after)
                if started is None:
                    return False
                continue
            # Everything fetched: stay (watching for idleness, which gives
            # the buffer back) until the reader has had it all.
            if (
                self._next_fetch >= size
                and all(fetch.done for fetch in self._fetches)
                and self._furthest >= size
            ):
                return True
            if await self._wait_unless_idle(self._scheduler_wake.wait, idle_after):
                return False

    async def _start_range(self, fetches: trio.Nursery, idle_after: float) -> bool | None:
        """Take the budget and a connection for the next range and start it:
        True if started, False to look again (the budget was short), None if
        the reader went idle meanwhile."""
        start = self._next_fetch
        end = min(self.size, (start // self._range_size + 1) * self._range_size)
        if not self._budget.try_take(end - start):
            # Over budget, only the range holding the bytes the reader is
            # blocked on goes anyway (not every range after them).
            # -o verify: never a stall (a read served by its own GET would
            # skip the hash), so any range the reader waits on or beyond.
            if self._waiting and self._wait_end > start and (self._wait_offset < end or self._verifying):
                self._budget.try_take(end - start, force=True)
            else:
                self._stall()
                either = partial(_first_of, self._budget.freed_event().wait, self._consumer_moved.wait)
                return None if await self._wait_unless_idle(either, idle_after) else False
        self._stalled = False
        stream = self._store.stream(self.key, start, end, self._etag)
        try:
            while True:
                with trio.move_on_at(self._idle_deadline(idle_after)) as waited:
                    await stream.reserve()
                if not waited.cancelled_caught:
                    break
                if self._idle(idle_after):
                    await self._abandon_range(stream, end - start)
                    return None
        except BaseException:
            # Cancelled (the file closed) while waiting in line for a connection.
            await self._abandon_range(stream, end - start)
            raise
        fetch = _Fetch(start, end, is_range=True)
        fetch.held = end - start
        self._counters["ranges"] += 1
        self._fetches.append(fetch)
        self._next_fetch = end
        fetches.start_soon(self._run_range, fetch, stream)
        return True

    async def _abandon_range(self, stream: ObjectStream, budget: int) -> None:
        """A range that never started: its budget and any connection go back."""
        self._budget.give(budget)
        with trio.CancelScope(shield=True):
            await stream.aclose()

    async def _run_range(self, fetch: _Fetch, stream: ObjectStream) -> None:
        """Read a range that holds its budget and connection to its end."""
        try:
            while fetch.position < fetch.limit:
                data = await stream.read(min(CHUNK, fetch.limit - fetch.position))
                self._received(fetch, data)
        except Exception as exc:
            self._fetch_failed(fetch, exc)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            fetch.done = True
            self._signal_progress()

    async def _run_stream(self, fetch: _Fetch) -> None:
        """Read one GET of the rest of the object (until its limit is cut),
        a chunk at a time within the window and the budget."""
        stream: ObjectStream | None = None
        try:
            stream = await self._store.open_stream(self.key, fetch.start, self.size, self._etag)
            while fetch.position < fetch.limit:
                if fetch.position - self._furthest >= self._window and not self._waiting:
                    await self._consumer_moved.wait()
                    continue
                want = min(CHUNK, fetch.limit - fetch.position)
                if not self._budget.try_take(want):
                    # Over budget, only a read that waits for bytes of the
                    # very next chunk gets it (not one whose bytes are all
                    # fetched and on their way to it); one further ahead is
                    # told to fetch its own range instead of waiting.
                    if (
                        self._waiting
                        and self._wait_end > fetch.position
                        and (self._wait_offset < fetch.position + CHUNK or self._verifying)
                    ):
                        self._budget.try_take(want, force=True)
                    else:
                        self._stall()
                        # Both events are taken now, before any checkpoint, so
                        # a give() or a read in between cannot be missed.
                        either = partial(
                            _first_of, self._budget.freed_event().wait, self._consumer_moved.wait
                        )
                        await either()
                        continue
                self._stalled = False
                fetch.held += want
                data = await stream.read(want)
                fetch.held -= want - len(data)
                self._budget.give(want - len(data))
                self._received(fetch, data)
        except Exception as exc:
            self._fetch_failed(fetch, exc)
        finally:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            fetch.done = True
            self._signal_progress()

    def _received(self, fetch: _Fetch, data: bytes) -> None:
        if not data:
            raise StorageError(f"reading {self.key}: no data at {fetch.position} of {fetch.limit}")
        fetch.chunks.append(data)
        fetch.position += len(data)
        self._signal_progress()

    def _fetch_failed(self, fetch: _Fetch, exc: Exception) -> None:
        if isinstance(exc, StorageError):
            # A changed or deleted object is the reader's to judge (fs.read).
            level = logging.DEBUG if isinstance(exc, (PreconditionFailed, NotFound)) else logging.WARNING
            log.log(level, "read-ahead of %s stopped at %d: %s", self.key, fetch.position, exc)
            fetch.error = exc
        else:
            # A bug here must fail this file's reads, not the whole mount.
            log.exception("read-ahead of %s failed", self.key)
            fetch.error = StorageError(f"read-ahead of {self.key} failed: {exc!r}")

    async def _deliver(self, generation: int, hasher: _Absorber | None) -> None:
        """Hand the fetches' bytes to the reader in order; a failed fetch's
        error reaches the reader when its bytes would have.

        With a hasher (-o verify, a cache fill), a task beside this one hashes
        (and writes) the delivered chunks in order, on worker threads, while
        the reader already has them: only the last chunk waits until every
        byte is hashed and the digest decided.  At most HASH_QUEUE chunks wait
        for the hasher (beyond them delivery waits: memory stays bounded)."""
        if hasher is None:
            await self._deliver_chunks(generation, None)
            return
        send, receive = trio.open_memory_channel[bytes](HASH_QUEUE)
        hashed = trio.Event()

        async def hash_chunks() -> None:
            # Each queued chunk holds its size of the budget until it is
            # hashed (it may already be gone from the reader's buffer).
            async with receive:
                try:
                    async for data in receive:
                        try:
                            await trio.to_thread.run_sync(hasher.update, data)
                        finally:
                            self._budget.give(len(data))  # hashed, or never will be
                finally:
                    while True:
                        try:
                            self._budget.give(len(receive.receive_nowait()))
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
            hashed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hash_chunks)
            try:
                await self._deliver_chunks(generation, (hasher, send, hashed))
            finally:
                send.close()  # the hasher drains what it has, then ends

    async def _wait_for_hasher(self, wait: Callable[[], Awaitable[None]]) -> None:
        """Await *wait* (room in the hasher's queue, or its verdict); the time
        a reader spent waiting meanwhile was the hasher's, not the network's."""
        began, waiting = trio.current_time(), self._waiting
        await wait()
        if waiting:
            self._hasher_waited += trio.current_time() - began

    async def _commit_fill(self, fill: BlobFill) -> None:
        """Put a fill whose hash matched into the cache, beside the reader.
        Shielded (an unmount waits for it rather than leave a half-done
        fill); any failure is this fill's, logged, never the mount's."""
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(fill.commit)
            except Exception:
                log.exception("adding %r to the blob cache failed", self.key)
                await trio.to_thread.run_sync(fill.abort)

    async def _deliver_chunks(
        self,
        generation: int,
        hashing: tuple[_Absorber, trio.MemorySendChannel[bytes], trio.Event] | None,
    ) -> None:
        while True:
            progress = self._progress
            while self._fetches and generation == self._generation:
                head = self._fetches[0]
                if head.chunks:
                    data = head.chunks.popleft()
                    if hashing is not None:
                        hasher, send, hashed = hashing
                        self._budget.try_take(len(data), force=True)
                        try:
                            await self._wait_for_hasher(partial(send.send, data))
                        except BaseException:
                            self._budget.give(len(data))  # never queued
                            raise
                        if self._stream_pos + len(data) == self.size:
                            # Decided before the last chunk is handed out.
                            send.close()
                            await self._wait_for_hasher(hashed.wait)
                            if generation != self._generation:
                                return
                            if hasher.hasher.hexdigest() != self._expected:
                                log.error("%r: content does not match its digest", self.key)
                                self._corrupt = True
                                if hasher.fill is not None:
                                    await trio.to_thread.run_sync(hasher.fill.abort)
                            elif hasher.fill is not None:
                                # Decided: the last chunk goes out now, and the
                                # fill's fsync and rename (tens of ms) happen
                                # beside the reader, not before its last read.
                                fill, hasher.fill = hasher.fill, None
                                self._nursery.start_soon(self._commit_fill, fill)
                        if generation != self._generation:
                            return
                    head.held -= len(data)
                    self._buffered += len(data)
                    self._chunks.append((self._stream_pos, data))
                    self._stream_pos += len(data)
                    if self._first_data_at is None:
                        self._first_data_at = trio.current_time()
                    self._publish()
                    continue
                if head.error is not None:
                    self._error = head.error
                    self._publish()
                    return
                if head.done:
                    self._budget.give(head.held)
                    head.held = 0
                    self._fetches.popleft()
                    continue
                break
            if generation != self._generation or self._next_fetch >= self.size and not self._fetches:
                return
            await progress.wait()


class _Absorber:
    """What a read-ahead from offset 0 does with each chunk it delivers:
    hash it, and write it to a cache fill (blocking: on a worker thread)."""

    def __init__(self, hasher: Any, fill: BlobFill | None) -> None:
        self.hasher = hasher
        self.fill = fill

    def update(self, data: bytes) -> None:
        self.hasher.update(data)
        if self.fill is not None:
            self.fill.write(data)


async def _first_of(*waiters: Callable[[], Awaitable[None]]) -> None:
    """Return as soon as the first of the async callables returns."""
    async with trio.open_nursery() as nursery:

        async def run(fn: Callable[[], Awaitable[None]]) -> None:
            await fn()
            nursery.cancel_scope.cancel()

        for fn in waiters:
            nursery.start_soon(run, fn)
