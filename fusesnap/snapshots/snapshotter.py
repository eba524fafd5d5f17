"""Snapshots like containerd's snapshotter: stacked filesystem states keyed by chain ID.

A *committed* snapshot is an immutable state, named; those of an image are named
by their OCI chain ID (``chain(L0) = diff_id0``, ``chain(Ln) = sha256(chain(Ln-1)
+ " " + diff_idn)``) and stand for the layer prefix up to that layer. Their
contents are in the layer store (index + chunks) and are served by a fusesnap
mount of the image; they have no directory. An *active* snapshot (``prepare``)
is a writable state over a committed parent: an overlay upper and work dir. A
*view* is read-only: the parent alone, through an overlay without an upper dir.
``commit`` turns an active snapshot into a committed one, once its upper dir
has become a layer (`fusesnap.snapshots.commit`). ``remove`` refuses a snapshot
that others stand on. Records: `fusesnap.store.snapshots`. Directories::

    ROOT/snapshots/<id>/fs      the upper dir of active snapshot <id>
    ROOT/snapshots/<id>/work    its overlay work dir
    ROOT/snapshots/empty        the bottom lower dir of every view

Worked example, image I with layers L0, L1 (diff IDs d0, d1)::

    ensure_image(view_of_I)            -> committed d0 (layer L0),
                                          committed c1 = sha256(d0 " " d1) (layer L1, parent d0)
    prepare("container/web", c1)       -> active; ROOT/snapshots/<id>/{fs,work}
    overlay_options("container/web", lower=<mount of I>)
                                       -> "lowerdir=<mount>,upperdir=<id>/fs,workdir=<id>/work"
    commit(c2, "container/web", layer=L2, diff_id=d2)
                                       -> committed c2 (parent c1); the active one and its
                                          dirs are gone
    remove(c1)                         -> refused: c2 stands on it

Cache rule: `is_cached` says whether an image's top chain is committed with every
layer complete in the store: then nothing needs fetching.

Concurrency: each record change is one LMDB transaction; directories are made
before the record that names them and removed after it, so a crash leaves at most
an unnamed directory (never a record without its directory).
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

from fusesnap.digest import Digest
from fusesnap.errors import FusesnapError, NotFoundError
from fusesnap.image import ImageView
from fusesnap.oci import chain_ids
from fusesnap.store import (
    ACTIVE,
    COMMITTED,
    VIEW,
    SnapshotInUseError,
    SnapshotRecord,
    Store,
)

__all__ = ["SnapshotError", "Snapshotter"]

SNAPSHOTS = "snapshots"
EMPTY = "empty"


class SnapshotError(FusesnapError):
    """A snapshot cannot be used as asked."""


class Snapshotter:
    """The snapshots of the store at ``root`` (module docstring)."""

    def __init__(self, store: Store, root: Path) -> None:
        self.store = store
        self.base = Path(root).absolute() / SNAPSHOTS

    # -- committed snapshots of images -------------------------------------------------

    def ensure_image(self, view: ImageView) -> str | None:
        """Record the committed snapshot of each layer prefix of ``view`` (those already
        there are kept); the top chain ID (None for an image without layers)."""
        pairs = zip(view.layers, view.config.diff_ids, strict=False)
        layers = [(layer.digest, diff_id) for layer, diff_id in pairs]
        return self.store.snapshots.commit_chain(layers, {"fusesnap.image": view.record.name})

    def release_image(self, view: ImageView) -> list[str]:
        """After ``rmi``: remove the committed snapshots of ``view``'s chain that no other
        image's chain, snapshot or container stands on; their keys."""
        keep: set[str] = set()
        for record in self.store.images.list():
            if record.name == view.record.name:
                continue
            try:
                other = ImageView.open(self.store, record.name)
            except FusesnapError:
                continue  # an image whose config is gone keeps nothing
            keep.update(chain_ids(other.config.diff_ids))
        return self.store.snapshots.release_chain(chain_ids(view.config.diff_ids), keep)

    def is_cached(self, diff_ids: Sequence[Digest], *, complete: bool = True) -> bool:
        """Is the committed chain for ``diff_ids`` present (and, with ``complete``, every
        layer's chunks local)? Then nothing of that image needs fetching."""
        if not diff_ids:
            return True
        for chain in chain_ids(diff_ids):
            try:
                record = self.store.snapshots.get(chain)
            except NotFoundError:
                return False
            if record.kind != COMMITTED or record.layer is None:
                return False
            if complete:
                if not self.store.layers.exists(record.layer):
                    return False
                presence = self.store.layers.present_chunks(record.layer)
                if presence.present != presence.total:
                    return False
        return True

    # -- active snapshots and views ----------------------------------------------------

    def prepare(
        self, key: str, parent: str | None, *, labels: Mapping[str, str] | None = None
    ) -> SnapshotRecord:
        """A new active snapshot ``key`` over committed ``parent``: empty upper and
        work dirs. `AlreadyExistsError` if ``key`` is taken."""
        return self._new(key, parent, ACTIVE, labels)

    def view(
        self, key: str, parent: str | None, *, labels: Mapping[str, str] | None = None
    ) -> SnapshotRecord:
        """A new read-only snapshot ``key`` of committed ``parent``."""
        return self._new(key, parent, VIEW, labels)

    def _new(
        self, key: str, parent: str | None, kind: str, labels: Mapping[str, str] | None
    ) -> SnapshotRecord:
        snapshot_id = secrets.token_hex(8)
        directory = self.base / snapshot_id
        self.base.mkdir(mode=0o711, parents=True, exist_ok=True)
        directory.mkdir(mode=0o711)
        if kind == ACTIVE:
            (directory / "fs").mkdir(mode=0o755)
            (directory / "work").mkdir(mode=0o700)
        record = SnapshotRecord(
            key=key, kind=kind, parent=parent, id=snapshot_id, labels=dict(labels or {})
        )
        try:
            return self.store.snapshots.create(record)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def upper_dir(self, key: str) -> Path:
        """The upper dir of active snapshot ``key``."""
        record = self.store.snapshots.get(key)
        if record.kind != ACTIVE:
            raise SnapshotError(f"snapshot {key}: is {record.kind}, has no upper dir")
        return self.base / record.id / "fs"

    def overlay_options(self, key: str, lower: Path) -> str:
        """The overlayfs options of snapshot ``key`` with its parent mounted at ``lower``:
        an active one gets its upper and work dirs, a view an empty bottom layer (overlayfs
        wants two lower dirs when there is no upper) and so is read-only."""
        record = self.store.snapshots.get(key)
        if record.kind == ACTIVE:
            directory = self.base / record.id
            # redirect_dir=off: a renamed lower directory is copied up whole, so that the
            # upper dir says everything a layer tar can (`difftar`).
            return (
                f"lowerdir={lower},upperdir={directory / 'fs'},workdir={directory / 'work'},"
                "redirect_dir=off"
            )
        if record.kind == VIEW:
            empty = self.base / EMPTY
            empty.mkdir(mode=0o755, parents=True, exist_ok=True)
            return f"lowerdir={lower}:{empty}"
        raise SnapshotError(f"snapshot {key}: committed snapshots are mounted as their image")

    # -- commit, remove, list ------------------------------------------------------------

    def commit(self, name: str, key: str, *, layer: Digest, diff_id: Digest) -> SnapshotRecord:
        """Make active snapshot ``key``, whose upper dir is now layer ``layer`` (stored
        and indexed), the committed snapshot ``name``; its directory goes."""
        active = self.store.snapshots.get(key)
        committed = SnapshotRecord(
            key=name,
            kind=COMMITTED,
            parent=active.parent,
            layer=layer,
            diff_id=diff_id,
            labels=active.labels,
        )
        stored = self.store.snapshots.commit(committed, key)
        self._remove_dir(active)
        return stored

    def remove(self, key: str) -> SnapshotRecord:
        """Remove snapshot ``key`` and its directory; `SnapshotInUseError` if another
        snapshot, or a container, stands on it."""
        users = sorted(c.name for c in self.store.containers.list() if c.snapshot == key)
        if users:
            raise SnapshotInUseError(f"snapshot {key}: in use by container {users[0]}")
        record = self.store.snapshots.delete(key)
        self._remove_dir(record)
        return record

    def _remove_dir(self, record: SnapshotRecord) -> None:
        if record.id:
            with suppress(FileNotFoundError):
                shutil.rmtree(self.base / record.id)

    def stat(self, key: str) -> SnapshotRecord:
        return self.store.snapshots.get(key)

    def list(self) -> list[SnapshotRecord]:
        return self.store.snapshots.list()

    def path(self, record: SnapshotRecord) -> Path | None:
        """The directory of an active snapshot or view; None for a committed one."""
        return self.base / record.id if record.id else None
