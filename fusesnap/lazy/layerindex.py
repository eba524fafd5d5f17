"""Layer indexes: what a layer tar holds, where each file's bytes are, and their encoding.

A `LayerIndex` lists every tar entry of one layer (an `Entry`) in tar order.
A regular file's contents are a run of chunks (`ChunkRef`): byte ranges of the
*uncompressed* tar stream, each at most ``chunk_size`` long, named by the
sha256 of their bytes. The chunk store keys chunks by that digest, so identical
chunks in any layer or image are stored once. A gzip layer also carries
`GzipCheckpoints` (see `fusesnap.lazy.gzipindex`), which let any chunk be
inflated from a range of the compressed blob.

Encoded form (`encode` / `decode`), version 1::

    b"FSLI" | version:u8 | zstd( msgpack( body ) )

    body    = [layer_digest, diff_id, media_type, compression,
               compressed_size, uncompressed_size, chunk_size, [row, ...], gz, root]
    row     = [prefix_len, path_suffix, type, mode, uid, gid, mtime, mtime_nsec,
               size, linkname, devmajor, devminor, xattrs, uname, gname, chunks]
    chunks  = nil | [offset_delta, digests] | [offset_delta, digests, [length, ...]]
    gz      = nil | [spacing, window_size, [coffset, ...], [bits, ...],
                     [uoffset, ...], [window, ...]]
    root    = nil | row (the "./" entry: empty path, a dir, no chunks)

Rows are arrays, not maps. A path is stored as the number of bytes it shares
with the previous path plus the rest (tar order is mostly sorted).
Names, link targets, user names and xattr names are raw bytes (``str`` in
memory via ``surrogateescape``, as `os.fsdecode` does) because Linux names need
not be UTF-8. A file's chunks are contiguous in the tar stream, so a row keeps
only the gap between the previous file's data end and this file's data start,
the concatenated 32-byte digests, and the lengths only when they are not the
fixed ``chunk_size`` split. The version byte sits outside the zstd frame so
that a reader can refuse a newer format before decompressing anything.

`decode` treats its input as untrusted (an index may come from a registry):
every field is type-checked and every path re-validated.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zstandard

from fusesnap.digest import Digest
from fusesnap.errors import InvalidDigestError, LayerError

FORMAT_VERSION = 1
MAGIC = b"FSLI"
DEFAULT_CHUNK_SIZE = 1 << 20
SHA256_SIZE = 32

# An encoded index is tiny next to its layer; refuse to inflate a hostile one without bound.
_MAX_DECODED = 1 << 30
_ZSTD_LEVEL = 9


class EntryType(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


_TYPE_CODES = {t: i for i, t in enumerate(EntryType)}
_TYPES = tuple(EntryType)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """``length`` bytes at ``offset`` of the uncompressed tar stream, whose sha256 is ``digest``."""

    offset: int
    length: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar entry. ``path`` is normalized: relative, no ``.``/``..``/empty components."""

    path: str
    type: EntryType
    mode: int = 0o644  # permission bits with setuid/setgid/sticky (& 0o7777)
    uid: int = 0
    gid: int = 0
    size: int = 0  # regular files only; 0 for every other type
    mtime: int = 0  # seconds (floor)
    mtime_nsec: int = 0  # sub-second part when a PAX header gave one
    linkname: str = ""  # symlink target as written; hardlink target normalized like path
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict, hash=False)
    uname: str = ""
    gname: str = ""
    chunks: tuple[ChunkRef, ...] = ()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A place where inflation of a gzip stream can resume (zran's access point).

    ``coffset`` is the byte offset in the compressed blob, ``bits`` (0-7) how
    many bits of the byte before it still belong to the next deflate block,
    ``uoffset`` the matching offset in the uncompressed stream, and ``window``
    the 32 KiB of uncompressed data before it (empty at a gzip member start).
    """

    coffset: int
    bits: int
    uoffset: int
    window: bytes


@dataclass(frozen=True, slots=True)
class GzipCheckpoints:
    """Random-access checkpoints of one gzip blob, sorted by offset."""

    compressed_size: int
    uncompressed_size: int
    spacing: int
    window_size: int
    points: tuple[Checkpoint, ...]


@dataclass(frozen=True, slots=True)
class LayerIndex:
    """Everything fusesnap needs to serve a layer without unpacking it.

    ``layer_digest`` names the blob as the registry stores it (compressed);
    ``diff_id`` is the sha256 of the uncompressed tar (the image config's
    ``rootfs.diff_ids``). ``entries`` are in tar order; a path may repeat, and
    then the later entry wins (`by_path`). The root never is an entry: if the
    layer has a ``./`` entry, its attributes are ``root`` (path ``""``).
    """

    layer_digest: Digest
    diff_id: Digest
    media_type: str
    compression: str
    compressed_size: int
    uncompressed_size: int
    chunk_size: int
    entries: tuple[Entry, ...]
    checkpoints: GzipCheckpoints | None = None
    root: Entry | None = None
    version: int = FORMAT_VERSION
    _by_path: dict[str, Entry] | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    @property
    def by_path(self) -> Mapping[str, Entry]:
        """Entries by normalized path (built on first use)."""
        if self._by_path is None:
            object.__setattr__(self, "_by_path", {e.path: e for e in self.entries})
        assert self._by_path is not None
        return self._by_path

    @property
    def entry_count(self) -> int:
        return len(self.entries)

    def chunk_digests(self) -> frozenset[bytes]:
        """The raw sha256 of every chunk this layer references (what GC must keep)."""
        return frozenset(c.digest for e in self.entries for c in e.chunks)


# -- paths ---------------------------------------------------------------------------------


def normalize_path(name: str) -> str:
    """``./a//b/`` -> ``a/b``; ``""`` for the root. Raise `ValueError` (the reason) if unsafe.

    Unsafe: empty, contains NUL, or has a ``..`` component anywhere (even
    ``a/../b``: with a symlink at ``a`` it need not stay inside the tree).
    """
    if not name:
        raise ValueError("empty name")
    if "\0" in name:
        raise ValueError("name contains NUL")
    parts = [p for p in name.split("/") if p and p != "."]
    if ".." in parts:
        raise ValueError("path escapes the layer root")
    return "/".join(parts)


def _fs(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _bin(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


# -- encode --------------------------------------------------------------------------------


def encode(index: LayerIndex) -> bytes:
    """Serialize ``index`` (see the module docstring for the format).

    Raise `ValueError` if a file's chunks are not contiguous ranges that
    cover it, in tar order (the format relies on that).
    """
    rows: list[list[Any]] = []
    prev_path = b""
    prev_end = 0
    for e in index.entries:
        path = _bin(e.path)
        plen = _common_prefix(prev_path, path)
        prev_path = path
        chunks: list[Any] | None = None
        if e.chunks:
            start = e.chunks[0].offset
            _check_chunks(e, prev_end)
            chunks = [start - prev_end, b"".join(c.digest for c in e.chunks)]
            if not _is_fixed_split(e, index.chunk_size):
                chunks.append([c.length for c in e.chunks])
            prev_end = e.chunks[-1].offset + e.chunks[-1].length
        rows.append(_row(e, plen, path[plen:], chunks))
    gz = None
    if index.checkpoints is not None:
        cp = index.checkpoints
        gz = [
            cp.spacing, cp.window_size, [p.coffset for p in cp.points],
            [p.bits for p in cp.points], [p.uoffset for p in cp.points],
            [p.window for p in cp.points],
        ]  # fmt: skip
    body = [
        str(index.layer_digest), str(index.diff_id), index.media_type, index.compression,
        index.compressed_size, index.uncompressed_size, index.chunk_size, rows, gz,
        None if index.root is None else _row(index.root, 0, b"", None),
    ]  # fmt: skip
    packed = msgpack.packb(body, use_bin_type=True)
    frame = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(packed)
    return MAGIC + bytes([FORMAT_VERSION]) + frame


def _row(e: Entry, plen: int, suffix: bytes, chunks: list[Any] | None) -> list[Any]:
    xattrs = None
    if e.xattrs:
        xattrs = [x for k in sorted(e.xattrs) for x in (_bin(k), bytes(e.xattrs[k]))]
    return [
        plen, suffix, _TYPE_CODES[e.type], e.mode, e.uid, e.gid, e.mtime, e.mtime_nsec, e.size,
        _bin(e.linkname), e.devmajor, e.devminor, xattrs, _bin(e.uname), _bin(e.gname), chunks,
    ]  # fmt: skip


def _check_chunks(e: Entry, prev_end: int) -> None:
    off = e.chunks[0].offset
    if off < prev_end:
        raise ValueError(f"entry {e.path!r}: chunks overlap the previous file's (not in tar order)")
    for c in e.chunks:
        if c.offset != off or c.length <= 0 or len(c.digest) != SHA256_SIZE:
            raise ValueError(f"entry {e.path!r}: chunks are not contiguous sha256 ranges")
        off += c.length
    if off - e.chunks[0].offset != e.size:
        raise ValueError(f"entry {e.path!r}: chunks do not cover the file size")


def _common_prefix(a: bytes, b: bytes) -> int:
    return min(len(os.path.commonprefix([a, b])), 255)  # noqa: RUF071 - bytes, not paths


def _is_fixed_split(e: Entry, chunk_size: int) -> bool:
    want = _split(e.chunks[0].offset, e.size, chunk_size)
    return [(c.offset, c.length) for c in e.chunks] == want


def _split(offset: int, size: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(offset + i, min(chunk_size, size - i)) for i in range(0, size, chunk_size)]


# -- decode --------------------------------------------------------------------------------


class _Corrupt(Exception):
    pass


def decode(data: bytes) -> LayerIndex:
    """Parse what `encode` wrote; raise `LayerError` if it is corrupt or from a newer fusesnap."""
    if len(data) < len(MAGIC) + 1 or not data.startswith(MAGIC):
        raise LayerError("layer index: not a fusesnap layer index (bad magic)")
    version = data[len(MAGIC)]
    if not 1 <= version <= FORMAT_VERSION:
        raise LayerError(
            f"layer index: format version {version} is newer than this fusesnap reads "
            f"({FORMAT_VERSION}); upgrade fusesnap or rebuild the index"
            if version > FORMAT_VERSION
            else f"layer index: unknown format version {version}"
        )
    try:
        raw = zstandard.ZstdDecompressor().decompress(
            data[len(MAGIC) + 1 :], max_output_size=_MAX_DECODED
        )
        body = msgpack.unpackb(raw, raw=False, use_list=True)
        return _decode_body(body)
    except (zstandard.ZstdError, ValueError, TypeError, _Corrupt) as exc:
        # msgpack's errors derive from ValueError; InvalidDigestError too.
        raise LayerError(f"layer index: corrupt ({exc})") from None


def _decode_body(body: Any) -> LayerIndex:
    f = _Fields(body, 10, "index")
    layer_digest, diff_id = f.digest(), f.digest()
    media_type, compression = f.text(), f.text()
    compressed_size, uncompressed_size, chunk_size = f.uint(), f.uint(), f.uint()
    if chunk_size == 0:
        raise _Corrupt("chunk size is 0")
    rows, gz, raw_root = f.array(), f.any(), f.any()
    checkpoints = None
    if gz is not None:
        checkpoints = _decode_checkpoints(gz, compressed_size, uncompressed_size)
    root = None if raw_root is None else _decode_row(raw_root, b"", 0, chunk_size, -1)[0]
    entries: list[Entry] = []
    prev_path = b""
    prev_end = 0
    for i, row in enumerate(rows):
        entry, prev_path, prev_end = _decode_row(row, prev_path, prev_end, chunk_size, i)
        if prev_end > uncompressed_size:
            raise _Corrupt(f"entry {i}: data beyond the end of the layer")
        entries.append(entry)
    return LayerIndex(
        layer_digest=layer_digest,
        diff_id=diff_id,
        media_type=media_type,
        compression=compression,
        compressed_size=compressed_size,
        uncompressed_size=uncompressed_size,
        chunk_size=chunk_size,
        entries=tuple(entries),
        checkpoints=checkpoints,
        root=root,
    )


def _decode_row(
    row: Any, prev_path: bytes, prev_end: int, chunk_size: int, i: int
) -> tuple[Entry, bytes, int]:
    f = _Fields(row, 16, f"entry {i}")
    plen, suffix = f.uint(), f.blob()
    if plen > len(prev_path):
        raise _Corrupt(f"entry {i}: bad path prefix")
    path_b = prev_path[:plen] + suffix
    path = _fs(path_b)
    try:
        ok = path == "" if i < 0 else normalize_path(path) == path != ""  # i < 0: the root
    except ValueError:
        ok = False
    if not ok:
        raise _Corrupt(f"entry {i}: unsafe path {path!r}")
    code = f.uint()
    if code >= len(_TYPES) or (i < 0 and _TYPES[code] is not EntryType.DIR):
        raise _Corrupt(f"entry {i}: unknown type {code}")
    etype = _TYPES[code]
    mode, uid, gid = f.uint(), f.uint(), f.uint()
    mtime, nsec, size = f.integer(), f.uint(), f.uint()
    linkname, devmajor, devminor = _fs(f.blob()), f.uint(), f.uint()
    raw_x = f.any()
    xattrs: dict[str, bytes] = {}
    if raw_x is not None:
        if not isinstance(raw_x, list) or len(raw_x) % 2:
            raise _Corrupt(f"entry {i}: bad xattrs")
        if not all(isinstance(x, bytes) for x in raw_x):
            raise _Corrupt(f"entry {i}: bad xattrs")
        xattrs = {_fs(raw_x[j]): raw_x[j + 1] for j in range(0, len(raw_x), 2)}
    uname, gname = _fs(f.blob()), _fs(f.blob())
    raw_c = f.any()
    chunks: tuple[ChunkRef, ...] = ()
    if raw_c is not None:
        if etype is not EntryType.FILE:
            raise _Corrupt(f"entry {i}: chunks on a {etype}")
        chunks = _decode_chunks(raw_c, prev_end, size, chunk_size, i)
        prev_end = chunks[-1].offset + chunks[-1].length
    elif etype is EntryType.FILE and size:
        raise _Corrupt(f"entry {i}: file without chunks")
    if mode > 0o7777 or nsec >= 10**9:
        raise _Corrupt(f"entry {i}: bad mode or mtime")
    entry = Entry(
        path, etype, mode, uid, gid, size, mtime, nsec, linkname, devmajor, devminor,
        xattrs, uname, gname, chunks,
    )  # fmt: skip
    return entry, path_b, prev_end


def _decode_chunks(
    raw: Any, prev_end: int, size: int, chunk_size: int, i: int
) -> tuple[ChunkRef, ...]:
    if not isinstance(raw, list) or len(raw) not in (2, 3):
        raise _Corrupt(f"entry {i}: bad chunk list")
    f = _Fields(raw, len(raw), f"entry {i} chunks")
    start, digests = prev_end + f.uint(), f.blob()
    if len(digests) % SHA256_SIZE:
        raise _Corrupt(f"entry {i}: bad chunk digests")
    if len(raw) == 2:
        spans = _split(start, size, chunk_size)
    else:
        lengths = f.array()
        spans, off = [], start
        for n in lengths:
            if not isinstance(n, int) or n <= 0:
                raise _Corrupt(f"entry {i}: bad chunk length")
            spans.append((off, n))
            off += n
        if off - start != size:
            raise _Corrupt(f"entry {i}: chunk lengths do not add up to the file size")
    if not spans or len(spans) * SHA256_SIZE != len(digests):
        raise _Corrupt(f"entry {i}: chunk count does not match the file size")
    return tuple(
        ChunkRef(off, n, digests[j * SHA256_SIZE : (j + 1) * SHA256_SIZE])
        for j, (off, n) in enumerate(spans)
    )


def _decode_checkpoints(raw: Any, csize: int, usize: int) -> GzipCheckpoints:
    f = _Fields(raw, 6, "checkpoints")
    spacing, window_size = f.uint(), f.uint()
    coffs, bits, uoffs, windows = f.array(), f.array(), f.array(), f.array()
    if not len(coffs) == len(bits) == len(uoffs) == len(windows):
        raise _Corrupt("checkpoints: columns differ in length")
    points = []
    last_c, last_u = -1, -1
    for c, b, u, w in zip(coffs, bits, uoffs, windows, strict=True):
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (c, b, u)):
            raise _Corrupt("checkpoints: non-integer offset")
        if not isinstance(w, bytes) or len(w) not in (0, window_size) or not 0 <= b <= 7:
            raise _Corrupt("checkpoints: bad window or bit offset")
        if c < last_c or u <= last_u or c > csize or u > usize:
            raise _Corrupt("checkpoints: offsets out of order or out of range")
        last_c, last_u = c, u
        points.append(Checkpoint(c, b, u, w))
    return GzipCheckpoints(csize, usize, spacing, window_size, tuple(points))


class _Fields:
    """Pull typed fields off one msgpack array, naming the record in errors."""

    def __init__(self, value: Any, n: int, what: str) -> None:
        if not isinstance(value, list) or len(value) != n:
            raise _Corrupt(f"{what}: want an array of {n}")
        self._it = iter(value)
        self._what = what

    def any(self) -> Any:
        return next(self._it)

    def integer(self) -> int:
        v = next(self._it)
        if not isinstance(v, int) or isinstance(v, bool):
            raise _Corrupt(f"{self._what}: want an integer, got {type(v).__name__}")
        return v

    def uint(self) -> int:
        v = self.integer()
        if v < 0:
            raise _Corrupt(f"{self._what}: negative value")
        return v

    def blob(self) -> bytes:
        v = next(self._it)
        if not isinstance(v, bytes):
            raise _Corrupt(f"{self._what}: want bytes, got {type(v).__name__}")
        return v

    def text(self) -> str:
        v = next(self._it)
        if not isinstance(v, str) or not _PRINTABLE.match(v):
            raise _Corrupt(f"{self._what}: want a short printable string")
        return v

    def array(self) -> list[Any]:
        v = next(self._it)
        if not isinstance(v, list):
            raise _Corrupt(f"{self._what}: want an array")
        return v

    def digest(self) -> Digest:
        try:
            return Digest(self.text())
        except InvalidDigestError as exc:
            raise _Corrupt(str(exc)) from None


_PRINTABLE = re.compile(r"^[\x20-\x7e]{0,255}$")
