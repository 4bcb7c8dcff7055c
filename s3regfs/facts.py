# SPDX-License-Identifier: MIT
"""Registry facts as extended attributes: what S3 says of an object, and what
the registry's layout says of a blob, a link or a repository.

Free of cost (listed by ``listxattr``): ``user.s3.etag``, ``user.s3.key``,
``user.s3.storage_class`` and a blob's ``user.registry.digest``.  At the cost
of a small GET and a lookup (listed only on link files):
``user.registry.target`` and ``user.registry.target_exists``.  Asked for by
name only, never listed (``getfattr -d``, ``cp -a`` and ``rsync -X`` would
otherwise hash every blob): a blob's ``user.registry.mediatype`` and
``user.registry.verify``.  A repository directory of the images view has
``user.registry.tags`` and ``user.registry.size``.

Files s3regfs makes up (the view's own, ``.s3regfs/stats``) have none of
these: they name no key.  Values are bytes; ``None`` means "no such
attribute", which fs.py answers with ENOATTR.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable

import trio

from s3regfs import layout
from s3regfs.errors import Unsupported
from s3regfs.images import ImagesView
from s3regfs.inode_cache import Namespace, Node
from s3regfs.storage.base import ObjectStore

log = logging.getLogger(__name__)

XATTR_ETAG = b"user.s3.etag"
XATTR_KEY = b"user.s3.key"
XATTR_STORAGE_CLASS = b"user.s3.storage_class"
XATTR_DIGEST = b"user.registry.digest"
XATTR_MEDIATYPE = b"user.registry.mediatype"
XATTR_TARGET = b"user.registry.target"
XATTR_TARGET_EXISTS = b"user.registry.target_exists"
XATTR_VERIFY = b"user.registry.verify"
XATTR_TAGS = b"user.registry.tags"
XATTR_SIZE = b"user.registry.size"
#: Link files hold one digest; anything larger is not a link.
LINK_MAX = 1024
VERIFY_CHUNK = 8 * 1024 * 1024

#: *node*'s whole content as the mount shows it (written data included), if at
#: most *limit* bytes, else None.
ReadSmall = Callable[[Node, int], Awaitable[bytes | None]]


class RegistryFacts:
    """The extended attributes of the mount's files; see the module docstring."""

    def __init__(
        self,
        namespace: Namespace,
        store: ObjectStore,
        images: ImagesView,
        *,
        read_small: ReadSmall,
        synthetic: Callable[[Node], bool],
    ) -> None:
        self._namespace = namespace
        self._store = store
        self._images = images
        self._read_small = read_small
        self._synthetic = synthetic

    def _free(self, node: Node) -> dict[bytes, bytes]:
        """The attributes that cost nothing: S3's own and a blob's digest."""
        values: dict[bytes, bytes] = {}
        if node.is_dir or self._synthetic(node):
            return values
        values[XATTR_KEY] = self._namespace.key(node).encode("utf-8")
        if node.etag:
            values[XATTR_ETAG] = node.etag.encode("ascii", "replace")
        if node.storage_class:
            values[XATTR_STORAGE_CLASS] = node.storage_class.encode("ascii", "replace")
        digest = layout.blob_digest(node.path)
        if digest:
            values[XATTR_DIGEST] = digest.encode("ascii", "replace")
        return values

    def names(self, node: Node) -> list[bytes]:
        """What listxattr names: never anything that reads a blob."""
        names = list(self._free(node))
        if node.is_dir and self._images.is_repository(node):
            names += [XATTR_TAGS, XATTR_SIZE]
        if not node.is_dir and not self._synthetic(node) and layout.is_link(node.path):
            names += [XATTR_TARGET, XATTR_TARGET_EXISTS]  # one small GET and a lookup
        return names

    async def value(self, node: Node, name: bytes) -> bytes | None:
        """The value of attribute *name* of *node*, or None if it has none.
        Raises StorageError (a request failed) or Unsupported."""
        value = self._free(node).get(name)
        if value is not None:
            return value
        if node.is_dir:
            if self._images.owns(node):
                return (await self._images.repository_facts(node)).get(name)
            return None
        if self._synthetic(node):
            return None
        digest = layout.blob_digest(node.path)
        if digest and name == XATTR_MEDIATYPE:
            data = await self._read_small(node, layout.MANIFEST_MAX)
            media_type = layout.manifest_media_type(data) if data is not None else None
            return media_type.encode() if media_type else None
        if digest and name == XATTR_VERIFY:
            return b"ok" if await self.verify(node, digest) else b"mismatch"
        if layout.is_link(node.path) and name in (XATTR_TARGET, XATTR_TARGET_EXISTS):
            target = await self._link_target(node)
            if target is None:
                return None
            if name == XATTR_TARGET:
                return target.encode()
            path = layout.blob_data_path(target)
            exists = path is not None and await self._namespace.exists(path)
            return b"true" if exists else b"false"
        return None

    async def _link_target(self, node: Node) -> str | None:
        data = await self._read_small(node, LINK_MAX)
        if data is None:
            return None
        text = data.decode("utf-8", "replace").strip()
        return text if layout.blob_data_path(text) else None

    async def verify(self, node: Node, digest: str) -> bool:
        """Hash the whole stored object and compare it with *digest*;
        Unsupported for an algorithm this Python cannot compute."""
        algorithm, _, expected = digest.partition(":")
        try:
            hasher = hashlib.new(algorithm)
        except ValueError:
            raise Unsupported(f"cannot verify {digest}: unknown digest algorithm {algorithm!r}") from None
        key = self._namespace.key(node)
        stream = await self._store.open_stream(key, 0, node.size, node.etag or None)
        try:
            while chunk := await stream.read(VERIFY_CHUNK):
                await trio.to_thread.run_sync(hasher.update, chunk)
        finally:
            await stream.aclose()
        ok = hasher.hexdigest() == expected
        if not ok:
            log.error("%r: content does not match its digest %s", key, digest)
        return ok
