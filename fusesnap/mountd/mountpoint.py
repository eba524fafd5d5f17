"""Mount points as the kernel sees them: is DIR mounted, by what, is it stale; detach it.

A FUSE mount whose daemon died stays in the mount table, and every access to
it fails with ENOTCONN ("Transport endpoint is not connected") until it is
detached (``fusermount3 -u -z``, or ``umount -l`` as root).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fusesnap.errors import MountError

__all__ = [
    "FSTYPE",
    "MountError",
    "MountInfo",
    "absolute_path",
    "detach",
    "is_stale",
    "mount_info",
]

FSTYPE = "fuse.fusesnap"
_STALE_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


@dataclass(frozen=True, slots=True)
class MountInfo:
    """One line of /proc/self/mountinfo (the fields fusesnap needs)."""

    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as ``\\ooo``."""
    if "\\" not in field:
        return field
    raw = os.fsencode(field)
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mount_info(path: str | os.PathLike[str]) -> MountInfo | None:
    """The topmost mount at ``path`` (compared as an absolute path, symlinks resolved
    up to a stale mount), or None if nothing is mounted there."""
    target = absolute_path(path)
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if _unescape(fields[4]) == target:
                found = MountInfo(target, fields[sep + 1], _unescape(fields[sep + 2]))
    return found


def absolute_path(path: str | os.PathLike[str]) -> str:
    """``path`` made absolute with its parent's symlinks resolved; the last component is
    kept as is, since resolving it would touch a (possibly stale) mount."""
    p = Path(os.path.abspath(path))
    return str(p.parent.resolve() / p.name) if p.name else str(p)


def is_stale(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a FUSE mount whose daemon is gone.

    Asks with statfs, which the kernel always forwards to the daemon (a stat of
    the mount's root may be answered from the kernel's attribute cache even
    after the daemon died).
    """
    info = mount_info(path)
    if info is None or not info.fstype.startswith("fuse"):
        return False
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in _STALE_ERRNOS
    return False


def detach(path: str | os.PathLike[str], *, lazy: bool = True) -> None:
    """Unmount ``path``: ``fusermount3 -u [-z]``, falling back to ``umount [-l]`` (root).

    ``lazy`` detaches at once even if processes still use the mount (they keep
    what they hold; a stale mount can only be cleared this way). `MountError`
    with the tool's message if nothing worked.
    """
    target = absolute_path(path)
    commands = []
    if shutil.which("fusermount3"):
        commands.append(["fusermount3", "-u", *(["-z"] if lazy else []), "-q", target])
    if shutil.which("umount") and os.geteuid() == 0:
        commands.append(["umount", *(["-l"] if lazy else []), target])
    if not commands:
        raise MountError(f"{target}: cannot unmount: neither fusermount3 nor umount found")
    messages = []
    for cmd in commands:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode == 0 or mount_info(target) is None:
            return
        messages.append(proc.stderr.strip() or f"{cmd[0]} exited {proc.returncode}")
    raise MountError(f"{target}: cannot unmount: {messages[-1]}")
