"""The uncompressed tar stream of a layer blob, read forward once, hashed and bounded.

`LayerStream` pulls the compressed blob from a file object, hashes it into a
`Verifier` (the layer digest), decompresses it (gzip, zstd or none), hashes
the output (the diff ID) and enforces the size and ratio limits before any of
it reaches the tar parser. It is a forward-only file for ``tarfile``: ``read``,
``tell`` and a ``seek`` that only skips ahead.

Decompression is strict where the random-access libraries are not: a stream
that ends inside a gzip member or zstd frame, bytes after the last member that
are not another member, or a bad CRC raise `StreamCorrupt`. A gzip stream is
inflated by `fusesnap.index.inflate`, which also notes its random-access
checkpoints (``checkpointer``) in the same pass. Output comes in bounded
pieces: at most 1 MiB per zlib call for gzip; python-zstandard has no such
cap, so input goes in 1 KiB at a time (zstd expands at most ~32768x, so one
call yields at most ~32 MiB).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from fusesnap.digest import Verifier
from fusesnap.index.inflate import GzipCheckpointer, StreamCorrupt, gzip_blocks

_IN_BLOCK = 256 << 10
_OUT_BLOCK = 1 << 20
_ZSTD_PIECE = 1 << 10
# Blocks (up to 1 MiB each) the decompressing thread may run ahead of the tar parser.
_AHEAD = 8


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one layer may cost to index (decompression bombs, huge headers).

    ``max_ratio`` applies once ``ratio_grace`` bytes have come out: beyond
    that, uncompressed bytes may not exceed ``max_ratio`` times the compressed
    bytes read so far. (A layer that is mostly one big file of zeros can hit
    this; raise it for such images.)
    """

    max_uncompressed: int = 64 << 30
    max_entries: int = 10_000_000
    max_ratio: int = 1000
    ratio_grace: int = 64 << 20
    max_header: int = 16 << 20


class LayerStream:
    def __init__(
        self,
        fileobj: BinaryIO,
        compression: str,
        verifier: Verifier,
        *,
        limits: Limits,
        max_read: int,
        checkpointer: GzipCheckpointer | None = None,
    ) -> None:
        self._verifier = verifier
        self._limits = limits
        self._max_read = max_read
        self._diff = hashlib.sha256()
        self._buf = bytearray()
        self._head = 0  # unread data is self._buf[self._head:]
        self._pos = 0  # stream offset of self._buf[self._head]
        self.uncompressed = 0  # bytes produced so far
        self.failure: Exception | None = None  # what ended the stream early, if anything

        def read(n: int) -> bytes:
            data = fileobj.read(n)
            verifier.update(data)
            return data

        decoders: dict[str, Callable[[Callable[[int], bytes]], Iterator[bytes]]] = {
            "gzip": lambda read: gzip_blocks(read, checkpointer),
            "zstd": _zstd_blocks,
            "none": _plain_blocks,
        }
        blocks = decoders[compression](read)

        def accounted() -> Iterator[bytes]:
            for block in blocks:
                self._account(block)
                yield block

        self._blocks = _ReadAhead(accounted())

    def close(self) -> None:
        """Stop reading the blob (the read-ahead thread ends). Idempotent."""
        self._blocks.close()

    # -- the file interface tarfile uses ---------------------------------------------------

    def read(self, n: int = -1) -> bytes:
        """Tar metadata reads (headers, PAX records, long names): at most ``max_read`` bytes."""
        if n < 0 or n > self._max_read:
            raise StreamCorrupt(f"tar metadata record of {n} bytes exceeds the limit")
        return self._take(n)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0:
            raise StreamCorrupt("layer stream only seeks to absolute offsets")
        self.skip_to(offset)
        return self._pos

    # -- for the scanner -------------------------------------------------------------------

    @property
    def position(self) -> int:
        return self._pos

    def read_data(self, n: int) -> bytes:
        """Up to ``n`` bytes of file data (fewer only at the end of the stream)."""
        return self._take(n)

    def skip_to(self, offset: int) -> None:
        if offset < self._pos:
            raise StreamCorrupt(f"tar stream goes backwards (to {offset} from {self._pos})")
        while self._pos < offset:
            if not self._take(min(offset - self._pos, _OUT_BLOCK)):
                raise StreamCorrupt(f"tar stream ends at {self._pos}, before offset {offset}")

    def at_eof(self) -> bool:
        self._fill(1)
        return len(self._buf) == self._head

    def drain(self) -> None:
        """Read (and hash) the rest: bytes after the end-of-archive marker count for the diff ID."""
        self._pos += len(self._buf) - self._head
        self._buf = bytearray()
        self._head = 0
        while (block := self._next_block()) is not None:
            self._pos += len(block)

    def diff_id_hex(self) -> str:
        return self._diff.hexdigest()

    # -- internals -------------------------------------------------------------------------

    def _take(self, n: int) -> bytes:
        self._fill(n)
        out = bytes(self._buf[self._head : self._head + n])
        self._head += len(out)
        self._pos += len(out)
        return out

    def _fill(self, need: int) -> None:
        while len(self._buf) - self._head < need:
            block = self._next_block()
            if block is None:
                return
            if self._head:
                del self._buf[: self._head]
                self._head = 0
            self._buf += block

    def _next_block(self) -> bytes | None:
        # A generator that raised is finished and would then look like a clean EOF; and
        # tarfile rewraps some exceptions. Keep the first failure and raise it every time.
        if self.failure is not None:
            raise self.failure
        try:
            block = self._blocks.next()
        except Exception as exc:
            self.failure = exc
            raise
        return block

    def _account(self, block: bytes) -> None:
        self._diff.update(block)
        self.uncompressed += len(block)
        if self.uncompressed > self._limits.max_uncompressed:
            raise StreamCorrupt(
                f"uncompressed size exceeds limit ({self._limits.max_uncompressed} bytes)"
            )
        if (
            self.uncompressed > self._limits.ratio_grace
            and self.uncompressed > self._limits.max_ratio * max(1, self._verifier.count)
        ):
            raise StreamCorrupt(
                f"compression ratio exceeds limit ({self._limits.max_ratio}:1 after "
                f"{self._limits.ratio_grace} bytes); a decompression bomb?"
            )


