"""soci-snapshotter's zTOC test vectors (``tests/fixtures/soci-ztoc``) and ways to damage them."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import struct
import tarfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import flatbuffers
from flatbuffers.table import Table

from fusesnap.digest import Digest
from fusesnap.index import gzipindex
from fusesnap.index.ztoc import WINDOW_SIZE, ZinfoPoint, span_range
from fusesnap.oci import OCI_LAYER_GZIP, Descriptor

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "soci-ztoc"


@dataclass(frozen=True)
class Vector:
    """One golden zTOC and the gzip layer soci-snapshotter built it from."""

    name: str
    blob: bytes
    ztoc: bytes
    span: int

    @property
    def layer(self) -> Descriptor:
        return Descriptor(OCI_LAYER_GZIP, Digest.of(self.blob), len(self.blob))


def vectors() -> list[Vector]:
    out = []
    for item in json.loads((FIXTURES / "manifest.json").read_text()):
        blob = (FIXTURES / item["input"]).read_bytes()
        ztoc = (FIXTURES / f"{item['name']}.ztoc").read_bytes()
        out.append(Vector(item["name"], blob, ztoc, item["span"]))
    return out


def vector(name: str) -> Vector:
    return next(v for v in vectors() if v.name == name)


# -- damage: patch fields in place (the FlatBuffers layout stays valid) ------------------------


def _root(buf: bytearray) -> Table:
    return Table(buf, struct.unpack_from("<I", buf, 0)[0])


def _sub(t: Table, slot: int) -> Table:
    pos = t.Pos + t.Offset(slot)
    return Table(t.Bytes, pos + struct.unpack_from("<I", t.Bytes, pos)[0])


def _file(buf: bytearray, k: int) -> Table:
    toc = _sub(_root(buf), 12)
    vec = toc.Pos + toc.Offset(4)
    vec += struct.unpack_from("<I", buf, vec)[0]
    elem = vec + 4 + 4 * k
    return Table(buf, elem + struct.unpack_from("<I", buf, elem)[0])


def with_file_offset(ztoc: bytes, k: int, offset: int) -> bytes:
    """The zTOC with file ``k``'s uncompressed offset set to ``offset``."""
    buf = bytearray(ztoc)
    t = _file(buf, k)
    struct.pack_into("<q", buf, t.Pos + t.Offset(8), offset)
    return bytes(buf)


def with_file_name(ztoc: bytes, k: int, name: bytes) -> bytes:
    """The zTOC with file ``k`` renamed to ``name`` (of the same length)."""
    buf = bytearray(ztoc)
    t = _file(buf, k)
    pos = t.Pos + t.Offset(4)
    pos += struct.unpack_from("<I", buf, pos)[0]
    assert struct.unpack_from("<I", buf, pos)[0] == len(name)
    buf[pos + 4 : pos + 4 + len(name)] = name
    return bytes(buf)


def with_span_digest(ztoc: bytes, i: int, digest: bytes) -> bytes:
    """The zTOC with span ``i``'s digest replaced (``sha256:`` + 64 hex digits)."""
    buf = bytearray(ztoc)
    info = _sub(_root(buf), 14)
    vec = info.Pos + info.Offset(8)
    vec += struct.unpack_from("<I", buf, vec)[0]
    elem = vec + 4 + 4 * i
    pos = elem + struct.unpack_from("<I", buf, elem)[0]
    assert struct.unpack_from("<I", buf, pos)[0] == 71
    buf[pos + 4 : pos + 4 + 71] = b"sha256:" + digest.hex().encode()
    return bytes(buf)


# -- zTOCs written here, for what the vectors lack (other entry types, xattrs, the root) --------


