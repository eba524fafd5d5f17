"""The mount daemon's control socket: ``fusesnap stats DIR`` asks, the daemon answers.

A unix stream socket in the mount's state directory (``control.sock``). One
request per connection: the client sends a command line (``stats``), the
daemon answers one line of JSON and closes. Live numbers, and nothing
written to disk while the mount is idle; only processes that may enter the
state directory can ask (``ROOT/mounts`` is mode 0700).

Unix socket paths are limited to 107 bytes; a longer one (deep ``--root``)
is reached through ``/proc/self/fd/N/`` of a descriptor of its directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from fusesnap.mountd.mountpoint import MountError

__all__ = ["query", "serve_control"]

log = logging.getLogger(__name__)

_MAX_SUN_PATH = 100
_MAX_REQUEST = 256
_CLIENT_TIMEOUT = 10.0


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """A name for ``path`` short enough for ``sockaddr_un``."""
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


async def serve_control(
    path: Path,
    answers: dict[str, Callable[[], dict[str, Any]]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``COMMAND`` lines on a socket at ``path`` with ``answers[COMMAND]()`` as JSON,
    until cancelled; the socket file is removed at the end.

    Concurrency: each connection is its own task; a client that does not send
    its request within a few seconds is dropped.
    """
    _unlink(path)
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _address(path) as address:
            await listener.bind(address)
        listener.listen(16)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(_answer, trio.SocketStream(conn), answers)
    finally:
        listener.close()
        _unlink(path)


def _unlink(path: Path) -> None:
    # A socket file is a directory entry only: removing it never waits on the disk.
    path.unlink(missing_ok=True)


Answers = dict[str, Callable[[], dict[str, Any]]]


async def _answer(stream: trio.SocketStream, answers: Answers) -> None:
    async with stream:
        with trio.move_on_after(5):
            request = b""
            while b"\n" not in request and len(request) < _MAX_REQUEST:
                data = await stream.receive_some(_MAX_REQUEST)
                if not data:
                    break
                request += data
            command = request.split(b"\n", 1)[0].decode("ascii", "replace").strip()
            reply = _reply(answers, command)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(reply).encode() + b"\n")


def _reply(answers: Answers, command: str) -> dict[str, Any]:
    answer = answers.get(command)
    if answer is None:
        return {"error": f"unknown command {command!r}"}
    try:
        return answer()
    except Exception as exc:  # a bug in an answer must not end the control socket
        log.exception("control command %r failed", command)
        return {"error": f"{command}: {type(exc).__name__}: {exc}"}


def query(path: Path, command: str = "stats", *, timeout: float = _CLIENT_TIMEOUT) -> Any:
    """Send ``command`` to the daemon listening at ``path``; its JSON answer.

    `MountError` if no daemon answers there.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, _address(path) as address:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            sock.sendall(command.encode("ascii") + b"\n")
            chunks = []
            while data := sock.recv(1 << 16):
                chunks.append(data)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise MountError(f"no fusesnap daemon answers on {path}: {exc.strerror}") from None
        except TimeoutError:
            raise MountError(f"the fusesnap daemon on {path} did not answer") from None
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise MountError(f"the fusesnap daemon on {path} answered garbage") from None
    if isinstance(reply, dict) and "error" in reply:
        raise MountError(f"the fusesnap daemon on {path}: {reply['error']}")
    return reply
