"""Build a `LayerIndex` by streaming a layer blob once.

One pass over the compressed blob does everything: hash it (the layer digest),
decompress it (zlib through `fusesnap.index.inflate`, which also notes the gzip
random-access checkpoints, or zstandard; both notice truncation, unlike the
random-access libraries), hash the tar stream (the diff ID), parse the tar
headers with the stdlib ``tarfile`` (it reports each member's data offset), and
cut every regular file into chunks that go to ``on_chunk``. Memory stays
bounded: file data is read chunk by chunk, decompressor output in 1 MiB
pieces, and a tar metadata record (PAX, GNU long name) may not exceed
``Limits.max_header``. The blob can come from a pipe: it is never re-read.

Errors: every failure of the blob itself (corrupt or truncated compression,
bad tar headers, unsafe paths, limits exceeded) is a `LayerError` whose
message names the layer and, where there is one, the entry. zlib, zstd and
tarfile exceptions are mapped here and nowhere else. If the blob also does not
match its digest, `DigestMismatchError` wins: the download was bad, not the
layer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import tarfile
import urllib.parse
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import IO, BinaryIO, cast

import zstandard

from fusesnap.digest import Digest, Verifier
from fusesnap.index import gzipindex
from fusesnap.index.inflate import GzipCheckpointer
from fusesnap.index.libz import WINDOW_SIZE
from fusesnap.index.model import (
    DEFAULT_CHUNK_SIZE,
    ChunkRef,
    Entry,
    EntryType,
    GzipCheckpoints,
    LayerError,
    LayerIndex,
    normalize_path,
)
from fusesnap.index.stream import LayerStream, Limits, StreamCorrupt
from fusesnap.oci import layer_compression

OnChunk = Callable[[bytes, bytes], None]

# Base-256 tar numbers can be anything; these bounds fit the kernel's types and msgpack.
_MAX_ID = 1 << 63
_MAX_TIME = 1 << 62

# Not in typeshed, but public names of tarfile since 3.2: a zero block (the end-of-archive
# marker), and a stream that ends on a header boundary without one (Go accepts that too).
_END_OF_ARCHIVE: tuple[type[Exception], ...] = (
    tarfile.EOFHeaderError,  # type: ignore[attr-defined]
    tarfile.EmptyHeaderError,  # type: ignore[attr-defined]
)

_TYPES = {
    tarfile.REGTYPE: EntryType.FILE,
    tarfile.AREGTYPE: EntryType.FILE,
    tarfile.CONTTYPE: EntryType.FILE,
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}


_DEFAULT_LIMITS = Limits()  # frozen, so one shared default is safe


def build_index(
    fileobj: BinaryIO,
    *,
    layer_digest: str,
    media_type: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_chunk: OnChunk | None = None,
    limits: Limits = _DEFAULT_LIMITS,
    checkpoint_spacing: int = gzipindex.DEFAULT_SPACING,
    on_window: OnChunk | None = None,
) -> LayerIndex:
    """Index the layer blob read from ``fileobj`` (from its current position to EOF).

    ``on_chunk(sha256, data)`` is called for every chunk of every regular
    file, in tar order, as the chunk streams past; the same chunk may come
    more than once. It is called *before* the blob's digest can be checked,
    which is safe for a content-addressed store (a chunk is named by its own
    hash), but the caller should hold a lease so that an aborted build leaves
    nothing that GC keeps.

    For gzip layers, ``checkpoints`` holds the random-access points found
    every ``checkpoint_spacing`` bytes of output in the same pass;
    ``on_window(sha256, window)`` gets each point's window as it is found.

    Raise `DigestMismatchError` if the blob does not hash to ``layer_digest``,
    `LayerError` if it is not a usable layer, `ManifestError` for an
    unsupported media type.
    """
    digest = Digest(layer_digest)
    compression = layer_compression(media_type)
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    verifier = Verifier(digest)
    checkpointer = (
        GzipCheckpointer(checkpoint_spacing, on_window) if compression == "gzip" else None
    )
    stream = LayerStream(
        fileobj,
        compression,
        verifier,
        limits=limits,
        max_read=max(limits.max_header, chunk_size),
        checkpointer=checkpointer,
    )
    scanner = _Scanner(digest, stream, chunk_size, on_chunk, limits)
    try:
        entries = scanner.scan()
        stream.drain()
    except (StreamCorrupt, tarfile.TarError, zlib.error, zstandard.ZstdError, EOFError) as exc:
        stream.close()
        _check_rest(fileobj, verifier)
        # tarfile turns a zlib error into ReadError; the stream kept the original.
        cause = stream.failure or exc
        raise LayerError(f"layer {digest.short}: {_describe(cause)}") from None
    except LayerError:
        stream.close()
        _check_rest(fileobj, verifier)
        raise
    finally:
        stream.close()  # the read-ahead thread is done by now unless something failed
    verifier.check(what="layer")
    checkpoints: GzipCheckpoints | None = None
    if checkpointer is not None:
        checkpoints = GzipCheckpoints(
            compressed_size=verifier.count,
            uncompressed_size=stream.uncompressed,
            spacing=checkpointer.spacing,
            window_size=WINDOW_SIZE,
            points=tuple(checkpointer.points),
        )
    return LayerIndex(
        layer_digest=digest,
        diff_id=Digest(f"sha256:{stream.diff_id_hex()}"),
        media_type=media_type,
        compression=compression,
        compressed_size=verifier.count,
        uncompressed_size=stream.uncompressed,
        chunk_size=chunk_size,
        entries=tuple(entries),
        checkpoints=checkpoints,
        root=scanner.root,
    )


def _check_rest(fileobj: BinaryIO, verifier: Verifier) -> None:
    """Hash the rest of the blob (no decompressing) so a bad download reports as a mismatch."""
    try:
        while data := fileobj.read(1 << 20):
            verifier.update(data)
    except OSError:
        return  # cannot tell; the caller's error stands
    verifier.check(what="layer")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, zlib.error):
        return f"corrupt gzip stream ({exc})"
    if isinstance(exc, zstandard.ZstdError):
        return f"corrupt zstd stream ({exc})"
    if isinstance(exc, tarfile.TarError):
        return f"invalid tar stream ({exc})"
    return str(exc) or type(exc).__name__


@dataclass(slots=True)
class _Scanner:
    """Walks the tar headers of one layer and turns them into entries."""

    _digest: Digest
    _stream: LayerStream
    _chunk_size: int
    _on_chunk: OnChunk | None
    _limits: Limits
    _types: dict[str, EntryType] = field(default_factory=dict)
    root: Entry | None = None

    def scan(self) -> list[Entry]:
        entries: list[Entry] = []
        if self._stream.at_eof():
            return entries  # a zero-byte tar is an empty layer (as Go's archive/tar reads it)
        tf = tarfile.TarFile(
            fileobj=cast(IO[bytes], self._stream),
            mode="r",
            encoding="utf-8",  # not the locale's: names decode the same everywhere
            errors="surrogateescape",
        )
        info = tf.next()
        count = 0
        while info is not None:
            count += 1
            if count > self._limits.max_entries:
                raise LayerError(
                    f"layer {self._digest.short}: more than {self._limits.max_entries} entries"
                )
            entry = self._entry(info)
            if entry.path == "":
                self.root = entry  # "./": kept apart, the root is never an entry
            else:
                entries.append(entry)
                self._types[entry.path] = entry.type
            info = self._next(tf)
        return entries

    def _next(self, tf: tarfile.TarFile) -> tarfile.TarInfo | None:
        # TarFile.next() takes a bad header after the first one for the end of the archive;
        # reading the header ourselves tells a real end marker from garbage.
        self._stream.skip_to(tf.offset)
        try:
            return tarfile.TarInfo.fromtarfile(tf)
        except _END_OF_ARCHIVE:
            return None
        except tarfile.HeaderError as exc:
            raise StreamCorrupt(f"invalid tar header at offset {tf.offset}: {exc}") from None

    def _fail(self, name: str, reason: str) -> LayerError:
        return LayerError(f"layer {self._digest.short}: entry {name!r}: {reason}")

    def _entry(self, info: tarfile.TarInfo) -> Entry:
        name = info.name
        try:
            path = normalize_path(name)
        except ValueError as exc:
            raise self._fail(name, str(exc)) from None
        if info.sparse is not None or info.type == tarfile.GNUTYPE_SPARSE:
            raise self._fail(name, "sparse files are not supported")
        etype = _TYPES.get(info.type)
        if etype is None:
            raise self._fail(name, f"unsupported tar entry type {info.type!r}")
        if path == "" and etype is not EntryType.DIR:
            raise self._fail(name, f"a {etype} cannot replace the layer root")
        linkname = ""
        if etype is EntryType.SYMLINK:
            linkname = info.linkname  # only text: may point anywhere, resolved in the tree
            if "\0" in linkname:
                raise self._fail(name, "symlink target contains NUL")
        elif etype is EntryType.HARDLINK:
            linkname = self._hardlink_target(name, path, info.linkname)
        mtime, nsec = _mtime(info)
        numbers = (info.uid, info.gid, info.size, info.devmajor, info.devminor)
        if not all(0 <= n < _MAX_ID for n in numbers) or not -_MAX_TIME < mtime < _MAX_TIME:
            raise self._fail(name, "uid, gid, size, device number or mtime out of range")
        chunks: tuple[ChunkRef, ...] = ()
        size = 0
        if etype is EntryType.FILE:
            size = info.size
            chunks = self._read_chunks(name, info.offset_data, size)
        return Entry(
            path=path,
            type=etype,
            mode=info.mode & 0o7777,
            uid=info.uid,
            gid=info.gid,
            size=size,
            mtime=mtime,
            mtime_nsec=nsec,
            linkname=linkname,
            devmajor=info.devmajor if etype in (EntryType.CHAR, EntryType.BLOCK) else 0,
            devminor=info.devminor if etype in (EntryType.CHAR, EntryType.BLOCK) else 0,
            xattrs=self._xattrs(name, info.pax_headers),
            uname=info.uname,
            gname=info.gname,
            chunks=chunks,
        )

    def _hardlink_target(self, name: str, path: str, target: str) -> str:
        # An absolute target names a path in the layer (GNU tar strips the "/", containerd
        # resolves it under the root); ".." anywhere would leave the tree.
        try:
            norm = normalize_path(target)
        except ValueError as exc:
            raise self._fail(name, f"hardlink target {target!r}: {exc}") from None
        if norm == "" or norm == path:
            raise self._fail(name, f"hardlink target {target!r} is not a file")
        if self._types.get(norm) is EntryType.DIR:
            raise self._fail(name, f"hardlink target {target!r} is a directory")
        # A target not seen yet may live in a lower layer; the merged tree checks that.
        return norm

    def _read_chunks(self, name: str, offset: int, size: int) -> tuple[ChunkRef, ...]:
        stream = self._stream
        if stream.position != offset:
            raise StreamCorrupt(f"entry {name!r}: data not at offset {offset}")
        refs = []
        done = 0
        while done < size:
            n = min(self._chunk_size, size - done)
            data = stream.read_data(n)
            if len(data) != n:
                raise StreamCorrupt(f"entry {name!r}: truncated file data (tar stream ends)")
            sha = hashlib.sha256(data).digest()
            if self._on_chunk is not None:
                self._on_chunk(sha, data)
            refs.append(ChunkRef(offset + done, n, sha))
            done += n
        return tuple(refs)

    def _xattrs(self, name: str, pax: Mapping[str, str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for key, value in pax.items():
            if key.startswith("LIBARCHIVE.xattr."):
                # libarchive: the name is URL-encoded, the value base64.
                xname = urllib.parse.unquote_to_bytes(key[17:]).decode("utf-8", "surrogateescape")
                try:
                    padded = value + "=" * (-len(value) % 4)
                    out.setdefault(xname, base64.b64decode(padded, validate=True))
                except (binascii.Error, ValueError):
                    raise self._fail(name, f"bad base64 in PAX {key!r}") from None
        for key, value in pax.items():
            if key.startswith("SCHILY.xattr."):
                # tarfile decoded the raw value as UTF-8 with surrogateescape: undo that.
                out[key[13:]] = value.encode("utf-8", "surrogateescape")
        return dict(sorted(out.items()))


def _mtime(info: tarfile.TarInfo) -> tuple[int, int]:
    """Seconds and nanoseconds; a PAX ``mtime`` keeps its decimals exactly."""
    text = info.pax_headers.get("mtime")
    if text is not None and len(text) <= 40:
        try:
            d = Decimal(text)
            if d.is_finite():
                sec = int(d.to_integral_value(rounding="ROUND_FLOOR"))
                return sec, int((d - sec) * 1_000_000_000)
        except (InvalidOperation, ValueError):
            pass
    return int(info.mtime // 1), 0
