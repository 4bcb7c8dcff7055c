# SPDX-License-Identifier: MIT
"""The demo: a local S3 endpoint, a real registry on it, two pushed images, and
s3regfs mounting them with the registry's own config.yml.

    python scripts/demo.py [start]   set everything up and mount at demo-work/mnt
    python scripts/demo.py stop      unmount and stop what start started

Everything listens on 127.0.0.1 only; the images are generated, not downloaded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.regkit import push_image, start_registry  # noqa: E402
from tests.util import free_port, s3_client, wait_for_port  # noqa: E402

WORK = REPO / "demo-work"
MOUNT = WORK / "mnt"
PIDS = WORK / "pids"
BUCKET = "registry"
ROOT = "/registry-v2"


def stop() -> None:
    if os.path.ismount(MOUNT):
        subprocess.run(["fusermount3", "-u", str(MOUNT)], check=False)
    if PIDS.exists():
        for line in PIDS.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line), signal.SIGTERM)
        PIDS.unlink()
    print("demo stopped")


def start() -> None:
    stop()
    WORK.mkdir(exist_ok=True)
    MOUNT.mkdir(exist_ok=True)
    port = free_port()
    moto_bin = Path(sys.executable).parent / "moto_server"
    with open(WORK / "moto.log", "wb") as log:
        moto = subprocess.Popen(
            [str(moto_bin), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    PIDS.write_text(f"{moto.pid}\n")
    wait_for_port(port, moto)
    endpoint = f"http://127.0.0.1:{port}"

    s3_client(endpoint).create_bucket(Bucket=BUCKET)

    registry = start_registry(endpoint, BUCKET, ROOT, WORK / "registry", detach=True)
    with open(PIDS, "a") as pids:
        pids.write(f"{registry.process.pid}\n")
    print(f"S3 endpoint (moto) on {endpoint}, registry on {registry.address}")
    digests = {
        "library/app:v1": push_image(registry, WORK, "library/app", "v1", seed=1),
        "team/tools/tool:1.0": push_image(
            registry, WORK, "team/tools/tool", "1.0", seed=2, docker_format=True
        ),
    }
    for name, digest in digests.items():
        print(f"pushed {name} ({digest})")

    launcher = "/usr/local/bin/s3regfs"
    command = [launcher] if os.path.exists(launcher) else [sys.executable, "-m", "s3regfs"]
    started = time.monotonic()
    subprocess.run([*command, "--config", str(registry.config_path), str(MOUNT)], check=True)
    print(
        f"mounted in {time.monotonic() - started:.2f} s with the registry's config.yml: {registry.config_path}"
    )
    v2 = MOUNT / "docker/registry/v2"
    tag = v2 / "repositories/library/app/_manifests/tags/v1/current/link"
    print(
        f"""
Try:
  ls {v2}
  find {MOUNT} -type f | head
  cat {tag}; echo
  sha256sum {v2}/blobs/sha256/*/*/data
  du -sh {v2}/blobs
  getfattr -d {tag}
  ls {MOUNT}/_images/library/app            # each repository as an OCI image layout
  skopeo inspect oci:{MOUNT}/_images/library/app:v1
  getfattr -n user.registry.verify {v2}/blobs/sha256/*/*/data
Stop with: bash scripts/demo.sh stop"""
    )


if __name__ == "__main__":
    action = sys.argv[1] if len(sys.argv) > 1 else "start"
    if action == "stop":
        stop()
    elif action == "start":
        start()
    else:
        sys.exit(__doc__)
