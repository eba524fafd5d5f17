"""The holder: keeps a mount's FUSE connection open and restarts the daemon that serves it.

A background mount is two processes: the holder (what ``pid N`` on the ready pipe
names, the process `fusesnap.mountd.start` forks or spawns) and its child, the
daemon (`serve_image`, the pid in ``mount.json``). The daemon mounts, then hands a
descriptor of the new ``/dev/fuse`` connection and the INIT request the kernel sent
to the holder (`fusesnap.fuse.handover`). While the holder keeps that descriptor,
the kernel keeps the mount connected whatever happens to the daemon: if it dies
(``kill -9``, a crash), readers wait, and the holder forks a new daemon (fusesnap's
modules are loaded already: about a second), which opens the store, checks the
image again, takes the connection over, has the kernel send again the requests the
dead one had read, and serves on: the processes reading see no error.

A restart that does not come up is tried again (`START_DELAYS`); a daemon that dies
too often (`MAX_RESTARTS` within `RESTART_WINDOW` seconds) or cannot start at all
(the store or the image is gone) is not started again: the holder records why
(``failed`` in the mount's state directory: ``fusesnap ps`` shows it) and answers
every request with EIO, so nothing waits forever, until the mount is taken down.

The holder ends with its daemon when that ends by itself (exit status 0: unmounted,
or stopped by a signal). Signals: SIGTERM, SIGINT and SIGHUP are passed on to the
daemon; SIGUSR1 hands the mount to a new daemon (``fusesnap remount``: after an
upgrade), by killing the running one and taking over as after a crash, but in a
fresh interpreter (``python -m fusesnap.mountd ... --takeover``), so that the
fusesnap installed now serves from then on.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import FrameType

from fusesnap.errors import FusesnapError
from fusesnap.fuse import FUSE_BUFFER, answer_eio
from fusesnap.image import ImageView
from fusesnap.mountd.control import query
from fusesnap.mountd.daemon import serve_image
from fusesnap.mountd.mountpoint import MountError, absolute_path, detach, mount_info
from fusesnap.mountd.options import MOUNTED, DaemonOptions, Supervision
from fusesnap.mountd.state import (
    CONTROL_SOCKET,
    MountState,
    failure,
    make_state_dir,
    mark_failed,
    state_dir,
)

__all__ = [
    "MAX_RESTARTS",
    "RESTART_WINDOW",
    "START_DELAYS",
    "hand_over",
    "hold",
    "serve_logged",
    "wait_serving",
]

log = logging.getLogger(__name__)

FIRST_READY_TIMEOUT = 300.0  # as the starter waits
RESTART_READY_TIMEOUT = 60.0
START_DELAYS = (0.0, 0.5, 2.0)  # before each attempt to bring a daemon back
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
_PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def hold(options: DaemonOptions, ready_fd: int, view: ImageView | None = None) -> int:
    """Be the holder of a new mount of ``options`` (module docstring): start its daemon
    (forked, serving ``view`` if given), tell the starter on ``ready_fd`` what it says,
    and keep it running. The exit code: the first daemon's if it never served."""
    holder = _Holder(options)
    for sig in _PASSED_ON:
        signal.signal(sig, holder.on_stop)
    signal.signal(signal.SIGUSR1, holder.on_restart)
    message, code = holder.first(view, ready_fd)
    with suppress(OSError):
        os.write(ready_fd, message.encode() + b"\n" if message else b"")
    os.close(ready_fd)
    if message != "ready":
        return code
    return holder.supervise()


