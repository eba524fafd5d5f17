"""The lower mounts of remote snapshot chains: one fusesnap mount per chain, shared.

A remote committed snapshot stands for a chain of layers that fusesnap serves
lazily. Every active snapshot or view on it gets the chain as one lower dir: a
fusesnap FUSE mount of the whole chain (one merged tree, not one lower dir per
layer), at ``ROOT/containerd/lowers/<chain hex>``. Every snapshot on the same
chain, in any namespace, shares that mount; `release` takes it down when the
last of them is gone.

Each mount is served by its own mount daemon (`fusesnap.mountd`), forked by the
snapshotter's zygote (`fusesnap.mountd.Zygote`), a process of its own session:
the snapshotter can stop, restart or crash while containers read through it.
A restarted snapshotter *adopts* the mounts it finds live at their paths
(`ensure` returns them as they are) and replaces dead ones. A mount whose daemon
dies is the mount's holder's to bring back (`fusesnap.mountd.holder`): `ensure`
waits for that, and replaces only a mount whose holder is gone or gave up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from fusesnap.errors import FusesnapError
from fusesnap.mountd import (
    DaemonOptions,
    MountError,
    Zygote,
    mount_info,
    mount_stats,
    start_mount,
    unmount,
    wait_serving,
)
from fusesnap.registry import RegistryOptions
from fusesnap.store import SnapshotRecord

__all__ = ["LowerMounts"]

log = logging.getLogger(__name__)

LOWERS = Path("containerd") / "lowers"


class LowerMounts:
    """The chains' lower mounts of the store at ``root`` (module docstring)."""

    def __init__(
        self,
        root: Path,
        registry: RegistryOptions,
        *,
        verbose: bool = False,
        zygote: Zygote | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.base = self.root / LOWERS
        self.registry = registry
        self.verbose = verbose
        self.zygote = zygote  # forks the mount daemons (else each is a new interpreter)
        self._lock = threading.Lock()
        self._chains: dict[str, threading.Lock] = {}

    def path(self, chain: str) -> Path:
        return self.base / chain.partition(":")[2]

    @contextmanager
    def _holding(self, chain: str) -> Iterator[None]:
        with self._lock:
            lock = self._chains.setdefault(chain, threading.Lock())
        with lock:
            yield

    def is_live(self, chain: str) -> bool:
        info = mount_info(self.path(chain))
        return info is not None and info.fstype.startswith("fuse")

    def ensure(self, top: SnapshotRecord, depth: int, *, wait: float = 0.0) -> Path:
        """The mount of remote chain ``top`` (``depth`` layers), started if not live;
        `MountError` if it cannot be. ``wait``: a daemon started now may wait that many
        seconds for the layers' indexes (the image is still being resolved)."""
        assert top.manifest is not None
        target = self.path(top.key)
        with self._holding(top.key):
            if self.is_live(top.key):
                # Adopted, or started before (perhaps still building its tree: the kernel
                # holds the container's requests until it answers); its holder may be
                # bringing a new daemon.
                if wait_serving(self.root, target, starting=True):
                    return target
                log.warning("%s: the lower mount has no daemon; mounting again", target)
                with suppress(MountError):  # stale, or failed (EIO): detached
                    unmount(self.root, target, lazy=True)
            target.mkdir(parents=True, exist_ok=True)
            options = DaemonOptions(
                root=self.root,
                ref=top.source,
                mountpoint=target,
                allow_other=True,
                startup_files=True,  # a container's root
                registry=self.registry,
                verbose=self.verbose,
                manifest=str(top.manifest),
                depth=depth,
                wait_layers=wait,
            )
            start_mount(options, zygote=self.zygote, mounted=True)
            log.info("%s: mounted chain %s (%d layers)", target, top.key[:19], depth)
            return target

    def release(self, chain: str) -> None:
        """Take the mount of ``chain`` down (detached lazily if still in use)."""
        target = self.path(chain)
        with self._holding(chain):
            if mount_info(target) is not None:
                try:
                    unmount(self.root, target, lazy=True)
                except MountError as exc:
                    log.warning("%s: %s", target, exc)
                    return
            with suppress(OSError):
                target.rmdir()
        log.info("%s: lower mount released", target)

    def chains(self) -> list[str]:
        """The chains that have a mount directory (live or not)."""
        if not self.base.is_dir():
            return []
        return sorted(f"sha256:{p.name}" for p in self.base.iterdir())

    def stats(self) -> Iterator[dict[str, Any]]:
        """Each live mount's daemon counters (see ``fusesnap stats``)."""
        for chain in self.chains():
            with suppress(FusesnapError, OSError):
                yield mount_stats(self.root, self.path(chain))
