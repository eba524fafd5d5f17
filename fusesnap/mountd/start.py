"""Mounts seen from the command line: start a daemon, take a mount down, ask for stats.

`start_mount(options)` checks what it can at once (the image is in the store
and whole, DIR can be mounted on) and builds the merged tree, then starts the
daemon: `fusesnap.mountd.serve_image` with the same `DaemonOptions`, in its own
session (no controlling terminal, cwd /), stdout and stderr to
``ROOT/mounts/<id>/daemon.log``, and waits until the daemon writes ``ready`` (or
``error: ...``) on a pipe, or its end of the pipe closes (it exited).

The daemon is forked from this process (twice, so that it belongs to init, not
to a caller that may outlive it as a zombie) when this process holds no store
open: it is handed the checked image view, and fusesnap is imported already,
which saves a new interpreter's start-up (~0.4 s of a cold mount). A process
with a store open must not fork a store user (LMDB's rule): it executes
``python -m fusesnap.mountd OPTIONS-JSON FD`` instead, which checks the image
itself.

`unmount` asks the kernel to unmount DIR (``fusermount3 -u``); the daemon sees
its session end, drops its lease and exits, and `unmount` waits for that. A
daemon that does not exit gets SIGTERM, then SIGKILL. With ``lazy``, a mount
still in use is detached from the tree and its daemon left to serve the
processes inside until the last one leaves. A stale mount (daemon gone) is
detached lazily, and the dead daemon's lease deleted.

`mount_stats` asks the daemon over its control socket (`fusesnap.mountd.control`).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn, Protocol

from fusesnap.errors import NotFoundError
from fusesnap.image import ImageView
from fusesnap.mountd.control import query
from fusesnap.mountd.daemon import prepare_mountpoint
from fusesnap.mountd.holder import hold, serve_logged
from fusesnap.mountd.imagecheck import open_view
from fusesnap.mountd.mountpoint import (
    FSTYPE,
    MountError,
    absolute_path,
    detach,
    is_stale,
    mount_info,
)
from fusesnap.mountd.options import MOUNTED, DaemonOptions, Supervision
from fusesnap.mountd.state import (
    CONTROL_SOCKET,
    DAEMON_LOG,
    MountState,
    make_state_dir,
    process_start_time,
    state_dir,
)
from fusesnap.mountd.zygote import Zygote
from fusesnap.store import any_open, open_store

__all__ = ["mount_stats", "run_daemon", "run_takeover", "start_mount", "unmount"]

log = logging.getLogger(__name__)

READY_TIMEOUT = 300.0
EXIT_TIMEOUT = 20.0
LAZY_WAIT = 2.0


def start_mount(
    options: DaemonOptions,
    *,
    view: ImageView | None = None,
    timeout: float = READY_TIMEOUT,
    zygote: Zygote | None = None,
    mounted: bool = False,
) -> MountState:
    """Mount the image of ``options`` by a background daemon; return once it serves,
    or with ``mounted``, once the kernel mount is in place (the daemon then builds
    the tree while the kernel holds the first requests; if that fails, the daemon
    takes the mount down and says why in its log, and those requests fail).

    ``view``: the image, already checked by the caller (`check_image`) and its tree built
    while the caller's store was open (the forked daemon serves that tree). ``zygote``:
    have it fork the daemon, which checks the image and builds the tree itself (a
    starter that holds a store open); so does a daemon whose options say to wait for the
    layers' indexes (``wait_layers``), started as a new interpreter without a zygote.
    `NotFoundError` if the image is not (wholly) in the store, `MountError` if DIR cannot
    be mounted on or the daemon fails (its message).
    """
    options = options.absolute()
    target = prepare_mountpoint(options.mountpoint)
    if view is None and zygote is None and not options.wait_layers:
        with open_store(options.root) as store:
            view = open_view(store, options)
            view.tree()  # built here, once: the forked daemon serves it
    directory = make_state_dir(options.root, target)
    log_path = directory / DAEMON_LOG
    read_end, write_end = os.pipe()
    try:
        if zygote is not None:
            proc: _Daemon = _FromZygote(zygote, options, write_end, log_path)
        elif view is None or any_open():  # a daemon that waits for its layers checks them
            cmd = [sys.executable, "-m", "fusesnap.mountd", options.to_json(), str(write_end)]
            proc = _Spawned(cmd, write_end, log_path)
        else:
            assert view is not None
            proc = _Forked(options, view, write_end, read_end, log_path)
        os.close(write_end)
        write_end = -1
        message = _wait_ready(read_end, proc, timeout, mounted=mounted)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if message == "ready" or (mounted and message == MOUNTED):
        state = MountState.load(directory)
        if state is None:
            raise MountError(f"{target}: the daemon said ready but left no state")
        return state
    if not proc.wait(EXIT_TIMEOUT):  # it exits by itself after an error, dropping its lease
        proc.terminate()
    if not message:
        message = _last_error(log_path) or "the mount daemon exited"
    raise MountError(f"{message.removeprefix('error: ')} (log: {log_path})")


def run_daemon(options: DaemonOptions, ready_fd: int, view: ImageView | None = None) -> int:
    """The background mount's body: log to stderr, and hold the mount while a daemon
    serves it (`fusesnap.mountd.holder`). The exit code."""
    _log_to_stderr(options)
    return hold(options, ready_fd, view)


def run_takeover(options: DaemonOptions, channel: int, fuse_fd: int, init: bytes) -> int:
    """A daemon started by a holder to take the mounted connection ``fuse_fd`` over."""
    _log_to_stderr(options)
    supervision = Supervision(channel, os.getppid(), takeover=(fuse_fd, init))
    return serve_logged(options, supervision=supervision)


def _log_to_stderr(options: DaemonOptions) -> None:
    top = logging.getLogger()
    for handler in top.handlers[:]:  # the starter's (not closed: they are not ours)
        top.removeHandler(handler)
    logging.basicConfig(
        level=logging.DEBUG if options.verbose else logging.INFO,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.DEBUG if options.verbose else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.INFO)  # its per-event traces
    logging.getLogger("indexed_gzip").setLevel(logging.INFO)  # a line per seek


class _Daemon(Protocol):
    def terminate(self) -> None: ...

    def wait(self, timeout: float) -> bool:
        """Whether it exited within ``timeout`` seconds."""
        ...


class _Spawned:
    """The daemon as a fresh interpreter (``python -m fusesnap ...``)."""

    def __init__(self, cmd: list[str], ready_fd: int, log_path: Path) -> None:
        with open(log_path, "wb") as log_file:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                pass_fds=(ready_fd,),
                start_new_session=True,
                cwd="/",
            )

    def terminate(self) -> None:
        self._proc.terminate()

    def wait(self, timeout: float) -> bool:
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


class _Announced:
    """A daemon that writes its pid on the ready pipe first (``pid N``), so that it can
    be signalled; it is init's child, so it is gone (not a zombie) once it exits."""

    pid = 0

    def terminate(self) -> None:
        if self.pid:
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.pid and process_start_time(self.pid) is not None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


