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
once the chain's snapshots are gone. It may start earlier still, while the
image is being resolved (`start_early`, `fusesnap.containerd.remote`): its
daemon mounts and waits for the layers' indexes (at most `EARLY_WAIT` seconds),
and the mount is kept until the chain's snapshots are committed, or released
when the resolve gives another chain (`abandon`). One lock keeps starting and
releasing from racing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from fusesnap.containerd.lowers import LowerMounts
from fusesnap.digest import Digest
from fusesnap.errors import FusesnapError
from fusesnap.store import ACTIVE, COMMITTED, SnapshotRecord, SnapshotStateError, SnapshotStore

__all__ = ["EARLY_WAIT", "WARM_GRACE", "Mount", "MountPlanner", "chain_of"]

log = logging.getLogger(__name__)

WARM_GRACE = 600.0
# At most this long a mount started early waits for its layers' indexes (under the
# 300 s a new mount's first daemon has to be ready).
EARLY_WAIT = 240.0


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
        self._early: dict[str, float] = {}  # chains started while their image is resolved
        self._abandoned: dict[str, float] = {}  # chain -> when its resolve gave another
        self._used: set[str] = set()  # chains a snapshot has stood on

    def warm(self, table: SnapshotStore, top: SnapshotRecord) -> None:
        """Start the lower mount of remote chain ``top`` in the background, ahead of the
        first snapshot on it. A failure is logged; that snapshot's Prepare tries again."""
        self._in_background(top, lambda: len(chain_of(table, top)))

    def start_early(self, chain: str, source: str, manifest: Digest, depth: int) -> None:
        """Start, in the background, the lower mount of ``chain`` (``depth`` layers of
        ``manifest``, fetched from ``source``) while its image is resolved: it waits for
        the indexes (module docstring)."""
        top = SnapshotRecord(chain, COMMITTED, None, source=source, manifest=manifest)
        self._in_background(top, lambda: depth, wait=EARLY_WAIT)

    def abandon(self, chain: str) -> None:
        """The resolve that started ``chain``'s mount early gave another chain: release the
        mount (in the background), unless a snapshot stands on it."""

        self._abandoned[chain] = time.monotonic()  # a start asked before it does not run

        def run() -> None:
            with self._lock:
                if self._early.pop(chain, None) is None:
                    return  # not started by a start_early (or not yet: the mark stops it)
                if chain in self._used:
                    return
                self._warmed.pop(chain, None)
            try:
                self.lowers.release(chain)
            except Exception as exc:  # a side task: release_unused takes it down later
                log.warning("%s: lower mount not released: %s", chain[:19], exc)

        threading.Thread(target=run, name=f"abandon {chain[7:19]}", daemon=True).start()

    def _in_background(
        self, top: SnapshotRecord, depth: Callable[[], int], *, wait: float = 0.0
    ) -> None:
        asked = time.monotonic()

        def run() -> None:
            try:
                layers = depth()
                with self._lock:
                    if not wait:
                        self._early.pop(top.key, None)  # committed: kept as any warmed one
                    elif self._abandoned.get(top.key, -1.0) >= asked:
                        return  # its resolve is over and gave another chain
                    elif self.lowers.is_live(top.key):
                        return  # up already (another image's, adopted): not ours to abandon
                    else:
                        self._early[top.key] = time.monotonic()
                    if top.key in self._used:
                        return  # a container was quicker
                    self._warmed[top.key] = time.monotonic()
                    self.lowers.ensure(top, layers, wait=wait)
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
            # Started early and never committed (the pull was given up): kept as long.
            self._early = {c: t for c, t in self._early.items() if now - t < WARM_GRACE}
            self._abandoned = {c: t for c, t in self._abandoned.items() if now - t < WARM_GRACE}
            self._warmed = {
                c: t
                for c, t in self._warmed.items()
                if now - t < WARM_GRACE and (c in remote or c in self._early)
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
