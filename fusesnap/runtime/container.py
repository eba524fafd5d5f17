"""Containers: an image's lazy mount as the lower dir of an overlay, run by runc.

Each container has a state directory, which is also its OCI bundle::

    ROOT/containers/NAME/
        container.json  `ContainerRecord`: name, image, created, status, exit code
        config.json     the OCI runtime config (`fusesnap.runtime.spec`)
        lower/          the image, mounted read-only by a fusesnap daemon (allow_other)
        upper/ work/    the overlay's upper and work dirs: what the container writes
        rootfs/         the overlay of upper on lower: the container's root
        runc.log        runc's own log (JSON lines)

runc keeps its state under ``ROOT/runc`` (``runc --root``); the runc container id is
NAME. `create` sets all of it up, `run` runs the container in the foreground (runc
passes stdio on), `remove` takes it down: runc's container, the overlay, the lower
mount, then the directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from fusesnap.errors import AlreadyExistsError, FusesnapError, NotFoundError
from fusesnap.runtime.mount import start_mount, unmount
from fusesnap.runtime.mountpoint import MountError, mount_info
from fusesnap.runtime.spec import build_spec, resolve_user

__all__ = [
    "ContainerError",
    "ContainerInfo",
    "ContainerRecord",
    "RunResult",
    "container_dir",
    "create",
    "list_containers",
    "remove",
    "run",
    "runc_status",
]

log = logging.getLogger(__name__)

CONTAINERS = "containers"
RUNC_ROOT = "runc"
RECORD = "container.json"
RUNC = "runc"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# What runc puts before an error of the container's start ("runc run failed: ...").
_RUNC_ERROR = b"runc run failed: "
_START_PREFIX = "unable to start container process: "

EXIT_NOT_FOUND = 127
EXIT_CANNOT_EXEC = 126
EXIT_RUNTIME = 125


class ContainerError(FusesnapError):
    """A container cannot be created, started or removed."""


@dataclass
class ContainerRecord:
    """What ``container.json`` says about a container."""

    name: str
    image: str
    created: float
    status: str = "creating"  # creating, created, running, exited
    exit_code: int | None = None

    @classmethod
    def load(cls, directory: Path) -> ContainerRecord | None:
        try:
            doc = json.loads((directory / RECORD).read_text())
            return cls(**doc)
        except (OSError, ValueError, TypeError):
            return None

    def save(self, directory: Path) -> None:
        tmp = directory / (RECORD + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self)))
        os.replace(tmp, directory / RECORD)


@dataclass(frozen=True)
class RunResult:
    """How a container's run ended: its exit code, or runc's error if it never started."""

    exit_code: int
    error: str | None = None


def containers_root(root: Path) -> Path:
    return Path(root).absolute() / CONTAINERS


def container_dir(root: Path, name: str) -> Path:
    if not NAME_RE.match(name):
        raise ContainerError(
            f"container name {name!r}: use letters, digits, '_', '.', '-' (at most 64)"
        )
    return containers_root(root) / name


def _runc(root: Path, *args: str) -> list[str]:
    runc_root = Path(root).absolute() / RUNC_ROOT
    return [RUNC, "--root", str(runc_root), *args]


def runc_status(root: Path, name: str) -> str | None:
    """runc's status of container ``name`` (created, running, paused, stopped); None if
    runc does not know it."""
    try:
        proc = subprocess.run(
            _runc(root, "state", name), capture_output=True, text=True, timeout=30, check=False
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


def _read_image_file(lower: Path, path: str) -> str:
    """A small text file of the image (``etc/passwd``); "" if missing or a symlink (which
    would point into the host if followed here)."""
    target = lower / path
    try:
        if target.is_symlink():
            return ""
        return target.read_text(errors="replace")
    except OSError:
        return ""


def create(
    root: Path,
    name: str,
    ref: str,
    image_config: dict[str, Any],
    *,
    command: Sequence[str] = (),
    env: Sequence[str] = (),
    workdir: str | None = None,
    user: str | None = None,
    terminal: bool = False,
    net_host: bool = False,
    global_options: Sequence[str] = (),
    verbose: bool = False,
) -> Path:
    """Set up container ``name`` of image ``ref`` (already in the store, ``image_config``
    its config dict): mount, overlay, ``config.json``. Its directory; on failure nothing
    is left behind. `AlreadyExistsError` if the name is in use."""
    directory = container_dir(root, name)
    directory.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o711)
    except FileExistsError:
        raise AlreadyExistsError(
            f"container {name}: the name is in use (fusesnap rm {name})"
        ) from None
    record = ContainerRecord(name=name, image=ref, created=time.time())
    record.save(directory)
    try:
        lower, upper, work, rootfs = (directory / d for d in ("lower", "upper", "work", "rootfs"))
        for d in (lower, upper, work, rootfs):
            d.mkdir()
        start_mount(
            root,
            ref,
            lower,
            options=["--allow-other"],
            global_options=global_options,
            verbose=verbose,
        )
        _mount_overlay(lower, upper, work, rootfs)
        who = resolve_user(
            user if user is not None else str(image_config.get("User") or ""),
            _read_image_file(lower, "etc/passwd"),
            _read_image_file(lower, "etc/group"),
        )
        spec = build_spec(
            image_config,
            rootfs=str(rootfs),
            user=who,
            command=command,
            env=env,
            workdir=workdir,
            terminal=terminal,
            hostname=name,
            net_host=net_host,
        )
        (directory / "config.json").write_text(json.dumps(spec, indent=1))
        record.status = "created"
        record.save(directory)
    except BaseException:
        with suppress(Exception):
            remove(root, name, force=True)
        raise
    return directory


def _mount_overlay(lower: Path, upper: Path, work: Path, rootfs: Path) -> None:
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(rootfs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise MountError(f"{rootfs}: overlay mount failed: {message[0]}")


def _umount(path: Path) -> None:
    """Unmount whatever is mounted at ``path`` (lazily if busy); nothing if nothing is."""
    while mount_info(path) is not None:
        proc = subprocess.run(["umount", str(path)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lazy = subprocess.run(
                ["umount", "-l", str(path)], capture_output=True, text=True, check=False
            )
            if lazy.returncode != 0:
                raise MountError(f"{path}: cannot unmount: {proc.stderr.strip()}")


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


def run(root: Path, name: str, *, terminal: bool = False) -> RunResult:
    """Run container ``name`` (made by `create`) in the foreground: runc passes our stdin
    and stdout on (a terminal of its own with ``terminal``), its stderr comes through
    `_StderrFilter`; SIGINT, SIGTERM and SIGHUP are forwarded to runc, which passes them
    to the container. Returns when runc exits (it deletes its container then)."""
    directory = container_dir(root, name)
    record = ContainerRecord.load(directory)
    if record is None:
        raise NotFoundError(f"container {name}: not found")
    record.status = "running"
    record.save(directory)
    cmd = _runc(
        root, "--log", str(directory / "runc.log"), "--log-format", "json",
        "run", "--bundle", str(directory), name,
    )  # fmt: skip
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
        raise ContainerError(f"cannot start runc: {exc}") from None
    finally:
        os.close(write_end)
    relay = _StderrFilter(read_end, sys.stderr.fileno())
    with _forwarding_signals(proc.pid):
        code = proc.wait()
    errors = relay.join()
    if code < 0:
        code = 128 - code
    result = _error_result(errors[-1]) if errors and code != 0 else RunResult(code)
    record.status = "exited"
    record.exit_code = result.exit_code
    record.save(directory)
    return result


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


def remove(root: Path, name: str, *, force: bool = False) -> None:
    """Take container ``name`` down: runc's container (a running one only with ``force``:
    SIGKILL), the overlay, the lower mount, the state directory."""
    directory = container_dir(root, name)
    if not directory.is_dir():
        raise NotFoundError(f"container {name}: not found")
    status = runc_status(root, name)
    if status is not None:
        if status in ("running", "paused") and not force:
            raise ContainerError(f"container {name} is {status} (fusesnap rm -f {name} kills it)")
        if status in ("running", "paused", "created"):
            subprocess.run(_runc(root, "kill", name, "KILL"), capture_output=True, check=False)
        proc = subprocess.run(
            _runc(root, "delete", "--force", name), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0 and runc_status(root, name) is not None:
            raise ContainerError(f"container {name}: runc delete: {proc.stderr.strip()}")
    rootfs, lower = directory / "rootfs", directory / "lower"
    _umount(rootfs)
    try:
        unmount(root, lower, lazy=True)
    except MountError as exc:
        if mount_info(lower) is not None:
            raise ContainerError(f"container {name}: {exc}") from None
    for path in (rootfs, lower):
        if mount_info(path) is not None:  # never let rmtree walk into a mount
            raise ContainerError(f"container {name}: {path} is still mounted")
    shutil.rmtree(directory)


@dataclass(frozen=True)
class ContainerInfo:
    """A row of ``fusesnap ps``."""

    name: str
    image: str
    status: str
    created: float


def list_containers(root: Path) -> Iterator[ContainerInfo]:
    """The containers under ``ROOT/containers``, by name, with runc's status (or how they
    ended)."""
    base = containers_root(root)
    if not base.is_dir():
        return
    for directory in sorted(base.iterdir()):
        if not directory.is_dir():
            continue
        record = ContainerRecord.load(directory)
        if record is None:
            yield ContainerInfo(directory.name, "?", "unknown", directory.stat().st_mtime)
            continue
        status = runc_status(root, record.name)
        if status is None:
            if record.status == "exited":
                status = f"exited ({record.exit_code})"
            elif record.status == "running":
                status = "gone"  # fusesnap was killed while runc ran
            else:
                status = record.status
        yield ContainerInfo(record.name, record.image, status, record.created)
