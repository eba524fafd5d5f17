"""A file's chunk list in an encoded layer index: its columns, written and read.

Part of the format `fusesnap.index.codec` describes. A tar-stream file's chunks
are ``[gap, digests]`` (plus ``lengths`` unless they are the fixed split into
``chunk_size`` pieces): its data starts ``gap`` bytes after the previous file's
ended. A frame file's (eStargz, zstd:chunked) are ``[nil, digests, lengths,
deltas, clengths, inners]``: each frame range starts ``delta`` bytes after the
previous one ended. Reading checks what writing promised: contiguous chunks
that cover the file, inside the layer.
"""

from __future__ import annotations

from typing import Any

from fusesnap.index.fastbuild import new_chunk_ref
from fusesnap.index.fields import Corrupt, Fields
from fusesnap.index.model import SHA256_SIZE, ChunkRef, Entry

__all__ = [
    "RowState",
    "check_chunks",
    "decode_chunks",
    "decode_frame_chunks",
    "frame_columns",
    "is_fixed_split",
]


class RowState:
    """What a row is decoded against: the previous path and where the last data ended."""

    def __init__(self, chunk_size: int, csize: int, usize: int, version: int) -> None:
        self.chunk_size = chunk_size
        self.csize = csize
        self.usize = usize
        self.version = version
        self.prev_path = b""
        self.prev_end = 0
        self.prev_cend = 0


def check_chunks(e: Entry, prev_end: int) -> None:
    off = e.chunks[0].offset
    if off < prev_end:
        raise ValueError(f"entry {e.path!r}: chunks overlap the previous file's (not in tar order)")
    for c in e.chunks:
        if c.offset != off or c.length <= 0 or len(c.digest) != SHA256_SIZE or c.framed:
            raise ValueError(f"entry {e.path!r}: chunks are not contiguous sha256 ranges")
        off += c.length
    if off - e.chunks[0].offset != e.size:
        raise ValueError(f"entry {e.path!r}: chunks do not cover the file size")


def frame_columns(e: Entry, chunk_size: int, prev_cend: int) -> tuple[list[Any], int]:
    if len(e.chunks) == 1:  # most files: the same checks, without the loop
        c = e.chunks[0]
        if c.coffset < 0 or c.clength <= 0 or c.inner < 0:
            raise ValueError(f"entry {e.path!r}: frame chunks without a frame range")
        if c.offset != 0 or c.length != e.size or len(c.digest) != SHA256_SIZE or c.length <= 0:
            raise ValueError(f"entry {e.path!r}: chunks are not contiguous sha256 ranges")
        lengths = None if c.length <= chunk_size else [c.length]
        delta = [c.coffset - prev_cend]
        columns = [None, c.digest, lengths, delta, [c.clength], [c.inner] if c.inner else None]
        return columns, c.coffset + c.clength
    off = 0
    deltas, clengths, inners = [], [], []
    for c in e.chunks:
        if not c.framed or c.clength <= 0 or c.inner < 0:
            raise ValueError(f"entry {e.path!r}: frame chunks without a frame range")
        if c.offset != off or c.length <= 0 or len(c.digest) != SHA256_SIZE:
            raise ValueError(f"entry {e.path!r}: chunks are not contiguous sha256 ranges")
        off += c.length
        deltas.append(c.coffset - prev_cend)
        clengths.append(c.clength)
        inners.append(c.inner)
        prev_cend = c.coffset + c.clength
    if off != e.size:
        raise ValueError(f"entry {e.path!r}: chunks do not cover the file size")
    lengths = None if is_fixed_split(e, chunk_size) else [c.length for c in e.chunks]
    digests = b"".join(c.digest for c in e.chunks)
    return [None, digests, lengths, deltas, clengths, inners if any(inners) else None], prev_cend


def is_fixed_split(e: Entry, chunk_size: int) -> bool:
    """True if ``e``'s chunks are the fixed split of the file into ``chunk_size`` pieces
    (`_split`). The caller has checked that they are contiguous and cover the file, so
    that is: every chunk but the last is ``chunk_size`` long, and the last no longer."""
    chunks = e.chunks
    if chunks[-1].length > chunk_size:
        return False
    return all(c.length == chunk_size for c in chunks[:-1])


def _split(offset: int, size: int, chunk_size: int) -> list[tuple[int, int]]:
    if 0 < size <= chunk_size:  # most files: one chunk
        return [(offset, size)]
    return [(offset + i, min(chunk_size, size - i)) for i in range(0, size, chunk_size)]


def _lengths(raw: Any, start: int, size: int, chunk_size: int, i: int) -> list[tuple[int, int]]:
    """The (offset, length) of each chunk: the fixed split (``raw`` nil) or explicit lengths."""
    if raw is None:
        return _split(start, size, chunk_size)
    if not isinstance(raw, list):
        raise Corrupt(f"entry {i}: bad chunk lengths")
    spans, off = [], start
    for n in raw:
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise Corrupt(f"entry {i}: bad chunk length")
        spans.append((off, n))
        off += n
    if off - start != size:
        raise Corrupt(f"entry {i}: chunk lengths do not add up to the file size")
    return spans


