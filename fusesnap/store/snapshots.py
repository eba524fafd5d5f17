"""Snapshot and container records: the ``snapshots`` and ``containers`` databases.

The snapshotter's bookkeeping (containerd's snapshot metadata); the directories
and mounts are `fusesnap.snapshots.snapshotter`' business. Vocabulary:

- a *committed* snapshot is immutable and named; those made from an image are
  named by their chain ID and record the layer whose contents they add on top
  of their parent;
- an *active* snapshot (``prepare``) is writable: an upper dir over its parent;
- a *view* is a read-only active snapshot.

Every snapshot but the bottom one has a parent, which is always committed. A
snapshot with children cannot be deleted, so a parent chain is never broken.

A container record (`ContainerRef`) names the image and manifest a container
was made from and its snapshot.

GC: `gc_roots` makes each committed snapshot's layer and each container's
manifest a root, so a snapshot keeps its layer (and so its chunks) and a
container its image. A pull commits its image's chain (`commit_chain`);
``rmi`` releases the part of it that nothing else uses (`release_chain`).

Namespaces: fusesnap's own snapshots have namespace "". The containerd
snapshotter (`fusesnap.containerd`) keeps each containerd namespace's snapshots
apart (`SnapshotStore.in_namespace`): a key, a parent and a child are looked up
in one namespace only; gc sees them all. A *remote* committed snapshot (its
``source`` set: the image reference its layers are read from, and ``manifest``
its manifest) is served by a lazy mount of its chain; gc keeps its manifest, and
so its config and layers.
"""

from __future__ import annotations

import builtins
import dataclasses
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

from fusesnap.digest import Digest
from fusesnap.errors import AlreadyExistsError, FusesnapError, NotFoundError, StoreError
from fusesnap.oci import chain_ids
from fusesnap.store.blobs import Txn
from fusesnap.store.env import Env
from fusesnap.store.records import CONTENT, LAYER, FlatRecord, get_record, iter_records
from fusesnap.store.schema import CONTAINERS, SNAPSHOTS, container_key, pack, snapshot_key
from fusesnap.store.table import RecordTable

COMMITTED = "committed"
ACTIVE = "active"
VIEW = "view"
KINDS = frozenset({COMMITTED, ACTIVE, VIEW})


class SnapshotInUseError(FusesnapError):
    """A snapshot that other snapshots stand on cannot be removed."""


class SnapshotStateError(StoreError):
    """A snapshot is not of the kind the operation needs (commit of a committed one)."""


@dataclass(frozen=True, slots=True)
class SnapshotRecord(FlatRecord):
    """One snapshot. ``id`` names its directory under ``ROOT/snapshots`` ("" for a
    committed snapshot of an image layer: the layer store holds its contents)."""

    what: ClassVar[str] = "snapshot"

    key: str
    kind: str
    parent: str | None = None
    id: str = ""
    layer: Digest | None = None
    diff_id: Digest | None = None
    created: float = 0.0
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    namespace: str = ""
    updated: float = 0.0
    source: str = ""
    manifest: Digest | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"snapshot {self.key}: unknown kind {self.kind!r}")


@dataclass(frozen=True, slots=True)
class ContainerRef(FlatRecord):
    """A container as gc sees it: the image it runs and its snapshot."""

    what: ClassVar[str] = "container"

    name: str
    image: str
    manifest_digest: Digest
    snapshot: str
    created: float = 0.0


def get_snapshot(txn: Txn, env: Env, key: str, namespace: str = "") -> SnapshotRecord | None:
    return get_record(txn, env.db(SNAPSHOTS), snapshot_key(key, namespace), SnapshotRecord)


def iter_snapshots(txn: Txn, env: Env, namespace: str | None = None) -> Iterator[SnapshotRecord]:
    """The snapshots of ``namespace`` (None: of every namespace)."""
    for record in iter_records(txn, env.db(SNAPSHOTS), SnapshotRecord):
        if namespace is None or record.namespace == namespace:
            yield record


