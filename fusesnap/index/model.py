"""Layer indexes: what a layer tar holds and where each file's bytes are.

A `LayerIndex` lists every tar entry of one layer (an `Entry`) in tar order.
A regular file's contents are a run of chunks (`ChunkRef`), each named by the
sha256 of its *uncompressed* bytes. The chunk store keys chunks by that
digest, so identical chunks in any layer, image or layer format are stored
once. Where a chunk's bytes live depends on the layer's format:

- tar-stream layers (``compression`` ``gzip``, ``zstd``, ``none``; indexes
  built by streaming the layer, `fusesnap.index.tar`): a chunk is a byte
  range of the uncompressed tar stream (``ChunkRef.offset``); a gzip layer
  also carries `GzipCheckpoints` (see `fusesnap.index.gzipindex`), which let
  any chunk be inflated from a range of the compressed blob.
- frame layers (``compression`` ``estargz`` or ``zstd:chunked``; indexes read
  from the layer's own table of contents, `fusesnap.index.estargz` and
  `fusesnap.index.zstdchunked`): a chunk names a compressed byte range of the
  blob that decompresses on its own (``ChunkRef.coffset``/``clength``/``inner``).

The encoded form (`encode` / `decode`, format version 3; versions 1 and 2
are still read) is described in `fusesnap.index.codec`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate

from fusesnap.digest import Digest
from fusesnap.errors import LayerError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "FRAME_FORMATS",
    "MAGIC",
    "Checkpoint",
    "ChunkRef",
    "Entry",
    "EntryType",
    "GzipCheckpoints",
    "LayerError",
    "LayerIndex",
    "decode",
    "encode",
    "hardlink_target",
    "is_normal_path",
    "normalize_path",
]

FORMAT_VERSION = 3
MAGIC = b"FSLI"
DEFAULT_CHUNK_SIZE = 1 << 20
SHA256_SIZE = 32
# Layer formats whose chunks are located by compressed frames (ChunkRef.coffset >= 0).
FRAME_FORMATS = ("estargz", "zstd:chunked")


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
    """``length`` bytes of a file whose sha256 is ``digest``, and where to find them.

    Tar-stream layers: ``offset`` is the chunk's offset in the uncompressed
    tar stream, and ``coffset == -1``.

    Frame layers (eStargz, zstd:chunked): the compressed bytes
    ``[coffset, coffset + clength)`` of the layer blob decompress *on their
    own* (one complete gzip member or zstd frame, or a run of them) to bytes
    whose slice ``[inner, inner + length)`` is the chunk. ``offset`` is then
    the chunk's offset in its file.
    """

    offset: int
    length: int
    digest: bytes
    coffset: int = -1
    clength: int = 0
    inner: int = 0

    @property
    def framed(self) -> bool:
        """True if the chunk is located by a compressed frame range (``coffset``)."""
        return self.coffset >= 0


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
    _starts: tuple[int, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def chunk_starts(self) -> tuple[int, ...]:
        """The file offset of each chunk (computed once); `LayerError` if the chunks'
        lengths do not add up to ``size``."""
        if self._starts is None:
            ends = tuple(accumulate(c.length for c in self.chunks))
            total = ends[-1] if ends else 0
            if total != self.size:
                raise LayerError(
                    f"file {self.path!r}: chunks hold {total} bytes, the entry says {self.size}"
                )
            object.__setattr__(self, "_starts", (0, *ends[:-1]) if ends else ())
        assert self._starts is not None
        return self._starts

    @property
    def perm(self) -> int:
        """The permission bits a reader sees: ``mode``, except 0o777 for a symlink whatever
        its header said (Linux has no symlink permissions; ``lstat`` always reports 0777)."""
        return 0o777 if self.type is EntryType.SYMLINK else self.mode


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A place where inflation of a gzip stream can resume (zran's access point).

    ``coffset`` is the byte offset in the compressed blob, ``bits`` (0-7) how
    many bits of the byte before it still belong to the next deflate block,
    ``uoffset`` the matching offset in the uncompressed stream, and ``window``
    the 32 KiB of uncompressed data before it (empty at a gzip member start).

    A window is needed only to inflate from this point, so an index need not
    carry it: ``digest`` (the window's sha256; empty when there is no window)
    names it in the chunk store, and ``wclength`` is the length of its zstd
    frame in the layer's windows blob (`GzipCheckpoints.windows_blob`), where
    it is fetched from when the store lacks it. ``window`` is then empty.
    """

    coffset: int
    bits: int
    uoffset: int
    window: bytes
    digest: bytes = b""
    wclength: int = 0

    def __post_init__(self) -> None:
        if self.window and not self.digest:
            object.__setattr__(self, "digest", hashlib.sha256(self.window).digest())

    @property
    def has_window(self) -> bool:
        return bool(self.window or self.digest)


