"""How a chunk is laid out in the ``chunks`` database, and how it is read back.

A stored value is one format byte and a payload::

    0  CHUNK_RAW     the chunk as is                       (stores before v4)
    1  CHUNK_ZSTD    one zstd frame, content size in it    (stores before v4)
    2  CHUNK_FRAMES  u8 log2(frame size) | u32le chunk size
                     | per frame: u32le stored size, its 4-byte zstd checksum
                     | u32le crc32 of all that and of the chunk's digest | the frames

A `CHUNK_FRAMES` chunk is cut into `FRAME_SIZE` pieces (the last one shorter),
each its own zstd frame with its content size and a content checksum (zstd's
xxh64, ``write_checksum=True``); a frame zstd cannot shrink holds raw blocks.
The table says where each frame starts, so a 4 KiB read decodes one 64 KiB
frame, not the whole chunk. The table repeats each frame's checksum, so a
frame is bound to its place (two frames swapped fail), and its crc32 covers
the chunk's digest too, so a value under another chunk's key fails as well.

Trust. A chunk's sha256 is checked where its bytes enter the store (the
writer's `ChunkStore.put_many`, or the fetcher that verified a download).
What is stored afterwards is checked against rot by the frame checksums: a
frame that fails (bad checksum, missing checksum flag, wrong content size,
trailing bytes) makes the whole chunk corrupt (`StoreError`), never wrong
bytes; the fetcher then fetches it again, a local read gets EIO. The old
formats have no checksum of their own, so they are still checked against
their sha256 on every read, as before.

Nothing here touches LMDB; `fusesnap.store.chunks` does.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import zlib
from typing import Any

import zstandard

from fusesnap.errors import StoreError
from fusesnap.store.schema import CHUNK_FRAMES, CHUNK_RAW, CHUNK_ZSTD

__all__ = ["FRAME_SIZE", "MAX_CHUNK_SIZE", "corrupt", "decode", "encode", "name", "raw_size"]

DEFAULT_LEVEL = 3
FRAME_SHIFT = 16
FRAME_SIZE = 1 << FRAME_SHIFT  # 64 KiB: ~3% more stored bytes than one frame per chunk
# Chunks are 1 MiB by default; this only bounds what a corrupt header can make a read allocate.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
_HEAD = struct.Struct("<BBI")  # format, frame shift, chunk size
_U32 = struct.Struct("<I")

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's compressor (zstd contexts are not thread-safe)."""
    per_level: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if per_level is None:
        per_level = _local.compressors = {}
    compressor = per_level.get(level)
    if compressor is None:
        compressor = per_level[level] = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=True
        )
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def name(digest: bytes) -> str:
    """``chunk 3f2a9c01b2d4`` for messages."""
    return f"chunk {digest.hex()[:12]}"


def corrupt(digest: bytes, why: str = "digest mismatch") -> StoreError:
    return StoreError(f"{name(digest)}: corrupt in store ({why})")


def encode(data: bytes, level: int = DEFAULT_LEVEL, *, digest: bytes | None = None) -> bytes:
    """The stored form of ``data`` (`CHUNK_FRAMES`); ``digest``: its sha256, if known."""
    compress = _compressor(level).compress
    view = memoryview(data)
    frames = [compress(view[i : i + FRAME_SIZE]) for i in range(0, len(data), FRAME_SIZE)]
    table = _HEAD.pack(CHUNK_FRAMES, FRAME_SHIFT, len(data)) + b"".join(
        _U32.pack(len(f)) + f[-4:] for f in frames
    )
    digest = hashlib.sha256(data).digest() if digest is None else digest
    return b"".join((table, _U32.pack(zlib.crc32(digest, zlib.crc32(table))), *frames))


