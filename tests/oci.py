# SPDX-License-Identifier: MIT
"""Write small, valid OCI image layouts for tests and the demo (nothing is downloaded).

``python -m tests.oci DIR TAG [SEED]`` writes one image to DIR.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def _layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip'd tar of *files* and the digest of the uncompressed tar (its diff id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    compressed = gzip.compress(tar_bytes, mtime=0)
    return compressed, "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def write_image(
    dest: Path,
    tag: str | None,
    seed: int = 0,
    layer_sizes: tuple[int, ...] = (2048, 300_000),
    architecture: str = "amd64",
) -> Descriptor:
    """Write (or add to) an OCI layout at *dest* with one image tagged *tag*.

    Layers hold pseudo-random bytes from *seed*, so different seeds give
    different blobs.  Returns the manifest's descriptor.
    """
    rng = random.Random(seed)
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes, media_type: str) -> Descriptor:
        hexdigest = hashlib.sha256(data).hexdigest()
        (blobs / hexdigest).write_bytes(data)
        return Descriptor(media_type, "sha256:" + hexdigest, len(data))

    layers: list[Descriptor] = []
    diff_ids: list[str] = []
    for index, size in enumerate(layer_sizes):
        data, diff_id = _layer(
            {f"data/file{index}.bin": rng.randbytes(size), "etc/tag": (tag or architecture).encode()}
        )
        layers.append(put(data, LAYER_TYPE))
        diff_ids.append(diff_id)
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Labels": {"seed": str(seed)}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_desc = put(json.dumps(config, sort_keys=True).encode(), CONFIG_TYPE)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config_desc.as_json(),
        "layers": [layer.as_json() for layer in layers],
    }
    manifest_desc = put(json.dumps(manifest, sort_keys=True).encode(), MANIFEST_TYPE)
    if tag is not None:
        tag_image(dest, tag, manifest_desc)
    return manifest_desc


def write_index(dest: Path, tag: str, seeds: tuple[int, ...], architectures: tuple[str, ...]) -> Descriptor:
    """A multi-platform OCI index of one image per (seed, architecture), tagged *tag*."""
    entries = []
    for seed, architecture in zip(seeds, architectures, strict=True):
        desc = write_image(dest, None, seed=seed, layer_sizes=(4096,), architecture=architecture)
        entries.append(desc.as_json() | {"platform": {"architecture": architecture, "os": "linux"}})
    index = {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": entries}
    data = json.dumps(index, sort_keys=True).encode()
    hexdigest = hashlib.sha256(data).hexdigest()
    (dest / "blobs" / "sha256" / hexdigest).write_bytes(data)
    desc = Descriptor(INDEX_TYPE, "sha256:" + hexdigest, len(data))
    tag_image(dest, tag, desc)
    return desc


def tag_image(dest: Path, tag: str, manifest_desc: Descriptor) -> None:
    """Name *manifest_desc* *tag* in the layout's index.json."""
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index_path = dest / "index.json"
    index = (
        json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    )
    entry = manifest_desc.as_json() | {"annotations": {"org.opencontainers.image.ref.name": tag}}
    index["manifests"] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ] + [entry]
    index_path.write_text(json.dumps(index, indent=2))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m tests.oci DIR TAG [SEED]")
    print(write_image(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) == 4 else 0).digest)
