# SPDX-License-Identifier: MIT
"""End to end: a real registry writes to moto with its S3 driver, skopeo pushes
generated images, and s3regfs mounts the bucket with the registry's own config.yml."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakecloudfront import FakeCloudFront, new_key_pair
from tests.regkit import (
    Registry,
    filesystem_registry_config,
    go_env,
    push_image,
    registry_available,
    run_registry,
    skopeo,
    start_registry,
)
from tests.util import MotoServer, free_port, fuse_test_marker, mounted, settled_stats

pytestmark = [
    fuse_test_marker(),
    pytest.mark.registry,
    pytest.mark.skipif(not registry_available(), reason="docker-registry or skopeo is not installed"),
]

ROOT = "/registry-v2"


@pytest.fixture
def registry(moto: MotoServer, bucket: str, tmp_path: Path) -> Iterator[Registry]:
    reg = start_registry(moto.url, bucket, ROOT, tmp_path / "registry")
    yield reg
    reg.stop()


def bucket_keys(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    keys: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            keys[item["Key"][len(prefix) :]] = item["Size"]
    return keys


def test_mount_what_the_registry_wrote(s3: Any, bucket: str, registry: Registry, tmp_path: Path) -> None:
    app_digest = push_image(registry, tmp_path, "library/app", "v1", seed=1)
    tool_digest = push_image(registry, tmp_path, "team/tools/tool", "1.0", seed=2, docker_format=True)
    expected = bucket_keys(s3, bucket, ROOT.strip("/") + "/")
    assert any(key.endswith("/data") for key in expected)

    with mounted(tmp_path / "mnt", ["--config", str(registry.config_path)]) as mount:
        m = mount.path
        listing = subprocess.run(
            ["find", str(m), "-type", "f", "-printf", "%P\t%s\n"], check=True, capture_output=True, text=True
        ).stdout
        found = {line.split("\t")[0]: int(line.split("\t")[1]) for line in listing.splitlines()}
        assert found == expected

        v2 = m / "docker/registry/v2"
        blob_files = sorted((v2 / "blobs/sha256").glob("*/*/data"))
        assert len(blob_files) >= 8  # two images: 2 layers + config + manifest each
        for data in blob_files:
            assert hashlib.sha256(data.read_bytes()).hexdigest() == data.parent.name
            assert data.parent.parent.name == data.parent.name[:2]

        app = v2 / "repositories/library/app/_manifests/tags/v1/current/link"
        tool = v2 / "repositories/team/tools/tool/_manifests/tags/1.0/current/link"
        assert app.read_text() == app_digest
        assert tool.read_text() == tool_digest
        for repository in ("library/app", "team/tools/tool"):
            for link in (v2 / "repositories" / repository / "_layers/sha256").glob("*/link"):
                digest = link.read_text()
                assert digest == "sha256:" + link.parent.name
                assert (v2 / "blobs/sha256" / digest[7:9] / digest[7:] / "data").is_file()


def test_registry_writes_through_the_mount(moto: MotoServer, s3: Any, bucket: str, tmp_path: Path) -> None:
    """A registry with the filesystem driver on the mount writes the layout the S3 driver reads."""
    chunk = 5 * 1024 * 1024
    opts = ["-o", f"regionendpoint={moto.url},region=us-east-1,chunksize={chunk}", f"{bucket}:{ROOT}"]
    with mounted(tmp_path / "mnt", opts) as mount:
        port = free_port()
        writer = run_registry(filesystem_registry_config(mount.path, port), port, tmp_path / "fs-registry")
        try:
            big = push_image(
                writer, tmp_path, "library/app", "v1", seed=11, layer_sizes=(2 * chunk + 12345, 4096)
            )
            doomed = push_image(writer, tmp_path, "library/old", "v0", seed=12, layer_sizes=(70_000,))
            pulled = tmp_path / "pulled"
            skopeo(
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                f"docker://{writer.address}/library/app:v1",
                f"dir:{pulled}",
            )
            assert "sha256:" + hashlib.sha256((pulled / "manifest.json").read_bytes()).hexdigest() == big

            # A second registry, with its S3 driver on the same bucket and root, reads it all.
            reader = start_registry(moto.url, bucket, ROOT, tmp_path / "s3-registry")
            try:
                again = tmp_path / "again"
                skopeo(
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    f"docker://{reader.address}/library/app:v1",
                    f"dir:{again}",
                )
                assert (again / "manifest.json").read_bytes() == (pulled / "manifest.json").read_bytes()
                for layer in json.loads((again / "manifest.json").read_text())["layers"]:
                    data = (again / layer["digest"].split(":")[1]).read_bytes()
                    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
                    assert len(data) == layer["size"]
            finally:
                reader.stop()

            # Delete a manifest, stop the registry, collect garbage through the mount.
            request = urllib.request.Request(
                f"http://{writer.address}/v2/library/old/manifests/{doomed}", method="DELETE"
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 202
        finally:
            writer.stop()
        doomed_blobs = json.loads((tmp_path / "oci-12" / "blobs/sha256" / doomed.split(":")[1]).read_text())
        doomed_digests = [
            doomed_blobs["config"]["digest"],
            *(layer["digest"] for layer in doomed_blobs["layers"]),
        ]

        def blob_key(digest: str) -> str:
            return f"{ROOT.strip('/')}/docker/registry/v2/blobs/sha256/{digest[7:9]}/{digest[7:]}/data"

        assert all(s3.head_object(Bucket=bucket, Key=blob_key(d)) for d in doomed_digests)
        gc = subprocess.run(
            ["docker-registry", "garbage-collect", str(writer.config_path)],
            capture_output=True,
            text=True,
            timeout=300,
            env=go_env(),
        )
        assert gc.returncode == 0, gc.stdout + gc.stderr
    remaining = set(bucket_keys(s3, bucket, ROOT.strip("/") + "/"))
    for digest in doomed_digests:
        assert blob_key(digest)[len(ROOT.strip("/")) + 1 :] not in remaining
    for layer in json.loads((pulled / "manifest.json").read_text())["layers"]:
        assert blob_key(layer["digest"])[len(ROOT.strip("/")) + 1 :] in remaining
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_registry_facts_verification_and_usage(
    s3: Any, bucket: str, registry: Registry, tmp_path: Path
) -> None:
    digest = push_image(registry, tmp_path, "library/app", "v1", seed=5)
    manifest_doc = json.loads((tmp_path / "oci-5/blobs/sha256" / digest[7:]).read_text())
    layer = manifest_doc["layers"][-1]["digest"]
    v2 = "docker/registry/v2"

    def blob(root: Path, d: str) -> Path:
        return root / v2 / "blobs/sha256" / d[7:9] / d[7:] / "data"

    with mounted(tmp_path / "mnt", ["--config", str(registry.config_path)]) as mount:
        m = mount.path
        manifest = blob(m, digest)
        assert os.getxattr(manifest, "user.registry.digest").decode() == digest
        assert (
            os.getxattr(manifest, "user.registry.mediatype").decode()
            == "application/vnd.oci.image.manifest.v1+json"
        )
        with pytest.raises(OSError):
            os.getxattr(blob(m, layer), "user.registry.mediatype")  # a layer is no manifest
        listed = set(os.listxattr(blob(m, layer)))
        assert "user.registry.digest" in listed
        assert not listed & {"user.registry.mediatype", "user.registry.verify"}  # they read the blob
        link = m / v2 / "repositories/library/app/_manifests/tags/v1/current/link"
        assert os.getxattr(link, "user.registry.target").decode() == digest
        assert os.getxattr(link, "user.registry.target_exists") == b"true"
        assert {"user.registry.target", "user.registry.target_exists"} <= set(os.listxattr(link))
        assert os.getxattr(blob(m, layer), "user.registry.verify") == b"ok"
        sizes = subprocess.run(
            ["find", str(m), "-type", "f", "-printf", "%s\n"], check=True, capture_output=True, text=True
        )
        seen = sum(int(n) for n in sizes.stdout.split())
        st = os.statvfs(m)
        assert (st.f_blocks - st.f_bfree) * st.f_frsize >= seen  # used: what the listings saw
        assert st.f_files - st.f_ffree == len(sizes.stdout.split())

    # Corrupt the layer behind the mount's back: same size, other bytes.
    key = f"{ROOT.strip('/')}/{v2}/blobs/sha256/{layer[7:9]}/{layer[7:]}/data"
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(b ^ 0xFF for b in original))
    with mounted(
        tmp_path / "mnt", ["--config", str(registry.config_path), "-o", "verify"], check_clean=False
    ) as mount:
        assert os.getxattr(blob(mount.path, layer), "user.registry.verify") == b"mismatch"
        for _ in range(2):  # and again: a second open must not read it from the page cache
            with pytest.raises(OSError) as info:
                blob(mount.path, layer).read_bytes()
            assert info.value.errno == errno.EIO
        assert blob(mount.path, digest).read_bytes()  # intact blobs read fine
    assert "does not match its digest" in mount.stderr


def _manifest_digest(directory: Path) -> str:
    return "sha256:" + hashlib.sha256((directory / "manifest.json").read_bytes()).hexdigest()


def test_images_view(moto: MotoServer, s3: Any, bucket: str, registry: Registry, tmp_path: Path) -> None:
    app = push_image(registry, tmp_path, "library/app", "v1", seed=21)
    app_again = push_image(registry, tmp_path, "library/app", "v2", seed=22)
    tools = push_image(registry, tmp_path, "team/tools", "1.0", seed=23)
    tool = push_image(registry, tmp_path, "team/tools/tool", "2.0", seed=24, docker_format=True)
    skopeo(  # a second tag on an existing image
        "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
        f"docker://{registry.address}/library/app:v1", f"docker://{registry.address}/library/app:latest",
    )  # fmt: skip
    multi = push_image(registry, tmp_path, "library/multi", "1", seed=25, platforms=("amd64", "arm64"))
    push_image(
        registry, tmp_path, "library/app/blobs", "x", seed=26
    )  # a sub-repository named like the layout
    with mounted(tmp_path / "mnt", ["--config", str(registry.config_path)]) as mount:
        m = mount.path
        assert "_images" not in os.listdir(m)  # find, du, rsync see only the registry's objects
        view = m / "_images"
        assert sorted(os.listdir(view)) == ["library", "team"]
        app_dir = view / "library/app"
        assert sorted(os.listdir(app_dir)) == ["_tags", "blobs", "index.json", "oci-layout"]
        index = json.loads((app_dir / "index.json").read_text())
        refs = {
            entry["annotations"]["org.opencontainers.image.ref.name"]: entry for entry in index["manifests"]
        }
        assert refs["v1"]["digest"] == app and refs["v2"]["digest"] == app_again
        assert refs["latest"]["digest"] == app
        assert refs["v1"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert sorted(os.listdir(view / "team/tools")) == [
            "_tags",
            "blobs",
            "index.json",
            "oci-layout",
            "tool",
        ]
        assert os.listdir(app_dir / "blobs") == ["sha256"]  # the layout wins
        assert os.getxattr(app_dir, "user.registry.tags") == b"latest\nv1\nv2"
        assert int(os.getxattr(app_dir, "user.registry.size")) > 300_000

        # The view's blobs are the raw blob files: same inode, counted once.
        raw = m / "docker/registry/v2/blobs/sha256" / app[7:9] / app[7:] / "data"
        shown = app_dir / "blobs/sha256" / app[7:]
        assert os.stat(raw).st_ino == os.stat(shown).st_ino
        assert os.stat(shown).st_nlink >= 2

        # Straight from the bucket with skopeo: oci: for OCI images, dir: for every image.
        out = tmp_path / "out-app"
        skopeo("copy", "--quiet", f"oci:{app_dir}:v1", f"dir:{out}")
        assert _manifest_digest(out) == app
        out = tmp_path / "out-tools"
        skopeo("copy", "--quiet", f"oci:{view / 'team/tools'}:1.0", f"dir:{out}")
        assert _manifest_digest(out) == tools
        out = tmp_path / "out-tool"
        skopeo("copy", "--quiet", f"dir:{view / 'team/tools/tool/_tags/2.0'}", f"dir:{out}")
        assert _manifest_digest(out) == tool  # Docker schema 2: only dir: takes it
        if shutil.which("umoci"):
            listed = subprocess.run(
                ["umoci", "ls", "--layout", str(app_dir)], check=True, capture_output=True, text=True
            ).stdout.split()
            assert sorted(listed) == ["latest", "v1", "v2"]
        inspected = json.loads(skopeo("inspect", f"oci:{app_dir}:v1"))
        assert inspected["Digest"] == app
        backup = tmp_path / "backup-v1"
        subprocess.run(["cp", "-r", str(app_dir / "_tags/v1"), str(backup)], check=True)
        assert _manifest_digest(backup) == app
        for layer in json.loads((backup / "manifest.json").read_text())["layers"]:
            data = (backup / layer["digest"].split(":")[1]).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
        multi_dir = view / "library/multi"
        index_entry = json.loads((multi_dir / "index.json").read_text())["manifests"][0]
        assert index_entry["mediaType"] == "application/vnd.oci.image.index.v1+json"
        out = tmp_path / "out-multi"
        skopeo("copy", "--quiet", "--all", f"oci:{multi_dir}:1", f"dir:{out}")
        assert _manifest_digest(out) == multi
        out = tmp_path / "out-multi-dir"
        skopeo("copy", "--quiet", "--all", f"dir:{multi_dir / '_tags/1'}", f"dir:{out}")
        assert _manifest_digest(out) == multi

        # Out of the view into a second registry, and pulled back from it.
        second = start_registry(moto.url, bucket, "/second-registry", tmp_path / "second")
        try:
            target = f"docker://{second.address}/copied/app:v1"
            skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{app_dir}:v1", target)
            out = tmp_path / "pulled-back"
            skopeo("copy", "--quiet", "--src-tls-verify=false", target, f"dir:{out}")
            assert _manifest_digest(out) == app
        finally:
            second.stop()

        # Read-only.
        for attempt in (
            lambda: (app_dir / "new").write_bytes(b"x"),
            lambda: (app_dir / "newdir").mkdir(),
            lambda: os.unlink(app_dir / "index.json"),
            lambda: os.rename(app_dir / "index.json", app_dir / "other.json"),
            lambda: open(shown, "r+b"),
            lambda: os.truncate(shown, 0),
            lambda: open(raw, "r+b"),  # the same file by its raw name: a stored blob is immutable
            lambda: os.rename(m / "docker", m / "_images"),
        ):
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS
        # The view's own files: every change is EROFS, metadata included.
        for change in (
            lambda: os.chmod(app_dir / "index.json", 0o600),
            lambda: os.utime(app_dir / "index.json", (1, 1)),
            lambda: os.setxattr(app_dir / "index.json", "user.x", b"1"),
            lambda: os.chmod(app_dir, 0o700),
        ):
            with pytest.raises(OSError) as info:
                change()
            assert info.value.errno == errno.EROFS
        # A blob is one file under two names (its raw path and the view's):
        # a mode or time change applies to both, as for any hard link, and is
        # kept in memory; write permission is never shown; S3 objects carry no
        # extended attributes of ours (ENOTSUP).
        os.chmod(shown, 0o640)
        assert stat.S_IMODE(os.stat(raw).st_mode) == 0o440
        assert stat.S_IMODE(os.stat(shown).st_mode) == 0o440
        os.utime(raw, (1_600_000_000, 1_600_000_000))
        assert os.stat(shown).st_mtime == 1_600_000_000
        assert os.stat(raw).st_ino == os.stat(shown).st_ino
        with pytest.raises(OSError) as info:
            os.setxattr(raw, "user.x", b"1")
        assert info.value.errno == errno.ENOTSUP


def test_images_view_follows_tags_and_shows_with_option(registry: Registry, tmp_path: Path) -> None:
    push_image(registry, tmp_path, "library/app", "v1", seed=31)
    options = ["--config", str(registry.config_path), "-o", "images,metadata_ttl=1"]
    with mounted(tmp_path / "mnt", options) as mount:
        # -o images (the older name of -o views): both views in the root's listing too.
        assert {"_images", "_registry"} <= set(os.listdir(mount.path))
        index = mount.path / "_images/library/app/index.json"
        tags = [
            m["annotations"]["org.opencontainers.image.ref.name"]
            for m in json.loads(index.read_text())["manifests"]
        ]
        assert tags == ["v1"]
        new = push_image(registry, tmp_path, "library/app", "v2", seed=32)
        time.sleep(1.5)  # metadata_ttl
        manifests = json.loads(index.read_text())["manifests"]
        assert {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in manifests}[
            "v2"
        ] == new


MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def get_manifest(registry: Registry, repository: str, reference: str) -> tuple[int, str]:
    """GET a manifest: the HTTP status and the digest the registry answered with."""
    request = urllib.request.Request(
        f"http://{registry.address}/v2/{repository}/manifests/{reference}", headers={"Accept": MANIFEST_TYPES}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            return response.status, "sha256:" + hashlib.sha256(body).hexdigest()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def test_a_tag_retagged_by_another_registry_keeps_answering(
    moto: MotoServer, bucket: str, registry: Registry, tmp_path: Path
) -> None:
    """A registry on the mount (filesystem driver) keeps answering 200 for a tag
    that another registry (S3 driver, same bucket) moves to a new image."""
    first = push_image(registry, tmp_path, "library/app", "latest", seed=21)
    opts = ["-o", f"regionendpoint={moto.url},region=us-east-1,metadata_ttl=20", f"{bucket}:{ROOT}"]
    with mounted(tmp_path / "mnt", opts, check_clean=False) as mount:
        port = free_port()
        on_mount = run_registry(filesystem_registry_config(mount.path, port), port, tmp_path / "fs-registry")
        try:
            assert get_manifest(on_mount, "library/app", "latest") == (200, first)
            second = push_image(registry, tmp_path, "library/app", "latest", seed=22)
            assert second != first
            answers = []
            for _ in range(15):
                answers.append(get_manifest(on_mount, "library/app", "latest"))
                time.sleep(0.2)
            assert all(status == 200 for status, _ in answers), [s for s, _ in answers]
            assert answers[-1][1] == second
            # The old manifest stays reachable by digest, the new one too.
            assert get_manifest(on_mount, "library/app", first) == (200, first)
            assert get_manifest(on_mount, "library/app", second) == (200, second)
        finally:
            on_mount.stop()
    assert "stale" not in mount.stderr.lower()


def _copy_every_tag(view: Path, tags: dict[str, str], out: Path) -> None:
    """skopeo copy oci:VIEW:TAG for every tag; the manifest and every layer checked by digest."""
    out.mkdir(parents=True, exist_ok=True)
    for tag, digest in tags.items():
        target = out / tag
        skopeo("copy", "--quiet", f"oci:{view}:{tag}", f"dir:{target}")
        manifest = (target / "manifest.json").read_bytes()
        assert "sha256:" + hashlib.sha256(manifest).hexdigest() == digest
        for layer in json.loads(manifest)["layers"]:
            data = (target / layer["digest"].split(":")[1]).read_bytes()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]


def test_skopeo_copies_from_the_images_view_through_cloudfront(
    moto: MotoServer, s3: Any, bucket: str, registry: Registry, tmp_path: Path
) -> None:
    tags = {"v1": push_image(registry, tmp_path, "library/edge", "v1", seed=51)}
    tags["v2"] = push_image(registry, tmp_path, "library/edge", "v2", seed=52, layer_sizes=(900_000, 3000))
    key, key_path = new_key_pair(tmp_path)
    with FakeCloudFront({"K1": key.public_key()}) as cloudfront:
        data_keys = [k for k in bucket_keys(s3, bucket, "") if k.endswith("/data")]
        cloudfront.warm(s3, bucket, data_keys)
        options = [
            "--config",
            str(registry.config_path),
            "-o",
            f"cache={tmp_path / 'cache'},cloudfront_baseurl={cloudfront.base_url},"
            f"cloudfront_privatekey={key_path},cloudfront_keypairid=K1",
        ]
        seen = len(moto.request_lines())
        with mounted(tmp_path / "mnt", options) as mount:
            _copy_every_tag(mount.path / "_images/library/edge", tags, tmp_path / "out")
            stats = settled_stats(mount.path)
        # Layers and configs came from the edge (the view reads the manifests
        # themselves from S3, as the registry does), and went into the cache.
        manifests = {digest.split(":")[1] for digest in tags.values()}
        blob_gets = [
            line
            for line in moto.request_lines()[seen:]
            if "/data HTTP" in line and f"GET /{bucket}/" in line and not any(m in line for m in manifests)
        ]
        assert blob_gets == []
        served = cloudfront.served()
        assert served and all(k.startswith(ROOT.strip("/") + "/docker/registry/v2/blobs/") for k in served)
        assert stats["cloudfront"]["fallbacks"] == 0 and stats["blob_cache"]["fills"] >= 4, stats


def test_skopeo_copies_from_the_images_view_through_the_blob_cache(
    moto: MotoServer, bucket: str, registry: Registry, tmp_path: Path
) -> None:
    tags = {"v1": push_image(registry, tmp_path, "library/cached", "v1", seed=41)}
    tags["v2"] = push_image(registry, tmp_path, "library/cached", "v2", seed=42, layer_sizes=(700_000,))
    options = ["--config", str(registry.config_path), "-o", f"cache={tmp_path / 'cache'}"]
    for attempt in ("fill", "cached"):
        seen = len(moto.request_lines())
        with mounted(tmp_path / f"mnt-{attempt}", options) as mount:
            _copy_every_tag(mount.path / "_images/library/cached", tags, tmp_path / f"out-{attempt}")
            stats = settled_stats(mount.path)["blob_cache"]
        # Layers and configs come from the cache; the view reads the manifests
        # themselves (small) for index.json, outside of it.
        manifests = {digest.split(":")[1] for digest in tags.values()}
        blob_gets = sum(
            1
            for line in moto.request_lines()[seen:]
            if "/data HTTP" in line and f"GET /{bucket}/" in line and not any(m in line for m in manifests)
        )
        if attempt == "fill":
            assert stats["fills"] >= 4 and blob_gets > 0, stats
        else:
            assert blob_gets == 0 and stats["hits"] >= 4, stats
