# SPDX-License-Identifier: MIT
"""Key splitting and the registry-layout listing plan (pure)."""

from __future__ import annotations

import pytest

from s3regfs import layout


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("a", (["a"], False)),
        ("a/b/c", (["a", "b", "c"], False)),
        ("a/", (["a"], True)),
        ("/", ([], True)),
        ("", ([], True)),
        ("a.a", (["a.a"], False)),
        ("_.abc", (["_.abc"], False)),
        ("sp ace/%2B+#?\\", (["sp ace", "%2B+#?\\"], False)),
    ],
)
def test_split_key(relative: str, expected: tuple[list[str], bool]) -> None:
    assert layout.split_key(relative) == expected


@pytest.mark.parametrize("relative", ["x//y", "w/./z", "a/../b", "/lead", "n" * 256])
def test_split_key_refuses_what_posix_cannot_name(relative: str) -> None:
    assert isinstance(layout.split_key(relative), str)


def test_flat_listing_plan() -> None:
    for wide in (
        "",
        "docker",
        "docker/registry/v2",
        "docker/registry/v2/repositories",
        "docker/registry/v2/blobs",
    ):
        assert layout.flat_listing_pages(wide) == 0
    for narrow in ("docker/registry/v2/repositories/library/app", "docker/registry/v2/blobs/sha256", "data"):
        assert layout.flat_listing_pages(narrow) == layout.FLAT_LISTING_PAGES


def test_prefixes() -> None:
    assert layout.dir_prefix("", "") == ""
    assert layout.dir_prefix("r/", "") == "r/"
    assert layout.dir_prefix("r/", "a/b") == "r/a/b/"
    assert layout.key_of("r/", "a/b") == "r/a/b"


def test_blob_paths() -> None:
    hexdigest = "ab" + "0" * 62
    path = f"docker/registry/v2/blobs/sha256/ab/{hexdigest}/data"
    assert layout.blob_digest(path) == f"sha256:{hexdigest}"
    assert layout.blob_digest(f"docker/registry/v2/blobs/sha256/cd/{hexdigest}/data") is None  # wrong fan-out
    assert layout.blob_digest(f"docker/registry/v2/blobs/sha256/ab/{hexdigest}/other") is None
    assert layout.blob_digest("docker/registry/v2/repositories/x/_layers/sha256/ab/data") is None
    assert layout.blob_data_path(f"sha256:{hexdigest}") == path
    assert layout.blob_data_path("garbage") is None
    assert layout.is_link(f"docker/registry/v2/repositories/a/b/_layers/sha256/{hexdigest}/link")
    assert not layout.is_link("docker/registry/v2/blobs/link")
