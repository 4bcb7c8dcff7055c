# SPDX-License-Identifier: MIT
"""The S3 object store, on boto3.

This is the only module that imports boto3 (storage/cloudfront.py takes
botocore's CloudFront URL signer, nothing else).  boto3 is
synchronous: every call runs on a worker thread through
``trio.to_thread.run_sync`` behind one CapacityLimiter, with one shared
client (boto3 clients are thread-safe once created; sessions are not).

Connections: the limiter has a token per connection of the pool
(``max_connections``), and whoever uses a connection holds a token: a
request for the whole call, a ranged GET until its body is read (in the same
call), an open stream (read-ahead) for its life.  Streams together hold at
most three quarters of the tokens (the *bulk* share), so the other requests
always have a quarter.  A read-ahead stream takes its token only if it is free
at once and streams hold fewer than half of them (a stream without one reads
chunk by chunk as ranged GETs); a parallel range (:meth:`S3Stream.reserve`)
queues for one, first come first served, so files reading at once share the
bulk share in turn.  So the pool is never exceeded (urllib3 would open extra
connections and discard them with a warning), and streams never keep the
other requests waiting.

Retries live here and only here: botocore's own retries are switched off
(``total_max_attempts=1``), and :meth:`S3Store._call` makes at most
``1 + maxretries`` attempts, with exponential backoff and jitter, on 5xx,
429/SlowDown/RequestTimeout and connection errors, never on other 4xx.
Every attempt first takes a token from the ``maxrequestspersecond`` limiter.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import hashlib
import logging
import random
import ssl
import sys
import urllib.parse
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, TypeVar

import boto3
import botocore.compat
import botocore.config
import botocore.exceptions
import botocore.handlers
import botocore.session
import botocore.utils
import trio
import urllib3.exceptions
import urllib3.util.ssl_match_hostname

from s3regfs.config import DriverParams, MountOptions
from s3regfs.errors import (
    AccessDenied,
    ConfigError,
    InvalidCredentials,
    InvalidRange,
    KeyTooLong,
    NoSuchBucket,
    NotFound,
    PreconditionFailed,
    RequestFailed,
    StorageError,
    TemporaryFailure,
    TLSError,
    collapse_exception_groups,
)
from s3regfs.storage.base import KEY_MAX, BucketProbe, ListPage, MultipartUpload, ObjectInfo
from s3regfs.storage.journal import UploadJournal

log = logging.getLogger(__name__)

#: ListParts requests in flight at once when multipart uploads are counted.
PARTS_LISTED_AT_ONCE = 8

T = TypeVar("T")

_TEMPORARY_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "TooManyRequests",
    }
)
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
    }
)

#: Backoff before retry n (1-based): BACKOFF_BASE * 2**(n-1), capped, times a
#: random factor in [0.5, 1] ("equal jitter").
BACKOFF_BASE = 0.2
BACKOFF_CAP = 20.0

LOCKFILE_DIR = "docker/registry/lockfiles/"


class RateLimiter:
    """A token bucket with a burst of one, as GitLab's driver uses.

    *rate* requests per second; 0 means no limit.
    """

    def __init__(self, rate: int) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = trio.Lock()

    async def acquire(self) -> None:
        if not self._interval:
            return
        async with self._lock:
            now = trio.current_time()
            wait = self._next - now
            self._next = max(now, self._next) + self._interval
        if wait > 0:
            await trio.sleep(wait)


def _tls_failure(exc: botocore.exceptions.SSLError, what: str) -> TLSError | None:
    """A TLS failure that would happen again on every attempt (an untrusted or
    misnamed certificate, an unusable CA bundle), or None for one that may not
    (a handshake cut short)."""
    inner = exc.kwargs.get("error")
    cause = inner.args[0] if isinstance(inner, urllib3.exceptions.SSLError) and inner.args else inner
    bundle = False
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = f"TLS certificate verify failed: {cause.verify_message or cause.reason}"
    elif isinstance(cause, urllib3.util.ssl_match_hostname.CertificateError):  # urllib3's host name check
        reason = f"TLS certificate verify failed: {cause}"
    elif isinstance(cause, ssl.SSLError) and cause.library in ("X509", "PEM"):
        reason, bundle = f"cannot load the CA bundle: {cause.reason}", True
    elif isinstance(cause, OSError) and not isinstance(cause, ssl.SSLError):
        reason, bundle = f"cannot load the CA bundle: {cause.strerror or cause}", True
    else:
        return None
    return TLSError(f"{what}: {reason}", reason=reason, bundle=bundle)


def translate(exc: BaseException, what: str) -> StorageError:
    """Map a botocore/urllib3 exception to the most specific StorageError."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, botocore.exceptions.SSLError):
        failure = _tls_failure(exc, what)
        if failure is not None:
            return failure
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"{what}: {code or status} {error.get('Message', '')}".rstrip()
        if code == "NoSuchBucket":
            return NoSuchBucket(message, code=code, status=status)
        if code in ("NoSuchKey", "NotFound") or status == 404:
            return NotFound(message, code=code, status=status)
        if code in _TEMPORARY_CODES or status == 429 or status >= 500:
            return TemporaryFailure(message, code=code, status=status)
        if code in _CREDENTIAL_CODES:
            return InvalidCredentials(message, code=code, status=status)
        if code == "AccessDenied" or status == 403:
            return AccessDenied(message, code=code, status=status)
        if code == "PreconditionFailed" or status == 412:
            return PreconditionFailed(message, code=code, status=status)
        if code == "InvalidRange" or status == 416:
            return InvalidRange(message, code=code, status=status)
        return RequestFailed(message, code=code, status=status)
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return InvalidCredentials(f"{what}: no usable credentials ({exc})", code="NoCredentials")
    if isinstance(
        exc,
        botocore.exceptions.EndpointConnectionError
        | botocore.exceptions.ConnectionError
        | botocore.exceptions.ReadTimeoutError
        | botocore.exceptions.ConnectTimeoutError
        | botocore.exceptions.IncompleteReadError
        | botocore.exceptions.ResponseStreamingError
        | urllib3.exceptions.HTTPError
        | ConnectionError
        | TimeoutError,
    ):
        return TemporaryFailure(f"{what}: {exc}", code=type(exc).__name__)
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return RequestFailed(f"{what}: {exc}", code=type(exc).__name__)
    raise exc