def write_ztoc(blob: bytes, *, spacing: int = 64 << 10) -> bytes:
    """A zTOC of gzip ``blob`` (one member with a 10-byte header) as soci-snapshotter lays
    it out: checkpoint 0 after the header with a zeroed window, then zran's every
    ``spacing`` bytes (indexed_gzip's), span digests, the tar's entries with their PAX
    records. For reading tests only: fusesnap's own zTOC writer lives elsewhere."""
    assert blob[3] == 0, "a header with no optional fields"
    cp = gzipindex.build_checkpoints(io.BytesIO(blob), spacing=spacing)
    points = [ZinfoPoint(10, 0, 0, bytes(WINDOW_SIZE))]
    inner = [p for p in cp.points if p.uoffset > 0 and p.coffset < len(blob)]
    points += [ZinfoPoint(p.coffset, p.uoffset, p.bits, p.window) for p in inner]
    zinfo = struct.pack("<iq", len(points), spacing) + b"".join(
        struct.pack("<qqB", p.coffset, p.uoffset, p.bits) + p.window for p in points
    )
    digests = [
        "sha256:"
        + hashlib.sha256(blob[slice(*span_range(tuple(points), i, len(blob)))]).hexdigest()
        for i in range(len(points))
    ]
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
        members = tf.getmembers()
    b = flatbuffers.Builder(1 << 16)
    files = [_file_table(b, m) for m in members]
    metadata = _vector(b, files)
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, metadata, 0)
    toc = b.EndObject()
    spans = _vector(b, [b.CreateString(d) for d in digests])
    checkpoints = b.CreateByteVector(zinfo)
    b.StartObject(4)
    b.PrependInt8Slot(0, 1, 1)
    b.PrependInt32Slot(1, len(points) - 1, 0)
    b.PrependUOffsetTRelativeSlot(2, spans, 0)
    b.PrependUOffsetTRelativeSlot(3, checkpoints, 0)
    info = b.EndObject()
    version, tool = b.CreateString("0.9"), b.CreateString("fusesnap-tests")
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, version, 0)
    b.PrependUOffsetTRelativeSlot(1, tool, 0)
    b.PrependInt64Slot(2, len(blob), 0)
    b.PrependInt64Slot(3, len(gzip.decompress(blob)), 0)
    b.PrependUOffsetTRelativeSlot(4, toc, 0)
    b.PrependUOffsetTRelativeSlot(5, info, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


_TYPE_NAMES = {
    tarfile.REGTYPE: "reg", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}  # fmt: skip


def _file_table(b: flatbuffers.Builder, m: tarfile.TarInfo) -> int:
    pax = m.pax_headers
    xattrs = []
    for key, value in pax.items():
        k, v = b.CreateString(key), b.CreateString(value.encode("utf-8", "surrogateescape"))
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, k, 0)
        b.PrependUOffsetTRelativeSlot(1, v, 0)
        xattrs.append(b.EndObject())
    mtime = Decimal(pax.get("mtime", str(int(m.mtime))))
    seconds = int(mtime.to_integral_value(rounding="ROUND_FLOOR"))
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    nanos = int((mtime - seconds) * 10**9)
    when += (f".{nanos:09d}".rstrip("0") if nanos else "") + "Z"
    strings = [b.CreateString(s) for s in (m.name, _TYPE_NAMES[m.type], m.linkname, m.uname,
                                           m.gname, when)]  # fmt: skip
    vec = _vector(b, xattrs)
    b.StartObject(14)
    for slot, off in zip((0, 1, 4, 8, 9, 10), strings, strict=True):
        b.PrependUOffsetTRelativeSlot(slot, off, 0)
    b.PrependInt64Slot(2, m.offset_data, 0)
    b.PrependInt64Slot(3, m.size, 0)
    b.PrependInt64Slot(5, m.mode, 0)
    b.PrependUint32Slot(6, m.uid, 0)
    b.PrependUint32Slot(7, m.gid, 0)
    b.PrependInt64Slot(11, m.devmajor, 0)
    b.PrependInt64Slot(12, m.devminor, 0)
    b.PrependUOffsetTRelativeSlot(13, vec, 0)
    return int(b.EndObject())


def _vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())
