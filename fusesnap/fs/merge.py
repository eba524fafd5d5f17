"""Apply layer indexes one after another, by the OCI rules, to a mutable in-memory tree.

`merge_layers` does what ``umoci unpack`` does to a directory, without any
file data; `fusesnap.fs.tree` then numbers the result and freezes it.

Rules (image-spec ``layer.md``, "Applying Changesets" and "Whiteouts"):

- Later layers win. A directory over a directory keeps the children and takes
  the upper attributes; anything else first removes what was there (a
  directory with its whole subtree).
- ``D/.wh.NAME`` removes ``D/NAME`` and ``D/.wh..wh..opq`` all children of
  ``D``, from *lower* layers only, whatever their place in the tar: a layer's
  whiteouts are applied before its entries. A whiteout of a missing path is
  ignored (no parent is created for it). Whiteouts, opaque markers and every
  ``.wh..wh.*`` name (aufs ``.wh..wh.plnk/`` and what is under it) are never
  visible; umoci 0.4.7 does show ``.wh..wh.*`` metadata, Docker and containerd
  do not, and neither do we.
- A hardlink (its ``linkname`` normalized) names the node its target has at
  that point of the tar stream, so a link to a lower file serves the lower
  file's bytes; a missing or whited-out target is a `LayerError`.
- Parents resolve through symlinks inside the tree (an absolute target starts
  at the root, ``..`` stops there), as umoci's securejoin does for entries,
  whiteouts and hardlink targets alike. A parent that is not a directory is a
  `LayerError` (umoci: "mkdir parent: not a directory").
- Implicit parents (no entry in any layer) get mode 0o755, uid/gid 0, mtime 0.
  umoci creates them 0o755 root:root too, but stamps the time of the unpack;
  0 keeps our attributes a function of the image.
- The root takes the attributes of a layer's ``./`` entry (an `Entry` with
  path ``""``), else 0o755 root:root, mtime 0 (what umoci leaves when no layer
  has ``./``).
"""

from __future__ import annotations

from collections.abc import Sequence

from fusesnap.errors import LayerError
from fusesnap.index import Entry, EntryType, LayerIndex

