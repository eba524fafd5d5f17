"""containerd's snapshotter model on fusesnap's store: what the gRPC service calls.

Each call names a containerd namespace; its snapshots live in fusesnap's store
(`fusesnap.store.SnapshotStore.in_namespace`), apart from every other
namespace's and from fusesnap's own (``fusesnap snapshot ls`` shows them all).

Two kinds of committed snapshot:

- *remote*: a layer fusesnap serves lazily. When containerd prepares a layer's
  snapshot with labels naming its image (`fusesnap.containerd.labels`), and the
  layer and every one under it have an index (`fusesnap.containerd.remote`),
  the snapshot of its chain ID is committed here at once, with no directory,
  and the Prepare answers "already exists": containerd then neither downloads
  nor unpacks the layer. Its contents are the chain's lower mount
  (`fusesnap.containerd.lowers`).
- *local*: any other layer, unpacked by containerd's diff service into the
  directory of an active snapshot that is then committed; and whatever else a
  client commits. ``ROOT/containerd/snapshots/<id>/fs`` holds its files.

Mounts are containerd's overlay snapshotter's (`fusesnap.containerd.mounts`):
an active snapshot's upper and work dirs over its parents' dirs, where a remote
parent contributes its chain's one lower mount, shared by every snapshot on the
chain and released once none is left (after `remove`, `commit` and `cleanup`).

A call without a namespace ("") is containerd's garbage collector, which walks
and removes the snapshots of every namespace at once: `list`, `stat`,
`usage`, `mounts` and `remove` then see every containerd namespace (never
fusesnap's own snapshots); making or changing a snapshot needs a namespace.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Collection, Mapping
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

from fusesnap.containerd.labels import REMOTE_LABEL, TARGET_REF, check_labels, remote_source
from fusesnap.containerd.lowers import LowerMounts
from fusesnap.containerd.mounts import Mount, MountPlanner
from fusesnap.containerd.remote import RemoteImages
from fusesnap.errors import AlreadyExistsError, FusesnapError, NotFoundError
from fusesnap.store import ACTIVE, COMMITTED, VIEW, SnapshotRecord, SnapshotStore, Store

__all__ = ["InvalidRequestError", "Mount", "Snapshots", "Usage"]

log = logging.getLogger(__name__)

SNAPSHOTS = Path("containerd") / "snapshots"
_NAMESPACE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,75})$")


class InvalidRequestError(FusesnapError):
    """A request containerd's own snapshotters would refuse as an invalid argument."""


@dataclass(frozen=True, slots=True)
class Usage:
    size: int
    inodes: int


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE.match(namespace):
        raise InvalidRequestError(f"namespace {namespace!r}: not a valid containerd namespace")
    return namespace


