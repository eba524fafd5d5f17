"""collect_garbage over layer records and chunks: links, the pending-layer
rule, and marking speed."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fusesnap.digest import Digest
from fusesnap.store import ChunkStats, Resource, Store, collect_garbage
from fusesnap.store import collect as collect_module
from fusesnap.store.chunkformat import encode
from fusesnap.store.schema import LAYER_DATA, layer_data_key

from .helpers import (
    blob,
    chunk,
    image,
    layer_digest,
    layer_record,
    put,
    put_layer_manifest,
)


def chunks_of(seed: int, n: int, size: int = 3000) -> list[tuple[bytes, bytes]]:
    return [chunk(blob(size, seed * 1000 + i)) for i in range(n)]


def stored_chunks(store: Store) -> set[bytes]:
    return set(store.chunks.iter_digests())


def every_chunk_verifies(store: Store) -> None:
    for digest in store.chunks.iter_digests():
        assert hashlib.sha256(store.chunks.get(digest)).digest() == digest


def two_images_sharing_chunks(store: Store) -> dict[str, Any]:
    shared, only_a, only_b = chunks_of(1, 4), chunks_of(2, 2), chunks_of(3, 3)
    store.chunks.put_many(shared + only_a + only_b)
    for name, items in (("A", shared + only_a), ("B", shared + only_b)):
        store.layers.put(layer_record(name, [d for d, _ in items]))
        manifest = put_layer_manifest(store, f'{{"{name}": 1}}'.encode(), [layer_digest(name)])
        store.images.put(image(name.lower(), manifest))
    return {"shared": shared, "only_a": only_a, "only_b": only_b}


def test_removing_an_image_frees_only_its_unique_chunks(store: Store) -> None:
    d = two_images_sharing_chunks(store)
    before = store.chunks.stats()
    assert collect_garbage(store).removed_chunks == ChunkStats(0, 0)

    store.images.delete("b")
    result = collect_garbage(store)
    assert [x.digest for x in result.removed_layers] == [layer_digest("B")]
    each = len(encode(d["only_b"][0][1]))  # random: one frame of raw blocks, all the same size
    assert result.removed_chunks == ChunkStats(3, 3 * each)
    assert result.chunks_skipped == ""
    assert stored_chunks(store) == {k for k, _ in d["shared"] + d["only_a"]}
    assert store.chunks.stats() == ChunkStats(6, before.stored_bytes - 3 * each)
    assert store.layers.exists(layer_digest("A"))
    assert store.layers.present_chunks(layer_digest("A"))[:2] == (6, 6)
    assert result.bytes_freed >= 3 * each + len(b"index of B") + 7 * 32 + len('{"B": 1}')
    assert {x.digest for x in result.removed_content} >= {Digest.of(b'{"B": 1}')}
    every_chunk_verifies(store)
    assert collect_garbage(store).removed_chunks.count == 0  # converged


def test_dry_run_reports_chunks_and_layers_and_changes_nothing(store: Store) -> None:
    d = two_images_sharing_chunks(store)
    store.images.delete("b")
    before = stored_chunks(store)
    result = collect_garbage(store, dry_run=True)
    assert result.removed_chunks == ChunkStats(3, 3 * len(encode(d["only_b"][0][1])))
    assert [x.digest for x in result.removed_layers] == [layer_digest("B")]
    assert stored_chunks(store) == before
    assert store.layers.exists(layer_digest("B"))


def test_unreferenced_layer_record_goes_with_its_chunks(store: Store) -> None:
    items = chunks_of(4, 3)
    store.chunks.put_many(items)
    store.layers.put(layer_record("orphan", [d for d, _ in items]))
    result = collect_garbage(store)
    assert [x.digest for x in result.removed_layers] == [layer_digest("orphan")]
    assert result.removed_chunks.count == 3
    assert store.layers.list() == []
    assert [k for k, _ in store.env.iter_items(LAYER_DATA)] == []


def test_pending_layer_lease_protects_freshly_written_chunks(store: Store) -> None:
    """A pull streams chunks before the record that lists them exists."""
    two_images_sharing_chunks(store)
    store.images.delete("b")
    fresh = chunks_of(5, 5)
    pulled = layer_digest("pulled")
    junk = put(store, b"junk").digest
    with store.leases.lease() as lease:
        store.leases.add_resource(lease.id, Resource.layer(pulled))
        store.chunks.put_many(fresh[:3])  # streaming ...
        result = collect_garbage(store)
        # Everything else is still swept; no chunk is.
        assert result.removed_chunks == ChunkStats(0, 0)
        assert result.chunks_skipped == f"lease {lease.id} is storing layer {pulled.short}"
        assert [x.digest for x in result.removed_layers] == [layer_digest("B")]
        assert junk in {x.digest for x in result.removed_content}
        store.chunks.put_many(fresh[3:])
        assert collect_garbage(store).removed_chunks.count == 0

        store.layers.put(layer_record("pulled", [d for d, _ in fresh]))
        result = collect_garbage(store)  # the lease holds the layer, which has a record now
        assert result.chunks_skipped == ""
        assert result.removed_chunks.count == 3  # image B's unique chunks, at last
        assert {d for d, _ in fresh} <= stored_chunks(store)

        manifest = put_layer_manifest(store, b'{"pulled": 1}', [pulled])
        store.images.put(image("pulled", manifest))
    store.chunks.put_many(chunks_of(6, 2))  # unreferenced: nothing lists these
    result = collect_garbage(store)
    assert result.removed_chunks.count == 2
    assert {d for d, _ in fresh} <= stored_chunks(store)
    assert store.layers.present_chunks(pulled)[:2] == (5, 5)
    every_chunk_verifies(store)

    store.images.delete("pulled")
    result = collect_garbage(store)
    assert result.removed_chunks.count == 5
    assert not store.layers.exists(pulled)


def test_expired_pending_lease_does_not_hold_chunks(store: Store) -> None:
    store.chunks.put_many(chunks_of(7, 2))
    lease = store.leases.create(expires_in=-1)
    store.leases.add_resource(lease.id, Resource.layer(layer_digest("never")))
    result = collect_garbage(store)
    assert result.removed_chunks.count == 2
    assert [x.id for x in result.removed_leases] == [lease.id]


def test_a_pull_starting_during_gc_stops_the_chunk_sweep(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule is checked again inside every deletion batch."""
    store.chunks.put_many(chunks_of(8, 10))
    real_iter_infos = collect_module.iter_infos

    def iter_infos_then_pull(txn: Any, env: Any) -> Iterator[Any]:
        yield from real_iter_infos(txn, env)
        lease = store.leases.create()  # commits before the sweep
        store.leases.add_resource(lease.id, Resource.layer(layer_digest("new")))

    monkeypatch.setattr(collect_module, "iter_infos", iter_infos_then_pull)
    result = collect_garbage(store, chunk_batch_size=3)
    assert result.removed_chunks.count == 0
    assert "is storing layer" in result.chunks_skipped
    assert store.chunks.stats().count == 10


