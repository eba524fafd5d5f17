"""Where a mount keeps its state in the store, and how to tell its daemon is alive.

Each mount point has a directory named after the hash of its absolute path, so
``umount DIR`` and ``stats DIR`` find it from DIR alone::

    ROOT/mounts/<sha256(DIR)[:16]>/
        mount.json      `MountState`: DIR, image, daemon pid (+ start time), lease id
        daemon.log      the daemon's stdout and stderr (truncated by each new mount)
        control.sock    the daemon's control socket (`fusesnap.mountd.control`)
        failed          why the holder gave up restarting the daemon (reads get EIO)

``mount.json`` exists while the daemon runs (it removes it on its way out; a
killed daemon leaves it, and the next ``mount`` or ``umount`` of DIR clears it,
or a daemon that takes the mount over replaces it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fusesnap.mountd.mountpoint import absolute_path
from fusesnap.process import process_start_time

__all__ = [
    "CONTROL_SOCKET",
    "DAEMON_LOG",
    "MountState",
    "failure",
    "make_state_dir",
    "mark_failed",
    "mount_failure",
    "state_dir",
]

MOUNTS = "mounts"
STATE_FILE = "mount.json"
DAEMON_LOG = "daemon.log"
CONTROL_SOCKET = "control.sock"
FAILED = "failed"


def state_dir(root: Path, mountpoint: str | os.PathLike[str]) -> Path:
    """``ROOT/mounts/<id>`` for ``mountpoint`` (not created: `make_state_dir`)."""
    key = hashlib.sha256(os.fsencode(absolute_path(mountpoint))).hexdigest()[:16]
    return Path(root) / MOUNTS / key


def make_state_dir(root: Path, mountpoint: str | os.PathLike[str]) -> Path:
    """`state_dir`, created; ``ROOT/mounts`` is private (mode 0700): its control sockets
    answer whoever can reach them."""
    directory = state_dir(root, mountpoint)
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


@dataclass(frozen=True, slots=True)
class MountState:
    """What ``mount.json`` records about a running mount."""

    mountpoint: str
    image: str  # the normalized image name
    manifest_digest: str
    pid: int
    pid_start: int | None
    lease_id: str
    started: float
    holder_pid: int | None = None  # the process that keeps the connection (`holder`)
    holder_start: int | None = None
    inodes: int = 0  # of the tree served: a daemon taking over must number it alike

    def save(self, directory: Path) -> None:
        tmp = directory / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1) + "\n")
        tmp.replace(directory / STATE_FILE)

    @classmethod
    def load(cls, directory: Path) -> MountState | None:
        """The state in ``directory``; None if there is none (or it is unreadable)."""
        try:
            data = json.loads((directory / STATE_FILE).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    @staticmethod
    def remove(directory: Path) -> None:
        (directory / STATE_FILE).unlink(missing_ok=True)
        (directory / CONTROL_SOCKET).unlink(missing_ok=True)
        (directory / FAILED).unlink(missing_ok=True)

    def daemon_alive(self) -> bool:
        return _alive(self.pid, self.pid_start)

    def holder_alive(self) -> bool:
        return self.holder_pid is not None and _alive(self.holder_pid, self.holder_start)


def _alive(pid: int, pid_start: int | None) -> bool:
    start = process_start_time(pid)
    return start is not None and (pid_start is None or start == pid_start)


def mark_failed(directory: Path, reason: str) -> None:
    """Record that the mount of ``directory`` has no daemon and will get none."""
    (directory / FAILED).write_text(reason + "\n")


def failure(directory: Path) -> str | None:
    """Why the mount of ``directory`` failed (`mark_failed`); None if it did not."""
    try:
        return (directory / FAILED).read_text().strip() or "no daemon"
    except OSError:
        return None


def mount_failure(root: Path, mountpoint: str | os.PathLike[str]) -> str | None:
    """Why the mount at ``mountpoint`` has no daemon any more (`failure`), or None."""
    return failure(state_dir(root, mountpoint))
