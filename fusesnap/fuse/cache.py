"""The chunk cache a mount reads through: an in-memory LRU in front of a blocking source.

The kernel asks for at most 128 KiB-1 MiB per read while chunks are up to 1 MiB
and cost a decompression and a sha256 each time the store gives one out, so a
sequential read would otherwise load every chunk about eight times. The cache
keeps recently used chunks (bounded by their total bytes, `DEFAULT_MAX_BYTES`)
and loads a missing one once, however many requests want it at the same time::

    read(entry, off, size) ─> chunk_span ─> ChunkCache.get(digest) ─┬─ LRU hit
                                                                    ├─ join a load in flight
                                                                    └─ run_blocking(source.get)

Sequential readers: a read that continues where the previous read of the same
file ended (give or take the kernel's readahead reordering) hints the chunks
of the next `PREFETCH_BYTES` of that file to `run_prefetch`'s workers, so a
cold ``cat`` finds the next chunk loaded (or loading) instead of waiting for
it; random reads prefetch nothing.

Concurrency: `ChunkCache` lives on one trio loop; only `source.get` runs in a
worker thread (`fusesnap.blocking.run_blocking`), so the LRU needs no lock. A
failed load is not cached: the requests that waited for it get its error, the
next request tries again.

Cancellation: a load, once started, runs to its end (the thread cannot be
abandoned mid-transaction); a cancelled waiter just stops waiting.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import trio

from fusesnap.blocking import run_blocking
from fusesnap.errors import NotFoundError
from fusesnap.fs import ChunkSource, chunk_span, read_file
from fusesnap.groups import first_error
from fusesnap.index import Entry

__all__ = ["DEFAULT_MAX_BYTES", "PREFETCH_BYTES", "CacheStats", "ChunkCache"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 << 20
PREFETCH_BYTES = 8 << 20
# How far a read may start from where the last one ended and still count as sequential:
# the kernel sends readahead requests in parallel, so they arrive slightly out of order.
_SEQUENTIAL_SLACK = 2 << 20
_STREAMS_MAX = 256
_HINTS_MAX = 64


@dataclass(slots=True)
class CacheStats:
    """Counters of one `ChunkCache` (a snapshot is ``dataclasses.asdict``-able)."""

    hits: int = 0  # served from memory
    misses: int = 0  # started a load
    joined: int = 0  # waited for a load another request (or a prefetch) had started
    prefetched: int = 0  # loads started ahead of sequential readers
    loaded: int = 0  # loads that succeeded
    loaded_bytes: int = 0
    load_errors: int = 0
    evictions: int = 0
    cached_chunks: int = 0
    cached_bytes: int = 0
    max_bytes: int = 0


class _Load:
    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: Exception | None = None


class _Loaded:
    """The chunks one read needs, already loaded (a `ChunkSource` for `read_file`)."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: Mapping[bytes, bytes]) -> None:
        self._chunks = chunks

    def get(self, digest: bytes) -> bytes:
        try:
            return self._chunks[digest]
        except KeyError:
            raise NotFoundError(f"chunk {digest.hex()[:12]}: not loaded") from None


