# SPDX-License-Identifier: MIT
"""A distant S3 on loopback: a proxy in front of moto_server that behaves like
S3 seen from far away, for benchmarks.

Each client connection gets its own bandwidth cap in each direction (S3 gives
one connection tens of MB/s: throughput comes only from parallel
connections), every request waits *latency* seconds before it is forwarded,
a LIST page waits *list_latency* more, and a fraction *tail_fraction* of the
requests waits *tail_latency* more (a slow tail).  There is no cap on the
number of connections.  Responses are streamed, so a slow reader holds back
nothing but its own connection.

Profiles (``PROFILES``): ``T`` (throughput) is real S3 slowed 8 times so a
2-core machine can carry it: 11 MB/s per connection, 240 ms before each
request.  ``L`` (latency): no bandwidth cap, 30 ms before each request, 75 ms
more per LIST page.

Only loopback; threads are daemons and end with :meth:`DistantS3.stop`.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Profile:
    name: str
    #: Bytes per second per connection and direction (0: no cap).
    bandwidth: float
    latency: float
    list_latency: float = 0.0
    tail_fraction: float = 0.0
    tail_latency: float = 0.0


PROFILES = {
    "T": Profile("T", bandwidth=11_000_000, latency=0.240),
    "L": Profile("L", bandwidth=0, latency=0.030, list_latency=0.075),
}


class _Throttle:
    """Keeps one direction of one connection under *rate* bytes per second,
    with a burst of at most BURST bytes: idle time (between requests, or the
    emulated delay) earns no more credit than that."""

    BURST = CHUNK

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._started = time.monotonic()
        self._sent = 0

    def account(self, count: int) -> None:
        if not self._rate:
            return
        now = time.monotonic()
        # Forget credit beyond one burst earned while nothing was sent.
        self._started = max(self._started, now - (self._sent + self.BURST) / self._rate)
        self._sent += count
        ahead = self._sent / self._rate - (now - self._started)
        if ahead > 0:
            time.sleep(ahead)


@dataclass
class DistantS3:
    """The proxy; :attr:`url` is its endpoint once :meth:`start` returned."""

    upstream_port: int
    profile: Profile
    seed: int = 0
    requests: int = 0
    list_requests: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rng: random.Random = field(default_factory=random.Random)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DistantS3:
        self._rng.seed(self.seed)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without this,
                # Nagle's algorithm and the client's delayed ACK add 40 ms to
                # every answer on a kept-alive connection.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # One cap per connection and direction, for the connection's life.
                self.up = _Throttle(proxy.profile.bandwidth)
                self.down = _Throttle(proxy.profile.bandwidth)

            def _wait(self) -> None:
                profile = proxy.profile
                delay = profile.latency
                listing = self.command == "GET" and "list-type=2" in self.path
                if listing:
                    delay += profile.list_latency
                with proxy._lock:
                    proxy.requests += 1
                    proxy.list_requests += listing
                    if profile.tail_fraction and proxy._rng.random() < profile.tail_fraction:
                        delay += profile.tail_latency
                time.sleep(delay)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                pieces = []
                while length > 0:
                    piece = self.rfile.read(min(CHUNK, length))
                    if not piece:
                        return
                    self.up.account(len(piece))
                    pieces.append(piece)
                    length -= len(piece)
                self._wait()
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=300)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    upstream.request(self.command, self.path, body=b"".join(pieces), headers=headers)
                    response = upstream.getresponse()
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection"):
                            self.send_header(key, value)
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    promised = int(response.getheader("Content-Length") or -1)
                    sent = 0
                    while chunk := response.read(CHUNK):
                        self.wfile.write(chunk)
                        self.down.account(len(chunk))
                        sent += len(chunk)
                    if 0 <= sent < promised:
                        # Upstream cut its answer (http.client's read says
                        # nothing): cut ours too, or the client waits for the
                        # rest until its read timeout.
                        self.close_connection = True
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (OSError, ValueError, http.client.HTTPException):
                    # The answer may be cut: the client must not wait on this
                    # connection for the rest of it.
                    self.close_connection = True

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
