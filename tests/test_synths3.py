# SPDX-License-Identifier: MIT
"""tests/synths3.py: the synthetic registry bucket answers ListObjectsV2,
HeadObject and GetObject as moto does for the same keys and bytes; its
listing agrees with a sorted list of its keys for any prefix, delimiter,
start key and page size; it stays compact and fast at a million keys; and
``python -m tests.synths3`` serves it through :func:`tests.util.start_synth`."""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.synths3 import BLOB_MIN_SIZE, SynthLayout, SynthS3
from tests.util import CREDENTIALS, REPO, start_synth

#: A root directory that URL encoding and XML escaping must both get right.
ODD_ROOT = "r é+x&y"


def client(endpoint: str) -> Any:
    """A boto3 client of *endpoint* that leaves timestamps unparsed
    (botocore parses each LastModified with dateutil, about 0.1 ms a key)."""
    core = botocore.session.get_session()
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
    return boto3.session.Session(botocore_session=core).client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


@dataclass
class Pair:
    """One layout served by synths3 and copied into a moto bucket."""

    layout: SynthLayout
    keys: list[str]
    synth: Any
    moto: Any
    moto_bucket: str
    server: SynthS3


def _pair(moto_url: str, layout: SynthLayout) -> Iterator[Pair]:
    server = SynthS3(layout, "synth").start()
    try:
        moto = client(moto_url)
        name = f"synth-{uuid.uuid4().hex[:12]}"
        moto.create_bucket(Bucket=name)
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(lambda item: moto.put_object(Bucket=name, Key=item[0], Body=item[1]), layout.items())
            )
        yield Pair(layout, list(layout.iter_keys()), client(server.url), moto, name, server)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain(moto: Any) -> Iterator[Pair]:
    yield from _pair(moto.url, SynthLayout(1200, seed=7))


@pytest.fixture(scope="module")
def odd(moto: Any) -> Iterator[Pair]:
    yield from _pair(moto.url, SynthLayout(400, seed=3, rootdirectory=ODD_ROOT))