class _ReadAhead:
    """Runs a block iterator in a thread of its own, a few blocks ahead of the reader.

    Reading and hashing the blob, decompressing it and hashing the tar (the
    iterator) then overlap with parsing and chunking it (the reader): zlib (through
    ctypes), zstandard and hashlib release the GIL while they work. ``next`` returns
    None at the end and raises what the iterator raised; ``close`` stops the thread.
    """

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._queue: queue.Queue[bytes | Exception | None] = queue.Queue(_AHEAD)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._run, args=(blocks,), name="layer-stream", daemon=True
        )
        self._thread.start()

    def _run(self, blocks: Iterator[bytes]) -> None:
        try:
            for block in blocks:
                if not self._put(block):
                    return
            self._put(None)
        except Exception as exc:
            self._put(exc)

    def _put(self, item: bytes | Exception | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> bytes | None:
        if self._done:
            return None
        item = self._queue.get()
        if isinstance(item, Exception):
            self._done = True
            raise item
        self._done = item is None
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _zstd_blocks(read: Callable[[int], bytes]) -> Iterator[bytes]:
    dctx = zstandard.ZstdDecompressor()  # window limit: zstd's default 128 MiB
    obj: zstandard.ZstdDecompressionObj | None = None
    data = read(_IN_BLOCK)
    if not data:
        raise StreamCorrupt("empty zstd stream")
    while data:
        view = memoryview(data)
        for i in range(0, len(data), _ZSTD_PIECE):
            piece: bytes | memoryview = view[i : i + _ZSTD_PIECE]
            while piece:
                if obj is None:
                    obj = dctx.decompressobj()
                out = obj.decompress(piece)
                if out:
                    yield out
                if obj.eof:  # frames (and skippable frames) may follow one another
                    piece = obj.unused_data
                    obj = None
                else:
                    piece = b""
        data = read(_IN_BLOCK)
    if obj is not None:
        raise StreamCorrupt("truncated zstd stream")


def _plain_blocks(read: Callable[[int], bytes]) -> Iterator[bytes]:
    while data := read(_OUT_BLOCK):
        yield data
