"""Write SOCI zTOCs: soci-snapshotter's per-layer table of contents and zran checkpoints.

    ztoc = build_ztoc(path, span=4 << 20)      one pass to place checkpoints, one for the TOC
    ztoc.data                                  the blob a SOCI index lists for the layer
    ztoc.digest, ztoc.size

A zTOC is a FlatBuffers table (soci's ``ztoc/fbs/ztoc.fbs``, version ``0.9``)::

    Ztoc{version, build_tool_identifier, compressed_archive_size,
         uncompressed_archive_size, toc: TOC{metadata: [FileMetadata]},
         compression_info: CompressionInfo{compression_algorithm (gzip, the
         default, so not written), max_span_id, span_digests: [string],
         checkpoints: [ubyte]}}

with the TOC from `fusesnap.index.ztoctar` and the checkpoints and span
digests from `fusesnap.index.zinfo`. `marshal_ztoc` builds the table in the
order soci's Go marshaler does (strings, then the TOC with its file records
last to first, the checkpoints, the span digest strings and vector, the
compression info, the root), so the same zTOC gives the same bytes: the test
vectors written by soci's own builder are checked byte for byte. One pass of
libz's inflate gives both the checkpoints and, fed to `TocReader`, the TOC. One
difference between the FlatBuffers libraries is bridged here: Go's builder
reuses an earlier vtable whose field offsets match, Python's only one whose
object size matches too (`_GoVtables`).

Pure and blocking, like the rest of `fusesnap.index`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import flatbuffers

from fusesnap.index.zinfo import Zinfo, build_zinfo, span_digests
from fusesnap.index.ztoctar import TocEntry, TocReader

ZTOC_VERSION = "0.9"
DEFAULT_SPAN = 4 << 20
BUILD_TOOL = "fusesnap"

# Field slots of ztoc.fbs, in schema order.
_ZTOC_FIELDS = 6
_TOC_FIELDS = 1
_FM_FIELDS = 14
_CI_FIELDS = 4
_XATTR_FIELDS = 2
_GZIP = 1  # CompressionAlgorithm.Gzip, the schema's default


@dataclass(frozen=True, slots=True)
class Ztoc:
    """A built zTOC: its FlatBuffers bytes and what a SOCI index says of it."""

    data: bytes
    span: int
    spans: int
    entries: int
    compressed_size: int
    uncompressed_size: int

    @property
    def digest(self) -> str:
        return f"sha256:{hashlib.sha256(self.data).hexdigest()}"

    @property
    def size(self) -> int:
        return len(self.data)


class _GoVtables(dict[Any, Any]):
    """The vtable cache keyed as flatbuffers-go compares vtables: by field offsets
    only. Python's key ends with the object size, which is dropped here."""

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(key[:-1], default)

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key[:-1], value)


def _builder() -> flatbuffers.Builder:
    b = flatbuffers.Builder(1024)
    b.vtables = _GoVtables()
    return b


