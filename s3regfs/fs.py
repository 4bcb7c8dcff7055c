# SPDX-License-Identifier: MIT
"""The FUSE operations: thin handlers and the translation of errors to errno.

This is the only module that raises ``FUSEError`` and the only one that talks
to the kernel: every handler runs inside :func:`errors_to_errno`, which maps
the s3regfs error tree to errno values (NotFound -> ENOENT, AccessDenied ->
EACCES, a full spool -> ENOSPC, data that will not be stored -> the errno of
its cause, anything else that failed in S3 -> EIO) and logs what it maps.
Nothing else leaves a handler.  :class:`KernelNotifier` makes the kernel
forget what it cached, for the collaborators that need it.

The handlers delegate: names and attributes to the namespace
(:mod:`s3regfs.inode_cache`), open files and their writers to
:mod:`s3regfs.open_files`, the ``_images`` view to :mod:`s3regfs.images`,
extended attributes to :mod:`s3regfs.facts`, S3 to the store.  Every one of
them is built by ``mount.py`` and handed in.  Changes become S3 calls the way
the registry's S3 driver makes them (see :mod:`s3regfs.writer`; unlink is
DeleteObject; rename is a copy by the driver's rules, then a delete; mkdir
lives in memory until a file is stored below it).  With ``-o ro`` every
change answers EROFS.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, NoReturn

import pyfuse3
import trio

from s3regfs import layout
from s3regfs.config import MountOptions
from s3regfs.control import CONTROL_NAME, ControlFiles
from s3regfs.errors import (
    AccessDenied,
    IntegrityError,
    KeyTooLong,
    NotFound,
    PreconditionFailed,
    SpoolFull,
    StaleHandle,
    StorageError,
    Unsupported,
    WriteLost,
    collapse_exception_groups,
)
from s3regfs.facts import RegistryFacts
from s3regfs.images import VIEW_NAME, ImagesView
from s3regfs.inode_cache import ChildStream, Namespace, Node
from s3regfs.open_files import FileHandle, OpenFiles
from s3regfs.registry_view import VIEW_NAME as REGISTRY_VIEW_NAME
from s3regfs.registry_view import RegistryView
from s3regfs.storage.base import KEY_MAX, ObjectStore
from s3regfs.writer import FileWriter

log = logging.getLogger(__name__)

#: st_blksize: a large value makes cp and friends read and write in big requests.
BLOCK_SIZE = 1024 * 1024
#: st_blksize of directories: glibc sizes its readdir buffer by it (up to
#: 1 MiB), the kernel asks for that much per READDIR and pyfuse3 zero-fills a
#: buffer of that size for every one, most of which a registry directory (one
#: entry) never uses: 32 KiB (glibc's least) made a warm `du` 1.6x faster.
DIR_BLOCK_SIZE = 32 * 1024

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR

#: Readers of directories whose snapshots are kept between READDIR requests
#: without OPENDIR (a reader that stops early leaves its own until then), and
#: the entries they may hold together (about 100 bytes each).
CURSORS_KEPT = 256
CURSOR_ENTRIES_KEPT = 200_000
#: A readdir offset is cursor id x _CURSOR_SPAN + position in the directory.
_CURSOR_SPAN = 2**32
_CURSOR_IDS = 2**31 - 1

#: The request loop's polling (-o busy_poll), in the pyfuse3 that
#: scripts/install.sh builds; None in a stock pyfuse3.
_SET_BUSY_POLL: Callable[[int], None] | None = getattr(pyfuse3, "set_busy_poll", None)
_REQUEST_COUNTS: Callable[[], tuple[int, int]] | None = getattr(pyfuse3, "request_counts", None)


#: Names at the root that are the mount's own, whatever S3 holds.
_RESERVED_NAMES = frozenset(name.encode() for name in (VIEW_NAME, REGISTRY_VIEW_NAME, CONTROL_NAME))


def kernel_skips_opendir(release: str) -> bool:
    """Whether a Linux kernel of *release* (``uname -r``) takes ENOSYS from
    OPENDIR as "no OPENDIR needed" (5.1 and later); older ones fail the open."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return match is not None and (int(match[1]), int(match[2])) >= (5, 1)


def _map(path: str) -> bytes | mmap.mmap:
    """A rendered report's bytes, mapped (not read into memory)."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return b""
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def _read_mapped(content: bytes | mmap.mmap, off: int, size: int) -> bytes:
    """*size* bytes of *content* at *off*; a mapping's pages read are let go.

    A report is read once, front to back, and can be larger than the
    daemon's memory bound (``gc/eligible.tsv`` of a big registry: 100 MiB
    and more).  Pages the reader touched would stay in the daemon's resident
    set until the file is closed; unmapped after each read they stay only in
    the page cache, which the kernel reclaims as it needs (a read again
    faults them back in from there)."""
    chunk = content[off : off + size]
    if isinstance(content, mmap.mmap) and chunk:
        start = off - off % mmap.PAGESIZE
        content.madvise(mmap.MADV_DONTNEED, start, off + len(chunk) - start)
    return chunk


def _quote(name: str | bytes) -> str:
    """A file name or path as log lines show it: always a quoted str (bytes
    that are not UTF-8 as backslash escapes), so a name cannot split a line."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "backslashreplace")
    return repr(name)


def _child(parent: Node, name: bytes) -> str:
    """The quoted path of *name* in *parent*, for log lines."""
    return _quote(layout.join(parent.path, name.decode("utf-8", "backslashreplace")))


