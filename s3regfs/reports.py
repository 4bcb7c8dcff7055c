# SPDX-License-Identifier: MIT
"""The registry operator's reports: usage per repository, the garbage
collector's dry run, dangling and bad links, stale uploads.

A :class:`Snapshot` is built in two stages, each from S3 directly (not
through the namespace: a report reads every key once and keeps none of them
as inodes):

* the **scan** lists ``blobs/`` and ``repositories/`` flat (1,000 keys a
  page, the two listings at once) into an SQLite database in a temporary file
  (bounded memory whatever the number of keys: no Python object per key).
  Link files are judged without reading them: a link the registry wrote
  holds exactly ``alg:hex`` and was written by one PutObject, whose ETag is
  the MD5 of those bytes, so a listed ETag equal to the MD5 of the digest the
  path names (or, for a tag's ``current/link``, of one of the digests in its
  ``index/``) proves the content.  Only links whose ETag proves nothing
  (empty, multipart, SSE-KMS/SSE-C) are read, one GET each; an empty one or
  one over 256 bytes is judged by its size.  Each upload's ``startedat`` is
  read (one GET: the registry purges by its content), and the bucket's
  multipart uploads under the root are listed.
* the **mark** reads every manifest revision's body once
  (:class:`~s3regfs.manifest_cache.ManifestCache`: memory, then disk, then
  one GET) and records what it references, then computes the garbage
  collector's mark set as CNCF Distribution 2.8's ``garbage-collect`` does
  (docs/reports.md has the rules and where other versions differ).

Report texts are rendered from the database by SQL queries.  The registry
may be writing meanwhile: every report says it is a snapshot.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import logging
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from s3regfs import layout
from s3regfs.errors import NotFound, StorageError, collapse_exception_groups
from s3regfs.layout import digest_problem
from s3regfs.manifest_cache import DigestMismatch, ManifestCache
from s3regfs.storage.base import ListPage, ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

#: A link file longer than this is bad without reading it (the longest valid
#: content, ``sha512:`` and 128 hex digits, is 135 bytes).
LINK_MAX = 256
#: Manifests over this size are not read (the registry's own limit since 3.0).
MANIFEST_MAX = layout.MANIFEST_MAX
#: Manifest GETs (and link or startedat GETs) in flight at once.
FETCHES_IN_FLIGHT = 16
#: Rows written to the database per transaction.
BATCH = 5000
#: Rows of work (links or manifests to read) taken from the database at a time.
CHUNK_ROWS = 2000
#: Seconds between two progress lines of a long computation.
PROGRESS_EVERY = 10.0

_SCHEMA = """
CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER) WITHOUT ROWID;
-- has_layers: a key under its _layers/ (the registry's GC takes only such a directory for a repository).
CREATE TABLE repos (id INTEGER PRIMARY KEY, name TEXT UNIQUE, has_layers INTEGER);
-- kind: layer, revision, current (a tag's current/link), index (a tag's index entry).
-- name: the digest the path names ('' for current); tag: the tag ('' for others);
-- target: the digest the link holds (NULL: bad, see bad_links).
-- pending: the content is not proven by the ETag; read when a report needs targets.
CREATE TABLE links (repo INTEGER, kind TEXT, name TEXT, tag TEXT, target TEXT, pending INTEGER);
CREATE TABLE unproven (repo INTEGER, kind TEXT, name TEXT, tag TEXT, key TEXT, size INTEGER, path TEXT);
CREATE TABLE bad_links (path TEXT, problem TEXT, size INTEGER);
CREATE TABLE uploads (
    repo INTEGER, uuid TEXT, startedat_key TEXT, startedat_size INTEGER, startedat_ns INTEGER,
    startedat_text TEXT, data_size INTEGER, keys INTEGER, newest_ns INTEGER
);
CREATE TABLE multipart (key TEXT, upload_id TEXT, initiated_ns INTEGER, parts INTEGER, size INTEGER);
-- The mark stage: what each manifest references, and manifests that could not be read.
CREATE TABLE refs (manifest TEXT, child TEXT);
-- problem: why the registry's GC would stop on it ('' if none); mismatch: its bytes do not
-- hash to its digest (used all the same, as the registry's GC would).
CREATE TABLE manifests (
    digest TEXT PRIMARY KEY, media_type TEXT, problem TEXT, mismatch INTEGER
) WITHOUT ROWID;
"""


def _unsafe(name: str) -> bool:
    """A key component no registry writes and no report may show: "", ".",
    "..", control characters, a backslash."""
    return (
        layout.name_problem(name) is not None
        or "\\" in name
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)
    )


def link_etag(text: str) -> str:
    """The ETag S3 gives an object of exactly *text* written by one PutObject."""
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def references(document: Any) -> tuple[str, list[str]] | str:
    """(media type, the digests a manifest references, as Distribution 2.8's
    ``Manifest.References()``), or why the registry would fail to read it."""
    if not isinstance(document, dict):
        return "not a JSON object"
    version = document.get("schemaVersion")
    media_type = document.get("mediaType") or ""
    if version == 1:
        layers = document.get("fsLayers")
        if not isinstance(layers, list):
            return "schema 1 manifest without fsLayers"
        return "schema1", [str(entry.get("blobSum")) for entry in layers if isinstance(entry, dict)]
    if version != 2:
        return f"unrecognized manifest schema version {version!r}"
    if media_type in (
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ) or (media_type == "" and isinstance(document.get("manifests"), list)):
        entries = document.get("manifests") or []
        return media_type or "application/vnd.oci.image.index.v1+json", _digests(entries)
    if media_type in (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "",
    ):
        config = document.get("config")
        entries = [config] if isinstance(config, dict) else []
        entries += [entry for entry in document.get("layers") or [] if isinstance(entry, dict)]
        return media_type or "application/vnd.oci.image.manifest.v1+json", _digests(entries)
    return f"unrecognized manifest content type {media_type!r}"


def _digests(entries: Iterable[Any]) -> list[str]:
    return [
        entry["digest"]
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str)
    ]


@dataclass
class Progress:
    """What a computation has done so far (shown in .s3regfs/stats)."""

    stage: str = "idle"
    keys_listed: int = 0
    lists: int = 0
    repositories: int = 0
    manifests_done: int = 0
    manifests_total: int = 0
    started: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "keys_listed": self.keys_listed,
            "list_requests": self.lists,
            "repositories": self.repositories,
            "manifests_done": self.manifests_done,
            "manifests_total": self.manifests_total,
        }


@dataclass
class _TagState:
    """The keys of one tag seen so far in the sorted listing."""

    repo: int
    tag: str
    current: ObjectInfo | None = None
    current_path: str = ""
    #: The index digest whose MD5 is current/link's ETag (it holds that digest).
    target: str | None = None


class Snapshot:
    """One scan's database (and, once marked, the mark's); see the module docstring."""

    def __init__(self, directory: str | None) -> None:
        """Create the database (blocking: call on a worker thread)."""
        handle, self.path = tempfile.mkstemp(prefix=_scratch_prefix(), suffix=".sqlite", dir=directory)
        os.close(handle)
        try:
            # Used from one worker thread at a time (the Reports lock serialises).
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            for pragma in (
                "journal_mode=OFF",
                "synchronous=OFF",
                "cache_size=-16384",  # 16 MiB of pages; the rest stays on disk
                "temp_store=FILE",
            ):
                self.db.execute(f"PRAGMA {pragma}")
            self.db.executescript(_SCHEMA)
        except BaseException:
            with contextlib.suppress(Exception):
                self.db.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise
        self.scanned_at = 0.0  # wall clock, seconds
        #: When its latest stage ended (monotonic): fresh for the TTL from then,
        #: so a mark of many minutes is not stale the moment it ends.
        self.computed_mono = 0.0
        self.links_read = False
        self.links_read_at = 0.0
        self.uploads_read = False
        self.uploads_read_at = 0.0
        #: Keys left out of every report (names no registry writes), and the
        #: blob paths among them (the registry's collector stops on those).
        self.skipped = 0
        self.bad_blob_paths: list[str] = []
        self.marked = False
        self.marked_at = 0.0

    def close(self) -> None:
        """Close and remove the database (blocking: small, but file I/O)."""
        self.db.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, args).fetchall()

    def scalar(self, sql: str, *args: Any) -> Any:
        row = self.db.execute(sql, args).fetchone()
        return row[0] if row else None


class _Scanner:
    """Fills a Snapshot from the listings (runs the SQLite work on a worker thread)."""

    def __init__(self, snapshot: Snapshot, store: ObjectStore, v2_prefix: str, progress: Progress) -> None:
        self.snapshot = snapshot
        self.store = store
        self.v2 = v2_prefix  # "<root>docker/registry/v2/"
        self.progress = progress
        self.repo_ids: dict[str, int] = {}
        self.with_layers: set[int] = set()
        #: Keys left out: names no registry writes.
        self.skipped = 0
        self.bad_blob_paths: list[str] = []
        self.db_lock = trio.Lock()
        self.tag: _TagState | None = None
        self.links: list[tuple[int, str, str, str, str | None, int]] = []
        self.bad: list[tuple[str, str, int]] = []
        #: Links to read when targets are needed: (repo, kind, name, tag, key, size, path).
        self.unproven: list[tuple[int, str, str, str, str, int, str]] = []
        #: The upload whose keys are being listed: a row of the uploads table.
        self.upload: list[Any] | None = None
        self.upload_rows: list[tuple[Any, ...]] = []
        self.blob_rows: list[tuple[str, int, int]] = []

    async def _flush(self, final: bool = False) -> None:
        if not final and len(self.links) + len(self.blob_rows) + len(self.unproven) < BATCH:
            return
        links, self.links = self.links, []
        blobs, self.blob_rows = self.blob_rows, []
        bad, self.bad = self.bad, []
        unproven, self.unproven = self.unproven, []
        uploads, self.upload_rows = self.upload_rows, []

        def write() -> None:
            db = self.snapshot.db
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", blobs)
            db.executemany("INSERT INTO links VALUES (?, ?, ?, ?, ?, ?)", links)
            db.executemany("INSERT INTO bad_links VALUES (?, ?, ?)", bad)
            db.executemany("INSERT INTO unproven VALUES (?, ?, ?, ?, ?, ?, ?)", unproven)
            db.executemany("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", uploads)
            db.execute("COMMIT")

        async with self.db_lock:
            await trio.to_thread.run_sync(write)

    async def _each_page(self, prefix: str, handle: Callable[[ListPage], None]) -> None:
        token: str | None = None
        while True:
            page = await self.store.list_page(prefix, token=token)
            self.progress.lists += 1
            self.progress.keys_listed += len(page.objects)
            handle(page)
            await self._flush()
            if page.next_token is None:
                return
            token = page.next_token

    # -- blobs -----------------------------------------------------------------------

    def _blob_page(self, page: ListPage) -> None:
        start = len(self.v2) + len("blobs/")
        for item in page.objects:
            parts = item.key[start:].split("/")
            # <alg>/<hh>/<hex>/data, the fan-out the first two hex digits (the registry's rule)
            if len(parts) == 4 and parts[3] == "data" and parts[1] == parts[2][:2] and parts[2]:
                digest = f"{parts[0]}:{parts[2]}"
                if digest_problem(digest) is None:
                    self.blob_rows.append((digest, item.size, item.mtime_ns))
                else:
                    # The registry's collector stops on such a path; a report leaves it out.
                    self.skipped += 1
                    self.bad_blob_paths.append(f"{layout.REGISTRY_ROOT}/blobs/{item.key[start:]}")

    # -- repositories --------------------------------------------------------------

    def _repo_id(self, name: str) -> int:
        found = self.repo_ids.get(name)
        if found is None:
            found = self.repo_ids[name] = len(self.repo_ids) + 1
            self.progress.repositories = len(self.repo_ids)
        return found

    def _repository_page(self, page: ListPage) -> None:
        start = len(self.v2) + len("repositories/")
        for item in page.objects:
            relative = item.key[start:]
            parts = relative.split("/")
            cut = next((i for i, part in enumerate(parts) if part.startswith("_")), None)
            if not cut:
                continue  # no repository name, or a key outside its reserved directories
            if any(_unsafe(part) for part in parts):
                # A name no registry writes (.., control characters, a
                # backslash): never put into a report, where a recipe might
                # hand it to rm.
                self.skipped += 1
                continue
            repo = self._repo_id("/".join(parts[:cut]))
            rest = parts[cut:]
            if rest[0] == "_layers":
                self.with_layers.add(repo)
            path = f"{layout.REGISTRY_ROOT}/repositories/{relative}"
            if rest[0] == "_uploads":
                self._upload_key(repo, rest, item)
                continue
            if rest[:2] == ["_manifests", "tags"] and len(rest) >= 4:
                self._tag_key(repo, rest[2], rest[3:], item, path)
                continue
            self._end_tag()
            if len(rest) == 4 and rest[0] == "_layers" and rest[3] == "link":
                self._named_link(repo, "layer", f"{rest[1]}:{rest[2]}", item, path)
            elif len(rest) == 5 and rest[:2] == ["_manifests", "revisions"] and rest[4] == "link":
                self._named_link(repo, "revision", f"{rest[2]}:{rest[3]}", item, path)

    def _named_link(self, repo: int, kind: str, name: str, item: ObjectInfo, path: str) -> None:
        if digest_problem(name) is not None:
            self.skipped += 1  # a directory not named by a digest: no link the registry reads
            return
        self._digest_link(repo, kind, name, "", item, path)

    def _tag_key(self, repo: int, tag: str, rest: list[str], item: ObjectInfo, path: str) -> None:
        state = self.tag
        if state is None or state.repo != repo or state.tag != tag:
            self._end_tag()
            state = self.tag = _TagState(repo, tag)
        if rest == ["current", "link"]:
            state.current = item
            state.current_path = path
        elif len(rest) == 4 and rest[0] == "index" and rest[3] == "link":
            digest = f"{rest[1]}:{rest[2]}"
            if digest_problem(digest) is not None:
                self.skipped += 1
                return
            # current/ sorts before index/: its ETag is known by now.
            if state.current is not None and state.target is None and state.current.etag == link_etag(digest):
                state.target = digest
            self._digest_link(repo, "index", digest, tag, item, path)

    def _end_tag(self) -> None:
        state, self.tag = self.tag, None
        if state is None or state.current is None:
            return
        if state.target is not None:
            self.links.append((state.repo, "current", "", state.tag, state.target, 0))
        else:
            self._unproven(state.repo, "current", "", state.tag, state.current, state.current_path)

    def _digest_link(self, repo: int, kind: str, name: str, tag: str, item: ObjectInfo, path: str) -> None:
        if item.etag == link_etag(name):
            self.links.append((repo, kind, name, tag, name, 0))
        else:
            self._unproven(repo, kind, name, tag, item, path)

    def _unproven(self, repo: int, kind: str, name: str, tag: str, item: ObjectInfo, path: str) -> None:
        if self._judged_by_size(path, item):
            self.links.append((repo, kind, name, tag, None, 0))
        else:
            self.links.append((repo, kind, name, tag, None, 1))
            self.unproven.append((repo, kind, name, tag, item.key, item.size, path))

    def _judged_by_size(self, path: str, item: ObjectInfo) -> bool:
        if item.size == 0:
            self.bad.append((path, "empty", 0))
            return True
        if item.size > LINK_MAX:
            self.bad.append((path, "too long to be a digest", item.size))
            return True
        return False

    def _upload_key(self, repo: int, rest: list[str], item: ObjectInfo) -> None:
        if len(rest) < 3:
            return
        uuid = rest[1]
        entry = self.upload
        # An upload's keys are next to each other in the sorted listing: one
        # upload at a time is in memory, written out when the next begins.
        if entry is None or entry[0] != repo or entry[1] != uuid:
            self._end_upload()
            entry = self.upload = [repo, uuid, "", 0, 0, "", 0, 0, 0]
        entry[7] += 1
        entry[8] = max(entry[8], item.mtime_ns)
        if rest[2:] == ["startedat"]:
            entry[2], entry[3] = item.key, item.size
        elif rest[2:] == ["data"]:
            entry[6] = item.size

    def _end_upload(self) -> None:
        entry, self.upload = self.upload, None
        if entry is not None:
            self.upload_rows.append(tuple(entry))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._each_page, self.v2 + "blobs/", self._blob_page)
            nursery.start_soon(self._each_page, self.v2 + "repositories/", self._repository_page)
        self._end_tag()
        self._end_upload()
        await self._flush(final=True)
        repos = sorted(self.repo_ids.items(), key=lambda item: item[1])

        def finish() -> None:
            db = self.snapshot.db
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO repos VALUES (?, ?, ?)",
                [(ident, name, ident in self.with_layers) for name, ident in repos],
            )
            db.execute("COMMIT")
            db.execute("CREATE INDEX links_target ON links (target)")
            db.execute("CREATE INDEX links_repo ON links (repo, kind)")

        async with self.db_lock:
            await trio.to_thread.run_sync(finish)
        self.snapshot.skipped = self.skipped
        self.snapshot.bad_blob_paths = self.bad_blob_paths[:100]


# -- reading what listings cannot prove --------------------------------------------


async def _read_links(snapshot: Snapshot, store: ObjectStore) -> None:
    """Read the link files whose ETag proved nothing, and record what they hold."""
    resolved: list[tuple[str | None, int, str, str, str]] = []
    bad: list[tuple[str, str, int]] = []

    async def read(row: tuple[int, str, str, str, str, int, str]) -> None:
        repo, kind, name, tag, key, size, path = row
        try:
            text = (await store.get_range(key, 0, size)).decode("utf-8", "replace")
        except NotFound:
            return  # deleted since it was listed: the snapshot does without it
        problem = digest_problem(text)
        if problem is not None:
            bad.append((path, problem, size))
            resolved.append((None, repo, kind, name, tag))
            return
        if name and text != name:
            bad.append((path, f"holds {text}, not the digest its path names", size))
        resolved.append((text, repo, kind, name, tag))

    def write() -> None:
        db = snapshot.db
        db.execute("BEGIN")
        db.executemany(
            "UPDATE links SET target = ?, pending = 0"
            " WHERE repo = ? AND kind = ? AND name = ? AND tag = ? AND pending = 1",
            resolved,
        )
        db.executemany("INSERT INTO bad_links VALUES (?, ?, ?)", bad)
        db.execute("COMMIT")
        resolved.clear()
        bad.clear()

    await trio.to_thread.run_sync(
        snapshot.db.execute,
        "CREATE INDEX IF NOT EXISTS links_pending ON links (repo, kind, tag, name) WHERE pending = 1",
    )
    async for rows in _chunks(snapshot, "unproven", "repo, kind, name, tag, key, size, path"):
        await _each_limited(read, rows)
        await trio.to_thread.run_sync(write)


async def _read_uploads(snapshot: Snapshot, store: ObjectStore, multipart_prefix: str) -> None:
    """Read every upload's startedat (as the registry's purger does) and list
    the bucket's multipart uploads under the root."""
    found: list[tuple[int, str, int]] = []

    async def read(row: tuple[int, str, int]) -> None:
        rowid, key, size = row
        if not key:
            return  # no startedat: the registry never purges it
        try:
            raw = await store.get_range(key, 0, min(size, LINK_MAX)) if size else b""
        except NotFound:
            return
        # Read as the registry reads it: RFC 3339, nothing trimmed.
        text = raw.decode("utf-8", "replace")
        found.append((_rfc3339_ns(text), text, rowid))

    def write() -> None:
        db = snapshot.db
        db.execute("BEGIN")
        db.executemany("UPDATE uploads SET startedat_ns = ?, startedat_text = ? WHERE rowid = ?", found)
        db.execute("COMMIT")
        found.clear()

    async for rows in _chunks(snapshot, "uploads", "rowid, startedat_key, startedat_size"):
        await _each_limited(read, rows)
        await trio.to_thread.run_sync(write)
    try:
        multipart = await store.multipart_uploads(multipart_prefix)
    except StorageError as exc:
        # Some endpoints or policies refuse it: the rest of the reports stand.
        log.warning("cannot list the bucket's multipart uploads: %s", exc)
        multipart = []

    def write_multipart() -> None:
        db = snapshot.db
        db.execute("BEGIN")
        db.execute("DELETE FROM multipart")
        db.executemany(
            "INSERT INTO multipart VALUES (?, ?, ?, ?, ?)",
            [(m.key, m.upload_id, m.initiated_ns, m.parts, m.size) for m in multipart],
        )
        db.execute("COMMIT")

    await trio.to_thread.run_sync(write_multipart)


