# SPDX-License-Identifier: MIT
"""Blob data through the registry's CloudFront distribution, S3 behind it.

The registry's ``cloudfront`` storage middleware hands pulling clients a
signed CloudFront URL, ``baseurl`` + the object's S3 key (root directory
included), instead of a presigned S3 URL.  :class:`CloudFrontReads` reads the
same URLs for the mount: ranged GETs of blob data signed with a canned policy
(botocore's CloudFrontSigner, RSA-SHA1 through ``cryptography``), each URL
reused until shortly before it expires.  Only reads of blob data come here;
listings, link files, manifests for the views, ``_uploads`` and every write
go to S3 as before.

Falling back: CloudFront answering anything but the range asked for (403 for
a bad or expired signature or an untrusted key, 404, 5xx, a short or
mismatched range), or not answering at all, is never retried there: the read
goes on from S3 where CloudFront stopped (If-Match on the ETag, as every S3
read), the fallback is counted and logged (one warning a minute at most).
A reader never sees a byte twice or out of order across the switch.

What CloudFront serves is not pinned to the ETag (an edge may cache an
earlier upload of the same digest, whose bytes are the same): a whole blob
read from its start is hashed and checked against its digest before its last
byte is handed out (reader.py).  A key whose CloudFront bytes did not match
(:meth:`CloudFrontReads.distrust`) is read from S3 for DISTRUST_SECONDS.
Random reads of a blob are not checked (nothing to check them against).

``ipfilteredby`` (aws, awsregion): the middleware sends clients whose address
is in AWS's published ranges (of the listed regions) straight to S3; the mount
does the same with the local address it uses toward the S3 endpoint, checked
against ip-ranges.json fetched at mount and every ``updatefrequency``.  When
the ranges cannot be fetched, reads go through CloudFront (with a warning),
as the middleware does.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import json
import logging
import socket
import time
import urllib.parse
from collections import OrderedDict
from typing import Any

import botocore.signers
import trio
import urllib3
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from s3regfs.config import CloudFrontParams, MountOptions
from s3regfs.errors import StorageError
from s3regfs.storage.s3 import Connections, RetryPolicy, S3Store, S3Stream, opened

log = logging.getLogger(__name__)

#: A signed URL is signed again once less than this share of its validity is left.
RESIGN_SHARE = 0.25
#: Signed URLs kept for reuse (by key).
SIGNED_URLS_KEPT = 4096
#: A key whose CloudFront bytes failed their digest is read from S3 this long.
DISTRUST_SECONDS = 3600.0
DISTRUSTED_KEPT = 10_000
#: At most one fallback warning in this many seconds.
WARN_INTERVAL = 60.0
#: After this many fallbacks in a row (no CloudFront success between), reads
#: go straight to S3 for PAUSE_SECONDS: a hung edge would otherwise cost
#: every read a connect or read timeout first.
FAILURES_BEFORE_PAUSE = 3
PAUSE_SECONDS = 30.0
#: The ip-ranges.json fetch: its timeout, and its retry after a failure.
IP_RANGES_TIMEOUT = 30.0
IP_RANGES_FIRST_TIMEOUT = 5.0
IP_RANGES_RETRY = 300.0


class CloudFrontFailure(StorageError):
    """CloudFront did not serve the range (any status but the range, a short
    body, no answer): the read goes on from S3."""


class SignedUrls:
    """Canned-policy signed URLs of keys under *params.baseurl*, reused
    until less than RESIGN_SHARE of their validity is left."""

    def __init__(self, params: CloudFrontParams, clock: Any = time.time) -> None:
        key = serialization.load_pem_private_key(params.key_pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)  # config.load_cloudfront_key checked it
        self._key = key
        self._signer = botocore.signers.CloudFrontSigner(params.keypairid, self._sign)
        self._base = params.baseurl
        self._duration = params.duration
        self._clock = clock
        self._urls: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.signed = 0

    def _sign(self, message: bytes) -> bytes:
        return self._key.sign(message, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - CloudFront's algorithm

    def url(self, key: str) -> str:
        """The signed URL of *key* (``baseurl`` + the key, as the middleware builds it)."""
        now = self._clock()
        kept = self._urls.get(key)
        if kept is not None and kept[1] - now > self._duration * RESIGN_SHARE:
            self._urls.move_to_end(key)
            return kept[0]
        # CloudFront's policies hold whole seconds: the middleware's Go signer
        # truncates the expiry the same way.
        expires = int(now + self._duration)
        resource = self._base + urllib.parse.quote(key, safe="/-_.~")
        signed = self._signer.generate_presigned_url(
            resource, date_less_than=datetime.datetime.fromtimestamp(expires, datetime.UTC)
        )
        self.signed += 1
        self._urls[key] = (signed, float(expires))
        self._urls.move_to_end(key)
        while len(self._urls) > SIGNED_URLS_KEPT:
            self._urls.popitem(last=False)
        return signed


class AwsRanges:
    """``ipfilteredby``: whether this host is in AWS (or in the listed
    regions) as the middleware decides it for a client, so reads go straight
    to S3.  :attr:`direct` is False until the ranges were fetched once."""

    def __init__(
        self, params: CloudFrontParams, endpoint: tuple[str, int], http: urllib3.PoolManager
    ) -> None:
        self._params = params
        self._endpoint = endpoint
        self._http = http
        self.direct = False
        self.address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self.fetched = 0

    def _networks(self, document: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The document's networks (of the listed regions); ValueError if it
        is not shaped as ip-ranges.json is."""
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        regions = set(self._params.awsregions) if self._params.ipfilteredby == "awsregion" else None
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for listing, field in (("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")):
            entries = document.get(listing) or []
            if not isinstance(entries, list):
                raise ValueError(f"{listing} is not a list")
            for entry in entries:
                if not isinstance(entry, dict):
                    continue
                if regions is not None and str(entry.get("region", "")).lower() not in regions:
                    continue
                try:
                    networks.append(ipaddress.ip_network(str(entry.get(field, "")), strict=False))
                except ValueError:
                    log.warning("ip-ranges: unparseable prefix %r left out", entry.get(field))
        return networks

    def refresh(self, timeout: float = IP_RANGES_TIMEOUT) -> bool:
        """Fetch the ranges and decide again (blocking: on a worker thread);
        False if they could not be fetched or read (logged: the last decision
        stands, CloudFront before the first fetch)."""
        try:
            response = self._http.request(
                "GET", self._params.iprangesurl, timeout=timeout, retries=False, preload_content=True
            )
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            networks = self._networks(json.loads(response.data))
        except (urllib3.exceptions.HTTPError, ValueError, OSError) as exc:
            log.warning(
                "cannot fetch AWS's IP ranges from %s (%s): blob data %s",
                self._params.iprangesurl,
                exc,
                "still read straight from S3" if self.direct else "read through CloudFront",
            )
            return False
        self.address = local_address(*self._endpoint)
        self.direct = self.address is not None and any(self.address in network for network in networks)
        self.fetched += 1
        log.info(
            "ipfilteredby=%s: this host reaches S3 from %s, %s: blob data read %s",
            self._params.ipfilteredby,
            self.address,
            "in the ranges" if self.direct else "not in the ranges",
            "straight from S3" if self.direct else "through CloudFront",
        )
        return True

    async def keep_fresh(self) -> None:
        """Fetch the ranges again every ``updatefrequency`` (sooner after a failure)."""
        while True:
            if await trio.to_thread.run_sync(self.refresh, abandon_on_cancel=True):
                await trio.sleep(self._params.updatefrequency)
            else:
                await trio.sleep(min(IP_RANGES_RETRY, self._params.updatefrequency))


