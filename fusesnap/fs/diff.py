"""What differs between two merged trees (``fusesnap diff REF1 REF2``), from the indexes alone.

Content is compared by chunk digests, so no file data is read. Two indexes of
the same bytes cut with different chunk sizes therefore compare as "content"
changed; indexes of one fusesnap (one chunk size) do not have that problem.

A directory added or removed as a whole is one `Change` at its path, with
``descendants`` counting the paths below it, the way ``git diff --stat``
summarizes; its children are not listed one by one. A path whose type changed
(a file that became a directory, ...) is ``changed`` with ``what == ("type",)``
and ``descendants`` counts the paths below whichever side is a directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fusesnap.fs.tree import MergedTree, Node
from fusesnap.index import EntryType

__all__ = ["Change", "ChangeKind", "diff_trees"]

ChangeKind = Literal["added", "removed", "changed"]


@dataclass(frozen=True, slots=True)
class Change:
    """One difference. ``path`` has no leading ``/`` (``""`` is the root).

    ``what`` names the attributes that differ for ``changed``, in this order:
    ``type``, ``mode``, ``uid``, ``gid``, ``mtime``, ``size``, ``content``,
    ``target`` (symlink), ``device``, ``xattrs``, ``nlink`` (non-directories:
    hardlink grouping). It is empty for ``added`` and ``removed``.
    """

    kind: ChangeKind
    path: str
    what: tuple[str, ...] = ()
    descendants: int = 0


def diff_trees(a: MergedTree, b: MergedTree) -> list[Change]:
    """Changes that turn ``a`` into ``b``, parents before children, siblings by name."""
    changes: list[Change] = []
    what = _differences(a.root, b.root)
    if what:
        changes.append(Change("changed", "", what))
    stack = [("", a.root, b.root)]
    while stack:
        path, da, db = stack.pop()
        ka, kb = da.children or {}, db.children or {}
        prefix = f"{path}/" if path else ""
        for name in ka.keys() | kb.keys():
            child = prefix + name
            ia, ib = ka.get(name), kb.get(name)
            if ib is None:
                assert ia is not None
                changes.append(Change("removed", child, descendants=a.descendants(ia)))
            elif ia is None:
                changes.append(Change("added", child, descendants=b.descendants(ib)))
            else:
                na, nb = a.node(ia), b.node(ib)
                what = _differences(na, nb)
                if what == ("type",):
                    below = a.descendants(ia) + b.descendants(ib)  # one side is 0
                    changes.append(Change("changed", child, what, below))
                    continue
                if what:
                    changes.append(Change("changed", child, what))
                if na.is_dir:
                    stack.append((child, na, nb))
    changes.sort(key=lambda c: c.path.split("/"))
    return changes


def _differences(x: Node, y: Node) -> tuple[str, ...]:
    ex, ey = x.entry, y.entry
    if ex.type is not ey.type:
        return ("type",)
    what = []
    if ex.mode != ey.mode:
        what.append("mode")
    if ex.uid != ey.uid:
        what.append("uid")
    if ex.gid != ey.gid:
        what.append("gid")
    if (ex.mtime, ex.mtime_nsec) != (ey.mtime, ey.mtime_nsec):
        what.append("mtime")
    if ex.type is EntryType.FILE:
        if ex.size != ey.size:
            what.append("size")
        if [c.digest for c in ex.chunks] != [c.digest for c in ey.chunks]:
            what.append("content")
    elif ex.type is EntryType.SYMLINK and ex.linkname != ey.linkname:
        what.append("target")
    elif ex.type in (EntryType.CHAR, EntryType.BLOCK) and (ex.devmajor, ex.devminor) != (
        ey.devmajor,
        ey.devminor,
    ):
        what.append("device")
    if dict(ex.xattrs) != dict(ey.xattrs):
        what.append("xattrs")
    if not x.is_dir and x.nlink != y.nlink:
        what.append("nlink")
    return tuple(what)
