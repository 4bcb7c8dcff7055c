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

Cost: a repository's model (its tags and the digests linked into it) comes
from one listing of its subtree (flat: about one request per 1,000 keys), so
listing ``_images`` down to the repositories' own entries costs about one
request per repository; the ``current/link`` of a tag that has pointed to
several manifests is read (one GET) only when its target is needed.  What needs more is paid when it is asked
for: blob sizes from listings of the ``blobs/`` fan-out directories the
repository uses (never a HEAD per blob) when ``blobs/``, ``_tags/<tag>`` or
the repository's size is read, and one GET per manifest ever (the manifest
cache, by digest, shared with the reports)
when ``index.json``'s content or size, or a tag's directory, is read.  A model
is rebuilt once it is older than ``metadata_ttl``.

Memory: at most MODEL_ENTRIES_KEPT tags and digests of models and
MANIFEST_BYTES_KEPT bytes of manifests are kept (least recently used go
first); the view's own nodes are dropped once the kernel forgets them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from s3regfs import layout
from s3regfs.errors import NotFound, StorageError
from s3regfs.inode_cache import Namespace, Node
from s3regfs.manifest_cache import DigestMismatch, ManifestCache
from s3regfs.storage.base import ObjectStore

log = logging.getLogger(__name__)

VIEW_NAME = "_images"
REPOSITORIES = f"{layout.REGISTRY_ROOT}/repositories"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
DIR_VERSION = b"Directory Transport Version: 1.1\n"
LAYOUT_NAMES = ("blobs", "index.json", "oci-layout", "_tags")
REF_NAME = "org.opencontainers.image.ref.name"


#: Tags and digests of repository models kept at most (a model is listed
#: again when it was dropped).
MODEL_ENTRIES_KEPT = 200_000
#: Bytes of manifests (and multi-entry tags' links) kept at most.
MANIFEST_BYTES_KEPT = 16 * 1024 * 1024
#: The target of a tag that pointed to several manifests, until its
#: current/link is read.
MOVED = ""
#: View nodes remembered before the ones the kernel forgot are swept.
VIEW_NODES_SWEEP = 4096


@dataclass
class Tag:
    digest: str
    media_type: str
    size: int
    manifest: bytes