def serve_logged(
    options: DaemonOptions,
    *,
    on_ready: Callable[[str], None] = lambda message: None,
    view: ImageView | None = None,
    supervision: Supervision | None = None,
) -> int:
    """`serve_image` in a daemon process: what went wrong is said in one line
    (``fusesnap: error: ...``, which the starter shows). The exit code."""
    try:
        serve_image(options, on_ready=on_ready, view=view, supervision=supervision)
    except FusesnapError as exc:
        if options.verbose:
            traceback.print_exc()
        print(f"fusesnap: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        traceback.print_exc()
        print(f"fusesnap: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.stderr.flush()
    return 0


def hand_over(
    root: Path, mountpoint: str | os.PathLike[str], *, timeout: float = 60.0
) -> MountState:
    """Have the holder of the mount at ``mountpoint`` hand it to a fresh daemon (which
    runs the fusesnap installed now); the new daemon's state once it serves.
    `MountError` if there is no holder or no new daemon comes up within ``timeout``."""
    target = absolute_path(mountpoint)
    directory = state_dir(root, target)
    state = MountState.load(directory)
    if state is None or not state.holder_alive() or state.holder_pid is None:
        raise MountError(f"{target}: no fusesnap mount with a holder is running there")
    os.kill(state.holder_pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = MountState.load(directory)
        if now is not None and now.pid != state.pid and now.daemon_alive():
            with suppress(MountError):
                query(directory / CONTROL_SOCKET)  # it serves
                return now
        time.sleep(0.05)
    raise MountError(f"{target}: no new daemon within {timeout:.0f}s (see its log)")


def wait_serving(
    root: Path,
    mountpoint: str | os.PathLike[str],
    *,
    timeout: float = 60.0,
    starting: bool = False,
) -> bool:
    """Whether a daemon serves the mount at ``mountpoint``, waiting while its holder
    brings one back; False at once if there is no holder or it gave up. With
    ``starting``, the mount's first daemon alive and still building its tree counts:
    the kernel holds the mount's requests until it answers."""
    directory = state_dir(root, absolute_path(mountpoint))
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        with suppress(MountError):
            query(directory / CONTROL_SOCKET)
            return True
        state = MountState.load(directory)
        if state is None or not state.holder_alive() or failure(directory) is not None:
            return False
        if starting and state.daemon_alive():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


class _Holder:
    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.directory = make_state_dir(options.root, options.mountpoint)
        self.fuse_fd = -1
        self.init = b""
        self.child = 0
        self.stopping = False
        self.fresh = False  # the next daemon runs a new interpreter (remount: an upgrade)

    # Signal handlers: they run between the holder's system calls (which are retried).

    def on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self._signal_child(signum)

    def on_restart(self, signum: int, frame: FrameType | None) -> None:
        log.info("handing the mount to a new daemon")
        self.fresh = True
        self._signal_child(signal.SIGKILL)

    def _signal_child(self, signum: int) -> None:
        if self.child:
            with suppress(ProcessLookupError):
                os.kill(self.child, signum)

    # The daemons.

    def first(self, view: ImageView | None, ready_fd: int) -> tuple[str, int]:
        """Fork the daemon that mounts; its last line (``ready``, ``error: ...``, or ""
        if it exited first) and, if that is not ``ready``, its exit code. A ``mounted``
        line before it is passed on to the starter on ``ready_fd`` at once."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            for sig in (*_PASSED_ON, signal.SIGUSR1):
                signal.signal(sig, signal.SIG_DFL)
            supervision = Supervision(theirs.detach(), holder_pid=os.getppid())
            os._exit(serve_logged(self.options, supervision=supervision, view=view))
        theirs.close()
        self.child = pid
        with ours:
            deadline = time.monotonic() + FIRST_READY_TIMEOUT
            message = self._wait_ready(ours, FIRST_READY_TIMEOUT)
            if message == MOUNTED:
                with suppress(OSError):  # a starter that waits for "ready" only skips it
                    os.write(ready_fd, f"{MOUNTED}\n".encode())
                message = self._wait_ready(ours, max(deadline - time.monotonic(), 0.0))
        if message == "ready" and self.fuse_fd < 0:
            log.error("the daemon said ready but handed over no connection")
        if message != "ready" or self.fuse_fd < 0:
            self._signal_child(signal.SIGTERM)
            return message, self._reap()
        return message, 0

    def _takeover(self, *, fresh: bool) -> str:
        """Start a daemon on the held connection; its first line. Forked from this
        process, which has fusesnap's modules loaded (after a crash: back sooner), or
        with ``fresh``, a new interpreter (which runs the fusesnap installed now)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        channel = theirs.fileno()
        cmd = [sys.executable, "-m", "fusesnap.mountd", self.options.to_json(), str(channel)]
        cmd += ["--takeover", str(self.fuse_fd), self.init.hex()]
        pid = os.fork()
        if pid == 0:
            code = 127
            try:
                ours.close()
                for sig in (*_PASSED_ON, signal.SIGUSR1):
                    signal.signal(sig, signal.SIG_DFL)
                if fresh:
                    os.set_inheritable(channel, True)
                    os.set_inheritable(self.fuse_fd, True)
                    os.execv(sys.executable, cmd)
                takeover = (self.fuse_fd, self.init)
                supervision = Supervision(channel, os.getppid(), takeover=takeover)
                code = serve_logged(self.options, supervision=supervision)
            finally:
                os._exit(code)
        theirs.close()
        self.child = pid
        with ours:
            return self._wait_ready(ours, RESTART_READY_TIMEOUT)

    def _wait_ready(self, sock: socket.socket, timeout: float) -> str:
        """Messages from the child on ``sock`` until its readiness line; "" if it exits
        first or is not ready within ``timeout`` seconds (then it is killed)."""
        pidfd = os.pidfd_open(self.child)
        try:
            deadline = time.monotonic() + timeout
            exited = False  # then only what it said before it exited is read
            while True:
                left = 0.0 if exited else deadline - time.monotonic()
                if left < 0:
                    log.error("daemon %d: not ready within %.0fs; killing it", self.child, timeout)
                    self._signal_child(signal.SIGKILL)
                    return ""
                fds = [sock.fileno()] if exited else [sock.fileno(), pidfd]
                readable, _, _ = select.select(fds, [], [], left)
                if sock.fileno() in readable:
                    message, passed, _, _ = socket.recv_fds(sock, FUSE_BUFFER, 1)
                    if passed:
                        self.fuse_fd, self.init = passed[0], message.removeprefix(b"fuse ")
                        continue
                    return message.decode("utf-8", "replace").strip()
                if exited:
                    return ""
                exited = pidfd in readable
        finally:
            os.close(pidfd)

    def _reap(self) -> int:
        """Wait for the child; its exit code (128 + N if signal N killed it)."""
        _, status = os.waitpid(self.child, 0)
        self.child = 0
        return (
            os.waitstatus_to_exitcode(status)
            if os.WIFEXITED(status)
            else 128 + (os.WTERMSIG(status))
        )

    def supervise(self) -> int:
        """Keep a daemon serving the held connection until one ends by itself."""
        restarts: collections.deque[float] = collections.deque()
        while True:
            pid = self.child
            code = self._reap()
            if code == 0 or self.stopping:
                return self._end(detach_mount=code != 0)
            now = time.monotonic()
            while restarts and now - restarts[0] > RESTART_WINDOW:
                restarts.popleft()
            if len(restarts) >= MAX_RESTARTS:
                return self._give_up(f"the daemon died {len(restarts) + 1} times in a minute")
            restarts.append(now)
            log.warning("daemon %d ended (%s); starting a new one", pid, _how(code))
            if not self._bring_back():
                if self.stopping:
                    return self._end(detach_mount=True)
                return self._give_up("no daemon could take the mount over (see the log)")

    def _end(self, *, detach_mount: bool) -> int:
        """Let the connection go. ``detach_mount``: no daemon unmounted it (stopped while
        none ran): detached here, so that it is not left stale."""
        if detach_mount and mount_info(self.options.mountpoint) is not None:
            with suppress(MountError):
                detach(self.options.mountpoint, lazy=True)
        os.close(self.fuse_fd)
        return 0

    def _bring_back(self) -> bool:
        for delay in START_DELAYS:
            time.sleep(delay)
            if self.stopping:
                return False
            fresh, self.fresh = self.fresh, False
            message = self._takeover(fresh=fresh)
            if message == "ready":
                log.info("daemon %d serves the mount", self.child)
                return True
            log.error("a new daemon did not start: %s", message or "it exited")
            if self.child:
                self._reap()
        return False

    def _give_up(self, reason: str) -> int:
        """No daemon any more: record why, answer EIO until the mount is taken down."""
        log.error("%s; reads of %s fail with EIO from now on", reason, self.options.mountpoint)
        mark_failed(self.directory, reason)
        for sig in _PASSED_ON:  # nothing to pass on: a stop signal ends the holder
            signal.signal(sig, signal.SIG_DFL)
        answer_eio(self.fuse_fd)
        os.close(self.fuse_fd)
        return 1


def _how(code: int) -> str:
    return f"signal {code - 128}" if code > 128 else f"exit status {code}"
