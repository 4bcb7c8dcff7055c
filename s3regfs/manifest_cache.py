# SPDX-License-Identifier: MIT
"""Manifest bodies by digest: fetched from S3 at most once, kept in memory
and on disk.

A manifest is a blob, and a blob's bytes never change under its digest, so
a body once fetched and checked against its digest is good for ever: in
memory (least recently used go first past ``memory_bytes``) and in
``<cachedir>/manifests/<alg>/<hex>`` on disk, which outlives the mount (and
may be shared by mounts of several buckets: a file is only ever used after
its bytes hash to its name again).  A body that does not match its digest
is never kept; the caller is told, with the bytes (:class:`DigestMismatch`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections import OrderedDict

import trio

from s3regfs import layout
from s3regfs.errors import StorageError
from s3regfs.storage.base import ObjectStore

log = logging.getLogger(__name__)

#: Mismatched digests remembered to log each once.
MISMATCHES_KEPT = 10_000


class DigestMismatch(StorageError):
    """The object's bytes do not hash to the digest its path names; *data*
    holds them (the registry would use them all the same)."""

    def __init__(self, message: str, data: bytes) -> None:
        super().__init__(message, code="DigestMismatch")
        self.data = data


def matches(digest: str, data: bytes) -> bool:
    """Whether *data* hashes to *digest* (``alg:hex``)."""
    if layout.digest_problem(digest) is not None:
        return False
    algorithm, _, hexdigest = digest.partition(":")
    return hashlib.new(algorithm, data).hexdigest() == hexdigest


class ManifestCache:
    """Manifest bodies by digest; see the module docstring.

    Counters: ``fetched`` (GETs), ``memory_hits``, ``disk_hits``.
    """

    def __init__(self, store: ObjectStore, directory: str | None, memory_bytes: int) -> None:
        self._store = store
        self._directory = os.path.join(directory, "manifests") if directory else None
        self._memory_bytes = memory_bytes
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._held = 0
        self._disk_failed = False
        #: Digests whose bytes did not match, already told (bounded).
        self._mismatched: set[str] = set()
        self.fetched = 0
        self.memory_hits = 0
        self.disk_hits = 0

    def stats(self) -> dict[str, int]:
        return {
            "fetched": self.fetched,
            "memory_hits": self.memory_hits,
            "disk_hits": self.disk_hits,
            "memory_bytes": self._held,
        }

    async def get(self, digest: str, key: str, size: int) -> bytes:
        """The body of manifest *digest*, stored at *key* (*size* bytes as
        listed): from memory, the disk, or one GET.  DigestMismatch (with the
        bytes) if S3's do not hash to *digest*; StorageError as the store raises."""
        data = self._memory.get(digest)
        if data is not None:
            self._memory.move_to_end(digest)
            self.memory_hits += 1
            return data
        data = await trio.to_thread.run_sync(self._load, digest)
        if data is not None:
            self.disk_hits += 1
            self._remember(digest, data)
            return data
        data = await self._store.get_range(key, 0, size) if size else b""
        self.fetched += 1
        if not matches(digest, data):
            raise DigestMismatch(f"{key}: content does not match its digest {digest}", data)
        self._remember(digest, data)
        await trio.to_thread.run_sync(self._save, digest, data)
        return data

    def first_mismatch(self, digest: str) -> bool:
        """Whether *digest*'s mismatch is news (to log it once, not at every read)."""
        if digest in self._mismatched:
            return False
        if len(self._mismatched) >= MISMATCHES_KEPT:
            self._mismatched.clear()
        self._mismatched.add(digest)
        return True

    def _remember(self, digest: str, data: bytes) -> None:
        self._memory[digest] = data
        self._held += len(data)
        while self._held > self._memory_bytes and len(self._memory) > 1:
            _, dropped = self._memory.popitem(last=False)
            self._held -= len(dropped)

    def _path(self, digest: str) -> str | None:
        if self._directory is None or layout.digest_problem(digest) is not None:
            return None
        algorithm, _, hexdigest = digest.partition(":")
        return os.path.join(self._directory, algorithm, hexdigest)

    def _load(self, digest: str) -> bytes | None:
        path = self._path(digest)
        if path is None:
            return None
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError:
            return None
        if matches(digest, data):
            return data
        log.warning("manifest cache file %s does not match its digest: removed", path)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None

    def _save(self, digest: str, data: bytes) -> None:
        """Write the body (atomically: a temporary file renamed); a disk that
        refuses is logged once and the cache goes on in memory."""
        path = self._path(digest)
        if path is None or self._disk_failed:
            return
        temporary = ""
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            # A name of its own, made exclusively (never through a planted symlink).
            handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".incoming-")
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except OSError as exc:
            self._disk_failed = True
            log.warning(
                "cannot keep manifests in %s (%s): they are kept in memory only",
                self._directory,
                exc.strerror or exc,
            )
            if temporary:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
