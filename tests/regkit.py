# SPDX-License-Identifier: MIT
"""A real registry (Debian's docker-registry, CNCF Distribution) on a moto bucket,
and skopeo pushes of generated images; used by the end-to-end tests and the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.oci import write_image, write_index
from tests.util import CREDENTIALS, free_port, stop_process, wait_for_port

REGISTRY_BINARY = "docker-registry"


def registry_available() -> bool:
    return shutil.which(REGISTRY_BINARY) is not None and shutil.which("skopeo") is not None


def go_env() -> dict[str, str]:
    """The environment for Go programs: AWS_CA_BUNDLE makes the AWS SDK refuse to start."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE" and not k.startswith("REGISTRY_")}
    env.update(CREDENTIALS)
    return env


def _config(storage: str, port: int) -> str:
    """A registry config.yml around *storage* (the driver's section, indented
    under ``storage:``): quiet logs, deletes on, no upload purging."""
    return f"""\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
{storage}\
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
"""


def registry_config(endpoint: str, bucket: str, rootdirectory: str, port: int) -> str:
    return _config(
        f"""\
  s3:
    accesskey: {CREDENTIALS["AWS_ACCESS_KEY_ID"]}
    secretkey: {CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}
    region: us-east-1
    regionendpoint: {endpoint}
    bucket: {bucket}
    rootdirectory: {rootdirectory}
    secure: false
    v4auth: true
    chunksize: 5242880
    storageclass: STANDARD
  redirect:
    disable: true
""",
        port,
    )


@dataclass
class Registry:
    process: subprocess.Popen[bytes]
    port: int
    config_path: Path
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)


def filesystem_registry_config(rootdirectory: Path, port: int) -> str:
    """A registry that stores on a plain directory (here: an s3regfs mount)."""
    return _config(f"  filesystem:\n    rootdirectory: {rootdirectory}\n", port)


def start_registry(
    endpoint: str, bucket: str, rootdirectory: str, workdir: Path, *, detach: bool = False
) -> Registry:
    """A registry with its S3 driver on *bucket* at *endpoint*."""
    port = free_port()
    return run_registry(registry_config(endpoint, bucket, rootdirectory, port), port, workdir, detach=detach)


def run_registry(config_text: str, port: int, workdir: Path, *, detach: bool = False) -> Registry:
    """Start docker-registry with *config_text* (written to WORKDIR/config.yml)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yml"
    config_path.write_text(config_text)
    config_path.chmod(0o600)  # it holds credentials
    log_path = workdir / "registry.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=go_env(),
            start_new_session=detach,
        )
    registry = Registry(process, port, config_path, log_path)
    try:
        wait_for_port(port, process)
    except Exception:
        registry.stop()
        raise RuntimeError(f"docker-registry did not start:\n{log_path.read_text()}") from None
    return registry


def skopeo(*args: str, timeout: float = 300) -> str:
    """Run skopeo (without AWS_CA_BUNDLE, with no policy file); its stdout."""
    result = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, env=go_env(), timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def push_image(
    registry: Registry,
    workdir: Path,
    repository: str,
    tag: str,
    *,
    seed: int,
    docker_format: bool = False,
    layer_sizes: tuple[int, ...] = (2048, 300_000),
    platforms: tuple[str, ...] = (),
) -> str:
    """Generate an image (a multi-platform index with *platforms*) and push it
    with skopeo; returns the pushed manifest's digest."""
    layout = workdir / f"oci-{seed}"
    if platforms:
        write_index(layout, tag, tuple(seed * 100 + i for i in range(len(platforms))), platforms)
    else:
        write_image(layout, tag, seed=seed, layer_sizes=layer_sizes)
    digest_file = workdir / f"digest-{seed}-{tag}"
    options = ["--quiet", "--dest-tls-verify=false", "--digestfile", str(digest_file)]
    if platforms:
        options.append("--all")
    if docker_format:
        options += ["--format", "v2s2"]
    try:
        skopeo("copy", *options, f"oci:{layout}:{tag}", f"docker://{registry.address}/{repository}:{tag}")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{registry.log_path.read_text()}") from None
    return digest_file.read_text().strip()
