"""Ground-truth comparison: a directory tree on disk (``umoci unpack``) against fusesnap's view.

Both sides become ``{path: record}`` with the same fields, so a test asserts
one equality and a failure shows exactly which paths and attributes differ.
File contents are compared by sha256, streamed (a 300 MB file is never held
in memory).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from fusesnap.fs import ChunkSource, MergedTree, iter_file
from fusesnap.index import EntryType

Record = tuple[object, ...]
FIELDS = ("type", "mode", "nlink", "uid", "gid", "mtime", "size", "target", "device", "xattrs",
          "sha256", "hardlink group")  # fmt: skip

_TYPES = {
    stat.S_IFREG: EntryType.FILE, stat.S_IFDIR: EntryType.DIR, stat.S_IFLNK: EntryType.SYMLINK,
    stat.S_IFCHR: EntryType.CHAR, stat.S_IFBLK: EntryType.BLOCK, stat.S_IFIFO: EntryType.FIFO,
}  # fmt: skip


def _sha256(pieces: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for piece in pieces:
        h.update(piece)
    return h.hexdigest()


def _read_file(path: Path) -> Iterable[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            yield piece


def walk_sorted(root: Path) -> list[str]:
    """Every path under ``root`` (relative, no leading ``/``), parents first, siblings sorted."""
    out: list[str] = []

    def visit(rel: str) -> None:
        full = root / rel if rel else root
        for name in sorted(os.listdir(full)):
            child = f"{rel}/{name}" if rel else name
            out.append(child)
            if stat.S_ISDIR((root / child).lstat().st_mode):
                visit(child)

    visit("")
    return out


def disk_view(rootfs: Path) -> dict[str, Record]:
    view: dict[str, Record] = {}
    groups: dict[int, str] = {}
    for rel in ["", *walk_sorted(rootfs)]:
        path = rootfs / rel if rel else rootfs
        st = path.lstat()
        etype = _TYPES[stat.S_IFMT(st.st_mode)]
        target = os.readlink(path) if etype is EntryType.SYMLINK else ""
        xattrs = {} if etype is EntryType.SYMLINK else {
            n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path)
        }  # fmt: skip
        device = (os.major(st.st_rdev), os.minor(st.st_rdev)) if etype in (
            EntryType.CHAR, EntryType.BLOCK) else (0, 0)  # fmt: skip
        is_file = etype is EntryType.FILE
        content = _sha256(_read_file(path)) if is_file else ""
        group = groups.setdefault(st.st_ino, rel) if etype is not EntryType.DIR else rel
        view[rel] = (etype, stat.S_IMODE(st.st_mode), st.st_nlink, st.st_uid, st.st_gid,
                     int(st.st_mtime), st.st_size if is_file else 0, target, device, xattrs,
                     content, group)  # fmt: skip
    return view


def tree_view(tree: MergedTree, chunks: ChunkSource) -> dict[str, Record]:
    view: dict[str, Record] = {}
    for rel, node in tree.walk():
        e = node.entry
        is_file = e.type is EntryType.FILE
        content = _sha256(iter_file(e, chunks)) if is_file else ""
        view[rel] = (e.type, e.perm, node.nlink, e.uid, e.gid, e.mtime, e.size if is_file else 0,
                     e.linkname if e.type is EntryType.SYMLINK else "", (e.devmajor, e.devminor),
                     dict(e.xattrs), content, tree.path_of(node.ino))  # fmt: skip
    return view


def differences(got: dict[str, Record], want: dict[str, Record], limit: int = 20) -> list[str]:
    """Human-readable differences, at most ``limit`` of them (empty when equal)."""
    out = [f"only in fusesnap: {p}" for p in sorted(got.keys() - want.keys())]
    out += [f"only on disk: {p}" for p in sorted(want.keys() - got.keys())]
    for p in sorted(got.keys() & want.keys()):
        for name, a, b in zip(FIELDS, got[p], want[p], strict=True):
            if a != b:
                out.append(f"{p or '/'}: {name}: fusesnap {a!r} != disk {b!r}")
    return out[:limit]
