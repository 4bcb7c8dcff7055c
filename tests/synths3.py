# SPDX-License-Identifier: MIT
"""A synthetic S3 endpoint for scale tests: a registry-shaped bucket of
millions of keys, generated from a seed and a key count, served on loopback.

moto holds every object in memory and lists a bucket in time proportional to
its size; this server holds almost nothing.  The bucket has CNCF
Distribution's storage layout under ``[ROOTDIRECTORY/]docker/registry/v2/``:

* ``blobs/sha256/<hex[:2]>/<hex>/data``, about keys/4 blobs;
* ``repositories/nsNN/repoNNNN/`` (about keys/200 repositories over at most 20
  namespaces), each with ``_layers/sha256/<hex>/link`` for its layer and
  config blobs, ``_manifests/revisions/sha256/<hex>/link`` for its
  manifests, ``_manifests/tags/<tag>/current/link`` and
  ``_manifests/tags/<tag>/index/sha256/<hex>/link`` for its tags (about
  keys/4 tags; several tags may name one manifest, and a few tags were
  "moved": their index holds older manifests too), and in one repository of
  50 (at least one in any layout) ``_uploads/<uuid>/data`` and
  ``_uploads/<uuid>/startedat``.

Repositories draw their layers from one shared pool (a few of them from a
small "popular" part of it), so some blobs are linked by several
repositories and some by none (orphans).  Each manifest blob is a real OCI
image manifest (JSON) whose config and layers are blobs of the bucket linked
in the manifest's repository; but its digest, like every digest here, is
drawn from the seed and is *not* the sha256 of the blob's bytes.  Other blobs
hold a repeating pattern of 10,000 to 65,535 bytes (five digits, so that a
manifest's size depends on its number of layers only and a listing of blobs
needs no repository); links hold exactly ``sha256:<hex>`` (71 bytes).

Memory is O(repositories) (a few arrays of per-repository counts) plus a
bounded LRU cache of materialised repositories: blob digests are computed
from their rank (the sorted order is built in: the top 64 bits of digest
*i* lie in the *i*-th of B equal slices of the 64-bit range), blob identities
are an affine permutation of the ranks, and a repository's keys are drawn on
demand from ``random.Random(seed * 1_000_003 + repository)``.  A listing seeks
its start key by bisection (over the repositories' name prefixes, then within
a repository or over the blob ranks) and skips a rolled-up common prefix with
one more seek (after trying the next key), so a page costs O(page + log keys),
O(page * log keys) at worst when every item is a common prefix.

:class:`SynthLayout` is the pure generator (listing, HEAD, GET, every key and
its bytes); :class:`SynthS3` serves it over HTTP/1.1 with path-style
addressing: ListObjectsV2 and ListObjects (v1, for the registry's own
driver), HeadBucket, HeadObject, GetObject (ranges,
If-Match, If-None-Match) and an empty ListMultipartUploads; anything else
answers 501 NotImplemented.  Credentials are not checked.

Known differences from S3: ETags are not MD5s of the bytes (but those of
link files, which a registry writes with one PutObject, are); MaxKeys above
1000 is answered as 1000; a start key inside a rolled-up common prefix leaves
that prefix out of the page, as moto does (S3 may list it); ranges follow
moto's rules (``bytes=-0`` and a start past the end are 416, an unparsable
range is the whole object); no virtual-hosted addressing,
versions, checksums or owners (FetchOwner gives a fixed one).  Unlike moto,
and as S3 documents, StartAfter and Delimiter are URL-encoded in the answer
with encoding-type=url.

Run as a process: ``python -m tests.synths3 --keys 1000000 --seed 1 --port P
--bucket B [--rootdirectory R] [--list-delay S] [--request-delay S]``; it
prints ``listening on 127.0.0.1:P keys=N`` once it serves, and
``GET /_synths3/stats`` answers its request counters as JSON.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import calendar
import collections
import email.utils
import hashlib
import json
import math
import random
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

MIN_KEYS = 200
#: Layer and config blobs are this big at least and at most (five digits).
BLOB_MIN_SIZE = 10_000
BLOB_MAX_SIZE = 65_535
#: Every LastModified is this time (2025-11-01T12:00:00Z) plus up to 180 days.
BASE_TIME = calendar.timegm((2025, 11, 1, 12, 0, 0, 0, 0, 0))
TIME_SPAN = 180 * 86_400
NAMESPACES = 20
MAX_LAYERS_PER_MANIFEST = 5
MAX_PAGE = 1000

_M64 = (1 << 64) - 1
_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
_TAG_WORDS = ("latest", "stable", "edge", "main", "dev", "nightly", "lts", "slim")


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit function of *x*."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _escape(text: str) -> str:
    """*text* as XML character data."""
    if "&" in text or "<" in text or ">" in text or "\r" in text:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    return text


_DAYS: dict[int, str] = {}
#: Characters urllib.parse.quote leaves as they are (with "/" safe).
_UNQUOTED = re.compile(r"[A-Za-z0-9_.~/-]*")


def _iso8601(epoch: int) -> str:
    """S3's LastModified format: ``2026-11-01T12:00:00.000Z``."""
    day, second = divmod(epoch, 86_400)
    date = _DAYS.get(day)
    if date is None:
        date = _DAYS[day] = time.strftime("%Y-%m-%dT", time.gmtime(day * 86_400))
    hour, second = divmod(second, 3600)
    return f"{date}{hour:02d}:{second // 60:02d}:{second % 60:02d}.000Z"