async def _each_limited(function: Callable[[Any], Any], items: list[Any]) -> None:
    """Run *function* on every item, FETCHES_IN_FLIGHT at once (never more
    tasks than that: a task is started only when a slot is free)."""
    slots = trio.Semaphore(FETCHES_IN_FLIGHT)

    async def one(item: Any) -> None:
        try:
            await function(item)
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for item in items:
            await slots.acquire()
            nursery.start_soon(one, item)


async def _chunks(snapshot: Snapshot, table: str, columns: str) -> AsyncIterator[list[Any]]:
    """The *columns* of every row of *table*, CHUNK_ROWS at a time, by rowid:
    never all in memory."""
    last = 0
    sql = f"SELECT rowid, {columns} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT {CHUNK_ROWS}"
    while True:
        rows = await trio.to_thread.run_sync(snapshot.query, sql, last)
        if not rows:
            return
        last = rows[-1][0]
        yield [row[1:] for row in rows]


_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})")


def _rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of a startedat file's content, read as Go's
    ``time.Parse(time.RFC3339, ...)`` reads it (nothing trimmed; a zone
    required); 0 if it does not parse (the registry never purges such an upload)."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return 0
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        offset = datetime.timedelta(0)
        if zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            offset = sign * datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        moment = datetime.datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=datetime.timezone(offset),
        )
    except ValueError:
        return 0
    nanos = int((fraction or "0")[:9].ljust(9, "0"))
    return int(moment.timestamp()) * 1_000_000_000 + nanos