def marshal_ztoc(
    entries: Sequence[TocEntry],
    *,
    zinfo: bytes,
    span_digests: Sequence[str],
    compressed_size: int,
    uncompressed_size: int,
    build_tool: str = BUILD_TOOL,
    version: str = ZTOC_VERSION,
) -> bytes:
    """The zTOC FlatBuffers bytes, built in soci's order (module docstring)."""
    b = _builder()
    version_off = b.CreateString(version)
    tool_off = b.CreateString(build_tool)
    toc_off = _toc(b, entries)
    checkpoints_off = b.CreateByteVector(zinfo)
    digest_offs = [b.CreateString(d) for d in span_digests]
    b.StartVector(4, len(digest_offs), 4)
    for off in reversed(digest_offs):
        b.PrependUOffsetTRelative(off)
    digests_off = b.EndVector()

    b.StartObject(_CI_FIELDS)
    b.PrependInt32Slot(1, len(span_digests) - 1, 0)
    b.PrependUOffsetTRelativeSlot(2, digests_off, 0)
    b.PrependUOffsetTRelativeSlot(3, checkpoints_off, 0)
    b.PrependInt8Slot(0, _GZIP, _GZIP)
    info_off = b.EndObject()

    b.StartObject(_ZTOC_FIELDS)
    b.PrependUOffsetTRelativeSlot(0, version_off, 0)
    b.PrependUOffsetTRelativeSlot(1, tool_off, 0)
    b.PrependUOffsetTRelativeSlot(4, toc_off, 0)
    b.PrependInt64Slot(2, compressed_size, 0)
    b.PrependInt64Slot(3, uncompressed_size, 0)
    b.PrependUOffsetTRelativeSlot(5, info_off, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def _toc(b: flatbuffers.Builder, entries: Sequence[TocEntry]) -> int:
    offs = [0] * len(entries)
    for i in range(len(entries) - 1, -1, -1):
        offs[i] = _file_metadata(b, entries[i])
    b.StartVector(4, len(offs), 4)
    for off in reversed(offs):
        b.PrependUOffsetTRelative(off)
    metadata = b.EndVector()
    b.StartObject(_TOC_FIELDS)
    b.PrependUOffsetTRelativeSlot(0, metadata, 0)
    return int(b.EndObject())


def _file_metadata(b: flatbuffers.Builder, e: TocEntry) -> int:
    name = b.CreateString(e.name)
    kind = b.CreateString(e.type)
    linkname = b.CreateString(e.linkname)
    uname = b.CreateString(e.uname)
    gname = b.CreateString(e.gname)
    mod_time = b.CreateString(e.mod_time)
    xattr_offs = []
    for key in sorted(e.pax):
        k = b.CreateString(key)
        v = b.CreateString(e.pax[key])
        b.StartObject(_XATTR_FIELDS)
        b.PrependUOffsetTRelativeSlot(0, k, 0)
        b.PrependUOffsetTRelativeSlot(1, v, 0)
        xattr_offs.append(b.EndObject())
    b.StartVector(4, len(xattr_offs), 4)
    for off in reversed(xattr_offs):
        b.PrependUOffsetTRelative(off)
    xattrs = b.EndVector()

    b.StartObject(_FM_FIELDS)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, kind, 0)
    b.PrependInt64Slot(2, e.offset, 0)
    b.PrependInt64Slot(3, e.size, 0)
    b.PrependUOffsetTRelativeSlot(4, linkname, 0)
    b.PrependInt64Slot(5, e.mode, 0)
    b.PrependUint32Slot(6, e.uid & 0xFFFFFFFF, 0)
    b.PrependUint32Slot(7, e.gid & 0xFFFFFFFF, 0)
    b.PrependUOffsetTRelativeSlot(8, uname, 0)
    b.PrependUOffsetTRelativeSlot(9, gname, 0)
    b.PrependUOffsetTRelativeSlot(10, mod_time, 0)
    b.PrependInt64Slot(11, e.devmajor, 0)
    b.PrependInt64Slot(12, e.devminor, 0)
    b.PrependUOffsetTRelativeSlot(13, xattrs, 0)
    return int(b.EndObject())


def build_ztoc(
    path: str,
    *,
    span: int = DEFAULT_SPAN,
    build_tool: str = BUILD_TOOL,
    what: str = "layer",
) -> Ztoc:
    """The zTOC of the gzip tar layer at ``path`` (a local, verified file).

    Raise `LayerError` if the layer is not a gzip tar that soci's builder
    accepts (module docstrings of `zinfo` and `ztoctar`).

    Concurrency: blocking; inflates the file once (checkpoints and TOC in one
    pass) and reads it once more to hash the spans.
    """
    toc = TocReader(what=what)
    with open(path, "rb") as f:
        zinfo = build_zinfo(f, span=span, on_output=toc.feed, what=what)
        entries, usize = toc.finish()

        def pread(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)

        digests = span_digests(zinfo, pread)
    data = marshal_ztoc(
        entries,
        zinfo=zinfo.encode(),
        span_digests=digests,
        compressed_size=zinfo.compressed_size,
        uncompressed_size=usize,
        build_tool=build_tool,
    )
    return Ztoc(data, span, len(zinfo.checkpoints), len(entries), zinfo.compressed_size, usize)


__all__ = ["BUILD_TOOL", "DEFAULT_SPAN", "ZTOC_VERSION", "Zinfo", "Ztoc", "build_ztoc"]