class _FromZygote(_Announced):
    """The daemon forked by a `Zygote` (it builds its view itself)."""

    def __init__(self, zygote: Zygote, options: DaemonOptions, ready_fd: int, log_path: Path):
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            zygote.fork_daemon(options, ready_fd, log_fd)
        finally:
            os.close(log_fd)


class _Forked(_Announced):
    """The daemon forked (twice) from this process, serving ``options`` with ``view``."""

    def __init__(
        self,
        options: DaemonOptions,
        view: ImageView,
        ready_fd: int,
        read_fd: int,
        log_path: Path,
    ) -> None:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            first = os.fork()
            if first == 0:
                os.close(read_fd)
                daemon_child(options, view, ready_fd, log_fd)  # never returns
            os.waitpid(first, 0)  # the middle process exits at once
        finally:
            os.close(log_fd)


def daemon_child(
    options: DaemonOptions, view: ImageView | None, ready_fd: int, log_fd: int
) -> NoReturn:
    """In a child of the starter (or of the zygote): become a daemon of a session of
    its own (one more fork, so that init is its parent), log to ``log_fd``, keep no other
    descriptor but ``ready_fd``, say ``pid N`` there, and serve ``options``."""
    code = 1
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        for fd in (null, log_fd):
            os.close(fd)
        # The starter's sys.stdout/sys.stderr may be anything (a test's capture): the log.
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        # Nothing else of the starter's (pipes a caller waits on to close, sockets).
        os.closerange(3, ready_fd)
        os.closerange(ready_fd + 1, os.sysconf("SC_OPEN_MAX"))
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.write(ready_fd, f"pid {os.getpid()}\n".encode())
        code = run_daemon(options, ready_fd, view)
    except BaseException:
        traceback.print_exc()
    finally:
        with suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _wait_ready(fd: int, proc: _Daemon, timeout: float, *, mounted: bool = False) -> str:
    """The daemon's first line on ``fd`` after its ``pid N`` line (a forked daemon's)
    and, unless ``mounted``, its ``mounted`` line; "" if it closed the pipe (exited)
    first."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        line, newline, rest = data.partition(b"\n")
        if newline and line.startswith(b"pid ") and isinstance(proc, _Announced):
            proc.pid = int(line[4:])
            data = rest
            continue
        if newline and line.strip() == MOUNTED.encode() and not mounted:
            data = rest
            continue
        if newline:
            return line.decode("utf-8", "replace").strip()
        left = deadline - time.monotonic()
        if left <= 0:
            proc.terminate()
            raise MountError(f"the mount daemon was not ready within {timeout:.0f}s")
        readable, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not readable:
            continue
        piece = os.read(fd, 4096)
        if not piece:
            return ""
        data += piece


def _last_error(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("fusesnap: "):
            return line.removeprefix("fusesnap: ").removeprefix("error: ")
    return lines[-1] if lines else ""


def _wait_gone(state: MountState, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while state.daemon_alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _stop_daemon(state: MountState) -> None:
    """Make sure the daemon of ``state`` is gone: wait, then SIGTERM, then SIGKILL."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and state.daemon_alive():
            log.warning("daemon %d did not exit; sending %s", state.pid, sig.name)
            with suppress(ProcessLookupError):
                os.kill(state.pid, sig)
        if _wait_gone(state, EXIT_TIMEOUT if sig is None else 5.0):
            return
    raise MountError(f"the mount daemon (pid {state.pid}) does not exit")


