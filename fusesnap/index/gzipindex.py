"""Random access into gzip layers: zran checkpoints, built once, read through a range callback.

Every ``spacing`` bytes of uncompressed output (256 KiB by default; SOCI's
spans are 4 MiB) a checkpoint records where the deflate stream can be resumed: the
compressed byte and bit offset and the 32 KiB window of output before it. To
produce uncompressed bytes ``[offset, offset + length)`` later, `read_range`
starts at the nearest checkpoint at or before ``offset`` and inflates forward,
fetching only that compressed span through ``read_compressed(offset, length)``
(an HTTP range read in production). The bytes are not verified here: callers
check each chunk against its sha256 from the `LayerIndex`.

Library: indexed_gzip (zran), not rapidgzip. Measured on this machine (2 CPUs)
with a 4 MiB spacing (the default then), a fresh reader per 1 MiB read at 40 random offsets::

                          build         index, zstd'd    seek+read 1 MiB     compressed bytes read
    35 MB blob (169 MB tar, 12.6k files)
      indexed_gzip        0.61 s        297 KiB (0.86%)   10.4 ms (p90 19)    640 KiB (max 1.4 MiB)
      rapidgzip (1 thr)   0.44 s         68 KiB (0.20%)   16.7 ms (p90 25)    1.0 MiB (max 3.1 MiB)
    186 MB blob (539 MB tar)
      indexed_gzip        2.54 s        1.5 MiB (0.85%)   13.7 ms (p90 23)    1.1 MiB (max 2.3 MiB)
      rapidgzip (1 thr)   1.80 s        326 KiB (0.18%)   45.3 ms (p90 57)    2.0 MiB (max 4.4 MiB)

rapidgzip builds ~1.4x faster and its index is ~4x smaller (it zeroes the
window bytes nothing refers to), but it always inflates whole chunks, so a
1 MiB read costs about twice the compressed bytes and time, and with more
than one thread it reads ahead through the Python file object (2.7 MiB
fetched for a 1 MiB read). For a lazy filesystem the bytes and latency per
read win; the index is under 1% of the blob either way. indexed_gzip's
spacing is exact in uncompressed bytes, its export format (``GZIDX``) is
small and documented in zran.c, and it is plain single-threaded C.

Neither library notices a gzip stream truncated mid-way (both return short
data silently), so the pass that verifies a layer inflates with zlib itself
(`fusesnap.index.inflate`, through ctypes with ``Z_BLOCK`` as zran does) and
notes the checkpoints on the way: the same points `build_checkpoints` finds
(a test holds them equal), without a second pass over the blob, which cost
35-60% of the first. `build_checkpoints` stays for a gzip blob on its own.

Why 256 KiB: a read inflates from the checkpoint before it, so a small file
costs up to one spacing of compressed bytes. The windows are most of the
index (32 KiB each), so an index names them by digest and a pushed index
locates them in a windows blob (`fusesnap.index.model.Checkpoint`): a
mount fetches none, a read fetches the one its span starts at (a ~14 KB zstd
frame, in parallel with the span). On the Debian test image (82 MB of gzip),
``python3 -c 'print(1)'`` reads 7.6 MB through a lazy mount; the registry sends
23.1 MB with 4 MiB spacing and windows inline (925 kB index), 8.3 MB + 327 kB
at 512 KiB, and 6.7 MB + 344 kB at 256 KiB (windows blob 9.5 MB, pushed once).

The checkpoints are kept as records (`GzipCheckpoints`), not as the library's
opaque export: `read_range` hands indexed_gzip a two-point index (the
checkpoint it needs and an end sentinel), so each read imports 32 KiB, not the
whole layer's windows, and fetches its compressed span in one call: on the two
blobs above a 1 MiB read takes a median 9.6 / 11.5 ms, 625 KiB / 1.0 MiB and
one ``read_compressed`` call (at most 2 and 4).
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import struct
from collections.abc import Callable
from typing import BinaryIO

import indexed_gzip

from fusesnap.errors import LayerError
from fusesnap.index.model import Checkpoint, GzipCheckpoints

DEFAULT_SPACING = 256 << 10
WINDOW_SIZE = 32768

ReadCompressed = Callable[[int, int], bytes]

_GZIDX_HEADER = struct.Struct("<5sBBQQIII")  # id, version, flags, csize, usize, spacing, window, n
_GZIDX_POINT = struct.Struct("<QQBB")  # cmp_offset, uncmp_offset, bits, has-window
_GZIDX_ID = b"GZIDX"
_GZIDX_VERSION = 1
# zran reads this much compressed data at a time; small, so a read stops near its end.
_READBUF = 32 << 10
# Fetch at least this much per call to read_compressed (one HTTP request each).
_MIN_FETCH = 64 << 10
# Slack on the estimated end of the compressed span, fetched in the first request.
_PREFETCH_SLACK = 64 << 10
# A reading pass keeps this much behind its position (zran re-reads a little at a block edge).
_KEEP_BEHIND = 256 << 10


def build_checkpoints(
    fileobj: BinaryIO, *, spacing: int = DEFAULT_SPACING, what: str = "gzip blob"
) -> GzipCheckpoints:
    """Read the gzip blob from ``fileobj``'s position to its end once; return its checkpoints.

    ``fileobj`` must be seekable (a local file). Raise `LayerError` if the
    blob is not a gzip stream the library can index.
    """
    if spacing < WINDOW_SIZE:
        raise ValueError(f"spacing must be at least {WINDOW_SIZE}")
    origin = fileobj.tell()
    size = fileobj.seek(0, io.SEEK_END) - origin

    def pread(offset: int, length: int) -> bytes:
        fileobj.seek(origin + offset)
        return fileobj.read(length)

    src = _CompressedFile(pread, size, min_fetch=1 << 20, what=what)
    try:
        with indexed_gzip.IndexedGzipFile(
            fileobj=src, spacing=spacing, window_size=WINDOW_SIZE, readbuf_size=1 << 20
        ) as gz:
            gz.build_full_index()
            out = io.BytesIO()
            gz.export_index(fileobj=out)
    except (indexed_gzip.ZranError, OSError, ValueError) as exc:
        if src.error is not None:
            raise src.error from None
        raise LayerError(f"{what}: cannot index gzip stream ({exc})") from None
    return parse_gzidx(out.getvalue(), what=what)


def parse_gzidx(data: bytes, *, what: str = "gzip blob") -> GzipCheckpoints:
    """Checkpoints from an indexed_gzip ``GZIDX`` export (version 0 or 1)."""
    try:
        ident, version, _flags, csize, usize, spacing, window, n = _GZIDX_HEADER.unpack_from(data)
        if ident != _GZIDX_ID or version > _GZIDX_VERSION:
            raise ValueError(f"not a GZIDX v0/v1 export ({ident!r} v{version})")
        pos = _GZIDX_HEADER.size
        heads: list[tuple[int, int, int, bool]] = []
        for _ in range(n):
            if version == 0:  # v0 has no has-window flag: every point but the first has one
                c, u, b = struct.unpack_from("<QQB", data, pos)
                pos += 17
                heads.append((c, u, b, bool(heads)))
            else:
                c, u, b, has = _GZIDX_POINT.unpack_from(data, pos)
                pos += _GZIDX_POINT.size
                heads.append((c, u, b, bool(has)))
        points = []
        for c, u, b, has in heads:
            w = data[pos : pos + window] if has else b""
            if len(w) != (window if has else 0):
                raise ValueError("truncated window data")
            pos += len(w)
            points.append(Checkpoint(coffset=c, bits=b, uoffset=u, window=w))
    except struct.error as exc:
        raise LayerError(f"{what}: corrupt gzip index ({exc})") from None
    except ValueError as exc:
        raise LayerError(f"{what}: corrupt gzip index ({exc})") from None
    return GzipCheckpoints(
        compressed_size=csize,
        uncompressed_size=usize,
        spacing=spacing,
        window_size=window,
        points=tuple(points),
    )


def to_gzidx(cp: GzipCheckpoints, points: tuple[Checkpoint, ...] | None = None) -> bytes:
    """A ``GZIDX`` v1 export of ``points`` (default: all of them) that indexed_gzip can import."""
    pts = cp.points if points is None else points
    header = (cp.compressed_size, cp.uncompressed_size, cp.spacing, cp.window_size, len(pts))
    out = [_GZIDX_HEADER.pack(_GZIDX_ID, _GZIDX_VERSION, 0, *header)]
    out += [_GZIDX_POINT.pack(p.coffset, p.uoffset, p.bits, 1 if p.window else 0) for p in pts]
    out += [p.window for p in pts if p.window]
    return b"".join(out)


def read_range(
    cp: GzipCheckpoints,
    read_compressed: ReadCompressed,
    offset: int,
    length: int,
    *,
    window: bytes | None = None,
    what: str = "gzip blob",
) -> bytes:
    """Uncompressed bytes ``[offset, offset + length)`` of the blob that ``cp`` indexes.

    ``window`` is the window of the checkpoint the read starts at (`start_point`)
    when the index does not carry it inline; the caller has verified it.

    ``read_compressed(offset, length)`` returns exactly those bytes of the
    compressed blob (it is never asked past the end; fewer is an error). It
    is called a few times with contiguous, increasing ranges starting at the
    checkpoint before ``offset``; the first call asks for the whole estimated
    span. An exception it raises propagates
    unchanged; a blob that does not inflate raises `LayerError`.

    Concurrency: blocking; independent calls may run in parallel threads.
    """
    if offset < 0 or length < 0 or offset + length > cp.uncompressed_size:
        raise ValueError(
            f"{what}: range [{offset}, {offset + length}) outside 0..{cp.uncompressed_size}"
        )
    if length == 0:
        return b""
    start = cp.points[start_point(cp, offset, what=what)]
    if start.has_window and not start.window:
        if window is None or len(window) != cp.window_size:
            raise LayerError(f"{what}: the window of the checkpoint at {start.uoffset} is missing")
        start = dataclasses.replace(start, window=window)
    # zran only looks for a point at or before the target, and only up to its last point;
    # an end-of-stream sentinel makes the single real point cover every later offset.
    sentinel = Checkpoint(cp.compressed_size, 0, cp.uncompressed_size, b"")
    gzidx = to_gzidx(cp, (start, sentinel))
    src = _CompressedFile(read_compressed, cp.compressed_size, min_fetch=_MIN_FETCH, what=what)
    # A point with bits > 0 starts inside the byte before coffset.
    src.prefetch(start.coffset - (1 if start.bits else 0), _estimate_end(cp, offset + length))
    try:
        with indexed_gzip.IndexedGzipFile(
            fileobj=src,
            spacing=cp.spacing,
            window_size=cp.window_size,
            readbuf_size=_READBUF,
            buffer_size=length,  # the default read-ahead is 4 x spacing
            auto_build=False,
            skip_crc_check=True,
        ) as gz:
            gz.import_index(fileobj=io.BytesIO(gzidx))
            gz.seek(offset)
            data = gz.read(length)
    except (indexed_gzip.ZranError, OSError, ValueError) as exc:
        if src.error is not None:
            raise src.error from None
        raise LayerError(f"{what}: cannot inflate [{offset}, {offset + length}) ({exc})") from None
    if len(data) != length:
        raise LayerError(f"{what}: short inflate at {offset}: got {len(data)} of {length} bytes")
    return bytes(data)


def plain_header(size: int) -> bytes:
    """A gzip member header (RFC 1952) of exactly ``size`` bytes (at least 10), no name,
    comment or CRC; padded with an empty FNAME (11) or an FEXTRA field (12 and more).

    Inflating from the start of a member, zran parses its header only to learn where the
    deflate stream begins: one of the same length stands in for a header not fetched.
    """
    if size < 10:
        raise ValueError(f"a gzip header has at least 10 bytes, not {size}")
    fixed = b"\x1f\x8b\x08%c\x00\x00\x00\x00\x00\xff"
    if size == 10:
        return fixed % 0
    if size == 11:
        return fixed % 8 + b"\0"
    return fixed % 4 + (size - 12).to_bytes(2, "little") + bytes(size - 12)


def start_point(cp: GzipCheckpoints, offset: int, *, what: str = "gzip blob") -> int:
    """The index of the checkpoint that inflating uncompressed ``offset`` starts at."""
    i = bisect.bisect_right([p.uoffset for p in cp.points], offset) - 1
    if i < 0:
        raise LayerError(f"{what}: gzip index has no checkpoint before offset {offset}")
    return i


def _estimate_end(cp: GzipCheckpoints, uend: int) -> int:
    """Where the compressed bytes for output up to ``uend`` probably end (linear between points)."""
    uoffs = [p.uoffset for p in cp.points]
    j = bisect.bisect_left(uoffs, uend)
    if j >= len(cp.points):
        return cp.compressed_size
    hi = cp.points[j]
    lo = cp.points[j - 1] if j > 0 else hi
    if hi.uoffset == lo.uoffset:
        return min(cp.compressed_size, hi.coffset + 1)
    frac = (uend - lo.uoffset) / (hi.uoffset - lo.uoffset)
    est = lo.coffset + int(frac * (hi.coffset - lo.coffset)) + _PREFETCH_SLACK
    return min(cp.compressed_size, hi.coffset + 1, est)


class _CompressedFile(io.RawIOBase):
    """A read-only file over ``read(offset, length)`` with one contiguous read-ahead buffer.

    zran reads forward from a checkpoint, so one growing buffer is the whole
    cache: a read just past its end extends it with one more fetch, anything
    else replaces it. An exception from ``read`` is kept in ``error`` (zran
    turns it into its own error code) so the caller can re-raise the original.
    """

    def __init__(self, read: ReadCompressed, size: int, *, min_fetch: int, what: str) -> None:
        super().__init__()
        self._read = read
        self._what = what
        self._size = size
        self._min_fetch = min_fetch
        self._pos = 0
        self._buf_start = 0
        self._buf = bytearray()
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self._size + offset
        return self._pos

    def prefetch(self, start: int, end: int) -> None:
        """Fetch ``[start, end)`` now, in one call."""
        if end > start:
            self._buf_start = start
            self._buf = bytearray(self._fetch(start, end - start))

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(b), self._size - self._pos)
        if want <= 0:
            return 0
        end = self._buf_start + len(self._buf)
        if not self._buf_start <= self._pos < end:
            if self._pos == end:  # sequential: grow the buffer, dropping what lies well behind
                self._trim()
                self._buf += self._fetch(end, max(want, self._min_fetch))
            else:
                self._buf_start = self._pos
                self._buf = bytearray(self._fetch(self._pos, max(want, self._min_fetch)))
        elif self._pos + want > end:
            self._trim()
            self._buf += self._fetch(end, max(self._pos + want - end, self._min_fetch))
        lo = self._pos - self._buf_start
        chunk = self._buf[lo : lo + want]
        n = len(chunk)
        memoryview(b)[:n] = chunk
        self._pos += n
        return n

    def _trim(self) -> None:
        drop = self._pos - self._buf_start - _KEEP_BEHIND
        if drop > 0:
            del self._buf[:drop]
            self._buf_start += drop

    def _fetch(self, offset: int, length: int) -> bytes:
        length = min(length, self._size - offset)
        if length <= 0:
            return b""
        try:
            data = self._read(offset, length)
            if len(data) < length:
                # zran would take this for the end of the file and spin; fail instead.
                raise LayerError(
                    f"{self._what}: compressed blob ends at {offset + len(data)}, "
                    f"want {self._size} bytes"
                )
        except BaseException as exc:
            self.error = exc
            raise
        return data[:length]
