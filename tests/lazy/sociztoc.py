"""soci-snapshotter's zTOC test vectors (``tests/fixtures/soci-ztoc``) and ways to damage them."""

from __future__ import annotations

import json
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flatbuffers.table import Table

from fusesnap.digest import Digest
from fusesnap.index import ztocwrite
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


# -- zTOCs written by fusesnap's writer, for what the vectors lack (other entry types, the root) -


def write_ztoc(blob: bytes, *, span: int = 64 << 10) -> bytes:
    """The zTOC `fusesnap.index.ztocwrite` writes for gzip ``blob`` (spans of ``span``)."""
    with tempfile.NamedTemporaryFile(suffix=".tar.gz") as f:
        f.write(blob)
        f.flush()
        return ztocwrite.build_ztoc(f.name, span=span, build_tool="fusesnap-tests").data
