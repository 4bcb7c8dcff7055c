# SPDX-License-Identifier: MIT
"""The object-store interface the file system is written against.

Keys here are full S3 keys (the root directory prefix included); the layers
above map paths to keys.  Every method may raise the StorageError subclasses
of :mod:`s3regfs.errors` (and :class:`~s3regfs.errors.KeyTooLong`) and
nothing else; transient failures have already been retried (at most
``1 + maxretries`` attempts) when one escapes.  The S3 implementation is
:class:`s3regfs.storage.s3.S3Store`; only ``mount.py`` names it.
"""

from __future__ import annotations

from collections.abc import Sequence
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
class MultipartUpload:
    """A multipart upload in progress, as ListMultipartUploads and ListParts tell."""

    key: str
    upload_id: str
    initiated_ns: int
    parts: int = 0
    size: int = 0


@dataclass(frozen=True, slots=True)
class BucketProbe:
    """What the mount-time check learned."""

    database_in_use: bool


class ObjectStream(Protocol):
    """The body of a GET, read in order from *start*."""

    @property
    def position(self) -> int:
        """Offset of the next byte :meth:`read` returns."""
        ...

    async def read(self, size: int) -> bytes:
        """Up to *size* bytes; b"" only at the end of the requested range.

        A connection that breaks mid-body is resumed at :attr:`position`
        with If-Match on the ETag, within the retry budget.
        """
        ...

    async def reserve(self) -> None:
        """Wait in line for a connection of the streams' share and keep it
        until :meth:`aclose` (a stream is otherwise free to read by ranged
        GETs when no connection is free at once)."""
        ...

    async def aclose(self) -> None:
        """Release the connection; idempotent."""
        ...


#: S3's limit on a key's length, in bytes.
KEY_MAX = 1024


class RangeReads(Protocol):
    """Where an object's bytes are read from: S3 (an ObjectStore), or a CDN
    in front of it for blob data (:class:`BlobReads`)."""

    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes [start, end) of *key* in one request; If-Match *etag* when given."""
        ...

    async def open_stream(self, key: str, start: int, end: int, etag: str | None = None) -> ObjectStream:
        """Start a GET of bytes [start, end) to be read incrementally."""
        ...

    def stream(self, key: str, start: int, end: int, etag: str | None = None) -> ObjectStream:
        """A stream of bytes [start, end) that sends nothing until its first read."""
        ...


class BlobReads(RangeReads, Protocol):
    """Blob data reads through the registry's CDN (CloudFront), S3 behind it."""

    def routes(self, key: str) -> bool:
        """Whether reads of *key* go through the CDN now."""
        ...

    def distrust(self, key: str) -> None:
        """Bytes of *key* read through the CDN failed their digest: read it from S3 for a while."""
        ...

    def stats(self) -> dict[str, object]:
        """Requests, bytes, fallbacks to S3, digest failures."""
        ...


class ObjectStore(Protocol):
    """Everything the file system asks of S3."""

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

    async def multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        """Every multipart upload in progress under *prefix* (ListMultipartUploads,
        all pages), each with its parts counted and summed (one ListParts each;
        an upload that ended meanwhile is left out)."""
        ...

    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        """Bytes [start, end) of *key* in one request; If-Match *etag* when given."""
        ...

    async def open_stream(self, key: str, start: int, end: int, etag: str | None = None) -> ObjectStream:
        """Start a GET of bytes [start, end) to be read incrementally."""
        ...

    def stream(self, key: str, start: int, end: int, etag: str | None = None) -> ObjectStream:
        """A stream of bytes [start, end) that sends nothing until its first read."""
        ...

    async def probe(self, key_prefix: str) -> BucketProbe:
        """One cheap request proving the bucket exists and may be listed."""
        ...

    # -- writing: every object written or copied carries the driver's headers --

    async def put(self, key: str, data: bytes) -> str:
        """PutObject; returns the ETag."""
        ...

    async def create_multipart(self, key: str) -> str:
        """CreateMultipartUpload (journalled before it returns); the upload id."""
        ...

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """UploadPart; returns the part's ETag."""
        ...

    async def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        number: int,
        source: str,
        start: int,
        end: int,
        source_etag: str | None = None,
    ) -> str:
        """UploadPartCopy of bytes [start, end) of *source* (If-Match
        *source_etag*) as part *number*; returns the part's ETag."""
        ...

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        """CompleteMultipartUpload of (number, ETag) *parts*; returns the
        object's ETag.  Never reports success on an object it did not make."""
        ...

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload (a missing upload is no error); only ever
        called for uploads this store created."""
        ...

    async def delete(self, key: str) -> None:
        """DeleteObject (a missing key is no error, as in S3)."""
        ...

    async def delete_many(self, keys: list[str]) -> None:
        """DeleteObjects in batches; raises if any key was not deleted."""
        ...

    async def copy(self, source: str, dest: str, size: int, source_etag: str | None = None) -> str:
        """Copy *source* (If-Match *source_etag*) to *dest* as the driver
        copies; returns the new ETag."""
        ...

    async def move_prefix(self, prefix: str, dest_prefix: str, *, also: Sequence[str] = ()) -> dict[str, str]:
        """Copy every object under *prefix* to *dest_prefix* (the rest of its
        key kept), then delete the sources: the ETag of each copy by its
        relative key.  Not atomic (a failure in between leaves both).  Before
        any copy, KeyTooLong if a new key (or *dest_prefix* + any relative name
        in *also*) would be over S3's limit."""
        ...

    def stats(self) -> dict[str, object]:
        """Requests by type and operation, bytes in and out, retries, errors."""
        ...
