# SPDX-License-Identifier: MIT
"""Blob data through the registry's CloudFront middleware (a fake CloudFront
on loopback that checks signatures as CloudFront does), S3 behind it."""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from s3regfs.config import build, build_cloudfront
from s3regfs.errors import ConfigError
from tests.fakecloudfront import FakeCloudFront, new_key_pair
from tests.util import (
    MotoServer,
    blob_data_gets,
    fuse_test_marker,
    idle_stats,
    mounted,
    put_random_blobs,
    read_stats,
    run_cli,
)

ROOT = "reg"
BLOBS = f"{ROOT}/docker/registry/v2/blobs/sha256"
KEY_PAIR = "APKATESTKEYPAIR"


def _put_blobs(s3: Any, bucket: str, count: int, seed: int) -> dict[str, bytes]:
    """*count* blobs under ROOT: S3 key -> bytes."""
    return put_random_blobs(s3, bucket, count, seed=seed, sizes=(100_000, 3_000_000), root=ROOT + "/")


_data_gets = blob_data_gets


def _stats(mountpoint: Path) -> dict[str, Any]:
    return dict(read_stats(mountpoint)["cloudfront"])


@pytest.fixture
def key_pair(tmp_path: Path) -> tuple[Any, str]:
    return new_key_pair(tmp_path)


@pytest.fixture
def cloudfront(key_pair: tuple[Any, str]) -> Iterator[FakeCloudFront]:
    with FakeCloudFront({KEY_PAIR: key_pair[0].public_key()}) as fake:
        yield fake


def _options(moto: MotoServer, bucket: str, fake: FakeCloudFront, key_path: str, *extra: str) -> list[str]:
    cloudfront = (
        f"cloudfront_baseurl={fake.base_url},cloudfront_privatekey={key_path},cloudfront_keypairid={KEY_PAIR}"
    )
    options = [f"regionendpoint={moto.url},region=us-east-1", cloudfront, *extra]
    return ["-o", ",".join(options), f"{bucket}:/{ROOT}"]


# -- through the mount ----------------------------------------------------------

uses_fuse = fuse_test_marker()


@uses_fuse
def test_blob_data_comes_from_cloudfront_and_the_rest_from_s3(
    moto: MotoServer,
    s3: Any,
    bucket: str,
    key_pair: tuple[Any, str],
    cloudfront: FakeCloudFront,
    tmp_path: Path,
) -> None:
    blobs = _put_blobs(s3, bucket, 8, seed=1)
    link = f"{ROOT}/docker/registry/v2/repositories/lib/app/_layers/sha256/{'a' * 64}/link"
    s3.put_object(Bucket=bucket, Key=link, Body=b"sha256:" + b"a" * 64)
    cloudfront.warm(s3, bucket, list(blobs))
    # The registry's own config.yml names the middleware.
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {
                    "s3": {
                        "regionendpoint": moto.url,
                        "region": "us-east-1",
                        "bucket": bucket,
                        "rootdirectory": f"/{ROOT}",
                    }
                },
                "middleware": {
                    "storage": [
                        {
                            "name": "cloudfront",
                            "options": {
                                "baseurl": cloudfront.base_url,
                                "privatekey": key_pair[1],
                                "keypairid": KEY_PAIR,
                                "duration": "3000s",
                            },
                        }
                    ]
                },
            }
        )
    )
    seen = len(moto.request_lines())
    with mounted(tmp_path / "m", ["--config", str(config)]) as mount:
        for key, data in blobs.items():
            assert (mount.path / key.removeprefix(ROOT + "/")).read_bytes() == data
        # Random reads (a tool reading a layer's tail) come from there too.
        key, data = next(iter(blobs.items()))
        rng = random.Random(5)
        with open(mount.path / key.removeprefix(ROOT + "/"), "rb") as file:
            for _ in range(20):
                offset = rng.randrange(len(data))
                size = rng.randrange(1, 300_000)
                assert os.pread(file.fileno(), size, offset) == data[offset : offset + size]
        assert (mount.path / link.removeprefix(ROOT + "/")).read_bytes() == b"sha256:" + b"a" * 64
        stats = _stats(mount.path)
        metrics = (mount.path / ".s3regfs/metrics").read_text()
    assert _data_gets(moto, seen, bucket) == 0
    assert any(link in line and "GET" in line for line in moto.request_lines()[seen:])
    served = cloudfront.served()
    # baseurl + the S3 key, root directory included, as the middleware signs it.
    assert set(served) == set(blobs) and all(key.startswith(f"{ROOT}/docker/") for key in served)
    assert stats["fallbacks"] == 0 and stats["requests"] >= len(blobs) and stats["digest_failures"] == 0
    assert f"s3regfs_cloudfront_requests_total {float(stats['requests'])}" in metrics
    assert stats["bytes"] >= sum(map(len, blobs.values()))
    # A URL is signed once per key and reused while valid.
    assert stats["signed_urls"] == len(blobs), stats


