# SPDX-License-Identifier: MIT
"""A local cache of blob data, named by digest (``-o cache=DIR``).

A blob's bytes never change under its digest, so a cached copy needs no
invalidation: it is right once its hash checked out, whichever mount,
bucket or registry it came from.  Files live at
``DIR/blobs/<alg>/<hh>/<hex>``; a blob enters only through a
:class:`BlobFill`: bytes written to a temporary file in ``DIR/tmp`` while a
read-ahead from the first byte hashes them, renamed into place only when
the whole blob's hash matched (atomic, so other processes sharing DIR never
see a partial file, and need no lock to read one).

A file whose size is not the blob's is discarded when found.  Eviction keeps
the files under ``max_bytes``, least recently used first (an open file stays
readable after it is unlinked).  A disk that refuses a write stops filling
(one warning) and never fails a read: the read goes on from S3.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from s3regfs import layout

log = logging.getLogger(__name__)

#: A fill untouched for this long was left by a process that died.
STALE_FILL = 3600.0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    fills: int = 0
    fill_failures: int = 0
    verification_failures: int = 0
    discarded: int = 0
    evictions: int = 0
    bytes_filled: int = 0
    #: Bytes read by the mount's users from cached files.
    bytes_served: int = 0
    size: int = 0
    #: Fills begun and not yet committed (their eviction included) or given up.
    filling: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class BlobFill:
    """One blob being written into the cache; see the module docstring.

    Methods block (file I/O): call them on a worker thread.
    """

    cache: BlobCache
    digest: str
    size: int
    temporary: str
    _file: IO[bytes] | None = field(repr=False, default=None)
    written: int = 0
    failed: bool = False
    done: bool = False
    ended: bool = False

    def write(self, data: bytes) -> None:
        """Append *data*; a failure abandons the fill (logged once by the cache)."""
        if self.failed or self.done:
            return
        try:
            if self._file is None:
                self._file = open(self.temporary, "wb")  # noqa: SIM115 - closed by commit/abort
            self._file.write(data)
            self.written += len(data)
        except OSError as exc:
            self.cache.disk_failed(exc)
            self.abort()

    def commit(self) -> bool:
        """The whole blob was written and its hash matched: rename it into place."""
        try:
            return self._commit()
        finally:
            self._end()

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.cache.fill_ended()

    def _commit(self) -> bool:
        if self.failed or self.done:
            return False
        self.done = True
        try:
            if self._file is not None:
                # On disk before the name: after a crash a blob's name never
                # holds anything but its bytes.
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
            if self.written != self.size:
                raise OSError(errno.EIO, f"wrote {self.written} of {self.size} bytes")
            final = self.cache.path(self.digest)
            assert final is not None
            os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
            replaced = os.path.exists(final)
            os.replace(self.temporary, final)
        except OSError as exc:
            self.cache.disk_failed(exc)
            self._remove()
            return False
        self.cache.filled(self.size, final, replaced=replaced)
        return True

    def abort(self) -> None:
        """Give up: remove the temporary file."""
        if self.done and not self.failed:
            return
        self.failed = self.done = True
        self._remove()
        self._end()

    def _remove(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.temporary)


class BlobCache:
    """Blob data by digest in a directory; see the module docstring.

    Thread-safe: fills commit from worker threads.
    """

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._evicting = threading.Lock()
        self._warned = False
        self._stopped = False
        self._blobs = os.path.join(directory, "blobs")
        self._tmp = os.path.join(directory, "tmp")
        os.makedirs(self._blobs, mode=0o700, exist_ok=True)
        os.makedirs(self._tmp, mode=0o700, exist_ok=True)
        self._remove_stale_fills()
        self.stats.size = sum(size for _, size, _ in self._files())

    def _remove_stale_fills(self) -> None:
        """Fills a crashed process left in tmp/ (older than STALE_FILL seconds)."""
        cutoff = time.time() - STALE_FILL
        for name in os.listdir(self._tmp):
            path = os.path.join(self._tmp, name)
            with contextlib.suppress(OSError):
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)

    def path(self, digest: str) -> str | None:
        if layout.digest_problem(digest) is not None:
            return None
        algorithm, _, hexdigest = digest.partition(":")
        return os.path.join(self._blobs, algorithm, hexdigest[:2], hexdigest)

    def lookup(self, digest: str, size: int) -> str | None:
        """The cached file of *digest* if it holds *size* bytes (blocking).
        A file of another size is removed."""
        path = self.path(digest)
        if path is None or size <= 0:
            return None
        try:
            found = os.stat(path).st_size
        except OSError:
            self._count("misses")
            return None
        if found != size:
            # A cached file entered whole and verified; a different size is a
            # damaged file (or a stale size here): read from S3, whose
            # verified read-ahead replaces the file.
            log.warning("cached blob %s has %d bytes, not %d: read from S3", digest, found, size)
            self._count("misses")
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently used goes first
        return path

    def hit(self) -> None:
        """An open was served from the cache."""
        self._count("hits")

    def miss(self) -> None:
        self._count("misses")

    def served(self, size: int) -> None:
        """*size* bytes were read from a cached file."""
        self._count("bytes_served", size)

    def _count(self, what: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self.stats, what, getattr(self.stats, what) + amount)

    def verified(self, digest: str, path: str) -> bool:
        """Whether the cached file's bytes hash to *digest* (blocking: -o verify)."""
        algorithm, _, expected = digest.partition(":")
        hasher = hashlib.new(algorithm)
        try:
            with open(path, "rb") as file:
                while chunk := file.read(1024 * 1024):
                    hasher.update(chunk)
        except OSError:
            return False
        if hasher.hexdigest() == expected:
            return True
        log.error("cached blob %s does not match its digest: removed", digest)
        with self._lock:
            self.stats.misses += 1
            self.stats.verification_failures += 1
        self.discard(digest)
        return False

    def discard(self, digest: str) -> None:
        path = self.path(digest)
        if path is None:
            return
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except OSError:
            return
        with self._lock:
            self.stats.size -= size
            self.stats.discarded += 1

    def begin_fill(self, digest: str, size: int) -> BlobFill | None:
        """A fill for *digest* (None when the disk failed before, the blob is
        empty or bigger than the whole cache)."""
        if self._stopped or size <= 0 or size > self._evict_target() or self.path(digest) is None:
            return None
        try:
            handle, temporary = tempfile.mkstemp(dir=self._tmp, prefix=f"{digest.partition(':')[2][:16]}-")
            os.close(handle)
        except OSError as exc:
            self.disk_failed(exc)
            return None
        with self._lock:
            self.stats.filling += 1
        return BlobFill(self, digest, size, temporary)

    def fill_ended(self) -> None:
        with self._lock:
            self.stats.filling -= 1

    def filled(self, size: int, path: str, *, replaced: bool) -> None:
        with self._lock:
            self.stats.fills += 1
            self.stats.bytes_filled += size
            if not replaced:  # another fill of the same blob got there first
                self.stats.size += size
            over = self.stats.size > self.max_bytes
        if over:
            self._evict(keep=path)

    def _evict_target(self) -> int:
        """Eviction goes down to 90% of the bound (not at every fill)."""
        return self.max_bytes * 9 // 10

    def disk_failed(self, exc: OSError) -> None:
        """A fill failed: counted; logged once; a full or read-only disk stops filling."""
        with self._lock:
            self.stats.fill_failures += 1
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                self._stopped = True
            if self._warned:
                return
            self._warned = True
        log.warning("cannot add to the blob cache in %s: %s", self.directory, exc.strerror or exc)

    def _files(self) -> list[tuple[float, int, str]]:
        found = []
        for root, _, names in os.walk(self._blobs):
            for name in names:
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    info = os.stat(path)
                    found.append((info.st_mtime, info.st_size, path))
        return found

    def _evict(self, keep: str) -> None:
        """Remove the least recently used files (never *keep*, the one just
        filled) until the cache is under the eviction target.  One eviction
        at a time across every process sharing the directory (a lock file),
        each from a fresh look at what the directory holds."""
        with open(os.path.join(self.directory, ".evict.lock"), "a") as lock, self._evicting:
            fcntl.flock(lock, fcntl.LOCK_EX)
            files = sorted(self._files())
            total = sum(size for _, size, _ in files)
            evicted = 0
            for _, size, path in files:
                if total <= self._evict_target():
                    break
                if path == keep:
                    continue
                try:
                    os.unlink(path)
                except OSError:
                    continue
                total -= size
                evicted += 1
            with self._lock:
                self.stats.size = total
                self.stats.evictions += evicted


def default_size(directory: str) -> int:
    """10% of the file system that holds *directory*."""
    info = os.statvfs(directory)
    return info.f_blocks * info.f_frsize // 10