class Snapshots:
    """The snapshotter (module docstring): thread-safe, as gRPC calls it."""

    def __init__(
        self,
        store: Store,
        root: Path,
        lowers: LowerMounts,
        remote: RemoteImages,
        *,
        on_layer: Callable[[str], None] = lambda how: None,
    ) -> None:
        self.store = store
        self.base = Path(root).absolute() / SNAPSHOTS
        self.planner = MountPlanner(self.base, lowers, store.snapshots)
        self.remote = remote
        remote.early = self.planner  # a chain's mount starts while its image is resolved
        self.on_layer = on_layer  # "remote" or "local", for each layer prepared

    def table(self, namespace: str) -> SnapshotStore:
        if not namespace:
            raise InvalidRequestError("namespace is required (gRPC metadata containerd-namespace)")
        return self.store.snapshots.in_namespace(check_namespace(namespace))

    def _tables(self, namespace: str) -> list[SnapshotStore]:
        """The namespace's records, or with "" each containerd namespace's (docstring)."""
        if namespace:
            return [self.table(namespace)]
        names = sorted({r.namespace for r in self.store.snapshots.list_all() if r.namespace})
        return [self.store.snapshots.in_namespace(n) for n in names]

    def _find(self, namespace: str, key: str) -> tuple[SnapshotStore, SnapshotRecord]:
        tables = self._tables(namespace)
        for table in tables:
            with suppress(NotFoundError):
                return table, table.get(key)
        raise NotFoundError(f"snapshot {key}: not found")

    # -- new snapshots -------------------------------------------------------------------

    def prepare(
        self, namespace: str, key: str, parent: str, labels: Mapping[str, str]
    ) -> list[Mount]:
        """A new active snapshot ``key`` on ``parent`` ("": none); its mounts. For a layer
        fusesnap serves lazily, its chain's snapshot is committed instead and
        `AlreadyExistsError` says so (module docstring)."""
        table = self._checked(namespace, key, labels)
        if self._commit_remote(table, parent or None, labels):
            self.on_layer("remote")
            raise AlreadyExistsError(f"target snapshot {labels[TARGET_REF]!r}: already exists")
        if TARGET_REF in labels:
            self.on_layer("local")
        return self._create(table, key, parent or None, ACTIVE, labels)

    def view(self, namespace: str, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        """A new read-only snapshot ``key`` of ``parent``; its mounts."""
        table = self._checked(namespace, key, labels)
        return self._create(table, key, parent or None, VIEW, labels)

    def _checked(self, namespace: str, key: str, labels: Mapping[str, str]) -> SnapshotStore:
        table = self.table(namespace)
        if not key:
            raise InvalidRequestError("snapshot key: empty")
        check_labels(labels)
        return table

    def _create(
        self,
        table: SnapshotStore,
        key: str,
        parent: str | None,
        kind: str,
        labels: Mapping[str, str],
    ) -> list[Mount]:
        snapshot_id = secrets.token_hex(8)
        directory = self.base / snapshot_id
        self.base.mkdir(mode=0o711, parents=True, exist_ok=True)
        directory.mkdir(mode=0o711)
        (directory / "fs").mkdir(mode=0o755)
        if kind == ACTIVE:
            (directory / "work").mkdir(mode=0o700)
        record = SnapshotRecord(key, kind, parent, id=snapshot_id, labels=_set(labels))
        try:
            record = table.create(record)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        try:
            return self._mounts(table, record)
        except BaseException:
            with suppress(FusesnapError):
                table.delete(key)
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def _commit_remote(
        self, table: SnapshotStore, parent: str | None, labels: Mapping[str, str]
    ) -> bool:
        """Commit the chain snapshot of the layer ``labels`` name, if they name one and
        fusesnap can serve it lazily on ``parent``; whether it did (or found it there)."""
        source = remote_source(labels)
        if source is None:
            return False
        if parent is not None and not table.get(parent).source:
            return False  # a layer over a local one: containerd unpacks it
        try:
            image = self.remote.resolve(self.store, source.ref)
        except FusesnapError as exc:
            log.warning("%s: not served lazily: %s", source.ref, exc)
            return False
        n = image.position(source.digest, source.chain)
        if n is None or parent != (image.chains[n - 1] if n else None):
            log.info("%s: layer %s not served lazily", source.ref, source.digest.short)
            return False
        record = SnapshotRecord(
            source.chain,
            COMMITTED,
            parent,
            layer=image.layers[n],
            diff_id=image.diff_ids[n],
            labels={**_set(labels), REMOTE_LABEL: "remote snapshot"},
            source=str(source.ref),
            manifest=image.manifest,
        )
        table.create(record, exist_ok=True)
        log.info("%s: layer %d (%s) is remote", source.ref, n, source.digest.short)
        if n == image.top:
            self.remote.done(self.store, image)
            self.planner.warm(table, record)
        return True

    # -- mounts --------------------------------------------------------------------------

    def mounts(self, namespace: str, key: str) -> list[Mount]:
        return self._mounts(*self._find(namespace, key))

    def _mounts(self, table: SnapshotStore, record: SnapshotRecord) -> list[Mount]:
        return self.planner.mounts(table, record)

    def release_unused(self) -> builtins.list[str]:
        return self.planner.release_unused()

    # -- commit, remove, read, update ----------------------------------------------------

    def commit(self, namespace: str, name: str, key: str, labels: Mapping[str, str]) -> None:
        """Active snapshot ``key`` becomes committed snapshot ``name`` (its files stay)."""
        table = self._checked(namespace, name, labels)
        active = table.get(key)
        committed = SnapshotRecord(
            name, COMMITTED, active.parent, id=active.id, labels=_set(labels)
        )
        table.commit(committed, key)
        with suppress(OSError):
            shutil.rmtree(self.base / active.id / "work")
        self.release_unused()

    def remove(self, namespace: str, key: str) -> None:
        """Remove snapshot ``key`` (not one with children) and its files; without a
        namespace, from every namespace that has it."""
        found = False
        try:
            for table in self._tables(namespace):
                with suppress(NotFoundError) if not namespace else nullcontext():
                    record = table.delete(key)
                    found = True
                    if record.id:
                        shutil.rmtree(self.base / record.id, ignore_errors=True)
        finally:
            self.release_unused()
        if not found:
            raise NotFoundError(f"snapshot {key}: not found")

    def stat(self, namespace: str, key: str) -> SnapshotRecord:
        return self._find(namespace, key)[1]

    def list(self, namespace: str) -> list[SnapshotRecord]:
        return [r for table in self._tables(namespace) for r in table.list()]

    def update(
        self,
        namespace: str,
        key: str,
        labels: Mapping[str, str],
        paths: Collection[str],
    ) -> SnapshotRecord:
        """Set ``key``'s labels: all of them, or with ``paths`` (``labels`` or
        ``labels.NAME``) those named. Other fields cannot be changed."""
        check_labels(labels)
        names: set[str] = set()
        whole = not paths
        for path in paths:
            if path == "labels":
                whole = True
            elif path.startswith("labels."):
                names.add(path.removeprefix("labels."))
            else:
                raise InvalidRequestError(f"update of {path!r}: only labels can be changed")
        fields = None if whole else names
        return self.table(namespace).update_labels(key, _set(labels), fields)

    def usage(self, namespace: str, key: str) -> Usage:
        """Disk use: an active snapshot's or local one's files; a remote one's layer as
        unpacked (what it would take on disk), though only what was read is stored."""
        record = self._find(namespace, key)[1]
        if record.id:
            return _disk_usage(self.base / record.id / "fs")
        if record.layer is not None and self.store.layers.exists(record.layer):
            info = self.store.layers.info(record.layer)
            return Usage(info.uncompressed_size, info.entry_count)
        return Usage(0, 0)

    def cleanup(self) -> builtins.list[str]:
        """Remove snapshot directories no record names (a crash between the two), and
        lower mounts nothing uses; the directory names removed."""
        named = {r.id for r in self.store.snapshots.list_all() if r.id}
        removed: list[str] = []
        if self.base.is_dir():
            for directory in self.base.iterdir():
                if directory.name not in named:
                    shutil.rmtree(directory, ignore_errors=True)
                    removed.append(directory.name)
        self.release_unused()
        return removed


def _set(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels that are set: like containerd, an empty value means no label."""
    return {k: v for k, v in labels.items() if v}


def _disk_usage(top: Path) -> Usage:
    """Bytes allocated (each inode once) and inodes under ``top``, like ``du``."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            with suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    size += st.st_blocks * 512
    return Usage(size, len(seen))
