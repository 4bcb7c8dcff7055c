# SPDX-License-Identifier: MIT
"""Memory budgets shared by all open files (read-ahead buffers, part uploads)."""

from __future__ import annotations

import trio


class MemoryBudget:
    """Bytes that all users together may hold; :attr:`peak` records the most held.

    No ``await`` happens between a check and the matching change, so takes and
    gives are atomic with respect to other trio tasks.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.peak = 0
        self._freed = trio.Event()

    def try_take(self, size: int, *, force: bool = False) -> bool:
        """Take *size* bytes if they fit now (or regardless, with *force*)."""
        if not force and self.used + size > self.total:
            return False
        self.used += size
        self.peak = max(self.peak, self.used)
        return True

    async def take(self, size: int) -> None:
        """Take *size* bytes, waiting for room; a take larger than the whole
        budget still goes, alone."""
        while self.used and self.used + size > self.total:
            await self._freed.wait()
        self.try_take(size, force=True)

    def give(self, size: int) -> None:
        if not size:
            return  # wakes nobody for nothing
        self.used -= size
        self._freed.set()
        self._freed = trio.Event()

    def freed_event(self) -> trio.Event:
        """The event the next :meth:`give` sets (take it before any checkpoint)."""
        return self._freed
