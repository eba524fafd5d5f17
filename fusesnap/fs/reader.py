"""File reads mapped onto chunks: which chunks a read needs, and the bytes they give.

A regular file's `Entry.chunks` cut its contents into consecutive pieces
(`ChunkRef`: length and sha256 of the uncompressed bytes). A read of ``size``
bytes at ``offset`` needs only the chunks that overlap it (`chunk_span`, what
the lazy fetcher fetches); `read_file` asks a `ChunkSource` for those and cuts
the answer out of them.

Never wrong bytes: a chunk whose length is not the one its `ChunkRef` gives,
or chunk lengths that do not add up to the file size, raise `LayerError`
(the FUSE layer turns that into EIO). Checking the digest is the source's job:
`ChunkSource.get` returns verified bytes.

Positions: chunk ``k`` starts at the sum of the lengths before it. For a file
of more than one chunk those sums are computed once and kept in a small cache
(keyed by the entry's identity), so a random 4 KiB read in a 10 GiB file is a
bisection, not a walk over 10,000 chunks.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from typing import Protocol

from fusesnap.errors import LayerError
from fusesnap.index import ChunkRef, Entry

__all__ = ["ChunkSource", "chunk_slices", "chunk_span", "iter_file", "read_file"]

_CACHE_MAX = 4096


class ChunkSource(Protocol):
    """Where chunk bytes come from (memory LRU, the LMDB chunk store, a fetcher)."""

    def get(self, digest: bytes) -> bytes:
        """The uncompressed chunk whose sha256 is ``digest``, already verified.

        Raise `NotFoundError` if the source does not have it.
        """
        ...


def _window(entry: Entry, offset: int, size: int) -> tuple[int, int]:
    if offset < 0 or size < 0:
        raise ValueError(f"read of {size} bytes at offset {offset}: negative")
    return offset, min(offset + size, entry.size)


def _span(entry: Entry, offset: int, end: int) -> tuple[tuple[int, ...], int, int]:
    """Start offsets and the index range ``[first, last)`` of the chunks overlapping
    ``[offset, end)`` (an empty range past EOF)."""
    starts = entry.chunk_starts
    if offset >= end:
        return starts, 0, 0
    first = bisect_right(starts, offset) - 1
    last = bisect_right(starts, end - 1)
    return starts, first, last


def chunk_span(entry: Entry, offset: int, size: int) -> list[ChunkRef]:
    """The chunks a read of ``size`` bytes at ``offset`` needs, in file order (none for a
    read at or past the end of the file)."""
    offset, end = _window(entry, offset, size)
    _, first, last = _span(entry, offset, end)
    return list(entry.chunks[first:last])


def chunk_slices(entry: Entry, offset: int, size: int) -> list[tuple[ChunkRef, int, int]]:
    """What a read of ``size`` bytes at ``offset`` needs of each chunk, in file order:
    ``(chunk, lo, hi)`` with ``[lo, hi)`` the bytes of that chunk it covers."""
    offset, end = _window(entry, offset, size)
    starts, first, last = _span(entry, offset, end)
    out = []
    for k in range(first, last):
        chunk = entry.chunks[k]
        out.append((chunk, max(offset - starts[k], 0), min(end - starts[k], chunk.length)))
    return out


def _fetch(entry: Entry, chunk: ChunkRef, source: ChunkSource) -> bytes:
    data = source.get(chunk.digest)
    if len(data) != chunk.length:
        raise LayerError(
            f"file {entry.path!r}: chunk sha256:{chunk.digest.hex()[:12]} has {len(data)} "
            f"bytes, the index says {chunk.length}"
        )
    return data


def read_file(entry: Entry, offset: int, size: int, source: ChunkSource) -> bytes:
    """Up to ``size`` bytes of ``entry``'s contents from ``offset``.

    Short at the end of the file, empty at or past it (as ``pread`` is).
    Raise `LayerError` if a chunk or the chunk table does not fit the entry, and
    whatever ``source`` raises for a chunk it cannot give.
    """
    offset, end = _window(entry, offset, size)
    starts, first, last = _span(entry, offset, end)
    if first == last:
        return b""
    pieces: list[bytes | memoryview] = []
    for k in range(first, last):
        chunk = entry.chunks[k]
        data = _fetch(entry, chunk, source)
        lo = max(offset - starts[k], 0)
        hi = min(end - starts[k], chunk.length)
        pieces.append(data if lo == 0 and hi == chunk.length else memoryview(data)[lo:hi])
    if len(pieces) == 1 and isinstance(pieces[0], bytes):
        return pieces[0]
    return b"".join(pieces)


def iter_file(entry: Entry, source: ChunkSource) -> Iterator[bytes]:
    """The whole contents of ``entry``, one chunk at a time (nothing for an empty file)."""
    entry.chunk_starts  # noqa: B018 -- checks the chunk lengths before the first byte
    for chunk in entry.chunks:
        yield _fetch(entry, chunk, source)