def parse_timestamp(value: str) -> datetime.datetime:
    """A timestamp of a response: ISO 8601 (LIST pages) the fast way, anything
    else (the HTTP dates of HEAD and GET) by botocore's own parser."""
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return botocore.utils.parse_timestamp(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.UTC)


def _outcome(exc: BaseException) -> str:
    """How an attempt ended, for the request counts: the HTTP status S3
    answered, or "network" when no answer came."""
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(status) if status else "error"
    return "network"


def _object_info(key: str, meta: dict[str, Any]) -> ObjectInfo:
    modified = meta.get("LastModified")
    mtime_ns = int(modified.timestamp() * 1e9) if modified is not None else 0
    return ObjectInfo(
        key=key,
        size=int(meta.get("Size", meta.get("ContentLength", 0))),
        etag=str(meta.get("ETag", "")).strip('"'),
        mtime_ns=mtime_ns,
        # One string for the few classes, not one per key of a page.
        storage_class=sys.intern(str(meta.get("StorageClass", "") or "")),
    )


#: The entry of a parsed ListObjectsV2 response that holds the page as
#: :func:`parse_list_page` read it.
_PAGE_READ_FIRST = "S3regfsPage"
#: What botocore's own parser reads in place of a page already read.
_EMPTY_LIST_RESULT = b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"/>'


def parse_list_page(body: bytes) -> tuple[ListPage, bool] | None:
    """A ListObjectsV2 result read with ElementTree (its C parser), as
    :func:`_list_page` makes it from botocore's parse: the page, and whether
    it is truncated.  None for anything but a ListBucketResult whose every
    field reads as expected; botocore's parser then reads the body.

    Why: botocore's generic parser walks each key's elements in Python
    against the service model, about 13 ms per 1,000-key page, on a worker
    thread that holds the GIL all that time, while the request loop of a
    walk waits for it.  This reads the same page in about 5 ms.  Keys and
    prefixes are decoded as botocore decodes them (``EncodingType=url``).
    """
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    namespace, _, name = root.tag.rpartition("}")
    if name != "ListBucketResult":
        return None
    namespace = namespace + "}" if namespace else ""
    key_tag, size_tag, etag_tag = namespace + "Key", namespace + "Size", namespace + "ETag"
    modified_tag, class_tag = namespace + "LastModified", namespace + "StorageClass"
    decode: Callable[[str], str] = (
        botocore.compat.unquote_str if root.findtext(namespace + "EncodingType") == "url" else str
    )
    objects: list[ObjectInfo] = []
    try:
        for contents in root.iterfind(namespace + "Contents"):
            key = contents.findtext(key_tag)
            if key is None:
                return None
            modified = contents.findtext(modified_tag)
            objects.append(
                ObjectInfo(
                    key=decode(key),
                    size=int(contents.findtext(size_tag) or 0),
                    etag=(contents.findtext(etag_tag) or "").strip('"'),
                    mtime_ns=int(parse_timestamp(modified).timestamp() * 1e9) if modified else 0,
                    storage_class=sys.intern(contents.findtext(class_tag) or ""),
                )
            )
        prefixes: list[str] = []
        for common in root.iterfind(namespace + "CommonPrefixes"):
            prefix = common.findtext(namespace + "Prefix")
            if prefix is None:
                return None
            prefixes.append(decode(prefix))
    except (ValueError, OverflowError):
        return None  # a size or a date botocore may read (or fail on) its own way
    truncated = (root.findtext(namespace + "IsTruncated") or "").strip().lower() == "true"
    token = root.findtext(namespace + "NextContinuationToken") if truncated else None
    return ListPage(objects=objects, prefixes=prefixes, next_token=token or None), truncated


#: botocore's check for an S3 error in a 200 answer (S3 sends some that way):
#: a before-parse hook of every S3 operation that parses the whole body.
_CHECK_200_ERROR: Callable[..., None] | None = getattr(botocore.handlers, "_handle_200_error", None)