class ChunkCache:
    """Chunks by digest: memory first, then ``source`` (e.g. the store's `ChunkStore`).

    ``max_bytes`` bounds the bytes kept (0 keeps nothing; a chunk larger than the
    bound is served but not kept). ``prefetch_bytes`` is how far ahead of a
    sequential reader chunks are loaded while `run_prefetch` runs (0: never).
    """

    def __init__(
        self,
        source: ChunkSource,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        prefetch_bytes: int = PREFETCH_BYTES,
        load: Callable[[bytes], Awaitable[bytes]] | None = None,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes {max_bytes}: negative")
        self._source = source
        # An async loader (a lazy mount's fetcher) replaces the blocking `source.get`.
        self._load_async = load
        self._lru: OrderedDict[bytes, bytes] = OrderedDict()
        self._loading: dict[bytes, _Load] = {}
        self._prefetch_bytes = prefetch_bytes
        # id(entry) -> (entry, where its last read ended); the entry keeps its id unreused.
        self._streams: OrderedDict[int, tuple[Entry, int]] = OrderedDict()
        self._hints: trio.MemorySendChannel[bytes] | None = None
        self.stats = CacheStats(max_bytes=max_bytes)
        # Called with the digest of every chunk a `read` needs, in order (access profiles).
        self.on_access: Callable[[bytes], None] | None = None

    async def get(self, digest: bytes) -> bytes:
        """The verified chunk ``digest``; whatever ``source.get`` raises if it cannot be had."""
        while True:
            data = self._lru.get(digest)
            if data is not None:
                self._lru.move_to_end(digest)
                self.stats.hits += 1
                return data
            load = self._loading.get(digest)
            if load is None:
                self.stats.misses += 1
                return await self._load(digest)
            self.stats.joined += 1
            await load.done.wait()
            if load.error is not None:
                raise load.error
            if load.data is not None:
                return load.data
            # The loading task ended without a result or an error (it was cancelled
            # from outside): start over, and load it ourselves if nobody else does.

    async def _load(self, digest: bytes) -> bytes:
        load = self._loading[digest] = _Load()
        try:
            if self._load_async is not None:
                data = await self._load_async(digest)
            else:
                data = await run_blocking(self._source.get, digest)
        except Exception as exc:
            self.stats.load_errors += 1
            load.error = exc
            raise
        else:
            load.data = data
        finally:
            del self._loading[digest]
            load.done.set()
        self.stats.loaded += 1
        self.stats.loaded_bytes += len(data)
        self._keep(digest, data)
        return data

    def _keep(self, digest: bytes, data: bytes) -> None:
        limit = self.stats.max_bytes
        if len(data) > limit:
            return
        self._lru[digest] = data
        self.stats.cached_bytes += len(data)
        while self.stats.cached_bytes > limit:
            _, old = self._lru.popitem(last=False)
            self.stats.cached_bytes -= len(old)
            self.stats.evictions += 1
        self.stats.cached_chunks = len(self._lru)

    async def read(self, entry: Entry, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of ``entry`` at ``offset`` (short at EOF, like ``pread``);
        the chunks a read spans load concurrently."""
        refs = chunk_span(entry, offset, size)
        if not refs:
            return b""
        if self.on_access is not None:
            for ref in refs:
                self.on_access(ref.digest)
        self._hint_next(entry, offset, offset + size)
        got: dict[bytes, bytes] = {}
        if len(refs) == 1:
            got[refs[0].digest] = await self.get(refs[0].digest)
        else:

            async def one(digest: bytes) -> None:
                got[digest] = await self.get(digest)

            try:
                async with trio.open_nursery() as nursery:
                    for digest in dict.fromkeys(r.digest for r in refs):
                        nursery.start_soon(one, digest)
            except BaseExceptionGroup as group:
                raise first_error(group) from None
        return read_file(entry, offset, size, _Loaded(got))

    def _hint_next(self, entry: Entry, offset: int, end: int) -> None:
        """Track where reads of ``entry`` got to; if this one continues the last, hint the
        chunks of the next `PREFETCH_BYTES` to the prefetchers."""
        if self._hints is None or self._prefetch_bytes <= 0:
            return
        key = id(entry)
        seen = self._streams.pop(key, None)
        sequential = (
            seen is not None and seen[0] is entry and abs(offset - seen[1]) <= _SEQUENTIAL_SLACK
        )
        self._streams[key] = (entry, end)
        if len(self._streams) > _STREAMS_MAX:
            self._streams.popitem(last=False)
        if not sequential or end >= entry.size:
            return
        for ref in chunk_span(entry, end, self._prefetch_bytes):
            if ref.digest in self._lru or ref.digest in self._loading:
                continue
            try:
                self._hints.send_nowait(ref.digest)
            except trio.WouldBlock:
                return  # the prefetchers are busy enough

    async def run_prefetch(
        self, *, workers: int = 4, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Load the chunks sequential readers will want next, with ``workers`` tasks, until
        cancelled. Without it running, reads prefetch nothing.

        Concurrency: at most ``workers`` prefetch loads at a time, so that requests
        that wait for their bytes always find worker threads free.
        """
        send, receive = trio.open_memory_channel[bytes](_HINTS_MAX)
        self._hints = send
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(self._prefetcher, receive.clone())
                task_status.started()
        finally:
            self._hints = None

    async def _prefetcher(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        async with receive:
            async for digest in receive:
                if digest in self._lru or digest in self._loading:
                    continue
                self.stats.prefetched += 1
                try:
                    await self._load(digest)
                except Exception as exc:  # the reader that needs it will get the error
                    log.debug("prefetch of chunk %s: %s", digest.hex()[:12], exc)
