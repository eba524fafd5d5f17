"""What a mount serves, seen from the FUSE layer: names, nodes and bytes (ratarmount's
``MountSource`` idea).

`MountSource` is the narrow interface the Operations class (`fusesnap.fuse.operations`)
maps onto FUSE requests; `ImageSource` implements it over a `MergedTree` and a
`ChunkCache`. Nothing here knows about pyfuse3, so it is tested without a mount.

Directory offsets: `MountSource.entries` numbers a directory's entries ``.``
(0), ``..`` (1), then its children in the tree's order (name order) from 2;
the tree is immutable, so an offset means the same entry for the whole mount.
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Iterator
from itertools import islice
from typing import Protocol

from fusesnap.fs import ROOT_INO, MergedTree, Node, TreeStats
from fusesnap.fuse.cache import ChunkCache
from fusesnap.index import EntryType

__all__ = ["ImageSource", "MountSource"]


class MountSource(Protocol):
    """A read-only tree of inodes (numbered by the source, root 1) and their contents.

    Errors: `NotFoundError` for an unknown inode, `NotADirectoryError` /
    `IsADirectoryError` (with their errno) for a wrong type, anything else is a
    failure of the source (the FUSE layer logs it and answers EIO).
    """

    @property
    def stats(self) -> TreeStats: ...

    @property
    def inode_count(self) -> int: ...

    @property
    def has_xattrs(self) -> bool:
        """Whether any node has an extended attribute."""
        ...

    def node(self, ino: int) -> Node:
        """The node numbered ``ino``."""
        ...

    def lookup(self, parent: int, name: str) -> Node | None:
        """``name`` in directory ``parent`` (``.`` and ``..`` included); None if absent."""
        ...

    def entries(self, ino: int, start: int = 0) -> Iterator[tuple[str, Node]]:
        """Directory ``ino``'s entries from offset ``start`` (module docstring)."""
        ...

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of regular file ``node`` at ``offset`` (short at EOF)."""
        ...


class ImageSource:
    """`MountSource` over an image's merged tree, reading through ``cache``.

    Concurrency: the tree is immutable and the cache lives on the trio loop, so
    one `ImageSource` serves any number of concurrent requests of one loop.
    """

    def __init__(self, tree: MergedTree, cache: ChunkCache) -> None:
        self.tree = tree
        self.cache = cache
        # At mount time rather than in a request.
        self._has_xattrs = tree.has_xattrs()

    @property
    def has_xattrs(self) -> bool:
        return self._has_xattrs

    @property
    def stats(self) -> TreeStats:
        return self.tree.stats

    @property
    def inode_count(self) -> int:
        return len(self.tree)

    def node(self, ino: int) -> Node:
        return self.tree.node(ino)

    def _directory(self, ino: int) -> Node:
        node = self.tree.node(ino)
        if not node.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, f"inode {ino}: not a directory")
        return node

    def parent(self, ino: int) -> Node:
        """The directory holding directory ``ino`` (the root's is the root)."""
        if ino == ROOT_INO:
            return self.tree.root
        return self.tree.lookup(posixpath.dirname(self.tree.path_of(ino)))

    def lookup(self, parent: int, name: str) -> Node | None:
        directory = self._directory(parent)
        if name == ".":
            return directory
        if name == "..":
            return self.parent(parent)
        assert directory.children is not None
        child = directory.children.get(name)
        return None if child is None else self.tree.node(child)

    def entries(self, ino: int, start: int = 0) -> Iterator[tuple[str, Node]]:
        directory = self._directory(ino)
        assert directory.children is not None
        if start <= 0:
            yield ".", directory
        if start <= 1:
            yield "..", self.parent(ino)
        for name, child in islice(directory.children.items(), max(start - 2, 0), None):
            yield name, self.tree.node(child)

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        if node.is_dir:
            raise IsADirectoryError(errno.EISDIR, f"inode {node.ino}: is a directory")
        if node.entry.type is not EntryType.FILE:
            return b""  # devices and fifos never reach us: the kernel serves them itself
        return await self.cache.read(node.entry, offset, size)