@uses_fuse
@pytest.mark.parametrize("fault", ["expired", "untrusted", "500", "404", "unreachable"])
def test_reads_fall_back_to_s3_when_cloudfront_does_not_serve(
    moto: MotoServer,
    s3: Any,
    bucket: str,
    key_pair: tuple[Any, str],
    cloudfront: FakeCloudFront,
    tmp_path: Path,
    fault: str,
) -> None:
    blobs = _put_blobs(s3, bucket, 5, seed=2)
    cloudfront.warm(s3, bucket, list(blobs))
    fake = cloudfront
    if fault == "expired":
        fake.clock_skew = 7200.0  # its clock is past every URL's expiry
    elif fault == "untrusted":
        fake.trusted = {KEY_PAIR: new_key_pair(tmp_path, "other")[0].public_key()}
    elif fault in ("500", "404"):
        fake.fail_with = int(fault)
    options = _options(moto, bucket, fake, key_pair[1])
    if fault == "unreachable":
        options[1] = options[1].replace(fake.base_url, "http://127.0.0.1:9/")  # nothing listens there
    seen = len(moto.request_lines())
    with mounted(tmp_path / "m", options, check_clean=False) as mount:
        for key, data in blobs.items():
            assert (mount.path / key.removeprefix(ROOT + "/")).read_bytes() == data
        figures = idle_stats(mount.path)
        stats = figures["cloudfront"]
    assert _data_gets(moto, seen, bucket) >= len(blobs)
    # Three failures in a row, then S3 alone for a while (no timeout to wait for each read).
    assert stats["fallbacks"] == 3 and stats["pauses"] == 1, stats
    warnings = [line for line in mount.stderr.splitlines() if "CloudFront did not serve" in line]
    assert len(warnings) == 1, mount.stderr  # one warning a minute at most
    assert "straight from S3 for 30 s" in mount.stderr
    if fault != "unreachable":
        expected = {"expired": 403, "untrusted": 403, "500": 500, "404": 404}[fault]
        assert len(fake.served(expected)) == len(fake.requests) == 3, fake.requests


