# SPDX-License-Identifier: MIT
"""Bad input through the real mount: names POSIX or S3 cannot hold, names that
need URL encoding, keys POSIX cannot name, and objects the registry never
writes but a bucket can hold."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.util import fuse_test_marker, mounted

pytestmark = fuse_test_marker()

KEY_MAX = 1024


def all_keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return sorted(keys)


def put_many(s3: Any, bucket: str, objects: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket=bucket, Key=item[0], Body=item[1]), objects.items()))


def fails_with(code: int, call: Any, *args: Any) -> None:
    with pytest.raises(OSError) as info:
        call(*args)
    assert info.value.errno == code, (os.strerror(info.value.errno or 0), args)


def create(path: Path | bytes) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


# -- names too long ------------------------------------------------------------------


def test_component_over_255_bytes_is_enametoolong(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        m = mount.path
        (m / "f").write_bytes(b"x")
        (m / "d").mkdir()
        # 256 bytes: ASCII, and 128 two-byte characters (bytes count, not characters).
        for long in ("n" * 256, "é" * 128):
            fails_with(errno.ENAMETOOLONG, create, m / long)
            fails_with(errno.ENAMETOOLONG, os.mkdir, m / long)
            fails_with(errno.ENAMETOOLONG, os.stat, m / long)
            fails_with(errno.ENAMETOOLONG, os.rename, m / "f", m / long)
            fails_with(errno.ENAMETOOLONG, os.rename, m / "d", m / "d" / ".." / long)
        fitting = "é" * 127 + "a"  # 255 bytes
        (m / fitting).write_bytes(b"fits")
        assert (m / fitting).read_bytes() == b"fits"
        assert sorted(os.listdir(m)) == sorted(["d", "f", fitting])
    assert all_keys(s3, bucket) == sorted(["f", fitting])


def test_key_over_1024_bytes_is_enametoolong(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    root = "root/"  # the root directory's prefix counts too
    a, b, c, d = ("a" * 250, "b" * 250, "c" * 250, "d" * 250)
    with mounted(tmp_path / "mnt", [*endpoint_opts, f"{bucket}:/root"]) as mount:
        m = mount.path
        deep = m / a / b / c / d
        deep.mkdir(parents=True)  # its prefix root/a/b/c/d/ is 1,009 bytes
        d_key = f"{root}{a}/{b}/{c}/{d}"
        room = KEY_MAX - len(d_key) - 1  # 15: the longest name a file in d may have
        (deep / ("f" * room)).write_bytes(b"exactly 1024")
        fails_with(errno.ENAMETOOLONG, create, deep / ("f" * (room + 1)))
        fails_with(errno.ENAMETOOLONG, os.stat, deep / ("f" * (room + 1)))
        # A directory's key is its prefix "name/": one byte less room.
        fails_with(errno.ENAMETOOLONG, os.mkdir, deep / ("s" * room))
        os.mkdir(deep / ("s" * (room - 1)))
        # Renaming a file or a directory whose keys would grow past the limit.
        (m / "short").write_bytes(b"s")
        fails_with(errno.ENAMETOOLONG, os.rename, m / "short", deep / ("f" * (room + 1)))
        (m / "top").mkdir()
        (m / "top" / ("y" * 200)).write_bytes(b"y")
        too_far = m / a / b / c / ("t" * 100)  # its file's key would be 1,059 bytes
        fails_with(errno.ENAMETOOLONG, os.rename, m / "top", too_far)
        assert (m / "top" / ("y" * 200)).read_bytes() == b"y"
        assert not too_far.exists()
        before = all_keys(s3, bucket)
        os.rename(m / "top", m / a / b / c / "t")  # 960 bytes: fine
        assert (m / a / b / c / "t" / ("y" * 200)).read_bytes() == b"y"
    keys = all_keys(s3, bucket)
    assert f"{d_key}/{'f' * room}" in keys and len(f"{d_key}/{'f' * room}") == KEY_MAX
    assert f"{root}top/{'y' * 200}" in before  # the refused rename copied nothing
    assert not any(key.startswith(f"{root}{a}/{b}/{c}/{'t' * 100}") for key in before)
    assert f"{root}{a}/{b}/{c}/t/{'y' * 200}" in keys and f"{root}top/{'y' * 200}" not in keys
    assert max(len(key.encode()) for key in keys) == KEY_MAX


# -- names that need URL encoding, and names that are not UTF-8 ----------------------------

ODD_NAMES = [
    "sp ace",
    " lead and trail ",
    "back\\slash",
    "per%cent",
    "%2F",
    "%",
    "plus+sign",
    "hash#",
    "ques?tion",
    "amp&",
    "eq=ual",
    'dq"uote',
    "sq'uote",
    "semi;colon",
    "<>|*",
    "[b]{c}",
    "~!@$^()",
    "`",
    "tab\there",
    "ctl\x01\x1f",
    "cr\rhere",
    "é",
    "日本語",
    "😀 emoji",
    "...",
    ".hidden",
    "-dash",
    "ü" * 127 + "x",
]


def test_names_needing_url_encoding_are_stored_and_listed_exactly(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    put_many(s3, bucket, {f"b/{name}": f"from boto3 {name}".encode() for name in ODD_NAMES})
    put_many(s3, bucket, {f"c/{name}/inner": name.encode() for name in ODD_NAMES})
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        m = mount.path
        (m / "w").mkdir()
        for name in ODD_NAMES:
            (m / "w" / name).write_bytes(name.encode())
        assert sorted(os.listdir(m / "w")) == sorted(ODD_NAMES)
        # Objects made by another client show with the exact names, and read right.
        assert sorted(os.listdir(m / "b")) == sorted(ODD_NAMES)
        assert sorted(os.listdir(m / "c")) == sorted(ODD_NAMES)
        for name in ODD_NAMES:
            assert (m / "w" / name).read_bytes() == name.encode()
            assert (m / "b" / name).read_bytes() == f"from boto3 {name}".encode()
            assert os.listdir(m / "c" / name) == ["inner"]
            assert (m / "c" / name / "inner").read_bytes() == name.encode()
            assert os.getxattr(m / "b" / name, "user.s3.key") == f"b/{name}".encode()
        # Renamed from one such name to another: the exact new key.
        os.rename(m / "w" / "hash#", m / "w" / "q?&=%20")
        assert (m / "w" / "q?&=%20").read_bytes() == b"hash#"
    names = [*(n for n in ODD_NAMES if n != "hash#"), "q?&=%20"]
    assert all_keys(s3, bucket, "w/") == sorted(f"w/{name}" for name in names)
    assert s3.get_object(Bucket=bucket, Key="w/q?&=%20")["Body"].read() == b"hash#"
    assert s3.get_object(Bucket=bucket, Key="w/cr\rhere")["Body"].read() == b"cr\rhere"


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"ok\x80", b"\xed\xa0\x80", b"\xc0\xaf"])
def test_names_that_are_not_utf8_are_eilseq(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path, raw: bytes
) -> None:
    # \xed\xa0\x80 is an encoded surrogate and \xc0\xaf an overlong "/": not UTF-8 either.
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket]) as mount:
        m = bytes(mount.path)
        (mount.path / "f").write_bytes(b"x")
        bad = m + b"/" + raw
        fails_with(errno.EILSEQ, create, bad)
        fails_with(errno.EILSEQ, os.mkdir, bad)
        fails_with(errno.EILSEQ, os.rename, m + b"/f", bad)
        fails_with(errno.ENOENT, os.stat, bad)  # nothing can have that name
        assert os.listdir(m) == [b"f"]
    assert all_keys(s3, bucket) == ["f"]


# -- keys POSIX cannot name -----------------------------------------------------------------


def test_keys_posix_cannot_name_are_skipped_with_one_warning_each(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    long = "n" * 256
    put_many(
        s3,
        bucket,
        {
            "x//y": b"1",
            "a/./b": b"2",
            "a/../b": b"3",
            "./c": b"4",
            "..": b"5",
            "/lead": b"6",
            f"p/{long}": b"7",
            "p/ok": b"8",
            "q/x//y": b"9",  # q is listed flat: x still shows, as the root's x does
            "good": b"10",
        },
    )
    with mounted(
        tmp_path / "mnt", [*endpoint_opts, "-o", "metadata_ttl=0", bucket], check_clean=False
    ) as mount:
        m = mount.path
        for _ in range(3):  # listed again each time (metadata_ttl=0): still one warning
            assert sorted(os.listdir(m)) == ["a", "good", "p", "q", "x"]
            assert os.listdir(m / "x") == [] and os.listdir(m / "a") == []
            assert os.listdir(m / "p") == ["ok"] and os.listdir(m / "q") == ["x"]
            assert os.listdir(m / "q" / "x") == []
            assert (m / "good").read_bytes() == b"10" and (m / "p" / "ok").read_bytes() == b"8"
            fails_with(errno.ENAMETOOLONG, os.stat, m / "p" / long)
    lines = mount.stderr.splitlines()
    for expected in (
        "skipping key 'x//y'",
        "skipping key 'a/./b'",
        "skipping key 'a/../b'",
        "skipping the keys under './'",
        "skipping key '..'",
        "skipping the keys under '/'",
        f"skipping key 'p/{long}'",
        "skipping key 'q/x//y'",
    ):
        assert sum(expected in line for line in lines) == 1, (expected, mount.stderr)
    assert len([line for line in lines if "warning:" in line]) == 8, mount.stderr
    assert "error:" not in mount.stderr and "Traceback" not in mount.stderr


# -- objects the registry never writes --------------------------------------------------


def test_object_that_is_also_a_directory_prefix_shows_the_directory(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    put_many(
        s3,
        bucket,
        {
            "a": b"file a",
            "a/b": b"in a",
            "deep/k": b"file k",  # listed flat, not one level at a time like the root
            "deep/k/z": b"in k",
        },
    )
    with mounted(
        tmp_path / "mnt", [*endpoint_opts, "-o", "metadata_ttl=0", bucket], check_clean=False
    ) as mount:
        m = mount.path
        for _ in range(2):
            assert (m / "a").is_dir() and os.listdir(m / "a") == ["b"]
            assert (m / "deep" / "k").is_dir() and (m / "deep" / "k" / "z").read_bytes() == b"in k"
        fails_with(errno.EISDIR, create, m / "a")
        fails_with(errno.EISDIR, os.unlink, m / "a")
        # Once the directory is gone, the object it hid shows.
        os.unlink(m / "a" / "b")
        os.rmdir(m / "a")
        assert (m / "a").is_file() and (m / "a").read_bytes() == b"file a"
    lines = mount.stderr.splitlines()
    for key in ("a", "deep/k"):
        hidden = [line for line in lines if f"hiding object {key!r}: it is also a directory prefix" in line]
        assert len(hidden) == 1, mount.stderr
    assert "error:" not in mount.stderr and "Traceback" not in mount.stderr
    assert all_keys(s3, bucket) == ["a", "deep/k", "deep/k/z"]


def test_lookup_in_a_large_stale_directory_also_shows_the_directory(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    # Over 1,000 keys: after the TTL, a name is looked up alone (not by a new
    # listing), and must follow the same rule as listings.
    put_many(s3, bucket, {f"many/f{i:04d}": b"." for i in range(1001)})
    with mounted(
        tmp_path / "mnt", [*endpoint_opts, "-o", "metadata_ttl=1", bucket], check_clean=False
    ) as mount:
        m = mount.path
        assert len(os.listdir(m / "many")) == 1001
        put_many(s3, bucket, {"many/zz": b"file", "many/zz/in": b"in zz", "many/zy": b"plain"})
        time.sleep(1.5)
        assert (m / "many" / "zz").is_dir()
        assert os.listdir(m / "many" / "zz") == ["in"]
        assert (m / "many" / "zy").read_bytes() == b"plain"
    assert "Traceback" not in mount.stderr and "error:" not in mount.stderr


def test_directory_markers_and_empty_objects(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    put_many(
        s3,
        bucket,
        {
            "empty-marker/": b"",
            "data-marker/": b"marker data",
            "data-marker/x": b"x",
            "lone-marker-with-data/": b"hidden",
            "empty": b"",
            "d/empty": b"",
        },
    )
    with mounted(
        tmp_path / "mnt", [*endpoint_opts, "-o", "metadata_ttl=0", bucket], check_clean=False
    ) as mount:
        m = mount.path
        for _ in range(2):
            assert sorted(os.listdir(m)) == [
                "d",
                "data-marker",
                "empty",
                "empty-marker",
                "lone-marker-with-data",
            ]
            assert (m / "empty-marker").is_dir() and os.listdir(m / "empty-marker") == []
            assert os.listdir(m / "data-marker") == ["x"]
            assert os.listdir(m / "lone-marker-with-data") == []
            for empty in (m / "empty", m / "d" / "empty"):
                assert empty.is_file() and empty.stat().st_size == 0 and empty.read_bytes() == b""
        # rmdir of a directory that only a marker makes removes the marker.
        os.rmdir(m / "empty-marker")
        assert not (m / "empty-marker").exists()
    lines = [line for line in mount.stderr.splitlines() if "warning:" in line]
    assert len(lines) == 2, mount.stderr
    assert "directory marker 'data-marker/' holds 11 bytes" in lines[0] + lines[1]
    assert "directory marker 'lone-marker-with-data/' holds 6 bytes" in lines[0] + lines[1]
    assert "error:" not in mount.stderr and "Traceback" not in mount.stderr
    assert "empty-marker/" not in all_keys(s3, bucket)


# -- the images view over odd registry objects ------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_key(hexdigest: str) -> str:
    return f"docker/registry/v2/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"


def test_images_view_survives_empty_links_and_blobs(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = b"layer bytes"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{sha(config)}",
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{sha(layer)}",
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    empty, other = sha(b""), sha(b"no such blob")
    repo = "docker/registry/v2/repositories/library/app"
    tags = f"{repo}/_manifests/tags"
    objects = {blob_key(sha(data)): data for data in (config, layer, manifest, b"")}
    objects |= {
        f"{repo}/_layers/sha256/{sha(config)}/link": f"sha256:{sha(config)}".encode(),
        f"{repo}/_layers/sha256/{sha(layer)}/link": f"sha256:{sha(layer)}".encode(),
        f"{repo}/_layers/sha256/{empty}/link": b"",  # 0-byte link, to the empty blob
        f"{repo}/_manifests/revisions/sha256/{sha(manifest)}/link": f"sha256:{sha(manifest)}".encode(),
        f"{repo}/_manifests/revisions/sha256/{other}/link": b"",  # 0-byte link, no blob
        f"{tags}/good/current/link": f"sha256:{sha(manifest)}".encode(),
        f"{tags}/good/index/sha256/{sha(manifest)}/link": f"sha256:{sha(manifest)}".encode(),
        # One entry in index/: its target needs no GET of the empty current/link.
        f"{tags}/single/current/link": b"",
        f"{tags}/single/index/sha256/{sha(manifest)}/link": b"",
        # Two entries: current/link is read, and is empty.
        f"{tags}/emptylink/current/link": b"",
        f"{tags}/emptylink/index/sha256/{sha(manifest)}/link": b"",
        f"{tags}/emptylink/index/sha256/{other}/link": b"",
        # Two entries and no current/link at all.
        f"{tags}/nolink/index/sha256/{sha(manifest)}/link": b"",
        f"{tags}/nolink/index/sha256/{other}/link": b"",
    }
    put_many(s3, bucket, objects)
    with mounted(tmp_path / "mnt", [*endpoint_opts, "-o", "images", bucket], check_clean=False) as mount:
        m = mount.path
        view = m / "_images" / "library" / "app"
        assert sorted(os.listdir(view)) == ["_tags", "blobs", "index.json", "oci-layout"]
        index = json.loads((view / "index.json").read_bytes())
        refs = {entry["annotations"]["org.opencontainers.image.ref.name"] for entry in index["manifests"]}
        assert refs == {"good", "single"}
        assert sorted(os.listdir(view / "_tags")) == ["good", "single"]
        assert (view / "_tags" / "good" / "manifest.json").read_bytes() == manifest
        blobs = sorted(os.listdir(view / "blobs" / "sha256"))
        assert blobs == sorted([sha(config), sha(layer), sha(manifest), empty])
        assert (view / "blobs" / "sha256" / empty).read_bytes() == b""
        # The raw 0-byte link reads as empty and has no target.
        link = m / f"{repo}/_layers/sha256/{empty}/link"
        assert link.read_bytes() == b""
        for name in ("user.registry.target", "user.registry.target_exists"):
            fails_with(errno.ENODATA, os.getxattr, link, name)
        empty_blob = m / blob_key(empty)
        assert os.getxattr(empty_blob, "user.registry.verify") == b"ok"
        fails_with(errno.ENODATA, os.getxattr, empty_blob, "user.registry.mediatype")
        assert os.getxattr(view, "user.registry.tags") == b"good\nsingle"
        stats = json.loads((m / ".s3regfs" / "stats").read_bytes())
        assert stats["errors"] == 0
    warnings = [line for line in mount.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 2, mount.stderr
    assert "library/app:emptylink left out of the view: its link holds no digest ('')" in mount.stderr
    assert "library/app:nolink left out of the view" in mount.stderr
    assert "error:" not in mount.stderr and "Traceback" not in mount.stderr


def test_a_newline_in_a_name_never_splits_a_log_line(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    # S3 stores such keys; moto answers 404 to them, so here the commit fails
    # and is logged, naming the file: on one line, the newline escaped.
    with mounted(tmp_path / "mnt", [*endpoint_opts, bucket], check_clean=False) as mount:
        try:
            (mount.path / "a\nb").write_bytes(b"x")
        except OSError:
            stored = False
        else:
            stored = True
        assert ("a\nb" in os.listdir(mount.path)) is stored
    assert "Traceback" not in mount.stderr
    assert all(line.startswith("s3regfs: ") for line in mount.stderr.splitlines()), mount.stderr
    if not stored:
        assert "'a\\nb': the data written was NOT stored" in mount.stderr