def test_layer_taken_up_after_the_first_mark_keeps_its_chunks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = two_images_sharing_chunks(store)
    store.images.delete("b")
    real_iter_infos = collect_module.iter_infos
    manifest = put_layer_manifest(store, b'{"again": 1}', [layer_digest("B")])

    def iter_infos_then_pull(txn: Any, env: Any) -> Iterator[Any]:
        yield from real_iter_infos(txn, env)
        store.images.put(image("b-again", manifest))

    monkeypatch.setattr(collect_module, "iter_infos", iter_infos_then_pull)
    result = collect_garbage(store, batch_size=1, chunk_batch_size=1)
    assert result.removed_layers == ()
    assert result.removed_chunks.count == 0
    assert {k for k, _ in d["only_b"]} <= stored_chunks(store)


def test_layer_ingest_kept_until_its_record_exists(store: Store) -> None:
    data = b"a layer being downloaded"
    digest = Digest.of(data)
    manifest = put_layer_manifest(store, b"{}", [digest])
    store.images.put(image("img", manifest))
    with store.content.writer(digest, size=len(data), media_type="x") as w:
        w.write(data[:5])
    assert collect_garbage(store).removed_ingests == ()
    # Killed after storing the record, before `abort`: the file is a leftover.
    store.layers.put(dataclasses.replace(layer_record("x", []), digest=digest))
    assert [i.digest for i in collect_garbage(store).removed_ingests] == [digest]


def test_corrupt_chunk_list_stops_the_chunk_sweep(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    two_images_sharing_chunks(store)
    store.chunks.put_many(chunks_of(9, 2))  # garbage, but gc cannot be sure now
    with store.env.txn(write=True) as txn:
        txn.put(layer_data_key(layer_digest("A"), b"c", 0), b"\0" * 32, db=store.env.db(LAYER_DATA))
    with caplog.at_level(logging.WARNING):
        result = collect_garbage(store)
    assert result.removed_chunks.count == 0
    assert "chunk list corrupt in store" in result.chunks_skipped
    assert "not sweeping chunks" in caplog.text


def test_marking_many_chunks_is_fast(store: Store) -> None:
    """~100k chunks per store is normal; marking keeps them as raw bytes in
    one set, and a re-mark per deletion batch reuses it."""
    n = 50_000
    items = [chunk(i.to_bytes(8, "big")) for i in range(n)]
    start = time.perf_counter()
    for i in range(0, n, 10_000):
        store.chunks.put_many(items[i : i + 10_000])
    digests = [d for d, _ in items]
    store.layers.put(layer_record("kept", digests[:30_000]))
    store.layers.put(layer_record("dropped", digests[20_000:]))
    manifest = put_layer_manifest(store, b"{}", [layer_digest("kept")])
    store.images.put(image("img", manifest))
    built = time.perf_counter() - start

    start = time.perf_counter()
    result = collect_garbage(store, chunk_batch_size=2048)
    took = time.perf_counter() - start
    assert result.removed_chunks.count == 20_000
    assert store.chunks.stats().count == 30_000
    assert built < 10, f"building took {built:.1f}s"
    assert took < 5, f"gc took {took:.1f}s"
