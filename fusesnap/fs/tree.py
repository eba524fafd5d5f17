"""The merged root filesystem of an image: its layer indexes stacked by the OCI rules.

`MergedTree.build` merges `LayerIndex` records bottom layer first (the OCI
rules, in `fusesnap.fs.merge`) without reading any file data, then freezes the
result into inode-numbered nodes that the FUSE Operations class and the
``ls``/``cat``/``diff`` commands serve::

    layer 0   etc/  etc/passwd  etc/shadow  bin/  bin/ls  bin/sh
    layer 1   etc/  etc/.wh.shadow  bin/  bin/.wh..wh..opq  bin/busybox  bin/sh => bin/busybox
    merged    /  bin/  bin/busybox  bin/sh  etc/  etc/passwd
              (bin/busybox and bin/sh: one inode, nlink 2, layer 1's chunks)

Inode numbers depend on the image only: they are the order in which
`MergedTree.walk` first meets each node (the root is 1, then depth-first,
siblings by name as ``str``, i.e. by code point); a hardlinked node keeps the
number of its first name. A FUSE mount can hand them to the kernel as they are.

Memory: per path, one reference to the layer's own `Entry` (not copied), a
slot in its directory's ``dict``, its name and a few bytes in flat arrays:
about 150 bytes per path besides the `Entry` (measured on 100k and 500k
entries; building peaks near 230). `Node` objects are made on demand.
"""

from __future__ import annotations

import errno
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from fusesnap.errors import NotFoundError
from fusesnap.fs.merge import Dir, Leaf, merge_layers
from fusesnap.index import Entry, EntryType, LayerIndex

__all__ = ["MergedTree", "Node", "TreeStats"]

ROOT_INO = 1


@dataclass(frozen=True, slots=True)
class Node:
    """One inode of the merged tree.

    ``entry`` holds the attributes; for a hardlink it is the target's entry, so
    size and chunks are right (its ``path`` is then another name of the node).
    ``layer`` indexes the layer sequence given to `MergedTree.build`: the layer
    whose chunks hold the content (for an implicit directory, the layer that
    implied it). ``children`` maps name -> ino, sorted by name, for a directory;
    it is None for anything else.
    """

    ino: int
    entry: Entry
    layer: int
    nlink: int
    children: Mapping[str, int] | None = None

    @property
    def is_dir(self) -> bool:
        return self.children is not None