@dataclass(frozen=True, slots=True)
class GzipCheckpoints:
    """Random-access checkpoints of one gzip blob, sorted by offset.

    ``windows_blob`` is the digest of the blob (in the image's repository, pushed
    beside an index artifact) that holds the windows the points do not carry
    inline: each one's zstd frame, in point order (`window_range`).

    ``span_digests`` (a SOCI zTOC's, `fusesnap.index.soci`): the sha256 of each span's
    compressed bytes, from point ``i``'s byte (the one before it when ``bits``) to
    point ``i + 1``'s (the last to the end of the blob). When there are any, the
    blob bytes are verified span by span before they are inflated, and the index's
    chunks are named by place, not by content (`LayerIndex.span_verified`).
    """

    compressed_size: int
    uncompressed_size: int
    spacing: int
    window_size: int
    points: tuple[Checkpoint, ...]
    windows_blob: Digest | None = None
    span_digests: tuple[bytes, ...] = ()
    _window_offsets: tuple[int, ...] | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def window_range(self, point: int) -> tuple[int, int]:
        """(offset, length) of point ``point``'s window frame in the windows blob."""
        if self._window_offsets is None:
            offs, off = [], 0
            for p in self.points:
                offs.append(off)
                off += p.wclength
            object.__setattr__(self, "_window_offsets", tuple(offs))
        assert self._window_offsets is not None
        return self._window_offsets[point], self.points[point].wclength

    def without_windows(self) -> GzipCheckpoints:
        """The same points naming their windows by digest only (none inline)."""
        points = tuple(dataclasses.replace(p, window=b"") for p in self.points)
        return dataclasses.replace(self, points=points)

    def inline_windows(self) -> dict[bytes, bytes]:
        """The windows carried inline, by digest."""
        return {p.digest: p.window for p in self.points if p.window}

    def window_digests(self) -> frozenset[bytes]:
        return frozenset(p.digest for p in self.points if p.digest)


@dataclass(frozen=True, slots=True)
class LayerIndex:
    """Everything fusesnap needs to serve a layer without unpacking it.

    ``layer_digest`` names the blob as the registry stores it (compressed);
    ``diff_id`` is the sha256 of the uncompressed tar (the image config's
    ``rootfs.diff_ids``). ``entries`` are in tar order; a path may repeat, and
    then the later entry wins (`by_path`). The root never is an entry: if the
    layer has a ``./`` entry, its attributes are ``root`` (path ``""``).

    ``source`` says where the index came from: ``built`` (streamed from the
    layer), ``estargz`` or ``zstd:chunked`` (the layer's own TOC), ``soci`` (a
    SOCI zTOC, `span_verified`); for the last three ``diff_id`` was taken from
    the image config, not computed.
    ``prefetch`` lists the files the producer marked as likely read at start
    (eStargz's ``.prefetch.landmark``), in blob order. ``uncompressed_size``
    is 0 when the format does not say it.
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
    source: str = "built"
    prefetch: tuple[str, ...] = ()
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
        """The raw sha256 of every chunk this layer's files are made of."""
        return frozenset(c.digest for e in self.entries for c in e.chunks)

    def window_digests(self) -> frozenset[bytes]:
        """The raw sha256 of every gzip window the index names (kept in the chunk store)."""
        return frozenset() if self.checkpoints is None else self.checkpoints.window_digests()

    def span_digests(self) -> frozenset[bytes]:
        """The span digests of a span-verified index (its verified spans are kept in the
        chunk store under them)."""
        return frozenset() if self.checkpoints is None else frozenset(self.checkpoints.span_digests)

    @property
    def span_verified(self) -> bool:
        """True for an index whose gzip spans carry digests (a SOCI zTOC's): its blob is
        verified span by span, and a `ChunkRef.digest` is a name for the chunk's place in
        the layer, not the sha256 of its bytes, which are learned when its span is read."""
        return self.checkpoints is not None and bool(self.checkpoints.span_digests)

    def without_windows(self) -> LayerIndex:
        """This index with its gzip windows named by digest only (see `Checkpoint`)."""
        if self.checkpoints is None:
            return self
        return dataclasses.replace(self, checkpoints=self.checkpoints.without_windows())


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


def is_normal_path(path: str) -> bool:
    """``normalize_path(path) == path != ""`` (a safe path, already in normal form), in a
    few C-level string searches instead of a split: a decoder checks one per entry."""
    return (
        path != ""
        and "\0" not in path
        and "//" not in path
        and path[0] != "/"
        and path[-1] != "/"
        and "/./" not in (wrapped := f"/{path}/")
        and "/../" not in wrapped
    )


def hardlink_target(target: str, path: str, types: Mapping[str, EntryType]) -> str:
    """The normalized target of hardlink ``path`` as a TOC or zTOC gives it; ``types``: the
    layer's entries so far. Raise `ValueError` (the reason) if it is unsafe or names no file.

    As for a tar scan, an absolute target names a path in the layer; ``..`` would leave it.
    """
    try:
        norm = normalize_path(target)
    except ValueError as exc:
        raise ValueError(f"hardlink target {target!r}: {exc}") from None
    if norm == "" or norm == path or types.get(norm) is EntryType.DIR:
        raise ValueError(f"hardlink target {target!r} is not a file")
    return norm


# -- encoding (fusesnap.index.codec) -------------------------------------------------------


def encode(index: LayerIndex) -> bytes:
    """Serialize ``index`` (see `fusesnap.index.codec`).

    Raise `ValueError` if a file's chunks are not ranges it can represent:
    contiguous, covering the file, in tar order (tar-stream chunks) or all
    framed (frame chunks).
    """
    from fusesnap.index import codec as layercodec  # imports this module: bind late, not at import

    return layercodec.encode(index)


def decode(data: bytes) -> LayerIndex:
    """Parse what `encode` wrote (format 1 to 3); raise `LayerError` if it is corrupt or
    from a newer fusesnap. The input is treated as untrusted."""
    from fusesnap.index import codec as layercodec

    return layercodec.decode(data)
