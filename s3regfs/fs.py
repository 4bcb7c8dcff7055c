# SPDX-License-Identifier: MIT
"""The FUSE operations: thin handlers over the namespace and the readers.

This is the only module that raises ``FUSEError``: every handler runs inside
:func:`errors_to_errno`, which maps the s3regfs error tree to errno values
(NotFound -> ENOENT, AccessDenied -> EACCES, anything else that failed in S3
-> EIO) and logs what it maps.  Nothing else leaves a handler.

The mount is read-only for now: every operation that would change the bucket
answers EROFS (the write path is a later piece of work).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pyfuse3
import trio

from s3regfs.config import Config
from s3regfs.errors import (
    AccessDenied,
    InvalidRange,
    NotFound,
    PreconditionFailed,
    StorageError,
)
from s3regfs.inode_cache import Namespace, Node
from s3regfs.reader import ObjectReader, ReadaheadBudget
from s3regfs.storage.base import ObjectStore

log = logging.getLogger(__name__)

XATTR_ETAG = b"user.s3.etag"
XATTR_KEY = b"user.s3.key"
XATTR_STORAGE_CLASS = b"user.s3.storage_class"

#: st_blksize: a large value makes cp and friends read in big requests.
BLOCK_SIZE = 1024 * 1024

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT


def _errno_for(exc: StorageError) -> int:
    if isinstance(exc, NotFound):
        return errno.ENOENT
    if isinstance(exc, AccessDenied):
        return errno.EACCES
    if isinstance(exc, PreconditionFailed):
        return errno.ESTALE
    if isinstance(exc, InvalidRange):
        return errno.EIO
    return errno.EIO


@contextmanager
def errors_to_errno(what: str) -> Iterator[None]:
    """Translate whatever escapes a handler into FUSEError (see module docstring)."""
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except StorageError as exc:
        code = _errno_for(exc)
        if code == errno.ENOENT:
            log.debug("%s: %s", what, exc)
        else:
            log.error("%s: %s", what, exc)
        raise pyfuse3.FUSEError(code) from exc
    except trio.Cancelled:
        raise
    except Exception as exc:
        log.exception("%s: unexpected error", what)
        raise pyfuse3.FUSEError(errno.EIO) from exc


@dataclass
class DirHandle:
    """An open directory: the listing snapshot readdir walks with stable offsets."""

    node: Node
    entries: list[Node]


class Operations(pyfuse3.Operations):
    """Request handlers of one mount.  Dependencies are injected, not built."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    namespace: Namespace
    store: ObjectStore
    budget: ReadaheadBudget

    def __init__(self, config: Config, store: ObjectStore, namespace: Namespace) -> None:
        super().__init__()
        self._options = config.options
        self._config = config
        self.store = store
        self.namespace = namespace
        self.budget = ReadaheadBudget(config.options.readahead_total)
        self._nursery: trio.Nursery | None = None
        self._handles: dict[int, ObjectReader] = {}
        self._dir_handles: dict[int, DirHandle] = {}
        self._next_fh = 1
        umask = config.options.umask
        self._dir_mode = stat.S_IFDIR | (0o777 & ~umask)
        self._file_mode = stat.S_IFREG | (0o666 & ~umask)

    def attach_nursery(self, nursery: trio.Nursery) -> None:
        """Give the handlers the mount's nursery for background tasks."""
        self._nursery = nursery

    @property
    def open_files(self) -> int:
        return len(self._handles)

    # -- helpers ------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        try:
            return self.namespace.get(inode)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = pyfuse3.InodeT(node.ino)
        attrs.generation = 0
        attrs.entry_timeout = self._options.metadata_ttl
        attrs.attr_timeout = self._options.metadata_ttl
        if node.is_dir:
            attrs.st_mode = pyfuse3.ModeT(self._dir_mode)
            attrs.st_nlink = 2
            attrs.st_size = 0
        else:
            attrs.st_mode = pyfuse3.ModeT(self._file_mode)
            attrs.st_nlink = 1
            attrs.st_size = node.size
        attrs.st_blocks = (attrs.st_size + 511) // 512
        attrs.st_blksize = BLOCK_SIZE
        attrs.st_uid = self._options.uid
        attrs.st_gid = self._options.gid
        attrs.st_mtime_ns = attrs.st_ctime_ns = attrs.st_atime_ns = node.mtime_ns
        return attrs

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    @staticmethod
    def _decode(name: bytes) -> str:
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            # Not valid UTF-8, so it cannot be an S3 key: nothing by that name.
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    # -- metadata -------------------------------------------------------------------

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        with errors_to_errno(f"lookup {parent.path!r}/{name!r}"):
            if name == b".":
                node = parent
            elif name == b"..":
                node = parent.parent or parent
            else:
                if not parent.is_dir:
                    raise pyfuse3.FUSEError(errno.ENOTDIR)
                node = await self.namespace.lookup(parent, self._decode(name))
            self.namespace.remember(node)
            return self._attrs(node)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for inode, count in inode_list:
            self.namespace.forget(inode, count)

    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # S3 has no capacity; report a large, constant free space so tools
        # that check for room before copying (cp, rsync, skopeo) go ahead.
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = BLOCK_SIZE
        data.f_blocks = 2**40 // BLOCK_SIZE * 1024
        data.f_bfree = data.f_blocks
        data.f_bavail = data.f_blocks
        data.f_files = 2**32
        data.f_ffree = 2**32
        data.f_favail = 2**32
        data.f_namemax = 255
        return data

    # -- directories ------------------------------------------------------------------

    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        with errors_to_errno(f"listing {node.path or '/'!r}"):
            entries = await self.namespace.list_children(node)
        fh = self._new_fh()
        self._dir_handles[fh] = DirHandle(node, entries)
        return pyfuse3.FileHandleT(fh)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dir_handles[fh]
        for index in range(start_id, len(handle.entries)):
            node = handle.entries[index]
            if not pyfuse3.readdir_reply(
                token, pyfuse3.FileNameT(node.name.encode("utf-8")), self._attrs(node), index + 1
            ):
                return
            # readdirplus: the kernel now holds a lookup of this inode.
            self.namespace.remember(node)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self._dir_handles.pop(fh, None)

    # -- files --------------------------------------------------------------------------

    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        with errors_to_errno(f"open {node.path!r}"):
            await self.namespace.refresh_file(node)
        assert self._nursery is not None, "attach_nursery() before serving requests"
        reader = ObjectReader(
            self.store,
            self.namespace.key(node),
            node.size,
            node.etag,
            budget=self.budget,
            nursery=self._nursery,
            max_window=self._options.readahead,
        )
        # The page cache may stay only while it holds this very version.
        keep_cache = bool(node.etag) and node.cached_etag == node.etag
        node.cached_etag = node.etag
        fh = self._new_fh()
        self._handles[fh] = reader
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep_cache)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        reader = self._handles[fh]
        with errors_to_errno(f"read {reader.key!r} at {off}"):
            return await reader.read(off, size)

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        reader = self._handles.pop(fh, None)
        if reader is not None:
            with errors_to_errno(f"release {reader.key!r}"):
                await reader.aclose()

    async def close_all(self) -> None:
        """Stop every reader (at unmount)."""
        for fh in list(self._handles):
            await self.release(pyfuse3.FileHandleT(fh))

    # -- extended attributes ---------------------------------------------------------------

    def _xattrs(self, node: Node) -> dict[bytes, bytes]:
        values: dict[bytes, bytes] = {}
        if node.is_dir:
            return values
        values[XATTR_KEY] = self.namespace.key(node).encode("utf-8")
        if node.etag:
            values[XATTR_ETAG] = node.etag.encode("ascii", "replace")
        if node.storage_class:
            values[XATTR_STORAGE_CLASS] = node.storage_class.encode("ascii", "replace")
        return values

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        value = self._xattrs(self._node(inode)).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> list[pyfuse3.XAttrNameT]:
        return [pyfuse3.XAttrNameT(name) for name in self._xattrs(self._node(inode))]

    async def setxattr(
        self,
        inode: pyfuse3.InodeT,
        name: pyfuse3.XAttrNameT,
        value: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    # -- changes: not yet supported ---------------------------------------------------------

    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        raise pyfuse3.FUSEError(errno.EROFS)
