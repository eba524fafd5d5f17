"""A FUSE connection that outlives its daemon: hand the ``/dev/fuse`` descriptor over.

The kernel keeps a FUSE mount alive as long as one descriptor of its
``/dev/fuse`` file is open. A holder process (`fusesnap.mountd.holder`) keeps
one; when the serving daemon dies, a new daemon takes the connection over:

- libfuse accepts ``/dev/fd/N`` as the "mount point" of an already mounted
  connection (``fuse_session_mount``), but it refuses every request until it
  has processed a ``FUSE_INIT`` (``se->got_init``), and the kernel sends INIT
  once per mount. So descriptor N is first a pipe holding the INIT the kernel
  sent at mount time (saved by the first daemon, `take_init`); libfuse reads
  it, calls the filesystem's ``init``, and there (`Handover.swap`) the real
  ``/dev/fuse`` descriptor is ``dup2``-ed onto N. libfuse's INIT reply then goes
  to the kernel, which has no such request pending any more and refuses it with
  ENOENT, which libfuse ignores. trio's epoll sees the new file at the next
  wait (its registration is one-shot and keyed by file as well as number).
  The first daemon goes the same way with the INIT it has just read: its
  reply completes the mount's handshake.
- Requests the dead daemon had read but not answered sit in the kernel's
  processing queue; `resend` (``FUSE_NOTIFY_RESEND``, Linux 6.9; no INIT flag
  needed) puts them back in the pending queue, so the new daemon answers them
  (every request of a read-only filesystem is idempotent). It is sent in the
  swap, before libfuse reads a request, so none is answered twice. Older kernels
  refuse it (EINVAL): those requests then wait forever, and the warning says so.
- `answer_eio`: what the holder does when no daemon can serve any more: every
  request, the re-sent ones included, is answered with EIO until the mount goes.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import struct
from dataclasses import dataclass

__all__ = ["FUSE_BUFFER", "Handover", "answer_eio", "fuse_descriptors", "resend", "take_init"]

log = logging.getLogger(__name__)

# A read of /dev/fuse must have room for the largest request (libfuse's bufsize).
FUSE_BUFFER = (1 << 20) + 2 * 4096

_IN_HEADER = struct.Struct("<IIQ")  # len, opcode, unique (of struct fuse_in_header)
_OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique (struct fuse_out_header)
_FUSE_INIT = 26
_FUSE_NOTIFY_RESEND = 7
_NO_REPLY = frozenset({2, 36, 42})  # FORGET, INTERRUPT, BATCH_FORGET


def fuse_descriptors() -> set[int]:
    """This process's descriptors of ``/dev/fuse`` (libfuse keeps its own number)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.add(int(name))
        except OSError:
            continue  # the listing's own descriptor, closed by now
    return found


def take_init(fd: int, *, timeout: float = 10.0) -> bytes:
    """Read the INIT request the kernel queued when it mounted ``fd``'s connection.
    `OSError` if something else (or nothing) comes."""
    readable, _, _ = select.select([fd], [], [], timeout)
    if not readable:
        raise OSError(errno.ETIMEDOUT, "no FUSE_INIT from the kernel")
    message = os.read(fd, FUSE_BUFFER)
    if len(message) < _IN_HEADER.size or _IN_HEADER.unpack_from(message)[1] != _FUSE_INIT:
        raise OSError(errno.EPROTO, "the first FUSE request is not FUSE_INIT")
    return message


def resend(fd: int) -> bool:
    """Have the kernel send again every request read from ``fd``'s connection and not
    answered (``FUSE_NOTIFY_RESEND``); False if this kernel cannot."""
    try:
        os.write(fd, _OUT_HEADER.pack(_OUT_HEADER.size, _FUSE_NOTIFY_RESEND, 0))
    except OSError as exc:
        log.warning("the kernel cannot re-send requests (%s): in-flight ones are lost", exc)
        return False
    return True


@dataclass
class Handover:
    """libfuse's session descriptor ``number`` is a pipe with ``init`` in it until
    `swap` puts the connection ``fuse_fd`` there (module docstring).

    `start` makes the pipe: for a taken-over connection ``number`` is then the pipe
    (libfuse's mount point is ``/dev/fd/NUMBER``); for a connection libfuse has just
    mounted, pass libfuse's descriptor as ``number`` and the pipe is put on it.
    """

    fuse_fd: int
    init: bytes
    takeover: bool = False  # a dead daemon's connection: have its requests re-sent
    number: int = -1
    swapped: bool = False

    def start(self, number: int | None = None) -> int:
        """Put the INIT in a pipe at ``number`` (a new descriptor if None); the number."""
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, self.init)
        finally:
            os.close(write_end)  # libfuse reads the INIT only, then N is swapped
        if number is None:
            self.number = read_end
        else:
            os.dup2(read_end, number)
            os.close(read_end)
            self.number = number
        return self.number

    def swap(self) -> None:
        """Called from the filesystem's ``init``: the real connection takes number N."""
        if self.swapped:
            return
        os.dup2(self.fuse_fd, self.number)
        os.close(self.fuse_fd)
        self.fuse_fd = self.number
        self.swapped = True
        # Before libfuse reads anything: no request is read twice. (The INIT reply that
        # follows is refused, as the kernel answered that INIT long ago.)
        if self.takeover and resend(self.number):
            log.info("took the connection over; the kernel re-sends what was in flight")


def answer_eio(fd: int) -> None:
    """Answer every request on ``fd`` with EIO (re-sent ones first) until the mount is
    gone (the read fails with ENODEV)."""
    resend(fd)
    while True:
        try:
            message = os.read(fd, FUSE_BUFFER)
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                continue  # interrupted, or a request withdrawn while read
            if exc.errno != errno.ENODEV:
                log.warning("reading the FUSE connection: %s", exc)
            return
        if not message:
            return  # not /dev/fuse after all (it never reads 0 bytes)
        if len(message) < _IN_HEADER.size:
            continue
        _, opcode, unique = _IN_HEADER.unpack_from(message)
        if opcode in _NO_REPLY:
            continue
        try:
            os.write(fd, _OUT_HEADER.pack(_OUT_HEADER.size, -errno.EIO, unique))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return