__all__ = ["Dir", "Leaf", "merge_layers"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
META_PREFIX = ".wh..wh."  # aufs metadata (.wh..wh.plnk, .wh..wh.aufs): never visible
MAX_SYMLINK_HOPS = 40  # Linux's limit per path resolution (ELOOP)


def merge_layers(layers: Sequence[LayerIndex]) -> Dir:
    """The root of ``layers`` (bottom first) merged; see the module docstring for the rules.

    Raise `LayerError`, naming the layer and the entry, for a hardlink whose
    target does not exist, an entry under a non-directory, a symlink loop, or a
    non-directory ``./``.
    """
    builder = _Builder()
    for i, index in enumerate(layers):
        builder.apply(i, index)
    return builder.root


class Leaf:
    """A non-directory while building; hardlinks put one object under several names."""

    __slots__ = ("entry", "layer", "shared")

    def __init__(self, entry: Entry, layer: int) -> None:
        self.entry = entry
        self.layer = layer
        self.shared = False


class Dir:
    """A directory while building; ``children`` in no particular order."""

    __slots__ = ("children", "entry", "layer")

    def __init__(self, entry: Entry, layer: int) -> None:
        self.entry = entry
        self.layer = layer
        self.children: dict[str, Dir | Leaf] = {}


def _implicit_dir(path: str) -> Entry:
    return Entry(path=path, type=EntryType.DIR, mode=0o755, uid=0, gid=0, mtime=0)


class _NotADirectory(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(f"parent {path!r} is not a directory")


class _SymlinkLoop(Exception):
    def __init__(self, path: str) -> None:
        super().__init__(f"parent {path!r}: too many levels of symbolic links")


class _Builder:
    """Applies one layer after another to a mutable tree."""

    def __init__(self) -> None:
        self.root = Dir(_implicit_dir(""), 0)
        self._layer = 0
        self._where = ""
        self._parents: dict[str, Dir] = {}  # parent path -> dir, for this layer's entries
        self._hidden: dict[str, Entry] = {}  # this layer's aufs .wh..wh.plnk/ files
        self._hidden_leaves: dict[str, Leaf] = {}

    def _fail(self, path: str, reason: str) -> LayerError:
        return LayerError(f"{self._where}: entry {path!r}: {reason}")

    def apply(self, layer: int, index: LayerIndex) -> None:
        self._layer = layer
        self._where = f"layer {layer} ({index.layer_digest.short})"
        self._parents.clear()
        self._hidden.clear()
        self._hidden_leaves.clear()
        additions: list[Entry] = [] if index.root is None else [index.root]
        for entry in index.entries:
            path = entry.path
            if WHITEOUT_PREFIX not in path:
                additions.append(entry)
                continue
            parent, _, name = path.rpartition("/")
            if any(p.startswith(WHITEOUT_PREFIX) for p in parent.split("/")):
                if entry.type is not EntryType.DIR:
                    self._hidden[path] = entry
            elif name == OPAQUE_MARKER:
                self._opaque(entry, parent)
            elif name.startswith(META_PREFIX):
                pass
            elif name.startswith(WHITEOUT_PREFIX):
                if name != WHITEOUT_PREFIX:
                    self._whiteout(entry, parent, name[len(WHITEOUT_PREFIX) :])
            else:
                additions.append(entry)
        for entry in additions:
            self._add(entry)

    # Whiteouts run before the layer's additions, so they reach lower layers only.

    def _opaque(self, entry: Entry, path: str) -> None:
        found = self._existing_dir(entry, path)
        if found is not None:
            found.children.clear()

    def _whiteout(self, entry: Entry, parent: str, name: str) -> None:
        found = self._existing_dir(entry, parent)
        if found is not None:
            found.children.pop(name, None)

    def _existing_dir(self, entry: Entry, path: str) -> Dir | None:
        try:
            return self._resolve(path, create=False)
        except _NotADirectory:
            return None
        except _SymlinkLoop as exc:
            raise self._fail(entry.path, str(exc)) from None

    def _add(self, entry: Entry) -> None:
        path = entry.path
        if path == "":
            if entry.type is not EntryType.DIR:
                raise self._fail(path, f"a {entry.type} cannot replace the root")
            self.root.entry, self.root.layer = entry, self._layer
            return
        parent_path, _, name = path.rpartition("/")
        parent = self._parents.get(parent_path)
        if parent is None:
            try:
                made = self._resolve(parent_path, create=True)
            except (_NotADirectory, _SymlinkLoop) as exc:
                raise self._fail(path, str(exc)) from None
            assert made is not None  # create=True never gives None
            parent = self._parents[parent_path] = made
        old = parent.children.get(name)
        if entry.type is EntryType.DIR and isinstance(old, Dir):
            old.entry, old.layer = entry, self._layer
            return
        if old is not None:
            # Removed before a hardlink looks for its target, as umoci unlinks before
            # link(): a link into the subtree it replaces has no target.
            del parent.children[name]
            # A replaced directory or symlink may have been the way to a cached parent.
            self._parents.clear()
        if entry.type is EntryType.DIR:
            parent.children[name] = Dir(entry, self._layer)
        elif entry.type is EntryType.HARDLINK:
            leaf = self._link_target(entry)
            leaf.shared = True
            parent.children[name] = leaf
        else:
            parent.children[name] = Leaf(entry, self._layer)

    def _link_target(self, entry: Entry) -> Leaf:
        target = entry.linkname
        hidden = self._hidden.get(target)
        if hidden is not None and hidden.type is not EntryType.HARDLINK:
            leaf = self._hidden_leaves.get(target)
            if leaf is None:
                leaf = self._hidden_leaves[target] = Leaf(hidden, self._layer)
            return leaf
        tparent, _, tname = target.rpartition("/")
        found = self._existing_dir(entry, tparent) if target else None
        item = None if found is None else found.children.get(tname)
        if item is None:
            raise self._fail(
                entry.path, f"hardlink target {target!r} does not exist (absent or whited out)"
            )
        if isinstance(item, Dir):
            raise self._fail(entry.path, f"hardlink target {target!r} is a directory")
        return item

    def _resolve(self, path: str, *, create: bool) -> Dir | None:
        """The directory at ``path``, following symlinks without leaving the root.

        Missing directories are created (implicit) if ``create``, else None is
        returned. Raise `_NotADirectory` for a component that is neither a
        directory nor a symlink, `_SymlinkLoop` past `MAX_SYMLINK_HOPS`.
        """
        todo = path.split("/")[::-1] if path else []
        stack = [self.root]
        names: list[str] = []
        hops = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                    names.pop()
                continue
            item = stack[-1].children.get(name)
            if item is None:
                if not create:
                    return None
                item = Dir(_implicit_dir("/".join([*names, name])), self._layer)
                stack[-1].children[name] = item
            elif isinstance(item, Leaf):
                if item.entry.type is not EntryType.SYMLINK:
                    raise _NotADirectory("/".join([*names, name]))
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise _SymlinkLoop(path)
                link = item.entry.linkname
                if link.startswith("/"):
                    del stack[1:], names[:]
                todo.extend(reversed(link.split("/")))
                continue
            stack.append(item)
            names.append(name)
        return stack[-1]