def pages(s3: Any, bucket: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Every page of a listing, followed through continuation tokens, as the
    fields both endpoints must agree on."""
    found: list[dict[str, Any]] = []
    token = None
    while True:
        request = dict(kwargs, Bucket=bucket)
        if token:
            request["ContinuationToken"] = token
        page = s3.list_objects_v2(**request)
        found.append(
            {
                "keys": [(item["Key"], item["Size"]) for item in page.get("Contents", [])],
                "prefixes": [item["Prefix"] for item in page.get("CommonPrefixes", [])],
                "truncated": page["IsTruncated"],
                "count": page["KeyCount"],
                "max_keys": page["MaxKeys"],
                "prefix": page.get("Prefix"),
                "delimiter": page.get("Delimiter"),
                "encoding": page.get("EncodingType"),
            }
        )
        if not page["IsTruncated"]:
            return found
        token = page["NextContinuationToken"]
        assert len(found) < 2000


def reference(
    keys: list[str], prefix: str, delimiter: str, after: str, max_keys: int
) -> tuple[list[str], bool]:
    """ListObjectsV2 over a sorted list, as moto computes it: the keys under
    *prefix*, rolled up at *delimiter*, the items greater than *after*."""
    items: set[str] = set()
    for key in keys:
        if key.startswith(prefix):
            found = key.find(delimiter, len(prefix)) if delimiter else -1
            items.add(key if found < 0 else key[: found + len(delimiter)])
    ordered = sorted(item for item in items if not after or item > after)
    return ordered[:max_keys], len(ordered) > max_keys


def listing_cases(pair: Pair, *, starts: bool = True) -> list[dict[str, Any]]:
    """Prefixes at every level, with and without delimiter, in pages of
    several sizes; with *starts*, start keys of every kind too; and a few
    listings with EncodingType=url."""
    layout, keys = pair.layout, pair.keys
    names = layout.repository_names()
    repo = layout.repository_prefix + names[min(1, len(names) - 1)] + "/"
    first_repo = layout.repository_prefix + names[0] + "/"
    fan_out = keys[0][: len(layout.blob_prefix) + 3]
    prefixes = [
        "",
        layout.root.split("/")[0] + "/",
        layout.root,
        layout.root + "blobs/",
        layout.blob_prefix,
        fan_out,
        layout.blob_prefix + "zz/",
        layout.repository_prefix,
        layout.repository_prefix + "ns0",
        repo,
        first_repo[:-1],
        first_repo + "_manifests/tags/",
        first_repo + "_manifests/tags/v",
        first_repo + "_manifests/tags/v1",
        "nothing/",
    ]

    def page_sizes(prefix: str, delimiter: str, after: str = "") -> tuple[int, ...]:
        # Small pages where they stay few: moto costs ~5 ms a page here.
        size = len(reference(keys, prefix, delimiter, after, 10**9)[0])
        if size <= 40:
            return (1000, 7, 1)
        if size <= 350 or not prefix:
            return (1000, 7)
        return (1000, 97)

    cases: list[dict[str, Any]] = []
    for prefix in prefixes:
        for delimiter in ("", "/"):
            for max_keys in page_sizes(prefix, delimiter):
                case: dict[str, Any] = {"Prefix": prefix, "MaxKeys": max_keys}
                if delimiter:
                    case["Delimiter"] = delimiter
                cases.append(case)
    middle = keys[len(keys) // 2]
    blob = keys[len(keys) // 8]
    start_keys = [
        middle,
        middle + "0",
        keys[-1],
        keys[0][:-1],
        layout.repository_prefix + names[0] + "/",
        layout.repository_prefix + names[0] + "/_manifests/zzz",
        layout.blob_prefix + "80",
        "a",
        "~",
    ]
    for start in start_keys if starts else []:
        for delimiter in ("", "/"):
            for prefix in ("", layout.repository_prefix, layout.blob_prefix):
                max_keys = min(page_sizes(prefix, delimiter, start)[1], 50) if prefix else 1000
                case = {"Prefix": prefix, "StartAfter": start, "MaxKeys": max_keys}
                if delimiter:
                    case["Delimiter"] = delimiter
                cases.append(case)
    cases.append({"Prefix": layout.blob_prefix, "StartAfter": blob, "Delimiter": "/", "MaxKeys": 5})
    for delimiter in ("", "/"):
        case = {"Prefix": layout.root, "MaxKeys": 50, "EncodingType": "url"}
        if delimiter:
            case["Delimiter"] = delimiter
        cases.append(case)
    cases.append(
        {"Prefix": layout.repository_prefix, "StartAfter": middle, "MaxKeys": 9, "EncodingType": "url"}
    )
    return cases


@pytest.mark.parametrize("which", ["plain", "odd"])
def test_listings_match_moto(which: str, request: pytest.FixtureRequest) -> None:
    pair: Pair = request.getfixturevalue(which)
    checked = 0
    # The odd root is there for URL encoding and XML escaping: its prefixes suffice.
    for case in listing_cases(pair, starts=which == "plain"):
        ours = pages(pair.synth, "synth", **case)
        theirs = pages(pair.moto, pair.moto_bucket, **case)
        assert ours == theirs, case
        if "StartAfter" in case:
            # Echoed as given (moto does not URL-encode it, S3 does, as here).
            echoed = pair.synth.list_objects_v2(Bucket="synth", **case)["StartAfter"]
            encoded = case.get("EncodingType") == "url"
            assert echoed == (urllib.parse.quote(case["StartAfter"]) if encoded else case["StartAfter"])
        checked += len(ours)
        # The pages put together are the reference listing.
        items = [item for page in ours for item in page["keys"] + page["prefixes"]]
        if case.get("EncodingType") != "url":
            names = [item if isinstance(item, str) else item[0] for item in items]
            expected, _ = reference(
                pair.keys, case["Prefix"], case.get("Delimiter", ""), case.get("StartAfter", ""), 10**9
            )
            assert names == expected, case
    print(f"{which}: {pair.layout.key_count()} keys, {checked} pages compared")


def test_odd_root_is_encoded(odd: Pair) -> None:
    """With EncodingType=url asked explicitly, boto3 leaves keys encoded."""
    page = odd.synth.list_objects_v2(Bucket="synth", EncodingType="url", MaxKeys=2)
    assert page["Contents"][0]["Key"].startswith(urllib.parse.quote(ODD_ROOT) + "/docker/")
    page = odd.synth.list_objects_v2(Bucket="synth", MaxKeys=2)
    assert page["Contents"][0]["Key"].startswith(ODD_ROOT + "/docker/")


def sample_keys(pair: Pair) -> list[str]:
    """Every 40th key or so, and one key of each kind (a manifest blob too)."""
    keys = pair.keys
    chosen = set(keys[:: max(1, len(keys) // 40)])
    for marker in ("/_uploads/", "/startedat", "/current/link", "/index/", "/revisions/"):
        chosen.add(next(key for key in keys if marker in key))
    sizes = dict(pair.layout.list_objects(pair.layout.blob_prefix, max_keys=1000).contents)
    chosen.add(next(key for key, size in sizes.items() if size < BLOB_MIN_SIZE))
    return sorted(chosen)


def fetch(s3: Any, bucket: str, key: str, **kwargs: Any) -> tuple[Any, ...]:
    try:
        answer = s3.get_object(Bucket=bucket, Key=key, **kwargs)
    except ClientError as error:
        return (
            "error",
            error.response["Error"]["Code"],
            error.response["ResponseMetadata"]["HTTPStatusCode"],
        )
    return (answer["ResponseMetadata"]["HTTPStatusCode"], answer.get("ContentRange"), answer["Body"].read())


@pytest.mark.parametrize("which", ["plain", "odd"])
def test_objects_match_moto(which: str, request: pytest.FixtureRequest) -> None:
    pair: Pair = request.getfixturevalue(which)
    for key in sample_keys(pair):
        ours = pair.synth.head_object(Bucket="synth", Key=key)
        theirs = pair.moto.head_object(Bucket=pair.moto_bucket, Key=key)
        assert ours["ContentLength"] == theirs["ContentLength"], key
        assert ours["ContentType"] == "application/octet-stream"
        assert re.fullmatch(r'"[0-9a-f]{32}"', ours["ETag"])
        size = ours["ContentLength"]
        ranges = [
            "",
            "bytes=0-0",
            "bytes=10-",
            "bytes=-5",
            "bytes=5-3",
            f"bytes={size}-",
            f"bytes=-{size + 10}",
        ]
        ranges += [f"bytes={size - 1}-{size + 100}", "bytes=-0"]
        for wanted in ranges:
            extra = {"Range": wanted} if wanted else {}
            assert fetch(pair.synth, "synth", key, **extra) == fetch(
                pair.moto, pair.moto_bucket, key, **extra
            ), (
                key,
                wanted,
            )
    layout = pair.layout
    missing = [
        layout.root + "nope",
        pair.keys[0][:-5],
        pair.keys[0].replace("/data", "/date"),
        layout.repository_prefix + layout.repository_names()[0] + "/_layers",
    ]
    for key in missing:
        assert fetch(pair.synth, "synth", key) == ("error", "NoSuchKey", 404)
        assert fetch(pair.moto, pair.moto_bucket, key) == ("error", "NoSuchKey", 404)
        for s3, bucket in ((pair.synth, "synth"), (pair.moto, pair.moto_bucket)):
            with pytest.raises(ClientError) as raised:
                s3.head_object(Bucket=bucket, Key=key)
            assert raised.value.response["Error"]["Code"] == "404"


# -- The layout as a pure function ---------------------------------------------


@pytest.fixture(scope="module")
def small() -> tuple[SynthLayout, list[str]]:
    layout = SynthLayout(1500, seed=11, cache_size=2)
    return layout, list(layout.iter_keys())


def test_keys_sorted_unique_and_counted(small: tuple[SynthLayout, list[str]]) -> None:
    layout, keys = small
    assert keys == sorted(set(keys))
    assert sorted(key.encode() for key in keys) == [key.encode() for key in keys]
    assert len(keys) == layout.key_count()
    items = list(layout.items())
    assert [key for key, _ in items] == keys
    listed = dict(item for page in _all_pages(layout) for item in page)
    for key, data in items:
        assert listed[key] == len(data), key
        assert layout.get(key) == data
        meta = layout.head(key)
        assert meta is not None and meta.size == len(data)
        if key.endswith("/link"):
            assert re.fullmatch(rb"sha256:[0-9a-f]{64}", data), key
    # '.' sorts before '/': a tag "v1.2" comes before the tag "v1".
    dotted = [k for k in keys if re.search(r"/tags/v\d\.\d+/current/link$", k)]
    assert dotted


def _all_pages(layout: SynthLayout) -> Iterator[list[tuple[str, int]]]:
    after = ""
    while True:
        page = layout.list_objects(start_after=after, max_keys=333)
        yield page.contents
        if not page.truncated:
            return
        assert page.last is not None
        after = page.last


def test_layout_is_deterministic() -> None:
    first = SynthLayout(3000, seed=5)
    again = SynthLayout(3000, seed=5, cache_size=1)
    other = SynthLayout(3000, seed=6)
    assert list(first.items()) == list(again.items())
    assert list(first.iter_keys()) != list(other.iter_keys())
    key = next(first.iter_keys())
    assert first.head(key) == again.head(key)


def test_manifests_are_real(small: tuple[SynthLayout, list[str]]) -> None:
    """Each tag's manifest is an OCI image manifest whose config and layers
    are blobs of the bucket linked in the tag's repository."""
    layout, keys = small
    present = set(keys)
    checked = moved = 0
    tagged: collections.Counter[str] = collections.Counter()
    for key in keys:
        found = re.fullmatch(r"(.*/)_manifests/tags/([^/]+)/current/link", key)
        if not found:
            continue
        repo, tag = found.groups()
        link = layout.get(key)
        assert link is not None
        digest = link.decode().removeprefix("sha256:")
        tagged[repo + digest] += 1
        index = [k for k in keys if k.startswith(f"{repo}_manifests/tags/{tag}/index/")]
        assert f"{repo}_manifests/tags/{tag}/index/sha256/{digest}/link" in index
        moved += len(index) > 1
        assert f"{repo}_manifests/revisions/sha256/{digest}/link" in present
        blob_key = f"{layout.blob_prefix}{digest[:2]}/{digest}/data"
        data = layout.get(blob_key)
        assert data is not None
        manifest = json.loads(data)
        assert manifest["schemaVersion"] == 2
        assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
        assert 1 <= len(manifest["layers"]) <= 5
        for descriptor in [manifest["config"], *manifest["layers"]]:
            hex_digest = descriptor["digest"].removeprefix("sha256:")
            meta = layout.head(f"{layout.blob_prefix}{hex_digest[:2]}/{hex_digest}/data")
            assert meta is not None and meta.size == descriptor["size"]
            assert f"{repo}_layers/sha256/{hex_digest}/link" in present
        checked += 1
    assert checked == layout.counts()["tags"]
    assert moved > 0
    # Several tags name one manifest somewhere.
    assert max(tagged.values()) > 1


def test_proportions_at_100k() -> None:
    layout = SynthLayout(100_000, seed=1)
    counts = layout.counts()
    print(counts)
    assert 95_000 <= counts["keys"] <= 105_000
    assert counts["blobs"] == 25_000
    assert counts["repositories"] == 500
    assert counts["namespaces"] == 20
    assert 22_500 <= counts["tags"] <= 27_500
    assert 5 <= counts["repositories_with_uploads"] <= 15
    references = layout.blob_references()
    orphans = counts["layer_pool_blobs"] - len(references)
    shared = sum(1 for n in references.values() if n > 1)
    print(f"linked {len(references)}, shared {shared}, orphans {orphans}")
    assert orphans > 1000
    assert shared > 1000
    assert max(references.values()) >= 10  # the popular base layers
    names = layout.repository_names()
    assert names[0] == "ns00/repo0000" and names == sorted(names)


listing_inputs = st.tuples(
    st.integers(0, 10**6),
    st.integers(0, 200),
    st.sampled_from(["", "/", "/", "_", "sha256/", "a", "/_"]),
    st.one_of(
        st.just(""),
        st.tuples(st.integers(0, 10**6), st.integers(0, 200), st.sampled_from(["", "0", "~", "/"])),
    ),
    st.integers(1, 40),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(listing_inputs)
def test_listing_agrees_with_sorted_keys(small: tuple[SynthLayout, list[str]], inputs: Any) -> None:
    layout, keys = small
    pick, cut, delimiter, start, max_keys = inputs
    prefix = keys[pick % len(keys)][:cut]
    after = ""
    if start:
        spot, start_cut, tail = start
        after = keys[spot % len(keys)][:start_cut] + tail
    page = layout.list_objects(prefix, delimiter, after, max_keys)
    expected, truncated = reference(keys, prefix, delimiter, after, max_keys)
    got = sorted([key for key, _ in page.contents] + page.prefixes)
    assert got == expected
    assert page.truncated == truncated
    if page.truncated:
        assert page.last == expected[-1]
        # The next page starts right after this one.
        following = layout.list_objects(prefix, delimiter, page.last, max_keys)
        more, _ = reference(keys, prefix, delimiter, page.last, max_keys)
        assert sorted([key for key, _ in following.contents] + following.prefixes) == more


# -- Scale ---------------------------------------------------------------------


#: Run in a fresh interpreter, so that its RSS is the layout's alone: builds
#: a layout of KEYS keys and lists it all in 1,000-key pages.
MEASURE = """
import json, sys, time
from tests.synths3 import SynthLayout

def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

before = status("VmRSS")
started = time.perf_counter()
layout = SynthLayout(int(sys.argv[1]), seed=1)
start_time = time.perf_counter() - started
built = status("VmRSS")
keys = layout.key_count()
started = time.perf_counter()
after, pages, listed, previous, deep = "", 0, 0, "", ""
while True:
    page = layout.list_objects(start_after=after)
    pages += 1
    listed += len(page.contents)
    assert page.contents[0][0] > previous
    previous = page.contents[-1][0]
    if not deep and listed >= keys * 9 // 10:
        deep = previous
    if not page.truncated:
        break
    after = page.last
list_time = time.perf_counter() - started
print(json.dumps({
    "keys": keys, "listed": listed, "pages": pages, "start_time": start_time, "list_time": list_time,
    "start_growth": built - before, "list_growth": status("VmRSS") - before,
    "peak_growth": status("VmHWM") - before, "deep": deep,
}))
"""


def raw_list(connection: http.client.HTTPConnection, **params: str) -> bytes:
    """The XML of one ListObjectsV2 through a kept-alive connection."""
    connection.request("GET", "/synth?" + urllib.parse.urlencode(dict(params, **{"list-type": "2"})))
    answer = connection.getresponse()
    body = answer.read()
    assert answer.status == 200, body
    return body


def test_a_million_keys() -> None:
    """Start time, memory and listing speed at a million keys: the layout
    alone in a fresh interpreter, then its HTTP server in this one."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, "1000000"],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=120,
        check=True,
    )
    figures = json.loads(done.stdout)
    keys, deep = figures["keys"], figures["deep"]
    assert 950_000 <= keys <= 1_050_000
    assert figures["listed"] == keys

    server = SynthS3(SynthLayout(1_000_000, seed=1), "synth").start()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        started = time.perf_counter()
        body = raw_list(connection, **{"start-after": deep, "encoding-type": "url"})
        seek_time = time.perf_counter() - started
        namespace = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        found = [element.text for element in ET.fromstring(body).iter(f"{namespace}Key")]
        assert len(found) == 1000 and found[0] is not None and found[0] > deep

        # 50 pages (50,000 keys) through continuation tokens: the server's pace.
        started = time.perf_counter()
        token, listed = "", 0
        for _ in range(50):
            params = {"encoding-type": "url"}
            if token:
                params["continuation-token"] = token
            body = raw_list(connection, **params)
            listed += body.count(b"<Key>")
            found_token = re.search(rb"<NextContinuationToken>([^<]+)<", body)
            assert found_token is not None
            token = found_token.group(1).decode()
        http_time = time.perf_counter() - started
        assert listed == 50_000
        assert server.list_requests == 51
    finally:
        connection.close()
        server.stop()

    print(
        f"\n{keys} keys: start {figures['start_time'] * 1000:.0f} ms; RSS +{figures['start_growth']} B "
        f"after start ({figures['start_growth'] / keys:.2f} B/key), +{figures['list_growth']} B after "
        f"listing all ({figures['list_growth'] / keys:.1f} B/key, peak +{figures['peak_growth']} B); "
        f"{figures['pages']} pages in {figures['list_time']:.2f} s in-process "
        f"({figures['pages'] / figures['list_time']:.0f} pages/s); over HTTP: the page at 90% in "
        f"{seek_time * 1000:.1f} ms, {50 / http_time:.0f} pages/s"
    )
    assert figures["start_time"] < 5
    assert figures["start_growth"] / keys < 10
    assert figures["peak_growth"] / keys < 100
    assert seek_time < 0.5


# -- The server --------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[SynthS3]:
    server = SynthS3(SynthLayout(2000, seed=2), "served").start()
    yield server
    server.stop()


def test_unsupported_requests(served: SynthS3) -> None:
    s3 = client(served.url)
    key = next(served.layout.iter_keys())
    refused: list[tuple[str, dict[str, Any]]] = [
        ("put_object", {"Key": "x", "Body": b"data"}),
        ("delete_object", {"Key": key}),
        ("get_object_acl", {"Key": key}),
        ("create_multipart_upload", {"Key": "x"}),
    ]
    for operation, arguments in refused:
        with pytest.raises(ClientError) as raised:
            getattr(s3, operation)(Bucket="served", **arguments)
        assert raised.value.response["Error"]["Code"] == "NotImplemented"
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    with pytest.raises(ClientError) as raised:
        s3.list_objects_v2(Bucket="other")
    assert raised.value.response["Error"]["Code"] == "NoSuchBucket"
    with pytest.raises(ClientError) as raised:
        s3.head_bucket(Bucket="other")
    assert raised.value.response["Error"]["Code"] == "404"
    s3.head_bucket(Bucket="served")
    assert s3.list_multipart_uploads(Bucket="served").get("Uploads", []) == []
    # The connection is still good after a refused PUT with a body.
    assert s3.head_object(Bucket="served", Key=key)["ContentLength"] > 0


def test_conditions_and_counters(served: SynthS3) -> None:
    s3 = client(served.url)
    key = next(served.layout.iter_keys())
    before = served.stats()
    etag = s3.head_object(Bucket="served", Key=key)["ETag"]
    assert s3.get_object(Bucket="served", Key=key, IfMatch=etag)["Body"].read() == served.layout.get(key)
    with pytest.raises(ClientError) as raised:
        s3.get_object(Bucket="served", Key=key, IfMatch='"0123"')
    assert raised.value.response["Error"]["Code"] == "PreconditionFailed"
    with pytest.raises(ClientError) as raised:
        s3.get_object(Bucket="served", Key=key, IfNoneMatch=etag)
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    answer = s3.list_objects_v2(Bucket="served", MaxKeys=3, FetchOwner=True)
    assert answer["KeyCount"] == 3 and answer["IsTruncated"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z", answer["Contents"][0]["LastModified"])
    assert answer["Contents"][0]["StorageClass"] == "STANDARD"
    after = served.stats()
    assert after["head_requests"] - before["head_requests"] == 1
    assert after["get_requests"] - before["get_requests"] == 3
    assert after["list_requests"] - before["list_requests"] == 1


def test_delays(served: SynthS3) -> None:
    s3 = client(served.url)
    s3.list_objects_v2(Bucket="served", MaxKeys=1)
    served.list_delay = 0.1
    try:
        started = time.perf_counter()
        for _ in range(3):
            s3.list_objects_v2(Bucket="served", MaxKeys=1)
        assert time.perf_counter() - started >= 0.3
        started = time.perf_counter()
        s3.head_bucket(Bucket="served")
        assert time.perf_counter() - started < 0.1
        served.request_delay = 0.05
        started = time.perf_counter()
        s3.head_bucket(Bucket="served")
        assert time.perf_counter() - started >= 0.05
    finally:
        served.list_delay = served.request_delay = 0.0


def test_process_serves_a_20k_bucket() -> None:
    layout = SynthLayout(20_000, seed=3, rootdirectory="reg")
    server = start_synth(20_000, seed=3, bucket="synth-process", rootdirectory="reg")
    try:
        assert server.keys == layout.key_count()
        s3 = client(server.url)
        listed: list[str] = []
        count = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="synth-process"):
            listed += [item["Key"] for item in page.get("Contents", [])]
            count += 1
        assert listed == list(layout.iter_keys())
        assert len(listed) == layout.key_count() and listed == sorted(listed)
        assert listed[0].startswith("reg/docker/registry/v2/blobs/sha256/")
        stats = server.stats()
        assert stats["list_requests"] == count == -(-len(listed) // 1000)
        assert stats["keys"] == layout.key_count()
    finally:
        server.stop()


def test_listobjects_v1_pages_as_v2_does_and_links_carry_md5_etags(served: SynthS3) -> None:
    """The registry's own driver lists with ListObjects v1 (Marker, NextMarker)
    and a registry's link files have the MD5 of their bytes as ETag."""
    s3 = client(served.url)
    prefix = f"{served.layout.root}repositories/"
    for delimiter in ("", "/"):
        v2: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket="served", Prefix=prefix, Delimiter=delimiter, PaginationConfig={"PageSize": 300}
        ):
            v2 += [item["Key"] for item in page.get("Contents", [])]
            v2 += [item["Prefix"] for item in page.get("CommonPrefixes", [])]
        v1: list[str] = []
        marker = ""
        while True:
            page = s3.list_objects(
                Bucket="served", Prefix=prefix, Delimiter=delimiter, Marker=marker, MaxKeys=300
            )
            names = [item["Key"] for item in page.get("Contents", [])]
            names += [item["Prefix"] for item in page.get("CommonPrefixes", [])]
            v1 += names
            if not page["IsTruncated"]:
                break
            marker = page.get("NextMarker") or names[-1]
        assert v1 == v2 and v1
    links = [
        key for key in served.layout.iter_keys(prefix) if key.startswith(prefix) and key.endswith("/link")
    ]
    for key in links[:50]:
        body = served.layout.get(key)
        assert body is not None
        etag = s3.head_object(Bucket="served", Key=key)["ETag"].strip('"')
        assert etag == hashlib.md5(body, usedforsecurity=False).hexdigest()
