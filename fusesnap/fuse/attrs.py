"""What `stat` and `statfs` show for the merged tree: tree nodes as pyfuse3 attributes.

The values are those ``umoci unpack`` leaves on a local disk (ext4 here), so a
mount and an unpacked rootfs compare equal field by field:

- ``st_mode``: the entry's type and its permission bits, setuid/setgid/sticky kept;
- ``st_ino``: the tree's deterministic inode number (one per hardlink group),
  ``st_nlink`` its number of names (2 + subdirectories for a directory);
- times: atime, mtime and ctime are all the layer's mtime (with nanoseconds);
- ``st_size``: a file's size, a symlink's target length, 4096 for a directory;
- ``st_blocks`` (512-byte units): what a 4 KiB-block filesystem allocates for a
  file written in full, ``ceil(size / 4096) * 8``, so ``st_blocks * 512 >= size``
  and ``du`` agrees with the unpacked tree; 8 for a directory and for a symlink
  too long for ext4's inline ("fast") form, 0 for shorter symlinks, devices and fifos;
- ``st_blksize``: 4096.

Timeouts: the tree never changes while mounted, so entries and attributes are
valid for a day (`CACHE_TIMEOUT`) and misses are cached as negative entries.
"""

from __future__ import annotations

import math
import os
import stat

import pyfuse3

from fusesnap.errors import LayerError
from fusesnap.fs import Node, TreeStats
from fusesnap.index import Entry, EntryType

__all__ = [
    "BLOCK_SIZE",
    "CACHE_TIMEOUT",
    "NAME_MAX",
    "entry_attributes",
    "negative_entry",
    "st_blocks",
    "st_size",
    "statvfs",
]

CACHE_TIMEOUT = 24 * 3600.0
BLOCK_SIZE = 4096
NAME_MAX = 255
_SECTORS_PER_BLOCK = BLOCK_SIZE // 512
# ext4 keeps a symlink target shorter than this in the inode itself: no block.
_FAST_SYMLINK_MAX = 60
_NS = 1_000_000_000

_IFMT = {
    EntryType.FILE: stat.S_IFREG,
    EntryType.DIR: stat.S_IFDIR,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.CHAR: stat.S_IFCHR,
    EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}


def st_size(entry: Entry) -> int:
    if entry.type is EntryType.FILE:
        return entry.size
    if entry.type is EntryType.SYMLINK:
        return len(os.fsencode(entry.linkname))
    if entry.type is EntryType.DIR:
        return BLOCK_SIZE
    return 0


def st_blocks(entry: Entry) -> int:
    """512-byte blocks, as a 4 KiB-block filesystem would count them (module docstring)."""
    if entry.type is EntryType.FILE:
        return math.ceil(entry.size / BLOCK_SIZE) * _SECTORS_PER_BLOCK
    if entry.type is EntryType.DIR:
        return _SECTORS_PER_BLOCK
    if entry.type is EntryType.SYMLINK:
        fast = len(os.fsencode(entry.linkname)) < _FAST_SYMLINK_MAX
        return 0 if fast else _SECTORS_PER_BLOCK
    return 0


def entry_attributes(node: Node, *, timeout: float = CACHE_TIMEOUT) -> pyfuse3.EntryAttributes:
    """The attributes of ``node`` for lookup/getattr/readdirplus replies."""
    e = node.entry
    ifmt = _IFMT.get(e.type)
    if ifmt is None:  # the tree resolves hardlinks; another type here is a bug upstream
        raise LayerError(f"inode {node.ino} ({e.path!r}): unexpected entry type {e.type}")
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = node.ino
    attr.generation = 0
    attr.entry_timeout = timeout
    attr.attr_timeout = timeout
    attr.st_mode = ifmt | (e.perm & 0o7777)
    attr.st_nlink = node.nlink
    attr.st_uid = e.uid
    attr.st_gid = e.gid
    if e.type in (EntryType.CHAR, EntryType.BLOCK):
        attr.st_rdev = os.makedev(e.devmajor, e.devminor)
    attr.st_size = st_size(e)
    attr.st_blksize = BLOCK_SIZE
    attr.st_blocks = st_blocks(e)
    mtime = e.mtime * _NS + e.mtime_nsec
    attr.st_atime_ns = mtime
    attr.st_mtime_ns = mtime
    attr.st_ctime_ns = mtime
    return attr


def negative_entry(*, timeout: float = CACHE_TIMEOUT) -> pyfuse3.EntryAttributes:
    """A lookup reply meaning "no such name", which the kernel caches for ``timeout``."""
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = 0
    attr.entry_timeout = timeout
    attr.attr_timeout = timeout
    return attr


def statvfs(st: TreeStats, inodes: int) -> pyfuse3.StatvfsData:
    """A full, read-only filesystem: blocks of the file bytes (plus one per directory),
    ``inodes`` inodes, nothing free."""
    data = pyfuse3.StatvfsData()
    data.f_bsize = BLOCK_SIZE
    data.f_frsize = BLOCK_SIZE
    data.f_blocks = math.ceil(st.file_bytes / BLOCK_SIZE) + st.dirs
    data.f_bfree = 0
    data.f_bavail = 0
    data.f_files = inodes
    data.f_ffree = 0
    data.f_favail = 0
    data.f_namemax = NAME_MAX
    return data
