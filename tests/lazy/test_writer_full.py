"""The background writer on a full disk, under a cache limit, and its access stamps
(`fusesnap.lazy.writer`), over a real store whose writes can be made to fail."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import trio

from fusesnap.errors import StoreFullError
from fusesnap.lazy.limits import FetchStats
from fusesnap.lazy.writer import ChunkWriter
from fusesnap.store import REMOTE, ChunkStore, Store, open_store
from fusesnap.store import access as store_access
from tests.store.helpers import image, layer_digest, layer_record, put_layer_manifest


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "root") as s:
        yield s


def chunks(seed: int, n: int, size: int = 64 * 1024) -> dict[bytes, bytes]:
    rnd = random.Random(seed)
    out = {}
    for _ in range(n):
        data = rnd.randbytes(size)
        out[hashlib.sha256(data).digest()] = data
    return out


class FullDisk:
    """The real chunk store, whose next ``full`` puts fail as a full disk would."""

    def __init__(self, chunks: ChunkStore) -> None:
        self.chunks = chunks
        self.full = 0
        self.puts = 0

    def put_many(self, items: Iterable[tuple[bytes, bytes]], *, verified: bool = False) -> object:
        self.puts += 1
        if self.full:
            self.full -= 1
            raise StoreFullError("store at /x: disk full (mdb_txn_commit: Input/output error)")
        return self.chunks.put_many(items, verified=verified)

    def touch(self, digests: Iterable[bytes]) -> None:
        self.chunks.touch(digests)

    def evict(self, need: int) -> object:
        return self.chunks.evict(need)


def remote_layer(store: Store, name: str, items: dict[bytes, bytes]) -> None:
    store.layers.put(layer_record(name, list(items)))
    store.cache.mark([layer_digest(name)], REMOTE)
    manifest = put_layer_manifest(store, name.encode(), [layer_digest(name)])
    store.images.put(image(name, manifest))


async def write(writer: ChunkWriter, batch: dict[bytes, bytes]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.add(batch)
        await writer.flush()
        nursery.cancel_scope.cancel()


async def test_a_full_disk_evicts_and_stores_the_batch(store: Store) -> None:
    old, new = chunks(1, 4), chunks(2, 2)
    remote_layer(store, "old", old)
    store.chunks.put_many(old.items())
    remote_layer(store, "new", new)
    disk = FullDisk(store.chunks)
    disk.full = 1
    stats = FetchStats()

    await write(ChunkWriter(disk, stats), new)

    assert disk.puts == 2  # failed, evicted, stored
    assert stats.evicted_chunks == 4
    assert stats.chunks_stored == 2
    assert stats.store_failures == 0
    assert store.chunks.missing(new) == set()


async def test_a_full_disk_with_nothing_to_evict_drops_the_batch_once_warned(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    disk = FullDisk(store.chunks)
    disk.full = 10
    stats = FetchStats()
    writer = ChunkWriter(disk, stats)
    with caplog.at_level(logging.WARNING, logger="fusesnap.lazy.writer"):
        for seed in (1, 2):
            batch = chunks(seed, 2)
            await write(writer, batch)
            assert store.chunks.missing(batch) == set(batch)  # not stored, not queued
            assert batch.keys().isdisjoint(writer._pending)
    assert stats.store_failures == 4
    assert stats.chunks_stored == 0
    assert len([r for r in caplog.records if "cannot store" in r.message]) == 1


async def test_under_a_limit_chunks_without_room_are_skipped(store: Store) -> None:
    batch = chunks(3, 3)
    remote_layer(store, "r", batch)
    store.cache.set_limit(64 * 1024 + 1000)  # one of them
    stats = FetchStats()

    await write(ChunkWriter(store.chunks, stats), batch)

    assert stats.chunks_stored == 1
    assert stats.store_skipped == 2
    assert store.cache.size() <= 64 * 1024 + 1000


async def test_reads_are_stamped_in_a_batch(store: Store) -> None:
    items = chunks(4, 3)
    remote_layer(store, "r", items)
    store.chunks.put_many(items.items())
    first = next(iter(items))
    with store.env.txn(write=True) as txn:  # stored long ago
        store_access.forget(txn, store.env, items)
        store_access.stamp(txn, store.env, items, 1)
    writer = ChunkWriter(store.chunks, FetchStats())
    writer.note_read(first)
    await write(writer, chunks(5, 1))  # the stamps go with the next batch
    with store.env.txn() as txn:
        order = list(store_access.stamps_oldest_first(txn, store.env))
    assert order.index(first) > max(order.index(d) for d in items if d != first)
