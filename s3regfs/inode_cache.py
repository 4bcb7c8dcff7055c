# SPDX-License-Identifier: MIT
"""The namespace: inodes, directories inferred from keys, listings with a TTL.

A directory is *fresh* for ``metadata_ttl`` seconds after a listing told us
all its children; lookups and readdir in a fresh directory cost no request.
Listing directory D (see :func:`s3regfs.layout.flat_listing_pages`):

1. up to N delimiter-less ListObjectsV2 pages of D's prefix, in key order;
   each key fills the cache for every directory on its way down.  If the
   subtree ends within N pages, D and every directory below it are fresh.
2. Otherwise every directory whose key range lies wholly before the last key
   seen is fresh too (keys come sorted, so nothing of it can follow), and a
   delimited listing of D that starts after that key adds D's remaining
   children; D is fresh, the directories beyond the cut are listed when
   visited.

So a registry subtree of deep, narrow digest directories costs about one
request per 1,000 keys, instead of one per directory.  After the first page,
a digest run's remaining keys are read as key ranges at once
(:meth:`Namespace._flat_pages`); a directory a cut falls in is listed on from
the cut (:meth:`Namespace._straddled`); and the first listing of one of the
registry's fixed directories asks for the first pages of those below it
(:meth:`Namespace._list`).

A walk visits a directory's subdirectories in name order, and each one it
finds unlisted costs it a wait for S3 (a namespace of a few thousand keys:
several pages in a row).  So when a reader's listing ends (readdir's, not a
lookup's: a lookup can come from behind the walk), or a reader reaches a
directory listed ahead, the next unlisted directory the walk needs
(the next sibling, the child a flat listing's cut fell in, or after the
last of a level the next one up: the first namespace after the blob store)
is listed in the background meanwhile (``-o list_ahead``,
:meth:`Namespace._read_ahead`), one at a time and at most AHEAD_LEAD
listings ahead of the walk: a walk of a registry waits for S3 at its start
only.  What is listed ahead and never visited costs requests, never
correctness: it is an ordinary listing, under the directory's lock.  It is
not made when the cache is too small to keep the directory a walk is in and
one as big through a trim.  A trim takes the directories used since they
were listed before those nothing used yet (UNVISITED): the rest of the
directory a walk is in and what was listed ahead of it were listed before
much of what the walk used since, but are what it needs next.

A directory whose own children take more than WIDE_PAGES delimited pages
(an ``_uploads`` of a busy registry, a flat bucket) is *wide*: it is never
held whole for lookups.  Its listing stops there, a lookup in it checks the
one name (cached names whose attributes are fresh cost nothing), and readdir
streams it (:class:`ChildStream`: a page at a time, the first names shown
after the first page); only :meth:`Namespace.list_children` lists it whole.

Bookkeeping (pyfuse3's rules): every inode handed to the kernel by lookup,
readdirplus or create counts one lookup; :meth:`Namespace.forget` gives them
back.  A node that disappears from a listing is detached from the tree at
once but stays in the inode table until its lookup count reaches zero.

Memory: the cache holds at most ``metadata_cache`` bytes' worth of nodes
(:data:`NODE_BYTES` each), plus what the kernel still holds.  Past that bound
the coldest directories (least recently listed or looked into) are trimmed:
every node below them that the kernel does not hold (nor a writer, nor a
snapshot handle reading its directory, nor a listing in progress) is dropped
and the cold subtree's root is kept, empty and unlisted (so its parent's
listing stays whole), and a later visit lists it again in pages; the kernel is asked to forget the rest (an entry invalidation of each
cold subtree's root, except on the way to a process's working directory), and
each node it forgets is dropped as its FORGET arrives.  A node the kernel
holds keeps its inode: a new listing of its directory finds it again by name,
and one handed out after a trim dropped it goes back to its name.  A wide
directory being streamed loses the names it handed out already.  Trims run
before a lookup or listing does its work, never between a listing and its use.

Concurrency: a listing holds its directory's lock across its requests; the
ingestion of a page has no ``await`` in it, so readers never see half a page.
A trim never touches a subtree whose listing is in progress.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import operator
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import trio

from s3regfs import layout
from s3regfs.errors import NotFound, StorageError, collapse_exception_groups
from s3regfs.storage.base import ListPage, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

ROOT_INODE = 1

#: Keys asked for when one name is checked: the object and its directory
#: prefix, past the few names that sort between them ("v1" < "v1.0" < "v1/").
LOOKUP_PAGE = 100
#: A name missing from a cached directory listing is looked for in S3 (one
#: small listing) before the lookup fails, so another writer's new object (a
#: pushed manifest, a retag's new revision) is found at once, not after
#: metadata_ttl; a name found missing so is not asked for again for this many
#: seconds (at most metadata_ttl).  A directory made here by mkdir and not
#: listed from S3 since is trusted: its names are the ones made here (cp -r
#: into a new directory costs no request per file).
NEGATIVE_TTL = 1.0
#: Misses remembered at most (the oldest are dropped first).
MISSES_KEPT = 4096

#: Siblings a listing ahead looks through for an unlisted one (see
#: Namespace._read_ahead).
SIBLINGS_SCANNED = 4096
#: Directories listed ahead and not reached yet, remembered at most.
AHEAD_KEPT = 64
#: How many listings ahead of a walk at most, counted in listings of
#: FEW_NAMES new names or more; a smaller one counts its share, at least
#: AHEAD_SMALLEST (see Namespace._lead).
AHEAD_LEAD = 2
AHEAD_SMALLEST = 1 / 8
#: About a page of names: a listing that adds fewer is small (see
#: Namespace._lead); a directory with more is not sorted for listing ahead.
FEW_NAMES = 1000
#: Directories whose children's order is kept for listing ahead.
ORDERS_KEPT = 8

#: Delimited pages (1,000 names each) past which a directory is wide (see
#: the module docstring).
WIDE_PAGES = 8

#: What one cached name costs the daemon's memory, with its share of the
#: tables that find it (measured as RSS growth per node over a registry walk:
#: benchmarks/README.md); metadata_cache / NODE_BYTES nodes are kept.
NODE_BYTES = 1024
#: A trim brings the cache down to this share of its bound, so that trims are
#: rare (once per a few thousand new names at least).
TRIM_TO = 0.75

#: A node's Node.used tick (the sort key of trims).
_USED = operator.attrgetter("used")
#: Set in Node.used for a node a listing made or saw and nothing used since
#: (see Namespace._listed_tick): such nodes sort after every used one.
UNVISITED = 1 << 62
#: Node.used without UNVISITED: the tick itself.
_TICKS = UNVISITED - 1

#: A key that is both an object and a directory prefix ("a" and "a/b"): the
#: directory is shown (also by lookups), the object stays hidden until the
#: directory is gone.
_HIDDEN_FILE = "hiding object %r: it is also a directory prefix, and %s is shown"


class Node:
    """One file or directory.  Directories have *children* (None for files)."""

    __slots__ = (
        "ino",
        "name",
        "parent",
        "children",
        "size",
        "mtime_ns",
        "etag",
        "storage_class",
        "seen_gen",
        "fresh_at",
        "nlookup",
        "attached",
        "cached_etag",
        "list_cost",
        "lock",
        "local",
        "writing",
        "mode",
        "uid",
        "gid",
        "mtime_fixed",
        "view_names",
        "made_here",
        "used",
        "held",
        "doomed",
        "wide",
        "kernel_copy_at",
        "names_hash",
    )

    def __init__(self, ino: int, name: str, parent: Node | None, is_dir: bool) -> None:
        self.ino = ino
        self.name = name
        self.parent = parent
        self.children: dict[str, Node] | None = {} if is_dir else None
        self.size = 0
        self.mtime_ns = 0
        self.etag = ""
        self.storage_class = ""
        self.seen_gen = 0
        #: Directories: when a listing last told all children (None: never).
        #: Files: when the attributes were last seen in a listing or HEAD.
        self.fresh_at: float | None = None
        self.nlookup = 0
        self.attached = True
        #: ETag of the data the kernel page cache may hold for this file.
        self.cached_etag = ""
        #: Directories: how many requests the last listing took.
        self.list_cost = 0
        #: Directories made by mkdir here and not listed from S3 since: their
        #: names are the ones made here, so a miss needs no look in S3.
        self.made_here = False
        self.lock: trio.Lock | None = None
        #: Exists only in this mount, not (yet) as keys in S3: made by mkdir or
        #: create, or a directory whose last object was deleted here.  Listings
        #: never drop such a node (nor any directory holding one).
        self.local = False
        #: Open for writing: the writer owns the size; listings do not touch it.
        self.writing = False
        #: chmod/chown made through this mount (kept for the mount's life).
        self.mode: int | None = None
        self.uid: int | None = None
        self.gid: int | None = None
        #: utimens set the mtime here: listings keep it.
        self.mtime_fixed = False
        #: Blob data files: the images-view names this inode also has (hard
        #: links); None for every other node.
        self.view_names: set[str] | None = None
        #: When it (or a node below it) was last listed or looked into: a
        #: tick of Namespace's clock, for trimming the coldest first.
        self.used = 0
        #: Directories: handles reading it (their snapshot holds its children).
        self.held = 0
        #: Trimmed while the kernel held it: dropped once the kernel forgets it.
        self.doomed = False
        #: Directories: too many children to list whole (see WIDE_PAGES).
        self.wide = False
        #: Directories (-o dircache): since when the names the kernel may have
        #: cached were fresh (None: it cached none since the last change).
        self.kernel_copy_at: float | None = None
        #: Directories: a hash of the names its last whole listing found (None:
        #: never listed whole); kept when a trim drops the children, so that a
        #: listing again tells a change of names from a return of the same.
        self.names_hash: int | None = None

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    @property
    def path(self) -> str:
        parts: list[str] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))

    def __repr__(self) -> str:
        return f"<Node {self.ino} {self.path!r}{'/' if self.is_dir else ''}>"


class EntryForgetter(Protocol):
    """How a trim asks the kernel to forget the entries below a directory."""

    def forget_entries_soon(self, entries: Sequence[tuple[Node, str]]) -> None:
        """Ask the kernel, in the background, to drop each (parent, name) entry
        of *entries* (and everything it cached below it); never blocks."""

    def forget_pages_soon(self, node: Node) -> None:
        """Ask the kernel, in the background, to drop *node*'s cached pages
        (for a directory: its cached contents); never blocks."""


class Namespace:
    """The cached tree of one mount; see the module docstring.

    *max_nodes* bounds the nodes kept (0: no bound); *kernel* is asked to
    forget trimmed entries (None: nodes the kernel holds stay until it forgets
    them on its own); *busy* tells the paths (relative to the root) that are
    processes' working directories now, which the kernel must keep.
    """

    def __init__(
        self,
        store: ObjectStore,
        key_prefix: str,
        metadata_ttl: float,
        *,
        max_nodes: int = 0,
        kernel: EntryForgetter | None = None,
        busy: Callable[[], Iterable[str]] | None = None,
        nursery: trio.Nursery | None = None,
        list_ahead: bool = False,
    ) -> None:
        self._store = store
        self.key_prefix = key_prefix
        self.ttl = metadata_ttl
        self._inos = itertools.count(ROOT_INODE + 1)
        self._gens = itertools.count(1)
        self.root = Node(ROOT_INODE, "", None, True)
        self.root.mtime_ns = time.time_ns()
        self._inodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._warned: set[str] = set()
        #: (directory inode, name) -> when S3 last confirmed the name missing.
        self._misses: dict[tuple[int, str], float] = {}
        self.negative_ttl = min(NEGATIVE_TTL, metadata_ttl)
        #: Directory inode -> the last key its cut flat listing read.
        self._flat_cursors: dict[int, str] = {}
        #: Directory inode -> how far its cut flat listing read every key,
        #: that listing's generation and start, and the trims and changes
        #: done when it began (see _straddled).
        self._flat_covered: dict[int, tuple[str, int, float, int, int]] = {}
        #: Until when expired digest directories are listed on their own (see _page_onward).
        self._pages_onward_paused_until = 0.0
        #: Directory inodes whose last flat listing was cut (more keys below
        #: them than FLAT_LISTING_PAGES hold): a lookup lists them shallow.
        self._cut_listings: dict[int, None] = {}
        #: Prefix of a SPINE directory -> when its first delimited page was
        #: asked for ahead of its listing, the page, and _changes then (see _list).
        self._early_pages: dict[str, tuple[float, ListPage, int]] = {}
        #: Changes to the tree so far (changed(), a node detached, SIGHUP): an
        #: early page asked for, or a cut listing begun, before a change is
        #: not used (it may not show a name made here, or show one removed).
        self._changes = 0
        #: Early pages asked for, and those a listing used.
        self.early_pages = 0
        self.early_pages_used = 0
        #: Key ranges read at once by split listings.
        self.list_ranges = 0
        #: Directory inode -> requests spent checking names one by one since
        #: its listing went stale (see lookup).
        self._stale_checks: dict[int, int] = {}
        #: Inodes of nodes that are not in the bucket (the images view, .s3regfs).
        self._virtual: set[int] = set()
        #: Directory answers from the cache, and those that needed S3.
        self.cache_hits = 0
        self.cache_misses = 0
        self.max_nodes = max_nodes
        self._kernel = kernel
        self._busy = busy
        #: The clock of Node.used: one tick per directory use.
        self._tick = 0
        self._created = 0
        self._created_at_trim = 0
        #: Nodes dropped by trims (at once or when the kernel forgot them).
        self.evicted = 0
        #: Nodes the kernel holds (looked up and not forgotten yet): the rest
        #: of the cache are names only the daemon keeps.
        self.kernel_held = 0
        self.trims = 0
        #: Listing ahead of a walk (see _read_ahead): where its task runs,
        #: whether on, the directory in flight, and the inodes of directories
        #: listed ahead that no reader reached yet (oldest first).
        self._nursery = nursery
        self.list_ahead = list_ahead and nursery is not None
        self._ahead_in_flight: set[int] = set()
        #: Listed ahead, not reached yet: inode -> the nodes its listing made.
        self._ahead_listed: dict[int, int] = {}
        #: Directory inode -> (its children count and fresh_at, its children's
        #: names in order), for the few directories a walk is in (see _read_ahead).
        self._child_order: dict[int, tuple[tuple[int, float | None], list[str]]] = {}
        #: Nodes the last listing (for a reader or ahead) added to the cache.
        self._listing_grew = 0
        #: Listings made ahead, and those a reader then used.
        self.lists_ahead = 0
        self.lists_ahead_used = 0

    # -- inode table ----------------------------------------------------------

    def get(self, ino: int) -> Node:
        """The node of a live inode; KeyError if the kernel passed a stale one."""
        return self._inodes[ino]

    def key(self, node: Node) -> str:
        return layout.key_of(self.key_prefix, node.path)

    def remember(self, node: Node) -> None:
        """Count one kernel lookup of *node* (which keeps it in the inode table)."""
        if not node.nlookup:
            self.kernel_held += 1
        node.nlookup += 1
        if self._inodes.get(node.ino) is node:
            return
        # Handed out after it left the table (a readdir snapshot, a result
        # held across an await): the kernel has its inode now.  A node removed
        # from S3 stays detached until the kernel forgets it; one a trim
        # dropped goes back to its name, or, if a new node took the name,
        # stays detached too (dropped when the kernel forgets it).
        self._inodes[node.ino] = node
        parent = node.parent
        if (
            node.attached
            and parent is not None
            and parent.children is not None
            and (not self.knows(parent) or parent.children.setdefault(node.name, node) is not node)
        ):
            node.attached = False

    def forget(self, ino: int, count: int) -> None:
        node = self._inodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        if node.nlookup:
            node.nlookup = max(0, node.nlookup - count)
            if node.nlookup:
                return
            self.kernel_held -= 1
        if not node.attached:
            del self._inodes[ino]
        elif node.doomed and ino in self._virtual:
            # A view's node: the view makes it again when asked for (it
            # stays a view node, should the view hand it out again).
            del self._inodes[ino]
        elif node.doomed and self._droppable(node):
            parent = node.parent
            assert parent is not None and parent.children is not None
            if parent.children.get(node.name) is node:
                del parent.children[node.name]
                parent.fresh_at = None  # its listing is no longer whole
            del self._inodes[ino]
            self.evicted += 1

    def hold(self, directory: Node) -> None:
        """A handle reads *directory*: a trim leaves its children alone."""
        directory.held += 1

    def release(self, directory: Node) -> None:
        directory.held = max(0, directory.held - 1)

    def __len__(self) -> int:
        return len(self._inodes)

    def discard_virtual(self, node: Node) -> None:
        """The view let go of *node* for good (after the kernel forgot it)."""
        if not self.knows(node):
            self._virtual.discard(node.ino)

    def is_virtual(self, node: Node) -> bool:
        """Whether *node* is not in the bucket (made by new_virtual)."""
        return node.ino in self._virtual

    def knows(self, node: Node) -> bool:
        """Whether *node* is still in the inode table (not dropped)."""
        return self._inodes.get(node.ino) is node

    # -- freshness ------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic()

    def is_fresh(self, node: Node) -> bool:
        return node.fresh_at is not None and self._now() - node.fresh_at < self.ttl

    # -- the kernel's copies of directory contents (-o dircache) -------------------

    def kernel_copies(self, directory: Node, *, live: bool = False) -> None:
        """The kernel reads *directory* from the start: it may keep what it
        gets, names as fresh as the listing they come from (now, if *live*:
        a stream of S3's pages)."""
        listed = directory.fresh_at is not None and directory.ino not in self._virtual and not live
        directory.kernel_copy_at = directory.fresh_at if listed else self._now()

    def kernel_copy_life(self, directory: Node) -> float:
        """Seconds the kernel may keep *directory*'s attributes: what is left
        of its copy's metadata_ttl (or, before it copies, of the listing's it
        would copy), so that it asks for them again, and we can drop an
        expired copy (see kernel_copy_expired), before it reads the copy."""
        made = directory.kernel_copy_at
        if made is None:
            if not self.is_fresh(directory):
                return self.ttl  # its next read lists it again: a copy born then
            made = directory.fresh_at
            assert made is not None
        return max(0.0, self.ttl - (self._now() - made))

    def kernel_copy_expired(self, directory: Node) -> bool:
        """Whether the kernel may hold a copy of *directory*'s names older than metadata_ttl."""
        made = directory.kernel_copy_at
        return made is not None and self._now() - made >= self.ttl

    def forget_kernel_copy(self, directory: Node) -> None:
        """The kernel is told to drop its copy of *directory*'s names."""
        directory.kernel_copy_at = None

    def changed(self, directory: Node) -> None:
        """*directory*'s names changed as this mount sees them: it gets a new
        mtime (as on a local disk), which also makes the kernel drop a copy
        of its names (it compares the mtime before it reads one); an mtime
        set by utimens is kept and the kernel told to drop the copy instead."""
        self._changes += 1
        if directory.mtime_fixed:
            if directory.kernel_copy_at is not None and self._kernel is not None:
                self._kernel.forget_pages_soon(directory)
        else:
            directory.mtime_ns = time.time_ns()
        directory.kernel_copy_at = None

    def expire_kernel_copies(self) -> list[Node]:
        """Make every copy the kernel may hold count as expired; the
        directories the kernel holds, whose attributes it should forget."""
        known = []
        for node in self._inodes.values():
            if node.children is not None and (node.nlookup or node is self.root):
                if node.kernel_copy_at is not None:
                    node.kernel_copy_at = -math.inf
                known.append(node)
        return known

    def invalidate_all(self) -> None:
        """Make every listing and attribute stale (SIGHUP)."""
        for node in self._inodes.values():
            node.fresh_at = None
        self._early_pages.clear()
        self._flat_covered.clear()
        self._changes += 1

    # -- queries ----------------------------------------------------------------

    async def lookup(self, parent: Node, name: str) -> Node:
        """The child *name* of directory *parent*; NotFound if it has none.

        In a fresh directory a name it holds costs nothing; a name it lacks
        is looked for in S3 (see NEGATIVE_TTL).  In a stale one whose last
        listing took more than one request, only *name* is checked again (one
        small delimited listing, as the driver's Stat does), until the checks
        since it went stale have cost as many requests as listing it again:
        then it is listed again (a walk after metadata_ttl costs at most twice
        the listings, never a request per name); otherwise it is listed again
        at once.
        """
        if not parent.attached:
            raise NotFound(f"{layout.join(parent.path, name)}: the directory was removed")
        # Trims come before the work, never between a listing and its use.
        self._maybe_trim()
        self._touch(parent)
        if parent.wide and not self.is_fresh(parent):
            return self._used(await self._check_child(parent, name))
        if (
            parent.fresh_at is not None
            and parent.list_cost > 1
            and not self.is_fresh(parent)
            and self._stale_checks.get(parent.ino, 0) < parent.list_cost
        ):
            return self._used(await self._check_child(parent, name))
        listed_before = self.is_fresh(parent)
        # A directory whose subtree is larger than a flat listing holds
        # (blobs/sha256, a namespace of thousands of repositories) is listed
        # again for a lookup one level only: its subtree's first pages would
        # be read again for nothing (a walk past its TTL is far beyond them),
        # and a trim would then take what the walk listed ahead instead.
        await self.ensure_listed(parent, trim=False, shallow=parent.ino in self._cut_listings)
        if parent.wide and not self.is_fresh(parent):
            # Found wide just now: the name may be past the pages read.
            return self._used(await self._check_child(parent, name))
        assert parent.children is not None
        child = parent.children.get(name)
        if child is None:
            # A listing made by this very lookup needs no second look, and
            # counts as one for a while (cp's stat, then its create).
            if not listed_before:
                self._remember_miss(parent, name)
            elif not parent.made_here and not self._missed_lately(parent, name):
                try:
                    return self._used(await self._check_child(parent, name))
                except NotFound:
                    self._remember_miss(parent, name)
                    raise
            raise NotFound(f"{layout.join(parent.path, name)}: no such file or directory")
        return self._used(child)

    async def has_children(self, directory: Node) -> bool:
        """Whether *directory* holds anything (rmdir, rename over it): from
        the cache when it is listed whole, else one small listing."""
        assert directory.children is not None
        if (
            directory.local
            or self.is_fresh(directory)
            or any(child.local for child in directory.children.values())
        ):
            return bool(directory.children)
        prefix = layout.dir_prefix(self.key_prefix, directory.path)
        page = await self._store.list_page(prefix, delimiter="/", max_keys=2)
        # The directory's own "dir/" marker is not content.
        return bool(page.prefixes) or any(info.key != prefix for info in page.objects)

    def _used(self, node: Node) -> Node:
        """*node* is being handed out: as warm as its directory."""
        node.used = self._tick
        return node

    def _missed_lately(self, directory: Node, name: str) -> bool:
        when = self._misses.get((directory.ino, name))
        return when is not None and self._now() - when < self.negative_ttl

    def _remember_miss(self, directory: Node, name: str) -> None:
        if len(self._misses) >= MISSES_KEPT:
            now = self._now()
            self._misses = {k: t for k, t in self._misses.items() if now - t < self.negative_ttl}
            while len(self._misses) >= MISSES_KEPT:
                del self._misses[next(iter(self._misses))]
        self._misses[(directory.ino, name)] = self._now()

    async def _check_child(self, parent: Node, name: str) -> Node:
        assert parent.children is not None
        path = layout.join(parent.path, name)
        problem = layout.name_problem(name)
        if problem:
            raise NotFound(f"{path}: {problem} cannot be a key")
        child = parent.children.get(name)
        if child is not None and (_pinned(child) or (not child.is_dir and self.is_fresh(child))):
            return child  # made or being written here: S3 may not know it yet
        key = layout.key_of(self.key_prefix, path)
        # One delimited listing of the name itself answers both questions: the
        # object "name" is the first key of its prefix, and "name/" shows as a
        # common prefix (only keys "name" + a byte below "/" come before it).
        # Where a key is both a file and a directory prefix ("a" and "a/b"),
        # listings show the directory, and so must this.
        if len(self._stale_checks) >= MISSES_KEPT:
            self._stale_checks.clear()
        self._stale_checks[parent.ino] = self._stale_checks.get(parent.ino, 0) + 1
        # What it finds is as new as a listing begun now: a listing begun
        # before must not drop it.
        gen = next(self._gens)
        page = await self._store.list_page(key, delimiter="/", max_keys=LOOKUP_PAGE)
        is_dir = key + "/" in page.prefixes
        if not is_dir and page.next_token is not None:
            self._stale_checks[parent.ino] += 1
            is_dir = bool((await self._store.list_page(key + "/", max_keys=1)).objects)
        info = next((each for each in page.objects if each.key == key), None)
        if is_dir:
            if child is None or not child.is_dir:
                if child is not None:
                    self._detach(child)
                child = self._new_node(name, parent, True)
                child.mtime_ns = parent.mtime_ns
                parent.children[name] = child
            if info is not None:
                self._warn_once(key, "the directory", _HIDDEN_FILE)
            child.seen_gen = max(child.seen_gen, gen)
            return child
        if info is not None:
            if child is None or child.is_dir:
                if child is not None:
                    self._remove_child(parent, name, child)
                child = self._new_node(name, parent, False)
                parent.children[name] = child
            self._set_file(child, info)
            child.seen_gen = max(child.seen_gen, gen)
            return child
        if child is not None:
            self._remove_child(parent, name, child)
        raise NotFound(f"{path}: no such file or directory")

    async def list_children(self, directory: Node) -> list[Node]:
        """All the children of *directory*, sorted by name (a wide directory
        too: this lists it whole)."""
        await self.ensure_listed(directory, whole=True)
        assert directory.children is not None
        return [directory.children[name] for name in sorted(directory.children)]

    async def refresh_file(self, node: Node) -> None:
        """Renew a file's stale attributes with one HEAD; NotFound if it is gone."""
        if self.is_fresh(node):
            return
        try:
            info = await self._store.head(self.key(node))
        except NotFound:
            parent = node.parent
            if parent is not None and parent.children and parent.children.get(node.name) is node:
                self._remove_child(parent, node.name, node)
            raise
        self._set_file(node, info)

    # -- changes made through the mount -------------------------------------------

    def add_local(self, parent: Node, name: str, *, is_dir: bool) -> Node:
        """A new file or directory that exists only here until something is stored."""
        assert parent.children is not None
        old = parent.children.get(name)
        if old is not None:
            self._detach(old)
        self.changed(parent)
        node = self._new_node(name, parent, is_dir)
        node.local = True
        node.made_here = is_dir
        node.mtime_ns = time.time_ns()
        node.fresh_at = self._now()
        parent.children[name] = node
        return node

    def stored(self, node: Node, *, size: int, etag: str) -> None:
        """*node*'s object was written: it and its directories now exist in S3."""
        node.size = size
        node.etag = etag
        if not node.mtime_fixed:
            node.mtime_ns = time.time_ns()
        node.fresh_at = self._now()
        # Newer than any listing in flight, which could not have seen it.
        gen = next(self._gens)
        each: Node | None = node
        while each is not None:
            each.local = False
            each.seen_gen = max(each.seen_gen, gen)
            each = each.parent

    def remove(self, node: Node) -> None:
        """*node* was deleted here; a directory left empty stays (as on a local disk)."""
        parent = node.parent
        if parent is not None and parent.children is not None and parent.children.get(node.name) is node:
            del parent.children[node.name]
            self.changed(parent)
            if not parent.children and parent.parent is not None:
                parent.local = True
        self._detach(node)

    def move(self, node: Node, new_parent: Node, new_name: str) -> None:
        """Rename *node* (keeping its inode); a node it replaces is detached."""
        assert new_parent.children is not None
        old_parent = node.parent
        assert old_parent is not None and old_parent.children is not None
        if old_parent.children.get(node.name) is node:
            del old_parent.children[node.name]
            self.changed(old_parent)
            if not old_parent.children and old_parent.parent is not None:
                old_parent.local = True
        replaced = new_parent.children.get(new_name)
        if replaced is not None and replaced is not node:
            self._detach(replaced)
        node.parent = new_parent
        node.name = new_name
        new_parent.children[new_name] = node
        self.changed(new_parent)
        node.seen_gen = max(node.seen_gen, next(self._gens))

    async def exists(self, path: str) -> bool:
        """Whether *path* (relative to the root) names a file or directory."""
        try:
            await self.resolve(path)
        except NotFound:
            return False
        return True

    def usage(self) -> tuple[int, int]:
        """Bytes and count of the files the listings have seen so far."""
        sizes = [
            node.size
            for node in self._inodes.values()
            if node.attached and not node.is_dir and node.ino not in self._virtual
        ]
        return sum(sizes), len(sizes)

    def new_virtual(self, name: str, parent: Node, *, is_dir: bool) -> Node:
        """A node that is not in the bucket's tree (the images view): it gets an
        inode, but no parent knows it as a child, and listings never touch it."""
        node = Node(next(self._inos), name, parent, is_dir)
        node.mtime_ns = self.root.mtime_ns
        node.fresh_at = self._now()
        self._inodes[node.ino] = node
        self._virtual.add(node.ino)
        return node

    async def resolve(self, path: str) -> Node:
        """The node of *path* (relative to the root); NotFound if there is none."""
        node = self.root
        for name in path.split("/"):
            if not node.is_dir:
                raise NotFound(f"{path}: not a directory on the way")
            node = await self.lookup(node, name)
        return node

    def descendants(self, directory: Node) -> list[Node]:
        """Every node below *directory* (not itself)."""
        return list(_walk(directory))[1:]

    # -- listing ------------------------------------------------------------------

    async def ensure_listed(
        self,
        directory: Node,
        *,
        whole: bool = False,
        trim: bool = True,
        reading: bool = False,
        shallow: bool = False,
    ) -> None:
        """Make *directory*'s children known and fresh (lists at most once at a
        time).  A wide directory stays as it is (not fresh, partly known)
        unless *whole*; one found wide by this listing is left so too.  A trim
        that falls due runs first (unless not *trim*), never between the
        listing and its use.  *reading*: a reader of its entries asks (a walk
        may be on its way: see _read_ahead); not a lookup, which can come
        from behind a walk (an entry that expired).  *shallow*: its own
        children only, no flat pages of its subtree (see lookup)."""
        if self.listed(directory, trim=trim):
            return
        if directory.wide and not whole:
            return
        self.cache_misses += 1
        if directory.lock is None:
            directory.lock = trio.Lock()
        async with directory.lock:
            if self.is_fresh(directory) or not directory.attached:
                self._reached(directory)  # listed meanwhile (maybe ahead)
                return
            created = self._created
            await self._list(directory, whole=whole, shallow=shallow, onward=reading)
            self._listing_grew = self._created - created
        if reading:
            self._read_ahead(directory)

    def listed(self, directory: Node, *, trim: bool = True) -> bool:
        """ensure_listed's answer from the cache, without a wait: whether
        *directory* is fresh (a cache hit).  Either way, a trim that falls due
        runs first (unless not *trim*) and the directory counts as in use."""
        if trim and self.max_nodes and len(self._inodes) > self.max_nodes:
            self._maybe_trim()
        self._touch(directory)
        if self.is_fresh(directory):
            self.cache_hits += 1
            if self._ahead_listed:
                self._reached(directory)
            return True
        return False

    # -- listing ahead of a walk --------------------------------------------------

    def _reached(self, directory: Node) -> None:
        """A reader reached *directory*: if it was listed ahead, list on ahead of it."""
        if directory.ino in self._ahead_listed:
            del self._ahead_listed[directory.ino]
            self.lists_ahead_used += 1
            self._read_ahead(directory)

    def _read_ahead(self, directory: Node) -> None:
        """Start listing, in the background, the unlisted directory a walk
        at *directory* needs next (see _next_in_walk), unless the walk's lead
        is AHEAD_LEAD listings already (see _lead) or another listing ahead
        is in flight."""
        if not self.list_ahead or self._ahead_in_flight or not directory.attached:
            return
        grew = self._listing_grew
        if (
            self.max_nodes
            and len(self._inodes) + grew > self.max_nodes
            and 2 * grew > TRIM_TO * self.max_nodes
        ):
            # A trim is due, and what it keeps cannot hold this listing and a
            # sibling as big: it would take the part of this one the walk has
            # yet to read (a trim takes the used directories first, then by
            # age: see _listed_tick).
            return
        if self._lead() >= AHEAD_LEAD:
            return
        target = self._next_in_walk(directory)
        if target is not None:
            assert self._nursery is not None
            self._ahead_in_flight.add(target.ino)
            self._nursery.start_soon(self._list_ahead, target)

    def _lead(self) -> float:
        """How far the listings made ahead that the walk has yet to reach
        take it, counted in listings of FEW_NAMES new names or more (a
        smaller one counts its share, at least AHEAD_SMALLEST: `repositories`
        listed from an early page is not a namespace), up to AHEAD_LEAD;
        AHEAD_LEAD too once they hold an eighth of the cache's bound (trims
        would take them).  Only fresh ones count: one a walk never reached
        (it went elsewhere, or stopped) goes stale."""
        lead = 0.0
        nodes = 0
        for ino, grew in reversed(self._ahead_listed.items()):
            node = self._inodes.get(ino)
            if node is not None and node.attached and self.is_fresh(node):
                lead += min(1.0, max(grew / FEW_NAMES, AHEAD_SMALLEST))
                nodes += grew
                if self.max_nodes and nodes > self.max_nodes // 8:
                    return AHEAD_LEAD
                if lead >= AHEAD_LEAD:
                    break
        return lead

    def _next_in_walk(self, directory: Node) -> Node | None:
        """The directory a depth-first walk (in name order) at *directory*
        lists next: if *directory*'s own flat listing was cut, its first child
        that is not fresh (the one the cut fell in); else the first sibling
        after it that is not fresh.  When its parent has no such sibling, the
        walk climbs: the parent's next siblings, and so on up to the root; a
        fresh one found after a climb stands for its first child (the walk
        enters it at once: `repositories` after the blob store, listed by an
        early page, and its first namespace not).  None if none is found
        within SIBLINGS_SCANNED names a level, or the walk's next directory
        is wide or being listed (its reader lists or streams it)."""
        if directory.ino in self._flat_cursors:
            level, after = directory, ""
        elif directory.parent is not None:
            level, after = directory.parent, directory.name
        else:
            return None
        climbed = False
        while True:
            assert level.children is not None
            names = self._children_in_order(level)
            start = bisect.bisect_right(names, after) if after else 0
            # Bounded work per listing: a walk lists ahead again at the next one.
            for name in itertools.islice(names, start, start + SIBLINGS_SCANNED):
                child = level.children.get(name)
                if child is None or child.children is None or child.ino in self._virtual:
                    continue
                if child.wide or _being_listed(child):
                    return None
                if not self.is_fresh(child):
                    return child
                if climbed:
                    return self._first_unlisted_child(child)
            if start + SIBLINGS_SCANNED < len(names) or level.parent is None:
                return None
            level, after, climbed = level.parent, level.name, True

    def _first_unlisted_child(self, directory: Node) -> Node | None:
        """*directory*'s first child (in name order) if it is a directory
        that is not fresh, not wide and not being listed; else None.  Only
        for a directory of few names (its children are sorted here)."""
        assert directory.children is not None
        if not directory.children or len(directory.children) > FEW_NAMES:
            return None
        child = directory.children[min(directory.children)]
        if (
            child.children is None
            or child.ino in self._virtual
            or child.wide
            or _being_listed(child)
            or self.is_fresh(child)
        ):
            return None
        return child

    def _children_in_order(self, directory: Node) -> list[str]:
        """*directory*'s children's names in order, kept while it is unchanged
        (a walk asks about the same directory once per subdirectory listed)."""
        assert directory.children is not None
        state = (len(directory.children), directory.fresh_at)
        kept = self._child_order.get(directory.ino)
        if kept is not None and kept[0] == state:
            return kept[1]
        names = sorted(directory.children)
        if len(self._child_order) >= ORDERS_KEPT:
            del self._child_order[next(iter(self._child_order))]
        self._child_order[directory.ino] = (state, names)
        return names

    async def _list_ahead(self, directory: Node) -> None:
        """List *directory* for a walk that will reach it soon, then the one
        after it (while the walk's lead is short: see _read_ahead).  A
        failure is left to the reader's own listing (which asks again): it
        runs in the mount's nursery, and must not end the mount."""
        listed = False
        try:
            if directory.lock is None:
                directory.lock = trio.Lock()
            async with directory.lock:
                if self.is_fresh(directory) or not directory.attached or directory.wide:
                    return
                self.lists_ahead += 1
                created = self._created
                await self._list(directory, whole=False, onward=True)
                self._listing_grew = self._created - created
                listed = True
        except StorageError as error:
            log.debug("listing %r ahead: %s", directory.path, error)
        except Exception:  # noqa: BLE001 - a task of the mount's nursery: never fail the mount
            # The reader's own listing meets the same fault and answers EIO.
            log.exception("listing %r ahead: unexpected error", directory.path)
        finally:
            self._ahead_in_flight.discard(directory.ino)
        if listed:
            if len(self._ahead_listed) >= AHEAD_KEPT:
                del self._ahead_listed[next(iter(self._ahead_listed))]
            self._ahead_listed[directory.ino] = self._listing_grew
            # A walk can be through a directory (the rest of a cut one, a
            # namespace of 25 repositories) in less time than listing the
            # next takes.
            self._read_ahead(directory)

    def stream(self, directory: Node) -> ChildStream:
        """The children of *directory* a page at a time (see ChildStream)."""
        return ChildStream(self, directory)

    def revive(self, node: Node) -> Node:
        """*node*, handed out by a stream, back in the tree if a trim dropped
        it meanwhile; or the node that took its name since."""
        if self.knows(node) or not node.attached:
            return node  # a node removed from S3 is handed out as it is
        parent = node.parent
        assert parent is not None and parent.children is not None
        current = parent.children.get(node.name)
        if current is not None:
            return current
        parent.children[node.name] = node
        self._inodes[node.ino] = node
        return node

    async def _list(
        self, directory: Node, *, whole: bool = True, shallow: bool = False, onward: bool = False
    ) -> None:
        below = self._spine_to_fetch(directory)
        if not below:
            await self._list_now(directory, whole=whole, shallow=shallow, onward=onward)
            return
        # A walk from the root lists these next, one after another: ask for
        # their first pages now, in the same round trip as this listing.
        with collapse_exception_groups():  # this listing's own error, as itself
            async with trio.open_nursery() as nursery:
                for path in below:
                    nursery.start_soon(self._fetch_early, path)
                await self._list_now(directory, whole=whole, shallow=shallow, onward=onward)

    def _spine_to_fetch(self, directory: Node) -> list[str]:
        """The SPINE directories below *directory* whose first page is worth
        asking for now: not fresh, not asked for lately, and not missing from
        a listing of a directory on the way (a bucket that is no registry
        pays for this once)."""
        paths = []
        for path in layout.spine_below(directory.path):
            early = self._early_pages.get(layout.dir_prefix(self.key_prefix, path))
            if early is not None and self._usable(early):
                continue
            known: Node | None = directory
            missing = False
            for name in path[len(directory.path) :].strip("/").split("/"):
                assert known is not None
                child = known.children.get(name) if known.children is not None else None
                if child is None:
                    # A file there, or listed whole without it: no registry.
                    missing = known.children is None or known.names_hash is not None
                    known = None
                    break
                known = child
            if not missing and (known is None or not self.is_fresh(known)):
                paths.append(path)
        return paths

    async def _fetch_early(self, path: str) -> None:
        """Ask for the first delimited page of directory *path* ahead of its listing."""
        prefix = layout.dir_prefix(self.key_prefix, path)
        asked, changes = self._now(), self._changes
        try:
            page = await self._store.list_page(prefix, delimiter="/")
        except StorageError as error:
            log.debug("early page of %r: %s", prefix, error)  # its listing asks again
            return
        self.early_pages += 1
        node = self._known(path)
        if changes != self._changes or (
            node is not None and node.fresh_at is not None and node.fresh_at >= asked
        ):
            return  # older than what this mount knows now
        self._early_pages[prefix] = (asked, page, changes)

    def _take_early_page(self, prefix: str) -> tuple[float, ListPage] | None:
        """The first delimited page of *prefix* asked for ahead, if younger than
        metadata_ttl and than every change this mount made or saw since."""
        early = self._early_pages.pop(prefix, None)
        if early is None or not self._usable(early):
            return None
        self.early_pages_used += 1
        return early[0], early[1]

    def _usable(self, early: tuple[float, ListPage, int]) -> bool:
        """Whether an early page is younger than metadata_ttl and than every change since."""
        asked, _, changes = early
        return self._now() - asked < self.ttl and changes == self._changes

    def _known(self, path: str) -> Node | None:
        """The node of *path* if the cache holds it (no request)."""
        node: Node | None = self.root
        for name in path.split("/") if path else ():
            if node is None or node.children is None:
                return None
            node = node.children.get(name)
        return node

    async def _list_now(
        self, directory: Node, *, whole: bool, shallow: bool = False, onward: bool = False
    ) -> None:
        """List *directory*: its subtree in flat pages first (see the module
        docstring), then the rest of its own children.  *shallow*: its own
        children only (see lookup).  *onward*: a walk is on its way through
        the directory's siblings (see _expired_in_a_run)."""
        parent = directory.parent
        if parent is not None:
            if parent.ino in self._flat_cursors and await self._continue_flat(parent, directory):
                return
            if onward and self._expired_in_a_run(directory) and await self._page_onward(parent, directory):
                return
        path = directory.path
        prefix = layout.dir_prefix(self.key_prefix, path)
        gen = next(self._gens)
        started = self._now()
        touched: dict[int, Node] = {}
        if shallow:
            await self._list_own_children(directory, gen, gen, started, None, 0, whole=whole)
            return
        # Names seen by the listing that counts: this one, or the parent's
        # that the cut fell in (its keys up to there are not read again).
        fresh_gen = gen
        changes, trims = self._changes, self.trims
        read_before: str | None = None
        straddled = self._straddled(directory)
        if straddled is not None:
            read_before, fresh_gen, started = straddled
        cursor, ended, cost = await self._flat_pages(
            directory, prefix, layout.flat_listing_pages(path), gen, touched, start_after=read_before
        )
        if read_before is not None:
            cursor = max(cursor or read_before, read_before)
            # The directories on the way to the cut: read up to it already.
            touched.update((node.ino, node) for node in self._directories_on_the_way(directory, read_before))
        if ended:
            for node in itertools.chain(touched.values(), (directory,)):
                self._mark_fresh(node, fresh_gen, started)
            directory.list_cost = cost
            directory.wide = False
            self._flat_cursors.pop(directory.ino, None)
            self._cut_listings.pop(directory.ino, None)
            self._flat_covered.pop(directory.ino, None)
            log.debug("listed %r flat: %d directories fresh", path, len(touched) + 1)
            return
        if cursor is not None:
            for node in touched.values():
                node_prefix = layout.dir_prefix(self.key_prefix, node.path)
                if cursor > node_prefix and not cursor.startswith(node_prefix):
                    self._mark_fresh(node, fresh_gen, started)
            # Its children past the cut are listed in flat pages from there
            # when visited (see _continue_flat), not one by one.
            if len(self._flat_cursors) >= MISSES_KEPT:
                self._flat_cursors.clear()
                self._flat_covered.clear()
            self._flat_cursors[directory.ino] = cursor
            self._flat_covered[directory.ino] = (cursor, fresh_gen, started, trims, changes)
        if len(self._cut_listings) >= MISSES_KEPT:
            self._cut_listings.clear()
        self._cut_listings[directory.ino] = None
        await self._list_own_children(directory, gen, fresh_gen, started, cursor, cost, whole=whole)

    async def _list_own_children(
        self,
        directory: Node,
        gen: int,
        fresh_gen: int,
        started: float,
        cursor: str | None,
        cost: int,
        *,
        whole: bool,
    ) -> None:
        """The delimited part of a listing of *directory*: its own children
        after *cursor* (where its flat pages stopped; None: all), one level;
        then it is fresh as of *started* (unless found wide first), for the
        names seen by listing *fresh_gen* (see _mark_fresh); its pages count
        as listing *gen*.  *cost*: the requests its flat pages made."""
        path = directory.path
        prefix = layout.dir_prefix(self.key_prefix, path)
        # A delimited page's keys hold no "/" past the prefix: _ingest
        # passes no directory on the way to them.
        touched: dict[int, Node] = {}
        # The rest of D's own children, one level only.  From the child the
        # cursor lies in, not from the cursor: S3-compatible stores disagree
        # on whether a common prefix that sorts before StartAfter is shown
        # for its keys after it (moto does not), and a cursor may be a
        # range's bound before any key of that child was read.
        start_after = cursor
        if cursor is not None and "/" in cursor[len(prefix) :]:
            start_after = prefix + cursor[len(prefix) :].split("/", 1)[0]
        token = None
        pages = 0
        early = self._take_early_page(prefix) if cursor is None else None
        while True:
            if early is not None:
                started = min(started, early[0])
                page, early = early[1], None
            else:
                page = await self._store.list_page(
                    prefix, delimiter="/", start_after=start_after, token=token
                )
            cost += 1
            pages += 1
            for info in page.objects:
                self._ingest(directory, prefix, info, gen, touched)
            for child_prefix in page.prefixes:
                self._ingest_prefix(directory, prefix, child_prefix, gen)
            token = page.next_token
            if token is None:
                break
            if pages >= WIDE_PAGES and not whole:
                directory.wide = True
                directory.list_cost = cost
                log.debug("%r is wide: more than %d pages of its own children", path, pages)
                return
        directory.wide = pages > WIDE_PAGES
        self._mark_fresh(directory, fresh_gen, started)
        directory.list_cost = cost

    def _straddled(self, directory: Node) -> tuple[str, int, float] | None:
        """Whether *directory* straddles the cut of its parent's flat listing,
        which read every key of it up to a cursor: that cursor, that
        listing's generation and start; None if not, or if that listing is
        stale, or a trim may have dropped some of what it read since, or the
        tree changed since it began (a node at that path may not be the one
        it read)."""
        parent = directory.parent
        covered = self._flat_covered.get(parent.ino) if parent is not None else None
        if covered is None:
            return None
        cursor, gen, started, trims, changes = covered
        prefix = layout.dir_prefix(self.key_prefix, directory.path)
        if (
            not cursor.startswith(prefix)
            or (trims, changes) != (self.trims, self._changes)
            or self._now() - started >= self.ttl
        ):
            return None
        return cursor, gen, started

    def _directories_on_the_way(self, directory: Node, key: str) -> list[Node]:
        """The cached directories below *directory* that hold *key*."""
        found: list[Node] = []
        node = directory
        relative = key[len(layout.dir_prefix(self.key_prefix, directory.path)) :]
        for name in relative.split("/")[:-1]:
            child = node.children.get(name) if node.children is not None else None
            if child is None or child.children is None:
                break
            found.append(child)
            node = child
        return found

    async def _continue_flat(self, parent: Node, directory: Node) -> bool:
        """List *directory* as part of its parent's flat listing, which was cut
        before it: up to FLAT_LISTING_PAGES pages of the parent's subtree from
        *directory* on, filling its following siblings too (a walk visits
        them next), so a namespace of thousands of repositories costs about a
        page per 1,000 keys, not a listing per repository.  Whether
        *directory* is now listed whole."""
        cursor = self._flat_cursors.get(parent.ino)
        start = layout.dir_prefix(self.key_prefix, directory.path)
        if cursor is None or start <= cursor:
            return False  # it straddles the cut: listed on its own
        last, ended = await self._flat_onward(parent, directory, layout.FLAT_LISTING_PAGES)
        if ended:
            self._flat_cursors.pop(parent.ino, None)
        else:
            self._flat_cursors[parent.ino] = max(cursor, last)
        return self.is_fresh(directory)

    def _expired_in_a_run(self, directory: Node) -> bool:
        """Whether *directory* is a digest directory (one link or data file)
        whose listing expired: a walk slower than metadata_ttl through a
        flat-listed run of them (``_layers/sha256``, ``blobs/sha256/<hh>``)
        finds its siblings expired too, and listing each on its own would
        cost a request per name (see _page_onward)."""
        # metadata_ttl=0: nothing a page brings stays fresh; its own listing is cheaper.
        return self.ttl > 0 and directory.fresh_at is not None and layout.is_digest_name(directory.name)

    async def _page_onward(self, parent: Node, directory: Node) -> bool:
        """List *directory* with one page of its parent's subtree from it on:
        one request, as its own listing would be, that makes the next ~1,000
        siblings fresh too, so a walk past metadata_ttl through a run of
        digest directories costs a request per 1,000 of them.  Not while a
        page lately took more than half the TTL (a TTL that short would see
        the siblings expire before the walk reached them: each own listing
        is then cheaper).  Whether *directory* is now listed whole."""
        if self._now() < self._pages_onward_paused_until:
            return False
        started = self._now()
        await self._flat_onward(parent, directory, 1)
        if self._now() - started > self.ttl / 2:
            self._pages_onward_paused_until = self._now() + self.ttl
        return self.is_fresh(directory)

    async def _flat_onward(self, parent: Node, directory: Node, pages: int) -> tuple[str, bool]:
        """List *directory* and the siblings after it: up to *pages* pages of
        the parent's subtree from *directory* on, marking fresh every
        directory read whole.  How far it read, and whether the parent's
        subtree ended."""
        parent_prefix = layout.dir_prefix(self.key_prefix, parent.path)
        start = layout.dir_prefix(self.key_prefix, directory.path)
        gen = next(self._gens)
        started = self._now()
        touched: dict[int, Node] = {}
        # Keys after "<dir>" (no slash): the directory's own keys first.
        read, ended, _ = await self._flat_pages(
            parent, parent_prefix, pages, gen, touched, start_after=start[:-1]
        )
        last = read or start
        for node in touched.values():
            node_prefix = layout.dir_prefix(self.key_prefix, node.path)
            if node_prefix >= start and (ended or (last > node_prefix and not last.startswith(node_prefix))):
                self._mark_fresh(node, gen, started)
        return last, ended

    async def _flat_pages(
        self,
        directory: Node,
        prefix: str,
        pages: int,
        gen: int,
        touched: dict[int, Node],
        start_after: str | None = None,
    ) -> tuple[str | None, bool, int]:
        """About *pages* pages' worth of keys (1,000 each) of the
        delimiter-less listing of *prefix* (after *start_after*), ingested
        below *directory*: how far every key was read (None: none), whether
        the subtree ended, and the requests made.

        The first page is read alone.  When more follow and its keys vary in
        a digest run, the rest is read as up to SPLIT_RANGES key ranges at
        once (:func:`s3regfs.layout.split_listing`), so a subtree of a few
        thousand link files costs two round trips, not one per page.  A range
        whose end is open (what follows the run) may split again the same
        way.  The ranges are contiguous: the keys read without a gap from the
        start are the listing's cursor; keys a range read past a gap are
        ingested too (a later listing reads them again)."""
        # Not two closures calling each other: they would make a reference
        # cycle holding *touched* (every node this listing met), so that trimmed
        # nodes would wait for a full garbage collection to be freed.
        reading = _FlatReading(self, directory, prefix, gen, touched, pages * 1000)
        reached, ended = await reading.read(layout.KeyRange(prefix, start_after or "", None, 0))
        return (reached or None), ended, reading.cost

    def _warn_once(
        self, key: str, problem: str, message: str = "skipping key %r: %s cannot be a file name"
    ) -> None:
        """Log *message* about *key* once per mount (listings repeat every TTL)."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, key, problem)

    def _child_dir(self, parent: Node, name: str, gen: int) -> Node | None:
        assert parent.children is not None
        child = parent.children.get(name)
        if child is None or not child.is_dir:
            if child is not None:
                self._warn_once(self.key(child), "the directory", _HIDDEN_FILE)
                self._detach(child)
            child = self._new_node(name, parent, True)
            child.mtime_ns = parent.mtime_ns or time.time_ns()
            parent.children[name] = child
        child.seen_gen = max(child.seen_gen, gen)
        child.doomed = False
        child.used = self._listed_tick(child)
        return child

    def _ingest(
        self,
        directory: Node,
        prefix: str,
        info: ObjectInfo,
        gen: int,
        touched: dict[int, Node],
        chain: _Chain | None = None,
    ) -> None:
        """Make *info*'s key known below *directory* (whose key prefix is
        *prefix*) as seen by listing *gen*, with the directories on the way
        (added to *touched*).  *chain*: the directories of the key before it
        in the same page, which the caller keeps unchanged between calls."""
        relative = info.key[len(prefix) :]
        split = layout.split_key(relative)
        if isinstance(split, str):
            self._warn_once(info.key, split)
            parts, marker = layout.leading_directories(relative), True
        else:
            parts, marker = split
            if marker and info.size:
                # Some tools store data in "dir/" objects; it has no name here.
                self._warn_once(
                    info.key,
                    f"{info.size} bytes",
                    "directory marker %r holds %s: shown as a directory, its content is not",
                )
        node = directory
        dirs = parts if marker else parts[:-1]
        shared = 0
        if chain is not None:
            # A flat page is sorted: most keys share directories with the
            # one before (blobs/sha256/ab/, repo/_manifests/tags/), which
            # that one's ingest saw for the same listing already.
            names, nodes = chain.names, chain.nodes
            limit = min(len(names), len(dirs))
            while shared < limit and names[shared] == dirs[shared]:
                shared += 1
            if shared:
                node = nodes[shared - 1]
            del names[shared:], nodes[shared:]
        for name in dirs[shared:]:
            child = self._child_dir(node, name, gen)
            assert child is not None
            node = child
            touched[node.ino] = node
            if chain is not None:
                chain.names.append(name)
                chain.nodes.append(node)
        if marker:
            return
        assert node.children is not None
        name = parts[-1]
        leaf = node.children.get(name)
        if leaf is not None and leaf.is_dir:
            self._warn_once(info.key, "the directory", _HIDDEN_FILE)
            leaf.seen_gen = max(leaf.seen_gen, gen)
            return
        if leaf is None:
            leaf = self._new_node(name, node, False)
            node.children[name] = leaf
        self._set_file(leaf, info)
        leaf.seen_gen = max(leaf.seen_gen, gen)
        leaf.doomed = False
        leaf.used = self._listed_tick(leaf)

    def _ingest_prefix(self, directory: Node, prefix: str, child_prefix: str, gen: int) -> None:
        name = child_prefix[len(prefix) :].rstrip("/")
        if "/" in name:
            return
        problem = layout.name_problem(name)
        if problem:
            self._warn_once(child_prefix, problem, "skipping the keys under %r: %s cannot be a file name")
            return
        self._child_dir(directory, name, gen)

    def _set_file(self, node: Node, info: ObjectInfo) -> None:
        if node.writing:
            return  # the writer knows better than any listing
        node.size = info.size
        node.etag = info.etag
        if not node.mtime_fixed:
            node.mtime_ns = info.mtime_ns
        if info.storage_class:
            node.storage_class = info.storage_class
        node.fresh_at = self._now()

    def _mark_fresh(self, directory: Node, gen: int, when: float) -> None:
        """All children of *directory* were seen in listing *gen*: drop the rest."""
        assert directory.children is not None
        for name, child in list(directory.children.items()):
            # "<": a newer listing (of an ancestor, at the same time) that saw
            # the child wins over this one.
            if child.seen_gen < gen and not _pinned(child):
                self._remove_child(directory, name, child)
        # New names (or ones gone) since the last whole listing: a change.
        # Not the names a trim dropped and this listing brought back.
        names_hash = hash(frozenset(directory.children))
        if directory.names_hash is not None and names_hash != directory.names_hash:
            self.changed(directory)
        directory.names_hash = names_hash
        directory.fresh_at = when
        directory.made_here = False  # its names now come from S3
        self._stale_checks.pop(directory.ino, None)

    def _listed_tick(self, node: Node) -> int:
        """Node.used for *node*, which a listing just made or saw: now, and
        unvisited if nothing used it since it came (see UNVISITED).  A trim
        takes the used directories first, coldest first, and only then the
        unvisited: what a walk has yet to reach (the rest of the directory
        it is in, what was listed ahead of it) was listed before what the
        walk used since, but is the last thing to drop."""
        return self._tick | (node.used & UNVISITED)

    def _new_node(self, name: str, parent: Node, is_dir: bool) -> Node:
        node = Node(next(self._inos), name, parent, is_dir)
        node.used = self._tick | UNVISITED
        self._inodes[node.ino] = node
        self._created += 1
        return node

    # -- the memory bound -------------------------------------------------------------

    def _touch(self, directory: Node) -> None:
        """*directory* is in use now: it and its ancestors are the warmest."""
        self._tick += 1
        each: Node | None = directory
        while each is not None:
            each.used = self._tick
            each = each.parent

    def _maybe_trim(self) -> None:
        # Also while the kernel holds more than the bound: then once per
        # eighth of the bound of new nodes, not on every listing.
        if (
            self.max_nodes
            and len(self._inodes) > self.max_nodes
            and self._created - self._created_at_trim >= self.max_nodes // 8
        ):
            self.trim()

    def trim(self) -> None:
        """Bring the cache down to about TRIM_TO of its bound, coldest
        subtrees first (see the module docstring).  Synchronous: no listing's
        page is half ingested while it runs.  The kernel is asked to forget
        the entries it holds there, in one batch, except on the way to a
        process's working directory (forgetting would unhash it: getcwd
        fails there).

        It works from the directories sorted by coldness, not by a walk of
        the tree: its cost follows what it drops, not the cache's size (a
        walk of a million keys trims some 70 times)."""
        self._created_at_trim = self._created
        self.trims += 1
        before = len(self._inodes)
        excess = before - int(self.max_nodes * TRIM_TO)
        listed = [node for node in self._inodes.values() if node.children and node.parent is not None]
        cold, wide, cutoff, short = self._coldest(listed, excess, unvisited=False)
        if short:
            # What was used does not add up to it: by age alone, then.
            cold, wide, cutoff, _ = self._coldest(listed, excess, unvisited=True)
        busy: set[str] = set()
        for path in self._busy() if self._busy is not None else ():
            parts = path.split("/")
            busy.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        forget: list[tuple[Node, str]] = []
        for directory in cold:
            parent = directory.parent
            # The root of a cold subtree: a warm parent (a cold one's own
            # root, further up, takes this one with it).
            if parent is None or _tick(parent) <= cutoff or not self._trimmable(directory, cutoff):
                continue
            # The subtree's root stays, unlisted: its directory's listing stays
            # whole (a walk of the siblings lists nothing again) and the
            # root is listed again when visited.  Dropped with its parent's
            # subtree, when that turns cold.
            if not self._trim_below(directory) and directory.path not in busy:
                forget.append((parent, directory.name))  # something below is held
        for directory in wide:
            # A stream reads it without its lock: trimmed while being read.
            if not directory.held and self._trimmable(directory, cutoff, listing=True):
                forget += [(directory, held) for held in self._trim_wide(directory)]
        if forget and self._kernel is not None:
            self._kernel.forget_entries_soon(forget)
        log.debug(
            "trimmed the cache from %d to %d nodes (bound %d); asked the kernel to forget %d entries",
            before,
            len(self._inodes),
            self.max_nodes,
            len(forget),
        )

    def _coldest(
        self, listed: list[Node], excess: int, *, unvisited: bool
    ) -> tuple[list[Node], list[Node], int, bool]:
        """Of *listed* (the directories below the root that hold children):
        the coldest whose children add up to *excess*, coldest first; the
        warm wide ones; the tick (Node.used without UNVISITED) at or below
        which a directory is cold; and whether they fall short of *excess*.
        Only directories used since listed, unless *unvisited* (see
        _listed_tick).  What the latest use touched (the listing just made,
        the directory being looked into) is never cold."""
        tick = self._tick
        if unvisited:
            directories = [node for node in listed if (node.used & _TICKS) < tick]
            directories.sort(key=_tick)
        else:
            directories = [node for node in listed if node.used < tick]
            directories.sort(key=_USED)
        cutoff = 0
        cold = 0
        for directory in directories:
            if excess <= 0:
                break
            assert directory.children is not None
            excess -= len(directory.children)
            cutoff = _tick(directory)
            cold += 1
        # Ties with the last one taken are cold too (as a walk would find them).
        while cold < len(directories) and _tick(directories[cold]) <= cutoff:
            cold += 1
        wide = [node for node in listed if node.wide and _tick(node) > cutoff]
        return directories[:cold], wide, cutoff, excess > 0

    def _trimmable(self, directory: Node, cutoff: int, *, listing: bool = False) -> bool:
        """Whether a trim may work in *directory*: it is in the tree (linked
        from the root), neither it (unless *listing*) nor a directory above it
        is being listed, none is a view's, and every directory above it is
        warm (above *cutoff*)."""
        if (_being_listed(directory) and not listing) or directory.ino in self._virtual:
            return False
        node = directory
        parent = node.parent
        while parent is not None:
            if (
                parent.children is None
                or parent.children.get(node.name) is not node
                or _being_listed(parent)
                or _tick(parent) <= cutoff
                or (parent.parent is not None and parent.ino in self._virtual)
            ):
                return False
            node, parent = parent, parent.parent
        return node is self.root

    def _trim_wide(self, directory: Node) -> list[str]:
        """Drop the children of a wide directory in use (a stream reads it)
        that nothing holds (files, directories with nothing listed below);
        the names of those the kernel holds (doomed: dropped when it forgets)."""
        assert directory.children is not None
        held: list[str] = []
        for name, child in list(directory.children.items()):
            if child.children or _tick(child) >= self._tick:
                continue  # below it: with the cold subtrees; or just handed out
            if not self._droppable(child):
                if child.nlookup and not child.doomed:
                    held.append(name)
                child.doomed = True
                continue
            self._drop(directory, name, child)
        return held

    def _trim_below(self, directory: Node) -> bool:
        """Drop what can go below *directory*; whether all of it went."""
        assert directory.children is not None
        if directory.held or directory.made_here or directory.local:
            return False
        whole = True
        for name, child in list(directory.children.items()):
            if child.children:
                if _being_listed(child):
                    whole = False
                    continue
                if not self._trim_below(child):
                    whole = False
            if not self._droppable(child):
                child.doomed = True
                whole = False
                continue
            self._drop(directory, name, child)
        return whole

    def _drop(self, directory: Node, name: str, child: Node) -> None:
        """Drop *child*, *directory*'s entry *name*, from the tree and the
        inode table: *directory* is no longer listed whole (listed again when
        visited)."""
        assert directory.children is not None
        del directory.children[name]
        self._inodes.pop(child.ino, None)
        self.evicted += 1
        directory.fresh_at = None

    def _droppable(self, node: Node) -> bool:
        """Whether nothing but the cache knows *node*: it can go, and come
        back from a listing."""
        return not (
            node.nlookup
            or node.children
            or node.held
            or node.local
            or node.writing
            or node.wide
            or node.mode is not None
            or node.uid is not None
            or node.gid is not None
            or node.mtime_fixed
            or node.ino in self._virtual
        )

    def _remove_child(self, directory: Node, name: str, child: Node) -> None:
        """*child*, *directory*'s entry *name*, is gone from S3."""
        assert directory.children is not None
        del directory.children[name]
        self._detach(child)
        self.changed(directory)

    def _detach(self, node: Node) -> None:
        self._changes += 1
        for each in _walk(node):
            each.attached = False
            if each.nlookup == 0:
                self._inodes.pop(each.ino, None)


