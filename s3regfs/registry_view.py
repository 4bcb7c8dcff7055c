# SPDX-License-Identifier: MIT
"""``MOUNT/_registry``: the operator's reports as read-only files.

A fixed tree of virtual nodes (``usage.tsv``, ``uploads.tsv``,
``summary.json``, ``gc/eligible.tsv``, ...; :data:`s3regfs.reports.REPORT_FILES`)
whose content :class:`s3regfs.reports.Reports` computes when a file is opened.
Reachable by name, listed at the root with ``-o views``; a file's size is
that of its last rendering (0 before the first), so it is read with
direct_io until its end, as /proc files are.
"""

from __future__ import annotations

from s3regfs.inode_cache import Namespace, Node
from s3regfs.reports import REPORT_FILES, Reports

VIEW_NAME = "_registry"


class RegistryView:
    """The ``_registry`` tree; see the module docstring."""

    def __init__(self, namespace: Namespace, reports: Reports) -> None:
        self.reports = reports
        self.root = namespace.new_virtual(VIEW_NAME, namespace.root, is_dir=True)
        self._children: dict[int, dict[str, Node]] = {self.root.ino: {}}
        self._report_names: dict[int, str] = {}
        for report in REPORT_FILES:
            parent = self.root
            *directories, name = report.split("/")
            for directory in directories:
                found = self._children[parent.ino].get(directory)
                if found is None:
                    found = namespace.new_virtual(directory, parent, is_dir=True)
                    self._children[parent.ino][directory] = found
                    self._children[found.ino] = {}
                parent = found
            node = namespace.new_virtual(name, parent, is_dir=False)
            self._children[parent.ino][name] = node
            self._report_names[node.ino] = report

    def owns(self, node: Node) -> bool:
        return node.ino in self._children or node.ino in self._report_names

    def children(self, node: Node) -> list[tuple[str, Node]]:
        return sorted(self._children[node.ino].items())

    def lookup(self, parent: Node, name: str) -> Node | None:
        return self._children.get(parent.ino, {}).get(name)

    def report_name(self, node: Node) -> str | None:
        """The report *node* shows (None for a directory)."""
        return self._report_names.get(node.ino)

    def refresh_size(self, node: Node) -> None:
        name = self._report_names.get(node.ino)
        if name is not None:
            node.size = self.reports.last_size(name)

    async def render(self, node: Node) -> str:
        """The file holding *node*'s report, computed if needed."""
        path = await self.reports.render(self._report_names[node.ino])
        node.size = self.reports.last_size(self._report_names[node.ino])
        return path
