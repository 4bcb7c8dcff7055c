# SPDX-License-Identifier: MIT
"""The pure rules of s3regfs.reports: what a manifest references, what a
link may hold, how a startedat file reads, which names a report may show."""

from __future__ import annotations

import hashlib

import pytest

from s3regfs.reports import _rfc3339_ns, _tsv, _unsafe, digest_problem, link_etag, references

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"digest": D1},
                "layers": [{"digest": D2}],
            },
            ("application/vnd.docker.distribution.manifest.v2+json", [D1, D2]),
        ),
        (  # OCI without mediaType: config and layers (2.8 has no subject)
            {"schemaVersion": 2, "config": {"digest": D1}, "layers": [], "subject": {"digest": D2}},
            ("application/vnd.oci.image.manifest.v1+json", [D1]),
        ),
        (  # an index without mediaType: its manifests
            {"schemaVersion": 2, "manifests": [{"digest": D1}, {"digest": D2}]},
            ("application/vnd.oci.image.index.v1+json", [D1, D2]),
        ),
        (
            {"schemaVersion": 1, "fsLayers": [{"blobSum": D1}, {"blobSum": D1}]},
            ("schema1", [D1, D1]),
        ),
        ({"schemaVersion": 2, "mediaType": "text/plain"}, "unrecognized manifest content type 'text/plain'"),
        ({"schemaVersion": 3}, "unrecognized manifest schema version 3"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_references_as_the_registry_reads_a_manifest(document: object, expected: object) -> None:
    assert references(document) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (D1, None),
        ("sha512:" + "0" * 128, None),
        ("", "not a digest"),
        (D1 + "\n", "invalid checksum digest format"),
        ("sha256:" + "A" * 64, "invalid checksum digest format"),
        ("md5:" + "0" * 32, "unknown digest algorithm 'md5'"),
    ],
)
def test_what_a_link_may_hold(text: str, problem: str | None) -> None:
    assert digest_problem(text) == problem


def test_a_link_etag_is_the_md5_of_its_digest() -> None:
    assert link_etag(D1) == hashlib.md5(D1.encode(), usedforsecurity=False).hexdigest()


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("1970-01-01T00:00:01Z", 1_000_000_000),
        ("1970-01-01T02:00:01+02:00", 1_000_000_000),
        ("1970-01-01T00:00:01.5Z", 1_500_000_000),
        ("1970-01-01T00:00:01.123456789Z", 1_123_456_789),
        ("1970-01-01T00:00:01Z\n", 0),  # Go trims nothing
        ("1970-01-01 00:00:01Z", 0),
        ("1970-01-01T00:00:01", 0),  # no zone
        ("1970-02-30T00:00:01Z", 0),
    ],
)
def test_startedat_reads_as_go_reads_rfc3339(text: str, nanoseconds: int) -> None:
    assert _rfc3339_ns(text) == nanoseconds


def test_names_a_report_may_show() -> None:
    assert not _unsafe("library") and not _unsafe("my-app_1.0")
    for name in ("", ".", "..", "a\tb", "a\nb", "a\\b", "a\x7fb"):
        assert _unsafe(name), repr(name)
    assert _tsv("a\tb\nc\\d\re") == "a\\tb\\nc\\\\d\\re"