def _scratch_prefix() -> str:
    """Scratch files carry the pid, so a later mount can remove a dead one's."""
    return f"s3regfs-reports-{os.getpid()}-"


def remove_dead_scratch(directory: str) -> None:
    """Remove the scratch files (databases, rendered texts) that dead s3regfs
    processes left in *directory* (a crash, kill -9)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not name.startswith("s3regfs-reports-"):
            continue
        pid = name[len("s3regfs-reports-") :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))


def _iso(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the mark ------------------------------------------------------------------------


async def _mark(snapshot: Snapshot, manifests: ManifestCache, v2_prefix: str, progress: Progress) -> None:
    """Read every manifest revision the registry's enumerator would ingest
    (a revision link whose blob has its data) and record its references."""

    def prepare() -> int:
        snapshot.db.executescript(
            """
            DELETE FROM refs;
            DELETE FROM manifests;
            DROP TABLE IF EXISTS to_read;
            CREATE TABLE to_read AS SELECT DISTINCT l.target AS digest, b.size AS size
                FROM links l JOIN blobs b ON b.digest = l.target
                WHERE l.kind = 'revision' AND l.repo IN (SELECT id FROM repos WHERE has_layers);
            """
        )
        return int(snapshot.scalar("SELECT COUNT(*) FROM to_read"))

    progress.manifests_total = await trio.to_thread.run_sync(prepare)
    progress.manifests_done = 0
    found: list[tuple[str, str, str, bool]] = []
    refs: list[tuple[str, str]] = []

    def write() -> None:
        db = snapshot.db
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?)", found)
        db.executemany("INSERT INTO refs VALUES (?, ?)", refs)
        db.execute("COMMIT")
        found.clear()
        refs.clear()

    async def read(row: tuple[str, int]) -> None:
        digest, size = row
        path = layout.blob_data_path(digest)
        assert path is not None
        problem = ""
        media_type = ""
        mismatch = False
        body: bytes | None = None
        if size > MANIFEST_MAX:
            problem = f"over the manifest size limit ({size} bytes)"
        else:
            try:
                body = await manifests.get(digest, v2_prefix + path[len(layout.REGISTRY_ROOT) + 1 :], size)
            except DigestMismatch as exc:
                body, mismatch = exc.data, True  # reported; the registry's GC reads it all the same
            except NotFound:
                problem = "deleted while the report was made"
        if body is not None:
            try:
                parsed = references(json.loads(body))
            except ValueError:
                parsed = "not JSON"
            except (RecursionError, TypeError, AttributeError) as exc:
                # Nested too deep for Python, or fields of the wrong types.
                parsed = f"not a valid manifest ({type(exc).__name__})"
            if isinstance(parsed, str):
                problem = parsed
            else:
                media_type, children = parsed
                refs.extend((digest, child) for child in children)
        found.append((digest, media_type, problem, mismatch))
        progress.manifests_done += 1

    async for rows in _chunks(snapshot, "to_read", "digest, size"):
        await _each_limited(read, rows)
        await trio.to_thread.run_sync(write)

    def finish() -> None:
        db = snapshot.db
        db.execute("DROP TABLE to_read")
        db.execute("CREATE INDEX IF NOT EXISTS refs_manifest ON refs (manifest)")
        # What the enumerator ingests: (repository, manifest) for every
        # revision whose blob is there; tagged when a tag's current/link
        # holds it (the registry's Tags().Lookup).
        db.executescript(
            """
            DROP TABLE IF EXISTS ingested;
            CREATE TABLE ingested AS
                SELECT DISTINCT l.repo AS repo, l.target AS digest,
                    EXISTS (SELECT 1 FROM links c WHERE c.repo = l.repo AND c.kind = 'current'
                            AND c.target = l.target) AS tagged
                FROM links l JOIN blobs b ON b.digest = l.target
                WHERE l.kind = 'revision' AND l.repo IN (SELECT id FROM repos WHERE has_layers);
            DROP TABLE IF EXISTS marked_all;
            CREATE TABLE marked_all (digest TEXT PRIMARY KEY) WITHOUT ROWID;
            INSERT OR IGNORE INTO marked_all SELECT digest FROM ingested;
            INSERT OR IGNORE INTO marked_all
                SELECT r.child FROM refs r WHERE r.manifest IN (SELECT digest FROM ingested);
            DROP TABLE IF EXISTS marked_tagged;
            CREATE TABLE marked_tagged (digest TEXT PRIMARY KEY) WITHOUT ROWID;
            INSERT OR IGNORE INTO marked_tagged SELECT digest FROM ingested WHERE tagged;
            INSERT OR IGNORE INTO marked_tagged
                SELECT r.child FROM refs r WHERE r.manifest IN (SELECT digest FROM ingested WHERE tagged);
            -- Distribution 3.x with --delete-untagged: marking follows an index
            -- into its manifests and theirs, and keeps what it reaches.
            DROP TABLE IF EXISTS marked_reachable;
            CREATE TABLE marked_reachable (digest TEXT PRIMARY KEY) WITHOUT ROWID;
            INSERT OR IGNORE INTO marked_reachable
                WITH RECURSIVE reach(digest) AS (
                    SELECT digest FROM ingested WHERE tagged
                    UNION
                    SELECT r.child FROM refs r JOIN reach ON r.manifest = reach.digest
                )
                SELECT digest FROM reach;
            """
        )

    await trio.to_thread.run_sync(finish)


# -- rendering -----------------------------------------------------------------------

#: The view's files (each rendered by Reports._write).
REPORT_FILES = (
    "usage.tsv",
    "uploads.tsv",
    "summary.json",
    "gc/eligible.tsv",
    "gc/eligible-untagged.tsv",
    "gc/eligible-untagged-v3.tsv",
    "gc/untagged-manifests.tsv",
    "gc/untagged-manifests-v3.tsv",
    "gc/dangling-links.tsv",
    "gc/bad-links.tsv",
)
NEEDS_MARK = frozenset(
    {
        "summary.json",
        "gc/eligible.tsv",
        "gc/eligible-untagged.tsv",
        "gc/eligible-untagged-v3.tsv",
        "gc/untagged-manifests.tsv",
        "gc/untagged-manifests-v3.tsv",
    }
)
#: Reports that need what links hold (links the listing could not prove are read).
NEEDS_LINKS = NEEDS_MARK | {"gc/dangling-links.tsv", "gc/bad-links.tsv"}
#: Reports that need the uploads' startedat files and the multipart uploads.
NEEDS_UPLOADS = frozenset({"summary.json", "uploads.tsv"})


@dataclass(frozen=True)
class Context:
    """What the texts say besides the snapshot's rows."""

    source: str  # s3://bucket/prefix
    bucket: str
    mountpoint: str
    purge_age: float
    #: The ids of the multipart uploads s3regfs itself began and left open.
    own_uploads: Callable[[], frozenset[str]]