@dataclass(frozen=True, slots=True)
class TreeStats:
    """Counts per inode (a hardlinked file counts once, as ``du`` does)."""

    files: int
    dirs: int
    symlinks: int
    other: int  # devices and fifos
    file_bytes: int


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class MergedTree:
    """An immutable merged view of an image's layers; build one with `build`.

    Thread safety: read-only after `build`, so any number of threads may use it.
    """

    _entries: list[Entry]
    _layers: array[int]
    _nlinks: array[int]
    _parents: array[int]
    _names: list[str]
    _dirs: dict[int, dict[str, int]]
    _stats: TreeStats

    @classmethod
    def build(cls, layers: Sequence[LayerIndex]) -> MergedTree:
        """Merge ``layers`` (bottom layer first).

        Raise `LayerError`, naming the layer and the entry, for a hardlink whose
        target does not exist, an entry under a non-directory, a symlink loop,
        or a non-directory ``./``.
        """
        return _freeze(merge_layers(tuple(layers)))

    # -- lookups ----------------------------------------------------------------------------

    @property
    def root(self) -> Node:
        return self.node(ROOT_INO)

    @property
    def stats(self) -> TreeStats:
        return self._stats

    def __len__(self) -> int:
        """The number of inodes (a hardlinked file is one)."""
        return len(self._entries)

    def has_xattrs(self) -> bool:
        """Whether some inode has extended attributes."""
        return any(e.xattrs for e in self._entries)

    def node(self, ino: int) -> Node:
        """The node numbered ``ino``; `NotFoundError` if there is none."""
        if not 0 < ino <= len(self._entries):
            raise NotFoundError(f"inode {ino}: not found")
        i = ino - 1
        kids = self._dirs.get(ino)
        return Node(
            ino,
            self._entries[i],
            self._layers[i],
            self._nlinks[i],
            None if kids is None else MappingProxyType(kids),
        )

    def lookup(self, path: str) -> Node:
        """The node at ``path`` (``a/b``, ``/a/b``; ``""`` or ``/`` is the root).

        Purely by name: no symlink is followed and ``..`` matches nothing.
        Raise `NotFoundError` if there is no such path.
        """
        ino = ROOT_INO
        for name in path.split("/"):
            if name in ("", "."):
                continue
            kids = self._dirs.get(ino)
            found = None if kids is None else kids.get(name)
            if found is None:
                raise NotFoundError(f"path {path}: not found")
            ino = found
        return self.node(ino)

    def child(self, parent_ino: int, name: str) -> Node:
        """The node called ``name`` in directory ``parent_ino`` (FUSE ``lookup``)."""
        kids = self._dirs.get(parent_ino)
        ino = None if kids is None else kids.get(name)
        if ino is None:
            self.node(parent_ino)  # an unknown parent reports itself
            where = self.path_of(parent_ino)
            raise NotFoundError(f"path {where + '/' if where else ''}{name}: not found")
        return self.node(ino)

    def listdir(self, ino: int) -> list[tuple[str, Node]]:
        """``(name, node)`` for each child of directory ``ino``, sorted by name.

        Raise `NotFoundError` for an unknown inode, `NotADirectoryError` (ENOTDIR)
        for one that is not a directory.
        """
        kids = self._dirs.get(ino)
        if kids is None:
            self.node(ino)
            where = self.path_of(ino)
            raise NotADirectoryError(errno.ENOTDIR, f"inode {ino} ({where}): not a directory")
        return [(name, self.node(c)) for name, c in kids.items()]

    def path_of(self, ino: int) -> str:
        """The path of ``ino`` without a leading ``/`` (``""`` for the root); for a
        hardlinked node, the first of its names that `walk` yields."""
        self.node(ino)
        parts = []
        while ino != ROOT_INO:
            parts.append(self._names[ino - 1])
            ino = self._parents[ino - 1]
        return "/".join(reversed(parts))

    def walk(self, top: str = "") -> Iterator[tuple[str, Node]]:
        """``(path, node)`` for ``top`` and everything below it: parents before
        children, siblings by name. A hardlinked node comes once per name."""
        start = "/".join(p for p in top.split("/") if p not in ("", "."))
        stack = [(start, self.lookup(top).ino)]
        while stack:
            path, ino = stack.pop()
            node = self.node(ino)
            yield path, node
            kids = self._dirs.get(ino)
            if kids:
                prefix = f"{path}/" if path else ""
                stack.extend((prefix + name, c) for name, c in reversed(kids.items()))

    def descendants(self, ino: int) -> int:
        """How many paths lie below directory ``ino`` (0 for anything else)."""
        count = 0
        stack = [ino]
        while stack:
            kids = self._dirs.get(stack.pop())
            if kids:
                count += len(kids)
                stack.extend(c for c in kids.values() if c in self._dirs)
        return count


def _freeze(root: Dir) -> MergedTree:
    entries: list[Entry] = [root.entry]
    layers = array("I", [root.layer])
    nlinks = array("I", [2])
    parents = array("I", [0])
    names: list[str] = [""]
    dirs: dict[int, dict[str, int]] = {}
    shared: dict[int, int] = {}  # id(leaf) -> ino, for hardlinked leaves
    counts = dict.fromkeys(EntryType, 0)
    counts[EntryType.DIR] = 1
    file_bytes = 0
    # Depth-first, numbering each node when first met: the order of MergedTree.walk.
    frames: list[tuple[Dir, int, Iterator[str], dict[str, int]]] = [
        (root, ROOT_INO, iter(sorted(root.children)), {})
    ]
    while frames:
        directory, ino, pending, kids = frames[-1]
        name = next(pending, None)
        if name is None:
            frames.pop()
            dirs[ino] = kids
            nlinks[ino - 1] = 2 + sum(isinstance(c, Dir) for c in directory.children.values())
            continue
        item = directory.children[name]
        if isinstance(item, Leaf) and item.shared:
            seen = shared.get(id(item))
            if seen is not None:
                nlinks[seen - 1] += 1
                kids[name] = seen
                continue
        child = kids[name] = len(entries) + 1
        entries.append(item.entry)
        layers.append(item.layer)
        parents.append(ino)
        names.append(name)
        nlinks.append(1)
        counts[item.entry.type] += 1
        if isinstance(item, Dir):
            frames.append((item, child, iter(sorted(item.children)), {}))
        else:
            if item.shared:
                shared[id(item)] = child
            if item.entry.type is EntryType.FILE:
                file_bytes += item.entry.size
    stats = TreeStats(
        files=counts[EntryType.FILE],
        dirs=counts[EntryType.DIR],
        symlinks=counts[EntryType.SYMLINK],
        other=counts[EntryType.CHAR] + counts[EntryType.BLOCK] + counts[EntryType.FIFO],
        file_bytes=file_bytes,
    )
    return MergedTree(entries, layers, nlinks, parents, names, dirs, stats)
