"""Turn the bytes of one fetched `Span` into verified chunks (blocking: run in a worker thread).

`cut_span` decodes the span as its layer's `Access` says (a slice, a frame
decompressed, or a gzip region inflated from a checkpoint with
`fusesnap.index.gzipindex.read_range`), cuts out each chunk asked for and
checks it against its sha256. A chunk that does not verify, or whose frame
does not decompress, is an error for that chunk only; the others are still
returned. Nothing here stores or fetches anything (except `read_before`, see
below), and no unverified byte is ever returned.

Decompression is bounded: a frame is inflated only as far as the furthest
chunk it is asked for; a gzip region only up to its planned end.

A span-verified layer (a SOCI zTOC's, `LayerIndex.span_verified`) has no chunk
digests to check: every zTOC span of the range is checked against its span
digest *before* anything is inflated, and nothing else of the blob is read
(from checkpoint 0, zran parses a gzip header: it gets `gzipindex.plain_header`
of the real one's length, so the real one is neither fetched nor trusted). Each
chunk is then accepted under its locator with the sha256 of its bytes
(`Cut.names`), the name it is stored under; the verified spans are kept too
(`Cut.spans`, stored under their digests).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fusesnap.errors import DigestMismatchError, FusesnapError, LayerError
from fusesnap.index import ChunkRef, decompress_frame, gzipindex
from fusesnap.lazy.ranges import Access, LayerLayout, Span, clength, coffset, inner

__all__ = ["Cut", "ReadBefore", "cut_span", "verify_spans"]

ReadBefore = Callable[[int, int], bytes]


@dataclass(slots=True)
class Cut:
    """What a span gave: verified chunks by digest, and errors for the chunks it did not."""

    chunks: dict[bytes, bytes] = field(default_factory=dict)
    errors: dict[bytes, FusesnapError] = field(default_factory=dict)
    verify_failures: int = 0
    names: dict[bytes, bytes] = field(default_factory=dict)  # locator -> sha256 (span-verified)
    spans: list[tuple[bytes, bytes]] = field(default_factory=list)  # (digest, bytes), verified

    def stored(self) -> list[tuple[bytes, bytes]]:
        """``(sha256, bytes)`` of every chunk and zTOC span produced: what the store takes."""
        chunks = [(self.names.get(key, key), data) for key, data in self.chunks.items()]
        return chunks + self.spans


def cut_span(
    layout: LayerLayout,
    span: Span,
    data: bytes,
    refs: Sequence[ChunkRef],
    *,
    read_before: ReadBefore | None = None,
    window: bytes | None = None,
) -> Cut:
    """Produce ``refs`` (chunks inside ``span``) from ``data``, the blob's span bytes.

    ``read_before(offset, length)`` fetches blob bytes before the span if the
    gzip library asks for some (it should not; it keeps a wrong plan from
    failing). ``window`` is the gzip window of the span's start point when the
    index does not carry it. A whole-span failure (a gzip region that does not inflate) is
    recorded for every chunk.
    """
    cut = Cut()
    if len(data) != span.size:
        err = LayerError(f"{layout.what}: got {len(data)} bytes of a {span.size}-byte range")
        cut.errors = dict.fromkeys((r.digest for r in refs), err)
        return cut
    if layout.access is Access.RAW:
        for ref in refs:
            lo = ref.offset - span.start
            _accept(cut, layout, ref, data[lo : lo + ref.length])
    elif layout.access is Access.FRAMES:
        _cut_frames(cut, layout, span, data, refs)
    else:
        try:
            if layout.span_verified:
                cut.spans = verify_spans(layout, span, data)
                read_before = _plain_header(layout) if span.point == 0 else None
            plain = _inflate(layout, span, data, read_before, window)
        except FusesnapError as exc:
            if isinstance(exc, DigestMismatchError):
                cut.verify_failures += 1
            cut.errors = dict.fromkeys((r.digest for r in refs), exc)
            return cut
        for ref in refs:
            lo = ref.offset - span.ustart
            chunk = plain[lo : lo + ref.length]
            if layout.span_verified and len(chunk) == ref.length:
                cut.chunks[ref.digest] = chunk
                cut.names[ref.digest] = hashlib.sha256(chunk).digest()
            else:
                _accept(cut, layout, ref, chunk)
    return cut


def verify_spans(layout: LayerLayout, span: Span, data: bytes) -> list[tuple[bytes, bytes]]:
    """Check every zTOC span that ``span``'s inflation reads (`LayerLayout.zspans`)
    against its digest; return them as ``(digest, bytes)``. Raise `DigestMismatchError`
    (or `LayerError` if the range does not hold them whole)."""
    out = []
    for z in layout.zspans(span):
        if not span.start <= z.start <= z.end <= span.end:
            raise LayerError(
                f"{layout.what}: range [{span.start}, {span.end}) does not hold "
                f"span {z.number} [{z.start}, {z.end}) whole"
            )
        piece = data[z.start - span.start : z.end - span.start]
        got = hashlib.sha256(piece).digest()
        if got != z.digest:
            raise DigestMismatchError(
                f"{layout.what}: zTOC span {z.number} [{z.start}, {z.end}): digest mismatch "
                f"(got sha256:{got.hex()[:12]}, want sha256:{z.digest.hex()[:12]})"
            )
        out.append((z.digest, piece))
    return out


def _plain_header(layout: LayerLayout) -> ReadBefore:
    """What zran reads before the first span: a stand-in gzip header (module docstring)."""
    cp = layout.index.checkpoints
    assert cp is not None
    header = gzipindex.plain_header(cp.points[0].coffset)

    def read(offset: int, length: int) -> bytes:
        if offset + length > len(header):
            raise LayerError(f"{layout.what}: gzip read before the first zTOC span at {offset}")
        return header[offset : offset + length]

    return read


def _accept(cut: Cut, layout: LayerLayout, ref: ChunkRef, data: bytes) -> None:
    got = hashlib.sha256(data).digest()
    if got == ref.digest and len(data) == ref.length:
        cut.chunks[ref.digest] = data
        return
    cut.verify_failures += 1
    cut.errors[ref.digest] = DigestMismatchError(
        f"{layout.what}: chunk sha256:{ref.digest.hex()[:12]} at offset {ref.offset}: "
        f"digest mismatch (got sha256:{got.hex()[:12]}, {len(data)} bytes)"
    )


def _cut_frames(
    cut: Cut, layout: LayerLayout, span: Span, data: bytes, refs: Sequence[ChunkRef]
) -> None:
    frames: defaultdict[tuple[int, int], list[ChunkRef]] = defaultdict(list)
    for ref in refs:
        frames[(coffset(ref), clength(ref))].append(ref)
    for (start, length), members in frames.items():
        lo = start - span.start
        need = max(inner(r) + r.length for r in members)
        what = f"{layout.what}: frame [{start}, {start + length})"
        try:
            plain = decompress_frame(data[lo : lo + length], need, what=what)
        except LayerError as exc:
            for ref in members:
                cut.errors[ref.digest] = exc
            continue
        for ref in members:
            _accept(cut, layout, ref, plain[inner(ref) : inner(ref) + ref.length])


def _inflate(
    layout: LayerLayout,
    span: Span,
    data: bytes,
    read_before: ReadBefore | None,
    window: bytes | None,
) -> bytes:
    checkpoints = layout.index.checkpoints
    assert checkpoints is not None
    base = span.start

    def read_compressed(offset: int, length: int) -> bytes:
        if offset >= base:
            lo = offset - base
            got = data[lo : lo + length]
            # zran reads ahead in 32-64 KiB steps past the span's end, but never inflates
            # what lies past it: the span stops before the next checkpoint, a deflate block
            # boundary. The padding is read, not decoded; the chunk digests prove it.
            return got + bytes(length - len(got)) if len(got) < length else got
        if read_before is None:
            raise LayerError(f"{layout.what}: gzip read before the fetched range at {offset}")
        head = read_before(offset, min(length, base - offset))
        return head + read_compressed(base, length - len(head)) if length > len(head) else head

    return gzipindex.read_range(
        checkpoints,
        read_compressed,
        span.ustart,
        span.uend - span.ustart,
        window=window,
        what=layout.what,
    )


def decode_window(frame: bytes, size: int, digest: bytes, what: str) -> bytes:
    """A gzip window from its zstd frame in a windows blob, checked against its sha256."""
    window = decompress_frame(frame, size, what=what)
    got = hashlib.sha256(window).digest()
    if len(window) != size or got != digest:
        raise DigestMismatchError(
            f"{what}: digest mismatch (got sha256:{got.hex()[:12]}, {len(window)} bytes)"
        )
    return window