@uses_fuse
def test_a_wrong_byte_from_cloudfront_is_an_eio_never_data(
    moto: MotoServer,
    s3: Any,
    bucket: str,
    key_pair: tuple[Any, str],
    cloudfront: FakeCloudFront,
    tmp_path: Path,
) -> None:
    blobs = _put_blobs(s3, bucket, 3, seed=3)
    cloudfront.warm(s3, bucket, list(blobs))
    (peeked, peeked_data), (bad, bad_data), (good, good_data) = blobs.items()
    cloudfront.corrupt[peeked] = len(peeked_data) // 2
    cloudfront.corrupt[bad] = 1000
    cache = tmp_path / "cache"
    options = _options(moto, bucket, cloudfront, key_pair[1], f"cache={cache}")
    with mounted(tmp_path / "m", options, check_clean=False) as mount:

        def path(key: str) -> Path:
            return mount.path / key.removeprefix(ROOT + "/")

        # A whole read of a blob with a wrong byte: EIO, nothing cached.
        with open(path(bad), "rb") as file, pytest.raises(OSError) as caught:
            while file.read(1024 * 1024):
                pass
        assert caught.value.errno == errno.EIO
        assert idle_stats(mount.path)["blob_cache"]["fills"] == 0
        # That key is now read from S3: right bytes (no page of the bad read
        # served), and cached.
        seen = len(moto.request_lines())
        assert path(bad).read_bytes() == bad_data
        assert _data_gets(moto, seen, bucket) >= 1
        # A read that stops early and a random read of the bad byte (unchecked:
        # nothing to check a part against) must not let a later whole read
        # skip the check through the pages they left: that read is EIO, or
        # right when the kernel's own read-ahead found the bad byte first.
        with open(path(peeked), "rb") as file:
            assert file.read(100_000) == peeked_data[:100_000]
            middle = len(peeked_data) // 2
            assert os.pread(file.fileno(), 10, middle - 5) != peeked_data[middle - 5 : middle + 5]
        try:
            assert path(peeked).read_bytes() == peeked_data
        except OSError as exc:
            assert exc.errno == errno.EIO
        assert path(peeked).read_bytes() == peeked_data
        assert path(good).read_bytes() == good_data
        stats = _stats(mount.path)
        cache_stats = idle_stats(mount.path)["blob_cache"]
    # (a read right after a fill may miss the cache while the fill is synced, and fill again)
    assert stats["digest_failures"] == 2 and cache_stats["fills"] >= 3, (stats, cache_stats)
    assert "did not match the digest" in mount.stderr
    cached = [file for file in (cache / "blobs").rglob("*") if file.is_file()]
    assert len(cached) == 3
    for file in cached:
        assert hashlib.sha256(file.read_bytes()).hexdigest() == file.name


class _IpRanges:
    """ip-ranges.json served on loopback, in AWS's format."""

    def __init__(self, prefixes: list[dict[str, str]]) -> None:
        self.body = json.dumps({"syncToken": "1", "prefixes": prefixes, "ipv6_prefixes": []}).encode()
        self.fetches = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.fetches += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/ip-ranges.json"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@uses_fuse
@pytest.mark.parametrize(("listed", "direct"), [("us-test-1", True), ("eu-other-1", False)])
def test_ipfilteredby_awsregion_reads_straight_from_s3_inside_the_listed_regions(
    moto: MotoServer,
    s3: Any,
    bucket: str,
    key_pair: tuple[Any, str],
    cloudfront: FakeCloudFront,
    tmp_path: Path,
    listed: str,
    direct: bool,
) -> None:
    blobs = _put_blobs(s3, bucket, 2, seed=4)
    cloudfront.warm(s3, bucket, list(blobs))
    ranges = _IpRanges(
        [
            {"ip_prefix": "127.0.0.0/8", "region": "US-TEST-1", "service": "AMAZON"},
            {"ip_prefix": "10.0.0.0/8", "region": "eu-other-1", "service": "AMAZON"},
        ]
    )
    try:
        options = _options(
            moto,
            bucket,
            cloudfront,
            key_pair[1],
            "cloudfront_ipfilteredby=awsregion",
            f"cloudfront_awsregion=ap-none-1\\, {listed}",
            f"cloudfront_iprangesurl={ranges.url}",
        )
        seen = len(moto.request_lines())
        with mounted(tmp_path / "m", options) as mount:
            for key, data in blobs.items():
                assert (mount.path / key.removeprefix(ROOT + "/")).read_bytes() == data
            stats = _stats(mount.path)
        assert ranges.fetches == 1
        assert stats["direct"] is direct
        if direct:
            assert cloudfront.requests == [] and _data_gets(moto, seen, bucket) >= len(blobs)
        else:
            assert set(cloudfront.served()) == set(blobs) and _data_gets(moto, seen, bucket) == 0
    finally:
        ranges.close()


