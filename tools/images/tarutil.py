"""Writing layer tarballs: entry by entry (`TarBuilder`) or from a directory tree (`tar_tree`).

Both write PAX archives with numeric owners only (no user or group names), so
the same inputs give the same bytes on any machine. xattrs become PAX
``SCHILY.xattr.NAME`` records, the spelling GNU tar, containerd and umoci use;
binary values (``security.capability``) are kept byte for byte.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

__all__ = ["FIXED_MTIME", "TarBuilder", "tar_tree", "xattr_pax_headers"]

# 2023-11-14T22:13:20Z: a fixed, non-zero time; some tools treat mtime 0 as "unset".
FIXED_MTIME = 1_700_000_000

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


def xattr_pax_headers(xattrs: Mapping[str, bytes | str]) -> dict[str, str]:
    """PAX records for ``xattrs``; bytes that are not UTF-8 survive via surrogateescape.

    `tarfile` then writes ``hdrcharset=BINARY`` and restores the exact bytes.
    """
    headers = {}
    for name, value in xattrs.items():
        raw = value.encode() if isinstance(value, str) else value
        headers[f"SCHILY.xattr.{name}"] = raw.decode("utf-8", "surrogateescape")
    return headers


class TarBuilder:
    """Build a layer tarball one entry at a time, in memory or into ``out``.

    Paths are relative (``etc/passwd``); a leading ``/`` is stripped unless
    ``raw_names`` is set (malicious-layer builders need names verbatim).
    """

    def __init__(
        self, out: BinaryIO | None = None, *, mtime: int = FIXED_MTIME, raw_names: bool = False
    ) -> None:
        self._buf = io.BytesIO() if out is None else None
        # Not a with-block: the builder owns the archive until close()/getvalue().
        self._tar = tarfile.open(  # noqa: SIM115
            fileobj=out or self._buf, mode="w", format=tarfile.PAX_FORMAT
        )
        self._closed = False
        self._mtime = mtime
        self._raw = raw_names

    def _info(
        self,
        path: str,
        kind: bytes,
        *,
        mode: int,
        uid: int = 0,
        gid: int = 0,
        xattrs: Mapping[str, bytes | str] | None = None,
        mtime: int | None = None,
    ) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path if self._raw else path.lstrip("/"))
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = self._mtime if mtime is None else mtime
        if xattrs:
            info.pax_headers = xattr_pax_headers(xattrs)
        return info

    def dir(
        self,
        path: str,
        *,
        mode: int = 0o755,
        uid: int = 0,
        gid: int = 0,
        xattrs: Mapping[str, bytes | str] | None = None,
    ) -> TarBuilder:
        self._tar.addfile(
            self._info(path, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid, xattrs=xattrs)
        )
        return self

    def file(
        self,
        path: str,
        data: bytes | str = b"",
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        xattrs: Mapping[str, bytes | str] | None = None,
        mtime: int | None = None,
    ) -> TarBuilder:
        raw = data.encode() if isinstance(data, str) else data
        info = self._info(
            path, tarfile.REGTYPE, mode=mode, uid=uid, gid=gid, xattrs=xattrs, mtime=mtime
        )
        info.size = len(raw)
        self._tar.addfile(info, io.BytesIO(raw))
        return self

    def stream_file(
        self, path: str, size: int, source: BinaryIO, *, mode: int = 0o644
    ) -> TarBuilder:
        """A regular file whose ``size`` bytes are read from ``source`` in pieces."""
        info = self._info(path, tarfile.REGTYPE, mode=mode)
        info.size = size
        self._tar.addfile(info, source)
        return self

    def symlink(
        self, path: str, target: str, *, mode: int = 0o777, uid: int = 0, gid: int = 0
    ) -> TarBuilder:
        info = self._info(path, tarfile.SYMTYPE, mode=mode, uid=uid, gid=gid)
        info.linkname = target
        self._tar.addfile(info)
        return self

    def hardlink(self, path: str, target: str) -> TarBuilder:
        """``path`` becomes another name of ``target`` (a path in this or a lower layer)."""
        info = self._info(path, tarfile.LNKTYPE, mode=0o644)
        info.linkname = target if self._raw else target.lstrip("/")
        self._tar.addfile(info)
        return self

    def chardev(self, path: str, major: int, minor: int, *, mode: int = 0o666) -> TarBuilder:
        info = self._info(path, tarfile.CHRTYPE, mode=mode)
        info.devmajor, info.devminor = major, minor
        self._tar.addfile(info)
        return self

    def blockdev(self, path: str, major: int, minor: int, *, mode: int = 0o660) -> TarBuilder:
        info = self._info(path, tarfile.BLKTYPE, mode=mode)
        info.devmajor, info.devminor = major, minor
        self._tar.addfile(info)
        return self

    def fifo(self, path: str, *, mode: int = 0o644) -> TarBuilder:
        self._tar.addfile(self._info(path, tarfile.FIFOTYPE, mode=mode))
        return self

    def whiteout(self, path: str) -> TarBuilder:
        """Delete ``path`` (file or directory) of lower layers (``DIR/.wh.NAME``)."""
        parent, _, name = path.strip("/").rpartition("/")
        entry = f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else f"{WHITEOUT_PREFIX}{name}"
        return self.file(entry, b"", mode=0o000)

    def opaque(self, directory: str) -> TarBuilder:
        """Hide everything lower layers have in ``directory`` (``DIR/.wh..wh..opq``)."""
        return self.file(f"{directory.strip('/')}/{OPAQUE_MARKER}", b"", mode=0o000)

    def close(self) -> None:
        """Write the end-of-archive blocks (the output file object stays open)."""
        if not self._closed:
            self._tar.close()
            self._closed = True

    def getvalue(self) -> bytes:
        """Close the archive and return its bytes (in-memory builders only)."""
        self.close()
        if self._buf is None:
            raise ValueError("TarBuilder writes to a file; it has no value")
        return self._buf.getvalue()


def _tarinfo_for(tar: tarfile.TarFile, root: Path, rel: str) -> tarfile.TarInfo:
    full = root / rel
    info = tar.gettarinfo(str(full), arcname=rel)
    info.uname = info.gname = ""
    # Whole seconds: fractional times would add a PAX mtime record to every entry.
    info.mtime = int(info.mtime)
    if info.type == tarfile.DIRTYPE:
        info.size = 0
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError:
        names = []
    if names:
        xattrs = {n: os.getxattr(full, n, follow_symlinks=False) for n in sorted(names)}
        info.pax_headers = {**info.pax_headers, **xattr_pax_headers(xattrs)}
    return info


def tar_tree(root: Path, entries: Iterable[str | tarfile.TarInfo], out: BinaryIO) -> None:
    """Write ``entries`` as a PAX tarball to ``out``, in the given order.

    A string is a path relative to ``root``: numeric owners, exact modes
    (setuid, setgid, sticky), symlinks, device nodes, fifos and xattrs are
    kept, and a second name of an inode already written becomes a hardlink
    entry. A `tarfile.TarInfo` is written as is, with an empty body
    (whiteouts).
    """
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=64 * 1024) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry, io.BytesIO(b"") if entry.isreg() else None)
                continue
            info = _tarinfo_for(tar, root, entry)
            if info.type == tarfile.REGTYPE:
                with open(root / entry, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def walk_sorted(root: Path) -> list[str]:
    """Every path under ``root`` (relative, parents before children, sorted), not crossing
    into other filesystems."""
    root_dev = root.lstat().st_dev
    out: list[str] = []

    def visit(rel: str) -> None:
        names = sorted(os.listdir(root / rel if rel else root))
        for name in names:
            child = f"{rel}/{name}" if rel else name
            out.append(child)
            st = (root / child).lstat()
            if stat.S_ISDIR(st.st_mode) and st.st_dev == root_dev:
                visit(child)

    visit("")
    return out
