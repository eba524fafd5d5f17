"""The mount's chunk cache: LRU bound, one load per chunk however many readers, errors."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from fusesnap.errors import NotFoundError, StoreError
from fusesnap.fuse import ChunkCache
from tests.fs.helpers import MemoryChunks, file

KiB = 1024
MiB = 1 << 20
DATA = bytes(range(256)) * 4096  # 1 MiB
BIG = DATA * 3 + b"tail"


class GatedChunks(MemoryChunks):
    """A source whose loads wait for ``gate`` (set from the test), counting calls."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.calls = 0

    def get(self, digest: bytes) -> bytes:
        self.calls += 1
        assert self.gate.wait(10)
        return super().get(digest)


class FailingChunks(MemoryChunks):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    def get(self, digest: bytes) -> bytes:
        if self.fail:
            raise StoreError(f"chunk {digest.hex()[:12]}: corrupt in store (digest mismatch)")
        return super().get(digest)


async def test_hits_misses_and_the_byte_bound() -> None:
    source = MemoryChunks()
    digests = [source.put(bytes([i]) * 100) for i in range(5)]
    cache = ChunkCache(source, max_bytes=300)
    for d in digests[:3]:
        await cache.get(d)
    assert (cache.stats.misses, cache.stats.hits, cache.stats.cached_bytes) == (3, 0, 300)
    await cache.get(digests[0])  # a hit makes digests[0] the most recent
    await cache.get(digests[3])  # evicts digests[1], the least recently used
    assert cache.stats.evictions == 1
    assert cache.stats.cached_chunks == 3
    source.asked.clear()
    await cache.get(digests[0])
    await cache.get(digests[2])
    assert source.asked == []
    await cache.get(digests[1])
    assert source.asked == [digests[1]]
    assert cache.stats.cached_bytes <= 300


async def test_a_chunk_larger_than_the_cache_is_served_not_kept() -> None:
    source = MemoryChunks()
    d = source.put(b"x" * 1000)
    cache = ChunkCache(source, max_bytes=999)
    assert await cache.get(d) == b"x" * 1000
    assert await cache.get(d) == b"x" * 1000
    assert cache.stats.misses == 2
    assert cache.stats.cached_bytes == 0


async def test_concurrent_requests_for_one_chunk_share_one_load() -> None:
    source = GatedChunks()
    d = source.put(DATA)
    cache = ChunkCache(source)
    results: list[bytes] = []

    async def reader() -> None:
        results.append(await cache.get(d))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        source.gate.set()
    assert results == [DATA] * 10
    assert source.calls == 1
    assert (cache.stats.misses, cache.stats.joined, cache.stats.loaded) == (1, 9, 1)


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    source = FailingChunks()
    d = source.put(DATA)
    cache = ChunkCache(source)
    errors: list[Exception] = []

    async def reader() -> None:
        try:
            await cache.get(d)
        except StoreError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(reader)
    assert len(errors) == 3
    assert cache.stats.load_errors >= 1
    source.fail = False
    assert await cache.get(d) == DATA  # tried again, not a cached failure


async def test_kernel_sized_reads_load_each_chunk_once() -> None:
    source = MemoryChunks()
    entry = file("big", BIG, source=source)  # 1 MiB chunks
    cache = ChunkCache(source)
    out = bytearray()
    for off in range(0, len(BIG), 128 * KiB):
        out += await cache.read(entry, off, 128 * KiB)
    assert bytes(out) == BIG
    assert cache.stats.misses == 2  # three identical 1 MiB chunks and the tail: 2 distinct
    assert len(source.asked) == 2
    assert await cache.read(entry, len(BIG), 10) == b""


async def test_a_read_across_chunks_is_exact() -> None:
    source = MemoryChunks()
    data = bytes(i % 251 for i in range(3000))
    entry = file("f", data, chunk=1000, source=source)
    cache = ChunkCache(source)
    for off, size in [(0, 3000), (999, 2), (500, 2000), (2990, 100), (1000, 1000)]:
        assert await cache.read(entry, off, size) == data[off : off + size]


async def test_a_missing_chunk_in_a_multi_chunk_read_raises_it_plainly() -> None:
    source = MemoryChunks()
    entry = file("f", b"a" * 1000 + b"b" * 1000, chunk=1000, source=source)
    del source.data[entry.chunks[1].digest]
    cache = ChunkCache(source)
    with pytest.raises(NotFoundError):
        await cache.read(entry, 500, 1000)


def test_negative_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        ChunkCache(MemoryChunks(), max_bytes=-1)


async def settle(cache: ChunkCache) -> None:
    """Wait until every load started (by readers or prefetchers) has finished."""
    await trio.testing.wait_all_tasks_blocked()
    s = cache.stats
    # Loads finish in worker threads, which no trio.Event of the test can see.
    while s.loaded + s.load_errors < s.misses + s.prefetched:  # noqa: ASYNC110
        await trio.sleep(0.01)
    await trio.testing.wait_all_tasks_blocked()


async def test_sequential_readers_get_the_next_chunks_prefetched() -> None:
    source = MemoryChunks()
    data = b"".join(bytes([i]) * MiB for i in range(12))
    entry = file("f", data, source=source)
    cache = ChunkCache(source, prefetch_bytes=3 * MiB)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run_prefetch)
        assert await cache.read(entry, 0, 128 * KiB) == data[: 128 * KiB]
        await settle(cache)
        assert cache.stats.prefetched == 0  # one read is no pattern yet
        assert await cache.read(entry, 128 * KiB, 128 * KiB) == data[128 * KiB : 256 * KiB]
        await settle(cache)
        # The 3 MiB after the last byte read: chunks 0 (already here), 1, 2 and 3.
        assert cache.stats.prefetched == 3
        assert set(source.asked) == {c.digest for c in entry.chunks[:4]}
        asked = len(source.asked)
        for off in range(256 * KiB, 4 * MiB, 128 * KiB):
            assert await cache.read(entry, off, 128 * KiB) == data[off : off + 128 * KiB]
        assert cache.stats.misses == 1  # only the very first chunk was waited for
        await settle(cache)
        assert len(source.asked) > asked  # and it keeps going ahead

        random_start = cache.stats.prefetched
        for off in (11 * MiB, 6 * MiB + 5, 9 * MiB):  # jumps: no prefetch
            assert await cache.read(entry, off, 4 * KiB) == data[off : off + 4 * KiB]
        await settle(cache)
        assert cache.stats.prefetched == random_start
        nursery.cancel_scope.cancel()


async def test_without_the_prefetcher_nothing_is_prefetched() -> None:
    source = MemoryChunks()
    entry = file("f", b"".join(bytes([i]) * MiB for i in range(4)), source=source)
    cache = ChunkCache(source)
    for off in range(0, 2 * MiB, 128 * KiB):
        await cache.read(entry, off, 128 * KiB)
    assert cache.stats.prefetched == 0
    assert len(source.asked) == 2
