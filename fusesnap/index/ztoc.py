"""soci-snapshotter's zTOC: a gzip layer's table of contents and zran checkpoints, parsed.

A zTOC is one FlatBuffers table (soci-snapshotter's ``ztoc/fbs/ztoc.fbs``; versions
0.9 and 1.0 share the layout)::

    Ztoc            version, build_tool_identifier, compressed_archive_size,
                    uncompressed_archive_size, toc: TOC, compression_info: CompressionInfo
    TOC             metadata: [FileMetadata]
    FileMetadata    name, type, uncompressed_offset, uncompressed_size, linkname, mode,
                    uid, gid, uname, gname, mod_time (RFC 3339), devmajor, devminor,
                    xattrs: [Xattr{key, value}] (the tar entry's PAX records)
    CompressionInfo compression_algorithm (1 gzip), max_span_id, span_digests: [string],
                    checkpoints: [ubyte]

``checkpoints`` is zlib's zran index, little-endian: ``count:i32 span_size:i64`` and
then per checkpoint ``in:i64 out:i64 bits:u8 window:32768 bytes``. Blobs of the first
format version leave out checkpoint 0 (then at compressed offset 10, uncompressed 0,
no bits, a zeroed window); the count still includes it.

Span ``i`` is the compressed bytes ``[in_i - (1 if bits_i else 0), in_(i+1))`` (the
last one runs to the end of the blob); ``span_digests[i]`` is their sha256. Inflating
from checkpoint ``i`` (raw deflate, primed with ``bits_i`` bits of the byte before
``in_i`` and the window as dictionary) yields the uncompressed bytes from ``out_i``.

The tables are read by hand through the ``flatbuffers`` runtime's `Table`, every offset
and length checked against the buffer first: a zTOC comes from a registry and is
untrusted. Anything malformed is a `LayerError`. What the entries mean for a layer (paths,
types, chunks) is `fusesnap.index.soci`'s.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from flatbuffers import number_types as fbtypes
from flatbuffers.table import Table

from fusesnap.errors import LayerError
from fusesnap.index.stream import Limits

__all__ = [
    "GZIP",
    "WINDOW_SIZE",
    "ZinfoPoint",
    "Ztoc",
    "ZtocFile",
    "parse_zinfo",
    "parse_ztoc",
    "span_range",
]

GZIP = 1
WINDOW_SIZE = 32768
_HEADER = struct.Struct("<iq")
_POINT = struct.Struct("<qqB")
_POINT_SIZE = _POINT.size + WINDOW_SIZE
_V1_FIRST_IN = 10
# As for a tar scan (`Limits.max_entries`): a small zTOC can repeat one entry's offset.
_MAX_ENTRIES = Limits().max_entries

# Field slots (vtable offsets): 4 + 2 * field number, in schema order.
_ZTOC = {"version": 4, "tool": 6, "csize": 8, "usize": 10, "toc": 12, "info": 14}
_INFO = {"algorithm": 4, "max_span": 6, "digests": 8, "checkpoints": 10}
_FILE = {
    "name": 4,
    "type": 6,
    "offset": 8,
    "size": 10,
    "linkname": 12,
    "mode": 14,
    "uid": 16,
    "gid": 18,
    "uname": 20,
    "gname": 22,
    "mod_time": 24,
    "devmajor": 26,
    "devminor": 28,
    "xattrs": 30,
}


@dataclass(frozen=True, slots=True)
class ZtocFile:
    """One tar entry as the zTOC lists it (names and texts as raw bytes)."""

    name: bytes
    type: str
    offset: int
    size: int
    linkname: bytes
    mode: int
    uid: int
    gid: int
    uname: bytes
    gname: bytes
    mod_time: str
    devmajor: int
    devminor: int
    pax: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class ZinfoPoint:
    """A zran checkpoint: compressed offset, uncompressed offset, bits, 32 KiB window."""

    coffset: int
    uoffset: int
    bits: int
    window: bytes


@dataclass(frozen=True, slots=True)
class Ztoc:
    """A parsed zTOC (module docstring). ``span_digests`` are raw 32-byte sha256s."""

    version: str
    build_tool: str
    compressed_size: int
    uncompressed_size: int
    files: tuple[ZtocFile, ...]
    algorithm: int
    span_size: int
    points: tuple[ZinfoPoint, ...]
    span_digests: tuple[bytes, ...]


def span_range(points: tuple[ZinfoPoint, ...], i: int, compressed_size: int) -> tuple[int, int]:
    """The compressed bytes ``[start, end)`` of span ``i`` (what its digest covers)."""
    p = points[i]
    end = points[i + 1].coffset if i + 1 < len(points) else compressed_size
    return p.coffset - (1 if p.bits else 0), end


def parse_ztoc(data: bytes, *, what: str = "zTOC") -> Ztoc:
    """The `Ztoc` in ``data``; `LayerError` naming ``what`` if it is not a sound one."""
    try:
        return _Reader(bytearray(data), what).ztoc()
    except (struct.error, IndexError, ValueError, OverflowError, TypeError) as exc:
        raise LayerError(f"{what}: malformed zTOC ({exc})") from None


def parse_zinfo(blob: bytes, *, what: str = "zTOC") -> tuple[int, tuple[ZinfoPoint, ...]]:
    """(span size, checkpoints) of a zran ``checkpoints`` blob (module docstring)."""
    if len(blob) < _HEADER.size:
        raise LayerError(f"{what}: checkpoints blob of {len(blob)} bytes is truncated")
    count, span_size = _HEADER.unpack_from(blob)
    if count <= 0 or span_size <= 0:
        raise LayerError(f"{what}: checkpoints blob claims {count} points of span {span_size}")
    body = len(blob) - _HEADER.size
    if body == count * _POINT_SIZE:
        stored, first = count, []
    elif body == (count - 1) * _POINT_SIZE:  # the first format: checkpoint 0 implied
        stored, first = count - 1, [ZinfoPoint(_V1_FIRST_IN, 0, 0, bytes(WINDOW_SIZE))]
    else:
        raise LayerError(
            f"{what}: checkpoints blob of {len(blob)} bytes does not hold {count} checkpoints"
        )
    points = list(first)
    pos = _HEADER.size
    for _ in range(stored):
        cin, cout, bits = _POINT.unpack_from(blob, pos)
        pos += _POINT.size
        points.append(ZinfoPoint(cin, cout, bits, bytes(blob[pos : pos + WINDOW_SIZE])))
        pos += WINDOW_SIZE
    return span_size, tuple(points)


class _Reader:
    """Bounds-checked reads of one FlatBuffers buffer."""

    def __init__(self, buf: bytearray, what: str) -> None:
        self._buf = buf
        self._what = what

    def _fail(self, reason: str) -> LayerError:
        return LayerError(f"{self._what}: malformed zTOC ({reason})")

    def _u32(self, pos: int) -> int:
        if not 0 <= pos <= len(self._buf) - 4:
            raise self._fail(f"offset {pos} outside the buffer")
        return int(struct.unpack_from("<I", self._buf, pos)[0])

    def _table(self, pos: int) -> Table:
        if not 0 <= pos <= len(self._buf) - 4:
            raise self._fail(f"table at {pos} outside the buffer")
        vtable = pos - struct.unpack_from("<i", self._buf, pos)[0]
        if not 0 <= vtable <= len(self._buf) - 4:
            raise self._fail(f"vtable of the table at {pos} outside the buffer")
        vsize, tsize = struct.unpack_from("<HH", self._buf, vtable)
        if vsize < 4 or vtable + vsize > len(self._buf) or pos + tsize > len(self._buf):
            raise self._fail(f"table at {pos} runs past the buffer")
        return Table(self._buf, pos)

    def _field(self, t: Table, slot: int, size: int) -> int:
        """The buffer position of a scalar or offset field; 0 if absent."""
        o = t.Offset(slot)
        if not o:
            return 0
        pos = t.Pos + o
        if pos + size > len(self._buf):
            raise self._fail(f"field at {pos} runs past the buffer")
        return pos

    def _int(self, t: Table, slot: int, flags: type, size: int) -> int:
        pos = self._field(t, slot, size)
        return int(t.Get(flags, pos)) if pos else 0

    def _ref(self, t: Table, slot: int) -> int:
        """Where an offset field points (a table, string or vector); 0 if absent."""
        pos = self._field(t, slot, 4)
        return pos + self._u32(pos) if pos else 0

    def _vector(self, start: int, elem: int) -> tuple[int, int]:
        """(length, first element position) of the vector at ``start``."""
        n = self._u32(start)
        if start + 4 + n * elem > len(self._buf):
            raise self._fail(f"vector of {n} at {start} runs past the buffer")
        return n, start + 4

    def _bytes_at(self, start: int) -> bytes:
        n, first = self._vector(start, 1)
        return bytes(self._buf[first : first + n])

    def _text_at(self, start: int) -> bytes:
        """A string: its bytes, which FlatBuffers follows with a NUL."""
        data = self._bytes_at(start)
        end = start + 4 + len(data)
        if end >= len(self._buf) or self._buf[end] != 0:
            raise self._fail(f"string at {start} is not terminated")
        return data

    def _string(self, t: Table, slot: int) -> bytes:
        start = self._ref(t, slot)
        return self._text_at(start) if start else b""

    def _sub(self, t: Table, slot: int, name: str) -> Table:
        start = self._ref(t, slot)
        if not start:
            raise self._fail(f"no {name}")
        return self._table(start)

    def _tables(self, t: Table, slot: int) -> list[Table]:
        start = self._ref(t, slot)
        if not start:
            return []
        n, first = self._vector(start, 4)
        if n > _MAX_ENTRIES:
            raise self._fail(f"{n} entries, over the limit of {_MAX_ENTRIES}")
        return [self._table(first + 4 * k + self._u32(first + 4 * k)) for k in range(n)]

    def ztoc(self) -> Ztoc:
        root = self._table(self._u32(0))
        info = self._sub(root, _ZTOC["info"], "compression info")
        toc = self._sub(root, _ZTOC["toc"], "TOC")
        checkpoints = self._ref(info, _INFO["checkpoints"])
        if not checkpoints:
            raise self._fail("no checkpoints")
        span_size, points = parse_zinfo(self._bytes_at(checkpoints), what=self._what)
        digests = []
        start = self._ref(info, _INFO["digests"])
        n, first = self._vector(start, 4) if start else (0, 0)
        for k in range(n):
            text = self._text_at(first + 4 * k + self._u32(first + 4 * k))
            digests.append(_sha256(text, self._what))
        algorithm = GZIP
        if info.Offset(_INFO["algorithm"]):
            algorithm = self._int(info, _INFO["algorithm"], fbtypes.Int8Flags, 1)
        max_span = self._int(info, _INFO["max_span"], fbtypes.Int32Flags, 4)
        if max_span + 1 != len(points) or len(digests) != len(points):
            raise self._fail(
                f"{len(points)} checkpoints, {len(digests)} span digests, max span id {max_span}"
            )
        return Ztoc(
            version=self._string(root, _ZTOC["version"]).decode("utf-8", "replace"),
            build_tool=self._string(root, _ZTOC["tool"]).decode("utf-8", "replace"),
            compressed_size=self._int(root, _ZTOC["csize"], fbtypes.Int64Flags, 8),
            uncompressed_size=self._int(root, _ZTOC["usize"], fbtypes.Int64Flags, 8),
            files=tuple(self._file(t) for t in self._tables(toc, 4)),
            algorithm=algorithm,
            span_size=span_size,
            points=points,
            span_digests=tuple(digests),
        )

    def _file(self, t: Table) -> ZtocFile:
        i64, u32 = fbtypes.Int64Flags, fbtypes.Uint32Flags
        records = self._tables(t, _FILE["xattrs"])
        pax = tuple((self._string(x, 4), self._string(x, 6)) for x in records)
        return ZtocFile(
            name=self._string(t, _FILE["name"]),
            type=self._string(t, _FILE["type"]).decode("ascii", "replace"),
            offset=self._int(t, _FILE["offset"], i64, 8),
            size=self._int(t, _FILE["size"], i64, 8),
            linkname=self._string(t, _FILE["linkname"]),
            mode=self._int(t, _FILE["mode"], i64, 8),
            uid=self._int(t, _FILE["uid"], u32, 4),
            gid=self._int(t, _FILE["gid"], u32, 4),
            uname=self._string(t, _FILE["uname"]),
            gname=self._string(t, _FILE["gname"]),
            mod_time=self._string(t, _FILE["mod_time"]).decode("ascii", "replace"),
            devmajor=self._int(t, _FILE["devmajor"], i64, 8),
            devminor=self._int(t, _FILE["devminor"], i64, 8),
            pax=pax,
        )


def _sha256(text: bytes, what: str) -> bytes:
    if len(text) != 71 or not text.startswith(b"sha256:"):
        raise LayerError(f"{what}: span digest {text[:80]!r} is not a sha256 digest")
    try:
        return bytes.fromhex(text[7:].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise LayerError(f"{what}: span digest {text[:80]!r} is not a sha256 digest") from None
