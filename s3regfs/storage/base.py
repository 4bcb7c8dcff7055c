# SPDX-License-Identifier: MIT
"""The object-store interface the file system is written against.

Keys here are full S3 keys (the root directory prefix included); the layers
above map paths to keys.  Every method may raise the StorageError subclasses
of :mod:`s3regfs.errors` and nothing else; transient failures have already
been retried (at most ``1 + maxretries`` attempts) when one escapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object as a listing or a HEAD describes it."""

    key: str
    size: int
    etag: str
    mtime_ns: int
    storage_class: str = ""


@dataclass(frozen=True, slots=True)
class ListPage:
    """One ListObjectsV2 page: objects, common prefixes, and how to go on."""

    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    next_token: str | None = None

    @property
    def truncated(self) -> bool:
        return self.next_token is not None


@dataclass(frozen=True, slots=True)
class BucketProbe:
    """What the mount-time check learned."""

    database_in_use: bool


class ObjectStream(Protocol):
    """The body of a GET, read in order from *start*."""

    #: Offset of the next byte :meth:`read` returns.
    position: int

    async def read(self, size: int) -> bytes:
        """Up to *size* bytes; b"" only at the end of the requested range.

        A connection that breaks mid-body is resumed at :attr:`position`
        with If-Match on the ETag, within the retry budget.
        """
        ...

    async def aclose(self) -> None:
        """Release the connection; idempotent."""
        ...


class ObjectStore(Protocol):
    """What the file system needs from S3."""

    async def list_page(
        self,
        prefix: str,
        *,
        delimiter: str | None = None,
        start_after: str | None = None,
        token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        """One ListObjectsV2 page (up to *max_keys*, at most 1,000 keys), in key order."""
        ...

    async def head(self, key: str) -> ObjectInfo:
        """HeadObject; NotFound if there is no such key."""
        ...

    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes [start, end) of *key* in one request; If-Match *etag* when given."""
        ...

    async def open_stream(self, key: str, start: int, end: int, etag: str | None = None) -> ObjectStream:
        """Start a GET of bytes [start, end) to be read incrementally."""
        ...

    async def probe(self, key_prefix: str) -> BucketProbe:
        """One cheap request proving the bucket exists and may be listed."""
        ...
