"""Which bytes of a layer blob produce which chunks, and how needs become range requests.

A chunk (`ChunkRef`) names bytes of the *uncompressed* tar stream; what must
be fetched to produce it depends on how the blob is encoded (`Access`):

- ``RAW`` (an uncompressed layer): the blob is the tar stream; a chunk is
  exactly ``[offset, offset + length)``.
- ``FRAMES`` (eStargz, zstd:chunked): the chunk carries ``coffset``,
  ``clength`` and ``inner``: blob bytes ``[coffset, coffset + clength)``
  decompress on their own (gzip members or zstd frames) to bytes whose
  ``[inner, inner + length)`` slice is the chunk.
- ``GZIP`` (a gzip layer with zran checkpoints): inflation starts at the last
  checkpoint at or before the chunk and must stop *before* the first
  checkpoint after its end, so the blob range runs from the first checkpoint's
  byte (minus one when it starts mid-byte) to one byte past the second's. Only
  a plain gzip stream needs this; the range is the smallest that can be
  known without inflating. A span-verified index (a SOCI zTOC's,
  `LayerIndex.span_verified`) fetches whole spans instead, exactly the bytes
  each span digest covers (`LayerLayout.zspans`): from the first checkpoint's
  byte (minus one when it starts mid-byte; checkpoint 0 too, which follows the
  gzip header, not fetched) to the next one's.

Plain zstd has no random access at all (`LayerError`: the layer must be
fetched whole, the local-index path).

`LayerLayout.plan` turns needs into `Span` s: one HTTP range each. Pieces are
sorted by blob offset and merged while the hole between them is at most
``max_gap`` and the request stays within ``max_request``; chunks sharing a
checkpoint span or a frame always land in one request. `LayerLayout.within`
lists every chunk of the layer that a fetched span can produce, so a span
fetched for one chunk also yields its neighbours (what the next read wants).

The frame fields are read with ``getattr``, so that a `ChunkRef` without them
(from before they were added) reads as a tar-stream chunk.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable
from dataclasses import dataclass

from fusesnap.errors import LayerError
from fusesnap.index import FRAME_FORMATS, Checkpoint, ChunkRef, LayerIndex

__all__ = [
    "Access",
    "LayerLayout",
    "Span",
    "ZSpan",
    "clength",
    "coffset",
    "inner",
    "layout_of",
]


class Access(enum.Enum):
    RAW = "raw"
    GZIP = "gzip"
    FRAMES = "frames"


def coffset(ref: ChunkRef) -> int:
    """Blob offset of the frame holding ``ref`` (-1: a tar-stream chunk)."""
    return int(getattr(ref, "coffset", -1))


def clength(ref: ChunkRef) -> int:
    return int(getattr(ref, "clength", 0))


def inner(ref: ChunkRef) -> int:
    return int(getattr(ref, "inner", 0))


@dataclass(frozen=True, slots=True)
class Span:
    """One range request: blob bytes ``[start, end)`` and the chunks it was planned for.

    For ``GZIP``, ``point`` is the checkpoint inflation starts at and
    ``[ustart, uend)`` the uncompressed bytes it produces.
    """

    start: int
    end: int
    refs: tuple[ChunkRef, ...]
    point: int = -1
    ustart: int = 0
    uend: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class ZSpan:
    """zTOC span ``number``: compressed bytes ``[start, end)`` whose sha256 is ``digest``."""

    number: int
    start: int
    end: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class _Piece:
    start: int
    end: int
    ref: ChunkRef
    first: int = -1  # GZIP: checkpoint to start at
    last: int = -1  # GZIP: first checkpoint after the chunk (len(points): none)
    ustart: int = 0  # GZIP: the uncompressed bytes [ustart, uend) inflated
    uend: int = 0


class LayerLayout:
    """Where every chunk of one layer lives in its blob (built once per `LayerIndex`).

    Raise `LayerError` when the layer has no random access (plain zstd, gzip
    without checkpoints, an unknown compression).
    """

    def __init__(self, index: LayerIndex) -> None:
        self.index = index
        self.what = f"layer {index.layer_digest.short}"
        self.access = _access(index, self.what)
        self.span_verified = index.span_verified
        self._uoffs: list[int] = []
        if self.access is Access.GZIP:
            assert index.checkpoints is not None
            self._uoffs = [p.uoffset for p in index.checkpoints.points]
            if not self._uoffs:
                raise LayerError(f"{self.what}: gzip index has no checkpoints")
        refs = [c for e in index.entries for c in e.chunks]
        refs.sort(key=self._key)
        self._all = refs
        self._keys = [self._key(r) for r in refs]

    def _key(self, ref: ChunkRef) -> int:
        return coffset(ref) if self.access is Access.FRAMES else ref.offset

    # -- one chunk -------------------------------------------------------------------------

    def piece(self, ref: ChunkRef) -> _Piece:
        """The smallest blob range that produces ``ref``; `LayerError` if the index is bad."""
        size = self.index.compressed_size
        if self.access is Access.FRAMES:
            start, n = coffset(ref), clength(ref)
            if start < 0 or n <= 0 or start + n > size or inner(ref) < 0:
                raise LayerError(
                    f"{self.what}: chunk {_name(ref)} has no valid frame "
                    f"(coffset {start}, clength {n}, blob {size} bytes)"
                )
            return _Piece(start, start + n, ref)
        end = ref.offset + ref.length
        if ref.offset < 0 or ref.length <= 0 or end > self.index.uncompressed_size:
            raise LayerError(f"{self.what}: chunk {_name(ref)} lies outside the layer")
        if self.access is Access.RAW:
            if end > size:
                raise LayerError(f"{self.what}: chunk {_name(ref)} lies outside the blob")
            return _Piece(ref.offset, end, ref)
        first = bisect.bisect_right(self._uoffs, ref.offset) - 1
        if first < 0:
            raise LayerError(f"{self.what}: no gzip checkpoint before offset {ref.offset}")
        # Strictly after the end: inflating right up to a checkpoint makes zran read the
        # next block's header, which lies beyond the range.
        last = bisect.bisect_right(self._uoffs, end)
        return _Piece(
            self._cstart(first),
            self._cend(last),
            ref,
            first,
            last,
            self._uoffs[first],
            self._uend(last),
        )

    def _cstart(self, point: int) -> int:
        if point == 0 and not self.span_verified:
            return 0  # zran re-reads the gzip header for the first point
        p = self._points[point]
        return p.coffset - (1 if p.bits else 0)

    def _uend(self, point: int) -> int:
        if point >= len(self._uoffs):
            return self.index.uncompressed_size
        return self._uoffs[point] - 1

    def _cend(self, point: int) -> int:
        size = self.index.compressed_size
        if point >= len(self._uoffs):
            return size
        if self.span_verified:
            return self._points[point].coffset  # where the digest of the span before ends
        return min(size, self._points[point].coffset + 1)

    @property
    def _points(self) -> tuple[Checkpoint, ...]:
        assert self.index.checkpoints is not None
        return self.index.checkpoints.points

    # -- many chunks -----------------------------------------------------------------------

    def plan(
        self, refs: Iterable[ChunkRef], *, max_request: int, max_gap: int, max_inflate: int
    ) -> list[Span]:
        """Range requests that produce ``refs``, in blob order (see the module docstring).

        A merged request spans at most ``max_request`` blob bytes and (gzip) inflates
        at most ``max_inflate`` bytes; a single chunk's piece may exceed either.
        Raise `LayerError` for a chunk the layout cannot place (see `piece`).
        """
        pieces = sorted((self.piece(r) for r in refs), key=lambda p: (p.start, p.end))
        spans: list[Span] = []
        group: list[_Piece] = []
        start = end = ustart = uend = 0
        for p in pieces:
            if (
                group
                and p.start - end <= max_gap
                and max(end, p.end) - start <= max_request
                and max(uend, p.uend) - ustart <= max_inflate
            ):
                group.append(p)
                end, uend = max(end, p.end), max(uend, p.uend)
                continue
            if group:
                spans.append(self._span(group, start, end))
            group, start, end, ustart, uend = [p], p.start, p.end, p.ustart, p.uend
        if group:
            spans.append(self._span(group, start, end))
        return spans

    def _span(self, group: list[_Piece], start: int, end: int) -> Span:
        refs = tuple(p.ref for p in group)
        if self.access is not Access.GZIP:
            return Span(start, end, refs)
        first = min(p.first for p in group)
        last = max(p.last for p in group)
        return Span(start, end, refs, first, self._uoffs[first], self._uend(last))

    def zspans(self, span: Span) -> list[ZSpan]:
        """The zTOC spans (span-verified layers) whose bytes ``span``'s inflation reads:
        from its start point to the one holding its last uncompressed byte."""
        cp = self.index.checkpoints
        assert cp is not None
        assert cp.span_digests
        points = cp.points
        last = max(bisect.bisect_right(self._uoffs, span.uend) - 1, span.point)
        out = []
        for i in range(span.point, last + 1):
            p = points[i]
            end = points[i + 1].coffset if i + 1 < len(points) else cp.compressed_size
            out.append(ZSpan(i, p.coffset - (1 if p.bits else 0), end, cp.span_digests[i]))
        return out

    def within(self, span: Span) -> list[ChunkRef]:
        """Every chunk of the layer (one per digest) that ``span``'s bytes produce."""
        if self.access is Access.GZIP:
            lo, hi = span.ustart, span.uend
        else:
            lo, hi = span.start, span.end
        out: dict[bytes, ChunkRef] = {}
        for k in range(bisect.bisect_left(self._keys, lo), len(self._all)):
            if self._keys[k] >= hi:
                break
            ref = self._all[k]
            if self.access is Access.FRAMES:
                inside = coffset(ref) + clength(ref) <= hi
            else:
                inside = ref.offset + ref.length <= hi
            if inside:
                out.setdefault(ref.digest, ref)
        return list(out.values())

    def position(self, ref: ChunkRef) -> int:
        """Sort key in blob order."""
        return self._key(ref)


