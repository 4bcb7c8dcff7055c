# SPDX-License-Identifier: MIT
"""A small fault-injecting HTTP proxy for tests, on loopback, in front of moto.

Rules decide, per request, what goes wrong: an error answer instead of
forwarding (500, 503 SlowDown, 429, any 4xx), an answer lost after the
request reached moto, a body cut short (the full Content-Length promised,
fewer bytes sent, then the connection closed), a stall (headers and some
bytes, then silence past the client's read timeout), or a delay.  A rule
fires for a given *count* of matching requests, or for a *probability* of
them (drawn from a seeded generator; with parallel requests the order of the
draws, and so which request fails, still varies from run to run).  :meth:`outage`
refuses connections for a while: the listening socket is closed and every
open connection is reset, as a dead endpoint would do.

Every request is recorded with its arrival time, so tests can count attempts
and measure backoff and request rates.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Match = Callable[[str, str], bool]


@dataclass
class Rule:
    """What to do with matching requests.

    *status* non-zero: answer it with S3 error *code* instead of forwarding
    (with *lose_response*, forward first and then answer the error, as when
    the real answer is lost on the way back).  *status* 0: forward, after
    *delay* seconds; with *truncate_after*, send only that many body bytes of
    the full promised length, then wait *stall* seconds and close the
    connection.  The rule fires *count* times (None: no limit), each matching
    request with *probability*.
    """

    match: Match
    status: int = 500
    code: str = "InternalError"
    count: int | None = None
    probability: float = 1.0
    delay: float = 0.0
    truncate_after: int | None = None
    stall: float = 0.0
    lose_response: bool = False
    #: Only requests whose Range header starts at this offset or later.
    range_from: int | None = None
    hits: int = 0

    def fires(
        self, method: str, path: str, rng: random.Random, headers: dict[str, str] | None = None
    ) -> bool:
        if not self.match(method, path):
            return False
        if self.range_from is not None:
            found = re.match(r"bytes=(\d+)-", (headers or {}).get("range", ""))
            if found is None or int(found.group(1)) < self.range_from:
                return False
        if self.count is not None and self.hits >= self.count:
            return False
        if self.probability < 1.0 and rng.random() >= self.probability:
            return False
        self.hits += 1
        return True


@dataclass
class Request:
    method: str
    path: str
    time: float
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FaultProxy:
    upstream_port: int
    rules: list[Rule] = field(default_factory=list)
    seed: int = 0
    log: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _connections: set[socket.socket] = field(default_factory=set)
    _rng: random.Random = field(default_factory=random.Random)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(r.method, r.path) for r in self.log]

    def start(self) -> FaultProxy:
        self._rng.seed(self.seed)
        self._listen(0)
        return self

    def _listen(self, port: int) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # No Nagle: headers and body are separate writes (see s3emulator.py).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with proxy._lock:
                    proxy._connections.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                with proxy._lock:
                    proxy.log.append(Request(self.command, self.path, time.monotonic(), headers))
                    rule = next(
                        (r for r in proxy.rules if r.fires(self.command, self.path, proxy._rng, headers)),
                        None,
                    )
                if rule is not None and rule.delay:
                    time.sleep(rule.delay)
                if rule is not None and rule.status and not rule.lose_response:
                    self._error(rule)
                    return
                status, headers, data = self._forward(body)
                if rule is not None and rule.lose_response:
                    self._error(rule)
                    return
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                if self.command == "HEAD":  # the length of the body a GET would have
                    self.send_header("Content-Length", dict(headers).get("Content-Length", "0"))
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if rule is None or rule.truncate_after is None:
                    self.wfile.write(data)
                    return
                self.wfile.write(data[: rule.truncate_after])
                self.wfile.flush()
                if rule.stall:
                    time.sleep(rule.stall)
                self._hang_up()

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    return response.status, response.getheaders(), response.read()
                finally:
                    upstream.close()

            def _error(self, rule: Rule) -> None:
                payload = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{rule.code}</Code>'
                    f"<Message>injected by the test proxy</Message></Error>"
                ).encode()
                self.send_response(rule.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _hang_up(self) -> None:
                # An orderly close (FIN), so the client first receives every
                # byte sent (a reset would make its kernel drop them unread).
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def handle_one_request(self) -> None:
                with contextlib.suppress(OSError, ValueError):
                    super().handle_one_request()
                if self.connection.fileno() == -1:
                    self.close_connection = True

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        self._server = server
        self._port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def _close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                connection.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._close()

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Refuse connections (and reset open ones) until the block ends."""
        self._close()
        try:
            yield
        finally:
            self._listen(self._port)

    def count(self, match: Match) -> int:
        with self._lock:
            return sum(1 for r in self.log if match(r.method, r.path))

    def times(self, match: Match) -> list[float]:
        """Arrival times (monotonic) of the matching requests."""
        with self._lock:
            return [r.time for r in self.log if match(r.method, r.path)]


def upload_part(method: str, path: str) -> bool:
    return method == "PUT" and "partNumber=" in path and "uploadId=" in path


def complete_upload(method: str, path: str) -> bool:
    return method == "POST" and "uploadId=" in path


def put_object(method: str, path: str) -> bool:
    return method == "PUT" and "uploadId=" not in path and "x-id=CopyObject" not in path


def get_object(method: str, path: str) -> bool:
    return method == "GET" and "list-type=" not in path and "uploadId=" not in path


def list_objects(method: str, path: str) -> bool:
    return method == "GET" and "list-type=2" in path


def any_request(method: str, path: str) -> bool:
    return True
