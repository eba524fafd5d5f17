"""The fetcher and the chunk store: readers woken before the store write, writes in
batches, a failing store that never takes reads down, and the store asked once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator

import pytest
import trio

from fusesnap.errors import StoreError
from fusesnap.lazy import FetchLimits, FetchStats, open_chunk_fetcher
from fusesnap.lazy.writer import ChunkWriter
from fusesnap.store import ChunkStore, Store, open_store
from tests.lazy.fetcherhelpers import Blobs, Layer, raw_layer, sample_files


@pytest.fixture(scope="module")
def raw() -> Layer:
    return raw_layer(sample_files(1)[:40])


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    with open_store(tmp_path / "root") as s:
        yield s


class Watched:
    """A `ChunkStorage` over the real store that counts what it is asked, and whose
    writes can be held back (``gate``) or made to fail (``fail``)."""

    def __init__(self, chunks: ChunkStore) -> None:
        self.chunks = chunks
        self.asked: list[str] = []
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def get_many(self, digests: Iterable[bytes]) -> dict[bytes, bytes]:
        self.asked.append("get_many")
        return self.chunks.get_many(digests)

    def read(self, digest: bytes, start: int, end: int) -> tuple[int, bytes]:
        self.asked.append("read")
        return self.chunks.read(digest, start, end)

    def missing(self, digests: Iterable[bytes]) -> set[bytes]:
        self.asked.append("missing")
        return self.chunks.missing(digests)

    def delete_many(self, digests: Iterable[bytes]) -> object:
        self.asked.append("delete_many")
        return self.chunks.delete_many(digests)

    def put_many(self, items: Iterable[tuple[bytes, bytes]], *, verified: bool = False) -> object:
        assert self.gate.wait(10)
        if self.fail:
            raise StoreError("store at /x: No space left on device")
        items = list(items)
        self.batches.append(len(items))
        return self.chunks.put_many(items, verified=verified)

    def touch(self, digests: Iterable[bytes]) -> None:
        self.chunks.touch(digests)

    def evict(self, need: int) -> object:
        return self.chunks.evict(need)


async def test_readers_get_their_chunk_before_it_is_stored(raw: Layer, store: Store) -> None:
    watched = Watched(store.chunks)
    watched.gate.clear()  # the store write waits
    ref, other = raw.refs[3], raw.refs[20]
    blobs = Blobs(raw)
    async with open_chunk_fetcher(blobs, watched, limits=FetchLimits(max_gap=0)) as f:
        assert await f.get(raw.index, ref) == raw.truth(ref)
        assert store.chunks.missing([ref.digest]) == {ref.digest}  # not stored yet
        # Asked again meanwhile: served from the queue, not fetched again.
        assert await f.read(raw.index, ref, 0, 10) == (0, raw.truth(ref))
        assert await f.get(raw.index, ref) == raw.truth(ref)
        assert await f.get(raw.index, other) == raw.truth(other)
        assert len(blobs.calls) == 2
        watched.gate.set()
        await f.flush()
        assert store.chunks.missing([ref.digest, other.digest]) == set()
    # Both waited for the first write, so they went in one batch... or two; never per read.
    assert sum(watched.batches) == 2
    assert f.stats.chunks_stored == 2
    assert f.stats.store_failures == 0


async def test_chunks_that_arrive_while_a_write_runs_share_the_next_batch(
    raw: Layer, store: Store
) -> None:
    watched = Watched(store.chunks)
    watched.gate.clear()
    refs = raw.refs[:30:3]
    async with open_chunk_fetcher(Blobs(raw), watched, limits=FetchLimits(max_gap=0)) as f:
        await f.get(raw.index, refs[0])
        await trio.testing.wait_all_tasks_blocked()  # its write has started, and waits
        assert await f.get_many(raw.index, refs[1:]) == {r.digest: raw.truth(r) for r in refs[1:]}
        watched.gate.set()
        await f.flush()
    assert watched.batches == [1, len(refs) - 1]
    assert f.stats.store_batches == 2


async def test_a_failing_store_is_logged_once_and_reads_go_on(
    raw: Layer, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    watched = Watched(store.chunks)
    watched.fail = True
    refs = raw.refs[:8:2]
    blobs = Blobs(raw)
    with caplog.at_level(logging.DEBUG, logger="fusesnap.lazy.writer"):
        async with open_chunk_fetcher(blobs, watched, limits=FetchLimits(max_gap=0)) as f:
            for ref in refs:
                assert await f.get(raw.index, ref) == raw.truth(ref)
                await f.flush()
            # Not stored: the next read fetches it again, and is right.
            assert await f.get(raw.index, refs[0]) == raw.truth(refs[0])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "No space left on device" in warnings[0].getMessage()
    assert f.stats.store_failures == len(refs) + 1
    assert len(blobs.calls) == len(refs) + 1
    assert store.chunks.missing(r.digest for r in refs) == {r.digest for r in refs}


async def test_the_store_is_asked_once_before_a_fetch(raw: Layer, store: Store) -> None:
    watched = Watched(store.chunks)
    ref = raw.refs[7]
    async with open_chunk_fetcher(Blobs(raw), watched, limits=FetchLimits(max_gap=0)) as f:
        assert await f.read(raw.index, ref, 0, 1) == (0, raw.truth(ref))
        assert watched.asked == ["read"]
        watched.asked.clear()
        assert await f.get(raw.index, raw.refs[8]) == raw.truth(raw.refs[8])
        assert watched.asked == ["get_many"]
        await f.flush()
        watched.asked.clear()
        # Stored now: a read decodes only the frames it needs, and asks once.
        lo, data = await f.read(raw.index, ref, 0, 1)
        assert raw.truth(ref)[lo : lo + len(data)] == data
        assert watched.asked == ["read"]
    assert f.stats.chunks_from_store == 1


async def test_a_corrupt_stored_chunk_is_fetched_again_and_replaced(
    raw: Layer, store: Store
) -> None:
    ref = raw.refs[5]
    store.chunks.put_many([(ref.digest, raw.truth(ref))])
    with store.env.txn(write=True) as txn:
        db = store.env.db(b"chunks")
        value = bytearray(txn.get(ref.digest, b"", db=db))
        value[-20] ^= 0x10
        txn.put(ref.digest, bytes(value), db=db)
    blobs = Blobs(raw)
    async with open_chunk_fetcher(blobs, store.chunks, limits=FetchLimits(max_gap=0)) as f:
        assert await f.read(raw.index, ref, 0, ref.length) == (0, raw.truth(ref))
    assert len(blobs.calls) == 1
    assert store.chunks.get(ref.digest) == raw.truth(ref)


async def test_flush_does_not_wait_for_a_writer_that_stopped(store: Store) -> None:
    writer = ChunkWriter(store.chunks, FetchStats())
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        nursery.cancel_scope.cancel()
    writer.add({b"\1" * 32: b"queued after the writer stopped"})
    with trio.fail_after(5):
        await writer.flush()
    assert writer.get(b"\1" * 32) == b"queued after the writer stopped"  # still served
