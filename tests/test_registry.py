# SPDX-License-Identifier: MIT
"""End to end: a real registry writes to moto with its S3 driver, skopeo pushes
generated images, and s3regfs mounts the bucket with the registry's own config.yml."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.regkit import Registry, push_image, registry_available, start_registry
from tests.util import MotoServer, fuse_test_marker, mounted

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
