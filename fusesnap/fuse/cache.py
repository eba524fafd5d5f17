"""The chunk cache a mount reads through: an in-memory LRU of chunk pieces in front of a
chunk reader.

Chunks are up to 1 MiB, but the store keeps each as 64 KiB frames it can decode one by
one, and the kernel asks for 4 KiB-128 KiB at a time. So the cache holds *pieces* of
chunks (`PIECE_SIZE`, the store's frame size), bounded by their total bytes
(`DEFAULT_MAX_BYTES`): a random 4 KiB read costs one piece, a sequential reader gets
the whole chunk loaded at once by the read-ahead below. A missing range of a chunk is
loaded once, however many requests want it at the same time::

    read(entry, off, size) ─> chunk_slices ─> per chunk: its pieces ─┬─ LRU hit
                                                                     ├─ join a load in flight
                                                                     └─ load(digest, start, end)

A load returns checked bytes from a piece boundary that cover what was asked (the
store decodes only the frames that hold them; an older stored chunk, or a fetched
one, comes whole); every whole piece in it is kept.

Sequential readers: a read at offset 0, or one that continues where the previous
read of the same file ended (give or take the kernel's readahead reordering), loads
the rest of its chunk at once; one that continues also hints the chunks of the next
`PREFETCH_BYTES` of that file to `run_prefetch`'s workers, which load them whole, so
a cold ``cat`` finds the next chunk loaded (or loading) instead of waiting for it.
Random reads load only their pieces and prefetch nothing.

Concurrency: `ChunkCache` lives on one trio loop; only the load runs elsewhere (a
worker thread, or the fetcher), so the LRU needs no lock. A failed load is not
cached: the requests that waited for it get its error, the next request tries again.

Cancellation: a load, once started, runs to its end (the thread cannot be
abandoned mid-transaction); a cancelled waiter just stops waiting.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from fusesnap.blocking import run_read
from fusesnap.errors import LayerError
from fusesnap.fs import chunk_slices, chunk_span
from fusesnap.groups import first_error
from fusesnap.index import ChunkRef, Entry

__all__ = [
    "DEFAULT_MAX_BYTES",
    "PIECE_SIZE",
    "PREFETCH_BYTES",
    "CacheStats",
    "ChunkCache",
    "ChunkRanges",
    "LoadRange",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 16 << 20
PIECE_SIZE = 64 << 10
PREFETCH_BYTES = 8 << 20
# How far a read may start from where the last one ended and still count as sequential:
# the kernel sends readahead requests in parallel, so they arrive slightly out of order.
_SEQUENTIAL_SLACK = 2 << 20
_STREAMS_MAX = 256
_HINTS_MAX = 64

LoadRange = Callable[[bytes, int, int], Awaitable[tuple[int, bytes]]]
"""``(digest, start, end) -> (lo, data)``: checked bytes of the chunk from ``lo <= start``
covering ``[start, end)`` (up to the chunk's end); raise if it cannot be had."""


class ChunkRanges(Protocol):
    """A blocking chunk reader (`fusesnap.store.ChunkStore`): `LoadRange`'s contract."""

    def read(self, digest: bytes, start: int, end: int) -> tuple[int, bytes]: ...


@dataclass(slots=True)
class CacheStats:
    """Counters of one `ChunkCache` (a snapshot is ``dataclasses.asdict``-able). A
    *lookup* is the part of one chunk that one read needs."""

    hits: int = 0  # lookups served from memory
    misses: int = 0  # loads started by reads
    joined: int = 0  # lookups that waited for a load another request (or a prefetch) started
    prefetched: int = 0  # loads started ahead of sequential readers
    loaded: int = 0  # loads that succeeded
    loaded_bytes: int = 0
    load_errors: int = 0
    evictions: int = 0  # pieces
    cached_pieces: int = 0
    cached_bytes: int = 0
    max_bytes: int = 0
    piece_size: int = PIECE_SIZE


class _Load:
    __slots__ = ("data", "done", "error", "lo")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.lo = 0
        self.data: bytes | None = None
        self.error: Exception | None = None


class ChunkCache:
    """Chunk pieces by (digest, piece number): memory first, then the loader.

    ``source``'s blocking `ChunkRanges.read` runs in the read pool
    (`fusesnap.blocking.run_read`), unless ``load`` (a lazy mount's fetcher) replaces
    it. ``max_bytes`` bounds the bytes kept (0 keeps nothing). ``prefetch_bytes`` is
    how far ahead of a sequential reader chunks are loaded while `run_prefetch` runs
    (0: never).
    """

    def __init__(
        self,
        source: ChunkRanges,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        prefetch_bytes: int = PREFETCH_BYTES,
        load: LoadRange | None = None,
        piece_size: int = PIECE_SIZE,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes {max_bytes}: negative")
        if piece_size < 1:
            raise ValueError(f"piece_size {piece_size}: not positive")
        self._source = source
        self._load_async = load
        self._piece = piece_size
        self._lru: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._loading: dict[tuple[bytes, int], _Load] = {}
        self._prefetch_bytes = max(prefetch_bytes, 0)
        # id(entry) -> (entry, where its last read ended); the entry keeps its id unreused.
        self._streams: OrderedDict[int, tuple[Entry, int]] = OrderedDict()
        self._hints: trio.MemorySendChannel[ChunkRef] | None = None
        self.stats = CacheStats(max_bytes=max_bytes, piece_size=piece_size)
        # Called with the digest of every chunk a `read` needs, in order (access profiles).
        self.on_access: Callable[[bytes], None] | None = None

    async def read(self, entry: Entry, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of ``entry`` at ``offset`` (short at EOF, like ``pread``);
        the chunks a read spans load concurrently."""
        slices = chunk_slices(entry, offset, size)
        if not slices:
            return b""
        if self.on_access is not None:
            for ref, _, _ in slices:
                self.on_access(ref.digest)
        # A reader from the start or going on from its last read will want the rest of the
        # chunk too: load it in one go rather than piece by piece.
        onward = self._hint_next(entry, offset, offset + size) or offset == 0
        if len(slices) == 1:
            return await self._slice(*slices[0], onward=onward)
        got: list[bytes] = [b""] * len(slices)

        async def one(i: int) -> None:
            got[i] = await self._slice(*slices[i], onward=onward)

        try:
            async with trio.open_nursery() as nursery:
                for i in range(len(slices)):
                    nursery.start_soon(one, i)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        return b"".join(got)

    async def _slice(self, ref: ChunkRef, lo: int, hi: int, *, onward: bool = False) -> bytes:
        """Bytes ``[lo, hi)`` of chunk ``ref``; ``onward``: load to the chunk's end."""
        size = self._piece
        first, last = lo // size, (hi - 1) // size
        got: dict[int, bytes] = {}
        for k in range(first, last + 1):
            data = self._lru.get((ref.digest, k))
            if data is not None:
                self._lru.move_to_end((ref.digest, k))
                got[k] = data
        counted = False
        if len(got) == last - first + 1:
            self.stats.hits += 1
        while len(got) < last - first + 1:
            todo = [k for k in range(first, last + 1) if k not in got]
            waits = [self._loading.get((ref.digest, k)) for k in todo]
            fresh = [k for k, w in zip(todo, waits, strict=True) if w is None]
            if fresh:
                counted = True
                self.stats.misses += 1
                end = (ref.length - 1) // size if onward else fresh[-1]
                load = await self._load(ref, fresh[0], end)
                got.update(self._pieces(ref, load, todo))
            for wait in waits:
                if wait is None or all(k in got for k in todo):
                    continue
                if not counted:
                    counted = True
                    self.stats.joined += 1
                await wait.done.wait()
                if wait.error is not None:
                    raise wait.error
                got.update(self._pieces(ref, wait, todo))
            # A load that ended without a result or an error (cancelled from outside)
            # leaves pieces missing: look again, and load them ourselves if nobody else does.
        if first == last:
            piece = got[first]
            base = first * size
            return piece if (lo, hi) == (base, base + len(piece)) else piece[lo - base : hi - base]
        # One copy: the ends cut as views, joined with the middle.
        parts: list[bytes | memoryview] = [got[k] for k in range(first, last + 1)]
        parts[0] = memoryview(parts[0])[lo - first * size :]
        parts[-1] = memoryview(parts[-1])[: hi - last * size]
        return b"".join(parts)

    def _pieces(self, ref: ChunkRef, load: _Load, wanted: list[int]) -> dict[int, bytes]:
        """The pieces of ``wanted`` that ``load`` holds."""
        out: dict[int, bytes] = {}
        if load.data is None:
            return out
        size, end = self._piece, load.lo + len(load.data)
        for k in wanted:
            start, stop = k * size, min((k + 1) * size, ref.length)
            if start >= load.lo and stop <= end:
                out[k] = load.data[start - load.lo : stop - load.lo]
        return out

    async def _load(self, ref: ChunkRef, first: int, last: int) -> _Load:
        """Load pieces ``first..last`` of ``ref`` (and what else the loader gives)."""
        size = self._piece
        start, end = first * size, min((last + 1) * size, ref.length)
        load = _Load()
        keys = [(ref.digest, k) for k in range(first, last + 1)]
        for key in keys:
            self._loading[key] = load
        try:
            if self._load_async is not None:
                lo, data = await self._load_async(ref.digest, start, end)
            else:
                lo, data = await run_read(self._source.read, ref.digest, start, end)
            if lo > start or lo + len(data) < end or lo + len(data) > ref.length:
                raise LayerError(
                    f"chunk sha256:{ref.digest.hex()[:12]}: got bytes [{lo}, {lo + len(data)}) "
                    f"for [{start}, {end}) of a {ref.length}-byte chunk"
                )
        except Exception as exc:
            self.stats.load_errors += 1
            load.error = exc
            raise
        else:
            load.lo, load.data = lo, data
        finally:
            for key in keys:
                if self._loading.get(key) is load:
                    del self._loading[key]
            load.done.set()
        self.stats.loaded += 1
        self.stats.loaded_bytes += len(data)
        self._keep(ref, lo, data)
        return load

    def _keep(self, ref: ChunkRef, lo: int, data: bytes) -> None:
        size, limit, end = self._piece, self.stats.max_bytes, lo + len(data)
        for k in range(-(-lo // size), -(-end // size)):
            start, stop = k * size, min((k + 1) * size, ref.length)
            if stop > end or stop - start > limit:
                continue
            key = (ref.digest, k)
            old = self._lru.pop(key, None)
            if old is not None:
                self.stats.cached_bytes -= len(old)
            piece = data if (start, stop) == (lo, end) else data[start - lo : stop - lo]
            self._lru[key] = piece
            self.stats.cached_bytes += len(piece)
        while self.stats.cached_bytes > limit:
            _, old = self._lru.popitem(last=False)
            self.stats.cached_bytes -= len(old)
            self.stats.evictions += 1
        self.stats.cached_pieces = len(self._lru)

    def _present(self, ref: ChunkRef) -> bool:
        key = (ref.digest, 0)
        return key in self._lru or key in self._loading

    def _hint_next(self, entry: Entry, offset: int, end: int) -> bool:
        """Track where reads of ``entry`` got to; if this one continues the last, hint the
        chunks of the next `PREFETCH_BYTES` to the prefetchers. Whether it continued."""
        key = id(entry)
        seen = self._streams.pop(key, None)
        sequential = (
            seen is not None and seen[0] is entry and abs(offset - seen[1]) <= _SEQUENTIAL_SLACK
        )
        self._streams[key] = (entry, end)
        if len(self._streams) > _STREAMS_MAX:
            self._streams.popitem(last=False)
        if not sequential or end >= entry.size or self._hints is None:
            return sequential
        for ref in chunk_span(entry, end, self._prefetch_bytes):
            if self._present(ref):
                continue
            try:
                self._hints.send_nowait(ref)
            except trio.WouldBlock:
                break  # the prefetchers are busy enough
        return sequential

    async def run_prefetch(
        self, *, workers: int = 4, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Load the chunks sequential readers will want next, whole, with ``workers``
        tasks, until cancelled. Without it running, reads prefetch nothing.

        Concurrency: at most ``workers`` prefetch loads at a time, so that requests
        that wait for their bytes always find worker threads free.
        """
        send, receive = trio.open_memory_channel[ChunkRef](_HINTS_MAX)
        self._hints = send
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(self._prefetcher, receive.clone())
                task_status.started()
        finally:
            self._hints = None

    async def _prefetcher(self, receive: trio.MemoryReceiveChannel[ChunkRef]) -> None:
        async with receive:
            async for ref in receive:
                if self._present(ref) or not ref.length:
                    continue
                self.stats.prefetched += 1
                try:
                    await self._load(ref, 0, (ref.length - 1) // self._piece)
                except Exception as exc:  # the reader that needs it will get the error
                    log.debug("prefetch of chunk %s: %s", ref.digest.hex()[:12], exc)