#: Errors that answer a request as a local file system would, logged at debug level.
_ANSWERS: dict[type[Exception], int] = {
    StaleHandle: errno.ESTALE,
    KeyTooLong: errno.ENAMETOOLONG,
    Unsupported: errno.ENOTSUP,
}


def _lost_errno(cause: BaseException) -> int:
    """The errno of a write, truncate or commit that failed (and of every later
    one of the same open file): ENOSPC or EACCES when that is the cause, else
    EIO, never ENOENT (a 404 to an upload means the upload, not the file)."""
    if isinstance(cause, SpoolFull):
        return errno.ENOSPC
    if isinstance(cause, AccessDenied):
        return errno.EACCES
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return cause.errno
    return errno.EIO


def _errno_for(exc: StorageError) -> int:
    if isinstance(exc, NotFound):
        return errno.ENOENT
    if isinstance(exc, AccessDenied):
        return errno.EACCES
    if isinstance(exc, PreconditionFailed):
        return errno.ESTALE
    return errno.EIO


class errors_to_errno:  # noqa: N801  (a context manager, used as a function is)
    """Translate whatever escapes a handler into FUSEError (see module
    docstring).  *what* names the request in the log line; a function making
    it is called only then (a path is built from the node's ancestors).

    A class, not a generator: every request enters one, and a generator's
    set-up costs a few microseconds of a walk's round trip."""

    __slots__ = ("_what",)

    def __init__(self, what: str | Callable[[], str]) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> Literal[False]:
        if exc is None or isinstance(exc, pyfuse3.FUSEError):
            return False
        _translate(exc, self._what)


def _translate(exc: BaseException, what: str | Callable[[], str]) -> NoReturn:
    """Raise *exc* as errors_to_errno's caller sees it: a FUSEError with its
    errno, logged; trio.Cancelled and the like as themselves."""
    try:
        with collapse_exception_groups():
            raise exc
    except pyfuse3.FUSEError:
        raise
    except StorageError as error:
        code = _errno_for(error)
        if code == errno.ENOENT:
            log.debug("%s: %s", _described(what), error)
        else:
            log.error("%s: %s", _described(what), error)
        raise pyfuse3.FUSEError(code) from error
    except WriteLost as error:
        # The file's one error line was logged when its data was given up.
        log.debug("%s: %s", _described(what), error)
        raise pyfuse3.FUSEError(_lost_errno(error.cause)) from error
    except SpoolFull as error:
        log.error("%s: %s", _described(what), error)
        raise pyfuse3.FUSEError(errno.ENOSPC) from error
    except (StaleHandle, KeyTooLong, Unsupported) as error:
        # Answers about the request itself, logged where they arise (or not an
        # error of the mount at all).
        log.debug("%s: %s", _described(what), error)
        raise pyfuse3.FUSEError(_ANSWERS[type(error)]) from error
    except trio.Cancelled:
        raise
    except OSError as error:
        log.error("%s: %s", _described(what), error)
        raise pyfuse3.FUSEError(error.errno or errno.EIO) from error
    except Exception as error:
        log.exception("%s: unexpected error", _described(what))
        raise pyfuse3.FUSEError(errno.EIO) from error


