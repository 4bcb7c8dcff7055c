# SPDX-License-Identifier: MIT
"""A property test of the write path against a model, through the real mount.

Hypothesis draws sequences of open / write / pwrite / ftruncate / fsync / close
on a few files, with failures injected at random points: S3 refusing the next
PUTs (a fault proxy between the mount and moto) and writes larger than the
spool (a tiny ``spoolmax``).  The model follows what each call answered; the
rules checked are the write path's contract:

- once a write, truncate or fsync of an open file failed, every later write,
  fsync and close of it fails too (the file is poisoned);
- after every close, and at the end, the bucket holds for every file exactly
  the model's last successfully committed state (fsync or close), or nothing
  for a file never stored;
- a failure is ENOSPC or EIO, nothing else;
- what the mount shows of a closed file is what the bucket holds.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faultproxy import FaultProxy, Rule
from tests.util import MotoServer, Mount, fuse_test_marker, keys, mounted, rng_bytes

pytestmark = fuse_test_marker()

SPOOLMAX = 256 * 1024
NAMES = ("a", "b", "c")


def s3_put(method: str, path: str) -> bool:
    """PutObject, UploadPart, CompleteMultipartUpload: every request that stores."""
    return method in ("PUT", "POST") and "uploads" not in path.split("?", 1)[-1].split("&")


@dataclass
class Harness:
    mount: Mount
    proxy: FaultProxy
    s3: Any
    bucket: str
    examples: itertools.count[int] = field(default_factory=itertools.count)
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1


@pytest.fixture(scope="module")
def harness(moto: MotoServer, s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    bucket = f"model-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    work = tmp_path_factory.mktemp("model")
    spool = work / "spool"
    spool.mkdir()
    proxy = FaultProxy(moto.port, seed=11).start()
    options = f"regionendpoint={proxy.url},region=us-east-1,maxretries=0,spooldir={spool},spoolmax={SPOOLMAX}"
    try:
        with mounted(work / "mnt", ["-o", options, bucket], check_clean=False) as mount:
            result = Harness(mount, proxy, s3, bucket)
            yield result
        print(f"\nwrite-path model outcomes: {sorted(result.outcomes.items())}")
        # The model must have met both sides of every rule, or it proved nothing.
        for needed in ("write", "truncate", "fsync", "close"):
            for outcome in ("ok", "failed"):
                assert result.outcomes.get(f"{needed} {outcome}", 0) > 0, (needed, outcome, result.outcomes)
        assert os.listdir(spool) == []
    finally:
        proxy.stop()


@dataclass
class Model:
    """One file: what S3 holds, and what its open handle (if any) sees."""

    stored: bytes | None = None
    content: bytearray = field(default_factory=bytearray)
    fd: int = -1
    append: bool = False
    poisoned: bool = False


def stored_state(harness: Harness, key: str) -> bytes | None:
    if key not in keys(harness.s3, harness.bucket, key):
        return None
    return bytes(harness.s3.get_object(Bucket=harness.bucket, Key=key)["Body"].read())


def attempt(call: Any, *args: Any) -> int:
    try:
        call(*args)
    except OSError as exc:
        assert exc.errno in (errno.ENOSPC, errno.EIO), exc
        return exc.errno
    return 0


OPERATIONS = ("open", "write", "write", "write", "big write", "truncate", "fsync", "close", "fault")


@settings(
    max_examples=60,
    deadline=None,
    # The same examples on every run: the module's check that every outcome
    # was met must not depend on luck.
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.data())
def test_the_bucket_follows_the_model(harness: Harness, data: st.DataObject) -> None:
    prefix = f"ex{next(harness.examples)}"
    files = {name: Model() for name in NAMES}
    root = harness.mount.path

    def check_bucket() -> None:
        for name, model in files.items():
            assert stored_state(harness, f"{prefix}/{name}") == model.stored, (name, model.poisoned)

    def check_mount(name: str) -> None:
        path = root / prefix / name
        if files[name].stored is None:
            assert not path.exists(), name
        else:
            assert path.read_bytes() == files[name].stored, name

    os.makedirs(root / prefix, exist_ok=True)
    try:
        run_steps(harness, data, files, prefix, check_bucket, check_mount)
    finally:
        # Hypothesis may end an example in the middle of a draw: nothing stays open.
        for model in files.values():
            if model.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(model.fd)
                model.fd = -1
        harness.proxy.rules = []


def run_steps(
    harness: Harness,
    data: st.DataObject,
    files: dict[str, Model],
    prefix: str,
    check_bucket: Callable[[], None],
    check_mount: Callable[[str], None],
) -> None:
    root = harness.mount.path
    for step in range(data.draw(st.integers(5, 25), label="steps")):
        operation = data.draw(st.sampled_from(OPERATIONS), label=f"op{step}")
        name = data.draw(st.sampled_from(NAMES), label=f"name{step}")
        model = files[name]
        path = root / prefix / name
        if operation == "fault":
            count = data.draw(st.integers(1, 2), label="faults")
            harness.proxy.rules = [Rule(s3_put, status=500, code="InternalError", count=count)]
            continue
        if model.fd < 0:
            # Any operation on a closed file opens it first.
            mode = data.draw(st.sampled_from(["w", "a", "r+"] if model.stored is not None else ["w", "a"]))
            flags = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}
            model.fd = os.open(path, flags.get(mode, os.O_RDWR), 0o644)
            model.append = mode == "a"
            model.content = bytearray(b"" if mode == "w" else (model.stored or b""))
            model.poisoned = False
        if operation == "open":
            continue
        if operation in ("write", "big write"):
            size = (
                SPOOLMAX * 2 if operation == "big write" else data.draw(st.integers(1, 12_000), label="size")
            )
            chunk = rng_bytes(size, step)
            if model.append:
                offset = len(model.content)
                code = attempt(os.write, model.fd, chunk)
            else:
                offset = data.draw(st.integers(0, len(model.content) + 100), label="offset")
                code = attempt(os.pwrite, model.fd, chunk, offset)
            if model.poisoned:
                assert code, "a write after a failure succeeded"
            if code:
                harness.count("write failed")
                model.poisoned = True
            else:
                harness.count("write ok")
                if offset > len(model.content):
                    model.content.extend(bytes(offset - len(model.content)))
                model.content[offset : offset + size] = chunk
        elif operation == "truncate":
            size = data.draw(st.integers(0, len(model.content) + 5000), label="truncate")
            code = attempt(os.ftruncate, model.fd, size)
            if model.poisoned:
                assert code, "ftruncate after a failure succeeded"
            harness.count("truncate failed" if code else "truncate ok")
            if code:
                model.poisoned = True
            elif size < len(model.content):
                del model.content[size:]
            else:
                model.content.extend(bytes(size - len(model.content)))
        elif operation == "fsync":
            code = attempt(os.fsync, model.fd)
            if model.poisoned:
                assert code, "fsync after a failure succeeded"
            if code:
                harness.count("fsync failed")
                model.poisoned = True
            else:
                harness.count("fsync ok")
                model.stored = bytes(model.content)
            check_bucket()
        elif operation == "close":
            code = attempt(os.close, model.fd)
            model.fd = -1
            if model.poisoned:
                assert code, "close after a failure succeeded"
            if code:
                harness.count("close failed")
            else:
                harness.count("close ok")
                model.stored = bytes(model.content)
            check_bucket()
            check_mount(name)
    harness.proxy.rules = []
    for model in files.values():
        if model.fd >= 0:
            code = attempt(os.close, model.fd)
            assert bool(code) == model.poisoned or not model.poisoned
            if not code:
                model.stored = bytes(model.content)
            model.fd = -1
    check_bucket()
    for name in NAMES:
        check_mount(name)


def test_the_model_ran(harness: Harness) -> None:
    """The module fixture checks, when it ends, that every outcome was met."""
    assert isinstance(harness.mount.path, Path)