def _url_encoded(text: str) -> str:
    """*text* URL-encoded as moto does (urllib's quote, "/" kept)."""
    return text if _UNQUOTED.fullmatch(text) else urllib.parse.quote(text)


def _successor(prefix: str) -> str | None:
    """The least string greater than every string that starts with *prefix*
    (None when its last character is the greatest code point)."""
    last = ord(prefix[-1])
    if last >= 0x10FFFF:
        return None
    return prefix[:-1] + chr(last + 1)


def _tag_name(rng: random.Random) -> str:
    """A tag name of the kinds seen in registries ("v1" and "v1.2" side by
    side exercise S3's order: "v1.2/..." sorts before "v1/...")."""
    kind = rng.randrange(8)
    a, b, c = rng.randrange(4), rng.randrange(12), rng.randrange(20)
    if kind == 0:
        return f"v{a}"
    if kind == 1:
        return f"v{a}.{b}"
    if kind == 2:
        return f"{a}.{b}.{c}"
    if kind == 3:
        return f"{a}.{b}.{c}-alpine"
    if kind == 4:
        return f"sha-{rng.getrandbits(28):07x}"
    if kind == 5:
        return f"build-{rng.randrange(100_000)}"
    if kind == 6:
        return rng.choice(_TAG_WORDS)
    return f"release_{a}{b}"


@dataclass(frozen=True)
class ObjectMeta:
    """What HEAD tells of an object: *etag* is 32 hex digits without quotes,
    *last_modified* seconds since the epoch."""

    key: str
    size: int
    etag: str
    last_modified: int


@dataclass(frozen=True)
class ListResult:
    """One ListObjectsV2 page: *contents* are (key, size) in S3 order,
    *prefixes* the common prefixes; *last* is the greatest key or prefix of
    the page, where the next page starts after when *truncated*."""

    contents: list[tuple[str, int]]
    prefixes: list[str]
    truncated: bool
    last: str | None


@dataclass(frozen=True)
class _Repo:
    """A materialised repository: its sorted keys, their bytes, and its
    manifests' (config, layers) as layer-pool identities, by manifest index."""

    keys: list[str]
    bodies: list[bytes]
    manifests: list[tuple[int, tuple[int, ...]]]


