"""What one containerd leaves on the machine, found and taken down.

A containerd's runc shims outlive it by design, and the runc shim keeps state
outside the daemon's own directories, shared by every containerd::

    /run/containerd/runc/NS/ID/state.json   runc's state; a label names the bundle
    /run/containerd/s/HASH                  a shim's socket (the bundle's ``address`` file)
    cgroup /NS/ID                           the container's (``runc delete`` removes it)

A `Footprint` names what is one daemon's: its socket (its shims run with
``-address SOCK``), its config file (``containerd --config FILE``), its state
dir (one task bundle per container under ``io.containerd.runtime.v2.task/NS/ID``)
and the dirs under which every mount is its own.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tools._net import wait_until

__all__ = ["Footprint", "RuncContainer"]

RUNC = "runc"
DEFAULT_RUNC_ROOT = Path("/run/containerd/runc")
SHIM_SOCKET_DIR = Path("/run/containerd/s")
V2_TASKS = "io.containerd.runtime.v2.task"


def _processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every process but zombies and kernel threads."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield int(entry.name), raw.rstrip(b"\0").decode(errors="replace").split("\0")


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot); None for a dead or zombie pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _mount_points() -> list[Path]:
    """Mount points of this mount namespace, in /proc/self/mountinfo order."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        field = line.split(" ")[4]  # octal escapes: \040 for a space, \134 for a backslash
        out.append(Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)))
    return out


@dataclass(frozen=True, slots=True)
class RuncContainer:
    """A container runc knows of whose bundle is in our state dir."""

    runc_root: Path  # what ``runc --root`` takes: DEFAULT_RUNC_ROOT/NS unless overridden
    id: str
    bundle: Path
    init_pid: int | None
    init_start: int | None  # the init's start time, against pid reuse

    def running(self) -> bool:
        return self.init_pid is not None and _start_time(self.init_pid) == self.init_start


@dataclass(frozen=True, slots=True)
class Footprint:
    """One containerd's mark on the machine: what is left of it, and its sweep."""

    address: str
    config_path: Path
    state: Path
    dirs: tuple[Path, ...]

    def daemons(self) -> list[int]:
        config = str(self.config_path)
        return [
            pid
            for pid, argv in _processes()
            if os.path.basename(argv[0]) == "containerd" and config in argv
        ]

    def shims(self) -> list[int]:
        return [
            pid
            for pid, argv in _processes()
            if os.path.basename(argv[0]).startswith("containerd-shim")
            and any(
                flag in ("-address", "--address") and value == self.address
                for flag, value in itertools.pairwise(argv)
            )
        ]

    def bundles(self) -> list[Path]:
        return sorted(p for p in (self.state / V2_TASKS).glob("*/*") if p.is_dir())

    def containers(self) -> list[RuncContainer]:
        out = []
        for bundle in self.bundles():
            namespace = bundle.parent.name
            root = DEFAULT_RUNC_ROOT / namespace
            # ``ctr run --runc-root`` is recorded in the bundle's runc options.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                custom = json.loads((bundle / "options.json").read_text() or "{}").get("root")
                if custom:
                    root = Path(custom) / namespace
            try:
                state = json.loads((root / bundle.name / "state.json").read_text())
            except (OSError, ValueError):
                continue
            if f"bundle={bundle}" not in (state.get("config", {}).get("labels") or []):
                continue  # the same namespace and ID, but another containerd's container
            pid, start = state.get("init_process_pid"), state.get("init_process_start")
            out.append(
                RuncContainer(
                    root,
                    bundle.name,
                    bundle,
                    pid if isinstance(pid, int) else None,
                    start if isinstance(start, int) else None,
                )
            )
        return out

    def mounts(self) -> list[Path]:
        return [m for m in _mount_points() if any(m.is_relative_to(d) for d in self.dirs)]

    def leftovers(self) -> list[str]:
        """What still runs or is mounted, one line each; empty when all is gone."""
        out = [f"containerd pid {pid}" for pid in self.daemons()]
        out += [f"shim pid {pid}" for pid in self.shims()]
        for c in self.containers():
            alive = f"with init pid {c.init_pid} running" if c.running() else "(stopped)"
            out.append(f"runc container {c.id} {alive} in {c.runc_root}")
        out += [f"mount {m}" for m in self.mounts()]
        return out

    def sweep(self, *, timeout: float) -> None:
        """Kill every container, shim and daemon, remove shim sockets, unmount everything.

        Each step goes on whatever the one before managed: a sweep runs when
        something already went wrong.
        """
        for c in self.containers():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [RUNC, "--root", str(c.runc_root), "delete", "--force", c.id],
                    capture_output=True,
                    timeout=15,
                )
            if c.running() and c.init_pid is not None:
                # The init of the container's pid namespace: killing it kills the rest.
                with contextlib.suppress(OSError):
                    os.kill(c.init_pid, signal.SIGKILL)
        for pid in self.daemons() + self.shims():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not (self.daemons() or self.shims()), timeout=timeout)
        for c in self.containers():
            # Still there: runc delete failed; its state must not name a dead container.
            if not c.running():
                shutil.rmtree(c.runc_root / c.id, ignore_errors=True)
        for bundle in self.bundles():
            with contextlib.suppress(OSError):
                address = (bundle / "address").read_text().strip()
                path = Path(address.removeprefix("unix://"))
                if path.parent == SHIM_SOCKET_DIR:
                    path.unlink(missing_ok=True)
        # Reverse mountinfo order: a mount before the one it is stacked on.
        for mount in reversed(self.mounts()):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
