"""A SOCI zTOC as a `LayerIndex`: entries from its TOC, random access from its checkpoints.

soci-snapshotter publishes one zTOC (`fusesnap.index.ztoc`) per large gzip layer. It
lists every tar entry and where its data starts in the uncompressed tar stream, and
carries zran checkpoints every span (4 MiB by default) with the sha256 of each span's
compressed bytes. It has no digest of any file or chunk: those would need the whole layer.

So the index it becomes is *span-verified* (`LayerIndex.span_verified`): the
checkpoints, windows inline, carry the span digests (`GzipCheckpoints.span_digests`),
and a lazy read fetches whole spans, checks each against its digest and only then
inflates it (`fusesnap.lazy.spandecode`). A file is cut into chunks at span starts and
every ``chunk_size`` bytes, so a chunk needs one span (two when it ends right at the
next span's start); each `ChunkRef.digest` is a *locator*, the sha256 of this zTOC's
digest, the layer digest and the chunk's offset and length: a name for the chunk's place,
stable for that zTOC and layer. The sha256 of its bytes is learned when its span has
been verified and inflated, and the chunk is stored under it.

What a zTOC must satisfy to become an index (else `LayerError`, and the layer gets its
index elsewhere): gzip; its compressed size is the layer's; checkpoints in order, inside
the blob and the tar stream, the first at uncompressed offset 0; one span digest per
checkpoint; every entry a known type with a path inside the root (a hardlink's target
too) and data inside the tar stream; the RFC 3339 times valid.
"""

from __future__ import annotations

import bisect
import hashlib
import struct

from fusesnap.digest import Digest
from fusesnap.errors import LayerError
from fusesnap.index.model import (
    DEFAULT_CHUNK_SIZE,
    Checkpoint,
    ChunkRef,
    Entry,
    EntryType,
    GzipCheckpoints,
    LayerIndex,
    hardlink_target,
    normalize_path,
)
from fusesnap.index.toc import ENTRY_TYPES, MAX_ID, parse_rfc3339
from fusesnap.index.ztoc import GZIP, WINDOW_SIZE, Ztoc, ZtocFile, parse_ztoc
from fusesnap.oci import Descriptor

__all__ = ["SOURCE", "index_from_ztoc", "locator"]

SOURCE = "soci"
_LOCATOR_PREFIX = b"fusesnap soci chunk\0"
_XATTR_PREFIX = b"SCHILY.xattr."


def locator(ztoc_digest: bytes, layer: Digest, offset: int, length: int) -> bytes:
    """The name of the chunk at ``[offset, offset + length)`` of the layer's tar stream."""
    where = struct.pack(">QQ", offset, length)
    return hashlib.sha256(_LOCATOR_PREFIX + ztoc_digest + str(layer).encode() + where).digest()


