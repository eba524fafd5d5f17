"""A SOCI layer's chunks on the fetcher's read path: the readers have them once their span
verifies, before the store write; the write queue and then the store answer for them by
locator (under the sha256 of their bytes), the verified span under its digest."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterable, Iterator

import pytest

from fusesnap.digest import Digest
from fusesnap.index.soci import index_from_ztoc
from fusesnap.lazy import open_chunk_fetcher
from fusesnap.store import ChunkStore, Store, open_store
from tests.lazy.sociztoc import vector

DIFF_ID = Digest("sha256:" + "0" * 64)


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    with open_store(tmp_path / "root") as s:
        yield s


class _Ranges:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.calls: list[tuple[int, int]] = []

    async def __call__(self, digest: Digest, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.blob[offset : offset + length]


class _HeldStore:
    """The chunk store, whose writes wait until ``gate`` is set."""

    def __init__(self, chunks: ChunkStore) -> None:
        self.chunks = chunks
        self.gate = threading.Event()
        self.get_many, self.read, self.missing = chunks.get_many, chunks.read, chunks.missing
        self.delete_many, self.touch, self.evict = chunks.delete_many, chunks.touch, chunks.evict

    def put_many(self, items: Iterable[tuple[bytes, bytes]], *, verified: bool = False) -> object:
        assert self.gate.wait(10)
        return self.chunks.put_many(items, verified=verified)


async def test_a_span_serves_before_it_is_stored_then_by_locator_from_queue_and_store(
    store: Store,
) -> None:
    v = vector("large-compressible-l1")
    index = index_from_ztoc(v.ztoc, v.layer, DIFF_ID, chunk_size=256 << 10)
    part0 = next(e for e in index.entries if e.path == "big/part-0.log")
    with tarfile.open(fileobj=io.BytesIO(v.blob)) as tf:
        member = tf.extractfile("big/part-0.log")
        assert member is not None
        truth = member.read()
    starts = [sum(c.length for c in part0.chunks[:i]) for i in range(len(part0.chunks))]
    assert len(part0.chunks) >= 3
    ranges, held = _Ranges(v.blob), _HeldStore(store.chunks)
    assert index.checkpoints is not None
    span0 = index.checkpoints.span_digests[0]
    async with open_chunk_fetcher(ranges, held) as fetcher:
        try:
            first = await fetcher.get(index, part0.chunks[0])  # the store write is held
            assert first == truth[: part0.chunks[0].length]
            name = hashlib.sha256(first).digest()
            assert not store.chunks.exists(name)
            # Its neighbours came with the span: queued, found by locator, no request.
            lo, data = await fetcher.read(index, part0.chunks[1], 0, 1)
            assert data[lo:] == truth[starts[1] : starts[1] + part0.chunks[1].length][lo:]
            assert len(ranges.calls) == 1
        finally:
            held.gate.set()
        await fetcher.flush()
        assert store.chunks.get(name) == first
        assert store.chunks.exists(span0)
        assert not store.chunks.exists(part0.chunks[0].digest)  # locators are not stored
        # Stored now: the store answers for a locator, one frame's worth.
        c = part0.chunks[2]
        lo, data = await fetcher.read(index, c, 0, 1)
        assert data == truth[starts[2] + lo : starts[2] + lo + len(data)]
        assert len(ranges.calls) == 1
        # Neither read inflated the span again (from the queue or the store).
        assert fetcher.stats.spans_from_store == 0
        assert fetcher.stats.chunks_from_store == 2