class _Frames:
    """The table of a `CHUNK_FRAMES` value: where each frame is, and what it holds."""

    __slots__ = ("checksums", "frame_size", "size", "starts")

    def __init__(self, digest: bytes, value: Any) -> None:
        if len(value) < _HEAD.size + _U32.size:
            raise corrupt(digest, "short header")
        _fmt, shift, self.size = _HEAD.unpack_from(value)
        if not 12 <= shift <= 26 or self.size > MAX_CHUNK_SIZE:
            raise corrupt(digest, "bad header")
        self.frame_size = 1 << shift
        count = -(-self.size // self.frame_size)
        end = _HEAD.size + 8 * count
        if len(value) < end + _U32.size:
            raise corrupt(digest, "short frame table")
        if zlib.crc32(digest, zlib.crc32(value[:end])) != _U32.unpack_from(value, end)[0]:
            raise corrupt(digest, "frame table checksum")
        table = struct.unpack_from(f"<{2 * count}I", value, _HEAD.size)
        self.checksums = table[1::2]
        self.starts = [end + _U32.size]
        for length in table[::2]:
            self.starts.append(self.starts[-1] + length)
        if self.starts[-1] != len(value):
            raise corrupt(digest, "frame table does not fit the value")


def _frame(digest: bytes, value: Any, frames: _Frames, k: int) -> bytes:
    """Frame ``k`` decoded and checked against its zstd checksum and expected size."""
    want = min(frames.frame_size, frames.size - k * frames.frame_size)
    frame = memoryview(value)[frames.starts[k] : frames.starts[k + 1]]
    try:
        params = zstandard.get_frame_parameters(frame)
        if not params.has_checksum or params.content_size != want:
            raise corrupt(digest, f"frame {k}: header")
        if len(frame) < 4 or _U32.unpack_from(frame, len(frame) - 4)[0] != frames.checksums[k]:
            raise corrupt(digest, f"frame {k}: not the one the table names")
        reader = _decompressor().decompressobj()
        data = reader.decompress(frame)
        # One whole frame exactly: bytes after it would be unchecked.
        if not reader.eof or reader.unused_data or len(data) != want:
            raise corrupt(digest, f"frame {k}: length")
    except zstandard.ZstdError:
        raise corrupt(digest, f"frame {k}: checksum") from None
    return data


def decode_range(digest: bytes, value: Any, start: int, end: int) -> tuple[int, bytes]:
    """``(lo, data)``: checked bytes of the chunk from ``lo <= start`` that cover
    ``[start, end)`` (up to the chunk's end). The old formats give the whole chunk,
    sha256-checked; `CHUNK_FRAMES` decodes only the frames that hold the range."""
    if not len(value) or value[0] != CHUNK_FRAMES:
        return 0, decode(digest, value)
    frames = _Frames(digest, value)
    if frames.size == 0:
        return 0, b""
    start = max(start, 0)
    first = min(start, frames.size - 1) // frames.frame_size
    last = (max(min(end, frames.size), start + 1) - 1) // frames.frame_size
    parts = [_frame(digest, value, frames, k) for k in range(first, last + 1)]
    return first * frames.frame_size, parts[0] if len(parts) == 1 else b"".join(parts)


def decode(digest: bytes, value: Any) -> bytes:
    """The whole chunk from its stored form (bytes or a buffer), checked."""
    fmt = value[0] if len(value) else None
    if fmt == CHUNK_FRAMES:
        frames = _Frames(digest, value)
        count = len(frames.starts) - 1
        return b"".join(_frame(digest, value, frames, k) for k in range(count))
    payload = memoryview(value)[1:]
    if fmt == CHUNK_RAW:
        data = bytes(payload)
    elif fmt == CHUNK_ZSTD:
        try:
            size = zstandard.frame_content_size(payload)
            if not 0 <= size <= MAX_CHUNK_SIZE:
                raise corrupt(digest)
            data = _decompressor().decompress(payload)
        except zstandard.ZstdError:
            raise corrupt(digest) from None
    else:
        raise corrupt(digest, f"unknown format {fmt}")
    if hashlib.sha256(data).digest() != digest:
        raise corrupt(digest)
    return data


def raw_size(value: Any) -> int:
    """The uncompressed size recorded in a stored value (0 if unreadable), without
    decompressing."""
    if not len(value):
        return 0
    fmt = value[0]
    if fmt == CHUNK_RAW:
        return len(value) - 1
    if fmt == CHUNK_FRAMES:
        return int(_HEAD.unpack_from(value)[2]) if len(value) >= _HEAD.size else 0
    try:
        return max(zstandard.frame_content_size(memoryview(value)[1:]), 0)
    except zstandard.ZstdError:
        return 0
