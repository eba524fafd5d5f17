"""Compressed frames: what a gzip member or zstd frame decompresses to.

One decoder for the TOC readers (`fusesnap.index.toc`) and the lazy fetcher's
span decoding (`fusesnap.lazy.spandecode`), so both read frames the same way.
"""

from __future__ import annotations

import io
import zlib

import zstandard

from fusesnap.errors import LayerError

__all__ = ["decompress_frame"]

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PIECE = 1 << 20


def decompress_frame(data: bytes, need: int, *, what: str = "frame") -> bytes:
    """The first ``need`` bytes that ``data`` (gzip members or zstd frames) decompresses to.

    Raise `LayerError` if it is neither, is corrupt, or gives fewer bytes.
    """
    if data.startswith(_GZIP_MAGIC):
        out = _gunzip(data, need, what)
    elif data.startswith(_ZSTD_MAGIC) or (
        len(data) >= 4 and data[0] & 0xF0 == 0x50 and data[1:4] == b"\x2a\x4d\x18"
    ):
        out = _unzstd(data, need, what)
    else:
        raise LayerError(f"{what}: neither a gzip member nor a zstd frame")
    if len(out) < need:
        raise LayerError(f"{what}: decompresses to {len(out)} bytes, want at least {need}")
    return out


def _gunzip(data: bytes, need: int, what: str) -> bytes:
    out = bytearray()
    rest = data
    try:
        while len(out) < need and rest:
            d = zlib.decompressobj(31)
            out += d.decompress(rest, need - len(out))
            if len(out) >= need:
                break
            if not d.eof:
                raise LayerError(f"{what}: gzip member is truncated")
            rest = d.unused_data
    except zlib.error as exc:
        raise LayerError(f"{what}: corrupt gzip data ({exc})") from None
    return bytes(out[:need])


def _unzstd(data: bytes, need: int, what: str) -> bytes:
    out = bytearray()
    try:
        # A fresh context per call: zstd contexts are not shared between threads.
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data), read_across_frames=True
        )
        with reader:
            while len(out) < need:
                piece = reader.read(min(_PIECE, need - len(out)))
                if not piece:
                    break
                out += piece
    except zstandard.ZstdError as exc:
        raise LayerError(f"{what}: corrupt zstd data ({exc})") from None
    return bytes(out)