def _header(what: str, snapshot: Snapshot, context: Context, columns: str) -> list[str]:
    return [
        f"# {what} of {context.source}: a snapshot taken {_iso(int(snapshot.scanned_at * 1e9))}"
        " (what the registry wrote while it was taken may be missing)",
        "# " + columns,
    ]


def _blob_path(context: Context, digest: str) -> str:
    path = layout.blob_data_path(digest) or digest
    return f"{context.mountpoint}/{path}"


def _repo_path(context: Context, repo: str, *rest: str) -> str:
    return "/".join([context.mountpoint, layout.REGISTRY_ROOT, "repositories", repo, *rest])


def _usage(snapshot: Snapshot, context: Context) -> Iterator[str]:
    yield from _header(
        "usage per repository",
        snapshot,
        context,
        "repository\ttags\tmanifests\tlayers\tunique_bytes\tshared_bytes\ttotal_bytes",
    )
    db = snapshot.db
    db.executescript(
        """
        DROP TABLE IF EXISTS usage_refs;
        CREATE TEMP TABLE usage_refs AS SELECT DISTINCT repo, name AS digest FROM links
            WHERE kind IN ('layer', 'revision');
        DROP TABLE IF EXISTS usage_counts;
        CREATE TEMP TABLE usage_counts AS SELECT digest, COUNT(*) AS n FROM usage_refs GROUP BY digest;
        CREATE INDEX usage_counts_digest ON usage_counts (digest);
        """
    )
    counts: dict[int, list[int]] = {}
    for repo, kind, n in db.execute("SELECT repo, kind, COUNT(*) FROM links GROUP BY repo, kind"):
        row = counts.setdefault(repo, [0, 0, 0])
        if kind in ("current", "revision", "layer"):
            row[("current", "revision", "layer").index(kind)] = n
    sizes: dict[int, tuple[int, int, int]] = {
        repo: (unique or 0, shared or 0, total or 0)
        for repo, unique, shared, total in db.execute(
            "SELECT r.repo, SUM(CASE WHEN c.n = 1 THEN b.size ELSE 0 END),"
            " SUM(CASE WHEN c.n > 1 THEN b.size ELSE 0 END), SUM(b.size)"
            " FROM usage_refs r JOIN usage_counts c USING (digest) JOIN blobs b USING (digest)"
            " GROUP BY r.repo"
        )
    }
    totals = [0, 0, 0]
    for repo, name in db.execute("SELECT id, name FROM repos ORDER BY name"):
        tags, manifests, layers = counts.get(repo, [0, 0, 0])
        unique, shared, total = sizes.get(repo, (0, 0, 0))
        totals = [totals[0] + tags, totals[1] + manifests, totals[2] + layers]
        yield f"{_tsv(name)}\t{tags}\t{manifests}\t{layers}\t{unique}\t{shared}\t{total}"
    unique_all, shared_all = db.execute(
        "SELECT SUM(CASE WHEN c.n = 1 THEN b.size ELSE 0 END), SUM(CASE WHEN c.n > 1 THEN b.size ELSE 0 END)"
        " FROM usage_counts c JOIN blobs b USING (digest)"
    ).fetchone()
    unreferenced = db.execute(
        "SELECT SUM(size) FROM blobs WHERE digest NOT IN (SELECT digest FROM usage_counts)"
    ).fetchone()[0]
    unique_all, shared_all, unreferenced = unique_all or 0, shared_all or 0, unreferenced or 0
    yield f"(unreferenced)\t0\t0\t0\t{unreferenced}\t0\t{unreferenced}"
    yield (
        f"(total)\t{totals[0]}\t{totals[1]}\t{totals[2]}\t{unique_all}\t{shared_all}"
        f"\t{unique_all + shared_all + unreferenced}"
    )