def index_from_ztoc(
    data: bytes,
    layer: Descriptor,
    diff_id: Digest,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> LayerIndex:
    """The span-verified `LayerIndex` of gzip layer ``layer`` from its zTOC ``data``.

    ``diff_id`` is taken as given (the image config's). Raise `LayerError` if the zTOC
    does not parse or does not fit the layer (module docstring). Pure; blocking.
    """
    what = f"layer {layer.digest.short}: zTOC"
    ztoc = parse_ztoc(data, what=what)
    checkpoints = _checkpoints(ztoc, layer, what)
    reader = _Entries(ztoc, layer, hashlib.sha256(data).digest(), chunk_size, what)
    entries, root = reader.read()
    return LayerIndex(
        layer_digest=layer.digest,
        diff_id=diff_id,
        media_type=layer.media_type,
        compression="gzip",
        compressed_size=layer.size,
        uncompressed_size=ztoc.uncompressed_size,
        chunk_size=chunk_size,
        entries=entries,
        checkpoints=checkpoints,
        root=root,
        source=SOURCE,
    )


def _checkpoints(ztoc: Ztoc, layer: Descriptor, what: str) -> GzipCheckpoints:
    if ztoc.algorithm != GZIP:
        raise LayerError(f"{what}: compression algorithm {ztoc.algorithm} is not gzip")
    if ztoc.compressed_size != layer.size:
        raise LayerError(
            f"{what}: it is for a blob of {ztoc.compressed_size} bytes, not {layer.size}"
        )
    if not 0 <= ztoc.uncompressed_size < MAX_ID:
        raise LayerError(f"{what}: uncompressed size {ztoc.uncompressed_size} out of range")
    points = []
    last_c, last_u = 0, -1
    for i, p in enumerate(ztoc.points):
        if i == 0 and (p.uoffset != 0 or p.bits or p.coffset < 10):
            raise LayerError(f"{what}: the first checkpoint is not after a gzip header")
        if not 0 <= p.bits <= 7 or (p.bits and p.coffset < 1):
            raise LayerError(f"{what}: checkpoint {i} has a bad bit offset")
        if not last_c <= p.coffset < layer.size or not last_u < p.uoffset <= ztoc.uncompressed_size:
            raise LayerError(f"{what}: checkpoint {i} out of order or outside the archive")
        last_c, last_u = p.coffset, p.uoffset
        points.append(Checkpoint(p.coffset, p.bits, p.uoffset, p.window))
    return GzipCheckpoints(
        compressed_size=layer.size,
        uncompressed_size=ztoc.uncompressed_size,
        # Only zran reads it (it wants more than a window); the points are the zTOC's.
        spacing=max(ztoc.span_size, 2 * WINDOW_SIZE),
        window_size=WINDOW_SIZE,
        points=tuple(points),
        span_digests=ztoc.span_digests,
    )


class _Entries:
    """The zTOC's files as `Entry` records, each file cut into located chunks."""

    def __init__(
        self, ztoc: Ztoc, layer: Descriptor, ztoc_digest: bytes, chunk_size: int, what: str
    ) -> None:
        self._ztoc = ztoc
        self._layer = layer.digest
        self._ztoc_digest = ztoc_digest
        self._chunk_size = chunk_size
        self._what = what
        self._span_starts = [p.uoffset for p in ztoc.points]
        self._types: dict[str, EntryType] = {}

    def _fail(self, f: ZtocFile, reason: str) -> LayerError:
        return LayerError(f"{self._what}: entry {f.name[:200]!r}: {reason}")

    def read(self) -> tuple[tuple[Entry, ...], Entry | None]:
        entries: list[Entry] = []
        root = None
        for f in self._ztoc.files:
            entry = self._entry(f)
            if entry.path == "":
                if entry.type is not EntryType.DIR:
                    raise self._fail(f, f"a {entry.type} cannot replace the layer root")
                root = entry
            else:
                entries.append(entry)
                self._types[entry.path] = entry.type
        return tuple(entries), root

    def _entry(self, f: ZtocFile) -> Entry:
        name = f.name.decode("utf-8", "surrogateescape")
        try:
            path = normalize_path(name)
        except ValueError as exc:
            raise self._fail(f, str(exc)) from None
        etype = ENTRY_TYPES.get(f.type)
        if etype is None:
            raise self._fail(f, f"unsupported type {f.type!r}")
        numbers = (f.offset, f.size, f.devmajor, f.devminor, f.mode)
        if not all(0 <= n < MAX_ID for n in numbers):
            raise self._fail(f, "offset, size, mode or device number out of range")
        size = f.size if etype is EntryType.FILE else 0
        if f.offset + size > self._ztoc.uncompressed_size:
            raise self._fail(f, "its data lies past the end of the archive")
        linkname = f.linkname.decode("utf-8", "surrogateescape")
        if etype is EntryType.SYMLINK and "\0" in linkname:
            raise self._fail(f, "symlink target contains NUL")
        if etype is EntryType.HARDLINK:
            linkname = self._hardlink_target(f, path, linkname)
        elif etype is not EntryType.SYMLINK:
            linkname = ""
        try:
            mtime, nsec = parse_rfc3339(f.mod_time) if f.mod_time else (0, 0)
        except ValueError as exc:
            raise self._fail(f, f"modification time {exc}") from None
        device = etype in (EntryType.CHAR, EntryType.BLOCK)
        return Entry(
            path=path,
            type=etype,
            mode=f.mode & 0o7777,  # Go's tar modes may carry type bits
            uid=f.uid,
            gid=f.gid,
            size=size,
            mtime=mtime,
            mtime_nsec=nsec,
            linkname=linkname,
            devmajor=f.devmajor if device else 0,
            devminor=f.devminor if device else 0,
            xattrs=_xattrs(f.pax),
            uname=f.uname.decode("utf-8", "surrogateescape"),
            gname=f.gname.decode("utf-8", "surrogateescape"),
            chunks=self._chunks(f.offset, size),
        )

    def _hardlink_target(self, f: ZtocFile, path: str, target: str) -> str:
        try:
            return hardlink_target(target, path, self._types)
        except ValueError as exc:
            raise self._fail(f, str(exc)) from None

    def _chunks(self, offset: int, size: int) -> tuple[ChunkRef, ...]:
        """``[offset, offset + size)`` cut at span starts and every ``chunk_size`` bytes."""
        refs = []
        pos, end = offset, offset + size
        starts = self._span_starts
        while pos < end:
            k = bisect.bisect_right(starts, pos)
            stop = min(end, pos + self._chunk_size, starts[k] if k < len(starts) else end)
            refs.append(
                ChunkRef(pos, stop - pos, locator(self._ztoc_digest, self._layer, pos, stop - pos))
            )
            pos = stop
        return tuple(refs)


def _xattrs(pax: tuple[tuple[bytes, bytes], ...]) -> dict[str, bytes]:
    """Extended attributes from the entry's PAX records (``SCHILY.xattr.NAME``)."""
    out = {}
    for key, value in pax:
        if key.startswith(_XATTR_PREFIX) and len(key) > len(_XATTR_PREFIX):
            out[key[len(_XATTR_PREFIX) :].decode("utf-8", "surrogateescape")] = value
    return dict(sorted(out.items()))