class SynthLayout:
    """The bucket's keys and bytes, generated from *seed* and about *keys*
    keys (:meth:`key_count` tells the real count) under *rootdirectory*.

    Deterministic: the same arguments give the same keys, sizes, bytes,
    ETags and times in any process.  Thread-safe.  Listing follows moto's
    semantics: the keys under the prefix, those holding the delimiter after
    the prefix rolled up into one common prefix each, in UTF-8 byte order, the
    items (keys and prefixes) greater than the start key kept.
    """

    def __init__(
        self,
        keys: int,
        *,
        seed: int = 1,
        rootdirectory: str = "",
        cache_size: int = 256,
        wide_uploads: int = 0,
    ) -> None:
        if keys < MIN_KEYS:
            raise ValueError(f"a layout needs {MIN_KEYS} keys at least, not {keys}")
        self.seed = seed
        root = rootdirectory.strip("/")
        self.root = (root + "/" if root else "") + "docker/registry/v2/"
        self.blob_prefix = self.root + "blobs/sha256/"
        self.repository_prefix = self.root + "repositories/"
        secret = hashlib.blake2b(b"synths3 seed %d" % seed, digest_size=64).digest()
        self._digest_key = secret[:16]
        self._etag_key = secret[16:32]
        self._data_key = secret[32:48]
        salt = int.from_bytes(secret[48:], "big")
        self._salt_counts = _mix(salt)
        self._salt_sizes = _mix(salt + 1)
        self._salt_layers = _mix(salt + 2)

        self.blobs = blobs = keys // 4
        self.repositories = repos = max(1, round(keys / 200))
        self.namespaces = spaces = max(1, min(NAMESPACES, repos // 2))
        # Namespaces of uneven sizes (weights 1 to 4), each one repository at least.
        weights = [1 + _mix(self._salt_counts + 7919 * s) % 4 for s in range(spaces)]
        sizes = [1 + (repos - spaces) * w // sum(weights) for w in weights]
        for s in range(repos - sum(sizes)):
            sizes[s % spaces] += 1
        self._ns_start = [0]
        for size in sizes:
            self._ns_start.append(self._ns_start[-1] + size)
        self._name_width = max(4, len(str(max(sizes) - 1)))

        # Per repository: layer links, manifests, tags, extra index entries, uploads.
        budget = (keys - blobs) / repos
        self._n_layers = array("I")
        self._n_manifests = array("I")
        self._n_tags = array("I")
        self._n_extra = array("I")
        self._n_uploads = array("I")
        uploads_at = self._salt_counts % min(50, repos)

        def spread(r: int, what: int, mean: float) -> int:
            # Uniform in [mean/2, 3*mean/2).
            return round(mean * (0.5 + _mix(self._salt_counts + 8 * r + what) / 2**64))

        for r in range(repos):
            tags = max(1, spread(r, 0, budget * 0.325))
            manifests = max(1, spread(r, 1, budget * 0.08))
            extra = 0 if manifests < 2 else min(spread(r, 2, tags * 0.05), tags * (manifests - 1))
            self._n_tags.append(tags)
            self._n_manifests.append(manifests)
            self._n_extra.append(extra)
            self._n_layers.append(max(MAX_LAYERS_PER_MANIFEST + 1, spread(r, 3, budget * 0.255)))
            self._n_uploads.append(1 + _mix(self._salt_counts + 8 * r + 4) % 2 if r % 50 == uploads_at else 0)
        if wide_uploads:
            # A wide directory: the first repository's _uploads holds this many uploads.
            self._n_uploads[0] = wide_uploads
        self._manifest_start = array("Q", [0])
        for count in self._n_manifests:
            self._manifest_start.append(self._manifest_start[-1] + count)
        self.manifests = int(self._manifest_start[-1])
        #: The layer pool: identities [0, pool) are layer and config blobs,
        #: [pool, blobs) manifests in repository order.
        self.pool = blobs - self.manifests
        if self.pool < 2 * (MAX_LAYERS_PER_MANIFEST + 1):
            raise ValueError(f"{keys} keys leave too few layer blobs ({self.pool})")
        self._popular = max(MAX_LAYERS_PER_MANIFEST, self.pool // 500)
        self._repo_len = array("I")
        for r in range(repos):
            if self._n_layers[r] > self.pool:
                self._n_layers[r] = self.pool
            self._repo_len.append(
                self._n_layers[r]
                + self._n_manifests[r]
                + 2 * self._n_tags[r]
                + self._n_extra[r]
                + 2 * self._n_uploads[r]
            )
        self._keys = blobs + sum(self._repo_len)

        # Blob rank = (a * identity + c) mod blobs, a bijection.
        a = max(1, int(blobs * 0.6180339887)) | 1
        while math.gcd(a, blobs) != 1:
            a += 1
        self._perm_a = a
        self._perm_a_inverse = pow(a, -1, blobs)
        self._perm_c = _mix(self._salt_sizes) % blobs

        self._manifest_sizes = [0] + [
            len(self._manifest_json(("0" * 64, BLOB_MIN_SIZE), [("0" * 64, BLOB_MIN_SIZE)] * k))
            for k in range(1, MAX_LAYERS_PER_MANIFEST + 1)
        ]
        self._cache: collections.OrderedDict[int, _Repo] = collections.OrderedDict()
        self._cache_size = max(1, cache_size)
        self._lock = threading.Lock()

    # -- Figures -----------------------------------------------------------

    def key_count(self) -> int:
        """The number of keys in the bucket."""
        return self._keys

    def counts(self) -> dict[str, int]:
        """The layout's proportions: keys, blobs (manifests among them),
        repositories, namespaces, tags, and keys of each kind."""
        return {
            "keys": self._keys,
            "blobs": self.blobs,
            "manifest_blobs": self.manifests,
            "layer_pool_blobs": self.pool,
            "repositories": self.repositories,
            "namespaces": self.namespaces,
            "tags": sum(self._n_tags),
            "layer_links": sum(self._n_layers),
            "revision_links": self.manifests,
            "tag_current_links": sum(self._n_tags),
            "tag_index_links": sum(self._n_tags) + sum(self._n_extra),
            "uploads": sum(self._n_uploads),
            "repositories_with_uploads": sum(1 for n in self._n_uploads if n),
        }

    def repository_names(self) -> list[str]:
        """The repositories' names (``nsNN/repoNNNN``), in key order."""
        return [self._repo_name(r) for r in range(self.repositories)]

    def blob_references(self) -> collections.Counter[str]:
        """How many repositories link each layer or config blob (by hex
        digest); blobs absent are orphans.  Materialises every repository."""
        found: collections.Counter[str] = collections.Counter()
        for r in range(self.repositories):
            repo = self._repo(r)
            marker = f"{self._repo_prefix(r)}_layers/sha256/"
            for key in repo.keys:
                if key.startswith(marker):
                    found[key[len(marker) : len(marker) + 64]] += 1
        return found

    # -- Blobs ---------------------------------------------------------------

    def _blob_digest(self, rank: int) -> bytes:
        """The 32-byte digest of the blob of rank *rank*: increasing with it."""
        seed = hashlib.blake2b(rank.to_bytes(8, "little"), digest_size=32, key=self._digest_key).digest()
        low = (rank << 64) // self.blobs
        high = ((rank + 1) << 64) // self.blobs
        top = low + int.from_bytes(seed[:8], "big") % (high - low)
        return top.to_bytes(8, "big") + seed[8:]

    def _blob_hex(self, rank: int) -> str:
        return self._blob_digest(rank).hex()

    def _blob_key(self, rank: int) -> str:
        digest = self._blob_digest(rank).hex()
        return f"{self.blob_prefix}{digest[:2]}/{digest}/data"

    def _rank(self, identity: int) -> int:
        return (self._perm_a * identity + self._perm_c) % self.blobs

    def _identity(self, rank: int) -> int:
        return (self._perm_a_inverse * (rank - self._perm_c)) % self.blobs

    def _pool_size(self, identity: int) -> int:
        return BLOB_MIN_SIZE + _mix(self._salt_sizes + identity) % (BLOB_MAX_SIZE - BLOB_MIN_SIZE + 1)

    def _manifest_layers(self, manifest: int) -> int:
        """How many layers global manifest *manifest* has."""
        return 1 + _mix(self._salt_layers + manifest) % MAX_LAYERS_PER_MANIFEST

    def _blob_size(self, rank: int) -> int:
        identity = self._identity(rank)
        if identity < self.pool:
            return self._pool_size(identity)
        return self._manifest_sizes[self._manifest_layers(identity - self.pool)]

    def _pattern(self, seed: bytes, size: int) -> bytes:
        block = hashlib.blake2b(seed, digest_size=64, key=self._data_key).digest()
        return (block * (size // 64 + 1))[:size]

    @staticmethod
    def _manifest_json(config: tuple[str, int], layers: list[tuple[str, int]]) -> bytes:
        parts = [
            '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
            '"config":{"mediaType":"application/vnd.oci.image.config.v1+json",'
            f'"digest":"sha256:{config[0]}","size":{config[1]}}},"layers":['
        ]
        parts.append(
            ",".join(
                '{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",'
                f'"digest":"sha256:{digest}","size":{size}}}'
                for digest, size in layers
            )
        )
        parts.append("]}")
        return "".join(parts).encode()

    def _blob_data(self, rank: int) -> bytes:
        identity = self._identity(rank)
        if identity < self.pool:
            return self._pattern(b"blob %d" % identity, self._pool_size(identity))
        manifest = identity - self.pool
        r = bisect.bisect_right(self._manifest_start, manifest) - 1
        config, layers = self._repo(r).manifests[manifest - self._manifest_start[r]]

        def described(identity: int) -> tuple[str, int]:
            return self._blob_hex(self._rank(identity)), self._pool_size(identity)

        data = self._manifest_json(described(config), [described(layer) for layer in layers])
        assert len(data) == self._manifest_sizes[len(layers)]
        return data

    # -- Repositories ------------------------------------------------------

    def _repo_name(self, r: int) -> str:
        space = bisect.bisect_right(self._ns_start, r) - 1
        return f"ns{space:02d}/repo{r - self._ns_start[space]:0{self._name_width}d}"

    def _repo_prefix(self, r: int) -> str:
        return f"{self.repository_prefix}{self._repo_name(r)}/"

    def _repo(self, r: int) -> _Repo:
        with self._lock:
            repo = self._cache.get(r)
            if repo is not None:
                self._cache.move_to_end(r)
                return repo
        repo = self._build_repo(r)
        with self._lock:
            self._cache[r] = repo
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return repo

    def _build_repo(self, r: int) -> _Repo:
        rng = random.Random(self.seed * 1_000_003 + r)
        prefix = self._repo_prefix(r)
        entries: list[tuple[str, bytes]] = []

        def link(digest: str) -> bytes:
            return b"sha256:" + digest.encode()

        chosen = set(rng.sample(range(self._popular), rng.randrange(3)))
        while len(chosen) < self._n_layers[r]:
            chosen.add(rng.randrange(self.pool))
        layers = sorted(chosen)
        for identity in layers:
            digest = self._blob_hex(self._rank(identity))
            entries.append((f"{prefix}_layers/sha256/{digest}/link", link(digest)))

        manifests: list[tuple[int, tuple[int, ...]]] = []
        revisions: list[str] = []
        first = int(self._manifest_start[r])
        for m in range(self._n_manifests[r]):
            picked = rng.sample(layers, self._manifest_layers(first + m) + 1)
            manifests.append((picked[0], tuple(picked[1:])))
            digest = self._blob_hex(self._rank(self.pool + first + m))
            revisions.append(digest)
            entries.append((f"{prefix}_manifests/revisions/sha256/{digest}/link", link(digest)))

        names: set[str] = set()
        while len(names) < self._n_tags[r]:
            names.add(_tag_name(rng))
        tags = sorted(names)
        current = [rng.randrange(len(revisions)) for _ in tags]
        index = [{m} for m in current]
        # Moved tags: about two older manifests each in their index.
        extra, order = self._n_extra[r], rng.sample(range(len(tags)), len(tags))
        moved, step = max(1, (extra + 1) // 2), 0
        while extra:
            t = order[step % moved]
            step += 1
            if len(index[t]) >= len(revisions):
                moved = min(len(tags), moved + 1)
                continue
            older = rng.randrange(len(revisions))
            while older in index[t]:
                older = rng.randrange(len(revisions))
            index[t].add(older)
            extra -= 1
        for name, now, entries_of_tag in zip(tags, current, index, strict=True):
            entries.append((f"{prefix}_manifests/tags/{name}/current/link", link(revisions[now])))
            for m in sorted(entries_of_tag):
                entries.append(
                    (f"{prefix}_manifests/tags/{name}/index/sha256/{revisions[m]}/link", link(revisions[m]))
                )

        for _ in range(self._n_uploads[r]):
            upload = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            data = self._pattern(upload.encode(), rng.randrange(1, 32_768))
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE_TIME + rng.randrange(TIME_SPAN)))
            entries.append((f"{prefix}_uploads/{upload}/data", data))
            entries.append((f"{prefix}_uploads/{upload}/startedat", started.encode()))

        entries.sort(key=lambda entry: entry[0])
        assert len(entries) == self._repo_len[r], (r, len(entries), self._repo_len[r])
        return _Repo([key for key, _ in entries], [data for _, data in entries], manifests)

    # -- Key order: groups (the blobs, then each repository) ---------------

    @property
    def _groups(self) -> int:
        return 1 + self.repositories

    def _group_prefix(self, g: int) -> str:
        return self.blob_prefix if g == 0 else self._repo_prefix(g - 1)

    def _group_len(self, g: int) -> int:
        return self.blobs if g == 0 else int(self._repo_len[g - 1])

    def _key_at(self, g: int, pos: int) -> str:
        return self._blob_key(pos) if g == 0 else self._repo(g - 1).keys[pos]

    def _size_at(self, g: int, pos: int) -> int:
        return self._blob_size(pos) if g == 0 else len(self._repo(g - 1).bodies[pos])

    def _data_at(self, g: int, pos: int) -> bytes:
        return self._blob_data(pos) if g == 0 else self._repo(g - 1).bodies[pos]

    def _seek_in_group(self, g: int, target: str) -> int:
        """The position of the first key of group *g* not less than *target*."""
        if g:
            return bisect.bisect_left(self._repo(g - 1).keys, target)
        low, high = 0, self.blobs
        while low < high:
            mid = (low + high) // 2
            if self._blob_key(mid) < target:
                low = mid + 1
            else:
                high = mid
        return low

    def _seek(self, target: str) -> tuple[int, int]:
        """(group, position) of the first key not less than *target*
        (group ``_groups`` when there is none).

        The groups' prefixes are sorted and none is a prefix of another, so
        a group whose prefix is at most *target* either holds *target*'s
        place or lies wholly below it.
        """
        low, high = 0, self._groups
        while low < high:
            mid = (low + high) // 2
            if self._group_prefix(mid) <= target:
                low = mid + 1
            else:
                high = mid
        if low and target.startswith(self._group_prefix(low - 1)):
            pos = self._seek_in_group(low - 1, target)
            if pos < self._group_len(low - 1):
                return low - 1, pos
        return low, 0

    def _after_prefix(self, g: int, pos: int, common: str) -> tuple[int, int]:
        """The first key after (group, position) that does not start with
        *common*, a prefix of that key (the next key is tried first)."""
        if self._group_prefix(g).startswith(common):
            following = (g + 1, 0)
            if g + 1 >= self._groups or not self._group_prefix(g + 1).startswith(common):
                return following
        else:
            following = (g, pos + 1) if pos + 1 < self._group_len(g) else (g + 1, 0)
            if following[0] != g or not self._key_at(g, pos + 1).startswith(common):
                return following
        beyond = _successor(common)
        if beyond is not None:
            return self._seek(beyond)
        while following[0] < self._groups and self._key_at(*following).startswith(common):
            g, pos = following
            following = (g, pos + 1) if pos + 1 < self._group_len(g) else (g + 1, 0)
        return following

    def _walk(self, prefix: str, delimiter: str, after: str) -> Iterator[tuple[str, int] | str]:
        """The items of a listing in order: (key, size) for a key, a str for
        a common prefix; only those greater than *after* (if not empty)."""
        start = prefix
        if after and after + "\0" > start:
            start = after + "\0"
        g, pos = self._seek(start)
        groups = self._groups
        current, length, repo, rollup = -1, 0, None, None
        while g < groups:
            if g != current:
                current, length, repo, rollup = g, self._group_len(g), None, None
                group_prefix = self._group_prefix(g)
                if group_prefix.startswith(prefix):
                    if delimiter:
                        found = group_prefix.find(delimiter, len(prefix))
                        if found >= 0:
                            # Every key of the group rolls up into the same prefix.
                            rollup = group_prefix[: found + len(delimiter)]
                elif not prefix.startswith(group_prefix):
                    return  # the group lies wholly after the prefix's keys
            if rollup is not None:
                if not after or rollup > after:
                    yield rollup
                g, pos = self._after_prefix(g, pos, rollup)
                continue
            if g:
                if repo is None:
                    repo = self._repo(g - 1)
                key, size = repo.keys[pos], len(repo.bodies[pos])
            else:
                key, size = self._blob_key(pos), self._blob_size(pos)
            if not key.startswith(prefix):
                return
            if delimiter:
                found = key.find(delimiter, len(prefix))
                if found >= 0:
                    common = key[: found + len(delimiter)]
                    if not after or common > after:
                        yield common
                    g, pos = self._after_prefix(g, pos, common)
                    continue
            yield key, size
            pos += 1
            if pos >= length:
                g, pos = g + 1, 0

    # -- Public interface --------------------------------------------------

    def list_objects(
        self, prefix: str = "", delimiter: str = "", start_after: str = "", max_keys: int = MAX_PAGE
    ) -> ListResult:
        """One page of ListObjectsV2: at most *max_keys* items (keys and
        common prefixes) under *prefix* greater than *start_after* (a
        continuation token's key or prefix too); *max_keys* 0 gives an empty,
        untruncated page (as moto does)."""
        contents: list[tuple[str, int]] = []
        prefixes: list[str] = []
        last: str | None = None
        if max_keys <= 0:
            return ListResult(contents, prefixes, False, None)
        for taken, item in enumerate(self._walk(prefix, delimiter, start_after)):
            if taken == max_keys:
                return ListResult(contents, prefixes, True, last)
            if isinstance(item, str):
                prefixes.append(item)
                last = item
            else:
                contents.append(item)
                last = item[0]
        return ListResult(contents, prefixes, False, last)

    def iter_keys(self, start_after: str = "") -> Iterator[str]:
        """Every key greater than *start_after*, in S3 order."""
        for item in self._walk("", "", start_after):
            assert not isinstance(item, str)
            yield item[0]

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Every (key, bytes) of the bucket, in S3 order (to copy it elsewhere)."""
        for g in range(self._groups):
            for pos in range(self._group_len(g)):
                yield self._key_at(g, pos), self._data_at(g, pos)

    def _find(self, key: str) -> tuple[int, int] | None:
        g, pos = self._seek(key)
        if g < self._groups and self._key_at(g, pos) == key:
            return g, pos
        return None

    def stamp(self, key: str) -> tuple[str, int]:
        """The ETag of *key* (32 hex digits, no quotes) and its LastModified
        (seconds since the epoch), both drawn from one hash of the key."""
        digest = hashlib.blake2b(key.encode(), digest_size=16, key=self._etag_key).digest()
        etag = digest.hex()
        if key.endswith("/link"):
            # As a registry's link file in S3: one PutObject, so the MD5 of its bytes.
            data = self.get(key)
            if data is not None:
                etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return etag, BASE_TIME + int.from_bytes(digest[:8], "big") % TIME_SPAN

    def head(self, key: str) -> ObjectMeta | None:
        """HeadObject of *key*; None when there is no such key."""
        place = self._find(key)
        if place is None:
            return None
        return ObjectMeta(key, self._size_at(*place), *self.stamp(key))

    def get(self, key: str) -> bytes | None:
        """The bytes of *key*; None when there is no such key."""
        place = self._find(key)
        return None if place is None else self._data_at(*place)


# -- HTTP ---------------------------------------------------------------------


def _error_xml(code: str, message: str, **extra: str) -> bytes:
    parts = [_XML_HEAD, f"<Error><Code>{code}</Code><Message>{_escape(message)}</Message>"]
    parts += [f"<{name}>{_escape(value)}</{name}>" for name, value in extra.items()]
    parts.append("<RequestId>synths3</RequestId></Error>")
    return "".join(parts).encode()


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a Range header asks of *size* bytes; None for
    the whole object (no header, or one S3 ignores).  Follows moto: a start
    past the end, or ``bytes=-0``, is 416 InvalidRange; an end past the end
    is clamped; a suffix longer than the object is the whole object."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first = int(match.group(1)) if match.group(1) else None
    end = int(match.group(2)) if match.group(2) else None
    last = size - 1
    if (first is None and end == 0) or (first is not None and first > last):
        raise _HttpError(
            416,
            "InvalidRange",
            "The requested range is not satisfiable",
            RangeRequested=header,
            ActualObjectSize=str(size),
        )
    if first is None:
        assert end is not None
        first, end = size - min(end, size), last
    else:
        end = last if end is None else min(end, last)
    if first > end:
        return None
    return first, end


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    synth: SynthS3


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's
        # algorithm and the client's delayed ACK add 40 ms to every answer on
        # a kept-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _answer(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        length: int | None = None,
        content_type: str | None = "application/xml",
    ) -> None:
        """Send an answer: *length* is the Content-Length (for HEAD, the
        length a GET would have), *body* is sent unless the request is HEAD."""
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("x-amz-request-id", f"{threading.get_ident():016x}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _fail(self, error: _HttpError) -> None:
        headers = {}
        if error.status == 416 and "ActualObjectSize" in error.extra:
            headers["Content-Range"] = f"bytes */{error.extra['ActualObjectSize']}"
        body = b"" if self.command == "HEAD" else _error_xml(error.code, error.message, **error.extra)
        self._answer(error.status, body, headers)

    def _discard_body(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            piece = self.rfile.read(min(length, 1 << 16))
            if not piece:
                self.close_connection = True
                return
            length -= len(piece)

    def _handle(self) -> None:
        synth = self.server.synth
        self._discard_body()
        path, _, query = self.path.partition("?")
        if path == "/_synths3/stats" and self.command == "GET":
            self._answer(200, json.dumps(synth.stats()).encode(), content_type="application/json")
            return
        synth.count("requests")
        if synth.request_delay:
            time.sleep(synth.request_delay)
        try:
            self._route(synth, path, urllib.parse.parse_qs(query, keep_blank_values=True))
        except _HttpError as error:
            self._fail(error)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def _route(self, synth: SynthS3, path: str, query: dict[str, list[str]]) -> None:
        query.pop("x-id", None)  # botocore names some operations in the query
        bucket, _, key = path[1:].partition("/")
        bucket, key = urllib.parse.unquote(bucket), urllib.parse.unquote(key)
        if bucket != synth.bucket:
            if not bucket:
                raise _HttpError(501, "NotImplemented", "ListBuckets is not implemented")
            raise _HttpError(404, "NoSuchBucket", "The specified bucket does not exist", BucketName=bucket)
        if not key:
            self._bucket_request(synth, query)
            return
        if self.command not in ("GET", "HEAD"):
            synth.count("other_requests")
            raise _HttpError(501, "NotImplemented", f"{self.command} of an object is not implemented")
        unknown = [name for name in query if not name.startswith("response-")]
        if unknown:
            synth.count("other_requests")
            raise _HttpError(501, "NotImplemented", f"?{unknown[0]} is not implemented")
        synth.count("get_requests" if self.command == "GET" else "head_requests")
        self._object_request(synth, key)

    def _bucket_request(self, synth: SynthS3, query: dict[str, list[str]]) -> None:
        if self.command == "HEAD" and not query:
            synth.count("head_bucket_requests")
            self._answer(200, headers={"x-amz-bucket-region": "us-east-1"}, content_type=None)
            return
        if self.command == "GET" and query.get("list-type") == ["2"]:
            synth.count("list_requests")
            if synth.list_delay:
                time.sleep(synth.list_delay)
            self._answer(200, self._list_xml(synth, query))
            return
        if self.command == "GET" and not (
            set(query) - {"prefix", "delimiter", "marker", "max-keys", "encoding-type"}
        ):
            # ListObjects (v1): the registry's S3 driver lists, stats and deletes with it.
            synth.count("list_requests")
            if synth.list_delay:
                time.sleep(synth.list_delay)
            self._answer(200, self._list_xml(synth, query, version=1))
            return
        if self.command == "GET" and "uploads" in query:
            synth.count("list_uploads_requests")
            self._answer(200, self._uploads_xml(synth, query))
            return
        synth.count("other_requests")
        raise _HttpError(
            501,
            "NotImplemented",
            "A header or query you provided requested a function that is not implemented.",
        )

    @staticmethod
    def _uploads_xml(synth: SynthS3, query: dict[str, list[str]]) -> bytes:
        parts = [_XML_HEAD, f'<ListMultipartUploadsResult xmlns="{_NS}">']
        parts.append(
            f"<Bucket>{_escape(synth.bucket)}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>"
        )
        for name, element in (("prefix", "Prefix"), ("delimiter", "Delimiter")):
            if name in query:
                parts.append(f"<{element}>{_escape(query[name][0])}</{element}>")
        parts.append("<NextKeyMarker></NextKeyMarker><NextUploadIdMarker></NextUploadIdMarker>")
        parts.append("<MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>")
        parts.append("</ListMultipartUploadsResult>")
        return "".join(parts).encode()

    @staticmethod
    def _list_xml(synth: SynthS3, query: dict[str, list[str]], version: int = 2) -> bytes:
        def param(name: str) -> str:
            return query.get(name, [""])[0]

        prefix, delimiter = param("prefix"), param("delimiter")
        start_after = param("start-after") if version == 2 else param("marker")
        token, encoding = param("continuation-token"), param("encoding-type")
        if encoding and encoding != "url":
            raise _HttpError(400, "InvalidArgument", "Invalid Encoding Method specified in Request")
        try:
            requested = int(param("max-keys") or MAX_PAGE)
        except ValueError:
            raise _HttpError(
                400, "InvalidArgument", "Provided max-keys not an integer or within integer range"
            ) from None
        if requested < 0:
            raise _HttpError(
                400, "InvalidArgument", "Argument maxKeys must be an integer between 0 and 2147483647"
            )
        max_keys = min(requested, MAX_PAGE)
        after = start_after
        if "continuation-token" in query:
            try:
                after = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
            except (ValueError, UnicodeError, binascii.Error):
                raise _HttpError(
                    400, "InvalidArgument", "The continuation token provided is incorrect"
                ) from None
        page = synth.layout.list_objects(prefix, delimiter, after, max_keys)

        def show(text: str) -> str:
            return _escape(_url_encoded(text) if encoding else text)

        layout = synth.layout
        parts = [_XML_HEAD, f'<ListBucketResult xmlns="{_NS}"><Name>{_escape(synth.bucket)}</Name>']
        parts.append(f"<Prefix>{show(prefix)}</Prefix>")
        if delimiter:
            parts.append(f"<Delimiter>{show(delimiter)}</Delimiter>")
        parts.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if version == 1:
            parts.append(f"<Marker>{show(start_after)}</Marker>")
            if page.truncated and page.last is not None and delimiter:
                parts.append(f"<NextMarker>{show(page.last)}</NextMarker>")
        else:
            parts.append(f"<KeyCount>{len(page.contents) + len(page.prefixes)}</KeyCount>")
        parts.append(f"<IsTruncated>{'true' if page.truncated else 'false'}</IsTruncated>")
        if "continuation-token" in query:
            parts.append(f"<ContinuationToken>{_escape(token)}</ContinuationToken>")
        if page.truncated and page.last is not None:
            next_token = base64.urlsafe_b64encode(page.last.encode()).decode("ascii")
            parts.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
        if start_after and version == 2:
            parts.append(f"<StartAfter>{show(start_after)}</StartAfter>")
        if encoding:
            parts.append(f"<EncodingType>{encoding}</EncodingType>")
        fetch_owner = param("fetch-owner") == "true"
        for key, size in page.contents:
            etag, modified = layout.stamp(key)
            parts.append(
                f"<Contents><Key>{show(key)}</Key><LastModified>{_iso8601(modified)}</LastModified>"
                f"<ETag>&quot;{etag}&quot;</ETag><Size>{size}</Size>"
            )
            if fetch_owner:
                parts.append("<Owner><ID>synths3</ID><DisplayName>synths3</DisplayName></Owner>")
            parts.append("<StorageClass>STANDARD</StorageClass></Contents>")
        for common in page.prefixes:
            parts.append(f"<CommonPrefixes><Prefix>{show(common)}</Prefix></CommonPrefixes>")
        parts.append("</ListBucketResult>")
        return "".join(parts).encode()

    def _object_request(self, synth: SynthS3, key: str) -> None:
        layout = synth.layout
        meta = layout.head(key)
        if meta is None:
            raise _HttpError(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        etag = f'"{meta.etag}"'
        headers = {
            "ETag": etag,
            "Last-Modified": email.utils.formatdate(meta.last_modified, usegmt=True),
            "Accept-Ranges": "bytes",
        }
        wanted = self.headers.get("If-Match")
        if wanted is not None and not _etag_matches(wanted, meta.etag):
            raise _HttpError(
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
                Condition="If-Match",
            )
        unwanted = self.headers.get("If-None-Match")
        if unwanted is not None and _etag_matches(unwanted, meta.etag):
            self._answer(304, headers=headers, content_type=None)
            return
        span = _byte_range(self.headers.get("Range"), meta.size)
        status, first, end = 200, 0, meta.size - 1
        if span is not None:
            status, (first, end) = 206, span
            headers["Content-Range"] = f"bytes {first}-{end}/{meta.size}"
        data = b"" if self.command == "HEAD" else layout.get(key) or b""
        self._answer(
            status,
            data[first : end + 1],
            headers,
            length=end - first + 1,
            content_type="application/octet-stream",
        )


def _etag_matches(header: str, etag: str) -> bool:
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/").strip('"') == etag:
            return True
    return False


class SynthS3:
    """The HTTP server of a :class:`SynthLayout` as bucket *bucket*, on
    loopback, in daemon threads of this process.

    *list_delay* seconds are slept before each ListObjectsV2 answer, and
    *request_delay* before every request.  Counters (``list_requests``,
    ``head_requests``, ``get_requests`` and others, see :meth:`stats`) count
    the requests by kind.
    """

    def __init__(
        self,
        layout: SynthLayout,
        bucket: str = "synth",
        *,
        list_delay: float = 0.0,
        request_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.layout = layout
        self.bucket = bucket
        self.list_delay = list_delay
        self.request_delay = request_delay
        self._address = (host, port)
        self._server: _Server | None = None
        self._counts: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()

    def count(self, kind: str) -> None:
        with self._count_lock:
            self._counts[kind] += 1

    def stats(self) -> dict[str, int]:
        """The request counters and the bucket's key count."""
        names = ("requests", "list_requests", "head_requests", "get_requests")
        with self._count_lock:
            found = {name: self._counts[name] for name in names}
            found.update(self._counts)
        found["keys"] = self.layout.key_count()
        return found

    @property
    def list_requests(self) -> int:
        return self._counts["list_requests"]

    @property
    def head_requests(self) -> int:
        return self._counts["head_requests"]

    @property
    def get_requests(self) -> int:
        return self._counts["get_requests"]

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bind(self) -> SynthS3:
        """Listen (requests wait in the backlog until served)."""
        server = _Server(self._address, _Handler)
        server.synth = self
        self._server = server
        return self

    def start(self) -> SynthS3:
        """Listen and serve in a daemon thread."""
        if self._server is None:
            self.bind()
        assert self._server is not None
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` (from another thread) or
        an exception (a signal handler's) ends it."""
        if self._server is None:
            self.bind()
        assert self._server is not None
        self._server.serve_forever()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.synths3", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, required=True, help="about this many keys")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--bucket", default="synth")
    parser.add_argument("--rootdirectory", default="")
    parser.add_argument("--list-delay", type=float, default=0.0, help="seconds before each LIST answer")
    parser.add_argument("--request-delay", type=float, default=0.0, help="seconds before each request")
    parser.add_argument(
        "--wide-uploads",
        type=int,
        default=0,
        help="uploads in the first repository's _uploads (a wide directory)",
    )
    args = parser.parse_args(argv)
    layout = SynthLayout(
        args.keys, seed=args.seed, rootdirectory=args.rootdirectory, wide_uploads=args.wide_uploads
    )
    server = SynthS3(
        layout,
        args.bucket,
        list_delay=args.list_delay,
        request_delay=args.request_delay,
        port=args.port,
    ).bind()
    signal.signal(signal.SIGTERM, _stop)
    print(f"listening on 127.0.0.1:{server.port} keys={layout.key_count()}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