def _access(index: LayerIndex, what: str) -> Access:
    framed = index.compression in FRAME_FORMATS or any(
        coffset(c) >= 0 for e in index.entries for c in e.chunks[:1]
    )
    if framed:
        return Access.FRAMES
    if index.compression == "none":
        return Access.RAW
    if index.compression == "gzip":
        if index.checkpoints is None:
            raise LayerError(
                f"{what}: gzip layer indexed without checkpoints: no random access; "
                "the layer must be fetched whole (or re-indexed with checkpoints)"
            )
        return Access.GZIP
    if index.compression == "zstd":
        raise LayerError(
            f"{what}: plain zstd layer has no random access; the layer must be fetched whole"
        )
    raise LayerError(f"{what}: no random access for compression {index.compression!r}")


def _name(ref: ChunkRef) -> str:
    return f"sha256:{ref.digest.hex()[:12]}"


def check_random_access(index: LayerIndex) -> None:
    """`LayerError` if ``index``'s layer has no random access, as `layout_of` would
    raise, without building the layout (which sorts every chunk)."""
    what = f"layer {index.layer_digest.short}"
    if _access(index, what) is Access.GZIP:
        assert index.checkpoints is not None
        if not index.checkpoints.points:
            raise LayerError(f"{what}: gzip index has no checkpoints")


def layout_of(index: LayerIndex) -> LayerLayout:
    """The `LayerLayout` of ``index``; `LayerError` if it has no random access."""
    return LayerLayout(index)