def _before_parse(operation_model: Any, response_dict: dict[str, Any], **kwargs: Any) -> None:
    """The before-parse hook of every S3 operation, in place of botocore's
    200-error check: a ListObjectsV2 page is read first (see
    _read_list_page_first), then botocore checks the body, which is by then
    the empty result for a page read: botocore parsed every page once more
    just to see its root element, about a third of a page's parsing CPU, on
    a worker thread holding the GIL.  A body that is no ListBucketResult (an
    <Error>, a cut page) is left as it came: botocore's check sees it."""
    if operation_model.name == "ListObjectsV2":
        _read_list_page_first(response_dict, kwargs.get("customized_response_dict"))
    if _CHECK_200_ERROR is not None:
        _CHECK_200_ERROR(operation_model=operation_model, response_dict=response_dict, **kwargs)


def _read_list_page_first(response_dict: dict[str, Any], customized_response_dict: dict[str, Any] | None) -> None:
    """A page that :func:`parse_list_page` reads goes into the parsed
    response as _PAGE_READ_FIRST, and botocore parses an empty result
    instead of it."""
    body = response_dict.get("body")
    if customized_response_dict is None or response_dict.get("status_code") != 200 or not isinstance(body, bytes):
        return
    page = parse_list_page(body)
    if page is not None:
        customized_response_dict[_PAGE_READ_FIRST] = page
        response_dict["body"] = _EMPTY_LIST_RESULT


def _list_page(response: dict[str, Any]) -> tuple[ListPage, bool]:
    """A ListObjectsV2 response as a page, and whether S3 said it is truncated."""
    read_first: tuple[ListPage, bool] | None = response.get(_PAGE_READ_FIRST)
    if read_first is not None:
        return read_first
    truncated = bool(response.get("IsTruncated"))
    return (
        ListPage(
            objects=[_object_info(item["Key"], item) for item in response.get("Contents", [])],
            prefixes=[item["Prefix"] for item in response.get("CommonPrefixes", [])],
            next_token=response.get("NextContinuationToken") if truncated else None,
        ),
        truncated,
    )


class Connections:
    """The connection tokens of one client (its pool holds *max_connections*).

    Every request holds a token while it runs.  An open stream holds one for
    its life, a *slot*; slots come from the *bulk* share (three quarters of
    the tokens, at least one), so the other requests always progress, however
    many streams read.  A slot is taken either at once or not at all
    (:meth:`take_stream_slot`: read-ahead streams, at most half of the tokens)
    or in turn (:meth:`wait_for_slot`: parallel ranges).
    """

    def __init__(self, max_connections: int) -> None:
        self.limiter = trio.CapacityLimiter(max_connections)
        self._stream_slots = max_connections // 2
        self._bulk = trio.CapacityLimiter(max(1, max_connections - max_connections // 4))
        self._streams = 0

    async def run(self, fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None) -> T:
        """Run *fn* on a worker thread holding a token (of *limiter* when the
        caller's token is elsewhere: an open stream's slot)."""
        return await trio.to_thread.run_sync(
            lambda: fn(*args), limiter=limiter if limiter is not None else self.limiter
        )

    def take_stream_slot(self, owner: object) -> bool:
        """A slot for *owner*, if one is free now and streams hold fewer than
        half of the tokens; never waits (a stream without a slot reads by
        ranged GETs, so no reader waits for an idle one)."""
        if self._streams >= self._stream_slots:
            return False
        try:
            self._bulk.acquire_on_behalf_of_nowait(owner)
        except trio.WouldBlock:
            return False
        try:
            self.limiter.acquire_on_behalf_of_nowait(owner)
        except trio.WouldBlock:
            self._bulk.release_on_behalf_of(owner)
            return False
        self._streams += 1
        return True

    async def wait_for_slot(self, owner: object) -> None:
        """A slot for *owner*, waiting in line for one (first come, first served)."""
        await self._bulk.acquire_on_behalf_of(owner)
        try:
            await self.limiter.acquire_on_behalf_of(owner)
        except BaseException:
            self._bulk.release_on_behalf_of(owner)
            raise
        self._streams += 1

    def give_stream_slot(self, owner: object) -> None:
        self._streams -= 1
        self.limiter.release_on_behalf_of(owner)
        self._bulk.release_on_behalf_of(owner)

    @property
    def total(self) -> int:
        """Tokens in all (max_connections)."""
        return int(self.limiter.total_tokens)

    @property
    def bulk(self) -> int:
        """Slots streams may hold at once."""
        return int(self._bulk.total_tokens)

    @property
    def streams(self) -> int:
        """Open streams holding a slot."""
        return self._streams

    @property
    def in_use(self) -> int:
        """Tokens taken (by requests running and by streams)."""
        return int(self.limiter.borrowed_tokens)


class RetryPolicy:
    """The retry rules of the module docstring, and the counts they keep
    (``retries`` and ``errors`` in *counters*): shared by every call and by
    the streams, which retry a broken body under one budget per read."""

    def __init__(self, maxretries: int, counters: collections.Counter[str]) -> None:
        self.maxretries = maxretries
        self.counters = counters

    async def failed(
        self,
        exc: Exception,
        what: str,
        failures: int,
        *,
        retries: int | None = None,
        count_errors: bool = True,
    ) -> None:
        """The *failures*-th failure of *what*: raise it translated if it is final
        (not temporary, or past the budget of *retries*, at most maxretries),
        else count a retry and wait the backoff.  Without *count_errors* a final
        failure is not counted: the caller retries it and counts what it gives
        up on.  A miss (NotFound) is an answer, never counted as an error."""
        error = translate(exc, what)
        budget = self.maxretries if retries is None else min(retries, self.maxretries)
        if not isinstance(error, TemporaryFailure) or failures > budget:
            if count_errors and not isinstance(error, NotFound):
                self.counters["errors"] += 1
            raise error from exc
        self.counters["retries"] += 1
        log.debug("%s (attempt %d of %d)", error, failures, 1 + budget)
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures - 1, 16))
        await trio.sleep(delay * random.uniform(0.5, 1.0))


