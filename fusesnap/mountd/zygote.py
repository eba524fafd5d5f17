"""A zygote: a process forked early that forks mount daemons on request.

A long-running starter (the containerd snapshotter) holds the store open and
runs threads, so it may not fork a mount daemon itself, and spawning a new
interpreter costs one start-up and fusesnap's imports per mount (about half a
second with cold page caches). `Zygote()` forks once, before the starter opens
the store or starts a thread: the child imports the mount daemon's modules and
waits. `Zygote.fork_daemon` sends it a daemon's options with its ready pipe
and log file (as file descriptors, over a unix socket); the zygote forks the
daemon from itself (twice, as `fusesnap.mountd.start` does), which opens its
own store and serves. The daemon belongs to init and its own session: it
outlives the zygote and the starter.

The zygote exits when the starter closes its end (`close`) or dies.
"""

from __future__ import annotations

import os
import signal
import socket
from contextlib import suppress

from fusesnap.errors import MountError
from fusesnap.mountd.options import DaemonOptions

__all__ = ["Zygote"]

_MAX_MESSAGE = 1 << 16


class Zygote:
    """The forking process (module docstring); create it before opening a store."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the zygote
            ours.close()
            _serve(theirs)  # never returns
        theirs.close()
        self.pid = pid
        self._sock: socket.socket | None = ours

    def fork_daemon(self, options: DaemonOptions, ready_fd: int, log_fd: int) -> None:
        """Have a mount daemon forked for ``options``: it writes ``pid N`` and then its
        readiness on ``ready_fd``, and logs to ``log_fd``. `MountError` if the zygote is
        gone."""
        if self._sock is None:
            raise MountError("the mount zygote is closed")
        try:
            socket.send_fds(self._sock, [options.to_json().encode()], [ready_fd, log_fd])
        except OSError as exc:
            raise MountError(f"the mount zygote is gone ({exc})") from exc

    def close(self) -> None:
        """Let the zygote exit (the daemons it forked serve on)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            with suppress(ChildProcessError):
                os.waitpid(self.pid, 0)


def _serve(sock: socket.socket) -> None:
    code = 0
    try:
        os.setsid()  # the starter's terminal signals are not ours
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from fusesnap.mountd.start import daemon_child  # the daemon's modules, loaded once

        while True:
            message, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 2)
            if not message:
                break  # the starter closed its end, or died
            if len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                continue
            ready_fd, log_fd = fds
            first = os.fork()
            if first == 0:
                sock.close()
                daemon_child(DaemonOptions.from_json(message.decode()), None, ready_fd, log_fd)
            os.close(ready_fd)
            os.close(log_fd)
            os.waitpid(first, 0)  # the middle process exits at once
    except BaseException:
        code = 1
    finally:
        os._exit(code)