def iter_containers(txn: Txn, env: Env) -> Iterator[ContainerRef]:
    return iter_records(txn, env.db(CONTAINERS), ContainerRef)


def gc_roots(txn: Txn, env: Env) -> list[tuple[str, str]]:
    """The gc roots of snapshots and containers (module docstring)."""
    roots: list[tuple[str, str]] = []
    for s in iter_snapshots(txn, env):
        if s.layer is not None:
            roots.append((LAYER, str(s.layer)))
        if s.manifest is not None:
            roots.append((CONTENT, str(s.manifest)))
    roots.extend((CONTENT, str(c.manifest_digest)) for c in iter_containers(txn, env))
    return roots


def _not_found(key: str) -> NotFoundError:
    return NotFoundError(f"snapshot {key}: not found")


class SnapshotStore(RecordTable[SnapshotRecord]):
    """The snapshot records of one namespace: create, read, commit, update, delete (each
    one transaction)."""

    def __init__(self, env: Env, namespace: str = "") -> None:
        super().__init__(
            env, SNAPSHOTS, SnapshotRecord, partial(snapshot_key, namespace=namespace), "snapshot"
        )
        self.namespace = namespace

    def in_namespace(self, namespace: str) -> SnapshotStore:
        """The records of ``namespace`` ("": fusesnap's own)."""
        return SnapshotStore(self._env, namespace)

    def list(self) -> builtins.list[SnapshotRecord]:
        """This namespace's snapshots, in key order."""
        with self._env.txn() as txn:
            return builtins.list(iter_snapshots(txn, self._env, self.namespace))

    def list_all(self) -> builtins.list[SnapshotRecord]:
        """The snapshots of every namespace."""
        with self._env.txn() as txn:
            return builtins.list(iter_snapshots(txn, self._env))

    def _get_in(self, txn: Txn, key: str) -> SnapshotRecord | None:
        return get_snapshot(txn, self._env, key, self.namespace)

    def _put(self, txn: Txn, record: SnapshotRecord) -> None:
        key = snapshot_key(record.key, record.namespace)
        txn.put(key, pack(record.to_record()), db=self._env.db(SNAPSHOTS))

    def _delete(self, txn: Txn, key: str) -> None:
        txn.delete(snapshot_key(key, self.namespace), db=self._env.db(SNAPSHOTS))

    def _children(self, txn: Txn, key: str) -> builtins.list[str]:
        return sorted(
            s.key for s in iter_snapshots(txn, self._env, self.namespace) if s.parent == key
        )

    def _check_parent(self, txn: Txn, record: SnapshotRecord) -> None:
        if record.parent is None:
            return
        parent = self._get_in(txn, record.parent)
        if parent is None:
            raise NotFoundError(f"snapshot {record.key}: parent {record.parent}: not found")
        if parent.kind != COMMITTED:
            raise StoreError(f"snapshot {record.key}: parent {record.parent} is not committed")

    def create(self, record: SnapshotRecord, *, exist_ok: bool = False) -> SnapshotRecord:
        """Store a new snapshot (``created`` now if 0). `AlreadyExistsError` if the key is
        taken, unless ``exist_ok`` (then the stored one is returned unchanged)."""
        record = _with_created(dataclasses.replace(record, namespace=self.namespace))
        with self._env.txn(write=True) as txn:
            old = self._get_in(txn, record.key)
            if old is not None:
                if exist_ok:
                    return old
                raise AlreadyExistsError(f"snapshot {record.key}: already exists")
            self._check_parent(txn, record)
            self._put(txn, record)
        return record

    def commit(self, committed: SnapshotRecord, active_key: str) -> SnapshotRecord:
        """Replace active snapshot ``active_key`` by ``committed`` in one transaction."""
        committed = _with_created(dataclasses.replace(committed, namespace=self.namespace))
        with self._env.txn(write=True) as txn:
            active = self._get_in(txn, active_key)
            if active is None:
                raise _not_found(active_key)
            if active.kind != ACTIVE:
                raise SnapshotStateError(f"snapshot {active_key}: is {active.kind}, not active")
            if self._get_in(txn, committed.key) is not None:
                raise AlreadyExistsError(f"snapshot {committed.key}: already exists")
            self._check_parent(txn, committed)
            self._delete(txn, active_key)
            self._put(txn, committed)
        return committed

    def commit_chain(
        self, layers: Sequence[tuple[Digest, Digest]], labels: Mapping[str, str]
    ) -> str | None:
        """The committed snapshot of every prefix of ``layers`` ((layer digest, diff ID),
        bottom first), made where missing, in one transaction; the top chain ID."""
        chains = chain_ids([diff_id for _, diff_id in layers])
        parent: str | None = None
        with self._env.txn(write=True) as txn:
            for chain, (layer, diff_id) in zip(chains, layers, strict=True):
                if self._get_in(txn, chain) is None:
                    record = SnapshotRecord(
                        chain,
                        COMMITTED,
                        parent,
                        layer=layer,
                        diff_id=diff_id,
                        labels=dict(labels),
                        namespace=self.namespace,
                    )
                    self._put(txn, _with_created(record))
                parent = chain
        return parent

    def release_chain(self, chain: Sequence[str], keep: Collection[str]) -> builtins.list[str]:
        """Delete the committed snapshots of ``chain`` (bottom first) from the top down,
        while one is neither in ``keep`` (other images' chains) nor a parent; the keys
        deleted, in one transaction."""
        deleted: builtins.list[str] = []
        with self._env.txn(write=True) as txn:
            for key in reversed(chain):
                record = self._get_in(txn, key)
                if record is None:
                    continue  # released before
                if record.kind != COMMITTED or key in keep or self._children(txn, key):
                    break
                self._delete(txn, key)
                deleted.append(key)
        return deleted

    def delete(self, key: str) -> SnapshotRecord:
        """Remove snapshot ``key``; `SnapshotInUseError` if another stands on it."""
        with self._env.txn(write=True) as txn:
            record = self._get_in(txn, key)
            if record is None:
                raise _not_found(key)
            children = self._children(txn, key)
            if children:
                more = f" and {len(children) - 1} more" if len(children) > 1 else ""
                raise SnapshotInUseError(
                    f"snapshot {key}: in use as the parent of {children[0]}{more}"
                )
            self._delete(txn, key)
        return record

    def update_labels(
        self, key: str, labels: Mapping[str, str], fields: Collection[str] | None = None
    ) -> SnapshotRecord:
        """Set snapshot ``key``'s labels to ``labels`` (``fields``: only these label names,
        each set to its value in ``labels`` or removed if absent there), ``updated`` now."""
        with self._env.txn(write=True) as txn:
            record = self._get_in(txn, key)
            if record is None:
                raise _not_found(key)
            if fields is None:
                new = dict(labels)
            else:
                new = dict(record.labels)
                for name in fields:
                    if name in labels:
                        new[name] = labels[name]
                    else:
                        new.pop(name, None)
            record = dataclasses.replace(record, labels=new, updated=time.time())
            self._put(txn, record)
        return record


def _with_created(record: SnapshotRecord) -> SnapshotRecord:
    created = record.created or time.time()
    return dataclasses.replace(record, created=created, updated=record.updated or created)


class ContainerStore(RecordTable[ContainerRef]):
    """Container records (for gc): put, get, delete, list."""

    def __init__(self, env: Env) -> None:
        super().__init__(env, CONTAINERS, ContainerRef, container_key, "container")

    def put(self, ref: ContainerRef) -> None:
        with self._env.txn(write=True) as txn:
            txn.put(container_key(ref.name), pack(ref.to_record()), db=self._env.db(CONTAINERS))

    def delete(self, name: str) -> bool:
        with self._env.txn(write=True) as txn:
            return bool(txn.delete(container_key(name), db=self._env.db(CONTAINERS)))
