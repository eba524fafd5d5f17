"""Reads mapped onto chunks, against an in-memory ChunkSource."""

from __future__ import annotations

import dataclasses

import pytest

from fusesnap.errors import LayerError, NotFoundError
from fusesnap.fs import ChunkSource, chunk_span, iter_file, read_file
from fusesnap.index import ChunkRef, Entry
from tests.fs.helpers import MemoryChunks, file

DATA = bytes(range(256)) * 4 + b"tail!"  # 1029 bytes: 10 chunks of 100, one of 29


@pytest.fixture
def chunks() -> MemoryChunks:
    return MemoryChunks()


@pytest.fixture
def entry(chunks: MemoryChunks) -> Entry:
    return file("big", DATA, chunk=100, source=chunks)


def test_memory_chunks_is_a_chunk_source(chunks: MemoryChunks) -> None:
    source: ChunkSource = chunks
    with pytest.raises(NotFoundError):
        source.get(b"\0" * 32)


@pytest.mark.parametrize(
    ("offset", "size"),
    [(0, 1029), (0, 100), (0, 101), (99, 2), (100, 100), (150, 300), (1000, 29), (1028, 1),
     (5, 0), (0, 1 << 20)],
)  # fmt: skip
def test_read_across_chunk_boundaries(
    entry: Entry, chunks: MemoryChunks, offset: int, size: int
) -> None:
    assert read_file(entry, offset, size, chunks) == DATA[offset : offset + size]


def test_every_small_read_matches(chunks: MemoryChunks) -> None:
    data = bytes(range(23))
    e = file("f", data, chunk=4, source=chunks)
    for offset in range(26):
        for size in range(26):
            assert read_file(e, offset, size, chunks) == data[offset : offset + size]


def test_reads_fetch_only_the_chunks_they_need(entry: Entry, chunks: MemoryChunks) -> None:
    read_file(entry, 250, 100, chunks)
    assert chunks.asked == [c.digest for c in entry.chunks[2:4]]
    assert chunk_span(entry, 250, 100) == list(entry.chunks[2:4])
    assert chunk_span(entry, 200, 100) == [entry.chunks[2]]
    assert chunk_span(entry, 0, 1029) == list(entry.chunks)


def test_reads_at_or_past_the_end_are_short_or_empty(entry: Entry, chunks: MemoryChunks) -> None:
    assert read_file(entry, 1020, 100, chunks) == DATA[1020:]
    assert read_file(entry, 1029, 10, chunks) == b""
    assert read_file(entry, 5000, 10, chunks) == b""
    assert chunk_span(entry, 1029, 10) == []
    assert chunk_span(entry, 5000, 10) == []


def test_zero_length_file(chunks: MemoryChunks) -> None:
    e = file("empty", b"", source=chunks)
    assert e.chunks == ()
    assert read_file(e, 0, 4096, chunks) == b""
    assert chunk_span(e, 0, 4096) == []
    assert list(iter_file(e, chunks)) == []
    assert chunks.asked == []


def test_iter_file_yields_each_chunk(entry: Entry, chunks: MemoryChunks) -> None:
    pieces = list(iter_file(entry, chunks))
    assert b"".join(pieces) == DATA
    assert [len(p) for p in pieces] == [100] * 10 + [29]


def test_negative_offset_or_size_is_refused(entry: Entry, chunks: MemoryChunks) -> None:
    with pytest.raises(ValueError, match="negative"):
        read_file(entry, -1, 10, chunks)
    with pytest.raises(ValueError, match="negative"):
        chunk_span(entry, 0, -1)


def _with_chunk(entry: Entry, k: int, chunk: ChunkRef) -> Entry:
    refs = list(entry.chunks)
    refs[k] = chunk
    return dataclasses.replace(entry, chunks=tuple(refs))


def test_a_chunk_of_the_wrong_length_is_refused(entry: Entry, chunks: MemoryChunks) -> None:
    # The source gives 100 bytes for chunk 3, but the index claims 99 (and the file 1028).
    bad = dataclasses.replace(
        _with_chunk(entry, 3, dataclasses.replace(entry.chunks[3], length=99)), size=1028
    )
    with pytest.raises(LayerError, match=r"'big': chunk sha256:\w{12} has 100 bytes"):
        read_file(bad, 300, 10, chunks)
    with pytest.raises(LayerError, match="has 100 bytes, the index says 99"):
        list(iter_file(bad, chunks))
    assert read_file(bad, 0, 100, chunks) == DATA[:100]  # other chunks still serve


def test_a_source_returning_short_bytes_is_refused(entry: Entry) -> None:
    class Short:
        def get(self, digest: bytes) -> bytes:
            return b"x" * 50

    with pytest.raises(LayerError, match="has 50 bytes, the index says 100"):
        read_file(entry, 0, 10, Short())


def test_chunks_that_do_not_add_up_to_the_size_are_refused(
    entry: Entry, chunks: MemoryChunks
) -> None:
    bad = dataclasses.replace(entry, size=2000)
    with pytest.raises(LayerError, match="chunks hold 1029 bytes, the entry says 2000"):
        read_file(bad, 0, 10, chunks)


def test_source_errors_pass_through(entry: Entry) -> None:
    with pytest.raises(NotFoundError):
        read_file(entry, 0, 10, MemoryChunks())