@uses_fuse
def test_ip_ranges_that_cannot_be_fetched_leave_reads_on_cloudfront(
    moto: MotoServer,
    s3: Any,
    bucket: str,
    key_pair: tuple[Any, str],
    cloudfront: FakeCloudFront,
    tmp_path: Path,
) -> None:
    blobs = _put_blobs(s3, bucket, 1, seed=5)
    cloudfront.warm(s3, bucket, list(blobs))
    options = _options(
        moto,
        bucket,
        cloudfront,
        key_pair[1],
        "cloudfront_ipfilteredby=aws",
        "cloudfront_iprangesurl=http://127.0.0.1:9/ip-ranges.json",
    )
    with mounted(tmp_path / "m", options, check_clean=False) as mount:
        for key, data in blobs.items():
            assert (mount.path / key.removeprefix(ROOT + "/")).read_bytes() == data
    assert set(cloudfront.served()) == set(blobs)
    assert "cannot fetch AWS's IP ranges" in mount.stderr


# -- configuration ------------------------------------------------------------------


def _config_file(tmp_path: Path, middleware: list[dict[str, Any]]) -> str:
    path = tmp_path / "config.yml"
    path.write_text(
        yaml.safe_dump(
            {"storage": {"s3": {"region": "us-east-1", "bucket": "b"}}, "middleware": {"storage": middleware}}
        )
    )
    return str(path)