def _eligible(snapshot: Snapshot, context: Context, marked: str, what: str) -> Iterator[str]:
    yield from _header(what, snapshot, context, "digest\tsize\tlast_modified\tpath")
    for digest, size, mtime_ns in snapshot.db.execute(
        f"SELECT digest, size, mtime_ns FROM blobs WHERE digest NOT IN (SELECT digest FROM {marked})"
        " ORDER BY digest"
    ):
        yield f"{digest}\t{size}\t{_iso(mtime_ns)}\t{_blob_path(context, digest)}"


def _untagged_manifests(snapshot: Snapshot, context: Context, *, v3: bool) -> Iterator[str]:
    """The revisions --delete-untagged removes: untagged ones (with *v3*, only
    those no tagged index reaches: Distribution 3.x keeps an index's manifests)."""
    version = "Distribution 3.x's " if v3 else ""
    yield from _header(
        f"manifests {version}`garbage-collect --delete-untagged` would delete",
        snapshot,
        context,
        "repository\tdigest\tpath",
    )
    kept = " AND i.digest NOT IN (SELECT digest FROM marked_reachable)" if v3 else ""
    for repo, digest in snapshot.db.execute(
        "SELECT r.name, i.digest FROM ingested i JOIN repos r ON r.id = i.repo WHERE NOT i.tagged"
        f"{kept} ORDER BY r.name, i.digest"
    ):
        algorithm, _, hexdigest = digest.partition(":")
        path = _repo_path(context, repo, "_manifests", "revisions", algorithm, hexdigest)
        yield f"{_tsv(repo)}\t{digest}\t{path}"


