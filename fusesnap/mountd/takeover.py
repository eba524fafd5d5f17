"""What a daemon does differently under a holder (`fusesnap.mountd.holder`).

The first daemon hands the connection it mounted to the holder (`hand_to`); a
daemon that takes a connection over checks that it numbers the tree as the dead
one did (`check_same_tree`: the kernel keeps the inode numbers and open file
handles it was given, and a file handle here is an inode number).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from fusesnap.errors import MountError
from fusesnap.fuse import FuseOperations
from fusesnap.mountd.state import MountState

__all__ = ["check_same_tree", "hand_to"]

log = logging.getLogger(__name__)


def hand_to(channel: int) -> Callable[[int, bytes], None]:
    """Send a new connection's descriptor and INIT to the holder on ``channel``."""

    def hand(fuse_fd: int, init: bytes) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=channel)
        try:
            socket.send_fds(sock, [b"fuse " + init], [fuse_fd])
        finally:
            sock.detach()

    return hand


def check_same_tree(previous: MountState | None, ops: FuseOperations) -> None:
    """The kernel keeps the inode numbers the previous daemon gave: refuse to take over
    with a tree numbered otherwise (the numbering is a function of the layers' indexes)."""
    if previous is not None and previous.inodes and previous.inodes != ops.source.inode_count:
        raise MountError(
            f"{previous.mountpoint}: the image now has {ops.source.inode_count} inodes, "
            f"the mount was served with {previous.inodes}: cannot take it over"
        )