class GetBody(Protocol):
    async def __call__(
        self, key: str, start: int, end: int, etag: str | None, *, limiter: trio.CapacityLimiter
    ) -> Any: ...


class GetBytes(Protocol):
    async def __call__(self, key: str, start: int, end: int, etag: str | None) -> bytes: ...


class S3Stream:
    """A GET body read in order; resumes after a broken connection.

    An open body keeps its connection between reads, so a stream keeps one
    only while it holds a slot of *connections*; without one, each read is a
    ranged GET of its own (*get_bytes*).  *get_body* opens a body (one
    attempt, uncounted: :meth:`read` retries it under *retry*'s budget).
    """

    def __init__(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        what: str,
        connections: Connections,
        retry: RetryPolicy,
        get_body: GetBody,
        get_bytes: GetBytes,
    ) -> None:
        self._key = key
        self._end = end
        self._etag = etag
        self._what = what
        self._connections = connections
        self._retry = retry
        self._get_body = get_body
        self._get_bytes = get_bytes
        self._body: Any = None
        self._slot = False
        #: The slot is this stream's connection: its own calls do not take
        #: another token of the store's limiter (one call at a time).
        self._limiter = trio.CapacityLimiter(1)
        self.position = start

    async def _open_body(self) -> bool:
        """Open the body from the current position if a slot is (or becomes) ours."""
        if not self._slot:
            self._slot = self._connections.take_stream_slot(self)
        if self._slot:
            self._body = await self._get_body(
                self._key, self.position, self._end, self._etag, limiter=self._limiter
            )
        return self._slot

    async def reserve(self) -> None:
        """Wait in line for a slot and keep it until :meth:`aclose` (a parallel
        range: it must not fall back to chunk-sized requests)."""
        if not self._slot:
            await self._connections.wait_for_slot(self)
            self._slot = True

    async def open(self) -> None:
        """Open the body at once (with a slot), under the usual retry budget."""
        failures = 0
        while True:
            try:
                await self._open_body()
                return
            except Exception as exc:  # noqa: BLE001 - translated by the policy
                failures += 1
                await self._retry.failed(exc, self._what, failures)

    async def read(self, size: int) -> bytes:
        size = min(size, self._end - self.position)
        if size <= 0:
            return b""
        # One retry budget for the whole read: re-opening the body after a
        # break is an attempt of this budget, not a call with its own retries.
        failures = 0
        while True:
            try:
                data: bytes
                if self._body is not None or await self._open_body():
                    data = await self._connections.run(self._body.read, size, limiter=self._limiter)
                else:
                    # No connection to keep: this chunk is a request of its own.
                    data = await self._get_bytes(self._key, self.position, self.position + size, self._etag)
                if not data:
                    raise TemporaryFailure(
                        f"{self._what}: body ended at {self.position}, expected {self._end}"
                    )
            except Exception as exc:  # noqa: BLE001 - translated by the policy
                await self._drop_body()
                failures += 1
                await self._retry.failed(exc, self._what, failures)
                log.debug("%s: resuming at offset %d (retry %d)", self._what, self.position, failures)
                continue
            self.position += len(data)
            self._retry.counters["bytes_in"] += len(data)
            return data

    async def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            # Shielded: a cancelled caller must still close it, or its
            # connection stays checked out with no token standing for it.
            with trio.CancelScope(shield=True):
                await self._connections.run(body.close, limiter=self._limiter)

    async def aclose(self) -> None:
        """Close the body and give the slot back; idempotent."""
        try:
            await self._drop_body()
        finally:
            if self._slot:
                self._slot = False
                self._connections.give_stream_slot(self)


class _Openable(Protocol):
    async def open(self) -> None: ...

    async def aclose(self) -> None: ...


StreamT = TypeVar("StreamT", bound=_Openable)


async def opened(stream: StreamT, has_bytes: bool) -> StreamT:
    """*stream* with its body open (unless it covers no byte); closed again
    if opening fails or is cancelled."""
    if has_bytes:
        try:
            await stream.open()
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
    return stream


def multipart_etag(part_etags: list[str]) -> str:
    """The ETag S3 gives an object completed from parts with these ETags
    (the MD5 of their binary MD5s, then "-" and their count)."""
    digest = hashlib.md5(usedforsecurity=False)
    for etag in part_etags:
        digest.update(bytes.fromhex(etag.strip('"')))
    return f"{digest.hexdigest()}-{len(part_etags)}"


def object_headers(driver: DriverParams) -> dict[str, Any]:
    """The headers the registry's driver sends on every request that creates an object."""
    headers: dict[str, Any] = {"ContentType": "application/octet-stream"}
    if not driver.objectownership:
        headers["ACL"] = driver.objectacl
    if driver.encrypt:
        headers["ServerSideEncryption"] = "aws:kms" if driver.keyid else "AES256"
        if driver.keyid:
            headers["SSEKMSKeyId"] = driver.keyid
    if driver.storageclass != "NONE":
        headers["StorageClass"] = driver.storageclass
    if driver.checksum_algorithm and not driver.checksum_disabled:
        headers["ChecksumAlgorithm"] = driver.checksum_algorithm
    return headers


