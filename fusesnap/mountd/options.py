"""What a mount daemon is told: one typed record, the pipe it says "ready" on, and,
under a holder (`fusesnap.mountd.holder`), how it reaches the holder."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fusesnap.fuse import DEFAULT_MAX_BYTES
from fusesnap.registry import DEFAULT_HOSTS_DIRS, RegistryOptions

__all__ = ["MOUNTED", "PREFETCH_MODES", "DaemonOptions", "ReadyPipe", "Supervision"]

PREFETCH_MODES = ("none", "auto", "profile", "all")


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    """Serve image ``ref`` of the store at ``root`` on ``mountpoint``.

    ``prefetch`` (`PREFETCH_MODES`): ``none`` fetches nothing ahead; ``auto`` the
    landmark files and the recorded profile, if any; ``profile`` the same, warning
    if there is no profile; ``all`` those, then every chunk. ``startup_files``: the mount
    is a container's root (``fusesnap run``, the snapshotter's lower mounts): with
    ``auto`` and neither a profile nor landmark files, what every container start reads
    comes ahead (`fusesnap.mountd.openfetch.STARTUP_FILES`). ``record``: store the
    access profile of this mount at unmount. ``verbose``: debug logging.
    ``manifest``: serve this manifest's layers (its bottom ``depth`` of them, 0: all),
    fetched from ``ref``, instead of the image record named ``ref`` (a snapshot chain of
    the containerd snapshotter, which records no image). ``wait_layers``: a new mount of
    ``manifest`` may start before its layers are indexed (the snapshotter, while it
    resolves the image): it mounts, then waits up to this many seconds for them.
    """

    root: Path
    ref: str
    mountpoint: Path
    allow_other: bool = False
    cache_bytes: int = DEFAULT_MAX_BYTES  # the chunk LRU's memory
    prefetch: str = "auto"
    startup_files: bool = False
    record: bool = False
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    verbose: bool = False
    manifest: str = ""
    depth: int = 0
    wait_layers: float = 0.0

    def __post_init__(self) -> None:
        if self.prefetch not in PREFETCH_MODES:
            raise ValueError(f"prefetch {self.prefetch!r}: expected one of {PREFETCH_MODES}")
        if self.cache_bytes <= 0:
            raise ValueError(f"cache_bytes {self.cache_bytes}: must be positive")

    def absolute(self) -> DaemonOptions:
        """The same with ``root`` and ``mountpoint`` absolute (a daemon runs in /)."""
        return replace(
            self,
            root=Path(os.path.abspath(self.root)),
            mountpoint=Path(os.path.abspath(self.mountpoint)),
        )

    def to_json(self) -> str:
        doc = asdict(self)
        doc["root"], doc["mountpoint"] = str(self.root), str(self.mountpoint)
        doc["registry"]["insecure_registries"] = list(self.registry.insecure_registries)
        doc["registry"]["hosts_dirs"] = list(self.registry.hosts_dirs)
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> DaemonOptions:
        """Parse what `to_json` wrote; `ValueError` if it is not that."""
        try:
            doc: dict[str, Any] = json.loads(text)
            registry = doc.pop("registry")
            return cls(
                **{**doc, "root": Path(doc["root"]), "mountpoint": Path(doc["mountpoint"])},
                registry=RegistryOptions(
                    tuple(registry["insecure_registries"]),
                    registry["ca_file"],
                    # Options written before hosts.toml support have none.
                    tuple(registry.get("hosts_dirs", DEFAULT_HOSTS_DIRS)),
                ),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"daemon options: {exc}") from None


# Said (`ReadyPipe`) once the kernel mount is in place, before the tree is built; requests
# wait in the kernel until ``ready``.
MOUNTED = "mounted"


class ReadyPipe:
    """``on_ready`` for a daemon whose starter waits on pipe ``fd``: each message is
    written as one line; after the last (``ready`` or ``error: ...``; ``mounted``, the
    kernel mount in place, may come before them) the pipe is closed."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def __call__(self, message: str) -> None:
        fd = self._fd
        if fd is None:  # the fd is closed after the last line (and its number reused)
            return
        if message != MOUNTED:
            self._fd = None
        try:
            os.write(fd, message.encode() + b"\n")
            if message != MOUNTED:
                os.close(fd)
        except OSError:
            pass  # the starter is gone: serve anyway, umount still works


@dataclass(frozen=True, slots=True)
class Supervision:
    """A daemon under a holder: ``channel`` is a unix socket (SOCK_SEQPACKET) to it, on
    which a new mount's connection is handed over (descriptor and INIT request, one
    message starting ``fuse``) and readiness is said (`ReadyPipe`); ``takeover`` is the
    connection to serve instead of mounting (a descriptor of ``/dev/fuse`` and its INIT)."""

    channel: int
    holder_pid: int
    takeover: tuple[int, bytes] | None = None
