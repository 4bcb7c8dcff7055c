# SPDX-License-Identifier: MIT
"""The upload journal (storage/journal.py): files, locks and recovery."""

from __future__ import annotations

import os
from pathlib import Path


async def test_upload_journal_recovery_reads_dead_files_only(tmp_path: Path) -> None:
    from s3regfs.storage.journal import UploadJournal, recover

    class Store:
        """A stand-in for S3 with one open upload ("u1"); "u2" is gone."""

        def __init__(self) -> None:
            self.aborted: list[str] = []

        async def upload_exists(self, key: str, upload_id: str) -> bool:
            return upload_id == "u1"

        async def abort_multipart(self, key: str, upload_id: str) -> None:
            self.aborted.append(upload_id)

    directory = str(tmp_path)
    dead = tmp_path / "t.1.jsonl"
    dead.write_text(
        '{"begin":"u1","key":"a","time":"T"}\n{"begin":"u2","key":"b","time":"T"}\n'
        '{"begin":"u3","key":"c","time":"T"}\n{"end":"u3"}\n{"begin":"u4","ke'  # torn by a crash
    )
    (tmp_path / "other.1.jsonl").write_text('{"begin":"x","key":"x"}\n')  # another bucket's
    live = UploadJournal(directory, "t", "live")  # a live mount of the same bucket: never read
    live.begun("live-key", "u9")
    store = Store()
    mine = UploadJournal(directory, "t", "mine")
    found = await recover(store, mine, directory, "t", abort=False)
    assert [u.upload_id for u in found.still_open] == ["u1"] and found.gone == 1
    assert store.aborted == [] and not dead.exists()
    assert mine.open_count == 1  # carried over, so the next mount reports it again
    mine.close()
    again = UploadJournal(directory, "t", "again")
    found = await recover(store, again, directory, "t", abort=True)
    assert [u.upload_id for u in found.aborted] == ["u1"] and store.aborted == ["u1"]
    again.close()
    live.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.1.jsonl", live.path.rsplit("/", 1)[1]]


def test_upload_journals_never_share_a_file(tmp_path: Path) -> None:
    from s3regfs.storage.journal import UploadJournal

    # A pid can come back after a crash: the new journal must not reopen (and
    # at its clean exit delete) the dead one of the same pid.
    first = UploadJournal(str(tmp_path), "t", "42")
    first.begun("k", "u1")
    second = UploadJournal(str(tmp_path), "t", "42")
    assert first.path != second.path
    second.close()
    assert os.path.exists(first.path) and "u1" in Path(first.path).read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging file left
    first.close()


async def test_a_dead_journal_stays_when_its_uploads_cannot_be_carried_over(tmp_path: Path) -> None:
    from s3regfs.storage.journal import UploadJournal, recover

    class Store:
        async def upload_exists(self, key: str, upload_id: str) -> bool:
            return True

        async def abort_multipart(self, key: str, upload_id: str) -> None:
            raise AssertionError("nothing is aborted without abort=True")

    dead = tmp_path / "t.1.jsonl"
    dead.write_text('{"begin":"u1","key":"a","time":"T"}\n')
    mine = UploadJournal(str(tmp_path), "t", "mine")
    assert mine._file is not None
    mine._file.close()
    mine._file = open("/dev/full", "w")  # the disk is full: every write fails  # noqa: SIM115
    found = await recover(Store(), mine, str(tmp_path), "t", abort=False)
    assert [u.upload_id for u in found.still_open] == ["u1"]
    assert dead.exists()  # kept, so the next mount reports u1 again
    mine.close()  # and closing a journal on a full disk raises nothing
