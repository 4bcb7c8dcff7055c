# SPDX-License-Identifier: MIT
"""The read-only ``_images`` view: every repository as an OCI image layout.

``_images/<repository>/`` holds ``oci-layout``, ``index.json`` (one descriptor
per tag, the tag in the ``org.opencontainers.image.ref.name`` annotation) and
``blobs/<alg>/<hex>`` for every blob linked into the repository (manifest
revisions and layers); ``_tags/<tag>/`` is the same image in skopeo's ``dir:``
layout (``manifest.json``, ``version``, blobs named by hex digest).  A
repository directory also holds its sub-repositories; where one is named like
a layout entry (``blobs``, ``index.json``, ``oci-layout``, ``_tags``), the
layout wins.

Blob files *are* the raw ``blobs/.../data`` nodes (the same inode, read through
the same read path; their ``view_names`` count the extra names), so du, tar
and rsync -H count each blob once.  Everything else is a virtual node owned
here: directories, and small files whose bytes are built in memory.

Cost: a repository's model comes from the namespace's listings (its subtree
is listed flat: about one request per 1,000 keys), one GET per tag's manifest
blob (cached by ETag), one more for the ``current/link`` of a tag that has
pointed to several manifests, and the blobs' sizes from listings of
``blobs/``, never a HEAD per blob.  A model is rebuilt once it is
older than ``metadata_ttl``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field

import trio

from s3regfs import layout
from s3regfs.errors import NotFound, StorageError
from s3regfs.inode_cache import Namespace, Node
from s3regfs.storage.base import ObjectStore

log = logging.getLogger(__name__)

VIEW_NAME = "_images"
REPOSITORIES = f"{layout.REGISTRY_ROOT}/repositories"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
DIR_VERSION = b"Directory Transport Version: 1.1\n"
LAYOUT_NAMES = ("blobs", "index.json", "oci-layout", "_tags")
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass
class Tag:
    digest: str
    media_type: str
    size: int
    manifest: bytes


@dataclass
class Repository:
    """What the view shows of one repository, built from the raw layout."""

    name: str
    tags: dict[str, Tag] = field(default_factory=dict)
    blobs: dict[str, Node] = field(default_factory=dict)
    built_at: float = 0.0

    @property
    def size(self) -> int:
        return sum(node.size for node in self.blobs.values())


@dataclass(frozen=True)
class _Kind:
    """What a virtual node stands for."""

    what: str  # "dir" (namespace/repository), "blobs", "alg", "tags", "tag", "file"
    repo: str = ""
    extra: str = ""
    #: The node's path below ``_images`` ("" for ``_images`` itself).
    path: str = ""


class ImagesView:
    """The ``_images`` tree; see the module docstring."""

    def __init__(self, namespace: Namespace, store: ObjectStore, ttl: float) -> None:
        self._namespace = namespace
        self._store = store
        self._ttl = ttl
        self._nodes: dict[str, Node] = {}
        self._kinds: dict[int, _Kind] = {}
        self._content: dict[int, bytes] = {}
        self._repos: dict[str, Repository] = {}
        self._small_cache: dict[tuple[str, str], bytes] = {}
        self._locks: dict[str, trio.Lock] = {}
        self.root = self._virtual("", VIEW_NAME, namespace.root, _Kind("dir"))

    # -- nodes ------------------------------------------------------------------------

    def _virtual(
        self, view_path: str, name: str, parent: Node, kind: _Kind, content: bytes | None = None
    ) -> Node:
        node = self._nodes.get(view_path)
        if node is None:
            node = self._namespace.new_virtual(name, parent, is_dir=content is None)
            self._nodes[view_path] = node
            self._kinds[node.ino] = dataclasses.replace(kind, path=view_path)
        if content is not None:
            self._content[node.ino] = content
            node.size = len(content)
            node.mtime_ns = time.time_ns() if node.mtime_ns == 0 else node.mtime_ns
        return node

    def owns(self, node: Node) -> bool:
        """Whether *node* is one of the view's own (virtual) nodes."""
        return node.ino in self._kinds

    def content(self, node: Node) -> bytes | None:
        """The bytes of a virtual file (None for anything else)."""
        return self._content.get(node.ino)

    # -- listing ----------------------------------------------------------------------

    async def children(self, node: Node) -> list[tuple[str, Node]]:
        """The entries of a view directory, sorted by name."""
        kind = self._kinds[node.ino]
        view_path = kind.path
        entries: dict[str, Node] = {}
        if kind.what == "dir":
            raw = await self._raw_dir(kind.repo)
            if raw is not None:
                assert raw.children is not None
                is_repository = "_manifests" in raw.children or "_layers" in raw.children
                for name, child in raw.children.items():
                    if is_repository and name in LAYOUT_NAMES:
                        continue  # the layout wins over a sub-repository of that name
                    if child.is_dir and not name.startswith("_"):
                        entries[name] = self._virtual(
                            _join(view_path, name), name, node, _Kind("dir", _join(kind.repo, name))
                        )
                if is_repository:
                    repo = await self.repository(kind.repo)
                    entries |= self._layout_entries(node, view_path, repo)
        elif kind.what == "blobs":
            repo = await self.repository(kind.repo)
            for algorithm in sorted({d.split(":", 1)[0] for d in repo.blobs}):
                entries[algorithm] = self._virtual(
                    f"{view_path}/{algorithm}", algorithm, node, _Kind("alg", kind.repo, algorithm)
                )
        elif kind.what == "alg":
            repo = await self.repository(kind.repo)
            for digest, blob in repo.blobs.items():
                algorithm, _, hexdigest = digest.partition(":")
                if algorithm == kind.extra:
                    entries[hexdigest] = self._share(blob, f"{view_path}/{hexdigest}")
        elif kind.what == "tags":
            repo = await self.repository(kind.repo)
            for tag_name in repo.tags:
                entries[tag_name] = self._virtual(
                    f"{view_path}/{tag_name}", tag_name, node, _Kind("tag", kind.repo, tag_name)
                )
        elif kind.what == "tag":
            repo = await self.repository(kind.repo)
            tag = repo.tags.get(kind.extra)
            if tag is not None:
                manifest = repo.blobs.get(tag.digest) or await self._blob(tag.digest)
                if manifest is not None:
                    entries["manifest.json"] = self._share(manifest, f"{view_path}/manifest.json")
                entries["version"] = self._virtual(
                    f"{view_path}/version", "version", node, _Kind("file"), DIR_VERSION
                )
                for name, digest in await self._referenced(tag):
                    found = repo.blobs.get(digest) or await self._blob(digest)
                    if found is not None:
                        entries[name] = self._share(found, f"{view_path}/{name}")
        return sorted(entries.items())

    async def lookup(self, node: Node, name: str) -> Node:
        for child_name, child in await self.children(node):
            if child_name == name:
                return child
        raise NotFound(f"{VIEW_NAME}: no {name!r} here")

    def _layout_entries(self, node: Node, view_path: str, repo: Repository) -> dict[str, Node]:
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": tag.media_type,
                    "digest": tag.digest,
                    "size": tag.size,
                    "annotations": {REF_NAME: name},
                }
                for name, tag in sorted(repo.tags.items())
            ],
        }
        return {
            "oci-layout": self._virtual(
                _join(view_path, "oci-layout"), "oci-layout", node, _Kind("file"), OCI_LAYOUT
            ),
            "index.json": self._virtual(
                _join(view_path, "index.json"),
                "index.json",
                node,
                _Kind("file"),
                json.dumps(index, indent=2).encode(),
            ),
            "blobs": self._virtual(_join(view_path, "blobs"), "blobs", node, _Kind("blobs", repo.name)),
            "_tags": self._virtual(_join(view_path, "_tags"), "_tags", node, _Kind("tags", repo.name)),
        }

    def _share(self, blob: Node, view_path: str) -> Node:
        if blob.view_names is None:
            blob.view_names = set()
        blob.view_names.add(view_path)
        return blob

    # -- the model ------------------------------------------------------------------

    async def _raw_dir(self, repo: str) -> Node | None:
        try:
            node = await self._namespace.resolve(_join(REPOSITORIES, repo))
        except NotFound:
            return None
        if not node.is_dir:
            return None
        await self._namespace.ensure_listed(node)
        return node

    async def _list(self, path: str) -> list[Node]:
        try:
            node = await self._namespace.resolve(path)
        except NotFound:
            return []
        return await self._namespace.list_children(node) if node.is_dir else []

    async def repository(self, name: str) -> Repository:
        """The model of repository *name* (rebuilt when older than metadata_ttl)."""
        cached = self._repos.get(name)
        if cached is not None and time.monotonic() - cached.built_at < self._ttl:
            return cached
        lock = self._locks.setdefault(name, trio.Lock())
        async with lock:  # one build at a time per repository
            cached = self._repos.get(name)
            if cached is not None and time.monotonic() - cached.built_at < self._ttl:
                return cached
            return await self._build(name)

    async def _build(self, name: str) -> Repository:
        repo = Repository(name, built_at=time.monotonic())
        base = _join(REPOSITORIES, name)
        digests: set[str] = set()
        for kind in ("_manifests/revisions", "_layers"):
            for algorithm in await self._list(f"{base}/{kind}"):
                for entry in await self._list(f"{base}/{kind}/{algorithm.name}"):
                    if entry.is_dir and entry.children and "link" in entry.children:
                        digests.add(f"{algorithm.name}:{entry.name}")
        await self._list_fanouts(digests)
        for digest in sorted(digests):
            blob = await self._blob(digest)
            if blob is not None:
                repo.blobs[digest] = blob
        for tag_dir in await self._list(f"{base}/_manifests/tags"):
            try:
                target = await self._tag_target(f"{base}/_manifests/tags/{tag_dir.name}")
                if layout.blob_data_path(target) is None:  # an empty or garbled link
                    log.warning(
                        "%s:%s left out of the view: its link holds no digest (%r)",
                        name,
                        tag_dir.name,
                        target[:100],
                    )
                    continue
                blob = repo.blobs.get(target) or await self._blob(target)
                if blob is None:
                    log.warning("%s:%s points to %s, which is not in the bucket", name, tag_dir.name, target)
                    continue
                manifest = await self._small(blob) if blob.size <= layout.MANIFEST_MAX else b""
            except StorageError as exc:
                # One tag that changed or vanished meanwhile must not hide the others.
                log.warning("%s:%s left out of the view: %s", name, tag_dir.name, exc)
                continue
            media_type = layout.manifest_media_type(manifest) or "application/octet-stream"
            repo.tags[tag_dir.name] = Tag(target, media_type, blob.size, manifest)
        self._repos[name] = repo
        return repo

    async def _tag_target(self, tag_path: str) -> str:
        """The digest a tag points to.  A tag that only ever pointed to one
        manifest has one entry in its ``index/``, which the listing already
        shows: no GET.  Otherwise its ``current/link`` is read."""
        history = [
            (algorithm.name, entry.name)
            for algorithm in await self._list(f"{tag_path}/index")
            for entry in await self._list(f"{tag_path}/index/{algorithm.name}")
        ]
        if len(history) == 1:
            return f"{history[0][0]}:{history[0][1]}"
        link = await self._namespace.resolve(f"{tag_path}/current/link")
        return (await self._small(link)).decode("utf-8", "replace").strip()

    async def _list_fanouts(self, digests: set[str]) -> None:
        """List each blob fan-out directory the digests need once, so their
        lookups cost nothing (never a request per blob, also after the TTL)."""
        paths = [layout.blob_data_path(digest) for digest in digests]
        needed = sorted({path.rsplit("/", 2)[0] for path in paths if path})
        for path in needed:
            try:
                node = await self._namespace.resolve(path)
            except NotFound:
                continue
            if node.is_dir:
                await self._namespace.ensure_listed(node)

    async def _blob(self, digest: str) -> Node | None:
        path = layout.blob_data_path(digest)
        if path is None:
            return None
        try:
            node = await self._namespace.resolve(path)
        except NotFound:
            return None
        return None if node.is_dir else node

    async def _small(self, node: Node) -> bytes:
        key = self._namespace.key(node)
        cached = self._small_cache.get((key, node.etag))
        if cached is None:
            cached = await self._store.get_range(key, 0, node.size, node.etag or None)
            self._small_cache[(key, node.etag)] = cached
        return cached

    async def _referenced(self, tag: Tag) -> list[tuple[str, str]]:
        """The files a tag's ``dir:`` copy needs, as (name, digest): config and
        layers by hex digest; for an index, its manifests as
        ``<hex>.manifest.json`` (skopeo's names) with their configs and layers."""
        found: dict[str, str] = {}
        documents = [tag.manifest]
        while documents:
            try:
                document = json.loads(documents.pop())
            except ValueError:
                continue
            if not isinstance(document, dict):
                continue
            config = document.get("config")
            blobs = [config] if isinstance(config, dict) else []
            blobs += [entry for entry in document.get("layers") or [] if isinstance(entry, dict)]
            for entry in blobs:
                if isinstance(entry.get("digest"), str):
                    found[entry["digest"].partition(":")[2]] = entry["digest"]
            for entry in document.get("manifests") or []:
                if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
                    digest = entry["digest"]
                    found[digest.partition(":")[2] + ".manifest.json"] = digest
                    child = await self._blob(digest)
                    if child is not None and child.size <= layout.MANIFEST_MAX:
                        documents.append(await self._small(child))
        return sorted(found.items())

    # -- facts ------------------------------------------------------------------------

    def is_repository(self, node: Node) -> bool:
        """Whether *node* is a repository directory of the view (built so far)."""
        kind = self._kinds.get(node.ino)
        return kind is not None and kind.what == "dir" and kind.repo in self._repos

    async def repository_facts(self, node: Node) -> dict[bytes, bytes]:
        """``user.registry.tags`` and ``user.registry.size`` of a repository directory."""
        kind = self._kinds.get(node.ino)
        if kind is None or kind.what != "dir" or not kind.repo:
            return {}
        raw = await self._raw_dir(kind.repo)
        if raw is None or not raw.children or not ("_manifests" in raw.children or "_layers" in raw.children):
            return {}
        repo = await self.repository(kind.repo)
        return {
            b"user.registry.tags": "\n".join(sorted(repo.tags)).encode(),
            b"user.registry.size": str(repo.size).encode(),
        }


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a and b else a or b