def _digests(digests: bytes, n: int, i: int) -> list[bytes]:
    if n == 0 or len(digests) != n * SHA256_SIZE:
        raise Corrupt(f"entry {i}: chunk count does not match the file size")
    return [digests[j * SHA256_SIZE : (j + 1) * SHA256_SIZE] for j in range(n)]


def decode_chunks(raw: Any, size: int, st: RowState, i: int) -> tuple[ChunkRef, ...]:
    # One call per file of a mount's start: `Fields`' checks, inline.
    if type(raw) is not list or len(raw) not in (2, 3):
        raise Corrupt(f"entry {i}: bad chunk list")
    gap, digests = raw[0], raw[1]
    if type(gap) is not int or gap < 0:  # not bool either
        raise Corrupt(f"entry {i} chunks: want an unsigned integer")
    if type(digests) is not bytes or len(digests) % SHA256_SIZE:
        raise Corrupt(f"entry {i}: bad chunk digests")
    start = st.prev_end + gap
    if len(raw) == 3:
        if type(raw[2]) is not list:
            raise Corrupt(f"entry {i} chunks: want an array")
        spans = _lengths(raw[2], start, size, st.chunk_size, i)
    else:
        spans = _split(start, size, st.chunk_size)
    if len(spans) == 1 and len(digests) == SHA256_SIZE:  # most files
        refs: tuple[ChunkRef, ...] = (new_chunk_ref(start, size, digests),)
    else:
        ds = _digests(digests, len(spans), i)
        refs = tuple(new_chunk_ref(off, n, d) for (off, n), d in zip(spans, ds, strict=True))
    st.prev_end = start + size
    if st.prev_end > st.usize:
        raise Corrupt(f"entry {i}: data beyond the end of the layer")
    return refs


def decode_frame_chunks(raw: Any, size: int, st: RowState, i: int) -> tuple[ChunkRef, ...]:
    if type(raw) is list and len(raw) == 6 and raw[2] is None and 0 < size <= st.chunk_size:
        one = _one_frame_chunk(raw, size, st, i)  # most files: `Fields`' checks, inline
        if one is not None:
            return one
    f = Fields(raw, 6, f"entry {i} chunks")
    f.any()  # the nil marker
    digests, raw_lengths = f.blob(), f.any()
    deltas, clengths, raw_inners = f.array(), f.array(), f.any()
    spans = _lengths(raw_lengths, 0, size, st.chunk_size, i)
    n = len(spans)
    inners = [0] * n if raw_inners is None else raw_inners
    if not isinstance(inners, list) or not len(deltas) == len(clengths) == len(inners) == n:
        raise Corrupt(f"entry {i}: frame columns differ in length")
    refs = []
    for (off, length), d, delta, clen, inner in zip(
        spans, _digests(digests, n, i), deltas, clengths, inners, strict=True
    ):
        if not (type(delta) is int and type(clen) is int and type(inner) is int):  # not bool
            raise Corrupt(f"entry {i}: non-integer frame field")
        coffset = st.prev_cend + delta
        if coffset < 0 or clen <= 0 or inner < 0 or coffset + clen > st.csize:
            raise Corrupt(f"entry {i}: frame range outside the layer blob")
        refs.append(new_chunk_ref(off, length, d, coffset, clen, inner))
        st.prev_cend = coffset + clen
    return tuple(refs)


def _one_frame_chunk(raw: list[Any], size: int, st: RowState, i: int) -> tuple[ChunkRef] | None:
    """The one chunk of a file that is one frame chunk (the fixed split, a single digest,
    one of each column), checked as `decode_frame_chunks` checks it; None if the columns
    are not that simple (they get the general path, and its errors)."""
    _, digest, _, deltas, clengths, inners = raw
    if not (type(digest) is bytes and type(deltas) is list and type(clengths) is list):
        return None
    if len(digest) != SHA256_SIZE or len(deltas) != 1 or len(clengths) != 1:
        return None
    if inners is not None and (type(inners) is not list or len(inners) != 1):
        return None
    delta, clen, inner = deltas[0], clengths[0], 0 if inners is None else inners[0]
    if not (type(delta) is int and type(clen) is int and type(inner) is int):  # not bool
        raise Corrupt(f"entry {i}: non-integer frame field")
    coffset = st.prev_cend + delta
    if coffset < 0 or clen <= 0 or inner < 0 or coffset + clen > st.csize:
        raise Corrupt(f"entry {i}: frame range outside the layer blob")
    st.prev_cend = coffset + clen
    return (new_chunk_ref(0, size, digest, coffset, clen, inner),)
