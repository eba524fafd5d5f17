"""An overlayfs upper dir as an OCI layer tar (what ``commit`` stores).

overlayfs and OCI say "deleted" and "replaced" differently:

- a file or directory deleted from the lower layers is, in the upper dir, a
  character device 0/0 of the same name; in the tar, an empty ``.wh.NAME``;
- a directory whose lower contents are hidden (deleted, then made again) carries
  the xattr ``trusted.overlay.opaque=y``; in the tar, the directory plus an empty
  ``DIR/.wh..wh..opq``.

Everything else goes in as it is (PAX format: long names, big ids), parents
before children, hardlinks within the upper dir as tar links, numeric owners only
(user names on this host mean nothing in the image). overlayfs' own xattrs
(``trusted.overlay.*``) are not carried. Active snapshots are mounted with
``redirect_dir=off``, so a renamed lower directory is copied up whole, never a
redirect that a tar could not express.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from fusesnap.digest import Digest

__all__ = ["OPAQUE", "WHITEOUT_PREFIX", "HashingWriter", "Writable", "write_diff_tar"]

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
_OPAQUE_XATTR = "trusted.overlay.opaque"


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> object: ...


class HashingWriter:
    """A write-only file that hashes what passes through it."""

    def __init__(self, out: Writable) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, _OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _walk(top: Path, directory: Path | None = None) -> Iterator[tuple[Path, str]]:
    """(path, name in the tar) of everything under ``top``, depth first, sorted: each
    directory right before its contents."""
    for entry in sorted(os.scandir(directory or top), key=lambda e: e.name):
        path = Path(entry.path)
        yield path, path.relative_to(top).as_posix()
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(top, path)


def _empty(name: str, like: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = int(like.st_mtime)
    info.mode = 0o644
    return info


def write_diff_tar(upper: Path, out: Writable) -> tuple[Digest, int]:
    """Write the OCI layer tar of overlay upper dir ``upper`` to ``out``; its digest (the
    layer's diff ID) and size."""
    writer = HashingWriter(out)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for path, name in _walk(upper):
            st = os.lstat(path)
            if _is_whiteout(st):
                parent, _, base = name.rpartition("/")
                whiteout = f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base
                tar.addfile(_empty(whiteout, st))
                continue
            info = tar.gettarinfo(str(path), arcname=name)
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if stat.S_ISDIR(st.st_mode) and _is_opaque(path):
                tar.addfile(_empty(f"{name}/{OPAQUE}", st))
    return Digest(f"sha256:{writer.sha.hexdigest()}"), writer.size