@dataclass
class Repository:
    """What the view shows of one repository, built from its raw layout:
    names and digests only (blob nodes and manifests are looked up when used)."""

    name: str
    #: Tag -> the digest of the manifest it points to (MOVED: not read yet).
    tags: dict[str, str] = field(default_factory=dict)
    #: Every digest linked into the repository (manifest revisions, layers), sorted.
    digests: list[str] = field(default_factory=list)
    built_at: float = 0.0

    @property
    def entries(self) -> int:
        return len(self.tags) + len(self.digests)


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

    def __init__(
        self, namespace: Namespace, store: ObjectStore, ttl: float, manifests: ManifestCache | None = None
    ) -> None:
        self._namespace = namespace
        self._store = store
        #: Manifest bodies by digest (memory and -o cachedir), shared with the reports.
        self._manifests = manifests
        self._ttl = ttl
        self._nodes: dict[str, Node] = {}
        self._kinds: dict[int, _Kind] = {}
        self._content: dict[int, bytes] = {}
        self._repos: OrderedDict[str, Repository] = OrderedDict()
        self._model_entries = 0
        self._small_cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._small_bytes = 0
        self._locks: dict[str, trio.Lock] = {}
        self._sweep_at = VIEW_NODES_SWEEP
        #: (repository, tag, target) of dangling tags already logged.
        self._warned: set[tuple[str, str, str]] = set()
        self.root = self._virtual("", VIEW_NAME, namespace.root, _Kind("dir"))
        self.root.doomed = False  # always reachable by name: kept

    # -- nodes ------------------------------------------------------------------------

    def _virtual(
        self, view_path: str, name: str, parent: Node, kind: _Kind, content: bytes | None = None
    ) -> Node:
        """The view node of *view_path*, made when missing (or dropped since
        the kernel forgot it); files have *kind* "file" or "index"."""
        node = self._nodes.get(view_path)
        if node is None or not self._namespace.knows(node):
            if len(self._nodes) >= self._sweep_at:
                self._sweep()
            is_dir = kind.what not in ("file", "index")
            node = self._namespace.new_virtual(name, parent, is_dir=is_dir)
            node.doomed = True  # dropped when the kernel forgets it, made again when asked for
            self._nodes[view_path] = node
            self._kinds[node.ino] = dataclasses.replace(kind, path=view_path)
        if content is not None:
            self._set_content(node, content)
        return node

    def _set_content(self, node: Node, content: bytes) -> None:
        if self._content.get(node.ino) != content:
            node.mtime_ns = time.time_ns()
        self._content[node.ino] = content
        node.size = len(content)

    def _sweep(self) -> None:
        """Forget the view nodes the namespace dropped (the kernel forgot them)."""
        gone = [path for path, node in self._nodes.items() if not self._namespace.knows(node)]
        for path in gone:
            node = self._nodes.pop(path)
            self._kinds.pop(node.ino, None)
            self._content.pop(node.ino, None)
            self._namespace.discard_virtual(node)
        # Amortized: the next sweep when the nodes have doubled.
        self._sweep_at = max(VIEW_NODES_SWEEP, 2 * len(self._nodes))

    def owns(self, node: Node) -> bool:
        """Whether *node* is one of the view's own (virtual) nodes."""
        return node.ino in self._kinds

    def content(self, node: Node) -> bytes | None:
        """The bytes of a virtual file as last prepared (None for anything else)."""
        return self._content.get(node.ino)

    def built_on_demand(self, node: Node) -> bool:
        """Whether *node*'s content is built when read (it can change between
        a stat and a read: no page cache for it)."""
        kind = self._kinds.get(node.ino)
        return kind is not None and kind.what == "index"

    async def prepare(self, node: Node) -> None:
        """Make a view file's content and size current (index.json is built
        when first read or stat'ed: it costs a GET per manifest)."""
        kind = self._kinds.get(node.ino)
        if kind is None or kind.what != "index":
            return
        repo = await self.repository(kind.repo)
        self._set_content(node, await self._index_json(repo))

    # -- listing ----------------------------------------------------------------------

    async def children(self, node: Node, only: str | None = None) -> list[tuple[str, Node]]:
        """The entries of a view directory, sorted by name; with *only*, just
        that one (if it is there): the view makes nodes for what it hands out."""

        def wanted(name: str) -> bool:
            return only is None or name == only

        kind = self._kinds[node.ino]
        view_path = kind.path
        entries: dict[str, Node] = {}
        if kind.what == "dir":
            raw = await self._raw_dir(kind.repo)
            if raw is not None:
                assert raw.children is not None
                is_repository = "_manifests" in raw.children or "_layers" in raw.children
                for name, child in list(raw.children.items()):
                    if is_repository and name in LAYOUT_NAMES:
                        continue  # the layout wins over a sub-repository of that name
                    if child.is_dir and not name.startswith("_") and wanted(name):
                        entries[name] = self._virtual(
                            _join(view_path, name), name, node, _Kind("dir", _join(kind.repo, name))
                        )
                if is_repository and (only is None or only in LAYOUT_NAMES):
                    repo = await self.repository(kind.repo)
                    entries |= self._layout_entries(node, view_path, repo, wanted)
        elif kind.what == "blobs":
            repo = await self.repository(kind.repo)
            for algorithm in sorted({d.split(":", 1)[0] for d in repo.digests}):
                if wanted(algorithm):
                    entries[algorithm] = self._virtual(
                        f"{view_path}/{algorithm}", algorithm, node, _Kind("alg", kind.repo, algorithm)
                    )
        elif kind.what == "alg":
            repo = await self.repository(kind.repo)
            digests = [
                d for d in repo.digests if d.startswith(kind.extra + ":") and wanted(d.partition(":")[2])
            ]
            for digest, blob in (await self._blobs(digests)).items():
                hexdigest = digest.partition(":")[2]
                entries[hexdigest] = self._share(blob, f"{view_path}/{hexdigest}")
        elif kind.what == "tags":
            repo = await self.repository(kind.repo)
            for tag_name in await self._tags_with_blobs(repo):
                if wanted(tag_name):
                    entries[tag_name] = self._virtual(
                        f"{view_path}/{tag_name}", tag_name, node, _Kind("tag", kind.repo, tag_name)
                    )
        elif kind.what == "tag":
            repo = await self.repository(kind.repo)
            target = (await self._targets(repo, kind.extra)).get(kind.extra)
            tag = await self._tag(repo, kind.extra, target) if target is not None else None
            if tag is not None:
                manifest = await self._blob(tag.digest)
                if manifest is not None and wanted("manifest.json"):
                    entries["manifest.json"] = self._share(manifest, f"{view_path}/manifest.json")
                if wanted("version"):
                    entries["version"] = self._virtual(
                        f"{view_path}/version", "version", node, _Kind("file"), DIR_VERSION
                    )
                referenced = [(name, digest) for name, digest in await self._referenced(tag) if wanted(name)]
                found = await self._blobs([digest for _, digest in referenced])
                for name, digest in referenced:
                    if digest in found:
                        entries[name] = self._share(found[digest], f"{view_path}/{name}")
        return sorted(entries.items())

    async def lookup(self, node: Node, name: str) -> Node:
        for child_name, child in await self.children(node, only=name):
            if child_name == name:
                return child
        raise NotFound(f"{VIEW_NAME}: no {name!r} here")

    def _layout_entries(
        self, node: Node, view_path: str, repo: Repository, wanted: Callable[[str], bool]
    ) -> dict[str, Node]:
        made: dict[str, Callable[[], Node]] = {
            "oci-layout": lambda: self._virtual(
                _join(view_path, "oci-layout"), "oci-layout", node, _Kind("file"), OCI_LAYOUT
            ),
            "index.json": lambda: self._virtual(
                _join(view_path, "index.json"), "index.json", node, _Kind("index", repo.name)
            ),
            "blobs": lambda: self._virtual(
                _join(view_path, "blobs"), "blobs", node, _Kind("blobs", repo.name)
            ),
            "_tags": lambda: self._virtual(
                _join(view_path, "_tags"), "_tags", node, _Kind("tags", repo.name)
            ),
        }
        return {name: make() for name, make in made.items() if wanted(name)}

    async def _index_json(self, repo: Repository) -> bytes:
        targets = await self._targets(repo)
        await self._list_fanouts(set(targets.values()))
        manifests = []
        for name, target in sorted(targets.items()):
            tag = await self._tag(repo, name, target)
            if tag is not None:
                manifests.append(
                    {
                        "mediaType": tag.media_type,
                        "digest": tag.digest,
                        "size": tag.size,
                        "annotations": {REF_NAME: name},
                    }
                )
        return json.dumps({"schemaVersion": 2, "manifests": manifests}, indent=2).encode()

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
        await self._namespace.ensure_listed(node, whole=True)
        return node

    async def _list(self, path: str) -> list[Node]:
        try:
            node = await self._namespace.resolve(path)
        except NotFound:
            return []
        return await self._namespace.list_children(node) if node.is_dir else []

    async def repository(self, name: str) -> Repository:
        """The model of repository *name* (rebuilt when older than metadata_ttl)."""
        cached = self._fresh_model(name)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(name, trio.Lock())
        try:
            async with lock:  # one build at a time per repository
                cached = self._fresh_model(name)
                if cached is not None:
                    return cached
                repo = await self._build(name)
        finally:
            # Released to a waiter, the lock is that waiter's now: kept.
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(name, None)
        self._keep_model(repo)
        return repo

    def _fresh_model(self, name: str) -> Repository | None:
        cached = self._repos.get(name)
        if cached is None or time.monotonic() - cached.built_at >= self._ttl:
            return None
        self._repos.move_to_end(name)
        return cached

    def _keep_model(self, repo: Repository) -> None:
        old = self._repos.pop(repo.name, None)
        if old is not None:
            self._model_entries -= old.entries
        self._repos[repo.name] = repo
        self._model_entries += repo.entries
        while self._model_entries > MODEL_ENTRIES_KEPT and len(self._repos) > 1:
            _, dropped = self._repos.popitem(last=False)
            self._model_entries -= dropped.entries

    async def _build(self, name: str) -> Repository:
        """The repository's names and digests, from the listing of its subtree
        (the first _raw_dir or _list lists it flat; the rest are answered from
        the cache); moved tags' targets are read later (see _targets)."""
        repo = Repository(name, built_at=time.monotonic())
        base = _join(REPOSITORIES, name)
        digests: set[str] = set()
        for kind in ("_manifests/revisions", "_layers"):
            for algorithm in await self._list(f"{base}/{kind}"):
                for entry in await self._list(f"{base}/{kind}/{algorithm.name}"):
                    if entry.is_dir and entry.children and "link" in entry.children:
                        digests.add(f"{algorithm.name}:{entry.name}")
        repo.digests = sorted(digests)
        for tag_dir in await self._list(f"{base}/_manifests/tags"):
            repo.tags[tag_dir.name] = await self._tag_target(f"{base}/_manifests/tags/{tag_dir.name}")
        return repo

    async def _targets(self, repo: Repository, only: str | None = None) -> dict[str, str]:
        """Tag -> digest for every tag of *repo* (or just *only*), reading the
        current/link of moved tags not read yet; tags whose link holds no
        digest, or that vanished meanwhile, are logged and left out."""
        base = _join(REPOSITORIES, repo.name)
        for name in [only] if only is not None else list(repo.tags):
            if repo.tags.get(name) != MOVED:
                continue
            try:
                link = await self._namespace.resolve(f"{base}/_manifests/tags/{name}/current/link")
                target = (await self._small(link)).decode("utf-8", "replace").strip()
            except (StorageError, NotFound) as exc:
                # One tag that changed or vanished meanwhile must not hide the others.
                log.warning("%s:%s left out of the view: %s", repo.name, name, exc)
                repo.tags.pop(name, None)
                continue
            if layout.blob_data_path(target) is None:  # an empty or garbled link
                log.warning(
                    "%s:%s left out of the view: its link holds no digest (%r)", repo.name, name, target[:100]
                )
                repo.tags.pop(name, None)
                continue
            repo.tags[name] = target
        if only is not None:
            return {only: repo.tags[only]} if only in repo.tags else {}
        return dict(repo.tags)

    async def _tags_with_blobs(self, repo: Repository) -> list[str]:
        """The tags whose manifest blob is in the bucket (the others are logged)."""
        targets = await self._targets(repo)
        found = await self._blobs(sorted(set(targets.values())))
        tags = []
        for name, target in targets.items():
            if target in found:
                tags.append(name)
            else:
                self._warn_dangling(repo.name, name, target)
        return tags

    def _warn_dangling(self, repository: str, tag: str, target: str) -> None:
        if (repository, tag, target) not in self._warned:
            if len(self._warned) >= MODEL_ENTRIES_KEPT:
                self._warned.clear()
            self._warned.add((repository, tag, target))
            log.warning("%s:%s points to %s, which is not in the bucket", repository, tag, target)

    async def _tag(self, repo: Repository, name: str, target: str) -> Tag | None:
        """What tag *name* points to: its manifest blob's size, media type and
        bytes (None, logged, when the blob is missing or unreadable)."""
        try:
            blob = await self._blob(target)
            if blob is None:
                self._warn_dangling(repo.name, name, target)
                return None
            manifest = await self._manifest(target, blob) if blob.size <= layout.MANIFEST_MAX else b""
        except StorageError as exc:
            log.warning("%s:%s left out of the view: %s", repo.name, name, exc)
            return None
        media_type = layout.manifest_media_type(manifest) or "application/octet-stream"
        return Tag(target, media_type, blob.size, manifest)

    async def _tag_target(self, tag_path: str) -> str:
        """The digest a tag points to, from the listing: a tag that only ever
        pointed to one manifest has one entry in its ``index/``.  MOVED for
        one that pointed to several: its ``current/link`` is read when the
        target is needed (see _targets), not to list the repository."""
        history = [
            (algorithm.name, entry.name)
            for algorithm in await self._list(f"{tag_path}/index")
            for entry in await self._list(f"{tag_path}/index/{algorithm.name}")
        ]
        if len(history) == 1:
            return f"{history[0][0]}:{history[0][1]}"
        return MOVED

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
                await self._namespace.ensure_listed(node, whole=True)

    async def _blobs(self, digests: list[str]) -> dict[str, Node]:
        """The data nodes of the *digests* that are in the bucket."""
        await self._list_fanouts(set(digests))
        found: dict[str, Node] = {}
        for digest in digests:
            blob = await self._blob(digest)
            if blob is not None:
                found[digest] = blob
        return found

    async def _blob(self, digest: str) -> Node | None:
        path = layout.blob_data_path(digest)
        if path is None:
            return None
        try:
            node = await self._namespace.resolve(path)
        except NotFound:
            return None
        return None if node.is_dir else node

    async def _manifest(self, digest: str, blob: Node) -> bytes:
        """A manifest's bytes: from the manifest cache (kept by digest across
        mounts) when there is one.  Bytes that do not match the digest are
        used all the same (the registry serves them), and logged."""
        key = self._namespace.key(blob)
        if self._manifests is None or (key, blob.etag) in self._small_cache:
            return await self._small(blob)  # (a mismatched one is kept there, by ETag)
        try:
            return await self._manifests.get(digest, key, blob.size)
        except DigestMismatch as exc:
            if self._manifests.first_mismatch(digest):
                log.warning("%s", exc)
            self._keep_small(key, blob.etag, exc.data)
            return exc.data

    async def _small(self, node: Node) -> bytes:
        key = self._namespace.key(node)
        cached = self._small_cache.get((key, node.etag))
        if cached is not None:
            self._small_cache.move_to_end((key, node.etag))
            return cached
        data = await self._store.get_range(key, 0, node.size, node.etag or None)
        self._keep_small(key, node.etag, data)
        return data

    def _keep_small(self, key: str, etag: str, data: bytes) -> None:
        if (key, etag) in self._small_cache:
            return
        self._small_cache[(key, etag)] = data
        self._small_bytes += len(data)
        while self._small_bytes > MANIFEST_BYTES_KEPT and len(self._small_cache) > 1:
            _, dropped = self._small_cache.popitem(last=False)
            self._small_bytes -= len(dropped)

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
                        documents.append(await self._manifest(digest, child))
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
        size = sum(blob.size for blob in (await self._blobs(repo.digests)).values())
        return {
            b"user.registry.tags": "\n".join(sorted(await self._tags_with_blobs(repo))).encode(),
            b"user.registry.size": str(size).encode(),
        }


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a and b else a or b
