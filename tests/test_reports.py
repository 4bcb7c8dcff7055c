# SPDX-License-Identifier: MIT
"""The _registry reports against a real registry's state: the garbage
collector's own dry run decides what gc/eligible.tsv must say."""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import subprocess
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.regkit import Registry, go_env, push_image, registry_available, skopeo, start_registry
from tests.util import (
    MotoServer,
    bucket_requests,
    fuse_test_marker,
    mounted,
    read_stats,
    start_synth,
    stats_when,
)

pytestmark = [
    fuse_test_marker(),
    pytest.mark.registry,
    pytest.mark.skipif(not registry_available(), reason="docker-registry or skopeo is not installed"),
]

ROOT = "reg"
V2 = f"{ROOT}/docker/registry/v2"


def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines() if not line.startswith("#")]


def _dry_run(registry: Registry, *flags: str) -> set[str]:
    """The blobs `docker-registry garbage-collect` names as eligible for deletion
    (with --dry-run unless *flags* say otherwise)."""
    flags = flags if "--real" in flags else ("--dry-run", *flags)
    result = subprocess.run(
        [
            "docker-registry",
            "garbage-collect",
            *(f for f in flags if f != "--real"),
            str(registry.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=go_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    prefix = "blob eligible for deletion: "
    return {line[len(prefix) :].strip() for line in result.stdout.splitlines() if line.startswith(prefix)}


def _put(s3: Any, bucket: str, key: str, body: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body)


def _bucket(s3: Any, bucket: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=V2 + "/"):
        for item in page.get("Contents", []):
            found[item["Key"][len(V2) + 1 :]] = item["Size"]
    return found


def _expected_usage(keys: dict[str, int]) -> dict[str, tuple[int, int, int, int, int, int]]:
    """(tags, manifests, layers, unique, shared, total) per repository, from key names alone."""
    sizes = {}
    for key, size in keys.items():
        parts = key.split("/")
        if parts[0] == "blobs" and len(parts) == 5 and parts[4] == "data":
            sizes[f"{parts[1]}:{parts[3]}"] = size
    linked: dict[str, set[str]] = {}
    counts: dict[str, list[int]] = {}
    for key in keys:
        parts = key.split("/")
        if parts[0] != "repositories":
            continue
        cut = next(i for i, part in enumerate(parts) if part.startswith("_"))
        repo, rest = "/".join(parts[1:cut]), parts[cut:]
        row = counts.setdefault(repo, [0, 0, 0])
        linked.setdefault(repo, set())
        if rest[:2] == ["_manifests", "tags"] and rest[3:] == ["current", "link"]:
            row[0] += 1
        elif rest[:2] == ["_manifests", "revisions"] and len(rest) == 5 and rest[4] == "link":
            row[1] += 1
            linked[repo].add(f"{rest[2]}:{rest[3]}")
        elif rest[0] == "_layers" and len(rest) == 4 and rest[3] == "link":
            row[2] += 1
            linked[repo].add(f"{rest[1]}:{rest[2]}")
    users: dict[str, int] = {}
    for digests in linked.values():
        for digest in digests:
            users[digest] = users.get(digest, 0) + 1
    result = {}
    for repo, digests in linked.items():
        unique = sum(sizes.get(d, 0) for d in digests if users[d] == 1)
        shared = sum(sizes.get(d, 0) for d in digests if users[d] > 1)
        tags, manifests, layers = counts[repo]
        result[repo] = (tags, manifests, layers, unique, shared, unique + shared)
    return result


def test_reports_match_the_registry(moto: MotoServer, s3: Any, bucket: str, tmp_path: Path) -> None:
    registry = start_registry(moto.url, bucket, "/" + ROOT, tmp_path / "registry")
    work = tmp_path / "images"
    work.mkdir()
    try:
        # 10 repositories; one image in 5 of them (its layers shared by 5).
        repositories = [f"team{i % 3}/app{i}" for i in range(10)]
        for index, repository in enumerate(repositories):
            push_image(registry, work, repository, "latest", seed=100 + index, layer_sizes=(3000, 5000))
            push_image(registry, work, repository, "stable", seed=200 + index, layer_sizes=(4000,))
            if index < 5:
                push_image(registry, work, repository, "shared", seed=7, layer_sizes=(6000,))
        # A multi-platform index.
        push_image(registry, work, repositories[0], "multi", seed=9, platforms=("amd64", "arm64"))
        # A tag moved: its first manifest is left untagged.
        push_image(registry, work, repositories[1], "latest", seed=301, layer_sizes=(3500,))
        # A manifest deleted through the registry's API (its repository keeps other tags).
        doomed = push_image(registry, work, repositories[2], "old", seed=302, layer_sizes=(2500,))
        request = urllib.request.Request(
            f"http://{registry.address}/v2/{repositories[2]}/manifests/{doomed}", method="DELETE"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 202
    finally:
        registry.stop()
    # Straight into the bucket: a tag removed (its manifest left untagged), an
    # orphan blob, a dangling layer link, an empty and a garbage layer link
    # (the registry's GC reads neither), a stale upload, an abandoned multipart upload.
    tags_prefix = f"{V2}/repositories/{repositories[3]}/_manifests/tags/stable/"
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=tags_prefix)["Contents"]:
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    orphan = b"nobody links me" * 100
    orphan_digest = "sha256:" + hashlib.sha256(orphan).hexdigest()
    _put(s3, bucket, f"{V2}/blobs/sha256/{orphan_digest[7:9]}/{orphan_digest[7:]}/data", orphan)
    missing = "sha256:" + hashlib.sha256(b"gone").hexdigest()
    layers = f"{V2}/repositories/{repositories[4]}/_layers/sha256"
    _put(s3, bucket, f"{layers}/{missing[7:]}/link", missing.encode())
    empty_name, garbage_name = hashlib.sha256(b"e").hexdigest(), hashlib.sha256(b"g").hexdigest()
    _put(s3, bucket, f"{layers}/{empty_name}/link", b"")
    _put(s3, bucket, f"{layers}/{garbage_name}/link", b"this is not a digest at all")
    stale_uuid, abandoned_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    uploads = f"{V2}/repositories/{repositories[5]}/_uploads"
    ten_days_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    _put(
        s3, bucket, f"{uploads}/{stale_uuid}/startedat", ten_days_ago.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    )
    _put(s3, bucket, f"{uploads}/{stale_uuid}/data", b"x" * 1234)
    abandoned = s3.create_multipart_upload(Bucket=bucket, Key=f"{uploads}/{abandoned_uuid}/data")
    s3.upload_part(
        Bucket=bucket,
        Key=f"{uploads}/{abandoned_uuid}/data",
        UploadId=abandoned["UploadId"],
        PartNumber=1,
        Body=b"y" * 5000,
    )

    keys = _bucket(s3, bucket)
    expected_all = _dry_run(registry)
    expected_untagged = _dry_run(registry, "--delete-untagged")
    assert orphan_digest in expected_all and expected_all < expected_untagged
    cache = tmp_path / "cache"
    options = ["--config", str(registry.config_path), "-o", f"cachedir={cache}"]

    # usage.tsv alone: listings only, as the endpoint saw it.
    seen = len(moto.request_lines())
    with mounted(tmp_path / "m1", options) as mount:
        view = mount.path / "_registry"
        usage = {row[0]: tuple(int(x) for x in row[1:]) for row in _rows(view / "usage.tsv")}
    requests = bucket_requests(moto.request_lines()[seen:], bucket)
    assert requests["GET"] == requests["HEAD"] == 0, requests
    assert 0 < requests["LIST"] <= len(keys) // 1000 + 5, requests
    assert mount.request_counts()["list_objects_v2"] == requests["LIST"]
    expected_usage = _expected_usage(keys)
    assert {repo: usage[repo] for repo in expected_usage} == expected_usage
    blob_bytes = sum(size for key, size in keys.items() if key.startswith("blobs/") and key.endswith("/data"))
    assert usage["(total)"][5] == blob_bytes
    assert usage["(unreferenced)"][5] >= len(orphan)

    with mounted(tmp_path / "m2", options) as mount:
        view = mount.path / "_registry"
        assert sorted(os.listdir(view)) == ["gc", "summary.json", "uploads.tsv", "usage.tsv"]
        eligible = _rows(view / "gc/eligible.tsv")
        assert {row[0] for row in eligible} == expected_all
        for digest, size, _modified, path in eligible:
            assert Path(path).stat().st_size == int(size)
            assert path.endswith(f"/{digest[7:]}/data")
        assert {row[0] for row in _rows(view / "gc/eligible-untagged.tsv")} == expected_untagged
        # Distribution 3.x keeps what a tagged index reaches: its images' configs
        # and layers, which 2.8 collects (their manifests are untagged).
        children = _index_children(work / "oci-9")
        assert children and children <= expected_untagged
        v3 = {row[0] for row in _rows(view / "gc/eligible-untagged-v3.tsv")}
        assert v3 == expected_untagged - children
        untagged_v3 = {row[1] for row in _rows(view / "gc/untagged-manifests-v3.tsv")}
        untagged = {row[1] for row in _rows(view / "gc/untagged-manifests.tsv")}
        assert untagged_v3 < untagged and len(untagged - untagged_v3) == 2  # the two platforms' manifests
        dangling = _rows(view / "gc/dangling-links.tsv")
        assert [row[3] for row in dangling if row[1] == "layer"] == [missing]
        bad = {row[0].rsplit("/", 2)[1]: row[1] for row in _rows(view / "gc/bad-links.tsv")}
        assert bad == {empty_name: "empty", garbage_name: "not a digest"}
        upload_rows = _rows(view / "uploads.tsv")
        stale = [row for row in upload_rows if row[0] == "upload" and row[2] == stale_uuid]
        assert len(stale) == 1 and stale[0][7] == "stale" and stale[0][5] == "1234"
        multipart = [row for row in upload_rows if row[0] == "multipart"]
        assert [(row[1], row[2], row[5], row[6], row[8]) for row in multipart] == [
            (repositories[5], abandoned["UploadId"], "5000", "1", "registry")
        ]
        summary = json.loads((view / "summary.json").read_text())
        assert summary["gc_eligible_blobs"] == len(expected_all)
        assert summary["gc_untagged_eligible_blobs"] == len(expected_untagged)
        assert summary["bad_links"] == 2 and summary["registry_gc_would_stop_on"] == []
        stats = read_stats(mount.path)["reports"]
        fetched = stats["manifests"]["fetched"]
        assert fetched == summary["manifests_read"] > 0
        # The recipe: the registry is stopped; remove the eligible blobs through the mount.
        paths = [row[3] for row in eligible]
        subprocess.run(["xargs", "-d", "\n", "rm", "--"], input="\n".join(paths), text=True, check=True)
    after = _bucket(s3, bucket)
    for digest in expected_all:
        assert f"blobs/sha256/{digest[7:9]}/{digest[7:]}/data" not in after
    # The registry's own collector (a real run) finds nothing more to delete,
    # and every tag still pulls.
    assert _dry_run(registry, "--real") == set()
    registry = start_registry(moto.url, bucket, "/" + ROOT, tmp_path / "registry2")
    try:
        for repository in repositories:
            skopeo(
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                f"docker://{registry.address}/{repository}:latest",
                f"dir:{tmp_path / ('pull-' + repository.replace('/', '-'))}",
            )
        skopeo(
            "copy",
            "--quiet",
            "--all",
            "--src-tls-verify=false",
            f"docker://{registry.address}/{repositories[0]}:multi",
            f"dir:{tmp_path / 'pull-multi'}",
        )
    finally:
        registry.stop()

    # A remount with the same cache directory reads no manifest from S3, but
    # one whose cached file was damaged (it no longer hashes to its name).
    cached = sorted((cache / "manifests/sha256").iterdir())
    assert len(cached) > 10
    cached[0].write_bytes(b"tampered")
    seen = len(moto.request_lines())
    with mounted(tmp_path / "m3", options, check_clean=False) as mount:
        (mount.path / "_registry/gc/eligible.tsv").read_text()
        stats = read_stats(mount.path)["reports"]
        assert stats["manifests"]["fetched"] == 1, stats
        assert stats["manifests"]["disk_hits"] == len(cached) - 1, stats
    assert hashlib.sha256(cached[0].read_bytes()).hexdigest() == cached[0].name
    assert f"{cached[0]} does not match its digest: removed" in mount.stderr
    # As moto saw it: one GET (that manifest) and one of the garbage link the listing cannot prove.
    assert bucket_requests(moto.request_lines()[seen:], bucket)["GET"] == 2


def _blob(s3: Any, bucket: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _put(s3, bucket, f"{V2}/blobs/sha256/{digest[7:9]}/{digest[7:]}/data", data)
    return digest


def _link(s3: Any, bucket: str, repository: str, kind: str, digest: str) -> None:
    where = "_layers" if kind == "layer" else "_manifests/revisions"
    _put(s3, bucket, f"{V2}/repositories/{repository}/{where}/sha256/{digest[7:]}/link", digest.encode())


def _manifest(s3: Any, bucket: str, repository: str, layers: list[str], *, tag: str = "") -> str:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": layers[0],
                "size": 1,
            },
            "layers": [{"mediaType": "x", "digest": d, "size": 1} for d in layers[1:]],
        }
    ).encode()
    digest = _blob(s3, bucket, body)
    _link(s3, bucket, repository, "revision", digest)
    for layer in layers:
        _link(s3, bucket, repository, "layer", layer)
    if tag:
        tags = f"{V2}/repositories/{repository}/_manifests/tags/{tag}"
        _put(s3, bucket, f"{tags}/current/link", digest.encode())
        _put(s3, bucket, f"{tags}/index/sha256/{digest[7:]}/link", digest.encode())
    return digest


def test_bad_manifests_are_reported_and_reruns_read_only_new_manifests(
    moto: MotoServer, s3: Any, bucket: str, tmp_path: Path
) -> None:
    config_blob, layer = _blob(s3, bucket, b"{}"), _blob(s3, bucket, b"layer-1")
    kept = _manifest(s3, bucket, "app", [config_blob, layer], tag="v1")
    unlinked = _blob(s3, bucket, b"layer-of-nobody")
    # Manifest revisions the registry's collector would stop on: not JSON,
    # an unknown media type, over the size limit.
    not_json = _blob(s3, bucket, b"\x00not json")
    unknown = _blob(s3, bucket, json.dumps({"schemaVersion": 2, "mediaType": "text/plain"}).encode())
    huge = _blob(s3, bucket, b"{" + b" " * (4 * 1024 * 1024) + b"}")
    for digest in (not_json, unknown, huge):
        _link(s3, bucket, "app", "revision", digest)
    # Names no registry writes (a tab, a ".." component): left out of every
    # report, where a recipe could hand them to rm.
    _link(s3, bucket, "odd\tname", "layer", layer)
    _link(s3, bucket, "up/../../../../etc", "layer", layer)
    options = [
        "-o",
        f"regionendpoint={moto.url},region=us-east-1,metadata_ttl=1,cachedir={tmp_path / 'cache'},chunksize=5242880",
        f"{bucket}:/{ROOT}",
    ]
    with mounted(tmp_path / "m", options) as mount:
        view = mount.path / "_registry"
        eligible = {row[0] for row in _rows(view / "gc/eligible.tsv")}
        # Marked as the collector marks before it reads a manifest: the
        # unreadable ones themselves, and what the good one references.
        assert eligible == {unlinked}
        usage = {row[0]: row[1:] for row in _rows(view / "usage.tsv")}
        assert set(usage) == {"app", "(unreferenced)", "(total)"}
        assert kept not in eligible and layer not in eligible
        summary = json.loads((view / "summary.json").read_text())
        problems = {entry["digest"]: entry["problem"] for entry in summary["manifest_problems"]}
        assert problems == {
            not_json: "not JSON",
            unknown: "unrecognized manifest content type 'text/plain'",
            huge: f"over the manifest size limit ({4 * 1024 * 1024 + 2} bytes)",
        }
        assert len(summary["registry_gc_would_stop_on"]) == 3
        assert summary["keys_left_out"] == 2
        stats = read_stats(mount.path)["reports"]
        # Read-only, and not listed at the root without -o views.
        assert "_registry" not in os.listdir(mount.path)
        for change in (
            lambda: (view / "new").write_text("x"),
            lambda: (view / "usage.tsv").unlink(),
            lambda: (view / "gc/dir").mkdir(),
            lambda: (view / "usage.tsv").write_text("x"),
            lambda: os.rename(view / "usage.tsv", view / "moved"),
        ):
            with pytest.raises(OSError) as caught:
                change()
            assert caught.value.errno == errno.EROFS, caught.value
        # Fetched: the good one and the two unreadable ones; never the one over the limit.
        assert stats["manifests"]["fetched"] == 3
        # One new push; after the TTL the reports are computed again and
        # only the new manifest is fetched.
        newer = _manifest(s3, bucket, "app", [config_blob, unlinked], tag="v2")
        time.sleep(1.2)
        seen = len(moto.request_lines())
        eligible = {row[0] for row in _rows(view / "gc/eligible.tsv")}
        assert eligible == set()
        # The endpoint saw one GET: the new manifest (links are proven by their
        # ETags). moto logs a request after answering it: give its line time.
        deadline = time.monotonic() + 10
        while not bucket_requests(moto.request_lines()[seen:], bucket)["GET"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        assert bucket_requests(moto.request_lines()[seen:], bucket)["GET"] == 1
        again = read_stats(mount.path)["reports"]
        assert again["manifests"]["fetched"] == stats["manifests"]["fetched"] + 1, again
        assert again["computations"] == stats["computations"] + 1
        assert newer not in eligible
        # A file being written through this mount: its multipart upload is s3regfs's own.
        upload = f"{uuid.uuid4()}"
        data_path = mount.path / f"docker/registry/v2/repositories/app/_uploads/{upload}/data"
        data_path.parent.mkdir(parents=True)
        fd = os.open(data_path, os.O_WRONLY | os.O_CREAT)
        try:
            os.write(fd, b"z" * (6 * 1024 * 1024))
            deadline = time.monotonic() + 30
            while not s3.list_multipart_uploads(Bucket=bucket).get("Uploads") and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.2)  # past metadata_ttl: the next report scans again
            rows = [row for row in _rows(view / "uploads.tsv") if row[0] == "multipart"]
            assert [(row[1], row[8]) for row in rows] == [("app", "s3regfs")], rows
        finally:
            os.close(fd)


def test_the_mount_answers_while_a_report_is_computed_and_a_full_disk_is_enospc(tmp_path: Path) -> None:
    """Reports run beside the other requests; a report is read from its file
    without staying in the daemon's memory; their database on a full disk
    fails the open with ENOSPC, leaves nothing behind, and the mount goes on."""
    server = start_synth(20_000, list_delay=0.15)
    tiny = tmp_path / "tiny-disk"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], check=True)
    try:
        options = ["-o", f"regionendpoint={server.url},region=us-east-1,cachedir=none", server.bucket]
        with mounted(tmp_path / "m", options) as mount:
            view = mount.path / "_registry"
            with ThreadPoolExecutor(1) as pool:
                usage = pool.submit((view / "usage.tsv").read_text)
                stats_when(mount.path, lambda stats: stats["reports"]["stage"] == "scan", 30, 0.01)
                # The scan (about 21 pages, 0.15 s each) is under way; the mount answers meanwhile.
                assert sorted(os.listdir(mount.path)) == ["docker"]
                assert (mount.path / "docker/registry/v2/blobs").is_dir()
                assert _stage(mount.path) == "scan"
                lines = usage.result(timeout=120).splitlines()
            assert len(lines) == 2 + 100 + 2  # headers, 100 repositories, (unreferenced), (total)
            # A report larger than memory is served from its file without
            # staying in the daemon's resident set: read whole, still open,
            # its mapping holds at most the pages of the read in progress.
            with open(view / "gc/eligible.tsv", "rb") as report:
                text = report.read()
                assert len(text) > 256 * 1024 and text.count(b"\n") > 1000
                assert _resident_kib(mount.process.pid, "s3regfs-reports-", ".txt") <= 2 * 4, len(text)
        with mounted(tmp_path / "m2", ["-o", f"spooldir={tiny}", *options], check_clean=False) as mount:
            view = mount.path / "_registry"
            with pytest.raises(OSError) as caught:
                (view / "usage.tsv").read_text()
            assert caught.value.errno == errno.ENOSPC
            assert os.listdir(tiny) == []  # the half-built database is gone
            assert sorted(os.listdir(mount.path)) == ["docker"]
        assert "database or disk is full" in mount.stderr
    finally:
        subprocess.run(["umount", str(tiny)], check=False)
        server.stop()


def _index_children(layout: Path) -> set[str]:
    """The configs and layers of the images of the OCI layout's index."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    found: set[str] = set()
    for entry in index["manifests"]:
        document = json.loads((blobs / entry["digest"][7:]).read_text())
        for child in document.get("manifests", []):
            manifest = json.loads((blobs / child["digest"][7:]).read_text())
            found |= {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    return found


def _resident_kib(pid: int, prefix: str, suffix: str) -> int:
    """KiB of process *pid*'s mappings of files named *prefix*...*suffix*
    that are resident (its /proc smaps)."""
    total, counting = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:  # a mapping's header line
            name = os.path.basename(fields[5]) if len(fields) > 5 else ""
            counting = name.startswith(prefix) and name.endswith(suffix)
        elif counting and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def _stage(mountpoint: Path) -> str:
    return str(read_stats(mountpoint)["reports"]["stage"])
