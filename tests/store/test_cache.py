"""The cache limit (`fusesnap.store.cache`): what may be evicted, in which order, and
the size kept beside the chunks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fusesnap.store import KEEP, REMOTE, ChunkStats, Store, collect_garbage, open_store
from fusesnap.store import access as access_module

from .helpers import blob, chunk, image, layer_digest, layer_record, put_layer_manifest

SIZE = 64 * 1024  # incompressible: stored about as big


def chunks_of(seed: int, n: int) -> list[tuple[bytes, bytes]]:
    return [chunk(blob(SIZE, seed * 1000 + i)) for i in range(n)]


def stored(store: Store) -> set[bytes]:
    return set(store.chunks.iter_digests())


def add_layer(
    store: Store, name: str, items: list[tuple[bytes, bytes]], mode: bytes | None
) -> None:
    """A layer record listing ``items`` (an image holds it), its chunks stored."""
    store.layers.put(layer_record(name, [d for d, _ in items]))
    if mode is not None:
        store.cache.mark([layer_digest(name)], mode)
    manifest = put_layer_manifest(store, f'{{"{name}": 1}}'.encode(), [layer_digest(name)])
    store.images.put(image(name.lower(), manifest))
    store.chunks.put_many(items)


def counted(store: Store) -> int:
    """The chunks' stored bytes, counted the slow way."""
    return sum(_stored_len(store, d) for d in stored(store))


def _stored_len(store: Store, digest: bytes) -> int:
    with store.env.txn(buffers=True) as txn:
        value = txn.get(digest, db=store.env.db(b"chunks"))
        assert value is not None
        return len(value)


def test_size_is_kept_through_puts_deletes_and_gc(store: Store) -> None:
    add_layer(store, "A", chunks_of(1, 5), REMOTE)
    assert store.cache.size() == counted(store) > 4 * SIZE
    store.chunks.delete_many([d for d, _ in chunks_of(1, 2)])
    assert store.cache.size() == counted(store)
    store.images.delete("a")
    collect_garbage(store)
    assert stored(store) == set()
    assert store.cache.size() == 0


def test_a_store_without_a_kept_size_is_counted_once(store: Store) -> None:
    add_layer(store, "A", chunks_of(1, 3), REMOTE)
    with store.env.txn(write=True) as txn:
        txn.delete(b"size", db=store.env.db(b"cache"))
    assert store.cache.size() == counted(store)
    store.chunks.put_many(chunks_of(2, 1))  # counts, then keeps the count
    assert store.cache.usage().size == store.cache.size() == counted(store)


def test_limit_evicts_least_recently_used_remote_chunks(store: Store) -> None:
    old, new = chunks_of(1, 4), chunks_of(2, 4)
    add_layer(store, "A", old + new, REMOTE)
    # `new` used since (a stamp never goes back in time: `old` stays as stored)
    store.chunks.touch([d for d, _ in new], when=access_module.bucket() + 1)
    more = chunks_of(3, 3)
    store.layers.put(layer_record("A", [d for d, _ in old + new + more]))
    store.cache.set_limit(store.cache.size() + SIZE + 1000)  # room for one more, not three

    result = store.chunks.put_many(more)

    assert result.new == 3
    assert result.refused == 0
    assert result.evicted.count == 2  # the two least recently used of `old`
    here = stored(store)
    assert {d for d, _ in new + more} <= here
    assert len(here & {d for d, _ in old}) == 2
    assert store.cache.size() == counted(store) <= store.cache.limit()  # type: ignore[operator]


def test_pinned_chunks_are_never_evicted_and_count(store: Store) -> None:
    kept, committed, remote, window_like = (chunks_of(n, 3) for n in range(1, 5))
    add_layer(store, "K", kept, KEEP)  # pull --all
    add_layer(store, "C", committed, None)  # a commit's layer: no mode
    add_layer(store, "R", remote, REMOTE)
    shared = kept[0]  # also listed by a remote layer: pinned still
    store.layers.put(layer_record("R", [d for d, _ in [*remote, shared]]))
    usage = store.cache.usage()
    assert usage.evictable == sum(_stored_len(store, d) for d, _ in remote)
    assert usage.pinned == sum(_stored_len(store, d) for d, _ in kept + committed)

    store.cache.set_limit(1)  # far below what is pinned
    result = store.chunks.put_many(window_like)  # listed by no layer: stored regardless

    assert result.new == 3
    assert result.evicted.count == 3  # every remote chunk went, nothing else
    assert stored(store) == {d for d, _ in kept + committed + window_like}


