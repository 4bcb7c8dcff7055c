# SPDX-License-Identifier: MIT
"""Key splitting, path <-> key mapping for any input, and the registry-layout listing plan (pure)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from s3regfs import layout
from s3regfs.config import normalize_root


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


# ---------------------------------------------------------------------------
# Path <-> key mapping, for any input.

BOUNDED = settings(max_examples=200, deadline=None)

#: Components a POSIX file name may be: no "/" or NUL, not "", "." or "..",
#: at most NAME_MAX bytes of UTF-8 (so no lone surrogate).  Anything else goes: spaces, "%", "+",
#: "#", "?", "\\", quotes, newlines, control characters, any script.
_COMPONENTS = st.one_of(
    st.text(st.characters(blacklist_characters="/\0"), min_size=1, max_size=40),
    st.sampled_from(
        ["sp ace", "%2F", "a+b", "#?&=", "\\", "\"'", "é", "😀", "nl\nx", "...", ".a", "n" * 255]
    ),
).filter(lambda name: layout.name_problem(name) is None)
_PATHS = st.lists(_COMPONENTS, min_size=1, max_size=6)
_ROOTS = st.text(st.characters(blacklist_characters="\0"), max_size=20).map(normalize_root)
_BAD = st.sampled_from(["", ".", "..", "a\0b", "n" * 256, "é" * 128, "\ud800"])


@BOUNDED
@given(_ROOTS, _PATHS)
def test_any_valid_path_maps_to_a_key_and_back(prefix: str, parts: list[str]) -> None:
    path = "/".join(parts)
    key = layout.key_of(prefix, path)
    assert key.startswith(prefix)
    assert layout.split_key(key[len(prefix) :]) == (parts, False)
    directory = layout.dir_prefix(prefix, path)
    assert directory == key + "/"
    assert layout.split_key(directory[len(prefix) :]) == (parts, True)
    # Relative to any directory on the way, the rest of the path.
    for cut in range(len(parts)):
        parent = layout.dir_prefix(prefix, "/".join(parts[:cut]))
        assert key.startswith(parent)
        assert layout.split_key(key[len(parent) :]) == (parts[cut:], False)
    assert layout.leading_directories(key[len(prefix) :]) == parts[:-1]


@BOUNDED
@given(_ROOTS, _PATHS, _BAD, st.data())
@example("", ["x", "y"], "", None)
def test_any_bad_component_is_refused(
    prefix: str, parts: list[str], bad: str, data: st.DataObject | None
) -> None:
    where = 1 if data is None else data.draw(st.integers(0, len(parts)))
    broken = [*parts[:where], bad, *parts[where:]]
    # An empty last component is a "dir/" marker, not a bad key.
    assume(not (bad == "" and where == len(parts)))
    relative = layout.key_of(prefix, "/".join(broken))[len(prefix) :]
    assert layout.name_problem(bad) is not None
    problem = layout.split_key(relative)
    assert isinstance(problem, str) and problem
    # Only what comes before the bad component still shows, as directories.
    assert layout.leading_directories(relative) == broken[:where]


@BOUNDED
@given(_COMPONENTS)
def test_valid_names_fit_name_max(name: str) -> None:
    assert 0 < len(name.encode("utf-8")) <= layout.NAME_MAX
    assert "/" not in name and name not in (".", "..")


def test_name_problem_counts_bytes_not_characters() -> None:
    assert layout.name_problem("é" * 127 + "a") is None  # 255 bytes
    assert layout.name_problem("é" * 128) is not None  # 256 bytes, 128 characters
    assert layout.name_problem("n" * 255) is None


@pytest.mark.parametrize(
    ("relative", "directories"),
    [
        ("x//y", ["x"]),
        ("a/../b", ["a"]),
        ("./c", []),
        ("..", []),
        ("p/q/" + "n" * 256, ["p", "q"]),
        ("x/./", ["x"]),
    ],
)
def test_leading_directories_of_bad_keys(relative: str, directories: list[str]) -> None:
    assert isinstance(layout.split_key(relative), str)
    assert layout.leading_directories(relative) == directories


@pytest.mark.parametrize("relative", ["nl\nkey", "dir\n/file\n", "cr\r\nlf", "\n"])
def test_newlines_are_ordinary_characters(relative: str) -> None:
    # moto cannot store such keys, so this is tested here only: a newline is
    # a character of a POSIX name like any other, never a separator.
    parts = relative.rstrip("/").split("/")
    assert layout.split_key(relative) == (parts, relative.endswith("/"))
    assert layout.key_of("r/", relative.rstrip("/")) == "r/" + relative.rstrip("/")


# -- split listings ---------------------------------------------------------------


def _digest(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _read(keys: list[str], ranges: list[layout.KeyRange]) -> list[str]:
    """What reading *ranges* as the listing does returns: per range, the keys
    under its prefix after its start, up to its end."""
    read: list[str] = []
    for span in ranges:
        assert span.after.startswith(span.prefix)
        assert span.through is None or span.through.startswith(span.prefix)
        read += [k for k in keys if k.startswith(span.prefix) and k > span.after and span.holds(k)]
    return read


LINKS = "r/repositories/app/"
BLOBS = "r/blobs/sha256/"
ODD_NAMES = [":colon", "zz", "g", "0", "A", "f" + layout.KEY_MAX + "x", "\u00e9t\u00e9", "~"]


def _layer_keys(count: int, odd: list[str]) -> list[str]:
    keys = [f"{LINKS}_layers/sha256/{_digest(i)}/link" for i in range(count)]
    keys += [f"{LINKS}_layers/sha256/{name}/link" for name in odd]
    keys += [f"{LINKS}_manifests/revisions/sha256/{_digest(-i)}/link" for i in range(1, 300)]
    keys += [f"{LINKS}_manifests/tags/v{i}/current/link" for i in range(50)]
    return sorted(keys)


def test_split_listing_covers_the_rest_exactly_once() -> None:
    keys = _layer_keys(3000, ODD_NAMES)
    page = keys[:1000]
    ranges = layout.split_listing(LINKS, page, 7000)
    assert ranges is not None and 3 <= len(ranges) <= layout.SPLIT_RANGES
    assert ranges[-1].through is None  # the rest fits the budget: to the end
    for before, after in zip(ranges, ranges[1:], strict=False):
        assert before.through == after.after  # contiguous
    assert _read(keys, ranges) == keys[1000:]  # nothing missed, nothing twice, in order
    assert all(r.expected < 1000 for r in ranges)


def test_split_listing_stops_where_the_budget_ends() -> None:
    keys = _layer_keys(20000, [])
    ranges = layout.split_listing(LINKS, keys[:1000], 4000)
    assert ranges is not None and ranges[-1].through is not None
    read = _read(keys, ranges)
    assert read == [k for k in keys[1000:] if k <= ranges[-1].through]
    assert 3000 <= len(read) <= 5000  # about the budget


def test_split_listing_of_fanout_directories() -> None:
    keys = sorted(f"{BLOBS}{_digest(i)[:2]}/{_digest(i)}/data" for i in range(60000))
    ranges = layout.split_listing(BLOBS, keys[:1000], 7000)
    assert ranges is not None and ranges[-1].through is not None
    read = _read(keys, ranges)
    assert read == [k for k in keys[1000:] if k <= ranges[-1].through]
    # Bounds fall inside fan-out directories, so ranges stay about even.
    sizes = [len(_read(keys, [r])) for r in ranges]
    assert max(sizes) < 2 * layout.SPLIT_RANGE_KEYS


@pytest.mark.parametrize(
    "page",
    [
        [f"{LINKS}_manifests/tags/v{i:04d}/current/link" for i in range(1000)],  # names, no digests
        [f"{LINKS}_layers/sha256/{_digest(i)}/link" for i in range(10)],  # too few to estimate
        sorted(f"{LINKS}_layers/sha256/{_digest(i)}/link" for i in range(4000))[-1000:],  # the rest is small
        [f"{LINKS}x{i:x}" for i in range(1000)],  # hex inside a name
    ],
)
def test_split_listing_declines(page: list[str]) -> None:
    assert layout.split_listing(LINKS, sorted(page), 7000) is None


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1200, 6000),
    odd=st.lists(st.text(min_size=1, max_size=6).filter(lambda s: "/" not in s), max_size=8),
    budget=st.integers(1000, 9000),
)
def test_split_listing_never_misses_a_key(count: int, odd: list[str], budget: int) -> None:
    keys = sorted(set(_layer_keys(count, odd)))
    ranges = layout.split_listing(LINKS, keys[:1000], budget)
    assume(ranges is not None)
    assert ranges is not None
    end = ranges[-1].through
    assert _read(keys, ranges) == [k for k in keys[1000:] if end is None or k <= end]


def test_split_listing_needs_digests_not_hex_looking_names() -> None:
    page = [f"big/f{i:04d}" for i in range(1000)]  # "f0999" is hex, but no digest
    assert layout.split_listing("big/", page, 7000) is None
    page = sorted(f"b/{i:02x}/{i:02x}{'0' * 6}" for i in range(200))  # a fan-out of short names
    assert layout.split_listing("b/", page, 7000) is None


def test_split_listing_after_names_that_are_no_digests() -> None:
    keys = _layer_keys(3000, ["-", "--", "+"])  # sort before every digest
    assert keys[0].endswith("/+/link")
    ranges = layout.split_listing(LINKS, keys[:1000], 7000)
    assert ranges is not None
    assert _read(keys, ranges) == keys[1000:]
