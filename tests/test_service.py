# SPDX-License-Identifier: MIT
"""Running as a service: the systemd units, and mount(8) through mount.fuse3."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.util import REPO, fuse_test_marker, mount_env

UNITS = REPO / "systemd"
LAUNCHER = "/usr/local/bin/s3regfs"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.skipif(not os.path.exists(LAUNCHER), reason="the launcher is not installed (scripts/install.sh)")
@pytest.mark.parametrize(
    ("unit", "as_name"),
    [("s3regfs@.service", "s3regfs@mnt-registry.service"), ("mnt-registry.mount", "mnt-registry.mount")],
)
def test_units_verify(tmp_path: Path, unit: str, as_name: str) -> None:
    target = tmp_path / as_name  # a template is verified as one of its instances
    shutil.copy(UNITS / unit, target)
    result = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert str(target) not in result.stderr, result.stderr  # no warning about our unit


@fuse_test_marker()
@pytest.mark.skipif(
    shutil.which("mount.fuse3") is None or not os.path.exists(LAUNCHER), reason="no mount.fuse3 or launcher"
)
def test_mount_and_umount_through_mount8(
    s3: Any, bucket: str, endpoint_opts: list[str], tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="root/docker/hello", Body=b"hi")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    options = endpoint_opts[1] + ",_netdev,nofail,ro,default_permissions"
    env = mount_env()
    result = subprocess.run(
        ["mount", "-t", "fuse.s3regfs", f"{bucket}:/root", str(mnt), "-o", options],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    try:
        assert os.listdir(mnt) == ["docker"]
        assert (mnt / "docker/hello").read_bytes() == b"hi"
        fields = subprocess.run(
            ["findmnt", "-no", "SOURCE,FSTYPE,OPTIONS", str(mnt)], capture_output=True, text=True
        ).stdout.split()
        assert fields[0] == f"{bucket}:/root" and fields[1] == "fuse.s3regfs" and "ro" in fields[2].split(",")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and str(mnt).encode() in Path("/proc/mounts").read_bytes():
        time.sleep(0.1)
    assert not os.path.ismount(mnt)
