"""A minimal reading of a zTOC's FlatBuffers table for the tests: enough to name a field
that differs and to check what a pushed zTOC says (the package's reader is elsewhere)."""

from __future__ import annotations

import struct

from flatbuffers.table import Table


def _table(buf: bytes, pos: int) -> Table:
    return Table(bytearray(buf), pos)


def _string(t: Table, slot: int) -> bytes:
    o = t.Offset(4 + 2 * slot)
    return bytes(t.String(o + t.Pos)) if o else b""


def _scalar(t: Table, slot: int, fmt: str) -> int:
    o = t.Offset(4 + 2 * slot)
    return struct.unpack_from(fmt, t.Bytes, t.Pos + o)[0] if o else 0


def _vector(t: Table, slot: int) -> list[int]:
    o = t.Offset(4 + 2 * slot)
    if not o:
        return []
    start = t.Vector(o)
    return [t.Indirect(start + 4 * i) for i in range(t.VectorLen(o))]


def parse(data: bytes) -> dict:
    root = _table(data, struct.unpack_from("<I", data)[0])
    toc = _table(data, root.Indirect(root.Pos + root.Offset(4 + 2 * 4)))
    info = _table(data, root.Indirect(root.Pos + root.Offset(4 + 2 * 5)))
    entries = []
    for pos in _vector(toc, 0):
        fm = _table(data, pos)
        xattrs = {}
        for xpos in _vector(fm, 13):
            x = _table(data, xpos)
            xattrs[_string(x, 0)] = _string(x, 1)
        entries.append(
            {
                "name": _string(fm, 0),
                "type": _string(fm, 1),
                "offset": _scalar(fm, 2, "<q"),
                "size": _scalar(fm, 3, "<q"),
                "linkname": _string(fm, 4),
                "mode": _scalar(fm, 5, "<q"),
                "uid": _scalar(fm, 6, "<I"),
                "gid": _scalar(fm, 7, "<I"),
                "uname": _string(fm, 8),
                "gname": _string(fm, 9),
                "mod_time": _string(fm, 10),
                "devmajor": _scalar(fm, 11, "<q"),
                "devminor": _scalar(fm, 12, "<q"),
                "xattrs": xattrs,
            }
        )
    o = info.Offset(4 + 2 * 3)
    checkpoints = bytes(info.Bytes[info.Vector(o) : info.Vector(o) + info.VectorLen(o)])
    return {
        "version": _string(root, 0),
        "build_tool": _string(root, 1),
        "compressed_size": _scalar(root, 2, "<q"),
        "uncompressed_size": _scalar(root, 3, "<q"),
        "entries": entries,
        "max_span_id": _scalar(info, 1, "<i"),
        "span_digests": [bytes(info.Bytes[p + 4 : p + 4 + 71]) for p in _vector(info, 2)],
        "checkpoints_head": checkpoints[:12],
        "checkpoints": checkpoints,
    }


def checkpoints(blob: bytes) -> tuple[int, list[tuple[int, int, int, bytes]]]:
    """The span size and the (compressed offset, uncompressed offset, bits, window) of each
    checkpoint in a zinfo v2 blob."""
    count, span = struct.unpack_from("<IQ", blob)
    pos, out = 12, []
    for _ in range(count):
        c, u, b = struct.unpack_from("<QQB", blob, pos)
        out.append((c, u, b, blob[pos + 17 : pos + 17 + 32768]))
        pos += 17 + 32768
    assert pos == len(blob)
    return span, out