class _Chain:
    """The directories on the way to the key _ingest took last (names and
    nodes, outermost first): where the next key of the same page starts."""

    __slots__ = ("names", "nodes")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.nodes: list[Node] = []


class _FlatReading:
    """One call of :meth:`Namespace._flat_pages`: its key budget, its request
    count, and the ranges it reads."""

    def __init__(
        self,
        namespace: Namespace,
        directory: Node,
        prefix: str,
        gen: int,
        touched: dict[int, Node],
        budget: int,
    ) -> None:
        self._namespace = namespace
        self._directory = directory
        self._prefix = prefix
        self._gen = gen
        self._touched = touched
        #: Keys still to read.
        self.budget = budget
        #: Requests made.
        self.cost = 0

    async def read(self, span: layout.KeyRange) -> tuple[str, bool]:
        """Read *span*: how far it was read without a gap, and whether whole."""
        namespace = self._namespace
        reached = span.after
        token: str | None = None
        max_keys = 1000 if span.through is None else min(1000, 2 * span.expected + 100)
        while self.budget > 0:
            page = await namespace._store.list_page(
                span.prefix, start_after=span.after or None, token=token, max_keys=max_keys
            )
            self.cost += 1
            self.budget -= len(page.objects)
            past = False
            chain = _Chain()
            for info in page.objects:
                if not span.holds(info.key):
                    past = True  # the next range's
                    break
                namespace._ingest(self._directory, self._prefix, info, self._gen, self._touched, chain)
                reached = info.key
            token = page.next_token
            if past or token is None:
                return span.through or reached, True
            max_keys = 1000
            if span.through is None and self.budget > 0:
                ranges = layout.split_listing(span.prefix, [info.key for info in page.objects], self.budget)
                if ranges:
                    return await self.read_all(ranges)
        return reached, False

    async def read_all(self, ranges: list[layout.KeyRange]) -> tuple[str, bool]:
        """Read *ranges* at once: how far they were read without a gap, and
        whether the subtree ended."""
        self._namespace.list_ranges += len(ranges)
        results: list[tuple[str, bool] | None] = [None] * len(ranges)

        async def one(index: int) -> None:
            results[index] = await self.read(ranges[index])

        # A range's error fails the listing, as a page's did.
        with collapse_exception_groups():
            async with trio.open_nursery() as nursery:
                for index in range(len(ranges)):
                    nursery.start_soon(one, index)
        reached = ranges[0].after
        for result in results:
            assert result is not None
            reached, whole = result
            if not whole:
                return reached, False
        # A last range with no end read to the end; else the budget
        # stopped the split at its last bound.
        return reached, ranges[-1].through is None


