"""The mount's chunk cache: LRU of pieces and its bound, one load per missing range however
many readers, loads of only the pieces a read needs, errors."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from fusesnap.errors import LayerError, NotFoundError, StoreError
from fusesnap.fuse import PIECE_SIZE, ChunkCache
from fusesnap.index import Entry
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


async def whole(cache: ChunkCache, entry: Entry) -> bytes:
    return await cache.read(entry, 0, entry.size)


async def test_hits_misses_and_the_byte_bound() -> None:
    source = MemoryChunks()
    files = [file(f"f{i}", bytes([i]) * 100, source=source) for i in range(5)]
    digests = [f.chunks[0].digest for f in files]
    cache = ChunkCache(source, max_bytes=300)
    for f in files[:3]:
        await whole(cache, f)
    assert (cache.stats.misses, cache.stats.hits, cache.stats.cached_bytes) == (3, 0, 300)
    await whole(cache, files[0])  # a hit makes files[0] the most recent
    await whole(cache, files[3])  # evicts files[1], the least recently used
    assert cache.stats.evictions == 1
    assert cache.stats.cached_pieces == 3
    source.asked.clear()
    assert await whole(cache, files[0]) == bytes([0]) * 100
    await whole(cache, files[2])
    assert source.asked == []
    await whole(cache, files[1])
    assert source.asked == [digests[1]]
    assert cache.stats.cached_bytes <= 300


async def test_a_piece_larger_than_the_cache_is_served_not_kept() -> None:
    source = MemoryChunks()
    f = file("f", b"x" * 1000, source=source)
    cache = ChunkCache(source, max_bytes=999)
    assert await whole(cache, f) == b"x" * 1000
    assert await whole(cache, f) == b"x" * 1000
    assert cache.stats.misses == 2
    assert cache.stats.cached_bytes == 0


async def test_concurrent_requests_for_one_chunk_share_one_load() -> None:
    source = GatedChunks()
    f = file("f", DATA, source=source)
    cache = ChunkCache(source)
    results: list[bytes] = []

    async def reader() -> None:
        results.append(await whole(cache, f))

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
    f = file("f", DATA, source=source)
    cache = ChunkCache(source)
    errors: list[Exception] = []

    async def reader() -> None:
        try:
            await whole(cache, f)
        except StoreError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(reader)
    assert len(errors) == 3
    assert cache.stats.load_errors >= 1
    source.fail = False
    assert await whole(cache, f) == DATA  # tried again, not a cached failure


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


async def test_a_random_read_loads_only_the_pieces_it_needs() -> None:
    source = MemoryChunks(frame=PIECE_SIZE)
    data = bytes(i * 7 % 253 for i in range(8 * MiB + 5000))
    entry = file("f", data, source=source)
    cache = ChunkCache(source)
    piece = PIECE_SIZE
    # Reads far apart (more than the sequential slack): random ones.
    for off, size in [(5 * piece + 100, 4 * KiB), (4 * MiB + piece - 2, 4), (8 * MiB + 4000, 500)]:
        assert await cache.read(entry, off, size) == data[off : off + size]
    digests = [c.digest for c in entry.chunks]
    assert source.ranges == [
        (digests[0], 5 * piece, 6 * piece),
        (digests[4], 0, 2 * piece),  # a read across two pieces: one load of both
        (digests[8], 0, 5000),  # the short last chunk
    ]
    assert cache.stats.cached_bytes == 3 * piece + 5000
    source.ranges.clear()
    assert await cache.read(entry, 5 * piece, piece) == data[5 * piece : 6 * piece]
    assert await cache.read(entry, 4 * MiB + 10, 300) == data[4 * MiB + 10 : 4 * MiB + 310]
    assert source.ranges == []
    assert cache.stats.hits == 2
    # A read over a piece held and one not loads only the missing one.
    assert await cache.read(entry, 6 * piece - 10, 20) == data[6 * piece - 10 : 6 * piece + 10]
    assert source.ranges == [(digests[0], 6 * piece, 7 * piece)]


async def test_a_reader_from_the_start_or_onward_loads_the_rest_of_the_chunk() -> None:
    source = MemoryChunks(frame=PIECE_SIZE)
    data = bytes(i * 5 % 251 for i in range(3 * MiB))
    entry = file("f", data, source=source)
    cache = ChunkCache(source)
    digests = [c.digest for c in entry.chunks]
    assert await cache.read(entry, 0, 4 * KiB) == data[: 4 * KiB]
    assert source.ranges == [(digests[0], 0, MiB)]
    off = MiB + 3 * PIECE_SIZE  # far from 4 KiB... but within the sequential slack
    assert await cache.read(entry, off, 128 * KiB) == data[off : off + 128 * KiB]
    assert source.ranges[1] == (digests[1], 3 * PIECE_SIZE, MiB)
    assert cache.stats.misses == 2


async def test_a_loader_that_gives_too_little_is_an_error_not_short_bytes() -> None:
    data = b"y" * (3 * PIECE_SIZE)
    source = MemoryChunks()
    entry = file("f", data, source=source)

    async def short(digest: bytes, start: int, end: int) -> tuple[int, bytes]:
        return start, source.data[digest][start : end - 1]

    cache = ChunkCache(source, load=short)
    with pytest.raises(LayerError, match="got bytes"):
        await cache.read(entry, PIECE_SIZE, 10)
    assert cache.stats.load_errors == 1
    assert cache.stats.cached_bytes == 0


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
