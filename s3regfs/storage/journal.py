# SPDX-License-Identifier: MIT
"""A local journal of the multipart uploads this process begins.

A multipart upload that is never completed or aborted stays in the bucket
(and is billed) until a lifecycle rule removes it.  s3regfs completes or
aborts every upload it begins, unless it dies first (kill -9, a crash, a
power cut).  So every upload id is written here, with its key, the moment
CreateMultipartUpload answers, and crossed out when the upload is completed
or aborted.  The next mount of the same bucket reads what dead processes
left (:func:`recover`): uploads still open are reported, or aborted when
asked, and only those: the registry's own resumable uploads (and anybody
else's) are never touched, because only ids recorded here are.

One file per live process, ``<target>.<pid>-<random>.jsonl`` in the journal
directory, held with an exclusive ``flock`` while the process lives: a file
whose lock can be taken belongs to a dead process.  ``<target>`` is a hash of
the endpoint and the bucket, so a mount only looks at its own bucket's
journals.  Lines are JSON: ``{"begin": id, "key": key, "time": iso}`` (fsynced)
and ``{"end": id}``.  A clean exit removes the file when nothing is open.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Protocol

import trio

from s3regfs.errors import StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenUpload:
    key: str
    upload_id: str
    began: str


def target_name(endpoint: str, bucket: str) -> str:
    return hashlib.sha256(f"{endpoint}\0{bucket}".encode()).hexdigest()[:16]


def _read(file: IO[str]) -> dict[str, OpenUpload]:
    """The uploads a journal file leaves open (torn last lines are skipped)."""
    open_uploads: dict[str, OpenUpload] = {}
    file.seek(0)
    for line in file:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the process died while writing this line
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("begin"), str) and isinstance(entry.get("key"), str):
            open_uploads[entry["begin"]] = OpenUpload(
                entry["key"], entry["begin"], str(entry.get("time", ""))
            )
        elif isinstance(entry.get("end"), str):
            open_uploads.pop(entry["end"], None)
    return open_uploads


class UploadJournal:
    """This process's journal file (see the module docstring).

    The file gets a name of its own (pid and a random part: a pid alone can
    come back after a crash) and is created under a temporary name, locked,
    and only then renamed into place, so no other mount ever sees it unlocked.

    Writing is best effort: a journal that cannot be written is logged once
    and never fails an upload (the data matters more than the bookkeeping).
    :meth:`begun` fsyncs: call it on a worker thread.  Methods may be called
    from several threads.
    """

    def __init__(self, directory: str, target: str, instance: str = "") -> None:
        self.directory = directory
        name = f"{target}.{instance or os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
        self.path = os.path.join(directory, name)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        staging = os.path.join(directory, f".{name}.new")
        file = open(staging, "x", encoding="utf-8")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(staging, self.path)
        except OSError:
            file.close()
            with contextlib.suppress(OSError):
                os.unlink(staging)
            raise
        self._file: IO[str] | None = file
        self._lock = threading.Lock()
        self._open: set[str] = set()
        self._failed = False

    def _append(self, entry: dict[str, str], *, sync: bool) -> bool:
        with self._lock:
            if self._file is None:
                return False
            try:
                self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
                self._file.flush()
                if sync:
                    os.fsync(self._file.fileno())
            except OSError as exc:
                if not self._failed:
                    self._failed = True
                    log.warning("cannot write the upload journal %s: %s", self.path, exc)
                return False
            return True

    def begun(self, key: str, upload_id: str, began: str = "") -> bool:
        """Record an open upload (durably); False if it could not be written."""
        with self._lock:
            self._open.add(upload_id)
        began = began or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._append({"begin": upload_id, "key": key, "time": began}, sync=True)

    def ended(self, upload_id: str) -> None:
        with self._lock:
            if upload_id not in self._open:
                return
            self._open.discard(upload_id)
        self._append({"end": upload_id}, sync=False)

    @property
    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def close(self) -> None:
        """Release the file; remove it when no upload is left open."""
        with self._lock:
            if self._file is None:
                return
            file, self._file = self._file, None
            if not self._open:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            with contextlib.suppress(OSError):  # a full disk fails the last flush too
                file.close()


@contextlib.contextmanager
def _dead_journals(directory: str, target: str, own: str) -> Iterator[list[tuple[str, IO[str]]]]:
    """The journal files of *target* whose processes are gone, locked by us."""
    held: list[tuple[str, IO[str]]] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        names = []
    try:
        for name in names:
            path = os.path.join(directory, name)
            if not name.startswith(target + ".") or not name.endswith(".jsonl") or path == own:
                continue
            try:
                file = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
            except OSError:
                continue
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Another mount may have recovered and removed it between our
                # open and our lock: then it is no longer ours to read.
                if os.fstat(file.fileno()).st_nlink == 0:
                    raise FileNotFoundError(path)
            except OSError:
                file.close()  # a live mount owns it, or it is gone
                continue
            held.append((path, file))
        yield held
    finally:
        for _, each in held:
            each.close()


def journalled_upload_ids(directory: str, target: str) -> frozenset[str]:
    """The ids of every upload that any s3regfs of *target* (live or dead)
    began and has not crossed out: read without locks, for reports."""
    found: set[str] = set()
    try:
        names = os.listdir(directory)
    except OSError:
        return frozenset()
    for name in names:
        if not name.startswith(target + ".") or not name.endswith(".jsonl"):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as file:
                found.update(_read(file))
        except OSError:
            continue
    return frozenset(found)


class UploadStore(Protocol):
    async def upload_exists(self, key: str, upload_id: str) -> bool: ...

    async def abort_multipart(self, key: str, upload_id: str) -> None: ...


@dataclass
class Recovery:
    """What :func:`recover` found: uploads still open (reported), aborted, or already gone."""

    still_open: list[OpenUpload]
    aborted: list[OpenUpload]
    gone: int


async def recover(
    store: UploadStore, journal: UploadJournal | None, directory: str, target: str, *, abort: bool
) -> Recovery:
    """Look at the uploads dead processes left open in *target*'s journals.

    Each is checked (one ListParts): gone ones are forgotten; open ones are
    aborted with *abort*, else carried into *journal* (so the next mount
    reports them again) and returned.  Without *journal* (a read-only mount)
    the old files are kept for a later read-write mount.
    """
    result = Recovery([], [], 0)
    own = journal.path if journal is not None else ""
    with _dead_journals(directory, target, own) as dead:
        for path, file in dead:
            # The file goes only once every upload still open in it is carried
            # into this mount's journal.
            carried = True
            for upload in _read(file).values():
                try:
                    exists = await store.upload_exists(upload.key, upload.upload_id)
                    if exists and abort and journal is not None:
                        await store.abort_multipart(upload.key, upload.upload_id)
                        result.aborted.append(upload)
                        continue
                except StorageError as exc:
                    log.warning("cannot check upload %s of %r: %s", upload.upload_id, upload.key, exc)
                    exists = True
                if not exists:
                    result.gone += 1
                    continue
                result.still_open.append(upload)
                if journal is not None:
                    written = await trio.to_thread.run_sync(
                        journal.begun, upload.key, upload.upload_id, upload.began
                    )
                    carried = carried and written
            if journal is not None and carried:
                with contextlib.suppress(OSError):
                    os.unlink(path)
    return result
