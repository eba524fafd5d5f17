"""runc, run as a command: state, kill, delete, and ``runc run`` in the foreground.

runc keeps its state under ``ROOT/runc`` (``runc --root``); a container's runc id is
its fusesnap name. Without a terminal runc's stderr is also the container's:
`_StderrFilter` passes it on but holds back runc's own error line (``runc run
failed: ...``), which `run_foreground` turns into one clear message and an exit code
(127: command not found, 126: not executable, 125: anything else runc refused).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from fusesnap.errors import FusesnapError

__all__ = [
    "EXIT_CANNOT_EXEC",
    "EXIT_NOT_FOUND",
    "EXIT_RUNTIME",
    "LIVE",
    "RunResult",
    "RuncError",
    "delete",
    "kill",
    "run_foreground",
    "runc_cmd",
    "runc_status",
    "wait_not_live",
]

RUNC = "runc"
RUNC_ROOT = "runc"
# What runc puts before an error of the container's start ("runc run failed: ...").
_RUNC_ERROR = b"runc run failed: "
_START_PREFIX = "unable to start container process: "

EXIT_NOT_FOUND = 127
EXIT_CANNOT_EXEC = 126
EXIT_RUNTIME = 125

# runc states in which the container has processes that a kill must reach.
LIVE = frozenset({"created", "running", "paused"})


class RuncError(FusesnapError):
    """runc cannot be started, or refused an operation."""


@dataclass(frozen=True)
class RunResult:
    """How a container's run ended: its exit code, or runc's error if it never started."""

    exit_code: int
    error: str | None = None


def runc_cmd(root: Path, *args: str) -> list[str]:
    runc_root = Path(root).absolute() / RUNC_ROOT
    return [RUNC, "--root", str(runc_root), *args]


def runc_status(root: Path, name: str) -> str | None:
    """runc's status of container ``name`` (created, running, paused, stopped); None if
    runc does not know it."""
    try:
        proc = subprocess.run(
            runc_cmd(root, "state", name), capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        status = json.loads(proc.stdout).get("status")
    except ValueError:
        return None
    return str(status) if status else None


def kill(root: Path, name: str, sig: str = "KILL") -> None:
    """Send ``sig`` to container ``name``'s init (the last of a pid namespace: its death
    kills the rest); a container already gone is not an error."""
    subprocess.run(runc_cmd(root, "kill", name, sig), capture_output=True, check=False)


def wait_not_live(root: Path, name: str, timeout: float) -> bool:
    """Wait until runc no longer lists ``name`` as live; whether it did in time."""
    deadline = time.monotonic() + timeout
    while runc_status(root, name) in LIVE:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def delete(root: Path, name: str) -> None:
    """Forget container ``name`` in runc (killing what is left of it)."""
    proc = subprocess.run(
        runc_cmd(root, "delete", "--force", name), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 and runc_status(root, name) is not None:
        raise RuncError(f"container {name}: runc delete: {proc.stderr.strip()}")


class _StderrFilter:
    """Relays runc's stderr (which, without a terminal, is also the container's) to ours,
    holding back runc's own error line (``runc run failed: ...``)."""

    def __init__(self, src: int, dst: int) -> None:
        self.src = src
        self.dst = dst
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._relay, daemon=True)
        self.thread.start()

    def _relay(self) -> None:
        pending = b""  # the start of a line that may be runc's error
        at_line_start = True
        while True:
            try:
                data = os.read(self.src, 65536)
            except OSError:
                data = b""
            if not data:
                break
            out = b""
            for piece in data.splitlines(keepends=True):
                if at_line_start or pending:
                    pending += piece
                    if pending.endswith(b"\n"):
                        if pending.startswith(_RUNC_ERROR):
                            self.errors.append(pending.decode("utf-8", "replace").strip())
                        else:
                            out += pending
                        pending = b""
                        at_line_start = True
                        continue
                    if _RUNC_ERROR.startswith(pending) or pending.startswith(_RUNC_ERROR):
                        at_line_start = False
                        continue  # wait for more
                    out += pending
                    pending = b""
                    at_line_start = False
                else:
                    out += piece
                    at_line_start = piece.endswith(b"\n")
            self._write(out)
        if pending.startswith(_RUNC_ERROR):
            self.errors.append(pending.decode("utf-8", "replace").strip())
        else:
            self._write(pending)
        os.close(self.src)

    def _write(self, data: bytes) -> None:
        while data:
            try:
                n = os.write(self.dst, data)
            except OSError:
                return
            data = data[n:]

    def join(self) -> list[str]:
        self.thread.join()
        return self.errors


def _error_result(message: str) -> RunResult:
    text = message.removeprefix(_RUNC_ERROR.decode()).removeprefix(_START_PREFIX)
    lowered = text.lower()
    if "executable file not found" in lowered or "no such file or directory" in lowered:
        return RunResult(EXIT_NOT_FOUND, text)
    if "permission denied" in lowered:
        return RunResult(EXIT_CANNOT_EXEC, text)
    return RunResult(EXIT_RUNTIME, text)


def run_foreground(root: Path, bundle: Path, name: str, *, terminal: bool = False) -> RunResult:
    """``runc run`` container ``name`` of ``bundle`` in the foreground: runc passes our
    stdin and stdout on (a terminal of its own with ``terminal``), its stderr comes
    through `_StderrFilter`; SIGINT, SIGTERM and SIGHUP are forwarded to runc, which
    passes them to the container. Returns when runc exits (it deletes its container
    then)."""
    cmd = runc_cmd(
        root,
        "--log",
        str(bundle / "runc.log"),
        "--log-format",
        "json",
        "run",
        "--bundle",
        str(bundle),
        name,
    )
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            cmd,
            stderr=write_end,
            # Without a terminal, Ctrl-C reaches us alone and we forward it once; with one,
            # runc must stay in the terminal's foreground process group (it puts it in raw
            # mode: Ctrl-C is then a byte for the container).
            process_group=None if terminal else 0,
        )
    except OSError as exc:
        os.close(read_end)
        raise RuncError(f"cannot start runc: {exc}") from None
    finally:
        os.close(write_end)
    relay = _StderrFilter(read_end, sys.stderr.fileno())
    with _forwarding_signals(proc.pid):
        code = proc.wait()
    errors = relay.join()
    if code < 0:
        code = 128 - code
    return _error_result(errors[-1]) if errors and code != 0 else RunResult(code)


class _forwarding_signals:  # used like a function
    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.saved: dict[int, Any] = {}

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        with suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self.saved[sig] = signal.signal(sig, self._forward)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
