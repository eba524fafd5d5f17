"""Inflate a gzip blob once, strictly, and note its random-access checkpoints on the way.

`gzip_blocks` is the gzip decoder of `fusesnap.index.stream`: it yields the
uncompressed stream in pieces and, as it goes, records a `Checkpoint` (zran's
access point, `fusesnap.index.gzipindex`) at the first deflate block boundary
after every ``spacing`` bytes of output, plus one at the start of each gzip
member and one at the end. The points are those indexed_gzip's
``build_full_index`` finds, so one pass over a layer gives its bytes, its
diff ID and its checkpoints; a second pass over the blob is not needed.

Python's ``zlib`` does not say where deflate blocks end, so this calls the
system's zlib through ``ctypes`` with ``Z_BLOCK``, as zran does. ctypes
releases the GIL during each call, so inflating overlaps with hashing and tar
parsing in other threads. zlib checks each member's CRC and length; a stream
that ends inside a member, garbage after the last member or a corrupt deflate
stream raise `StreamCorrupt`.
"""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Callable, Iterator

from fusesnap.index.libz import (
    END_OF_BLOCK,
    LAST_BLOCK,
    WINDOW_SIZE,
    Z_BLOCK,
    Z_BUF_ERROR,
    Z_OK,
    Z_STREAM_END,
    ZStream,
    libz,
)
from fusesnap.index.model import Checkpoint

_IN_BLOCK = 256 << 10
_OUT_BLOCK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 31  # a gzip wrapper, a 32 KiB window


class StreamCorrupt(Exception):
    """The blob is not a valid (or an acceptable) compressed tar stream; tarindex maps it."""


class _Window:
    """The last `WINDOW_SIZE` bytes of output, kept as the pieces that hold them."""

    def __init__(self) -> None:
        self._pieces: deque[bytes] = deque()
        self._size = 0

    def add(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._size += len(piece)
        while self._size - len(self._pieces[0]) >= WINDOW_SIZE:
            self._size -= len(self._pieces.popleft())

    def get(self) -> bytes:
        # zran's window buffer starts zeroed: a point early in the stream has zeros first.
        return b"".join(self._pieces)[-WINDOW_SIZE:].rjust(WINDOW_SIZE, b"\0")


class GzipCheckpointer:
    """Where `gzip_blocks` puts the checkpoints it finds (``points``, in order);
    ``on_window(sha256, window)`` is called for each window as its point is found."""

    def __init__(
        self, spacing: int, on_window: Callable[[bytes, bytes], None] | None = None
    ) -> None:
        if spacing < WINDOW_SIZE:
            raise ValueError(f"spacing must be at least {WINDOW_SIZE}")
        self.spacing = spacing
        self.points: list[Checkpoint] = []
        self._last = 0
        self._on_window = on_window

    def member_start(self, coffset: int, uoffset: int) -> None:
        self.points.append(Checkpoint(coffset=coffset, bits=0, uoffset=uoffset, window=b""))
        self._last = uoffset

    def block_end(self, coffset: int, bits: int, uoffset: int, window: _Window) -> None:
        if uoffset - self._last >= self.spacing:
            self.end(coffset, bits, uoffset, window)

    def end(self, coffset: int, bits: int, uoffset: int, window: _Window) -> None:
        point = Checkpoint(coffset, bits, uoffset, window.get())
        self.points.append(point)
        self._last = uoffset
        if self._on_window is not None:
            self._on_window(point.digest, point.window)


def gzip_blocks(
    read: Callable[[int], bytes], checkpointer: GzipCheckpointer | None = None
) -> Iterator[bytes]:
    """The uncompressed stream of the gzip blob that ``read(n)`` returns, in pieces of at
    most 1 MiB; ``checkpointer`` (if given) gets the blob's checkpoints."""
    lib = libz()
    strm = ZStream()
    init = lib.inflateInit2_(
        ctypes.byref(strm), _GZIP_WBITS, lib.zlibVersion(), ctypes.sizeof(strm)
    )
    if init != Z_OK:
        raise MemoryError("zlib inflateInit2 failed")
    out = ctypes.create_string_buffer(_OUT_BLOCK)
    out_addr = ctypes.addressof(out)
    window = _Window()
    try:
        data = read(_IN_BLOCK)
        if not data:
            raise StreamCorrupt("empty gzip stream")
        in_base = out_base = 0  # where the current member starts, compressed and not
        at_start = True  # no deflate byte of the member read yet
        strm.next_in = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)
        strm.avail_in = len(data)
        while True:
            if strm.avail_in == 0:
                data = read(_IN_BLOCK)
                if not data:
                    raise StreamCorrupt("truncated gzip stream")
                strm.next_in = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)
                strm.avail_in = len(data)
            strm.next_out = out_addr
            strm.avail_out = _OUT_BLOCK
            ret = lib.inflate(ctypes.byref(strm), Z_BLOCK)
            n = _OUT_BLOCK - strm.avail_out
            if n:
                piece = ctypes.string_at(out_addr, n)
                window.add(piece)
                yield piece
            if ret == Z_OK:
                if strm.data_type & END_OF_BLOCK and checkpointer is not None:
                    coffset, uoffset = in_base + strm.total_in, out_base + strm.total_out
                    if at_start:
                        checkpointer.member_start(coffset, uoffset)
                    elif not strm.data_type & LAST_BLOCK:
                        checkpointer.block_end(coffset, strm.data_type & 7, uoffset, window)
                at_start = False if strm.data_type & END_OF_BLOCK else at_start
                continue
            if ret == Z_BUF_ERROR and strm.avail_in == 0:
                continue  # needs more input
            if ret != Z_STREAM_END:
                msg = strm.msg.decode(errors="replace") if strm.msg else f"zlib error {ret}"
                raise StreamCorrupt(f"corrupt gzip stream ({msg})")
            # The end of a member (CRC and length checked). Another may follow (pigz,
            # appends); anything else after one is garbage.
            in_base += strm.total_in
            out_base += strm.total_out
            rest = data[len(data) - strm.avail_in :]
            while len(rest) < len(_GZIP_MAGIC) and (more := read(_IN_BLOCK)):
                rest += more
            if not rest:
                if checkpointer is not None:
                    checkpointer.end(in_base, strm.data_type & 7, out_base, window)
                return
            if not rest.startswith(_GZIP_MAGIC):
                raise StreamCorrupt("garbage after the end of the gzip stream")
            data = rest
            strm.next_in = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)
            strm.avail_in = len(data)
            lib.inflateReset(ctypes.byref(strm))
            at_start = True
    finally:
        lib.inflateEnd(ctypes.byref(strm))