def test_new_evictable_chunks_without_room_are_not_stored(store: Store) -> None:
    add_layer(store, "K", chunks_of(1, 3), KEEP)
    fresh = chunks_of(2, 2)
    store.layers.put(layer_record("R", [d for d, _ in fresh]))
    store.cache.mark([layer_digest("R")], REMOTE)
    store.cache.set_limit(store.cache.size() + SIZE // 2)

    result = store.chunks.put_many(fresh, verified=True)

    assert result.new == 0
    assert result.refused == 2
    assert stored(store).isdisjoint(d for d, _ in fresh)
    assert store.cache.size() <= store.cache.limit()  # type: ignore[operator]


def test_keep_wins_over_remote(store: Store) -> None:
    digest = layer_digest("A")
    store.cache.mark([digest], KEEP)
    store.cache.mark([digest], REMOTE)  # a lazy pull after a full one
    assert not store.cache.evictable_layer(digest)
    store.layers.put(layer_record("A", []))
    store.layers.put(layer_record("A", []))  # replacing the record keeps the mode
    assert not store.cache.evictable_layer(digest)
    store.layers.delete(digest)  # gone with the layer
    store.cache.mark([digest], REMOTE)
    assert store.cache.evictable_layer(digest)


def test_evict_on_demand_frees_what_is_asked_oldest_first(store: Store) -> None:
    items = chunks_of(1, 6)
    add_layer(store, "R", items, REMOTE)
    for n, (d, _) in enumerate(items):  # items[5] oldest ... items[0] newest
        store.chunks.touch([d], when=access_module.bucket() + 6 - n)
    with store.env.txn(write=True) as txn:
        access_module.forget(txn, store.env, [items[0][0]])  # unstamped: found by the last pass
    gone = store.cache.evict(1)  # at least MIN_EVICTION: more than all of them
    assert gone.count == 6
    assert stored(store) == set()

    add_layer(store, "S", chunks_of(2, 2), REMOTE)
    assert store.cache.evict(1).count == 2
    assert store.cache.evict(1) == ChunkStats(0, 0)  # nothing left to evict


def test_touch_reorders_and_skips_missing_chunks(store: Store) -> None:
    items = chunks_of(1, 3)
    add_layer(store, "R", items, REMOTE)
    ghost = hashlib.sha256(b"not stored").digest()
    store.chunks.touch([items[0][0], ghost], when=access_module.bucket() + 5)
    with store.env.txn() as txn:
        order = list(access_module.stamps_oldest_first(txn, store.env))
    assert order[-1] == items[0][0]
    assert ghost not in order


def test_limit_persists(root: Path) -> None:
    with open_store(root) as s:
        assert s.cache.limit() is None
        s.cache.set_limit(40 << 20)
    with open_store(root) as s:
        assert s.cache.limit() == 40 << 20
        s.cache.set_limit(None)
        assert s.cache.limit() is None
        with pytest.raises(ValueError, match="negative"):
            s.cache.set_limit(-1)


def _rss_file() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile")


def test_release_mapped_unmaps_the_pages_a_reader_touched(store: Store) -> None:
    items = chunks_of(7, 256)  # 16 MiB, incompressible
    store.chunks.put_many(items)
    store.env.release_mapped()
    before = _rss_file()
    for digest, _ in items:
        store.chunks.get(digest)
    touched = _rss_file()
    assert touched - before > 8 << 20  # the map's pages are resident in this process
    assert store.env.release_mapped() > 0
    assert _rss_file() - before < 4 << 20
    assert all(store.chunks.get(d) == data for d, data in items[:8])  # mapped again on use