def _link_path(context: Context, repo: str, kind: str, name: str, tag: str) -> str:
    algorithm, _, hexdigest = name.partition(":")
    if kind == "layer":
        return _repo_path(context, repo, "_layers", algorithm, hexdigest, "link")
    if kind == "revision":
        return _repo_path(context, repo, "_manifests", "revisions", algorithm, hexdigest, "link")
    if kind == "index":
        return _repo_path(context, repo, "_manifests", "tags", tag, "index", algorithm, hexdigest, "link")
    return _repo_path(context, repo, "_manifests", "tags", tag, "current", "link")


def _dangling(snapshot: Snapshot, context: Context) -> Iterator[str]:
    yield from _header(
        "link files whose blob is not in the bucket",
        snapshot,
        context,
        "path\tkind\trepository\ttarget",
    )
    rows = snapshot.db.execute(
        "SELECT r.name, l.kind, l.name, l.tag, l.target FROM links l JOIN repos r ON r.id = l.repo"
        " WHERE l.target IS NOT NULL AND l.target NOT IN (SELECT digest FROM blobs)"
        " ORDER BY r.name, l.kind, l.tag, l.name"
    )
    for repo, kind, name, tag, target in rows:
        kind_shown = "tag" if kind == "current" else ("tag-index" if kind == "index" else kind)
        yield f"{_link_path(context, repo, kind, name, tag)}\t{kind_shown}\t{_tsv(repo)}\t{target}"


def _bad(snapshot: Snapshot, context: Context) -> Iterator[str]:
    yield from _header(
        "link files that are empty, too long, or hold no valid digest",
        snapshot,
        context,
        "path\tproblem\tsize",
    )
    for path, problem, size in snapshot.db.execute("SELECT path, problem, size FROM bad_links ORDER BY path"):
        yield f"{context.mountpoint}/{_tsv(path)}\t{problem}\t{size}"


def _uploads(snapshot: Snapshot, context: Context, now: float) -> Iterator[str]:
    yield from _header(
        f"uploads in progress (stale: older than the registry's purging age, {context.purge_age / 3600:g}h)",
        snapshot,
        context,
        "kind\trepository\tid\tstarted\tage_hours\tbytes\tparts\tstatus\towner\tpath",
    )
    for repo, uuid, started_ns, text, data_size, _keys, newest_ns in snapshot.db.execute(
        "SELECT r.name, u.uuid, u.startedat_ns, u.startedat_text, u.data_size, u.keys, u.newest_ns"
        " FROM uploads u JOIN repos r ON r.id = u.repo ORDER BY r.name, u.uuid"
    ):
        # No readable startedat: the registry never purges it (it keeps its
        # start in the future); shown with the age of its newest key.
        age = now - (started_ns or newest_ns) / 1e9
        status = (
            "stale"
            if started_ns and age > context.purge_age
            else ("no-startedat" if not started_ns else "active")
        )
        path = _repo_path(context, repo, "_uploads", uuid)
        yield (
            f"upload\t{_tsv(repo)}\t{_tsv(uuid)}\t{_iso(started_ns) if started_ns else _tsv(text) or '-'}"
            f"\t{age / 3600:.1f}\t{data_size}\t-\t{status}\tregistry\t{path}"
        )
    v2 = f"{layout.REGISTRY_ROOT}/repositories/"
    own = context.own_uploads()
    for key, upload_id, initiated_ns, parts, size in snapshot.db.execute(
        "SELECT key, upload_id, initiated_ns, parts, size FROM multipart ORDER BY key, upload_id"
    ):
        age = now - initiated_ns / 1e9
        relative = key.split(v2, 1)[1] if v2 in key else ""
        repo = relative.split("/_uploads/")[0] if "/_uploads/" in relative else "-"
        owner = "s3regfs" if upload_id in own else ("registry" if repo != "-" else "unknown")
        status = "stale" if age > context.purge_age else "active"
        yield (
            f"multipart\t{_tsv(repo)}\t{_tsv(upload_id)}\t{_iso(initiated_ns)}\t{age / 3600:.1f}\t{size}"
            f"\t{parts}\t{status}\t{owner}\ts3://{context.bucket}/{_tsv(key)}"
        )


