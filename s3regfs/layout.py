# SPDX-License-Identifier: MIT
"""Pure knowledge of keys and of the registry's layout; no I/O.

Key mapping is the driver's: ``key = rootdirectory stripped of slashes + "/" +
path`` (see :func:`s3regfs.config.normalize_root`).  Paths here are relative
to the mount root, without leading or trailing slashes ("" is the root).

The registry's tree (``docker/registry/v2/...``) is deep and narrow below a few
wide directories: ``blobs/sha256/<2 hex>/<hex>/data`` and
``repositories/<name>/_layers/sha256/<hex>/link`` put one object in each
directory.  :func:`flat_listing_pages` says how many delimiter-less
ListObjectsV2 pages (1,000 keys each) a directory listing may spend to fill
the cache for its whole subtree before falling back to a delimited listing of
its direct children.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

REGISTRY_ROOT = "docker/registry/v2"

#: Directories whose subtree is the whole registry (or all its blobs or all
#: its repositories): a flat listing of them would read everything, so they
#: are listed one level at a time.
_WIDE_DIRECTORIES = frozenset(
    {
        "",
        "docker",
        "docker/registry",
        REGISTRY_ROOT,
        f"{REGISTRY_ROOT}/blobs",
        f"{REGISTRY_ROOT}/repositories",
    }
)

#: The registry's fixed directories, from the root down.  Each is listed one
#: level at a time (above), and a walk from the root needs each before the
#: next: so the first listing of one of them also asks for the first pages
#: of those below it, all at once (see Namespace._list).
SPINE = (
    "",
    "docker",
    "docker/registry",
    REGISTRY_ROOT,
    f"{REGISTRY_ROOT}/repositories",
    f"{REGISTRY_ROOT}/blobs",
)

#: Pages a flat listing may take below any other directory: a repository of a
#: few thousand link files, or blobs/sha256 of a small registry, in one go.
FLAT_LISTING_PAGES = 8

#: Keys a range of a split listing is sized for (about half a page: most
#: ranges take one request even when the estimate is off by half).
SPLIT_RANGE_KEYS = 500
#: Ranges of one split at most, read at once.
SPLIT_RANGES = 16
#: Keys of the digest run a page must hold to estimate the density from.
SPLIT_MIN_SAMPLE = 32
#: Above every character of every key (S3 orders keys by their UTF-8 bytes,
#: that is by code point): ``x + KEY_MAX`` sorts after every key that starts
#: with ``x`` and does not go on with KEY_MAX itself.
KEY_MAX = "\U0010ffff"
_HEX = frozenset("0123456789abcdef")
#: Hex digits a component needs to count as a digest (sha256 has 64).
DIGEST_MIN_HEX = 32
#: Hex digits of a range's bounds (65,536 cells over a digest run).
_BOUND_DIGITS = 4

NAME_MAX = 255

#: Blobs up to this size are read to tell whether they are manifests.
MANIFEST_MAX = 4 * 1024 * 1024


#: Digest algorithms the registry accepts (go-digest's), with their hex lengths.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


def digest_problem(text: str) -> str | None:
    """Why *text* (a link's content, a digest named by a path) is not a
    digest the registry would parse, or None."""
    algorithm, sep, hexdigest = text.partition(":")
    if not sep:
        return "not a digest"
    length = DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        return f"unknown digest algorithm {algorithm[:20]!r}"
    if len(hexdigest) != length or any(c not in "0123456789abcdef" for c in hexdigest):
        return "invalid checksum digest format"
    return None


def flat_listing_pages(path: str) -> int:
    """Delimiter-less pages to spend on listing directory *path* (0: none)."""
    return 0 if path in _WIDE_DIRECTORIES else FLAT_LISTING_PAGES


@dataclass(frozen=True)
class KeyRange:
    """The keys *k* with ``after < k <= through`` (no upper bound when
    *through* is None), all of which start with *prefix*: listed with
    ``Prefix=prefix, StartAfter=after``, a page's keys past *through* belong
    to the next range."""

    prefix: str
    after: str
    through: str | None
    expected: int

    def holds(self, key: str) -> bool:
        return self.through is None or key <= self.through


@dataclass(frozen=True)
class _DigestRun:
    """Keys that go on from *stem* with a hex digest: ``<stem><hex>...``, or
    with *fanout* ``<stem><hh>/<hh><hex>...`` (blobs' fan-out directories).
    The digests lie in [*low*, *high*) of the hex range (a fan-out directory
    holds 1/256 of it)."""

    stem: str
    fanout: bool
    low: float = 0.0
    high: float = 1.0

    def fraction(self, key: str) -> float | None:
        """Where *key*'s digest falls in [0, 1); None if *key* has no digest there."""
        if not key.startswith(self.stem):
            return None
        component = key[len(self.stem) + (3 if self.fanout else 0) :].partition("/")[0]
        if not is_digest_name(component):
            return None
        return int(component[:8], 16) / 16**8

    def bound(self, fraction: float) -> str:
        """A string after the keys of every digest up to *fraction* (its
        _BOUND_DIGITS-digit cell included) and before all others."""
        cell = format(min(16**_BOUND_DIGITS - 1, int(fraction * 16**_BOUND_DIGITS)), f"0{_BOUND_DIGITS}x")
        return self.stem + (cell[:2] + "/" if self.fanout else "") + cell + KEY_MAX


def is_digest_name(component: str) -> bool:
    """Whether a key component (a file or directory name) is a hex digest, not
    a short hex-looking name: the registry names its digest directories so
    (``_layers/sha256/<hex>``, ``blobs/sha256/<hh>/<hex>``), each holding one file."""
    return len(component) >= DIGEST_MIN_HEX and _HEX.issuperset(component)


def _digest_run(first: str, last: str, start: int) -> _DigestRun | None:
    """The digest run in which *first* and *last* (keys of one page, both
    past *start*) first differ: a component of hex digits from where they
    differ back to its start (a digest, or a fan-out directory), else None."""
    common = len(os.path.commonprefix([first, last]))
    if common >= len(last) or last[common] not in _HEX or common >= len(first) or first[common] not in _HEX:
        return None
    begin = common
    while begin > start and last[begin - 1] in _HEX:
        begin -= 1
    if begin > start and last[begin - 1] != "/":
        return None  # hex in the middle of a name (a tag "v1a"): no digest
    end = begin
    while end < len(last) and last[end] in _HEX:
        end += 1
    if end < len(last) and last[end] != "/":
        return None
    component = last[begin:end]
    stem = last[:begin]
    if len(component) == 2 and last[end + 1 : end + 3] == component:
        if is_digest_name(last[end + 1 :].partition("/")[0]):
            return _DigestRun(stem, fanout=True)
        return None
    if not is_digest_name(component):
        return None  # a short name that happens to be hex ("f0999", "cafe")
    parent = stem[:-1].rpartition("/")[2]
    if begin - 3 >= start and len(parent) == 2 and _HEX.issuperset(parent) and component.startswith(parent):
        low = int(parent, 16) / 256  # inside one fan-out directory
        return _DigestRun(stem, fanout=False, low=low, high=low + 1 / 256)
    return _DigestRun(stem, fanout=False)


def split_listing(prefix: str, keys: Sequence[str], budget: int) -> list[KeyRange] | None:
    """How to read the rest of a delimiter-less listing of *prefix* at once.

    *keys* are the keys of the page just read (sorted; more follow).  When
    they vary in a run of hex digests (``<hex>/link`` of ``_layers/sha256``,
    the fan-out directories of ``blobs/sha256``), digests are uniform, so the
    page tells how many keys the rest of the run holds.  The result is
    contiguous ranges from the page's last key on, each expected to hold
    about SPLIT_RANGE_KEYS keys (at most SPLIT_RANGES of them): up to the end
    of the listing when the run's estimated rest fits *budget* keys (the last
    range then has no upper bound: it holds whatever follows the run too),
    else up to where *budget* keys are expected.  None when the page shows no
    such run, or too few keys of it to estimate from, or the rest is about a
    page anyway: then the listing goes on a page at a time."""
    if len(keys) < SPLIT_MIN_SAMPLE:
        return None
    last = keys[-1]
    # The middle key, not the first: a page may start with names that are
    # no digests (":x", "-") before the run.
    run = _digest_run(keys[len(keys) // 2], last, len(prefix))
    if run is None:
        return None
    sample = [f for f in map(run.fraction, keys) if f is not None]
    high = run.fraction(last)
    if len(sample) < SPLIT_MIN_SAMPLE or high is None:
        return None
    low = sample[0]
    if high <= low or not run.low <= high < run.high:
        return None
    density = (len(sample) - 1) / (high - low)  # keys per unit of the hex range
    rest = density * (run.high - high)
    if rest <= 1.5 * SPLIT_RANGE_KEYS:
        return None  # about a page: the next page ends it
    whole = rest <= budget
    span = (run.high - high) if whole else budget / density
    count = min(SPLIT_RANGES, math.ceil(density * span / SPLIT_RANGE_KEYS))
    bounds: list[str] = []
    for index in range(1, count + (0 if whole else 1)):
        bound = run.bound(high + span * index / count)
        if bound > last and (not bounds or bound > bounds[-1]):
            bounds.append(bound)
    if not bounds and not whole:
        return None
    ranges: list[KeyRange] = []
    after = last
    expected = round(density * span / count)
    for bound in bounds:
        ranges.append(KeyRange(os.path.commonprefix([after, bound]), after, bound, expected))
        after = bound
    if whole:
        ranges.append(KeyRange(prefix, after, None, expected))
    return ranges


def spine_below(path: str) -> list[str]:
    """The SPINE directories below directory *path* (none if it is not one)."""
    if path not in SPINE:
        return []
    return [each for each in SPINE if each != path and (not path or each.startswith(path + "/"))]


def join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def key_of(key_prefix: str, path: str) -> str:
    """The S3 key of *path* under the root prefix ("" or "a/b/")."""
    return key_prefix + path


def dir_prefix(key_prefix: str, path: str) -> str:
    """The listing prefix of directory *path*: its key plus "/" (root: the prefix)."""
    return key_prefix + path + "/" if path else key_prefix


def name_problem(name: str) -> str | None:
    """Why *name* (one key component) cannot be a POSIX file name, or None."""
    if name == "":
        return "an empty component (//)"
    if name in (".", ".."):
        return f"a {name!r} component"
    if "\0" in name:
        return "a NUL byte"
    if name.isascii():  # a byte a character: no need to encode (most keys)
        return f"a component over {NAME_MAX} bytes" if len(name) > NAME_MAX else None
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no S3 key or kernel name holds one
        return "a component that is not valid UTF-8"
    if len(encoded) > NAME_MAX:
        return f"a component over {NAME_MAX} bytes"
    return None


def split_key(relative: str) -> tuple[list[str], bool] | str:
    """Split a key relative to a listed prefix into components.

    Returns (components, is_directory_marker) or, for a key POSIX cannot
    name, the reason.  A key ending in "/" is a directory marker: it makes
    its directories exist and is not a file.

    Any other character is an ordinary one, a newline too: POSIX names and S3
    keys may both hold it, and ListObjectsV2 answers carry it URL-encoded
    (boto3 asks for ``EncodingType=url`` and decodes).
    """
    if relative == "":
        return [], True  # the listed directory's own marker
    marker = relative.endswith("/")
    parts = (relative[:-1] if marker else relative).split("/")
    if marker and parts == [""]:
        return [], True
    for part in parts:
        problem = name_problem(part)
        if problem:
            return problem
    return parts, marker


def leading_directories(relative: str) -> list[str]:
    """The directories a key POSIX cannot name still shows: its components
    before the first bad one (``x//y`` -> ``["x"]``).  A delimited listing
    shows them too (as the common prefix ``x/``), so a directory looks the same
    whichever way it was listed."""
    parts = relative.split("/")
    for index, part in enumerate(parts[:-1]):
        if name_problem(part):
            return parts[:index]
    return parts[:-1]


def blob_digest(path: str) -> str | None:
    """The digest of a blob data file's path (``.../blobs/<alg>/<hh>/<hex>/data``), else None.

    The registry's own rule: the fan-out directory is the first two characters
    of the hex digest.
    """
    parts = path.split("/")
    if len(parts) < 8 or parts[-1] != "data" or parts[-6:-4] != ["v2", "blobs"]:
        return None
    algorithm, fanout, hexdigest = parts[-4], parts[-3], parts[-2]
    if parts[-8:-6] != ["docker", "registry"] or fanout != hexdigest[:2] or not hexdigest:
        return None
    return f"{algorithm}:{hexdigest}"


def blob_data_path(digest: str) -> str | None:
    """The path of the data file of *digest* (``sha256:<hex>``) under the mount root."""
    algorithm, sep, hexdigest = digest.partition(":")
    if not sep or not algorithm or len(hexdigest) < 2 or "/" in hexdigest or "/" in algorithm:
        return None
    return f"{REGISTRY_ROOT}/blobs/{algorithm}/{hexdigest[:2]}/{hexdigest}/data"


def is_link(path: str) -> bool:
    """A link file of a repository (layers, manifest revisions, tags)."""
    return path.startswith(f"{REGISTRY_ROOT}/repositories/") and path.endswith("/link")


_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def manifest_media_type(data: bytes) -> str | None:
    """The media type of a manifest blob's content, or None if it is no manifest.

    Its own ``mediaType`` field when present (Docker schema 2, manifest lists,
    most OCI manifests); otherwise as the registry infers it: schema 1 by
    ``schemaVersion: 1`` (signed when it has ``signatures``), OCI by
    ``manifests`` (an index) or ``config`` and ``layers`` (a manifest).
    """
    if data.lstrip()[:1] != b"{":
        return None
    try:
        document = json.loads(data)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    version = document.get("schemaVersion")
    media_type = document.get("mediaType")
    if version == 2 and isinstance(media_type, str) and media_type:
        return media_type
    if version == 1 and "fsLayers" in document:
        return _SCHEMA1_SIGNED if "signatures" in document else _SCHEMA1
    if version == 2 and isinstance(document.get("manifests"), list):
        return _OCI_INDEX
    if version == 2 and "config" in document and isinstance(document.get("layers"), list):
        return _OCI_MANIFEST
    return None