def _described(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


@dataclass
class DirHandle:
    """An open directory: the listing snapshot readdir walks with stable
    offsets; for a wide directory (see inode_cache), a stream of it instead,
    of which only the page being read is held (*entries* is that page, the
    first at offset *base*)."""

    node: Node
    entries: list[tuple[str, Node]]
    stream: ChildStream | None = None
    base: int = 0
    #: The namespace keeps the snapshot's children while it is open.
    holds: bool = False


class Operations(pyfuse3.Operations):
    """Request handlers of one mount; every collaborator is built by mount.py."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        options: MountOptions,
        store: ObjectStore,
        namespace: Namespace,
        files: OpenFiles,
        images: ImagesView,
        facts: RegistryFacts,
        control: ControlFiles,
        registry: RegistryView,
    ) -> None:
        super().__init__()
        self._options = options
        self.store = store
        self.namespace = namespace
        self.files = files
        self.images = images
        self.facts = facts
        self._control = control
        self.registry = registry
        self._dir_handles: dict[int, DirHandle] = {}
        self._next_dir_fh = 1
        #: Directories are read without OPENDIR (see docs/design.md): -o
        #: dircache, a pyfuse3 that passes the inode to readdir then, a kernel
        #: that takes ENOSYS for it, and a TTL the kernel's copies can live.
        self.dircache = (
            options.dircache
            and getattr(pyfuse3, "READDIR_INODE_WITHOUT_OPENDIR", False)
            and kernel_skips_opendir(os.uname().release)
            and options.metadata_ttl > 0
        )
        #: Microseconds the request loop polls for the next request (-o
        #: busy_poll), 0 without the pyfuse3 that can (see docs/design.md).
        self.busy_poll = options.busy_poll if _SET_BUSY_POLL is not None else 0
        #: Readers' snapshots by cursor id (the -o dircache way), oldest
        #: first, with the entries each held when kept.
        self._cursors: dict[int, tuple[DirHandle, int]] = {}
        self._cursor_entries = 0
        #: Directory inode -> the cursor of the last reader that started it.
        self._latest_cursor: dict[int, int] = {}
        self._next_cursor = 0
        self._readdir_requests = 0
        #: (bytes, objects) under the root as the last -o statfs=scan counted them.
        self.scanned_usage: tuple[int, int] | None = None
        #: The largest (bytes, objects) the cache has held.
        self._usage_seen = (0, 0)
        #: (inode, ETag) of blobs that -o verify found not to match their digest.
        self._corrupt: set[tuple[int, str]] = set()
        self._dir_mode = 0o777 & ~options.umask
        self._file_mode = 0o666 & ~options.umask

    # -- helpers ------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        try:
            return self.namespace.get(inode)
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        # Straight-line for the bucket's own names: every entry of a walk
        # comes through here (a view's node is the rare case).
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = pyfuse3.InodeT(node.ino)
        attrs.generation = 0
        ttl = self._options.metadata_ttl
        attrs.entry_timeout = ttl
        view = self.namespace.is_virtual(node) and self._virtual(node)
        if node.children is not None:
            # The kernel checks its copy of a directory's contents when the
            # attributes expire: make that when the copy does.
            attrs.attr_timeout = self.namespace.kernel_copy_life(node) if self.dircache else ttl
            mode = (self._dir_mode & 0o555) if view else (self._dir_mode if node.mode is None else node.mode)
            attrs.st_mode = pyfuse3.ModeT(stat.S_IFDIR | mode)
            attrs.st_nlink = 2
            attrs.st_size = 0
            attrs.st_blocks = 0
            attrs.st_blksize = DIR_BLOCK_SIZE
        else:
            if view:
                if self._control.owns(node):
                    node.size = len(self._control.content(node, self.stats))
                else:
                    self.registry.refresh_size(node)
                # A view file's size changes with its content (index.json):
                # never cached; the view's own files never change.
                attrs.attr_timeout = 0
                mode = self._file_mode & 0o444
            else:
                attrs.attr_timeout = ttl
                mode = self._file_mode if node.mode is None else node.mode
                if self._immutable(node):
                    mode &= ~0o222  # stored blobs: chmod applies, but never write permission
            attrs.st_mode = pyfuse3.ModeT(stat.S_IFREG | mode)
            # A blob shown in the images view has those names too (hard links).
            attrs.st_nlink = 1 + len(node.view_names) if node.view_names else 1
            attrs.st_size = node.size
            attrs.st_blocks = (node.size + 511) // 512
            attrs.st_blksize = BLOCK_SIZE
        attrs.st_uid = self._options.uid if node.uid is None else node.uid
        attrs.st_gid = self._options.gid if node.gid is None else node.gid
        attrs.st_mtime_ns = attrs.st_ctime_ns = attrs.st_atime_ns = node.mtime_ns
        return attrs

    def _new_dir_fh(self) -> int:
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        return fh

    @staticmethod
    def _decode(name: bytes) -> str:
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            # Not valid UTF-8, so it cannot be an S3 key: nothing by that name.
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _check_writable(self, *nodes: Node) -> None:
        """EROFS with -o ro, and for anything of the read-only images view."""
        if self._options.ro or any(self._virtual(node) for node in nodes):
            raise pyfuse3.FUSEError(errno.EROFS)

    def _virtual(self, node: Node) -> bool:
        return self.images.owns(node) or self._control.owns(node) or self.registry.owns(node)

    def start_busy_poll(self) -> None:
        """Make the request loop poll for the next request (-o busy_poll);
        call after pyfuse3.init()."""
        if self.busy_poll and _SET_BUSY_POLL is not None:
            _SET_BUSY_POLL(self.busy_poll * 1000)

    def drop_caches(self) -> None:
        """Make every listing and attribute stale (SIGHUP); with -o dircache
        the kernel rechecks the directories it cached on their next read."""
        self.namespace.invalidate_all()
        if self.dircache:
            self.files.kernel.forget_attributes_soon(self.namespace.expire_kernel_copies())

    def stats(self) -> dict[str, object]:
        """What the stats file shows (and SIGUSR1 logs)."""
        figures = self.store.stats()
        namespace = self.namespace
        figures["cache"] = {
            "hits": namespace.cache_hits,
            "misses": namespace.cache_misses,
            "nodes": len(namespace),
            "max_nodes": namespace.max_nodes,
            "kernel_held": namespace.kernel_held,
            "evicted": namespace.evicted,
            "trims": namespace.trims,
            "early_pages": namespace.early_pages,
            "early_pages_used": namespace.early_pages_used,
            "list_ranges": namespace.list_ranges,
            "lists_ahead": namespace.lists_ahead,
            "lists_ahead_used": namespace.lists_ahead_used,
        }
        figures["directories"] = {
            "kernel_cache": self.dircache,
            "readers": len(self._cursors),
            "read_requests": self._readdir_requests,
        }
        if self.busy_poll and _REQUEST_COUNTS is not None:
            polled, after_waiting = _REQUEST_COUNTS()
            figures["request_loop"] = {
                "busy_poll_us": self.busy_poll,
                "polled": polled,
                "after_waiting": after_waiting,
            }
        figures.update(self.files.stats())
        figures["reports"] = self.registry.reports.stats()
        if self.files.blob_cache is not None:
            figures["blob_cache"] = self.files.blob_cache.stats.as_dict()
        if self.files.blob_reads is not None:
            figures["cloudfront"] = self.files.blob_reads.stats()
        return figures

    @staticmethod
    def _immutable(node: Node) -> bool:
        """A stored blob data file: content-addressed, so never rewritten in place
        (the registry never does; it renames a finished upload onto the path).
        Deleting it and renaming onto it stay possible (garbage collection, uploads)."""
        # The name first: a path is built from the node's ancestors.
        return (
            node.name == "data"
            and not node.is_dir
            and not node.local
            and layout.blob_digest(node.path) is not None
        )

    def _check_not_view_name(self, parent: Node, name: bytes) -> None:
        """``_images``, ``_registry`` and ``.s3regfs`` at the root are ours, whatever S3 holds."""
        if parent is self.namespace.root and name in _RESERVED_NAMES:
            raise pyfuse3.FUSEError(errno.EROFS)

    def _check_length(self, parent: Node, name: bytes, *, is_dir: bool = False) -> None:
        """ENAMETOOLONG for a component over NAME_MAX bytes, or a path whose key
        would be over S3's KEY_MAX bytes (a directory's key is its prefix
        ``key/``, which everything below it starts with).  Lookups answer it
        too, as a local file system does, instead of ENOENT."""
        if len(name) > layout.NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        if self._virtual(parent):
            return  # the images view and .s3regfs are not keys
        # Every byte of a key: the prefix, the parent's path, "/", the name.
        key = layout.key_of(self.namespace.key_prefix, parent.path).encode("utf-8")
        length = len(key) + (1 if parent.path else 0) + len(name) + (1 if is_dir else 0)
        if length > KEY_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)

    def _new_name(self, parent: Node, name: bytes, *, is_dir: bool = False) -> str:
        """A name a new entry may take in *parent*, or the errno why not."""
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        self._check_length(parent, name, is_dir=is_dir)
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.EILSEQ) from None  # S3 keys are UTF-8
        if layout.name_problem(text):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return text

    async def _existing(self, parent: Node, name: str) -> Node | None:
        try:
            return await self.namespace.lookup(parent, name)
        except NotFound:
            return None

    # -- metadata -------------------------------------------------------------------

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        with errors_to_errno(lambda: f"lookup {_child(parent, name)}"):
            if name == b".":
                node = parent
            elif name == b"..":
                node = parent.parent or parent
            elif parent is self.namespace.root and name == VIEW_NAME.encode():
                node = self.images.root  # always reachable by name
            elif parent is self.namespace.root and name == CONTROL_NAME.encode():
                node = self._control.directory
            elif parent is self.namespace.root and name == REGISTRY_VIEW_NAME.encode():
                node = self.registry.root
            elif self.registry.owns(parent):
                found = self.registry.lookup(parent, name.decode("utf-8", "replace"))
                if found is None:
                    raise pyfuse3.FUSEError(errno.ENOENT)
                node = found
            elif parent is self._control.directory:
                found = self._control.files().get(name.decode("utf-8", "replace"))
                if found is None:
                    raise pyfuse3.FUSEError(errno.ENOENT)
                node = found
            elif self.images.owns(parent):
                self._check_length(parent, name)
                node = await self.images.lookup(parent, self._decode(name))
            else:
                if not parent.is_dir:
                    raise pyfuse3.FUSEError(errno.ENOTDIR)
                self._check_length(parent, name)
                node = await self.namespace.lookup(parent, self._decode(name))
            self.namespace.remember(node)
            return self._attrs(node)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for inode, count in inode_list:
            self.namespace.forget(inode, count)

    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if node.is_dir and self.dircache and self.namespace.kernel_copy_expired(node):
            # The kernel asks before it reads its copy of the directory (the
            # attributes expire with the copy): it drops the copy first, and
            # reads the directory from us; the mtime stays (tar, rsync).
            self.namespace.forget_kernel_copy(node)
            await self.files.kernel.forget_pages(node)
        await self._prepare_view_file(node)
        return self._attrs(node)

    async def _prepare_view_file(self, node: Node) -> None:
        """A view file built on demand (index.json) gets its content and size."""
        if not node.is_dir and self.images.owns(node):
            with errors_to_errno(f"building {VIEW_NAME} file {_quote(node.name)}"):
                await self.images.prepare(node)

    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        self._check_writable(node)
        if fields.update_size and self._immutable(node):
            raise pyfuse3.FUSEError(errno.EROFS)
        with errors_to_errno(f"setattr {_quote(node.path)}"):
            if fields.update_size:
                if node.is_dir:
                    raise pyfuse3.FUSEError(errno.EISDIR)
                writer = self.files[fh].writer if fh is not None else None
                await self._truncate(node, attr.st_size, writer)
            # Modes, owners and times are kept in memory for the mount's life:
            # S3 objects of the registry carry none (docs/writing.md).
            if fields.update_mode:
                node.mode = attr.st_mode & 0o7777
            if fields.update_uid:
                node.uid = attr.st_uid
            if fields.update_gid:
                node.gid = attr.st_gid
            if fields.update_mtime:
                node.mtime_ns = attr.st_mtime_ns
                node.mtime_fixed = True
            return self._attrs(node)

    async def _truncate(self, node: Node, size: int, handle_writer: FileWriter | None) -> None:
        """ftruncate(2) (*handle_writer*: the writer of the handle it came
        through, poisoned or not) or truncate(2) of a name."""
        writer = handle_writer or self.files.writer_of(node)
        if writer is not None:
            # An open file: takes effect at its next commit (never an emptied
            # object in between).
            async with self.files.guard(node, writer):
                await writer.truncate(size)
            node.size = writer.size
            return
        # truncate(2) of a file nobody has open: takes effect now.
        if not node.local:
            await self.namespace.refresh_file(node)
        writer = self.files.writer_for(node)
        try:
            async with self.files.guard(node, writer):
                await writer.truncate(size)
            node.size = writer.size
            await self.files.commit(node, writer)
        finally:
            await self.files.drop_writer(node, writer)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # S3 has no capacity; report a large, constant free space so tools
        # that check for room before copying (cp, rsync, skopeo) go ahead.
        # Used: the most the cache has held at once (it forgets cold names),
        # or what the last background scan counted (-o statfs=scan): honest,
        # never a guess.
        self._usage_seen = max(self._usage_seen, self.namespace.usage())
        used_bytes, used_files = self._usage_seen
        if self.scanned_usage is not None:
            used_bytes, used_files = max(self.scanned_usage, (used_bytes, used_files))
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = BLOCK_SIZE
        free_blocks = 2**40 // BLOCK_SIZE * 1024
        data.f_blocks = free_blocks + -(-used_bytes // BLOCK_SIZE)
        data.f_bfree = free_blocks
        data.f_bavail = free_blocks
        data.f_files = 2**32 + used_files
        data.f_ffree = 2**32
        data.f_favail = 2**32
        data.f_namemax = 255
        return data

    # -- directories ------------------------------------------------------------------

    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        if self.dircache:
            # The kernel takes ENOSYS as "no OPENDIR needed": from now on it
            # sends READDIR with the inode and caches directory contents.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        node = self._node(inode)
        handle = self._open_listed(node) or await self._list_and_open(node)
        fh = self._new_dir_fh()
        self._dir_handles[fh] = handle
        return pyfuse3.FileHandleT(fh)

    async def _list_and_open(self, node: Node) -> DirHandle:
        """A snapshot (or, for a wide directory, a stream) of *node*'s
        entries, when _open_listed could not answer: a view's directory, or
        one to list first."""
        namespace = self.namespace
        with errors_to_errno(lambda: f"listing {_quote(node.path or '/')}"):
            if namespace.is_virtual(node):
                if node is self._control.directory:
                    return DirHandle(node, sorted(self._control.files().items()))
                if self.images.owns(node):
                    return DirHandle(node, await self.images.children(node))
                if self.registry.owns(node):
                    return DirHandle(node, self.registry.children(node))
            await namespace.ensure_listed(node, reading=True)
            if node.wide and not namespace.is_fresh(node):
                if node is not namespace.root:
                    return DirHandle(node, [], namespace.stream(node))
                await namespace.ensure_listed(node, whole=True)
            # Just listed or fresh (or gone meanwhile: what it held).
            return self._snapshot(node)

    def _open_listed(self, node: Node) -> DirHandle | None:
        """The snapshot of *node*'s entries when the cache has it (a fresh
        directory of the bucket): no await, as for most directories of a
        walk; None when it needs more (see _list_and_open)."""
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if self.namespace.is_virtual(node):
            return None
        with errors_to_errno(lambda: f"listing {_quote(node.path or '/')}"):  # a trim may run
            return self._snapshot(node) if self.namespace.listed(node) else None

    def _snapshot(self, node: Node) -> DirHandle:
        assert node.children is not None
        entries = sorted(node.children.items())
        if node is self.namespace.root and self._options.views:
            views = [(VIEW_NAME, self.images.root), (REGISTRY_VIEW_NAME, self.registry.root)]
            entries = sorted([*entries, *views], key=lambda e: e[0])
        self.namespace.hold(node)  # the snapshot's children stay in the inode table
        return DirHandle(node, entries, holds=True)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        self._readdir_requests += 1
        if not self.dircache:
            await self._read_directory(self._dir_handles[fh], start_id, 0, token)
            return
        # Without OPENDIR, *fh* is the directory's inode and nothing says when
        # a reader is done: a reader's snapshot is a cursor, named in the high
        # bits of the offsets handed out, dropped at the end of the directory
        # (or, for readers that stop early, as the least recently used).
        cursor_id, position = divmod(start_id, _CURSOR_SPAN)
        handle = self._take_cursor(cursor_id) if position else None
        if handle is None or handle.node.ino != fh:
            if handle is not None:
                self._end_cursor(cursor_id, handle)
            # A reader whose cursor is gone goes on in a new snapshot at the
            # same position (as after seekdir in a directory that changed).
            node = self._node(fh)
            handle = self._open_listed(node) or await self._list_and_open(node)
            if position:
                cursor_id = self._new_cursor_id()
            else:
                cursor_id, handle = self._share_cursor(handle)
                self.namespace.kernel_copies(handle.node, live=handle.stream is not None)
        if position >= len(handle.entries) and handle.stream is None:
            # Every directory's last request (the kernel reads until an
            # empty reply): the reader is done.
            self._end_cursor(cursor_id, handle)
            return
        try:
            if handle.stream is None:
                more = self._reply_entries(handle, position, cursor_id * _CURSOR_SPAN, token)
            else:
                more = await self._read_directory(handle, position, cursor_id * _CURSOR_SPAN, token)
        except BaseException:
            self._end_cursor(cursor_id, handle)
            raise
        if not more:
            self._end_cursor(cursor_id, handle)  # the end: the reader is done
            return
        size = len(handle.entries)
        self._cursors[cursor_id] = (handle, size)
        self._cursor_entries += size
        while len(self._cursors) > CURSORS_KEPT or (
            self._cursor_entries > CURSOR_ENTRIES_KEPT and len(self._cursors) > 1
        ):
            oldest_id = next(iter(self._cursors))
            oldest = self._take_cursor(oldest_id)
            assert oldest is not None
            self._end_cursor(oldest_id, oldest)

    def _share_cursor(self, handle: DirHandle) -> tuple[int, DirHandle]:
        """The cursor for a reader starting *handle*'s directory: the one of
        the last reader that started it, if that one (still kept: it stopped
        early) holds the same entries, so that their offsets agree and the
        kernel can complete the copy the first began; else a new one."""
        ino = handle.node.ino
        latest = self._latest_cursor.get(ino)
        kept = self._cursors.get(latest) if latest is not None else None
        if (
            kept is not None
            and handle.stream is None
            and kept[0].stream is None
            and kept[0].node is handle.node
            and kept[0].entries == handle.entries
        ):
            self._drop_cursor(handle)
            assert latest is not None
            self._take_cursor(latest)
            return latest, kept[0]
        cursor_id = self._new_cursor_id()
        if len(self._latest_cursor) >= 4 * CURSORS_KEPT:
            self._latest_cursor.clear()  # entries of cursors long gone
        self._latest_cursor[ino] = cursor_id
        return cursor_id, handle

    def _end_cursor(self, cursor_id: int, handle: DirHandle) -> None:
        if self._latest_cursor.get(handle.node.ino) == cursor_id:
            del self._latest_cursor[handle.node.ino]
        self._drop_cursor(handle)

    def _take_cursor(self, cursor_id: int) -> DirHandle | None:
        kept = self._cursors.pop(cursor_id, None)
        if kept is None:
            return None
        self._cursor_entries -= kept[1]
        return kept[0]

    def _new_cursor_id(self) -> int:
        self._next_cursor = self._next_cursor % _CURSOR_IDS + 1
        return self._next_cursor

    def _drop_cursor(self, handle: DirHandle) -> None:
        if handle.holds:
            self.namespace.release(handle.node)

    async def _read_directory(
        self, handle: DirHandle, position: int, cookie: int, token: pyfuse3.ReaddirToken
    ) -> bool:
        """Reply *handle*'s entries from *position* on, each with offset
        *cookie* + its successor's position; whether any was given."""
        if handle.stream is not None:
            with errors_to_errno(f"listing {_quote(handle.node.path)}"):
                return await self._read_stream(handle, position, cookie, token)
        return self._reply_entries(handle, position, cookie, token)

    def _reply_entries(self, handle: DirHandle, position: int, cookie: int, token: pyfuse3.ReaddirToken) -> bool:
        """_read_directory for a snapshot (no await)."""
        entries = handle.entries
        for index in range(position, len(entries)):
            name, node = entries[index]
            if not self._reply_entry(token, name, node, cookie + index + 1):
                break
        return position < len(entries)

    def _reply_entry(self, token: pyfuse3.ReaddirToken, name: str, node: Node, next_id: int) -> bool:
        """Add one entry to a readdir reply; False when the reply is full."""
        if not pyfuse3.readdir_reply(
            token, pyfuse3.FileNameT(name.encode("utf-8")), self._attrs(node), next_id
        ):
            return False
        # readdirplus: the kernel now holds a lookup of this inode.
        self.namespace.remember(node)
        return True

    async def _read_stream(
        self, handle: DirHandle, position: int, cookie: int, token: pyfuse3.ReaddirToken
    ) -> bool:
        """Positions count entries from the start of the stream; going back
        (rewinddir, seekdir) starts the stream again."""
        if position < handle.base:
            handle.stream = self.namespace.stream(handle.node)
            handle.entries = []
            handle.base = 0
        assert handle.stream is not None
        offset = position
        while True:
            for name, node in handle.entries[max(0, offset - handle.base) :]:
                if not self._reply_entry(token, name, self.namespace.revive(node), cookie + offset + 1):
                    return True
                offset += 1
            if offset > position:
                # What one page gave, at once, even if the reader's buffer
                # (up to 1 MiB) has room for more: `ls -f` starts after a page.
                return True
            page = await handle.stream.next_page()
            if page is None:
                return False
            handle.base += len(handle.entries)
            handle.entries = [(child.name, child) for child in page]

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self._dir_handles.pop(fh, None)
        if handle is not None and handle.holds:
            self.namespace.release(handle.node)

    async def mkdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        self._check_writable(parent)
        self._check_not_view_name(parent, name)
        with errors_to_errno(f"mkdir {_child(parent, name)}"):
            text = self._new_name(parent, name, is_dir=True)
            if await self._existing(parent, text) is not None:
                raise pyfuse3.FUSEError(errno.EEXIST)
            # In memory only: a "dir/" marker object would show up in the
            # registry driver's listings.
            node = self.namespace.add_local(parent, text, is_dir=True)
            node.mode = mode & 0o7777 & ~ctx.umask
            self.namespace.remember(node)
            return self._attrs(node)

    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        parent = self._node(parent_inode)
        self._check_writable(parent)
        self._check_not_view_name(parent, name)
        with errors_to_errno(f"rmdir {_child(parent, name)}"):
            node = await self.namespace.lookup(parent, self._decode(name))
            if not node.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            if not node.local:
                await self.namespace.ensure_listed(node)
            if await self.namespace.has_children(node):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            if not node.local:
                # Only a "dir/" marker (written by some other tool) can remain.
                await self.store.delete(self.namespace.key(node) + "/")
            self.namespace.remove(node)

    # -- files --------------------------------------------------------------------------

    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        writing = bool(flags & _WRITE_FLAGS)
        if writing or flags & os.O_TRUNC:
            self._check_writable(node)
            if self._immutable(node):
                raise pyfuse3.FUSEError(errno.EROFS)
        control = self._control.owns(node) and not node.is_dir
        await self._prepare_view_file(node)
        content: bytes | mmap.mmap | None
        if self.registry.report_name(node) is not None:
            with errors_to_errno(f"computing {REGISTRY_VIEW_NAME} report {_quote(node.name)}"):
                content = _map(await self.registry.render(node))
            fh = self.files.add(FileHandle(node, None, None, content))
            # Computed when opened: its size may have changed since the lookup.
            return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=False, direct_io=True)
        content = self._control.content(node, self.stats) if control else self.images.content(node)
        if content is not None:
            fh = self.files.add(FileHandle(node, None, None, content))
            # direct_io: the stats (and index.json) may change between getattr and read.
            direct = control or self.images.built_on_demand(node)
            return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=False, direct_io=direct)
        with errors_to_errno(f"open {_quote(node.path)}"):
            if not node.local and not node.writing:
                await self.namespace.refresh_file(node)
            writer = self.files.writer_for(node) if writing else None
            if writer is not None and flags & os.O_TRUNC:
                try:
                    async with self.files.guard(node, writer):
                        await writer.truncate(0)  # takes effect at the next commit
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await self.files.drop_writer(node, writer)  # no handle holds it
                    raise
                node.size = 0
        cached = await self._open_cached(node, flags)
        if cached is not None:
            return cached
        reader = self.files.new_reader(node) if not writing or flags & os.O_RDWR else None
        blob = layout.blob_digest(node.path) is not None
        verifying = self._options.verify and blob
        if blob and (node.ino, node.etag) in self._corrupt:
            raise pyfuse3.FUSEError(errno.EIO)  # known not to match its digest
        # The page cache stays across opens only for blob data, whose bytes
        # never change under a name, and only while it holds this very
        # version.  Any other file may have been rewritten by someone else
        # since its attributes were cached: its pages are dropped at open, so
        # a handle that follows a new version (read) cannot mix in old pages.
        # With -o verify every open reads (and hashes) from S3.
        keep_cache = (
            blob and bool(node.etag) and node.cached_etag == node.etag and not writing and not verifying
        )
        node.cached_etag = node.etag
        if reader is not None and reader.through_cdn:
            # Pages from a CDN are unchecked until a whole read hashed them
            # (a random read's never are): this open drops the kernel's pages,
            # so a whole read comes to the reader from its first byte, and the
            # next open (from S3, the cache or the CDN) drops these.
            keep_cache = False
            node.cached_etag = ""
        fh = self.files.add(FileHandle(node, reader, writer))
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep_cache)

    async def _open_cached(self, node: Node, flags: int) -> pyfuse3.FileInfo | None:
        """A read-only open of blob data that -o cache holds: served from the
        local file (with -o verify, only after it hashed to its digest again)."""
        cache = self.files.blob_cache
        digest = layout.blob_digest(node.path)
        if (
            cache is None
            or digest is None
            or flags & (_WRITE_FLAGS | os.O_TRUNC)
            or node.local
            or node.writing
        ):
            return None
        with errors_to_errno(f"open {_quote(node.path)} from the cache"):
            path = await trio.to_thread.run_sync(cache.lookup, digest, node.size)
            if (
                path is not None
                and self._options.verify
                and not await trio.to_thread.run_sync(cache.verified, digest, path)
            ):
                path = None
            if path is None:
                return None
            try:
                # Read with pread on worker threads, not mapped: a page fault
                # would stall every request, a truncated file kill the daemon.
                fd = await trio.to_thread.run_sync(os.open, path, os.O_RDONLY)
            except OSError:
                cache.miss()
                return None  # evicted meanwhile: read from S3
        cache.hit()
        # The same bytes as S3's under this name, so the page cache may stay
        # (not under -o verify: pages of an earlier S3 read were not checked).
        keep_cache = bool(node.etag) and node.cached_etag == node.etag and not self._options.verify
        node.cached_etag = node.etag
        fh = self.files.add(FileHandle(node, None, None, cached_fd=fd))
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep_cache)

    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._node(parent_inode)
        self._check_writable(parent)
        self._check_not_view_name(parent, name)
        with errors_to_errno(f"create {_child(parent, name)}"):
            text = self._new_name(parent, name)
            existing = await self._existing(parent, text)
            if existing is not None and existing.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if existing is not None and flags & os.O_EXCL:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if existing is not None:
                self.files.discard_writer_of(existing)  # replaced: its data must not come back
            # Nothing is sent now: the object is written at the first commit,
            # and a file created and closed is an empty object.
            node = self.namespace.add_local(parent, text, is_dir=False)
            node.mode = mode & 0o7777 & ~ctx.umask
            writer = self.files.writer_for(node, created=True)
            self.namespace.remember(node)
            fh = self.files.add(FileHandle(node, None, writer))
            return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh)), self._attrs(node)

    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)  # S3 holds no devices, FIFOs or sockets
        info, attrs = await self.create(parent_inode, name, mode, os.O_WRONLY | os.O_EXCL, ctx)
        await self.release(info.fh)
        return self._attrs(self._node(attrs.st_ino))

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        handle = self.files[fh]
        node = handle.node
        if handle.data is not None:
            return _read_mapped(handle.data, off, size)
        if handle.cached_fd is not None:
            with errors_to_errno(f"read {_quote(node.path)} from the cache at {off}"):
                data = await trio.to_thread.run_sync(os.pread, handle.cached_fd, size, off)
                assert self.files.blob_cache is not None  # a cached handle needs it
                self.files.blob_cache.served(len(data))
                return data
        if handle.reader is None and self.files.writer_of(node) is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        with errors_to_errno(f"read {_quote(node.path)} at {off}"):
            try:
                return await self.files.read(handle, off, size)
            except IntegrityError:
                # Pages the kernel kept of this read are not to be trusted.
                node.cached_etag = ""
                if handle.reader is not None and handle.reader.through_cdn:
                    # CloudFront may have served them: S3's copy is not known bad.
                    assert self.files.blob_reads is not None
                    self.files.blob_reads.distrust(handle.reader.key)
                else:
                    self._corrupt.add((node.ino, node.etag))
                raise

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        handle = self.files[fh]
        if handle.writer is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        node = handle.node
        with errors_to_errno(f"write {_quote(node.path)} at {off}"):
            async with self.files.guard(node, handle.writer):
                written = await handle.writer.write(off, buf)
            node.size = handle.writer.size
            node.mtime_ns = time.time_ns()
            node.mtime_fixed = False
            return written

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self.files[fh]
        if handle.writer is not None:
            with errors_to_errno(f"storing {_quote(handle.node.path)}"):
                await self.files.commit(handle.node, handle.writer, closing=True)

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        # Not flush(): the kernel holds the file's lock for the whole FSYNC,
        # so the kernel may not be told here to forget a lost file's name
        # (an rm of it would hold the directory and wait for the file).
        handle = self.files[fh]
        if handle.writer is not None:
            with errors_to_errno(f"storing {_quote(handle.node.path)}"):
                await self.files.commit(handle.node, handle.writer)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        with errors_to_errno(f"release of handle {fh}"):
            await self.files.release(fh)

    async def close_all(self) -> None:
        """At unmount: stop readers; commit open writers within commit_timeout.
        Every file whose data could not be stored is logged by name."""
        await self.files.close_all(self._options.commit_timeout)

    # -- removing and renaming ----------------------------------------------------------

    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        parent = self._node(parent_inode)
        self._check_writable(parent)
        self._check_not_view_name(parent, name)
        with errors_to_errno(f"unlink {_child(parent, name)}"):
            node = await self.namespace.lookup(parent, self._decode(name))
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            writer = self.files.writer_of(node)
            if writer is None:
                if not node.local:
                    await self.store.delete(self.namespace.key(node))
            else:
                # Under the writer's lock: a commit in flight finishes first,
                # and none can follow the delete and bring the object back.
                async with writer.lock:
                    if not node.local:
                        await self.store.delete(self.namespace.key(node))
                    writer.unlinked = True
            self.namespace.remove(node)

    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old_parent = self._node(parent_inode_old)
        new_parent = self._node(parent_inode_new)
        self._check_writable(old_parent, new_parent)
        self._check_not_view_name(old_parent, name_old)
        self._check_not_view_name(new_parent, name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # S3 cannot swap two keys atomically
        with errors_to_errno(f"rename {_child(old_parent, name_old)} -> {_child(new_parent, name_new)}"):
            node = await self.namespace.lookup(old_parent, self._decode(name_old))
            new_name = self._new_name(new_parent, name_new, is_dir=node.is_dir)
            target = await self._existing(new_parent, new_name)
            if target is node:
                return
            if target is not None:
                if flags & pyfuse3.RENAME_NOREPLACE:
                    raise pyfuse3.FUSEError(errno.EEXIST)
                if node.is_dir and not target.is_dir:
                    raise pyfuse3.FUSEError(errno.ENOTDIR)
                if target.is_dir and not node.is_dir:
                    raise pyfuse3.FUSEError(errno.EISDIR)
                if target.is_dir:
                    if not target.local:
                        await self.namespace.ensure_listed(target)
                    if await self.namespace.has_children(target):
                        raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            ancestor: Node | None = new_parent
            while ancestor is not None:
                if ancestor is node:
                    raise pyfuse3.FUSEError(errno.EINVAL)  # into itself
                ancestor = ancestor.parent
            new_path = layout.join(new_parent.path, new_name)
            if node.is_dir:
                await self.files.move_directory(node, new_path)
            else:
                await self.files.move_file(node, new_path)
            if target is not None:
                self.files.discard_writer_of(target)
            self.namespace.move(node, new_parent, new_name)

    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._check_writable(self._node(parent_inode))
        raise pyfuse3.FUSEError(errno.EPERM)

    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._check_writable(self._node(new_parent_inode))
        raise pyfuse3.FUSEError(errno.EPERM)

    # -- extended attributes ---------------------------------------------------------------

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        node = self._node(inode)
        with errors_to_errno(f"getxattr {_quote(node.path)} {_quote(name)}"):
            value = await self.facts.value(node, name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> list[pyfuse3.XAttrNameT]:
        return [pyfuse3.XAttrNameT(name) for name in self.facts.names(self._node(inode))]

    async def setxattr(
        self,
        inode: pyfuse3.InodeT,
        name: pyfuse3.XAttrNameT,
        value: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._check_writable(self._node(inode))
        raise pyfuse3.FUSEError(errno.ENOTSUP)  # the registry's objects carry no metadata

    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        self._check_writable(self._node(inode))
        raise pyfuse3.FUSEError(errno.ENOTSUP)