def unmount(root: Path, mountpoint: str | os.PathLike[str], *, lazy: bool = False) -> str:
    """Take the fusesnap mount at ``mountpoint`` down (module docstring); what was done.

    ``lazy`` detaches it even while processes use it. `MountError` if nothing
    is mounted there, it is not a fusesnap mount, or it is busy (without ``lazy``).
    """
    target = absolute_path(mountpoint)
    directory = state_dir(root, target)
    state = MountState.load(directory)
    info = mount_info(target)
    alive = state is not None and state.daemon_alive()
    if info is None and not alive:
        _forget(root, directory, state)
        raise MountError(f"{target}: not mounted")
    if info is not None and info.fstype != FSTYPE and not is_stale(target):
        raise MountError(f"{target}: not a fusesnap mount ({info.fstype})")
    if alive:
        assert state is not None
        if info is not None:
            try:
                detach(target, lazy=lazy)
            except MountError as exc:
                raise MountError(f"{exc} (--lazy detaches it anyway)") from None
        if lazy and not _wait_gone(state, LAZY_WAIT):
            # Detached, but processes still use it: the daemon serves them until the last
            # one leaves, then exits and drops its lease by itself.
            return f"detached (daemon {state.pid} exits when the last user leaves)"
        _stop_daemon(state)
        done = "unmounted"
    else:
        detach(target, lazy=True)
        done = "cleared a stale mount (its daemon had died)"
    if state is not None:
        _stop_holder(state)
    _forget(root, directory, state)
    return done


def _stop_holder(state: MountState) -> None:
    """The holder ends once its daemon has (or, with no daemon, once the mount is gone);
    one that does not is stopped: SIGTERM, then SIGKILL."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and state.holder_alive():
            assert state.holder_pid is not None
            log.warning("holder %d did not exit; sending %s", state.holder_pid, sig.name)
            with suppress(ProcessLookupError):
                os.kill(state.holder_pid, sig)
        deadline = time.monotonic() + 5.0
        while state.holder_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not state.holder_alive():
            return


def _forget(root: Path, directory: Path, state: MountState | None) -> None:
    """Remove what a gone daemon left: its state file and its lease."""
    if state is None:
        return
    with open_store(root) as store, suppress(NotFoundError):
        store.leases.delete(state.lease_id)
    MountState.remove(directory)


def mount_stats(root: Path, mountpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The running daemon's counters for ``mountpoint`` (see the ``stats`` command)."""
    target = absolute_path(mountpoint)
    directory = state_dir(root, target)
    state = MountState.load(directory)
    if state is None or not state.daemon_alive():
        raise MountError(f"{target}: no fusesnap mount is running there")
    reply = query(directory / CONTROL_SOCKET)
    if not isinstance(reply, dict):
        raise MountError(f"{target}: the daemon answered {type(reply).__name__}, not a dict")
    return reply
