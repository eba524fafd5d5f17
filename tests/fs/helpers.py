"""Hand-made layer indexes for the merged-tree tests, and an in-memory chunk source."""

from __future__ import annotations

import hashlib
import itertools

from fusesnap.digest import Digest
from fusesnap.errors import NotFoundError
from fusesnap.index import ChunkRef, Entry, EntryType, LayerIndex

MTIME = 1_700_000_000
_offsets = itertools.count(0, 1 << 30)  # each file its own (fake) place in a tar stream


class MemoryChunks:
    """A `ChunkSource` (and `ChunkRanges`) over a dict; records which digests were asked
    for. With ``frame``, `read` gives only the ``frame``-sized pieces a range needs (as
    the store does), else the whole chunk (as an older store's chunk or a fetch)."""

    def __init__(self, *, frame: int | None = None) -> None:
        self.data: dict[bytes, bytes] = {}
        self.asked: list[bytes] = []
        self.frame = frame
        self.ranges: list[tuple[bytes, int, int]] = []  # what `read` gave: digest, lo, hi

    def put(self, data: bytes) -> bytes:
        sha = hashlib.sha256(data).digest()
        self.data[sha] = data
        return sha

    def add(self, sha: bytes, data: bytes) -> None:
        """`build_index`'s ``on_chunk``."""
        self.data[sha] = data

    def get(self, digest: bytes) -> bytes:
        self.asked.append(digest)
        try:
            return self.data[digest]
        except KeyError:
            raise NotFoundError(f"chunk {digest.hex()[:12]}: not found") from None

    def read(self, digest: bytes, start: int, end: int) -> tuple[int, bytes]:
        data = self.get(digest)
        lo, hi = 0, len(data)
        if self.frame is not None:
            lo = start // self.frame * self.frame
            hi = min(-(-end // self.frame) * self.frame, len(data))
        self.ranges.append((digest, lo, hi))
        return lo, data[lo:hi]


CHUNKS = MemoryChunks()


def file(
    path: str,
    data: bytes | str = b"",
    *,
    chunk: int = 1 << 20,
    mode: int = 0o644,
    source: MemoryChunks = CHUNKS,
    **kw: object,
) -> Entry:
    raw = data.encode() if isinstance(data, str) else data
    start = next(_offsets)
    refs = tuple(
        ChunkRef(start + i, len(piece), source.put(piece))
        for i in range(0, len(raw), chunk)
        for piece in [raw[i : i + chunk]]
    )
    return Entry(path, EntryType.FILE, mode, size=len(raw), mtime=MTIME, chunks=refs, **kw)  # type: ignore[arg-type]


def directory(path: str, *, mode: int = 0o755, **kw: object) -> Entry:
    return Entry(path, EntryType.DIR, mode, mtime=MTIME, **kw)  # type: ignore[arg-type]


def symlink(path: str, target: str) -> Entry:
    return Entry(path, EntryType.SYMLINK, 0o777, mtime=MTIME, linkname=target)


def hardlink(path: str, target: str) -> Entry:
    return Entry(path, EntryType.HARDLINK, 0o644, mtime=MTIME, linkname=target)


def whiteout(path: str) -> Entry:
    parent, _, name = path.rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", mode=0)


def opaque(parent: str) -> Entry:
    return file(f"{parent}/.wh..wh..opq" if parent else ".wh..wh..opq", mode=0)


_digests = itertools.count(1)


def layer(*entries: Entry) -> LayerIndex:
    digest = Digest(f"sha256:{next(_digests):064x}")
    return LayerIndex(
        layer_digest=digest,
        diff_id=digest,
        media_type="application/vnd.oci.image.layer.v1.tar",
        compression="none",
        compressed_size=0,
        uncompressed_size=0,
        chunk_size=1 << 20,
        entries=entries,
    )