def http_pool(url: str, params: CloudFrontParams, options: MountOptions) -> urllib3.PoolManager:
    """The connection pool for requests to *url*, as boto3 would make them:
    through the environment's ``HTTPS_PROXY``/``HTTP_PROXY`` unless
    ``NO_PROXY`` names the host, TLS checked against ``AWS_CA_BUNDLE`` when
    it is set (else the system's certificates); config.py read them."""
    parts = urllib.parse.urlsplit(url)
    settings: dict[str, Any] = {
        "maxsize": options.max_connections,
        "block": False,
        "timeout": urllib3.Timeout(connect=options.connect_timeout, read=options.read_timeout),
        "retries": False,
    }
    if params.ca_bundle:
        settings["ca_certs"] = params.ca_bundle
    proxy = dict(params.proxies).get(parts.scheme.lower())
    if proxy and not _bypassed(parts.hostname or "", params.no_proxy):
        return urllib3.ProxyManager(proxy, **settings)
    return urllib3.PoolManager(**settings)


def _bypassed(host: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (comma-separated hosts and domain suffixes, ``*``
    for all) names *host*, as curl and botocore read it."""
    for entry in (item.strip().lower() for item in no_proxy.split(",")):
        if entry == "*":
            return True
        entry = entry.lstrip(".")
        if entry and (host.lower() == entry or host.lower().endswith("." + entry)):
            return True
    return False


def local_address(host: str, port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The local address this host uses toward *host*:*port* (a UDP socket's
    connect picks the route; nothing is sent), None if it cannot be found."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(sockaddr)
            return ipaddress.ip_address(probe.getsockname()[0])
    except (OSError, ValueError, IndexError) as exc:
        log.warning("cannot tell this host's address toward %s:%d: %s", host, port, exc)
        return None


class _Body:
    """A CloudFront response body: every failure of it is a CloudFrontFailure."""

    def __init__(self, response: Any, what: str) -> None:
        self._response = response
        self._what = what

    def read(self, size: int) -> bytes:
        try:
            data: bytes = self._response.read(size)
        except Exception as exc:  # noqa: BLE001 - any break of the body: on from S3
            raise CloudFrontFailure(f"{self._what}: {exc}") from exc
        if not data:
            raise CloudFrontFailure(f"{self._what}: the body ended early")
        return data

    def close(self) -> None:
        # A body left unread must not go back to the pool (the next request
        # on that connection would read its rest): its connection is closed.
        if self._response.length_remaining != 0:
            self._response.close()
        self._response.release_conn()


class CloudFrontReads:
    """Ranged reads of blob data through CloudFront, falling back to *s3*:
    the reads half of an ObjectStore (get_range, stream, open_stream), for
    the keys :meth:`routes` says; see the module docstring."""

    def __init__(self, s3: S3Store, params: CloudFrontParams, options: MountOptions) -> None:
        self._s3 = s3
        self._params = params
        self._urls = SignedUrls(params)
        self._http = http_pool(params.baseurl, params, options)
        self._connections: Connections = s3.connections
        self.counters: collections.Counter[str] = collections.Counter()
        # CloudFront failures are never retried there: the read goes on from S3.
        self._retry = RetryPolicy(0, self.counters)
        self._distrusted: OrderedDict[str, float] = OrderedDict()
        self._warned_at = -WARN_INTERVAL
        self._failures_in_a_row = 0
        self._paused_until = 0.0
        self.ranges: AwsRanges | None = None
        if params.ipfilteredby != "none":
            self.ranges = AwsRanges(
                params, s3.endpoint_address(), http_pool(params.iprangesurl, params, options)
            )

    # -- routing --------------------------------------------------------------

    def routes(self, key: str) -> bool:
        """Whether reads of *key* (blob data) go through CloudFront now."""
        if self.ranges is not None and self.ranges.direct:
            return False
        if self._paused_until and time.monotonic() < self._paused_until:
            return False
        until = self._distrusted.get(key)
        if until is not None:
            if time.monotonic() < until:
                return False
            del self._distrusted[key]
        return True

    def distrust(self, key: str) -> None:
        """Bytes of *key* read through CloudFront (or S3 behind it) failed
        their digest: read *key* from S3 for a while (if S3's copy is bad
        too, that read finds it)."""
        until = self._distrusted.get(key)
        if until is not None and time.monotonic() < until:
            return  # the same read failing again (the kernel retries)
        log.error("%r: bytes from CloudFront did not match the digest; read from S3 for now", key)
        self.counters["digest_failures"] += 1
        self._distrusted[key] = time.monotonic() + DISTRUST_SECONDS
        while len(self._distrusted) > DISTRUSTED_KEPT:
            self._distrusted.popitem(last=False)

    def fell_back(self, key: str, exc: Exception) -> None:
        """Count a read that went on from S3, and say so at most once a minute."""
        self.counters["fallbacks"] += 1
        now = time.monotonic()
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= FAILURES_BEFORE_PAUSE and now >= self._paused_until:
            self._paused_until = now + PAUSE_SECONDS
            self.counters["pauses"] += 1
            log.info(
                "CloudFront failed %d reads in a row: blob data read straight from S3 for %.0f s",
                self._failures_in_a_row,
                PAUSE_SECONDS,
            )
        if now - self._warned_at >= WARN_INTERVAL:
            self._warned_at = now
            log.warning(
                "CloudFront did not serve %r (%s): read from S3 instead (%d fallbacks so far)",
                key,
                exc,
                self.counters["fallbacks"],
            )
        else:
            log.debug("CloudFront did not serve %r (%s): read from S3", key, exc)

    def served(self) -> None:
        """CloudFront served a read: it is up."""
        self._failures_in_a_row = 0

    async def start(self) -> None:
        """The first fetch of the IP ranges (with ipfilteredby), before the mount serves."""
        if self.ranges is not None:
            # Short: the mount waits for it.  A failure is logged; keep_fresh tries again.
            await trio.to_thread.run_sync(
                self.ranges.refresh, IP_RANGES_FIRST_TIMEOUT, abandon_on_cancel=True
            )

    async def keep_fresh(self) -> None:
        """Keep the IP ranges fresh (a task for the mount's nursery)."""
        if self.ranges is not None:
            await trio.sleep(self._params.updatefrequency if self.ranges.fetched else IP_RANGES_RETRY)
            await self.ranges.keep_fresh()

    def stats(self) -> dict[str, object]:
        return {
            "requests": self.counters["requests"],
            "bytes": self.counters["bytes_in"],
            "fallbacks": self.counters["fallbacks"],
            "pauses": self.counters["pauses"],
            "digest_failures": self.counters["digest_failures"],
            "signed_urls": self._urls.signed,
            "direct": bool(self.ranges is not None and self.ranges.direct),
        }

    # -- requests -------------------------------------------------------------

    def _open(self, url: str, key: str, start: int, end: int) -> Any:
        """One ranged GET of [start, end) of signed *url* (blocking, on a
        worker thread); the response, its body unread."""
        what = f"GET {self._params.baseurl}{key} bytes {start}-{end - 1}"
        try:
            response = self._http.request(
                "GET",
                url,
                headers={"Range": f"bytes={start}-{end - 1}"},
                preload_content=False,
                redirect=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise CloudFrontFailure(f"{what}: {exc}") from exc
        problem = _range_problem(response, start, end)
        if problem:
            _Body(response, what).close()
            raise CloudFrontFailure(f"{what}: {problem}", status=response.status)
        return response

    async def _get_body(
        self, key: str, start: int, end: int, etag: str | None, *, limiter: trio.CapacityLimiter
    ) -> _Body:
        # Signed and counted here, on the trio thread (the URLs' table is not
        # for worker threads to share).
        url = self._urls.url(key)
        self.counters["requests"] += 1
        response = await self._connections.run(self._open, url, key, start, end, limiter=limiter)
        return _Body(response, f"GET {self._params.baseurl}{key}")

    async def _get_bytes(self, key: str, start: int, end: int, etag: str | None) -> bytes:
        url = self._urls.url(key)
        self.counters["requests"] += 1

        def fetch() -> bytes:
            response = self._open(url, key, start, end)
            body = _Body(response, f"GET {self._params.baseurl}{key}")
            try:
                chunks = []
                position = start
                while position < end:
                    data = body.read(end - position)
                    chunks.append(data)
                    position += len(data)
                return b"".join(chunks)
            finally:
                body.close()

        data: bytes = await self._connections.run(fetch)
        return data

    async def get_range(self, key: str, start: int, end: int, etag: str | None = None) -> bytes:
        if end <= start or not self.routes(key):
            return await self._s3.get_range(key, start, end, etag)
        try:
            data = await self._get_bytes(key, start, end, etag)
            self.counters["bytes_in"] += len(data)
            self.served()
            return data
        except CloudFrontFailure as exc:
            self.fell_back(key, exc)
        return await self._s3.get_range(key, start, end, etag)

    def stream(self, key: str, start: int, end: int, etag: str | None = None) -> FallbackStream | S3Stream:
        if not self.routes(key):
            return self._s3.stream(key, start, end, etag)
        front = S3Stream(
            key,
            start,
            end,
            etag,
            what=f"reading {self._params.baseurl}{key}",
            connections=self._connections,
            retry=self._retry,
            get_body=self._get_body,
            get_bytes=self._get_bytes,
        )
        return FallbackStream(self, self._s3, front, key, end, etag)

    async def open_stream(
        self, key: str, start: int, end: int, etag: str | None = None
    ) -> FallbackStream | S3Stream:
        return await opened(self.stream(key, start, end, etag), end > start)


def _range_problem(response: Any, start: int, end: int) -> str:
    """Why *response* is not bytes [start, end) of the object ("" if it is)."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        unit, _, spec = content_range.partition(" ")
        first, _, rest = spec.partition("-")
        last, _, _total = rest.partition("/")
        if unit != "bytes" or not first.isdigit() or not last.isdigit():
            return f"206 without a byte range ({content_range!r})"
        if int(first) != start or int(last) < end - 1:
            return f"range {content_range!r} for {start}-{end - 1}"
        return ""
    if response.status == 200 and start == 0:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) < end:
            return f"{length} bytes for {end}"
        return ""  # the whole object: its first bytes are read
    return f"HTTP {response.status}"


class FallbackStream:
    """A stream from CloudFront that goes on from S3 where CloudFront failed."""

    def __init__(
        self, owner: CloudFrontReads, s3: S3Store, front: S3Stream, key: str, end: int, etag: str | None
    ) -> None:
        self._owner = owner
        self._s3 = s3
        self._front = front
        self._behind: S3Stream | None = None
        self._key = key
        self._end = end
        self._etag = etag
        self._reserved = False
        self._served = False

    @property
    def position(self) -> int:
        return self._behind.position if self._behind is not None else self._front.position

    async def _fall_back(self, exc: Exception) -> S3Stream:
        self._owner.fell_back(self._key, exc)
        position = self._front.position
        with trio.CancelScope(shield=True):
            await self._front.aclose()
        self._behind = self._s3.stream(self._key, position, self._end, self._etag)
        if self._reserved:
            await self._behind.reserve()
        return self._behind

    async def reserve(self) -> None:
        self._reserved = True
        await (self._behind or self._front).reserve()

    async def open(self) -> None:
        if self._behind is None:
            try:
                await self._front.open()
                return
            except CloudFrontFailure as exc:
                await self._fall_back(exc)
        assert self._behind is not None
        await self._behind.open()

    async def read(self, size: int) -> bytes:
        if self._behind is None:
            try:
                data = await self._front.read(size)
                if not self._served:
                    self._served = True
                    self._owner.served()
                return data
            except CloudFrontFailure as exc:
                await self._fall_back(exc)
        assert self._behind is not None
        return await self._behind.read(size)

    async def aclose(self) -> None:
        try:
            await self._front.aclose()
        finally:
            if self._behind is not None:
                await self._behind.aclose()
