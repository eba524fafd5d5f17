"""Snapshot and container records: create, commit, delete rules, and gc roots."""

from __future__ import annotations

import hashlib

import pytest

from fusesnap.digest import Digest
from fusesnap.errors import AlreadyExistsError, NotFoundError, StoreError
from fusesnap.oci import chain_ids
from fusesnap.store import (
    ACTIVE,
    COMMITTED,
    ContainerRef,
    SnapshotInUseError,
    SnapshotRecord,
    Store,
    collect_garbage,
    open_store,
)

from .helpers import blob, chunk, layer_digest, layer_record, put_layer_manifest


def committed(key: str, parent: str | None = None, layer: str = "") -> SnapshotRecord:
    return SnapshotRecord(
        key=key,
        kind=COMMITTED,
        parent=parent,
        layer=layer_digest(layer or key),
        diff_id=Digest.of(key.encode()),
    )


def test_snapshot_round_trips_and_survives_reopen(store: Store, root) -> None:
    stored = store.snapshots.create(committed("c0"))
    assert stored.created > 0
    work = SnapshotRecord("work", ACTIVE, parent="c0", id="ab12", labels={"a": "b"})
    store.snapshots.create(work)
    store.close()
    with open_store(root) as again:
        assert again.snapshots.get("c0") == stored
        work = again.snapshots.get("work")
        assert (work.kind, work.parent, work.id, work.labels) == (ACTIVE, "c0", "ab12", {"a": "b"})
        assert [s.key for s in again.snapshots.list()] == ["c0", "work"]


def test_create_refuses_a_taken_key_unless_exist_ok(store: Store) -> None:
    first = store.snapshots.create(committed("c0"))
    with pytest.raises(AlreadyExistsError, match="snapshot c0: already exists"):
        store.snapshots.create(committed("c0", layer="other"))
    assert store.snapshots.create(committed("c0", layer="other"), exist_ok=True) == first


def test_parent_must_exist_and_be_committed(store: Store) -> None:
    with pytest.raises(NotFoundError, match="parent nope: not found"):
        store.snapshots.create(committed("c1", parent="nope"))
    store.snapshots.create(committed("c0"))
    store.snapshots.create(SnapshotRecord("work", ACTIVE, parent="c0", id="x"))
    with pytest.raises(StoreError, match="parent work is not committed"):
        store.snapshots.create(SnapshotRecord("w2", ACTIVE, parent="work", id="y"))


def test_commit_replaces_the_active_snapshot(store: Store) -> None:
    store.snapshots.create(committed("c0"))
    store.snapshots.create(SnapshotRecord("work", ACTIVE, parent="c0", id="x"))
    store.snapshots.commit(committed("c1", parent="c0"), "work")
    assert not store.snapshots.exists("work")
    assert store.snapshots.get("c1").parent == "c0"
    with pytest.raises(NotFoundError):
        store.snapshots.commit(committed("c2", parent="c0"), "work")
    with pytest.raises(StoreError, match="is committed, not active"):
        store.snapshots.commit(committed("c2", parent="c0"), "c1")


def test_a_snapshot_with_children_cannot_be_deleted(store: Store) -> None:
    store.snapshots.create(committed("c0"))
    store.snapshots.create(committed("c1", parent="c0"))
    with pytest.raises(SnapshotInUseError, match="snapshot c0: in use as the parent of c1"):
        store.snapshots.delete("c0")
    store.snapshots.delete("c1")
    store.snapshots.delete("c0")
    with pytest.raises(NotFoundError, match="snapshot c0: not found"):
        store.snapshots.delete("c0")


def test_committed_snapshot_keeps_its_layer_and_chunks_from_gc(store: Store) -> None:
    items = [chunk(blob(3000, i)) for i in range(3)]
    store.chunks.put_many(items)
    store.layers.put(layer_record("L", [d for d, _ in items]))
    store.snapshots.create(committed("c0", layer="L"))
    result = collect_garbage(store)
    assert not result.removed_layers
    assert store.layers.exists(layer_digest("L"))
    assert set(store.chunks.iter_digests()) == {d for d, _ in items}
    store.snapshots.delete("c0")
    result = collect_garbage(store)
    assert [info.digest for info in result.removed_layers] == [layer_digest("L")]
    assert not set(store.chunks.iter_digests())


def test_container_keeps_its_image_manifest_from_gc(store: Store) -> None:
    items = [chunk(blob(3000, 7))]
    store.chunks.put_many(items)
    store.layers.put(layer_record("L", [items[0][0]]))
    manifest = put_layer_manifest(store, b'{"c": 1}', [layer_digest("L")])
    store.containers.put(ContainerRef("web", "img", manifest, "containers/web", 1.0))
    collect_garbage(store)  # no image names the manifest: only the container does
    assert store.content.exists(manifest)
    assert store.layers.exists(layer_digest("L"))
    assert store.containers.get("web").manifest_digest == manifest
    assert store.containers.delete("web")
    collect_garbage(store)
    assert not store.content.exists(manifest)
    assert not store.layers.exists(layer_digest("L"))
    with pytest.raises(NotFoundError, match="container web: not found"):
        store.containers.get("web")


def test_commit_chain_records_every_prefix_once(store: Store) -> None:
    d = [Digest.of(f"diff{i}".encode()) for i in range(3)]
    layers = [(layer_digest(f"L{i}"), d[i]) for i in range(3)]
    top = store.snapshots.commit_chain(layers, {"fusesnap.image": "img"})
    chains = chain_ids(d)
    assert top == chains[-1]
    records = [store.snapshots.get(c) for c in chains]
    assert [r.parent for r in records] == [None, chains[0], chains[1]]
    assert [r.layer for r in records] == [lay for lay, _ in layers]
    assert all(r.kind == COMMITTED and r.labels == {"fusesnap.image": "img"} for r in records)
    # Again, or a shorter image on the same base: nothing new, nothing replaced.
    assert store.snapshots.commit_chain(layers[:2], {"fusesnap.image": "other"}) == chains[1]
    assert store.snapshots.get(chains[1]).labels == {"fusesnap.image": "img"}
    assert len(store.snapshots.list()) == 3


def test_release_chain_stops_at_what_others_use(store: Store) -> None:
    d = [Digest.of(f"diff{i}".encode()) for i in range(3)]
    layers = [(layer_digest(f"L{i}"), d[i]) for i in range(3)]
    store.snapshots.commit_chain(layers, {})
    chains = chain_ids(d)
    # Another image shares the bottom layer; a container's active snapshot sits on the top.
    store.snapshots.create(SnapshotRecord("containers/c", ACTIVE, parent=chains[2], id="x1"))
    assert store.snapshots.release_chain(chains, keep={chains[0]}) == []
    store.snapshots.delete("containers/c")
    assert store.snapshots.release_chain(chains, keep={chains[0]}) == [chains[2], chains[1]]
    assert [s.key for s in store.snapshots.list()] == [chains[0]]
    assert store.snapshots.release_chain(chains, keep=set()) == [chains[0]]
    assert store.snapshots.list() == []


def test_chain_ids_follow_the_oci_rule() -> None:
    d0, d1 = Digest.of(b"a"), Digest.of(b"b")
    c1 = "sha256:" + hashlib.sha256(f"{d0} {d1}".encode()).hexdigest()
    assert chain_ids([d0, d1]) == [str(d0), c1]
    assert chain_ids([]) == []
