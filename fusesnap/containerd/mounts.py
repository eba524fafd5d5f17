"""What containerd mounts for a snapshot, and the shared lower mounts behind it.

Like containerd's overlay snapshotter: an active snapshot is an overlay with its
upper dir ``ID/fs`` and work dir ``ID/work`` over its parents' dirs, top first,
where a remote parent contributes its chain's one lower mount (`LowerMounts`)
and ends the list (it holds every layer under it). Without parents an active
snapshot is a bind mount of its dir; a view with one lower dir is a read-only
bind mount of it, with several a read-only overlay. A lower mount is started by
the first snapshot on its chain, or ahead of it (`warm`) once a pull has made
the chain remote, so that a container's start finds it mounted (and its
prefetch under way); it is released (`release_unused`) once no active snapshot
or view stands on it, or, warmed and never used, after `WARM_GRACE` seconds or
once the chain's snapshots are gone. One lock keeps starting and releasing
from racing.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from fusesnap.containerd.lowers import LowerMounts
from fusesnap.errors import FusesnapError
from fusesnap.store import ACTIVE, COMMITTED, SnapshotRecord, SnapshotStateError, SnapshotStore

__all__ = ["WARM_GRACE", "Mount", "MountPlanner", "chain_of"]

log = logging.getLogger(__name__)

WARM_GRACE = 600.0


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount containerd performs (``mount -t TYPE -o OPTIONS SOURCE TARGET``)."""

    type: str
    source: str
    options: tuple[str, ...]


def chain_of(table: SnapshotStore, record: SnapshotRecord) -> list[SnapshotRecord]:
    """``record`` and its parents, top first."""
    chain = [record]
    while chain[-1].parent is not None:
        chain.append(table.get(chain[-1].parent))
    return chain


class MountPlanner:
    """The mounts of the snapshots whose directories are under ``base`` (module docstring);
    ``snapshots``: the store's records (any namespace)."""

    def __init__(self, base: Path, lowers: LowerMounts, snapshots: SnapshotStore) -> None:
        self.base, self.lowers, self.snapshots = base, lowers, snapshots
        self._lock = threading.Lock()
        self._warmed: dict[str, float] = {}  # chain -> when its mount was started ahead
        self._used: set[str] = set()  # chains a snapshot has stood on

    def warm(self, table: SnapshotStore, top: SnapshotRecord) -> None:
        """Start the lower mount of remote chain ``top`` in the background, ahead of the
        first snapshot on it. A failure is logged; that snapshot's Prepare tries again."""

        def run() -> None:
            try:
                depth = len(chain_of(table, top))
                with self._lock:
                    if top.key in self._used:
                        return  # a container was quicker
                    self._warmed[top.key] = time.monotonic()
                    self.lowers.ensure(top, depth)
            except Exception as exc:  # a side task: the next Prepare mounts it, or says why
                log.warning("%s: lower mount not started ahead: %s", top.key[:19], exc)

        threading.Thread(target=run, name=f"warm {top.key[7:19]}", daemon=True).start()

    def mounts(self, table: SnapshotStore, record: SnapshotRecord) -> list[Mount]:
        """The mounts of active snapshot or view ``record`` of ``table``'s namespace."""
        if record.kind == COMMITTED:
            raise SnapshotStateError(f"snapshot {record.key}: committed, not active or a view")
        own = self.base / record.id
        lowers = self._lower_dirs(table, record.parent)
        if record.kind == ACTIVE:
            if not lowers:
                return [Mount("bind", str(own / "fs"), ("rw", "rbind"))]
            return [
                Mount(
                    "overlay",
                    "overlay",
                    (
                        f"workdir={own / 'work'}",
                        f"upperdir={own / 'fs'}",
                        f"lowerdir={':'.join(lowers)}",
                    ),
                )
            ]
        if len(lowers) <= 1:
            return [Mount("bind", lowers[0] if lowers else str(own / "fs"), ("ro", "rbind"))]
        return [Mount("overlay", "overlay", (f"lowerdir={':'.join(lowers)}",))]

    def _lower_dirs(self, table: SnapshotStore, parent: str | None) -> list[str]:
        """The lower dirs of a snapshot on ``parent``, top first (module docstring)."""
        dirs: list[str] = []
        key = parent
        while key is not None:
            record = table.get(key)
            if record.source:
                depth = len(chain_of(table, record))
                with self._lock:
                    dirs.append(str(self.lowers.ensure(record, depth)))
                    self._warmed.pop(record.key, None)  # in use: released with its last user
                    self._used.add(record.key)
                break
            dirs.append(str(self.base / record.id / "fs"))
            key = record.parent
        return dirs

    def release_unused(self) -> list[str]:
        """Take down the lower mounts no active snapshot or view stands on; their chains."""
        with self._lock:
            now = time.monotonic()
            records = self.snapshots.list_all()
            remote = {r.key for r in records if r.source}
            self._warmed = {
                c: t for c, t in self._warmed.items() if now - t < WARM_GRACE and c in remote
            }
            used = set(self._warmed)
            for record in records:
                if record.kind == COMMITTED:
                    continue
                table = self.snapshots.in_namespace(record.namespace)
                with suppress(FusesnapError):
                    for above in chain_of(table, record):
                        if above.source:
                            used.add(above.key)
                            break
            released = [c for c in self.lowers.chains() if c not in used]
            for chain in released:
                self.lowers.release(chain)
                self._used.discard(chain)
        return released
