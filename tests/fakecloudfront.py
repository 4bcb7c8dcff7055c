# SPDX-License-Identifier: MIT
"""A stand-in for a CloudFront distribution on loopback, for tests.

It checks what CloudFront checks of a canned-policy signed URL: the three
query parameters (Expires, Signature, Key-Pair-Id), the Key-Pair-Id among the
trusted ones, the expiry against its clock, and the RSA-SHA1 signature of the
policy rebuilt from the URL (its ``Resource`` is the URL without those
parameters) against the key pair's public key; anything wrong is a 403.  A
good request gets the object's bytes (a Range gives 206 and Content-Range,
as CloudFront answers).

Its origin is a dict of key -> bytes that the test fills (:meth:`warm`
fetches them from the bucket beforehand), as an edge that already holds the
objects: so the S3 endpoint's log shows only what the mount itself asked of
S3.  Faults on demand: every answer a given status (:attr:`fail_with`), one
byte flipped in what it serves of a key (:attr:`corrupt`), keys it does not
hold answer 404.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import socket
import threading
import time
import urllib.parse
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def new_key_pair(directory: Any, name: str = "pk") -> tuple[rsa.RSAPrivateKey, str]:
    """A fresh RSA key pair; its private key written to *directory* as PKCS#1 PEM: (key, path)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = f"{directory}/{name}.pem"
    with open(path, "wb") as file:
        file.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return key, path


def canned_policy(resource: str, expires: int) -> bytes:
    """CloudFront's canned policy for *resource*, byte for byte as it rebuilds it."""
    condition = f'{{"DateLessThan":{{"AWS:EpochTime":{expires}}}}}'
    return f'{{"Statement":[{{"Resource":"{resource}","Condition":{condition}}}]}}'.encode()


class FakeCloudFront:
    """See the module docstring.  Use as a context manager; :attr:`base_url`
    is the distribution's URL (``http://127.0.0.1:PORT/``)."""

    def __init__(self, trusted: dict[str, rsa.RSAPublicKey]) -> None:
        self.trusted = trusted
        self.objects: dict[str, bytes] = {}
        #: Every request: (key, Range header or "", status).
        self.requests: list[tuple[str, str, int]] = []
        #: Answer every request with this status (None: serve).
        self.fail_with: int | None = None
        #: key -> offset of a byte flipped in what is served of that key.
        self.corrupt: dict[str, int] = {}
        #: Seconds added to the clock (a test moves time forward).
        self.clock_skew = 0.0
        #: Break the connection after sending this many bytes of a body (None: never).
        self.cut_after: int | None = None
        #: Bytes a second of each connection (None: as fast as it goes): a distant edge.
        self.pace: float | None = None
        self._lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._answer(self)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeCloudFront:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def warm(self, s3: Any, bucket: str, keys: list[str]) -> None:
        """Fetch *keys* from the bucket into the edge."""
        for key in keys:
            self.objects[key] = s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def served(self, status: int = 206) -> list[str]:
        """Keys of the requests answered with *status*."""
        with self._lock:
            return [key for key, _, answered in self.requests if answered == status]

    def _refusal(self, url: str, query: dict[str, list[str]]) -> str:
        """Why CloudFront would refuse *url* ("" if it would not)."""
        try:
            expires = query["Expires"][0]
            signature = query["Signature"][0]
            key_pair = query["Key-Pair-Id"][0]
        except KeyError:
            return "MissingKey"
        public = self.trusted.get(key_pair)
        if public is None:
            return "untrusted key pair"
        if not expires.isdigit() or int(expires) < time.time() + self.clock_skew:
            return "expired"
        raw = base64.b64decode(signature.replace("-", "+").replace("_", "=").replace("~", "/"))
        try:
            public.verify(raw, canned_policy(url, int(expires)), padding.PKCS1v15(), hashes.SHA1())
        except Exception:  # noqa: BLE001 - cryptography's InvalidSignature and friends
            return "bad signature"
        return ""

    def _answer(self, request: http.server.BaseHTTPRequestHandler) -> None:
        path, _, query_text = request.path.partition("?")
        key = urllib.parse.unquote(path.lstrip("/"))
        query = urllib.parse.parse_qs(query_text)
        byte_range = request.headers.get("Range", "")
        status, body, headers = self._response(self.base_url + path.lstrip("/"), key, query, byte_range)
        with self._lock:
            self.requests.append((key, byte_range, status))
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        piece = 64 * 1024
        for offset in range(0, len(body), piece):
            if self.cut_after is not None and offset >= self.cut_after:
                request.close_connection = True
                request.wfile.flush()
                request.connection.shutdown(socket.SHUT_RDWR)
                return
            request.wfile.write(body[offset : offset + piece])
            if self.pace:
                time.sleep(piece / self.pace)

    def _response(
        self, url: str, key: str, query: dict[str, list[str]], byte_range: str
    ) -> tuple[int, bytes, dict[str, str]]:
        if self.fail_with is not None:
            return self.fail_with, b"<Error>fault</Error>", {"Content-Type": "text/xml"}
        refusal = self._refusal(url, query)
        if refusal:
            return 403, json.dumps({"Message": refusal}).encode(), {"Content-Type": "application/json"}
        data = self.objects.get(key)
        if data is None:
            return 404, b"<Error>NoSuchKey</Error>", {"Content-Type": "text/xml"}
        if key in self.corrupt:
            damaged = bytearray(data)
            damaged[self.corrupt[key]] ^= 0xFF
            data = bytes(damaged)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", byte_range)
        if match is None:
            return 200, data, {"Content-Type": "application/octet-stream"}
        start = int(match.group(1))
        end = min(len(data), int(match.group(2)) + 1 if match.group(2) else len(data))
        if start >= len(data):
            return 416, b"", {"Content-Range": f"bytes */{len(data)}"}
        return (
            206,
            data[start:end],
            {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"bytes {start}-{end - 1}/{len(data)}",
            },
        )