class ChildStream:
    """A directory's children as one delimited listing returns them, a page at
    a time in key order, ingested into the namespace as they come (so lookups
    find them); the names made here and not yet in S3 come last.  It never
    marks the directory fresh: its listing is never held whole.  Not for
    concurrent use."""

    def __init__(self, namespace: Namespace, directory: Node) -> None:
        self._namespace = namespace
        self._directory = directory
        self._prefix = layout.dir_prefix(namespace.key_prefix, directory.path)
        self._token: str | None = None
        self._state = "s3"  # then "local", then "done"
        #: The names of the last page, for the one duplicate S3 order can give.
        self._last_names: list[str] = []

    async def next_page(self) -> list[Node] | None:
        """The next page of children; None once all were given."""
        namespace = self._namespace
        directory = self._directory
        assert directory.children is not None
        if self._state == "local":
            self._state = "done"
            return [child for child in directory.children.values() if child.local]
        if self._state == "done":
            return None
        namespace._maybe_trim()  # before this page: what was handed out is the kernel's
        gen = next(namespace._gens)  # each page is as new as a listing begun when it was asked
        page = await namespace._store.list_page(self._prefix, delimiter="/", token=self._token)
        self._token = page.next_token
        if self._token is None:
            self._state = "local"
        namespace._touch(directory)
        items: list[tuple[str, str, ObjectInfo | None]] = [
            (info.key, info.key[len(self._prefix) :], info) for info in page.objects
        ]
        items += [(prefix, prefix[len(self._prefix) :].rstrip("/"), None) for prefix in page.prefixes]
        items.sort()
        nodes: list[Node] = []
        touched: dict[int, Node] = {}
        given = set(self._last_names)
        # Directories first: an object "a" beside "a/b" is hidden by the
        # directory (as listings do), whichever comes first in the page.
        for key, _name, info in items:
            if info is None:
                namespace._ingest_prefix(directory, self._prefix, key, gen)
        for _key, name, info in items:
            if info is not None:
                if not name or "/" in name:
                    continue  # the directory's own marker object
                namespace._ingest(directory, self._prefix, info, gen, touched)
            child = directory.children.get(name)
            # One name given once (the object and the directory "a" above),
            # also across a page boundary between them.
            if child is not None and not child.local and name not in given:
                given.add(name)
                nodes.append(child)
        self._last_names = [node.name for node in nodes]
        return nodes


def _tick(node: Node) -> int:
    """*node*'s Node.used without UNVISITED (a sort key of trims)."""
    return node.used & _TICKS


def _being_listed(node: Node) -> bool:
    """Whether a listing is filling *node*'s subtree now (it holds the lock)."""
    return node.lock is not None and node.lock.locked()


def _pinned(node: Node) -> bool:
    """Whether a listing must keep *node* although S3 does not show it."""
    return any(each.local or each.writing for each in _walk(node))


def _walk(node: Node) -> Iterator[Node]:
    yield node
    if node.children:
        for child in node.children.values():
            yield from _walk(child)
