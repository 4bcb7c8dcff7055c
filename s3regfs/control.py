# SPDX-License-Identifier: MIT
"""``MOUNT/.s3regfs``: the mount's own files, made up in memory.

``stats`` is the JSON of the handlers' figures (requests, bytes, caches, open
files, memory), ``metrics`` the same as OpenMetrics text
(:mod:`s3regfs.metrics`).  Reachable by name, never listed at the root (so
``find`` and ``du`` see only the registry's objects); read-only; no
``user.s3.*`` attributes (they name no key).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from s3regfs.inode_cache import Namespace, Node
from s3regfs.metrics import render as render_metrics

CONTROL_NAME = ".s3regfs"


@dataclass(frozen=True)
class ControlFiles:
    """``.s3regfs`` with its ``stats`` (JSON) and ``metrics`` (OpenMetrics)
    files: reachable by name, never listed at the root."""

    directory: Node
    stats: Node
    metrics: Node

    @classmethod
    def create(cls, namespace: Namespace) -> ControlFiles:
        directory = namespace.new_virtual(CONTROL_NAME, namespace.root, is_dir=True)
        return cls(
            directory,
            namespace.new_virtual("stats", directory, is_dir=False),
            namespace.new_virtual("metrics", directory, is_dir=False),
        )

    def files(self) -> dict[str, Node]:
        return {"metrics": self.metrics, "stats": self.stats}

    def owns(self, node: Node) -> bool:
        """Whether *node* is ``.s3regfs`` or one of its files."""
        return node is self.directory or node.parent is self.directory

    def content(self, node: Node, stats: Callable[[], Mapping[str, object]]) -> bytes:
        """What the file *node* of ``.s3regfs`` holds now."""
        if node is self.metrics:
            return render_metrics(stats)
        return (json.dumps(stats(), indent=2, sort_keys=True) + "\n").encode()