def _tsv(text: str) -> str:
    """A field without the characters that would break a line or a column."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _summary(snapshot: Snapshot, context: Context, now: float, cache: dict[str, int]) -> dict[str, object]:
    db = snapshot.db

    def one(sql: str) -> int:
        return int(db.execute(sql).fetchone()[0] or 0)

    problems = [
        {"digest": digest, "problem": problem}
        for digest, problem in db.execute(
            "SELECT digest, problem FROM manifests WHERE problem != '' ORDER BY digest LIMIT 1000"
        )
    ]
    stale_uploads = sum(1 for line in _uploads(snapshot, context, now) if "\tstale\t" in line)
    return {
        "source": context.source,
        "scanned_at": _iso(int(snapshot.scanned_at * 1e9)),
        "links_read_at": _iso(int(snapshot.links_read_at * 1e9)) if snapshot.links_read else None,
        "uploads_read_at": _iso(int(snapshot.uploads_read_at * 1e9)) if snapshot.uploads_read else None,
        "marked_at": _iso(int(snapshot.marked_at * 1e9)) if snapshot.marked else None,
        "snapshot": "what the registry wrote while the reports were made may be missing",
        "repositories": one("SELECT COUNT(*) FROM repos"),
        "blobs": one("SELECT COUNT(*) FROM blobs"),
        "blob_bytes": one("SELECT SUM(size) FROM blobs"),
        "tags": one("SELECT COUNT(*) FROM links WHERE kind = 'current'"),
        "manifest_revisions": one("SELECT COUNT(*) FROM links WHERE kind = 'revision'"),
        "layer_links": one("SELECT COUNT(*) FROM links WHERE kind = 'layer'"),
        "manifests_read": one("SELECT COUNT(*) FROM manifests"),
        "gc_eligible_blobs": one(
            "SELECT COUNT(*) FROM blobs WHERE digest NOT IN (SELECT digest FROM marked_all)"
        ),
        "gc_eligible_bytes": one(
            "SELECT SUM(size) FROM blobs WHERE digest NOT IN (SELECT digest FROM marked_all)"
        ),
        "gc_untagged_eligible_blobs": one(
            "SELECT COUNT(*) FROM blobs WHERE digest NOT IN (SELECT digest FROM marked_tagged)"
        ),
        "gc_untagged_eligible_bytes": one(
            "SELECT SUM(size) FROM blobs WHERE digest NOT IN (SELECT digest FROM marked_tagged)"
        ),
        "untagged_manifests": one("SELECT COUNT(*) FROM ingested WHERE NOT tagged"),
        "dangling_links": one(
            "SELECT COUNT(*) FROM links WHERE target IS NOT NULL AND target NOT IN (SELECT digest FROM blobs)"
        ),
        "bad_links": one("SELECT COUNT(*) FROM bad_links"),
        "uploads": one("SELECT COUNT(*) FROM uploads"),
        "multipart_uploads": one("SELECT COUNT(*) FROM multipart"),
        "stale_uploads": stale_uploads,
        "keys_left_out": snapshot.skipped,
        "manifest_problems": problems,
        "manifests_not_matching_their_digest": one("SELECT COUNT(*) FROM manifests WHERE mismatch"),
        "registry_gc_would_stop_on": _gc_stoppers(snapshot),
        "manifest_cache": cache,
    }


def _gc_stoppers(snapshot: Snapshot) -> list[str]:
    """What would make the registry's garbage-collect (2.8) fail instead of
    deleting anything: these reports go on past them."""
    db = snapshot.db
    found = [
        f"manifest {digest}: {problem}"
        for digest, problem in db.execute(
            "SELECT digest, problem FROM manifests WHERE problem != '' ORDER BY digest LIMIT 100"
        )
    ]
    found += [f"{path}: not a valid blob digest" for path in snapshot.bad_blob_paths]
    found += [
        f"{path}: {problem}"
        for path, problem in db.execute(
            "SELECT path, problem FROM bad_links WHERE path LIKE '%/_manifests/revisions/%'"
            " AND problem NOT LIKE 'holds %' ORDER BY path LIMIT 100"
        )
    ]
    found += [
        f"{path}: {problem} (with --delete-untagged)"
        for path, problem in db.execute(
            "SELECT path, problem FROM bad_links WHERE path LIKE '%/current/link'"
            " AND problem NOT LIKE 'holds %' ORDER BY path LIMIT 100"
        )
    ]
    found += [
        f"repository {name} has manifests but no tags (with --delete-untagged: unknown repository)"
        for (name,) in db.execute(
            "SELECT name FROM repos WHERE has_layers AND id IN (SELECT repo FROM links WHERE kind = 'revision')"
            " AND id NOT IN (SELECT repo FROM links WHERE kind IN ('current', 'index')) ORDER BY name LIMIT 100"
        )
    ]
    return found


# -- the reports of a mount ----------------------------------------------------------


class Reports:
    """Computes the reports when asked and serves them while fresh.

    One computation at a time; a snapshot older than *ttl* seconds is
    replaced by a new scan when a report is next opened (the manifests'
    bodies stay cached, so a new mark reads only manifests not seen before).
    Rendered texts are files in *workdir* (read through mmap by the caller),
    never held in memory.
    """

    def __init__(
        self,
        store: ObjectStore,
        key_prefix: str,
        manifests: ManifestCache,
        ttl: float,
        workdir: str | None,
        context: Context,
    ) -> None:
        self._store = store
        self._v2 = f"{key_prefix}{layout.REGISTRY_ROOT}/"
        self._key_prefix = key_prefix
        self._manifests = manifests
        self._ttl = ttl
        self._workdir = workdir
        self.context = context
        self._lock = trio.Lock()
        self._snapshot: Snapshot | None = None
        self._rendered: dict[str, str] = {}
        self.progress = Progress()
        self.computations = 0

    def stats(self) -> dict[str, object]:
        figures: dict[str, object] = {"computations": self.computations, **self.progress.as_dict()}
        figures["manifests"] = self._manifests.stats()
        return figures

    def last_size(self, name: str) -> int:
        """The size of *name* as last rendered (0 before it ever was)."""
        path = self._rendered.get(name)
        try:
            return os.path.getsize(path) if path else 0
        except OSError:
            return 0

    async def render(self, name: str) -> str:
        """The file holding report *name* (REPORT_FILES), computed when its
        snapshot is missing or older than the TTL; StorageError on failure."""
        async with self._lock, trio.open_nursery() as nursery:
            nursery.start_soon(self._log_progress)
            try:
                with collapse_exception_groups():
                    path = await self._render(name)
            except BaseException as exc:
                # A stage that failed half way leaves nothing behind: the
                # next open starts from a new scan.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.close)
                self.progress.stage = "failed"
                if isinstance(exc, sqlite3.Error):
                    code = errno.ENOSPC if "full" in str(exc) else errno.EIO
                    raise OSError(code, f"the reports' database in {self._workdir}: {exc}") from exc
                raise
            nursery.cancel_scope.cancel()
            return path

    async def _log_progress(self) -> None:
        """Log what a long computation has done, every PROGRESS_EVERY seconds."""
        while True:
            await trio.sleep(PROGRESS_EVERY)
            progress = self.progress
            log.info(
                "reports: %s: %d keys listed in %d listings, %d repositories; %d of %d manifests read",
                progress.stage,
                progress.keys_listed,
                progress.lists,
                progress.repositories,
                progress.manifests_done,
                progress.manifests_total,
            )

    async def _render(self, name: str) -> str:
        snapshot = self._snapshot
        if snapshot is None or time.monotonic() - snapshot.computed_mono >= self._ttl:
            snapshot = await self._scan()
        if name in NEEDS_LINKS and not snapshot.links_read:
            self.progress.stage = "links"
            await _read_links(snapshot, self._store)
            snapshot.links_read = True
            snapshot.links_read_at = time.time()
        if name in NEEDS_UPLOADS and not snapshot.uploads_read:
            self.progress.stage = "uploads"
            await _read_uploads(snapshot, self._store, self._key_prefix)
            snapshot.uploads_read = True
            snapshot.uploads_read_at = time.time()
        if name in NEEDS_MARK and not snapshot.marked:
            self.progress.stage = "mark"
            await _mark(snapshot, self._manifests, self._v2, self.progress)
            snapshot.marked = True
            snapshot.marked_at = time.time()
            log.info(
                "reports: %d manifests marked (%d fetched from S3 so far)",
                self.progress.manifests_total,
                self._manifests.fetched,
            )
        if self.progress.stage != "idle":  # a stage ran: fresh from now
            snapshot.computed_mono = time.monotonic()
        path = self._rendered.get(name)
        if path is None:
            path = await trio.to_thread.run_sync(self._write, snapshot, name)
            self._rendered[name] = path
        self.progress.stage = "idle"
        return path

    async def _scan(self) -> Snapshot:
        self.progress = Progress(stage="scan", started=time.monotonic())
        self.computations += 1
        snapshot = await trio.to_thread.run_sync(Snapshot, self._workdir)
        try:
            await _Scanner(snapshot, self._store, self._v2, self.progress).run()
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(snapshot.close)
            raise
        snapshot.scanned_at = time.time()
        log.info(
            "reports: scanned %d keys of %d repositories in %d listings (%.1f s)",
            self.progress.keys_listed,
            self.progress.repositories,
            self.progress.lists,
            time.monotonic() - self.progress.started,
        )
        await trio.to_thread.run_sync(self.close)
        self._snapshot = snapshot
        return snapshot

    def _write(self, snapshot: Snapshot, name: str) -> str:
        now = time.time()
        context = self.context
        lines: Iterable[str]
        if name == "usage.tsv":
            lines = _usage(snapshot, context)
        elif name == "uploads.tsv":
            lines = _uploads(snapshot, context, now)
        elif name == "gc/eligible.tsv":
            lines = _eligible(
                snapshot, context, "marked_all", "blobs `garbage-collect --dry-run` would delete"
            )
        elif name == "gc/eligible-untagged.tsv":
            lines = _eligible(
                snapshot,
                context,
                "marked_tagged",
                "blobs `garbage-collect --dry-run --delete-untagged` would delete",
            )
        elif name == "gc/eligible-untagged-v3.tsv":
            lines = _eligible(
                snapshot,
                context,
                "marked_reachable",
                "blobs Distribution 3.x's `garbage-collect --dry-run --delete-untagged` would delete",
            )
        elif name == "gc/untagged-manifests.tsv":
            lines = _untagged_manifests(snapshot, context, v3=False)
        elif name == "gc/untagged-manifests-v3.tsv":
            lines = _untagged_manifests(snapshot, context, v3=True)
        elif name == "gc/dangling-links.tsv":
            lines = _dangling(snapshot, context)
        elif name == "gc/bad-links.tsv":
            lines = _bad(snapshot, context)
        elif name == "summary.json":
            lines = [json.dumps(_summary(snapshot, context, now, self._manifests.stats()), indent=2)]
        else:
            raise AssertionError(name)
        handle, path = tempfile.mkstemp(prefix=_scratch_prefix(), suffix=".txt", dir=self._workdir)
        try:
            with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape") as file:
                for line in lines:
                    file.write(line + "\n")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return path

    def close(self) -> None:
        """Drop the snapshot and the rendered files (open readers keep theirs)."""
        for path in self._rendered.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._rendered = {}
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None