def test_the_middleware_options_are_read_as_the_registry_reads_them(
    tmp_path: Path, key_pair: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    options = {
        "baseurl": "abcdefghijklmn.cloudfront.net",
        "privatekey": key_pair[1],
        "keypairid": KEY_PAIR,
        "ipfilteredby": " AWSRegion ",
        "awsregion": "us-east-1, US-East-2",
        "updatefrenquency": "6h",
    }
    middleware = [
        {"name": "redirect", "options": {"baseurl": "https://x/"}},
        {"name": "cloudfront", "options": options},
    ]
    config = build(source=None, mountpoint="/mnt", config_file=_config_file(tmp_path, middleware), environ={})
    cloudfront = config.cloudfront
    assert cloudfront is not None
    assert cloudfront.baseurl == "https://abcdefghijklmn.cloudfront.net/"
    assert cloudfront.duration == 20 * 60  # the default
    assert cloudfront.ipfilteredby == "awsregion" and cloudfront.awsregions == ("us-east-1", "us-east-2")
    assert cloudfront.updatefrequency == 6 * 3600
    assert cloudfront.iprangesurl == "https://ip-ranges.amazonaws.com/ip-ranges.json"
    text = caplog.text
    assert "updatefrenquency is deprecated" in text and "storage middleware 'redirect' ignored" in text
    # -o cloudfront_* override the file's; -o cloudfront=false turns it off.
    overridden = build(
        source=None,
        mountpoint="/mnt",
        config_file=_config_file(tmp_path, middleware),
        mount_options=[("cloudfront_duration", "1h30m"), ("cloudfront_baseurl", "http://edge:8080/x")],
        environ={},
    )
    assert overridden.cloudfront is not None
    assert overridden.cloudfront.duration == 5400 and overridden.cloudfront.baseurl == "http://edge:8080/x/"
    off = build(
        source=None,
        mountpoint="/mnt",
        config_file=_config_file(tmp_path, middleware),
        mount_options=[("cloudfront", "false")],
        environ={},
    )
    assert off.cloudfront is None
    disabled = [{"name": "cloudfront", "disabled": True, "options": options}]
    assert (
        build(
            source=None, mountpoint="/mnt", config_file=_config_file(tmp_path, disabled), environ={}
        ).cloudfront
        is None
    )


def test_bad_middleware_options_are_one_line_naming_the_option(
    tmp_path: Path, key_pair: tuple[Any, str]
) -> None:
    good = {"baseurl": "https://d.cloudfront.net/", "privatekey": key_pair[1], "keypairid": KEY_PAIR}
    pkcs8 = tmp_path / "pkcs8.pem"
    from cryptography.hazmat.primitives import serialization

    pkcs8.write_bytes(
        key_pair[0].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    garbled = tmp_path / "garbled.pem"
    garbled.write_text("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
    cases = {
        "keypairid": {k: v for k, v in good.items() if k != "keypairid"},
        "baseurl": {k: v for k, v in good.items() if k != "baseurl"},
        "privatekey": {**good, "privatekey": str(tmp_path / "missing.pem")},
        "privatekey ": {**good, "privatekey": str(pkcs8)},
        "privatekey  ": {**good, "privatekey": str(garbled)},
        "duration": {**good, "duration": "20 minutes"},
        "ipfilteredby": {**good, "ipfilteredby": "gcp"},
        "awsregion": {**good, "ipfilteredby": "awsregion"},
        "updatefrequency": {**good, "updatefrequency": "-1h"},
    }
    for option, options in cases.items():
        with pytest.raises(ConfigError) as caught:
            build_cloudfront(options)
        message = str(caught.value)
        assert f"cloudfront {option.strip()}" in message and "\n" not in message, message
    # The command line says it the same way: one line, exit code 2, before mounting.
    result = run_cli(
        [
            "bucket",
            str(tmp_path / "mnt"),
            "-o",
            f"region=us-east-1,cloudfront_baseurl=d.cloudfront.net,cloudfront_privatekey={pkcs8},cloudfront_keypairid=K",
        ]
    )
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cloudfront privatekey" in lines[0] and "PKCS#1" in lines[0], result.stderr


def test_signed_urls_are_cloudfronts_and_reused_until_near_expiry(key_pair: tuple[Any, str]) -> None:
    from s3regfs.storage.cloudfront import SignedUrls

    now = [1_800_000_000.0]
    params = build_cloudfront(
        {
            "baseurl": "http://127.0.0.1:1/",
            "privatekey": key_pair[1],
            "keypairid": KEY_PAIR,
            "duration": "20m",
        }
    )
    urls = SignedUrls(params, clock=lambda: now[0])
    first = urls.url("reg/docker/registry/v2/blobs/sha256/ab/abcd/data")
    parts = urlsplit(first)
    query = parse_qs(parts.query)
    assert parts.path == "/reg/docker/registry/v2/blobs/sha256/ab/abcd/data"
    assert query["Expires"] == [str(int(now[0]) + 1200)] and query["Key-Pair-Id"] == [KEY_PAIR]
    with FakeCloudFront({KEY_PAIR: key_pair[0].public_key()}) as fake:
        fake.clock_skew = now[0] - time.time()
        resource = first.split("?")[0]
        assert fake._refusal(resource, query) == ""
        assert fake._refusal(resource + "x", query) == "bad signature"
        fake.clock_skew += 1201
        assert fake._refusal(resource, query) == "expired"
    now[0] += 800  # 400 s of 1,200 left: reused
    assert urls.url("reg/docker/registry/v2/blobs/sha256/ab/abcd/data") == first
    now[0] += 200  # 200 s left, under a quarter: signed again
    second = urls.url("reg/docker/registry/v2/blobs/sha256/ab/abcd/data")
    assert second != first and parse_qs(urlsplit(second).query)["Expires"] == [str(int(now[0]) + 1200)]
    assert urls.signed == 2


@uses_fuse
def test_a_body_cut_midway_goes_on_from_s3_at_the_same_byte(
    moto: MotoServer,
    s3: Any,
    bucket: str,
    key_pair: tuple[Any, str],
    cloudfront: FakeCloudFront,
    tmp_path: Path,
) -> None:
    blobs = _put_blobs(s3, bucket, 3, seed=6)
    cloudfront.warm(s3, bucket, list(blobs))
    cloudfront.cut_after = 300_000
    seen = len(moto.request_lines())
    with mounted(tmp_path / "m", _options(moto, bucket, cloudfront, key_pair[1]), check_clean=False) as mount:
        for key, data in blobs.items():
            assert hashlib.sha256((mount.path / key.removeprefix(ROOT + "/")).read_bytes()).digest() == (
                hashlib.sha256(data).digest()
            )
        figures = read_stats(mount.path)
    stats = figures["cloudfront"]
    assert stats["fallbacks"] >= len(blobs) and stats["digest_failures"] == 0, stats
    assert _data_gets(moto, seen, bucket) >= len(blobs)
    # S3 was asked only for what CloudFront did not send: no byte twice.
    assert stats["bytes"] + figures["bytes_in"] == sum(map(len, blobs.values())), figures


@uses_fuse
def test_parallel_ranges_of_a_big_blob_through_a_slow_edge(
    moto: MotoServer,
    s3: Any,
    bucket: str,
    key_pair: tuple[Any, str],
    cloudfront: FakeCloudFront,
    tmp_path: Path,
) -> None:
    data = random.Random(7).randbytes(40 * 1024 * 1024)
    hexdigest = hashlib.sha256(data).hexdigest()
    key = f"{BLOBS}/{hexdigest[:2]}/{hexdigest}/data"
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    cloudfront.warm(s3, bucket, [key])
    cloudfront.pace = 8 * 1024 * 1024  # 8 MiB/s a connection: one is not enough
    seen = len(moto.request_lines())
    with mounted(tmp_path / "m", _options(moto, bucket, cloudfront, key_pair[1])) as mount:
        assert (mount.path / key.removeprefix(ROOT + "/")).read_bytes() == data
        figures = read_stats(mount.path)
    assert _data_gets(moto, seen, bucket) == 0
    assert figures["parallel_reads"] >= 1 and figures["read_ranges"] >= 3, figures
    assert figures["cloudfront"]["fallbacks"] == 0
    assert figures["cloudfront"]["requests"] == figures["read_ranges"] + 1  # the first stream, then ranges


@uses_fuse
def test_ip_ranges_of_the_wrong_shape_are_a_failed_fetch_not_a_crash(
    moto: MotoServer,
    s3: Any,
    bucket: str,
    key_pair: tuple[Any, str],
    cloudfront: FakeCloudFront,
    tmp_path: Path,
) -> None:
    blobs = _put_blobs(s3, bucket, 1, seed=8)
    cloudfront.warm(s3, bucket, list(blobs))
    ranges = _IpRanges([])
    ranges.body = b'{"prefixes": 5}'
    try:
        options = _options(
            moto,
            bucket,
            cloudfront,
            key_pair[1],
            "cloudfront_ipfilteredby=aws",
            f"cloudfront_iprangesurl={ranges.url}",
        )
        with mounted(tmp_path / "m", options, check_clean=False) as mount:
            for key, data in blobs.items():
                assert (mount.path / key.removeprefix(ROOT + "/")).read_bytes() == data
    finally:
        ranges.close()
    assert set(cloudfront.served()) == set(blobs)
    assert "cannot fetch AWS's IP ranges" in mount.stderr and "Traceback" not in mount.stderr


def test_cloudfront_requests_take_the_proxy_and_ca_bundle_boto3_would(
    tmp_path: Path, key_pair: tuple[Any, str]
) -> None:
    import urllib3

    from s3regfs.config import build_options
    from s3regfs.storage.cloudfront import http_pool

    middleware = [
        {
            "name": "cloudfront",
            "options": {"baseurl": "d.cloudfront.net", "privatekey": key_pair[1], "keypairid": "K"},
        }
    ]
    environ = {
        "HTTPS_PROXY": "http://proxy.example:3128",
        "NO_PROXY": "localhost,.internal",
        "AWS_CA_BUNDLE": "/etc/ca.pem",
    }
    params = build(
        source=None, mountpoint="/mnt", config_file=_config_file(tmp_path, middleware), environ=environ
    ).cloudfront
    assert params is not None
    options = build_options({}, source="b")
    through = http_pool(params.baseurl, params, options)
    assert isinstance(through, urllib3.ProxyManager) and through.proxy is not None
    assert through.proxy.host == "proxy.example" and through.proxy.port == 3128
    assert through.connection_pool_kw["ca_certs"] == "/etc/ca.pem"
    for bypassed in (
        "https://ranges.internal/ip-ranges.json",
        "https://localhost/x",
        "http://d.cloudfront.net/",
    ):
        assert not isinstance(http_pool(bypassed, params, options), urllib3.ProxyManager), bypassed
    plain = build(
        source=None, mountpoint="/mnt", config_file=_config_file(tmp_path, middleware), environ={}
    ).cloudfront
    assert plain is not None and not isinstance(
        http_pool(plain.baseurl, plain, options), urllib3.ProxyManager
    )
