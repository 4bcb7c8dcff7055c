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

#: Pages a flat listing may take below any other directory: a repository of a
#: few thousand link files, or blobs/sha256 of a small registry, in one go.
FLAT_LISTING_PAGES = 8

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
