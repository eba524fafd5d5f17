"""Kernel lookup counts: how many references to each inode the kernel holds.

FUSE makes these the filesystem's job (every successful lookup, and every
readdirplus entry other than ``.``/``..``, is one more reference; ``forget``
drops them). A normal filesystem frees an unlinked inode when its count
reaches zero. Here inodes are numbers into an immutable tree and are never
freed, so the counts only feed the statistics (how many inodes the kernel
knows); a miscounted forget is logged, not fatal.

Concurrency: used from the trio loop only.
"""

from __future__ import annotations

import logging

__all__ = ["LookupCounts"]

log = logging.getLogger(__name__)


class LookupCounts:
    """Per-inode reference counts held by the kernel."""

    __slots__ = ("_counts", "inherited")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        # Taken over from a daemon that died: the kernel holds references it counted.
        self.inherited = False

    def add(self, ino: int, n: int = 1) -> None:
        self._counts[ino] = self._counts.get(ino, 0) + n

    def forget(self, ino: int, n: int) -> None:
        left = self._counts.get(ino, 0) - n
        if left > 0:
            self._counts[ino] = left
            return
        self._counts.pop(ino, None)
        if left < 0 and not self.inherited:
            log.warning("forget(%d, %d): the kernel held only %d", ino, n, left + n)

    def count(self, ino: int) -> int:
        return self._counts.get(ino, 0)

    def __len__(self) -> int:
        """How many inodes the kernel holds references to."""
        return len(self._counts)
