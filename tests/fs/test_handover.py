"""`fusesnap.fuse.handover` on a socket standing in for /dev/fuse: what a daemon taking a
connection over, and a holder answering EIO, write to the kernel."""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from fusesnap.fuse import Handover, answer_eio
from fusesnap.fuse.handover import take_init

_IN = struct.Struct("<IIQQIIII")  # struct fuse_in_header
_OUT = struct.Struct("<IiQ")  # struct fuse_out_header
RESEND = _OUT.pack(16, 7, 0)


def _request(opcode: int, unique: int, body: bytes = b"") -> bytes:
    return _IN.pack(_IN.size + len(body), opcode, unique, 1, 0, 0, 0, 0) + body


@pytest.fixture
def kernel() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the kernel's end, the daemon's end)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield ours, theirs
    ours.close()
    theirs.close()


@pytest.mark.parametrize("takeover", [False, True])
def test_libfuse_reads_the_init_then_the_number_is_the_connection(kernel, takeover) -> None:
    ours, theirs = kernel
    init = _request(26, 2, b"\x07\x00\x00\x00" + bytes(60))
    handover = Handover(os.dup(theirs.fileno()), init, takeover=takeover)
    number = handover.start()
    try:
        assert os.read(number, 4096) == init  # what libfuse reads first
        assert os.read(number, 4096) == b""  # and nothing else from the pipe
        handover.swap()
        assert handover.swapped
        assert handover.fuse_fd == number
        # A re-send request goes to the kernel at once, before anything is read.
        if takeover:
            assert ours.recv(64) == RESEND
        ours.setblocking(False)
        with pytest.raises(BlockingIOError):
            ours.recv(64)
        os.write(number, b"reply")  # libfuse's INIT reply and the rest: to the kernel
        assert ours.recv(64) == b"reply"
    finally:
        os.close(number)


def test_the_pipe_can_take_libfuses_number(kernel) -> None:
    _, theirs = kernel
    number = os.dup(theirs.fileno())  # libfuse's descriptor of a connection it mounted
    handover = Handover(os.dup(theirs.fileno()), _request(26, 2))
    assert handover.start(number) == number
    assert os.read(number, 4096) == _request(26, 2)
    handover.swap()
    os.close(number)


def test_answer_eio_answers_every_request_but_those_without_reply(kernel) -> None:
    ours, theirs = kernel
    for opcode, unique in ((1, 10), (2, 12), (15, 14), (36, 16), (42, 18), (3, 1 << 63 | 20)):
        ours.send(_request(opcode, unique))
    ours.shutdown(socket.SHUT_WR)
    answer_eio(theirs.fileno())
    replies = [ours.recv(64) for _ in range(4)]
    assert replies[0] == RESEND  # in-flight requests of the dead daemon come back first
    assert replies[1:] == [_OUT.pack(16, -errno.EIO, u) for u in (10, 14, 1 << 63 | 20)]


def test_take_init_refuses_anything_else(kernel) -> None:
    ours, theirs = kernel
    ours.send(_request(1, 2))
    with pytest.raises(OSError, match="not FUSE_INIT"):
        take_init(theirs.fileno())
    ours.send(_request(26, 4))
    assert take_init(theirs.fileno()) == _request(26, 4)
