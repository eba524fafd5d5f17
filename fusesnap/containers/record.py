"""A container's state directory and its ``container.json`` record."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fusesnap.errors import FusesnapError, NotFoundError
from fusesnap.process import process_start_time

__all__ = [
    "ContainerError",
    "ContainerInfo",
    "ContainerRecord",
    "container_dir",
    "containers_root",
    "directories",
    "load_record",
    "snapshot_key",
]

CONTAINERS = "containers"
RECORD = "container.json"
SPEC = "config.json"
LOG = "container.log"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Statuses of a container whose runner has not yet said how it ended.
UNFINISHED = frozenset({"creating", "created", "running"})


class ContainerError(FusesnapError):
    """A container cannot be created, started or removed."""


@dataclass
class ContainerRecord:
    """What ``container.json`` says about a container."""

    name: str
    image: str
    created: float
    status: str = "creating"  # creating, created, running, exited, dead
    exit_code: int | None = None
    error: str | None = None
    runner_pid: int | None = None
    runner_start: int | None = None
    detached: bool = False
    auto_remove: bool = False
    readonly: bool = False
    snapshot: str = ""

    @classmethod
    def load(cls, directory: Path) -> ContainerRecord | None:
        try:
            doc = json.loads((directory / RECORD).read_text())
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in doc.items() if k in known})
        except (OSError, ValueError, TypeError):
            return None

    def save(self, directory: Path) -> None:
        tmp = directory / (RECORD + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self)))
        os.replace(tmp, directory / RECORD)

    def claim(self) -> None:
        """Make this process the container's runner."""
        self.runner_pid = os.getpid()
        self.runner_start = process_start_time(self.runner_pid)

    def runner_alive(self) -> bool:
        if self.runner_pid is None:
            return False
        start = process_start_time(self.runner_pid)
        return start is not None and start == self.runner_start


@dataclass(frozen=True)
class ContainerInfo:
    """A row of ``fusesnap ps``."""

    name: str
    image: str
    status: str
    created: float


def directories(root: Path) -> Iterator[Path]:
    base = containers_root(root)
    if base.is_dir():
        yield from (d for d in sorted(base.iterdir()) if d.is_dir())


def containers_root(root: Path) -> Path:
    return Path(root).absolute() / CONTAINERS


def container_dir(root: Path, name: str) -> Path:
    if not NAME_RE.match(name):
        raise ContainerError(
            f"container name {name!r}: use letters, digits, '_', '.', '-' (at most 64)"
        )
    return containers_root(root) / name


def snapshot_key(name: str) -> str:
    """The key of container ``name``'s active snapshot (or view)."""
    return f"{CONTAINERS}/{name}"


def load_record(root: Path, name: str) -> tuple[Path, ContainerRecord]:
    directory = container_dir(root, name)
    record = ContainerRecord.load(directory)
    if record is None:
        raise NotFoundError(f"container {name}: not found")
    return directory, record