#: Request types of the stats file, by boto3 operation.
REQUEST_TYPES = {
    "list_objects_v2": "LIST",
    "head_object": "HEAD",
    "get_object": "GET",
    "put_object": "PUT",
    "create_multipart_upload": "PUT",
    "complete_multipart_upload": "PUT",
    "upload_part": "PART",
    "copy_object": "COPY",
    "upload_part_copy": "COPY",
    "delete_object": "DELETE",
    "delete_objects": "DELETE",
    "abort_multipart_upload": "DELETE",
    "list_parts": "LIST",
}


class S3Store:
    """The ObjectStore on one boto3 client.  Build it with :meth:`create`."""

    bucket: str
    request_counts: collections.Counter[str]

    def __init__(
        self, client: Any, driver: DriverParams, max_connections: int, journal: UploadJournal | None = None
    ) -> None:
        self._client = client
        events = client.meta.events
        if _CHECK_200_ERROR is not None:
            events.unregister("before-parse.s3.*", _CHECK_200_ERROR)
        events.register_first("before-parse.s3.*", _before_parse)
        self._driver = driver
        self._headers = object_headers(driver)
        self.bucket = driver.bucket
        self._connections = Connections(max_connections)
        self._rate = RateLimiter(driver.maxrequestspersecond)
        self.request_counts = collections.Counter()
        #: Attempts by (operation, outcome): "ok", the HTTP status, or "network".
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        #: Where the ids of the multipart uploads begun here are kept (see journal.py).
        self.journal = journal
        #: bytes_in, bytes_out, retries, errors (for the stats file).
        self.counters: collections.Counter[str] = collections.Counter()
        self._retry = RetryPolicy(driver.maxretries, self.counters)

    @classmethod
    def create(
        cls, driver: DriverParams, options: MountOptions, journal: UploadJournal | None = None
    ) -> S3Store:
        """Build the client from the driver parameters (no request is sent);
        *journal* keeps the ids of the multipart uploads begun here."""
        checksum: Literal["when_supported", "when_required"] = (
            "when_supported"
            if driver.checksum_algorithm and not driver.checksum_disabled
            else "when_required"
        )
        s3_settings: dict[str, Any] = {
            "addressing_style": "path" if driver.pathstyle else "auto",
            "use_accelerate_endpoint": driver.accelerate,
            "use_dualstack_endpoint": driver.usedualstack,
        }
        client_config = botocore.config.Config(
            region_name=driver.region or "us-east-1",
            signature_version="s3v4" if driver.v4auth else "s3",
            user_agent_extra=f"s3regfs {driver.useragent}".strip(),
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=options.max_connections,
            s3=s3_settings,  # type: ignore[arg-type]  # a plain dict is what botocore reads
            use_fips_endpoint=driver.usefipsendpoint,
            request_checksum_calculation=checksum,
            response_checksum_validation=checksum,
            tcp_keepalive=True,
        )
        scheme = (driver.endpoint_url or ("https:" if driver.secure else "http:")).partition(":")[0].lower()
        if driver.skipverify and scheme == "https":
            # Said once here, not by urllib3 on every request (botocore's own
            # filter for that warning does not hold across threads).
            log.warning("skipverify is set: the TLS certificate of %s is not verified", driver.endpoint_name)
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        try:
            core = botocore.session.get_session()
            # Every key of a LIST page has a LastModified: botocore's generic
            # parser (dateutil) costs ~50 us each, a third of a page's CPU.
            core.get_component("response_parser_factory").set_parser_defaults(
                timestamp_parser=parse_timestamp
            )
            if driver.accesskey and driver.secretkey:
                session = boto3.session.Session(
                    aws_access_key_id=driver.accesskey,
                    aws_secret_access_key=driver.secretkey,
                    aws_session_token=driver.sessiontoken or None,
                    botocore_session=core,
                )
            else:
                session = boto3.session.Session(botocore_session=core)
            client = session.client(
                "s3",
                endpoint_url=driver.endpoint_url,
                use_ssl=driver.secure if driver.endpoint_url is None else None,
                verify=False if driver.skipverify else None,
                config=client_config,
            )
        except botocore.exceptions.BotoCoreError as exc:
            # The environment botocore reads: an empty AWS_CA_BUNDLE, an
            # unknown AWS_PROFILE...  A user error, not a crash.
            raise ConfigError(f"cannot set up the S3 client: {exc}") from None
        return cls(client, driver, options.max_connections, journal)

    # -- plumbing -----------------------------------------------------------

    def endpoint_address(self) -> tuple[str, int]:
        """(host, port) of the endpoint the client sends its requests to."""
        parts = urllib.parse.urlsplit(self._client.meta.endpoint_url)
        return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def connections(self) -> Connections:
        """The connection tokens (for the stats and the tests)."""
        return self._connections

    async def _call(
        self,
        operation: str,
        what: str,
        *,
        retries: int | None = None,
        limiter: trio.CapacityLimiter | None = None,
        consume: Callable[[Any], Any] | None = None,
        count_errors: bool = True,
        **kwargs: Any,
    ) -> Any:
        """One API call with the retry policy of the module docstring.

        *retries* lowers the retry budget for this call (the mount-time probe
        fails fast: at most two attempts).  Without *count_errors* a final
        failure is not counted in the stats: the caller retries it and counts
        what it finally gives up on (a stream).  *limiter*: see :meth:`Connections.run`.
        *consume* runs on the response in the same thread, holding the same
        token (a GET's body is read before its connection counts as free).
        """
        method = getattr(self._client, operation)
        failures = 0
        while True:
            await self._rate.acquire()
            self.request_counts[operation] += 1
            try:
                response = await self._connections.run(
                    lambda: consume(method(**kwargs)) if consume else method(**kwargs), limiter=limiter
                )
                self.outcomes[(operation, "ok")] += 1
                return response
            except Exception as exc:  # noqa: BLE001 - translated by the policy
                self.outcomes[(operation, _outcome(exc))] += 1
                failures += 1
                await self._retry.failed(exc, what, failures, retries=retries, count_errors=count_errors)

    def stats(self) -> dict[str, object]:
        """Requests by type and by operation, bytes, retries and errors since the start."""
        by_type: collections.Counter[str] = collections.Counter()
        for operation, count in self.request_counts.items():
            by_type[REQUEST_TYPES.get(operation, operation)] += count
        return {
            "requests": dict(sorted(by_type.items())),
            "operations": dict(sorted(self.request_counts.items())),
            "bytes_in": self.counters["bytes_in"],
            "bytes_out": self.counters["bytes_out"],
            "retries": self.counters["retries"],
            "errors": self.counters["errors"],
            #: Connection tokens held now (requests running, streams' slots).
            "connections_in_use": self._connections.in_use,
            "outcomes": {f"{op} {outcome}": n for (op, outcome), n in sorted(self.outcomes.items())},
        }

    # -- ObjectStore ----------------------------------------------------------

    async def list_page(
        self,
        prefix: str,
        *,
        delimiter: str | None = None,
        start_after: str | None = None,
        token: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        elif start_after:
            kwargs["StartAfter"] = start_after
        # The page is made on the worker thread: a walk's request loop has
        # better things to do than a thousand ObjectInfo.
        page: ListPage
        page, truncated = await self._call(
            "list_objects_v2", f"listing s3://{self.bucket}/{prefix}", consume=_list_page, **kwargs
        )
        if truncated and not page.next_token:
            raise TemporaryFailure(f"listing s3://{self.bucket}/{prefix}: truncated page without a token")
        return page

    async def multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        found: list[tuple[str, str, int]] = []
        markers: dict[str, Any] = {}
        while True:
            response = await self._call(
                "list_multipart_uploads",
                f"listing the multipart uploads of s3://{self.bucket}/{prefix}",
                Bucket=self.bucket,
                Prefix=prefix,
                **markers,
            )
            for item in response.get("Uploads", []):
                initiated = item.get("Initiated")
                initiated_ns = int(initiated.timestamp() * 1e9) if initiated is not None else 0
                found.append((item["Key"], item["UploadId"], initiated_ns))
            if not response.get("IsTruncated"):
                break
            markers = {
                "KeyMarker": response.get("NextKeyMarker", ""),
                "UploadIdMarker": response.get("NextUploadIdMarker", ""),
            }
            if not markers["KeyMarker"]:
                raise TemporaryFailure(f"listing multipart uploads of s3://{self.bucket}/{prefix}: no marker")
        uploads: list[MultipartUpload] = []
        slots = trio.Semaphore(PARTS_LISTED_AT_ONCE)

        async def count_parts(key: str, upload_id: str, initiated_ns: int) -> None:
            parts = size = 0
            marker: dict[str, Any] = {}
            try:
                while True:
                    response = await self._call(
                        "list_parts",
                        f"ListParts s3://{self.bucket}/{key}",
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        **marker,
                    )
                    for part in response.get("Parts", []):
                        parts += 1
                        size += int(part.get("Size", 0))
                    if not response.get("IsTruncated"):
                        break
                    marker = {"PartNumberMarker": int(response.get("NextPartNumberMarker", 0))}
            except NotFound:
                return  # completed or aborted since it was listed
            finally:
                slots.release()
            uploads.append(MultipartUpload(key, upload_id, initiated_ns, parts, size))

        async with trio.open_nursery() as nursery:
            for key, upload_id, initiated_ns in found:
                await slots.acquire()
                nursery.start_soon(count_parts, key, upload_id, initiated_ns)
        uploads.sort(key=lambda upload: (upload.key, upload.upload_id))
        return uploads

    async def head(self, key: str) -> ObjectInfo:
        response = await self._call(
            "head_object", f"HEAD s3://{self.bucket}/{key}", Bucket=self.bucket, Key=key
        )
        return _object_info(key, response)

    async def _get_object(self, key: str, start: int, end: int, etag: str | None, **call_options: Any) -> Any:
        """GetObject of [start, end), pinned to *etag* (If-Match); *call_options*
        go to :meth:`_call` (retries, limiter, consume, count_errors)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'
        return await self._call("get_object", f"GET s3://{self.bucket}/{key}", **call_options, **kwargs)

    async def _get_body(
        self, key: str, start: int, end: int, etag: str | None, *, limiter: trio.CapacityLimiter
    ) -> Any:
        """One GetObject of [start, end), its body left to read, for a stream
        (which retries and counts): the caller's *limiter* must stand for the
        connection until the body is closed."""
        response = await self._get_object(
            key, start, end, etag, retries=0, limiter=limiter, count_errors=False
        )
        return response["Body"]

    async def _get_bytes(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        retries: int | None = None,
        count_errors: bool = True,
    ) -> bytes:
        """GetObject of [start, end), its body read in the same call."""

        def read_body(response: Any) -> bytes:
            body = response["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            if len(data) != end - start:
                raise TemporaryFailure(f"GET s3://{self.bucket}/{key}: {len(data)} bytes of {end - start}")
            return data

        data: bytes = await self._get_object(
            key, start, end, etag, retries=retries, consume=read_body, count_errors=count_errors
        )
        return data

    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        if end <= start:
            return b""
        data = await self._get_bytes(key, start, end, etag)
        self.counters["bytes_in"] += len(data)
        return data

    async def _get_bytes_once(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        """:meth:`_get_bytes` in one attempt, uncounted: for a stream."""
        return await self._get_bytes(key, start, end, etag, retries=0, count_errors=False)

    def stream(self, key: str, start: int, end: int, etag: str | None = None) -> S3Stream:
        return S3Stream(
            key,
            start,
            end,
            etag,
            what=f"reading s3://{self.bucket}/{key}",
            connections=self._connections,
            retry=self._retry,
            get_body=self._get_body,
            get_bytes=self._get_bytes_once,
        )

    async def open_stream(self, key: str, start: int, end: int, etag: str | None = None) -> S3Stream:
        return await opened(self.stream(key, start, end, etag), end > start)

    async def probe(self, key_prefix: str) -> BucketProbe:
        # One listing both proves the bucket and finds GitLab's lock files.
        prefix = key_prefix + LOCKFILE_DIR
        response = await self._call(
            "list_objects_v2",
            f"listing s3://{self.bucket}/{prefix}",
            retries=1,
            Bucket=self.bucket,
            Prefix=prefix,
            MaxKeys=10,
            consume=_list_page,
        )
        page: ListPage = response[0]
        names = {info.key.rsplit("/", 1)[-1] for info in page.objects}
        return BucketProbe(database_in_use="database-in-use" in names)

    # -- writing ------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> str:
        """PutObject with the driver's headers; returns the ETag."""
        self.counters["bytes_out"] += len(data)
        response = await self._call(
            "put_object",
            f"PUT s3://{self.bucket}/{key}",
            Bucket=self.bucket,
            Key=key,
            Body=data,
            **self._headers,
        )
        return str(response.get("ETag", "")).strip('"')

    async def create_multipart(self, key: str) -> str:
        """CreateMultipartUpload with the driver's headers; returns the upload id."""
        response = await self._call(
            "create_multipart_upload",
            f"CreateMultipartUpload s3://{self.bucket}/{key}",
            Bucket=self.bucket,
            Key=key,
            **self._headers,
        )
        upload_id = str(response["UploadId"])
        if self.journal is not None:
            # Durable before any part is sent (an fsync: on a worker thread).
            await trio.to_thread.run_sync(self.journal.begun, key, upload_id)
        return upload_id

    def _end_upload(self, upload_id: str) -> None:
        if self.journal is not None:
            self.journal.ended(upload_id)

    async def upload_exists(self, key: str, upload_id: str) -> bool:
        """Whether multipart upload *upload_id* of *key* is still open (ListParts)."""
        try:
            await self._call(
                "list_parts",
                f"ListParts s3://{self.bucket}/{key}",
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MaxParts=1,
            )
        except NotFound:
            return False
        return True

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        self.counters["bytes_out"] += len(data)
        extra = (
            {"ChecksumAlgorithm": self._headers["ChecksumAlgorithm"]}
            if "ChecksumAlgorithm" in self._headers
            else {}
        )
        response = await self._call(
            "upload_part",
            f"UploadPart {number} of s3://{self.bucket}/{key}",
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            **extra,
        )
        return str(response["ETag"]).strip('"')

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
        """UploadPartCopy of bytes [start, end) of *source* as part *number*."""
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "UploadId": upload_id,
            "PartNumber": number,
            "CopySource": {"Bucket": self.bucket, "Key": source},
            "CopySourceRange": f"bytes={start}-{end - 1}",
        }
        if source_etag:
            kwargs["CopySourceIfMatch"] = f'"{source_etag}"'
        response = await self._call(
            "upload_part_copy", f"UploadPartCopy {number} of s3://{self.bucket}/{key}", **kwargs
        )
        return str(response["CopyPartResult"]["ETag"]).strip('"')

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        """CompleteMultipartUpload with the parts sorted by number; returns the ETag.

        An attempt whose answer was lost may have completed the upload: the
        retry then finds no such upload.  The object is ours if its ETag is the
        one these parts make (S3's multipart ETag); anything else is an error,
        never a success on somebody else's object.
        """
        what = f"CompleteMultipartUpload s3://{self.bucket}/{key}"
        parts = sorted(parts)
        try:
            response = await self._call(
                "complete_multipart_upload",
                what,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{etag}"'} for n, etag in parts]},
            )
        except NotFound as exc:
            if exc.code != "NoSuchUpload":
                raise
            try:
                expected = multipart_etag([etag for _, etag in parts])
            except ValueError:  # not MD5 ETags (SSE-C, some S3-compatible stores)
                expected = ""
            try:
                stored = await self.head(key)
            except NotFound:
                stored = None
            if stored is None or not expected or stored.etag != expected:
                raise RequestFailed(
                    f"{what}: the upload is gone and the object is not the one it would have made",
                    code="NoSuchUpload",
                    status=404,
                ) from exc
            log.info("%s: completed by an earlier attempt whose answer was lost", what)
            self._end_upload(upload_id)
            return expected
        self._end_upload(upload_id)
        return str(response.get("ETag", "")).strip('"')

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload; only ever called for uploads s3regfs created."""
        with contextlib.suppress(NotFound):
            await self._call(
                "abort_multipart_upload",
                f"AbortMultipartUpload s3://{self.bucket}/{key}",
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )
        self._end_upload(upload_id)

    async def delete(self, key: str) -> None:
        """DeleteObject (a missing key is no error, as in S3)."""
        await self._call("delete_object", f"DELETE s3://{self.bucket}/{key}", Bucket=self.bucket, Key=key)

    async def delete_many(self, keys: list[str]) -> None:
        """DeleteObjects in batches of at most 1,000; raises on any key that failed."""
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            response = await self._call(
                "delete_objects",
                f"DeleteObjects ({len(batch)} keys) in s3://{self.bucket}",
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                code = str(first.get("Code", ""))
                # Each key is authorized on its own (s3:DeleteObject): a refusal
                # is EACCES, as DeleteObject's would be, not EIO.
                failure = AccessDenied if code == "AccessDenied" else RequestFailed
                raise failure(
                    f"DeleteObjects: {len(errors)} keys not deleted, first {first.get('Key')!r}: {code}",
                    code=code,
                )

    async def move_prefix(self, prefix: str, dest_prefix: str, *, also: Sequence[str] = ()) -> dict[str, str]:
        """Copy every object under *prefix* to *dest_prefix*, at most
        multipartcopymaxconcurrency (and half of max_connections) at once, each
        as :meth:`copy` copies, then
        delete the sources in DeleteObjects batches; see ObjectStore."""
        sources: list[ObjectInfo] = []
        token: str | None = None
        while True:
            page = await self.list_page(prefix, token=token)
            sources.extend(page.objects)
            token = page.next_token
            if token is None:
                break
        # S3 would refuse a key over KEY_MAX in the middle of the copies,
        # leaving both trees behind: refuse the whole move before any copy.
        relatives = [info.key[len(prefix) :] for info in sources]
        for relative in [*relatives, *also]:
            if len((dest_prefix + relative).encode("utf-8")) > KEY_MAX:
                raise KeyTooLong(f"{dest_prefix}{relative}: over S3's {KEY_MAX}-byte limit for a key")
        # Half the connections at most: reads and listings go on meanwhile.
        at_once = min(self._driver.multipartcopymaxconcurrency, max(1, self._connections.total // 2))
        limiter = trio.CapacityLimiter(at_once)
        new_etags: dict[str, str] = {}

        async def copy_one(info: ObjectInfo, relative: str) -> None:
            async with limiter:
                new_etags[relative] = await self.copy(info.key, dest_prefix + relative, info.size, info.etag)

        with collapse_exception_groups():
            async with trio.open_nursery() as nursery:
                for info, relative in zip(sources, relatives, strict=True):
                    nursery.start_soon(copy_one, info, relative)
        await self.delete_many([info.key for info in sources])
        return new_etags

    async def copy(self, source: str, dest: str, size: int, source_etag: str | None = None) -> str:
        """Copy an object as the driver does: CopyObject up to
        multipartcopythresholdsize, else a multipart copy in
        multipartcopychunksize parts, at most multipartcopymaxconcurrency at once.
        The copy carries the driver's headers.  Returns the new ETag."""
        driver = self._driver
        if size <= driver.multipartcopythresholdsize:
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": dest,
                "CopySource": {"Bucket": self.bucket, "Key": source},
                "MetadataDirective": "REPLACE",
                **self._headers,
            }
            if source_etag:
                kwargs["CopySourceIfMatch"] = f'"{source_etag}"'
            response = await self._call(
                "copy_object", f"CopyObject s3://{self.bucket}/{source} -> {dest}", **kwargs
            )
            return str(response["CopyObjectResult"]["ETag"]).strip('"')
        upload_id = await self.create_multipart(dest)
        chunk = driver.multipartcopychunksize
        parts: list[tuple[int, str]] = []
        limiter = trio.CapacityLimiter(driver.multipartcopymaxconcurrency)

        async def copy_part(number: int, start: int) -> None:
            async with limiter:
                etag = await self.upload_part_copy(
                    dest, upload_id, number, source, start, min(start + chunk, size), source_etag
                )
            parts.append((number, etag))

        try:
            with collapse_exception_groups():
                async with trio.open_nursery() as nursery:
                    for index, start in enumerate(range(0, size, chunk)):
                        nursery.start_soon(copy_part, index + 1, start)
            return await self.complete_multipart(dest, upload_id, parts)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.abort_multipart(dest, upload_id)
            raise
